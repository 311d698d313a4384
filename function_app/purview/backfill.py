"""The backfill: history past the feed's 7 days from the Purview audit search, written as the feed's rows.

For each tenant, ``[since, until)`` is cut into UTC days (``slices.plan_slices``); each slice is a
query: created, polled until it finishes, its records paged and written through the ``Sink`` with
the same row builder as the feed (``ContentType`` ``Purview.Search``, ``ContentId`` the slice id),
so the ``AuditRecord`` key (``Id``, ``RecordType``, ``Operation``) de-duplicates them against what
the feed delivered, and a feed record arriving later is ignored the same way.

The ledger (``ContentLedger``, ContentType ``Purview.Search``) holds one row per slice:
``listed`` (planned, no query yet) → ``queued`` (query created; ``ContentUri`` its Graph URL) →
``ingested`` (``Records`` = records written) or ``failed`` (``Error`` says why).
``ContentCreated``/``ContentExpiration`` are the slice's start and end.

**The day is the unit of completion.** A day's ``SearchCount`` rows (records per workload and
record type) are written once every slice of the day is ingested, and only then are the day's root
slices marked ``ingested``: a day whose roots are all ``ingested`` is done and skipped by later
runs. Any other day is taken up again whole: slices with a query URL re-poll that query (a
restart never starts a query its slice already has while Graph still knows it), ingested pieces of
the day are paged again to recount them (their rows are duplicates and skipped), and failed ones
are asked again. So a kill at any moment loses nothing and duplicates nothing.

**Paging twice.** The same finished query paged twice has been seen to return different counts. A
query is paged once; when that paging's distinct records differ from Graph's
``approximateReturnedRecordCount``, it is paged again (at most ``max_pagings`` times, until two
pagings agree or the count is reached). Every paging's rows are written, so the lake holds their
union; a ``SearchCount`` bucket whose pagings disagreed is ``Consistent`` false.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from function_app.core.errors import ApiError, PermanentApiError
from function_app.core.model import BlobStatus, ContentBlob, utc
from function_app.core.ports import Sink, StateStore
from function_app.core.process import RowBuilder
from function_app.lake.schema import TABLES_BY_NAME
from function_app.purview.client import QueryGoneError, QueryState, QueryStatus, SearchUnavailableError
from function_app.purview.mapping import IdCheck, unified_record
from function_app.purview.slices import DAY, Next, Slice, SlicingRules, Trouble, day_floor, decide, plan_slices

log = logging.getLogger(__name__)

SEARCH_CONTENT_TYPE = "Purview.Search"
"""The source mark: the ContentType of search records in ``AuditRecord`` and of slices in the ledger."""
SEARCH_COUNT_TABLE = "SearchCount"

Key = tuple[str, int, str]
Bucket = tuple[str, int]


class SearchApi(Protocol):
    """The Purview audit search as the runner needs it (``client.PurviewSearchClient``)."""

    async def create_query(
        self, tenant_id: str, start: datetime, end: datetime, *, display_name: str,
        services: Sequence[str] = (), record_types: Sequence[str] = (),
    ) -> QueryState: ...

    async def get_query(self, tenant_id: str, query_url: str) -> QueryState: ...

    def records(self, tenant_id: str, query_url: str) -> AsyncIterator[list[dict[str, Any]]]: ...


@dataclass(frozen=True, slots=True)
class SliceRow:
    """What the ledger holds of one slice."""

    status: str
    content_uri: str


class SliceLedger(Protocol):
    """The two things about slices the ``StateStore`` port cannot do: read every slice row of a tenant
    (settled ones included: a done day is skipped), and point a slice at a new query."""

    async def slice_rows(self, tenant_id: str) -> Mapping[str, SliceRow]:
        """Every ``Purview.Search`` ledger row of *tenant_id*, by ContentId."""
        ...

    async def set_query(self, blob: ContentBlob) -> None:
        """Point *blob*'s row at the query now answering for it: ContentUri ``blob.content_uri``,
        Status ``queued`` (from ``listed``, or from a settled status when the slice is asked again)."""
        ...


@dataclass(frozen=True, slots=True)
class BackfillOptions:
    """How patient the runner is; the defaults are for the real service."""

    poll_interval: float = 5.0
    max_poll_interval: float = 60.0
    stuck_after: float = 3600.0
    """Seconds a query may stay notStarted/running before it is abandoned (Purview takes minutes)."""
    max_pagings: int = 3
    concurrency: int = 4
    """Days worked on at once (each day's slices one after another)."""
    services: tuple[str, ...] = ()
    """Query per day × service (``serviceFilters``); empty: one query per day for every service."""
    rules: SlicingRules = field(default_factory=SlicingRules)


@dataclass(slots=True)
class TenantBackfill:
    """What one tenant's backfill did."""

    tenant_id: str
    since: datetime
    until: datetime
    days: int = 0
    days_done_before: int = 0
    days_completed: int = 0
    days_left: int = 0
    """Days not started because the caller's ``stop`` said so (a run bounded in time): the next run's."""
    slices_ingested: int = 0
    slices_failed: int = 0
    slices_split: int = 0
    queries_created: int = 0
    queries_reused: int = 0
    queries_abandoned: int = 0
    repagings: int = 0
    records: int = 0
    inserted: int = 0
    duplicates: int = 0
    inconsistent_slices: int = 0
    search_count_rows: int = 0
    ids: IdCheck = field(default_factory=IdCheck)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and self.slices_failed == 0 and self.days_completed + self.days_done_before == self.days


@dataclass(slots=True)
class BackfillReport:
    tenants: list[TenantBackfill] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tenants)

    def total(self, name: str) -> int:
        return sum(int(getattr(t, name)) for t in self.tenants)

    def summary(self) -> str:
        """One line for a front end."""
        t = self.total
        failed = f", {t('slices_failed')} slices failed" if t("slices_failed") else ""
        errors = sum(len(x.errors) for x in self.tenants)
        return (f"backfill: {t('days')} days ({t('days_done_before')} done before, {t('days_completed')} completed), "
                f"{t('slices_ingested')} slices, {t('records')} records from the search, {t('inserted')} new in the "
                f"lake, {t('duplicates')} already there{failed}" + (f", {errors} errors" if errors else ""))


