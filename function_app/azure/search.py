"""The Purview audit search in Azure: what the daily search timer does (``triggers/search.py``).

**The window.** Each run backfills, for every monitored tenant, the whole UTC days
``[startofday(now) - AUDITLAKE_SEARCH_HISTORY_DAYS, startofday(now) - 1 day)`` with
``purview.backfill.BackfillRunner``: records into ADX through the feed's own sink (the
``AuditRecord`` key de-duplicates them against what the feed delivered), slices in the Table
Storage ledger (mirrored to ADX's ``ContentLedger`` like blob rows). Days whose slices are all
``ingested`` are skipped, so:

* the first runs are the onboarding backfill (180 days by default: Purview Standard's retention),
  oldest day first, since the oldest are the next to leave the retention;
* every later run finds one new whole day: yesterday is left out (Purview indexes records late,
  and a day searched too early would be marked done short), so day D is searched on D+2 at the
  schedule's 03:30, after Purview had a day to catch up.

**The bound.** A run stops starting new days ``STOP_STARTING_BEFORE`` before host.json's
``functionTimeout`` and cancels what is still in flight ``CANCEL_BEFORE`` it, so the host never
kills the worker mid-write; what is left is the next run's: a day not done is taken up again whole,
and a slice whose query was created keeps the query's URL in the ledger, so the next run polls
that query again instead of starting another (Purview keeps running it meanwhile).

A tenant whose cloud has no search API logs one line per run and is skipped; its feed is not
touched. A tenant whose slices failed, or whose search refused (a missing permission), makes the
run fail after every tenant ran, so it shows in Application Insights (the slices are asked again
on the next run).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from function_app.compose import SearchRouter
from function_app.config import TenantConfig
from function_app.core.delivery import Runtime
from function_app.core.model import utc
from function_app.purview.backfill import BackfillOptions, BackfillRunner, SliceLedger, TenantBackfill
from function_app.purview.client import SearchUnavailableError
from function_app.purview.slices import DAY, day_floor

log = logging.getLogger(__name__)

HOST_JSON = Path(__file__).resolve().parents[2] / "host.json"
"""Deployed beside main.py (the app root), where the host reads it."""

UNSET_FUNCTION_TIMEOUT = timedelta(minutes=5)
"""Assumed when host.json sets no ``functionTimeout``: the shortest default of any plan
(Consumption), so a run never outlives the host's own limit."""

STOP_STARTING_BEFORE = timedelta(minutes=3)
"""No day is started later than this before the function timeout: a day is a query that Purview
takes minutes to run, then its pages (host.json's 10 minutes leave 7 minutes to start days)."""

CANCEL_BEFORE = timedelta(seconds=30)
"""What is still in flight is cancelled this long before the timeout (closing the clients takes a
moment); it resumes on the next run."""

OPTIONS = BackfillOptions()
"""The runner's patience: the defaults, made for the real service (tests make it quick)."""

monotonic: Callable[[], float] = time.monotonic
"""The clock a run's budget is measured on (a module attribute so a test can step it)."""

_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})(?:\.\d+)?$")


def function_timeout(path: Path = HOST_JSON) -> timedelta | None:
    """host.json's ``functionTimeout`` (``[d.]hh:mm:ss``); None when unbounded (``-1``).

    Unset or unreadable: ``UNSET_FUNCTION_TIMEOUT``. (An ``AzureFunctionsJobHost__functionTimeout``
    app setting would override host.json in the host; AuditLake sets none.)"""
    try:
        raw = json.loads(path.read_text(encoding="utf-8")).get("functionTimeout")
    except (OSError, ValueError, AttributeError):
        log.warning("cannot read functionTimeout from %s; assuming %s", path, UNSET_FUNCTION_TIMEOUT)
        return UNSET_FUNCTION_TIMEOUT
    if raw is None:
        return UNSET_FUNCTION_TIMEOUT
    if str(raw).strip() == "-1":
        return None
    match = _TIMESPAN.match(str(raw).strip())
    if match is None:
        log.warning("functionTimeout %r in %s is not [d.]hh:mm:ss; assuming %s", raw, path, UNSET_FUNCTION_TIMEOUT)
        return UNSET_FUNCTION_TIMEOUT
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def search_window(now: datetime, history_days: int) -> tuple[datetime, datetime]:
    """``[startofday(now) - history_days, startofday(now) - 1 day)``: the whole days a run keeps done."""
    today = day_floor(utc(now))
    return today - timedelta(days=history_days), today - DAY


