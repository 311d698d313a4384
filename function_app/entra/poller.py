"""Polling the Entra ID logs with the Management feed's discipline: nothing lost, nothing twice.

For each tenant and stream (``streams.STREAMS``) a run reads ``[checkpoint, now - lag)`` in
windows of at most ``max_window`` (a day: a catch-up; a steady poll reads one short window):

* **every window is a ledger unit** (``ContentLedger``, ContentType ``Entra.<category>``,
  ContentId the window's start): ``listed`` when planned, ``ingested`` with its record count once
  every page was written, ``failed`` with the reason when Graph or the sink refused it;
* **pages followed to the end** (``@odata.nextLink``), each page written as it arrives, so memory
  holds one page, not a window;
* **the checkpoint moves only after the hand-off**: to a window's end once its rows are in the sink.
  A window that fails stops its stream for this run; the next run starts from the same checkpoint,
  so the window is asked again with the same ContentId, and its ledger row is marked again;
* **late records**: the first window of a run reads ``overlap`` further back than the checkpoint,
  and once every ``sweep_every`` a sweep reads the last ``sweep_span`` again. Records are keyed by
  their ``id`` in the tables (INSERT OR IGNORE locally, the ``<Table>Dedup`` views on ADX), so what
  was already written adds nothing, and what a re-read brings that is new is counted as ``late``;
* throttling, 5xx and cut-off pages are the client's (``client.EntraLogClient``): retried within
  the retry policy's bounds, the budget of 5 requests per 10 s per tenant kept.

A kill at any point loses nothing: the checkpoint is behind every window not yet marked
``ingested``, and a window written but not yet checkpointed is read again and de-duplicated.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from function_app.core.errors import ApiError, CheckpointConflictError
from function_app.core.model import BlobStatus, Checkpoint, ContentBlob, RunStats, utc
from function_app.core.ports import Sink, StateStore
from function_app.core.windows import split
from function_app.entra.streams import RAW_TABLE, Stream, envelope

log = logging.getLogger(__name__)

ENTRA_RETENTION = timedelta(days=30)
"""How long Entra keeps sign-in and audit logs with P1/P2: a window older than this cannot be read again."""


class EntraLogs(Protocol):
    """The Graph sign-in and directory audit logs as the poller needs them (``client.EntraLogClient``)."""

    def first_url(self, stream: Stream, start: datetime, end: datetime) -> str: ...

    def pages(self, tenant_id: str, stream: Stream, start: datetime, end: datetime
              ) -> AsyncIterator[list[dict[str, object]]]: ...


@dataclass(frozen=True, slots=True)
class EntraRules:
    """Knobs of the Entra poller; the defaults are the documented design (docs/entra.md)."""

    initial_lookback: timedelta = timedelta(days=7)
    """Where a stream without a checkpoint starts: Entra keeps 30 days with P1/P2."""
    max_window: timedelta = timedelta(hours=24)
    """Graph pages within a window and the poller writes page by page, so a long window costs no
    memory; short ones would cost requests, and Graph allows 5 per 10 s per tenant (a 7-day
    catch-up of five logs in 1-hour windows is 840 requests, 28 minutes of budget, before any data)."""
    overlap: timedelta = timedelta(minutes=30)
    lag: timedelta = timedelta(minutes=2)
    """Records of the last minutes are still arriving: a window ends this far before now."""
    sweep_span: timedelta = timedelta(hours=6)
    sweep_every: timedelta = timedelta(hours=24)

    def __post_init__(self) -> None:
        if not timedelta(0) < self.initial_lookback <= ENTRA_RETENTION:
            raise ValueError(f"initial_lookback must be within (0, 30 days], got {self.initial_lookback}")
        if self.max_window <= timedelta(0):
            raise ValueError("max_window must be positive")
        if min(self.overlap, self.lag, self.sweep_span) < timedelta(0) or self.sweep_every <= timedelta(0):
            raise ValueError("overlap, lag and sweep_span must not be negative; sweep_every must be positive")


@dataclass(slots=True)
class StreamOutcome:
    """What one run did for one tenant and stream."""

    tenant_id: str
    stream: str
    windows: int = 0
    records: int = 0
    inserted: int = 0
    late: int = 0
    swept: bool = False
    errors: list[str] = field(default_factory=list)
    run: RunStats | None = None
    """The ``CollectorRun`` row of this poll (also recorded in the state store)."""


def window_blob(tenant_id: str, stream: Stream, start: datetime, end: datetime, url: str) -> ContentBlob:
    """The ledger unit of one window: ContentId its start, so a retry after a failure is the same row."""
    return ContentBlob(
        tenant_id=tenant_id,
        content_type=stream.name,
        content_id=utc(start).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        content_uri=url,
        content_created=utc(start),
        content_expiration=utc(start) + ENTRA_RETENTION,
    )


def _time_of(record: Mapping[str, object], stream: Stream) -> datetime | None:
    raw = record.get(stream.time_field)
    if not isinstance(raw, str):
        return None
    try:
        return utc(datetime.fromisoformat(raw.replace("Z", "+00:00")))
    except ValueError:
        return None


class EntraPoller:
    """One tenant-and-stream poll at a time, against a state store and a sink."""

    def __init__(self, api: EntraLogs, state: StateStore, sink: Sink, *, rules: EntraRules | None = None,
                 now: Callable[[], datetime]) -> None:
        self._api = api
        self._state = state
        self._sink = sink
        self._rules = rules or EntraRules()
        self._now = now

    async def poll(self, tenant_id: str, stream: Stream) -> StreamOutcome:
        out = StreamOutcome(tenant_id, stream.name)
        started = utc(self._now())
        stats = RunStats(run_id=str(uuid.uuid4()), tenant_id=tenant_id, content_type=stream.name, started_at=started)
        checkpoint = await self._state.get_checkpoint(tenant_id, stream.name)
        end = started - self._rules.lag
        start = utc(checkpoint.position) if checkpoint else end - self._rules.initial_lookback
        # Entra has nothing older than its retention to give: a checkpoint left for longer starts there.
        start = max(start, started - ENTRA_RETENTION + timedelta(minutes=5))
        stats.window_start, stats.window_end = start, end
        out.run = stats
        try:
            checkpoint = await self._windows(tenant_id, stream, start, end, checkpoint, out, stats)
            if checkpoint is not None and not out.errors and self._sweep_due(checkpoint, started):
                await self._sweep(tenant_id, stream, started, end, checkpoint, out, stats)
        finally:
            stats.finished_at = utc(self._now())
            stats.errors = list(out.errors)
            await self._state.record_run(stats)
        return out

    def _sweep_due(self, checkpoint: Checkpoint, now: datetime) -> bool:
        if self._rules.sweep_span <= timedelta(0):
            return False
        return checkpoint.last_sweep is None or now - utc(checkpoint.last_sweep) >= self._rules.sweep_every

    async def _windows(self, tenant_id: str, stream: Stream, start: datetime, end: datetime,
                       checkpoint: Checkpoint | None, out: StreamOutcome, stats: RunStats) -> Checkpoint | None:
        first = True
        for window in split(start, end, self._rules.max_window):
            read_from = window.start - self._rules.overlap if first else window.start
            first = False
            blob = window_blob(tenant_id, stream, window.start, window.end,
                               self._api.first_url(stream, read_from, window.end))
            await self._state.register_listed([blob], utc(self._now()))
            out.windows += 1
            stats.blobs_listed += 1
            if not await self._read(tenant_id, stream, blob, read_from, window.end, window.start, out, stats):
                return checkpoint
            moved = Checkpoint(tenant_id, stream.name, window.end,
                               last_sweep=checkpoint.last_sweep if checkpoint else utc(self._now()),
                               etag=checkpoint.etag if checkpoint else None)
            try:
                checkpoint = await self._state.save_checkpoint(moved)
            except CheckpointConflictError as exc:
                # Another instance moved it: its windows are its own; ours stay in the ledger.
                out.errors.append(f"{stream.name}: {exc}")
                return None
        return checkpoint

    async def _sweep(self, tenant_id: str, stream: Stream, now: datetime, end: datetime,
                     checkpoint: Checkpoint, out: StreamOutcome, stats: RunStats) -> None:
        start = max(end - self._rules.sweep_span, now - ENTRA_RETENTION + timedelta(minutes=5))
        blob = window_blob(tenant_id, stream, start, end, self._api.first_url(stream, start, end))
        # A sweep re-reads windows the ledger already has; its own row says when and what it found.
        blob = ContentBlob(blob.tenant_id, blob.content_type, f"sweep/{blob.content_id}", blob.content_uri,
                           blob.content_created, blob.content_expiration)
        await self._state.register_listed([blob], utc(self._now()))
        if await self._read(tenant_id, stream, blob, start, end, end, out, stats):
            out.swept = True
            stamped = Checkpoint(tenant_id, stream.name, checkpoint.position, last_sweep=now, etag=checkpoint.etag)
            try:
                await self._state.save_checkpoint(stamped)
            except CheckpointConflictError as exc:
                out.errors.append(f"{stream.name}: {exc}")

    async def _read(self, tenant_id: str, stream: Stream, blob: ContentBlob, start: datetime, end: datetime,
                    late_before: datetime, out: StreamOutcome, stats: RunStats) -> bool:
        """Read ``[start, end)`` page by page into the sink; mark the ledger. True when all of it was written.

        Records older than *late_before* were in an earlier read's range: those the sink had not
        seen are late arrivals."""
        records = 0
        try:
            async for page in self._api.pages(tenant_id, stream, start, end):
                stats.pages += 1
                records += len(page)
                earlier, current = _split_late(page, stream, late_before)
                for part, is_late in ((earlier, True), (current, False)):
                    if not part:
                        continue
                    rows = [{"Records": [envelope(stream, tenant_id, r) for r in part]}]
                    result = await self._sink.write_blob(blob, {RAW_TABLE: rows})
                    out.inserted += result.inserted
                    if is_late:
                        out.late += result.inserted
        except ApiError as exc:
            message = f"{stream.name} window {blob.content_id}: {exc}"
            # Said once by whoever reads the outcome (the CLI's error line, the timer's failure).
            log.info("entra: tenant %s: %s", tenant_id, message)
            out.errors.append(message)
            await self._state.mark(blob, BlobStatus.FAILED, at=utc(self._now()), records=records, error=str(exc))
            return False
        out.records += records
        await self._state.mark(blob, BlobStatus.INGESTED, at=utc(self._now()), records=records)
        return True


def _split_late(page: Sequence[dict[str, object]], stream: Stream, before: datetime
                ) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    earlier: list[dict[str, object]] = []
    current: list[dict[str, object]] = []
    for record in page:
        when = _time_of(record, stream)
        (earlier if when is not None and when < before else current).append(record)
    return earlier, current


async def poll_tenants(poller: EntraPoller, tenant_ids: Sequence[str], streams: Sequence[Stream]
                       ) -> list[StreamOutcome]:
    """Every stream of every tenant, one after another: the per-tenant request budget is the
    limit that matters, and a tenant's streams share it."""
    outcomes: list[StreamOutcome] = []
    for tenant_id in tenant_ids:
        for stream in streams:
            outcomes.append(await poller.poll(tenant_id, stream))
    return outcomes


def summary_of(outcomes: Sequence[StreamOutcome]) -> dict[str, Any]:
    """Totals of a run, for a log line or the CLI."""
    return {
        "windows": sum(o.windows for o in outcomes),
        "records": sum(o.records for o in outcomes),
        "inserted": sum(o.inserted for o in outcomes),
        "late": sum(o.late for o in outcomes),
        "errors": [e for o in outcomes for e in o.errors],
    }
