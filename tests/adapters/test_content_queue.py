"""StorageContentQueue against real Azurite: the messages it signs and sends itself are the ones the
SDK (and so the Functions queue trigger, base64 text) reads back, and a refused send says why."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueClient as SyncQueueClient
from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy

from function_app.azure.queue import StorageContentQueue
from function_app.azure.storage import queue_client
from function_app.config import StorageConnection
from function_app.core.messages import decode_message
from function_app.core.model import ContentBlob
from tests.azure.conftest import drain_queue
from tests.azurite import Azurite

TENANT = "11111111-2222-3333-4444-555555555555"
CREATED = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)


def blobs(n: int) -> list[ContentBlob]:
    ids = [f"2026120410{i:04d}$audit_sharepoint$Audit_SharePoint$emea0034" for i in range(n)]
    return [ContentBlob(TENANT, "Audit.SharePoint", cid,
                        f"https://manage.office.com/api/v1.0/{TENANT}/activity/feed/audit/{cid}",
                        CREATED, CREATED + timedelta(days=7)) for cid in ids]


def reader(azurite: Azurite, name: str) -> SyncQueueClient:
    return SyncQueueClient.from_connection_string(azurite.connection_string, name,
                                                  message_encode_policy=TextBase64EncodePolicy(),
                                                  message_decode_policy=TextBase64DecodePolicy())


def test_every_blob_handed_on_is_one_message_the_trigger_decodes(azurite: Azurite) -> None:
    name = f"content-{uuid.uuid4().hex[:8]}"
    sent: list[tuple[str, str]] = []

    async def main() -> None:
        queue = StorageContentQueue(queue_client(StorageConnection(connection_string=azurite.connection_string),
                                                 name, None), request_hook=lambda method, path: sent.append(
                                                     (method, path)))
        try:
            await queue.enqueue(blobs(40))
        finally:
            await queue.close()

    asyncio.run(main())
    got = sorted((decode_message(body) for _, body in drain_queue(reader(azurite, name))),
                 key=lambda b: b.content_id)
    assert got == sorted(blobs(40), key=lambda b: b.content_id)
    assert len(sent) == 40 and {m for m, _ in sent} == {"POST"}


def test_a_send_the_service_refuses_raises_with_its_reason(azurite: Azurite) -> None:
    name = f"content-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        queue = StorageContentQueue(queue_client(StorageConnection(connection_string=azurite.connection_string),
                                                 name, None))
        try:
            await queue.ensure()
            await asyncio.to_thread(reader(azurite, name).delete_queue)
            with pytest.raises(ResourceNotFoundError, match="QueueNotFound"):
                await queue.enqueue(blobs(1))
        finally:
            await queue.close()

    asyncio.run(main())
