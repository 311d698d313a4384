"""Timer: plan listing windows for every tenant and content type and enqueue new blobs."""

from __future__ import annotations

import logging

import azure.functions as func

from function_app.azure.deps import runtime
from function_app.core.delivery import collect_feeds

log = logging.getLogger(__name__)

# Blueprint inherits an unannotated __init__ from azure-functions.
bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.function_name("collect")
@bp.timer_trigger(arg_name="timer", schedule="%COLLECT_SCHEDULE%", run_on_startup=False, use_monitor=True)
async def collect(timer: func.TimerRequest) -> None:
    """List content from each feed's checkpoint and hand every new blob to the content queue."""
    if timer.past_due:
        # A missed schedule loses nothing: the checkpoint catches up on this run.
        log.warning("timer is past due; catching up from the checkpoints")
    await collect_feeds(await runtime())
