"""Queue triggers: the content queue (one blob per message) and its poison queue."""

from __future__ import annotations

import azure.functions as func

from function_app.azure.deps import runtime
from function_app.config import STORAGE_SETTING
from function_app.core.delivery import handle_message, handle_poison

# Blueprint inherits an unannotated __init__ from azure-functions.
bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.function_name("process_content")
@bp.queue_trigger(arg_name="msg", queue_name="%CONTENT_QUEUE%", connection=STORAGE_SETTING)
async def process_content(msg: func.QueueMessage) -> None:
    """Fetch, flatten and ingest the blob the message names; raise only when a retry may help."""
    await handle_message(await runtime(), msg.get_body(), dequeue_count=msg.dequeue_count or 1,
                         message_id=msg.id)


@bp.function_name("record_dead_letter")
@bp.queue_trigger(arg_name="msg", queue_name="%CONTENT_QUEUE%-poison", connection=STORAGE_SETTING)
async def record_dead_letter(msg: func.QueueMessage) -> None:
    """Settle the blob of a message the content queue gave up on as failed, and keep the message."""
    await handle_poison(await runtime(), msg.get_body(), dequeue_count=msg.dequeue_count or 1,
                        message_id=msg.id)
