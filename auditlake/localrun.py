"""Local collection into a DuckDB lake: the CLI's ``collect`` and ``demo`` share this."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import duckdb

from auditlake.lake.duckdb_lake import LocalLake
from function_app.compose import AdxTarget, feeds_of, open_parts, utcnow
from function_app.config import Settings
from function_app.core.model import BlobStatus, ContentBlob, utc
from function_app.core.pipeline import CollectReport, Pipeline
from function_app.core.process import BlobOutcome
from function_app.entra.poller import ENTRA_RETENTION, EntraPoller, EntraRules, StreamOutcome, poll_tenants
from function_app.entra.streams import Stream
from function_app.gc_tuning import periodic_collection
from function_app.o365.auth import TokenProvider
from function_app.purview.backfill import (
    SEARCH_CONTENT_TYPE,
    BackfillOptions,
    BackfillReport,
    BackfillRunner,
    SliceRow,
    TenantBackfill,
)
from function_app.purview.client import SearchUnavailableError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Progress:
    """Callbacks a front end can use to draw progress; all optional."""

    listed: Callable[[int], None] = lambda n: None
    settled: Callable[[BlobOutcome], None] = lambda o: None
    passed: Callable[[CollectReport, float | None], None] = lambda report, next_in: None
    """After each pass of a long run: its report, and the seconds until the next pass (None: none follows)."""
    entra: Callable[[Sequence[StreamOutcome]], None] = lambda outcomes: None
    """After each pass's Entra ID polls: what each tenant's streams brought."""


async def collect(
    settings: Settings,
    lake: LocalLake,
    tenant_ids: Sequence[str] = (),
    content_types: Sequence[str] | None = None,
    *,
    adx: AdxTarget | None = None,
    since: datetime | None = None,
    once: bool = True,
    interval: float = 120.0,
    tokens: TokenProvider | None = None,
    env: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    clock: Callable[[], datetime] = utcnow,
    stop: asyncio.Event | None = None,
    feed: bool = True,
    entra: Sequence[Stream] = (),
    entra_rules: EntraRules | None = None,
) -> CollectReport:
    """Collect into *lake*, or with *adx* into ADX (the lake then holds the ledger and checkpoints,
    and ADX gets the ledger mirrored). With *once*, catch up, sweep and return; otherwise repeat
    every *interval* seconds until *stop* is set, returning the last pass's report.

    The tenants are ``feeds_of(settings, tenant_ids, content_types)``: each configured tenant
    keeps its own cloud and content types unless *content_types* replaces them.

    Raises LakeUnavailableError as soon as the lake itself fails (disk full, out of memory, a
    damaged file): the pass stops without fetching further blobs, and every blob not settled is
    left pending in the ledger, so running again after the cause is fixed loses nothing.

    *feed* collects the Management Activity feed; *entra* lists the Entra ID streams polled from
    Microsoft Graph in each pass too (their runs are in the report's ``runs``, their windows in the
    ledger); a stream without a checkpoint starts at *since*, else ``entra_rules.initial_lookback``."""
    progress = progress or Progress()
    feeds = feeds_of(settings, tenant_ids, content_types)
    lake.commit_records = settings.commit_records
    async with periodic_collection(), open_parts(settings, feeds=feeds, lake=lake, adx=adx, tokens=tokens,
                                                 env=env, clock=clock, entra=bool(entra)) as parts:
        pipeline = Pipeline(
            api=parts.api, state=parts.state, sink=parts.sink, build_rows=parts.build_rows, clock=parts.clock,
            rules=parts.rules, concurrency=settings.concurrency,
            on_listed=progress.listed, on_outcome=progress.settled,
        )
        poller = None
        if parts.entra is not None:
            rules = entra_rules or EntraRules()
            if since is not None:
                rules = replace(rules, initial_lookback=max(timedelta(minutes=1),
                                                            min(utc(clock()) - utc(since), ENTRA_RETENTION)))
            poller = EntraPoller(parts.entra, parts.state, parts.sink, rules=rules, now=parts.clock)
        pairs = [(t.tenant_id, ct) for t in feeds for ct in t.content_types]
        loop = asyncio.get_running_loop()
        while True:
            # Passes start every *interval* seconds, not *interval* after the previous one ended: a
            # blob that appears just after a pass starts waits one interval, whatever the pass took.
            pass_started = loop.time()
            # The feed and the Entra logs side by side: different APIs and budgets, one lake
            # (which serialises their writes).
            feed_pass = pipeline.collect_once(pairs, since=since, sweep=once) if feed else _no_feed()
            if poller is None:
                report = await feed_pass
            else:
                report, outcomes = await asyncio.gather(
                    feed_pass, poll_tenants(poller, [t.tenant_id for t in feeds], entra))
                report.runs.extend(o.run for o in outcomes if o.run is not None)
                progress.entra(outcomes)
            if report.stopped is not None:
                log.info("collect stopped blobs_settled=%d blobs_left_pending=%d",
                         len(report.outcomes), report.unsettled)
                raise report.stopped
            if once or (stop is not None and stop.is_set()):
                return report
            failed = report.count(BlobStatus.FAILED) + report.count(BlobStatus.EXPIRED)
            log.info("pass done blobs=%d failed_or_expired=%d", len(report.outcomes), failed)
            wait = next_pass_wait(interval, loop.time() - pass_started, clock())
            progress.passed(report, wait)
            try:
                if stop is None:
                    await asyncio.sleep(wait)
                else:
                    await asyncio.wait_for(stop.wait(), timeout=wait)
                    return report
            except TimeoutError:
                pass


PASS_PHASE_SECONDS = 0.02
"""Passes at a whole-second interval start this long after a whole second of the clock."""


def next_pass_wait(interval: float, elapsed: float, now: datetime) -> float:
    """Seconds from *now* until the next pass: *interval* after the last one started (*elapsed*
    ago), brought forward to just after a whole second when *interval* is a whole number of
    seconds.

    A listing's end is cut to a whole second (the API takes no fractions), so a blob created in
    the part of the second already gone when a pass lists waits a whole interval more: up to a
    second more at a 30 s poll, depending only on when the collector happened to start. Passes
    that start just after a whole second lose almost nothing to the cut. The start moves earlier,
    never later (less than a second, once; then passes are an interval apart again), so no
    listing comes later than the interval promises. Other intervals (tests use fractions) are
    kept as they are."""
    wait = max(0.0, interval - elapsed)
    if interval < 1 or interval != int(interval):
        return wait
    fraction = (now.timestamp() + wait) % 1.0
    early = (fraction - PASS_PHASE_SECONDS) % 1.0
    if early <= PASS_PHASE_SECONDS:
        return wait
    return max(0.0, wait - early)


async def _no_feed() -> CollectReport:
    return CollectReport()


class LakeSliceLedger:
    """``purview.backfill.SliceLedger`` over the lake's ``ContentLedger`` (the rows the lake's state
    store writes): what the StateStore port cannot do for search slices."""

    def __init__(self, lake: LocalLake) -> None:
        self._lake = lake

    async def slice_rows(self, tenant_id: str) -> dict[str, SliceRow]:
        def q(con: duckdb.DuckDBPyConnection) -> dict[str, SliceRow]:
            rows = con.execute(
                'SELECT "ContentId", "Status", "ContentUri" FROM "ContentLedger" '
                'WHERE "TenantId" = ? AND "ContentType" = ?', [tenant_id, SEARCH_CONTENT_TYPE]).fetchall()
            return {str(cid): SliceRow(str(status), str(uri or "")) for cid, status, uri in rows}

        return await self._lake.run(q)

    async def set_query(self, blob: ContentBlob) -> None:
        def q(con: duckdb.DuckDBPyConnection) -> None:
            con.execute(
                'UPDATE "ContentLedger" SET "ContentUri" = ?, "Status" = ? '
                'WHERE "TenantId" = ? AND "ContentType" = ? AND "ContentId" = ?',
                [blob.content_uri, BlobStatus.QUEUED.value, blob.tenant_id, blob.content_type, blob.content_id])

        await self._lake.run(q)


async def backfill(
    settings: Settings,
    lake: LocalLake,
    tenant_ids: Sequence[str] = (),
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    adx: AdxTarget | None = None,
    tokens: TokenProvider | None = None,
    env: Mapping[str, str] | None = None,
    options: BackfillOptions | None = None,
    clock: Callable[[], datetime] = utcnow,
    on_slice: Callable[[str, str], None] | None = None,
) -> BackfillReport:
    """Backfill ``[since, until)`` (by default the last ``AUDITLAKE_SEARCH_HISTORY_DAYS`` days up to
    now) from the Purview audit search into *lake* (or with *adx* into ADX; the lake keeps the slice ledger either way).

    *since* is floored to its UTC midnight. The range includes the feed's own 7 days on purpose:
    records the search holds and the feed never delivered are found there, and what the feed did
    deliver is de-duplicated by the record key. Running it again continues where it stopped:
    days already complete are skipped. Tenants whose cloud has no search API get one error line
    in the report; a failure of the lake itself raises, as ``collect`` does."""
    now = utc(clock())
    until = utc(until) if until is not None else now
    since = utc(since) if since is not None else until - timedelta(days=settings.search_history_days)
    feeds = feeds_of(settings, tenant_ids)
    report = BackfillReport()
    async with open_parts(settings, feeds=feeds, lake=lake, adx=adx, tokens=tokens, env=env, clock=clock,
                          search=True) as parts:
        assert parts.search is not None
        runner = BackfillRunner(search=parts.search, state=parts.state, ledger=LakeSliceLedger(lake),
                                sink=parts.sink, build_rows=parts.build_rows, clock=parts.clock,
                                options=options, on_slice=on_slice)
        for tenant in feeds:
            try:
                parts.search.client_for(tenant.tenant_id)
            except SearchUnavailableError as exc:
                # Before any slice is planned: nothing in the ledger for a search that cannot run.
                # The report carries the reason to the front end, which says it once.
                log.info("no backfill tenant_id=%s: %s", tenant.tenant_id, exc)
                skipped = TenantBackfill(tenant.tenant_id, since, until)
                skipped.errors.append(str(exc))
                report.tenants.append(skipped)
                continue
            report.tenants.append(await runner.run(tenant.tenant_id, since, until))
    return report
