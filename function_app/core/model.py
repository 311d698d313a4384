"""Value objects shared by the collector core, the adapters and the emulator."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from function_app.core.budget import NO_RESERVATION, Reservation

CONTENT_TYPES: tuple[str, ...] = (
    "Audit.AzureActiveDirectory",
    "Audit.Exchange",
    "Audit.SharePoint",
    "Audit.General",
    "DLP.All",
)


class BlobStatus(StrEnum):
    """Lifecycle of one content blob in the ledger; the last three are terminal.

    ``listed``: recorded, not yet handed on; ``queued``: handed on (enqueued), not settled.
    """

    LISTED = "listed"
    QUEUED = "queued"
    INGESTED = "ingested"
    FAILED = "failed"
    EXPIRED = "expired"


TERMINAL_STATUSES = frozenset({BlobStatus.INGESTED, BlobStatus.FAILED, BlobStatus.EXPIRED})
"""The one definition of a settled blob. BlobStatus is a StrEnum, so the text a store holds
("failed") tests against this set as it is."""

FAILURE_STATUSES = frozenset({BlobStatus.FAILED, BlobStatus.EXPIRED})
"""The settled statuses whose ``Error`` says what went wrong with the blob itself."""


def first_error(row: Mapping[str, Any], status: BlobStatus, error: str | None) -> str | None:
    """The ledger's ``FirstError`` once the row *row* (its columns before the mark) is marked
    *status* with *error*: the error the blob was first settled ``failed`` or ``expired`` with.

    Every store applies this one rule in ``mark``, so a replay (or a redelivery, or ADX's late
    ingestion failure) replaces ``Error`` with its own outcome but never what the blob first
    failed with. A row written before the column existed, already failed, gives its ``Error``
    as the first one: it is the earliest the store still knows. An error noted on a row that is
    not settled (a transient failure left ``queued``, a replay's note) is not a failure of the blob.
    """
    kept = row.get("FirstError")
    if kept:
        return str(kept)
    previous = row.get("Error")
    if row.get("Status") in FAILURE_STATUSES and previous:
        return str(previous)
    return error if status in FAILURE_STATUSES and error else None


def utc(dt: datetime) -> datetime:
    """Return *dt* as an aware UTC datetime; a naive value is taken to be UTC already."""
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def iso_z(dt: datetime) -> str:
    """ISO 8601 in UTC ending in ``Z``, with milliseconds (the API's own shape)."""
    return utc(dt).strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc(dt).microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class ContentBlob:
    """One entry of a content listing: a blob of audit records the API made available."""

    tenant_id: str
    content_type: str
    content_id: str
    content_uri: str
    content_created: datetime
    content_expiration: datetime


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """How far listing has safely progressed for one tenant and content type.

    ``position`` is the end of the last window whose blobs were all handed on (enqueued,
    or recorded as pending in the local ledger); the next run lists from ``position``
    minus the overlap.
    """

    tenant_id: str
    content_type: str
    position: datetime
    last_sweep: datetime | None = None
    etag: str | None = None


@dataclass(frozen=True, slots=True)
class Window:
    """A listing window: ``start <= contentCreated < end``, at most 24 h long."""

    start: datetime
    end: datetime


@dataclass(slots=True)
class RunStats:
    """One `CollectorRun` row: a planning pass for one tenant and content type."""

    run_id: str
    tenant_id: str
    content_type: str
    started_at: datetime
    finished_at: datetime | None = None
    window_start: datetime | None = None
    window_end: datetime | None = None
    pages: int = 0
    blobs_listed: int = 0
    blobs_new: int = 0
    throttled: int = 0
    errors: list[str] = field(default_factory=list)


PLANNING_RUN: ContextVar[RunStats | None] = ContextVar("auditlake_planning_run", default=None)
"""The run whose listing calls the current task is making: the retry policy counts a throttled
answer against it. A context variable, because feeds plan concurrently over one shared client,
and a shared counter read before and after each run credited every feed with the others' throttles."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a sink did with the rows of one blob."""

    inserted: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class FetchedContent:
    """A content blob retrieved and parsed: the records as delivered and the body size.

    ``recovered`` counts records the strict parser refused (kept flagged, see
    ``records.reader``); ``body`` is the body as fetched when the client was asked to keep it
    (the Azure path keeps it so a failed write can leave the exact bytes in the dead letter).
    ``reservation`` is the memory held for the blob (``core.budget``); whoever processes the
    records releases it once they are written.
    """

    records: list[Any]
    size: int
    recovered: int = 0
    body: bytes | bytearray | None = None
    reservation: Reservation = NO_RESERVATION