@dataclass(frozen=True, slots=True)
class RunBudget:
    """When a run stops starting days and when it cancels what is in flight (monotonic seconds;
    None: never)."""

    stop_starting_at: float | None
    cancel_at: float | None

    @classmethod
    def starting_now(cls, timeout: timedelta | None) -> RunBudget:
        """The budget of a run the host started just now with *timeout*."""
        return cls.of(timeout, monotonic())

    @classmethod
    def of(cls, timeout: timedelta | None, started: float) -> RunBudget:
        if timeout is None:
            return cls(None, None)
        total = timeout.total_seconds()
        cancel = max(0.0, total - CANCEL_BEFORE.total_seconds())
        # A short timeout still gives starting days its first half.
        stop = min(max(total - STOP_STARTING_BEFORE.total_seconds(), total / 2), cancel)
        return cls(started + stop, started + cancel)


@dataclass(slots=True)
class SearchRun:
    """What one timer run did, per tenant (``skipped``: no search API in the tenant's cloud)."""

    since: datetime
    until: datetime
    tenants: list[TenantBackfill]
    skipped: list[str]
    cut_short: bool = False
    """Cancelled at ``cancel_at`` with days in flight (they resume on the next run)."""

    @property
    def failures(self) -> list[str]:
        out = []
        for t in self.tenants:
            if t.errors or t.slices_failed:
                out.append(f"tenant {t.tenant_id}: {t.slices_failed} slices failed"
                           + (f"; {'; '.join(t.errors[:3])}" if t.errors else ""))
        return out


async def search_backfill(
    rt: Runtime,
    search: SearchRouter,
    ledger: SliceLedger,
    *,
    tenants: Sequence[TenantConfig] | None = None,
    options: BackfillOptions | None = None,
    budget: RunBudget | None = None,
) -> SearchRun:
    """Backfill every tenant's window (module docstring); tenants run side by side, each with the
    runner's own concurrency, so one tenant's onboarding never starves another's new day.

    Raises only for the sink or the state store (as the runner does); search failures are in the
    returned ``SearchRun``."""
    since, until = search_window(rt.clock(), rt.settings.search_history_days)
    budget = budget or RunBudget(None, None)
    runner = BackfillRunner(search=search, state=rt.state, ledger=ledger, sink=rt.sink, build_rows=rt.build_rows,
                            clock=rt.clock, options=options or OPTIONS)
    stop_at = budget.stop_starting_at

    def stop() -> bool:
        return stop_at is not None and monotonic() >= stop_at

    run = SearchRun(since, until, [], [])
    chosen = tuple(tenants if tenants is not None else rt.settings.tenants)
    searchable = []
    for tenant in chosen:
        try:
            search.client_for(tenant.tenant_id)
        except SearchUnavailableError as exc:
            # Before any slice is planned: nothing is written for a search that cannot run.
            log.info("no search backfill tenant_id=%s: %s", tenant.tenant_id, exc)
            run.skipped.append(tenant.tenant_id)
            continue
        searchable.append(tenant)

    async def one(tenant: TenantConfig) -> None:
        run.tenants.append(await runner.run(tenant.tenant_id, since, until, stop=stop))

    log.info("search run since=%s until=%s tenants=%d skipped=%d", since.isoformat(), until.isoformat(),
             len(searchable), len(run.skipped))
    remaining = None if budget.cancel_at is None else max(0.0, budget.cancel_at - monotonic())
    try:
        async with asyncio.timeout(remaining):
            await asyncio.gather(*(one(t) for t in searchable))
    except TimeoutError:
        # The days in flight keep their rows (queued, with the query's URL): the next run re-polls
        # those queries and finishes the days.
        run.cut_short = True
        log.warning("search run cut short before the function timeout; days in flight resume on the next run")
    for t in run.tenants:
        log.info("search tenant done tenant_id=%s days=%d done_before=%d completed=%d left=%d slices_failed=%d "
                 "queries_created=%d queries_reused=%d records=%d inserted=%d duplicates=%d errors=%d",
                 t.tenant_id, t.days, t.days_done_before, t.days_completed, t.days_left, t.slices_failed,
                 t.queries_created, t.queries_reused, t.records, t.inserted, t.duplicates, len(t.errors))
    return run
