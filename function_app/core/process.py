"""Processing one content blob: fetch, flatten, write, and settle its ledger row.

Every path ends with the ledger row in a terminal status (ingested, failed with the
error, or expired), so nothing is dropped quietly; expired content is logged as an alert.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from function_app.core.errors import (
    ApiError,
    ContentExpiredError,
    MalformedContentError,
    UntrustedMessageError,
)
from function_app.core.model import BlobStatus, ContentBlob, utc
from function_app.core.ports import ActivityApi, Sink, StateStore, rows_kept_by

log = logging.getLogger(__name__)

Rows = Sequence[Mapping[str, Any]]
# Builds the rows of every table from the records of one blob (records/ supplies it).
RowBuilder = Callable[[list[Any], ContentBlob, datetime], Mapping[str, Rows]]


@dataclass(frozen=True, slots=True)
class BlobOutcome:
    blob: ContentBlob
    status: BlobStatus
    records: int = 0
    inserted: int = 0
    duplicates: int = 0
    size: int = 0
    error: str | None = None


async def process_blob(
    blob: ContentBlob,
    *,
    api: ActivityApi,
    sink: Sink,
    state: StateStore,
    build_rows: RowBuilder,
    clock: Callable[[], datetime],
    handed_over: Callable[[], None] | None = None,
) -> BlobOutcome:
    """Fetch, flatten and write *blob*; returns its terminal outcome, never raises for bad data.

    Only failures of the sink or the state store propagate (the blob stays ``listed`` and is
    re-driven), because those say nothing about the blob itself.

    When *state* keeps the rows of *sink* (the local lake), the rows and the ``ingested`` mark are
    handed over together and committed in one transaction with other blobs'; *handed_over* is
    called as soon as they are handed over, before they are durable, so the caller can start the
    next fetch while the commit gathers more blobs.
    """
    ctx = f"tenant_id={blob.tenant_id} content_type={blob.content_type} content_id={blob.content_id}"
    # No expiry check of our own before the fetch: contentExpiration may come from a message
    # anyone could have written, and only the API's AF20051 proves the content is gone.
    try:
        fetched = await api.fetch_content(blob.tenant_id, blob.content_uri)
    except ContentExpiredError as exc:
        return await _settle_expired(blob, state, utc(clock()), str(exc))
    except MalformedContentError as exc:
        return await _settle_malformed(blob, exc, sink=sink, state=state, build_rows=build_rows, clock=clock)
    except (ApiError, UntrustedMessageError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        log.error("blob failed %s error=%s", ctx, error)
        await state.mark(blob, BlobStatus.FAILED, at=utc(clock()), error=error)
        return BlobOutcome(blob, BlobStatus.FAILED, error=error)
    records, size, reservation = len(fetched.records), fetched.size, fetched.reservation
    try:
        fetched_at = utc(clock())
        tables = build_rows(fetched.records, blob, fetched_at)
        # The rows hold what they need of the records; the parsed list must not keep them all
        # alive beside the rows until the commit (the local lake frees a big blob's as it goes).
        del fetched
        keeper = rows_kept_by(state, sink)
        if keeper is not None:
            durable = await keeper.submit_ingested(blob, tables, clock=lambda: utc(clock()),
                                                  records=records, size=size)
            del tables
            if handed_over is not None:
                handed_over()
            result = await durable
        else:
            result = await sink.write_blob(blob, tables)
            del tables
            await state.mark(blob, BlobStatus.INGESTED, at=utc(clock()), records=records, size=size)
    finally:
        reservation.release()
    log.info("blob ingested %s records=%d inserted=%d duplicates=%d", ctx,
             records, result.inserted, result.duplicates)
    return BlobOutcome(blob, BlobStatus.INGESTED, records=records, inserted=result.inserted,
                       duplicates=result.duplicates, size=size)


async def _settle_malformed(
    blob: ContentBlob,
    exc: MalformedContentError,
    *,
    sink: Sink,
    state: StateStore,
    build_rows: RowBuilder,
    clock: Callable[[], datetime],
) -> BlobOutcome:
    """Settle a blob whose body cannot be read whole as ``failed``, after writing the records read
    before it broke off: the records the service did deliver are never lost with the rest."""
    error = f"{type(exc).__name__}: {exc}"
    inserted = duplicates = 0
    if exc.salvaged:
        result = await sink.write_blob(blob, build_rows(exc.salvaged, blob, utc(clock())))
        inserted, duplicates = result.inserted, result.duplicates
        error += f"; {len(exc.salvaged)} rows written from what was read before the cut"
    log.error("blob failed tenant_id=%s content_type=%s content_id=%s error=%s",
              blob.tenant_id, blob.content_type, blob.content_id, error)
    await state.mark(blob, BlobStatus.FAILED, at=utc(clock()), error=error,
                     records=len(exc.salvaged) if exc.salvaged else None,
                     size=len(exc.body) if exc.body is not None else None)
    return BlobOutcome(blob, BlobStatus.FAILED, records=len(exc.salvaged), inserted=inserted,
                       duplicates=duplicates, error=error)


async def _settle_expired(blob: ContentBlob, state: StateStore, at: datetime, reason: str) -> BlobOutcome:
    # An alert, not a warning: these records are gone from the API and will never arrive.
    log.critical("ALERT content expired before ingestion tenant_id=%s content_type=%s content_id=%s reason=%s",
                 blob.tenant_id, blob.content_type, blob.content_id, reason)
    await state.mark(blob, BlobStatus.EXPIRED, at=at, error=reason)
    return BlobOutcome(blob, BlobStatus.EXPIRED, error=reason)
