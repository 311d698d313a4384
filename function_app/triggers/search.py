"""Timer: the Purview audit search backfill, daily (``azure.search`` says what a run does).

Its own function, not part of ``collect``: a run takes minutes (Purview runs each query for
minutes) and is bounded by the function timeout, the feed must never wait for it, and the
timer's singleton lock keeps two runs from searching the same days at once.
"""

from __future__ import annotations

import logging

import azure.functions as func

from function_app.azure.deps import search_parts
from function_app.azure.search import RunBudget, function_timeout, search_backfill

log = logging.getLogger(__name__)

# Blueprint inherits an unannotated __init__ from azure-functions.
bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.function_name("search_backfill")
@bp.timer_trigger(arg_name="timer", schedule="%SEARCH_SCHEDULE%", run_on_startup=False, use_monitor=True)
async def search_backfill_timer(timer: func.TimerRequest) -> None:
    """Backfill every tenant's missing whole days from the Purview audit search into ADX; fail the
    invocation (after every tenant ran) when slices failed or the search refused."""
    # The clock starts before the Runtime is built: the host's timeout counts from the call.
    budget = RunBudget.starting_now(function_timeout())
    if timer.past_due:
        # Nothing is lost by a missed run: every day not done is still in the window.
        log.warning("search timer is past due; running now")
    parts = await search_parts()
    run = await search_backfill(parts.runtime, parts.search, parts.ledger, budget=budget)
    failures = run.failures
    if failures:
        raise RuntimeError("search backfill: " + " | ".join(failures))
