"""Ledger and run history mirrored into ADX, so "every blob ends ingested, failed or
expired" is countable with KQL next to the records, not only in Table Storage.

The state store (Table Storage in Azure, the local file for ``collect --adx-ingest-uri``) stays
the source of truth for the collector (claims, ETags); ADX receives a ``ContentLedger`` row each
time a blob's status changes (listed, queued again, ingested, failed, expired: so LedgerHealth
sees stuck and near-expiry blobs in ADX too) and one ``CollectorRun`` row per planning pass.
The rows are what the store says it wrote, never read back. A blob has several ledger rows in
ADX: its current status is the latest, ``arg_max(coalesce(IngestedAt, FetchedAt, ListedAt), *)``
per blob. A mirror write that fails is logged and does not fail the blob: the rows are safe.

The rows are batched, not ingested one by one (an ingestion costs the ingest SDK ~8.6 ms of CPU,
as much as a whole blob's records): when the sink can defer rows (``AdxSink.defer``), each row
waits in the sink and rides along with the next staging ingestion (``lake.staging``:
aside rows that ADX's update policies fan out into ContentLedger and CollectorRun), or, when no
blob comes within ``MIRROR_MAX_DELAY_SECONDS`` (or ``MIRROR_MAX_ROWS`` are waiting), goes in a flush
of its own; the sink's ``close`` flushes what waits. So under load the ledger mirror costs no
ingestion at all, and when idle one per few seconds per instance.

Why not carry a blob's own ``ingested`` row in its staging ingestion: that row is what the store
wrote, and the store is written only after ADX accepted the rows (``core.process``), so it does
not exist yet when the ingestion leaves; predicting it would duplicate the store's arithmetic
(Attempts, FirstError) and would be wrong for a blob whose salvaged rows are written before it is
settled ``failed``. The price of batching: a row can reach ADX up to the delay later (the ledger
mirror is bookkeeping; LedgerHealth tolerates minutes), and a row is lost, logged by the sink,
when its flush fails at ``close`` or the waiting rows pass ``MIRROR_MAX_PENDING``, or silently
when the ingestion it rode on is accepted and later fails in the service (the failure watcher
re-drives that blob; the next status change of the mirrored blob restates its whole row). The
store, the collector's source of truth, is never affected.

The mirror also tells such a sink which blobs this process is processing: a blob it claims is
expected (``AdxSink.expect``, so the staging ingestion the blobs written at once share waits for
its rows; alone when its ledger row says ``INGEST_ALONE``), and its next mark or release ends
that (``AdxSink.forget``).

The Purview audit search's slices are mirrored the same way (ContentType ``Purview.Search``):
listed, pointed at a query (``set_query``: ``queued`` with the query's URL), settled.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

from function_app.core.model import BlobStatus, Checkpoint, ContentBlob, RunStats
from function_app.core.ports import ClaimingStateStore, Sink
from function_app.lake.adx import INGEST_ALONE
from function_app.lake.schema import COLLECTOR_RUN, CONTENT_LEDGER
from function_app.purview.backfill import SliceRow

log = logging.getLogger(__name__)


def ledger_row(blob: ContentBlob, props: dict[str, Any] | None) -> dict[str, Any]:
    """A ContentLedger row from the blob and its Table Storage properties."""
    props = props or {}
    row: dict[str, Any] = {c: props.get(c) for c in CONTENT_LEDGER.column_names}
    # A search slice is settled through a blob without its query URL; the store's row has it.
    row.update(TenantId=blob.tenant_id, ContentType=blob.content_type, ContentId=blob.content_id,
               ContentUri=blob.content_uri or props.get("ContentUri") or "", ContentCreated=blob.content_created,
               ContentExpiration=blob.content_expiration)
    return row


def run_row(run: RunStats) -> dict[str, Any]:
    """A CollectorRun row from a planning pass."""
    return {
        "RunId": run.run_id, "StartedAt": run.started_at, "FinishedAt": run.finished_at,
        "TenantId": run.tenant_id, "ContentType": run.content_type, "WindowStart": run.window_start,
        "WindowEnd": run.window_end, "Pages": run.pages, "BlobsListed": run.blobs_listed,
        "BlobsNew": run.blobs_new, "Throttled": run.throttled, "Errors": list(run.errors),
    }


class _SliceStore(Protocol):
    """``purview.backfill.SliceLedger`` as a store implements it: ``set_query`` may return the row
    as written (``TableStateStore`` does), which is then mirrored whole."""

    async def slice_rows(self, tenant_id: str) -> Mapping[str, SliceRow]: ...

    async def set_query(self, blob: ContentBlob) -> Mapping[str, Any] | None: ...


class _Deferring(Protocol):
    """A sink that batches bookkeeping rows (``AdxSink``)."""

    def defer(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None: ...


class _Gathering(Protocol):
    """A sink that gathers the blobs being processed into shared ingestions (``AdxSink``)."""

    def expect(self, blob: ContentBlob, *, alone: bool = False) -> None: ...

    def forget(self, blob: ContentBlob) -> None: ...


class AdxMirroredState:
    """A state store that also ingests every ledger change and every run into *sink*, batched
    when the sink can defer rows (see the module docstring)."""

    def __init__(self, inner: ClaimingStateStore, sink: Sink) -> None:
        self._inner = inner
        self._sink = sink
        self._gathering = cast(_Gathering, sink) if hasattr(sink, "expect") and hasattr(sink, "forget") else None

    async def _mirror(self, blob: ContentBlob, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Hand *rows* to the sink: deferred when it can (never fails), else one ingestion now."""
        defer = getattr(self._sink, "defer", None)
        if defer is not None:
            cast(_Deferring, self._sink).defer(table, rows)
            return
        await self._sink.write_blob(blob, {table: rows})

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
        try:
            written = await self._inner.mark(blob, status, at=at, records=records, size=size, error=error)
        finally:
            if self._gathering is not None:
                self._gathering.forget(blob)
        try:
            row = ledger_row(blob, dict(written) if written is not None else {
                "Status": status.value, "Error": error, "Records": records, "Bytes": size, "FetchedAt": at,
                "IngestedAt": at if status is BlobStatus.INGESTED else None})
            await self._mirror(blob, CONTENT_LEDGER.name, [row])
        except Exception as exc:  # the store's row is written; ADX only lacks a copy
            log.error("ledger mirror failed tenant_id=%s content_type=%s content_id=%s error=%s",
                      blob.tenant_id, blob.content_type, blob.content_id, exc)
        return written

    async def record_run(self, run: RunStats) -> None:
        await self._inner.record_run(run)
        # The sink names an ingestion after a blob; a run is its own pseudo-blob.
        pseudo = ContentBlob(run.tenant_id, run.content_type, f"run:{run.run_id}", "", run.started_at,
                             run.started_at)
        try:
            await self._mirror(pseudo, COLLECTOR_RUN.name, [run_row(run)])
        except Exception as exc:
            log.error("run mirror failed tenant_id=%s content_type=%s run_id=%s error=%s",
                      run.tenant_id, run.content_type, run.run_id, exc)

    # -- search slices (purview.backfill.SliceLedger, when the inner store is one) ----------

    def _slices(self) -> _SliceStore:
        if not (hasattr(self._inner, "slice_rows") and hasattr(self._inner, "set_query")):
            raise TypeError(f"{type(self._inner).__name__} keeps no search slices")
        return cast(_SliceStore, self._inner)

    async def slice_rows(self, tenant_id: str) -> Mapping[str, SliceRow]:
        return await self._slices().slice_rows(tenant_id)

    async def set_query(self, blob: ContentBlob) -> None:
        written = await self._slices().set_query(blob)
        try:
            props = dict(written) if written is not None else {"Status": BlobStatus.QUEUED.value}
            await self._mirror(blob, CONTENT_LEDGER.name, [ledger_row(blob, props)])
        except Exception as exc:  # the store's row is written; ADX only lacks a copy
            log.error("ledger mirror failed tenant_id=%s content_type=%s content_id=%s error=%s",
                      blob.tenant_id, blob.content_type, blob.content_id, exc)

    # -- plain delegation -----------------------------------------------------------------

    async def get_checkpoint(self, tenant_id: str, content_type: str) -> Checkpoint | None:
        return await self._inner.get_checkpoint(tenant_id, content_type)

    async def save_checkpoint(self, checkpoint: Checkpoint) -> Checkpoint:
        return await self._inner.save_checkpoint(checkpoint)

    async def register_listed(self, blobs: Sequence[ContentBlob], listed_at: datetime) -> list[ContentBlob]:
        new: list[ContentBlob] = await self._inner.register_listed(blobs, listed_at)
        if new:
            first = new[0]
            # One ingestion for the window's new blobs; named like a run, as a pseudo-blob of its own.
            pseudo = ContentBlob(first.tenant_id, first.content_type, f"listed:{uuid.uuid4().hex}", "",
                                 listed_at, listed_at)
            rows = [ledger_row(b, {"Status": BlobStatus.LISTED.value, "ListedAt": listed_at, "Attempts": 0})
                    for b in new]
            try:
                await self._mirror(pseudo, CONTENT_LEDGER.name, rows)
            except Exception as exc:
                log.error("ledger mirror of listed blobs failed tenant_id=%s content_type=%s blobs=%d error=%s",
                          first.tenant_id, first.content_type, len(new), exc)
        return new

    async def mark_queued(self, blobs: Sequence[ContentBlob]) -> None:
        await self._inner.mark_queued(blobs)

    async def pending(self, tenant_id: str, content_type: str) -> list[ContentBlob]:
        return await self._inner.pending(tenant_id, content_type)

    async def claim(
        self, blob: ContentBlob, owner: str, lease: timedelta, now: datetime
    ) -> Mapping[str, Any] | None:
        """The inner store's claim; a blob won is announced to the sink, whose open ingestion then
        waits for its rows (``AdxSink.expect``) until it writes them or its ledger row is marked."""
        claimed = await self._inner.claim(blob, owner, lease, now)
        if claimed is not None and self._gathering is not None:
            error = claimed.get("Error")
            self._gathering.expect(blob, alone=isinstance(error, str) and INGEST_ALONE in error)
        return claimed

    async def release(self, blob: ContentBlob, owner: str) -> None:
        try:
            await self._inner.release(blob, owner)
        finally:
            if self._gathering is not None:
                self._gathering.forget(blob)

    async def ledger_row(self, blob: ContentBlob) -> dict[str, Any] | None:
        return await self._inner.ledger_row(blob)

    async def failed(self, tenant_id: str | None = None) -> list[ContentBlob]:
        return await self._inner.failed(tenant_id)
