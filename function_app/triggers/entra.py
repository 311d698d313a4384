"""Timer: the Entra ID sign-in and audit logs polled from Microsoft Graph (``azure.entra`` says what a run does).

Its own function: Graph's budget of 5 requests per 10 s per tenant makes a catch-up take minutes,
and the Management feed's timer must never wait for it.
"""

from __future__ import annotations

import logging

import azure.functions as func

from function_app.azure.deps import entra_parts
from function_app.azure.entra import entra_poll
from function_app.entra.poller import summary_of

log = logging.getLogger(__name__)

# Blueprint inherits an unannotated __init__ from azure-functions.
bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.function_name("entra_poll")
@bp.timer_trigger(arg_name="timer", schedule="%ENTRA_SCHEDULE%", run_on_startup=False, use_monitor=True)
async def entra_poll_timer(timer: func.TimerRequest) -> None:
    """Poll the Entra ID logs AUDITLAKE_ENTRA_STREAMS names into ADX; fail the invocation (after every
    tenant and log ran) when a window failed."""
    if timer.past_due:
        # Nothing is lost by a missed run: the next one reads from each log's checkpoint.
        log.warning("entra timer is past due; running now")
    runtime, entra = await entra_parts()
    errors = summary_of(await entra_poll(runtime, entra))["errors"]
    if errors:
        raise RuntimeError("entra poll: " + " | ".join(errors[:5]))