@dataclass(slots=True)
class _Day:
    """The records of one day seen so far: key → bucket, and the buckets two pagings disagreed on."""

    keys: dict[Key, Bucket] = field(default_factory=dict)
    inconsistent: set[Bucket] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class _Outcome:
    ok: bool
    records: int = 0
    error: str | None = None


class BackfillRunner:
    """Runs the backfill of one tenant at a time over the ports; see the module docstring."""

    def __init__(
        self,
        *,
        search: SearchApi,
        state: StateStore,
        ledger: SliceLedger,
        sink: Sink,
        build_rows: RowBuilder,
        clock: Callable[[], datetime],
        options: BackfillOptions | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        on_slice: Callable[[str, str], None] | None = None,
    ) -> None:
        self._search, self._state, self._ledger, self._sink = search, state, ledger, sink
        self._build_rows, self._clock = build_rows, clock
        self._options = options or BackfillOptions()
        self._sleep, self._monotonic = sleep, monotonic
        self._on_slice = on_slice or (lambda slice_id, status: None)
        self._counts_table = SEARCH_COUNT_TABLE in TABLES_BY_NAME

    async def run(self, tenant_id: str, since: datetime, until: datetime, *,
                  stop: Callable[[], bool] | None = None) -> TenantBackfill:
        """Backfill ``[since floored to its UTC midnight, until)`` for *tenant_id*.

        *stop* is asked before each day starts: once it says True no further day is started (they
        count as ``days_left``; a day started is finished). Never raises for the search's own
        failures (they are in the report, and the slices stay in the ledger for the next run); a
        failure of the sink or the state store propagates."""
        start = day_floor(since)
        report = TenantBackfill(tenant_id, start, utc(until))
        rows = await self._ledger.slice_rows(tenant_id)
        by_day: dict[datetime, list[Slice]] = defaultdict(list)
        for piece in plan_slices(start, until, self._options.services):
            by_day[piece.day].append(piece)
        report.days = len(by_day)
        todo = []
        for day, roots in sorted(by_day.items()):
            if all(rows.get(r.slice_id, SliceRow("", "")).status == BlobStatus.INGESTED.value for r in roots):
                report.days_done_before += 1
            else:
                todo.append((day, roots))
        log.info("backfill tenant_id=%s since=%s until=%s days=%d done_before=%d", tenant_id, start.isoformat(),
                 report.until.isoformat(), report.days, report.days_done_before)
        gate = asyncio.Semaphore(max(1, self._options.concurrency))
        unavailable = asyncio.Event()

        async def one_day(day: datetime, roots: list[Slice]) -> None:
            async with gate:
                if unavailable.is_set():
                    return
                if stop is not None and stop():
                    report.days_left += 1
                    return
                try:
                    await self._day(tenant_id, day, roots, rows, report)
                except SearchUnavailableError as exc:
                    # The API is not there at all: one clear line, not one per day.
                    if not unavailable.is_set():
                        unavailable.set()
                        report.errors.append(str(exc))
                        log.error("backfill stopped tenant_id=%s: %s", tenant_id, exc)
                except PermanentApiError as exc:
                    # A refusal (permission, tenant): every other day would get the same answer.
                    if not unavailable.is_set():
                        unavailable.set()
                        report.errors.append(f"{type(exc).__name__}: {exc}")
                        log.error("backfill stopped tenant_id=%s: %s", tenant_id, exc)
                except ApiError as exc:
                    # Throttling or outages that outlived the retries: this day's slices stay in the
                    # ledger as they are (queued with their query) for the next run; the others go on.
                    report.errors.append(f"day {day.date().isoformat()}: {type(exc).__name__}: {exc}")
                    log.error("backfill day left for the next run tenant_id=%s day=%s error=%s", tenant_id,
                              day.date().isoformat(), exc)

        await asyncio.gather(*(one_day(day, roots) for day, roots in todo))
        if report.ids.different:
            log.warning("purview search id is not the unified audit log Id tenant_id=%s: %s; rows are keyed on "
                        "auditData.Id", tenant_id, report.ids.describe())
        return report

    # -- a day ------------------------------------------------------------------------------------

    async def _day(self, tenant_id: str, day: datetime, roots: list[Slice], rows: Mapping[str, SliceRow],
                   report: TenantBackfill) -> None:
        tally = _Day()
        outcomes = []
        for root in roots:
            outcomes.append((root, await self._slice(tenant_id, root, rows, tally, report, root_of_day=True)))
        complete = all(o.ok for _, o in outcomes)
        # A day cut short by --since or --until is not counted: its count would read as a short day.
        if complete and all(r.whole_day for r in roots):
            await self._write_counts(tenant_id, day, tally, report)
        # Last: a root marked ingested says the whole day, counts included, is done.
        for root, outcome in outcomes:
            await self._settle(tenant_id, root, outcome, report)
        if complete:
            report.days_completed += 1
            log.info("backfill day done tenant_id=%s day=%s records=%d", tenant_id, day.date().isoformat(),
                     len(tally.keys))

    async def _write_counts(self, tenant_id: str, day: datetime, tally: _Day, report: TenantBackfill) -> None:
        if not self._counts_table:
            log.debug("no %s table in this schema; counts not written", SEARCH_COUNT_TABLE)
            return
        buckets: Counter[Bucket] = Counter(tally.keys.values())
        if not buckets:
            return
        now = utc(self._clock())
        counted = [{"TenantId": tenant_id, "Day": day, "Workload": workload, "RecordType": record_type,
                    "SearchRecords": n, "Consistent": (workload, record_type) not in tally.inconsistent,
                    "CountedAt": now} for (workload, record_type), n in sorted(buckets.items())]
        day_blob = ContentBlob(tenant_id, SEARCH_CONTENT_TYPE, f"count/{day.date().isoformat()}", "", day, day + DAY)
        await self._sink.write_blob(day_blob, {SEARCH_COUNT_TABLE: counted})
        report.search_count_rows += len(counted)

    # -- a slice ------------------------------------------------------------------------------------

    def _blob(self, tenant_id: str, piece: Slice, uri: str = "") -> ContentBlob:
        return ContentBlob(tenant_id, SEARCH_CONTENT_TYPE, piece.slice_id, uri, piece.start, piece.end)

    async def _slice(self, tenant_id: str, piece: Slice, rows: Mapping[str, SliceRow], tally: _Day,
                     report: TenantBackfill, *, root_of_day: bool = False) -> _Outcome:
        """Get *piece*'s records into the sink (cutting it when it must); marks it settled unless it
        is a root of its day (the day settles those after its counts)."""
        row = rows.get(piece.slice_id)
        blob = self._blob(tenant_id, piece, row.content_uri if row is not None else "")
        if row is None:
            await self._state.register_listed([blob], utc(self._clock()))
        query_url = row.content_uri if row is not None and row.content_uri else None
        if query_url is not None:
            report.queries_reused += 1
        attempts = 1 if query_url is not None else 0
        notes: list[str] = []
        while True:
            if query_url is None:
                attempts += 1
                query = await self._search.create_query(
                    tenant_id, piece.start, piece.end, display_name=f"auditlake {piece.slice_id}",
                    services=(piece.service,) if piece.service else ())
                report.queries_created += 1
                query_url = query.url
                blob = self._blob(tenant_id, piece, query_url)
                await self._ledger.set_query(blob)
                self._on_slice(piece.slice_id, BlobStatus.QUEUED.value)
            try:
                state = await self._finish(tenant_id, query_url)
                if state is not None and state.status is QueryStatus.SUCCEEDED and not state.limit_exceeded:
                    outcome = await self._page(tenant_id, blob, state, tally, report)
                    break
            except QueryGoneError as exc:
                # Graph forgot the query (they expire): ask again; it is not the slice's fault, and
                # whatever was paged of it already is de-duplicated by the key.
                log.info("query gone, asking again tenant_id=%s slice=%s: %s", tenant_id, piece.slice_id, exc)
                query_url = None
                continue
            if state is None:
                trouble = Trouble.STUCK
                report.queries_abandoned += 1
            elif state.status is QueryStatus.SUCCEEDED:
                trouble = Trouble.LIMIT_EXCEEDED
            else:
                trouble = Trouble.FAILED
            detail = trouble.value + (f" (limit {state.record_count_limit})" if state is not None and
                                      state.limit_exceeded and state.record_count_limit else "")
            notes.append(detail)
            step = decide(piece, trouble, attempts, self._options.rules)
            log.info("slice trouble tenant_id=%s slice=%s attempt=%d trouble=%s next=%s", tenant_id,
                     piece.slice_id, attempts, detail, step.value)
            if step is Next.RETRY:
                query_url = None
                continue
            if step is Next.SPLIT:
                report.slices_split += 1
                results = [await self._slice(tenant_id, half, rows, tally, report) for half in piece.halves()]
                failed = [(half, r) for half, r in zip(piece.halves(), results, strict=True) if not r.ok]
                # The halves' own rows say why; a parent names them rather than repeating them all.
                outcome = _Outcome(not failed, sum(r.records for r in results),
                                   None if not failed else f"cut after {detail}; failed: "
                                   + ", ".join(half.slice_id for half, _ in failed))
                break
            # Cut as far as it goes: keep what the query does give, and say what is missing.
            error = f"{detail} at the shortest slice ({piece.span}); attempts={attempts}"
            if state is not None and state.status is QueryStatus.SUCCEEDED:
                partial = await self._page(tenant_id, blob, state, tally, report)
                error += f"; {partial.records} of about {state.approximate_count} records written"
            outcome = _Outcome(False, 0, error)
            break
        if not root_of_day:
            await self._settle(tenant_id, piece, outcome, report)
        return outcome

    async def _settle(self, tenant_id: str, piece: Slice, outcome: _Outcome, report: TenantBackfill) -> None:
        blob = self._blob(tenant_id, piece)
        status = BlobStatus.INGESTED if outcome.ok else BlobStatus.FAILED
        await self._state.mark(blob, status, at=utc(self._clock()), records=outcome.records, error=outcome.error)
        if outcome.ok:
            report.slices_ingested += 1
        else:
            report.slices_failed += 1
            log.error("slice failed tenant_id=%s slice=%s error=%s", tenant_id, piece.slice_id, outcome.error)
        self._on_slice(piece.slice_id, status.value)

    async def _finish(self, tenant_id: str, query_url: str) -> QueryState | None:
        """Poll until the query finished; None when it outlived ``stuck_after`` (abandoned: Graph
        documents no way to cancel one)."""
        opts = self._options
        started = self._monotonic()
        wait = opts.poll_interval
        while True:
            state = await self._search.get_query(tenant_id, query_url)
            if state.finished:
                return state
            if self._monotonic() - started >= opts.stuck_after:
                return None
            await self._sleep(wait)
            wait = min(opts.max_poll_interval, wait * 1.5)

    async def _page(self, tenant_id: str, blob: ContentBlob, state: QueryState, tally: _Day,
                    report: TenantBackfill) -> _Outcome:
        """Page the finished query into the sink, again while the pagings disagree (module docstring)."""
        pagings: list[dict[Key, Bucket]] = []
        for n in range(max(1, self._options.max_pagings)):
            if n:
                report.repagings += 1
            keys: dict[Key, Bucket] = {}
            async for page in self._search.records(tenant_id, state.url):
                check = IdCheck()
                records = [unified_record(item, check) for item in page]
                report.ids.add(check)
                tables = self._build_rows(records, blob, utc(self._clock()))
                for row in tables.get("AuditRecord", ()):
                    keys[(row["Id"], row["RecordType"], row["Operation"])] = (row.get("Workload") or "",
                                                                             row["RecordType"])
                result = await self._sink.write_blob(blob, tables)
                report.inserted += result.inserted
                report.duplicates += result.duplicates
            pagings.append(keys)
            expected = state.approximate_count
            if expected is None or len(keys) == expected:
                break
            if n and keys.keys() == pagings[-2].keys():
                break  # two pagings agree: the count was only approximate
            log.info("paging again tenant_id=%s slice=%s paged=%d approximate=%s", tenant_id, blob.content_id,
                     len(keys), expected)
        union: dict[Key, Bucket] = {}
        for keys in pagings:
            union.update(keys)
        if len(pagings) > 1:
            per_paging = [Counter(k.values()) for k in pagings]
            disagreeing = {b for b in set().union(*per_paging) if len({c[b] for c in per_paging}) > 1}
            if disagreeing:
                report.inconsistent_slices += 1
                tally.inconsistent |= disagreeing
                log.warning("pagings disagree tenant_id=%s slice=%s counts=%s union=%d", tenant_id, blob.content_id,
                            [len(k) for k in pagings], len(union))
        tally.keys.update(union)
        report.records += len(union)
        return _Outcome(True, len(union))

