"""Timer: read ADX's reports of ingestions that failed after they were accepted, into the ledger.

A function of its own rather than the end of ``collect``: a failing feed makes ``collect``
raise, which must not stop failures from being read (nor the reverse), each shows as its
own success or failure in Application Insights, and each has the whole function timeout.
It runs on the collect schedule (no new setting): reports are small, one run reads up to
``REPORTS_PER_RUN``, and the timer's singleton lock keeps two instances from reading at once.
"""

from __future__ import annotations

import azure.functions as func

from function_app.azure.deps import failure_reports, runtime
from function_app.azure.ingest_failures import watch_ingestion_failures

# Blueprint inherits an unannotated __init__ from azure-functions.
bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.function_name("watch_ingestion_failures")
@bp.timer_trigger(arg_name="timer", schedule="%COLLECT_SCHEDULE%", run_on_startup=False, use_monitor=True)
async def watch_ingestion_failures_timer(timer: func.TimerRequest) -> None:
    """Settle blobs whose accepted ADX ingestion later failed (or re-enqueue them when a retry may help)."""
    await watch_ingestion_failures(await runtime(), await failure_reports())
