"""The ports the collector core drives; adapters in o365/, state/ and lake/ implement them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from function_app.core.model import (
    BlobStatus,
    Checkpoint,
    ContentBlob,
    FetchedContent,
    RunStats,
    WriteResult,
)


class ActivityApi(Protocol):
    """The Office 365 Management Activity API, as the core needs it."""

    async def start_subscription(self, tenant_id: str, content_type: str) -> None:
        """Start (or confirm) the subscription; AF20024 'already enabled' counts as success."""
        ...

    def list_content(
        self, tenant_id: str, content_type: str, start: datetime, end: datetime
    ) -> AsyncIterator[list[ContentBlob]]:
        """Yield one list per page, following ``NextPageUri`` until it is absent."""
        ...

    async def fetch_content(self, tenant_id: str, content_uri: str) -> FetchedContent:
        """GET a content blob and parse it; raises MalformedContentError if it is not a JSON array."""
        ...


class StateStore(Protocol):
    """Checkpoints, the content ledger and run history."""

    async def get_checkpoint(self, tenant_id: str, content_type: str) -> Checkpoint | None: ...

    async def save_checkpoint(self, checkpoint: Checkpoint) -> Checkpoint:
        """Persist *checkpoint*; with an etag, fail if another writer moved it meanwhile."""
        ...

    async def register_listed(self, blobs: Sequence[ContentBlob], listed_at: datetime) -> list[ContentBlob]:
        """Record listed blobs in the ledger; return those still to hand on: new ones, and
        ones recorded earlier whose hand-off never completed (status ``listed``)."""
        ...

    async def mark_queued(self, blobs: Sequence[ContentBlob]) -> None:
        """Note that *blobs* were handed on, so re-listing them does not hand them on again."""
        ...

    async def pending(self, tenant_id: str, content_type: str) -> list[ContentBlob]:
        """Blobs listed or queued but not settled (left behind by a killed run)."""
        ...

    async def mark(
        self,
        blob: ContentBlob,
        status: BlobStatus,
        *,
        at: datetime,
        records: int | None = None,
        size: int | None = None,
        error: str | None = None,
    ) -> None:
        """Move the ledger row of *blob* to *status*, counting the attempt."""
        ...

    async def record_run(self, run: RunStats) -> None: ...


class Sink(Protocol):
    """Where flattened rows go: ADX in Azure, DuckDB locally."""

    async def write_blob(self, blob: ContentBlob, tables: Mapping[str, Sequence[Mapping[str, Any]]]) -> WriteResult:
        """Write the rows of one blob, table by table; re-writing the same rows adds nothing."""
        ...
