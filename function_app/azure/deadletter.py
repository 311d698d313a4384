"""The dead-letter container: raw content and raw messages that could not be processed.

Kept so a blob can be replayed after the API's own copy expires (7 days), and so a poison
message is never the only trace of a failure. Layout inside the container::

    content/{tenant_id}/{content_type}/{content_id}.json   the blob as received (last attempt)
    messages/{YYYY-MM-DD}/{message id or body hash}.txt     a queue message as received
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob.aio import ContainerClient

from function_app.core.model import ContentBlob

log = logging.getLogger(__name__)

# Blob metadata travels as HTTP headers: ASCII, no control characters, 8 KiB in all.
_UNSAFE = re.compile(r"[^\x20-\x7e]")
_REASON_CHARS = 1024


def _meta(value: str) -> str:
    return _UNSAFE.sub("?", value)[:_REASON_CHARS]


def content_blob_name(blob: ContentBlob) -> str:
    """Where *blob*'s raw content is kept inside the container."""
    return f"content/{blob.tenant_id}/{blob.content_type}/{blob.content_id}.json"


class BlobDeadLetterStore:
    """DeadLetterStore over an Azure Storage blob container."""

    def __init__(self, client: ContainerClient, *, clock: Callable[[], datetime] | None = None) -> None:
        self._client = client
        self._clock = clock or (lambda: datetime.now(UTC))
        self._ready = False
        self._lock = asyncio.Lock()

    @property
    def container(self) -> str:
        return str(self._client.container_name)

    def _location(self, name: str) -> str:
        return f"{self.container}/{name}"

    async def _ensure(self) -> None:
        if self._ready:
            return
        async with self._lock:
            if not self._ready:
                with contextlib.suppress(ResourceExistsError):
                    await self._client.create_container()
                self._ready = True

    async def put_content(self, blob: ContentBlob, raw: bytes | bytearray, reason: str) -> str:
        """Keep *raw* as *blob*'s content (replacing an earlier copy); returns ``container/name``."""
        await self._ensure()
        name = content_blob_name(blob)
        # The SDK takes bytes, not a bytearray; a copy on this rare path costs nothing that matters.
        data = bytes(raw) if isinstance(raw, bytearray) else raw
        await self._client.upload_blob(name, data, overwrite=True, metadata={
            "tenant_id": blob.tenant_id, "content_type": blob.content_type,
            "content_id": _meta(blob.content_id), "reason": _meta(reason),
            "kept_at": self._clock().isoformat(),
        })
        log.warning("raw content kept tenant_id=%s content_type=%s content_id=%s bytes=%d location=%s",
                    blob.tenant_id, blob.content_type, blob.content_id, len(raw), self._location(name))
        return self._location(name)

    async def get_content(self, blob: ContentBlob) -> bytes | None:
        """The kept content of *blob*, or None."""
        try:
            downloader = await self._client.download_blob(content_blob_name(blob))
            return bytes(await downloader.readall())
        except ResourceNotFoundError:
            return None

    async def content_location(self, blob: ContentBlob) -> str | None:
        """``container/name`` of *blob*'s kept content, or None when there is none."""
        name = content_blob_name(blob)
        try:
            exists = bool(await self._client.get_blob_client(name).exists())
        except ResourceNotFoundError:
            exists = False
        return self._location(name) if exists else None

    async def put_message(self, raw: bytes, reason: str, *, message_id: str | None) -> str:
        """Keep a raw queue message; returns ``container/name``. The same message kept twice
        (a poison message retried) lands on the same name."""
        await self._ensure()
        key = message_id if message_id and re.fullmatch(r"[A-Za-z0-9\-]{1,100}", message_id) else (
            hashlib.sha256(raw).hexdigest())
        name = f"messages/{self._clock():%Y-%m-%d}/{key}.txt"
        # The SDK takes bytes, not a bytearray; a copy on this rare path costs nothing that matters.
        data = bytes(raw) if isinstance(raw, bytearray) else raw
        await self._client.upload_blob(name, data, overwrite=True, metadata={
            "reason": _meta(reason), "kept_at": self._clock().isoformat(),
        })
        return self._location(name)

    async def close(self) -> None:
        await self._client.close()
