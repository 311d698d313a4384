"""The ports the collector core drives; adapters in o365/, state/ and lake/ implement them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol, cast, runtime_checkable

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
    ) -> Mapping[str, Any] | None:
        """Move the ledger row of *blob* to *status*, counting the attempt; returns the row as
        written (ledger columns by name), or None when the store holds no row for the blob.

        ``Error`` becomes *error* (the latest attempt's); ``FirstError`` follows
        ``model.first_error``, so what the blob first failed with outlives every later attempt."""
        ...

    async def record_run(self, run: RunStats) -> None: ...


class Sink(Protocol):
    """Where flattened rows go: ADX in Azure, DuckDB locally."""

    async def write_blob(self, blob: ContentBlob, tables: Mapping[str, Sequence[Mapping[str, Any]]]) -> WriteResult:
        """Write the rows of one blob, table by table; re-writing the same rows adds nothing."""
        ...


@runtime_checkable
class RowKeepingStateStore(Protocol):
    """A state store kept in the same store as the rows (the local lake): a blob's rows and its
    ``ingested`` mark are committed in one transaction, so neither can exist without the other,
    and many blobs share a commit."""

    def keeps_rows_of(self, sink: Sink) -> bool:
        """True when *sink* writes into the store this ledger lives in."""
        ...

    async def submit_ingested(
        self,
        blob: ContentBlob,
        tables: Mapping[str, Any],
        *,
        clock: Callable[[], datetime],
        records: int,
        size: int,
    ) -> Awaitable[WriteResult]:
        """Hand over *blob*'s rows with its ``ingested`` mark (stamped by *clock* at commit) and
        return, without waiting for it, what resolves once both are committed together."""
        ...

    def commit_soon(self) -> None:
        """No other blob is in hand for now: commit what was handed over without waiting for more."""
        ...


def rows_kept_by(state: StateStore, sink: Sink) -> RowKeepingStateStore | None:
    """*state*, when it keeps *sink*'s rows in its own store (the local lake), else None."""
    kind = type(state)
    keeps = _KEEPS_ROWS.get(kind)
    if keeps is None:
        # Asked once per blob: isinstance against a runtime-checkable Protocol inspects the class's
        # members each time (10-19 us); the answer only depends on the class, whose methods these are.
        keeps = _KEEPS_ROWS[kind] = isinstance(state, RowKeepingStateStore)
    if not keeps:
        return None
    keeper = cast(RowKeepingStateStore, state)
    return keeper if keeper.keeps_rows_of(sink) else None


_KEEPS_ROWS: dict[type, bool] = {}


class ClaimingStateStore(StateStore, Protocol):
    """A state store shared by many instances (Azure Table Storage): adds claims and reads."""

    async def claim(
        self, blob: ContentBlob, owner: str, lease: timedelta, now: datetime
    ) -> Mapping[str, Any] | None:
        """The blob's ledger row as written, if *owner* now holds the right to process *blob* until
        ``now + lease``; None if it does not (settled, or claimed elsewhere)."""
        ...

    async def release(self, blob: ContentBlob, owner: str) -> None:
        """Drop *owner*'s claim on *blob*, if it still holds one."""
        ...

    async def ledger_row(self, blob: ContentBlob) -> dict[str, Any] | None:
        """The ledger row's properties (Status, Error, Attempts, ListedAt, FetchedAt, ClaimUntil...)."""
        ...

    async def failed(self, tenant_id: str | None = None) -> list[ContentBlob]:
        """Blobs whose last attempt failed."""
        ...


class ContentQueue(Protocol):
    """The hand-off between the timer and the blob workers in Azure (a Storage queue)."""

    async def enqueue(self, blobs: Sequence[ContentBlob]) -> None:
        """Send one message per blob; returns once every message is accepted."""
        ...


class DeadLetterStore(Protocol):
    """Where raw content and messages that could not be processed are kept for replay."""

    async def put_content(self, blob: ContentBlob, raw: bytes | bytearray, reason: str) -> str:
        """Keep *blob*'s raw content (replacing an earlier copy); returns where it is."""
        ...

    async def get_content(self, blob: ContentBlob) -> bytes | None:
        """The kept raw content of *blob*, or None."""
        ...

    async def content_location(self, blob: ContentBlob) -> str | None:
        """Where *blob*'s raw content is kept, or None if it is not."""
        ...

    async def put_message(self, raw: bytes, reason: str, *, message_id: str | None) -> str:
        """Keep a raw queue message; returns where it is."""
        ...
