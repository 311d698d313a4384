"""The content queue: one message per blob, from the timer to the queue-triggered function."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from azure.core.exceptions import ResourceExistsError
from azure.storage.queue.aio import QueueClient

from function_app.core.messages import encode_message
from function_app.core.model import ContentBlob

log = logging.getLogger(__name__)

# Concurrent sends per hand-off: enough to hide latency on a 7-day backfill.
_PARALLEL = 16


class StorageContentQueue:
    """ContentQueue over an Azure Storage queue (base64 text messages, the trigger's default)."""

    def __init__(self, client: QueueClient) -> None:
        self._client = client
        self._ready = False
        self._lock = asyncio.Lock()

    @property
    def name(self) -> str:
        return str(self._client.queue_name)

    async def ensure(self) -> None:
        """Create the queue if it does not exist (once per instance)."""
        if self._ready:
            return
        async with self._lock:
            if not self._ready:
                with contextlib.suppress(ResourceExistsError):
                    await self._client.create_queue()
                self._ready = True

    async def enqueue(self, blobs: Sequence[ContentBlob]) -> None:
        """Send one message per blob; raises if any send failed (the caller re-lists, the
        ledger keeps the blob ``listed``, and the next run hands it on again)."""
        if not blobs:
            return
        await self.ensure()
        gate = asyncio.Semaphore(_PARALLEL)

        async def send(blob: ContentBlob) -> None:
            async with gate:
                await self._client.send_message(encode_message(blob))

        await asyncio.gather(*(send(b) for b in blobs))
        log.info("enqueued queue=%s blobs=%d", self.name, len(blobs))

    async def close(self) -> None:
        await self._client.close()
