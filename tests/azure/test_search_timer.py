"""The search timer driven as the host drives it: emulator (Graph routes over HTTP) → the
``search_backfill`` function → Table Storage (Azurite) ledger and the fake ADX.

The emulator's ``feedmissing`` fault withholds records from the feed that the search still holds:
those must reach ADX as ``Purview.Search`` rows. A second run must not ask Graph again for a day
that is done; a tenant in a cloud without the API is skipped in one line; a run stopped by its
budget leaves the remaining days to the next, which finishes them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.functions.timer import TimerRequest

import function_app.azure.search as search_module
from auditlake.emulator.server import EmulatorServer
from function_app.azure.deps import close_runtime
from function_app.purview.backfill import SEARCH_CONTENT_TYPE, BackfillOptions
from function_app.purview.slices import DAY, SlicingRules, day_floor, iso_second
from tests.azure.conftest import FunctionsHost, Harness, flush_mirror

TENANT = "7e1d2c3b-4a5f-4e6d-8c7b-9a0f1e2d3c4b"
Key = tuple[str, int, str]

# The emulator ends a query on its second GET: poll quickly instead of every 5 s.
QUICK = BackfillOptions(poll_interval=0.02, max_poll_interval=0.2, stuck_after=30.0,
                        rules=SlicingRules(min_span=timedelta(hours=1)))


@pytest.fixture(autouse=True)
def quick_runner(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(search_module, "OPTIONS", QUICK)
    yield


async def _invoke(host: FunctionsHost) -> None:
    await host.functions["search_backfill"](TimerRequest())


async def _truth(emu: EmulatorServer, start: datetime, end: datetime) -> tuple[set[Key], set[Key]]:
    url = (f"{emu.base_url}/_emulator/search_truth?tenant={TENANT}&start={iso_second(start)}"
           f"&end={iso_second(end)}")
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        body = await resp.json()
    return ({(str(a), int(b), str(c)) for a, b, c in body["records"]},
            {(str(a), int(b), str(c)) for a, b, c in body["feedMissing"]})


def _slices(h: Harness) -> dict[str, dict[str, Any]]:
    try:
        ledger = h.ledger()
    except ResourceNotFoundError:  # the run never touched the ledger: not even its table exists
        return {}
    return {cid: row for cid, row in ledger.items() if row["ContentType"] == SEARCH_CONTENT_TYPE}


def _rows(ingestions: list[Any], table: str) -> list[dict[str, Any]]:
    return [r for i in ingestions if i.table == table for r in i.rows]


def test_the_timer_backfills_the_window_into_adx_and_a_second_run_asks_nothing_again(harness: Harness) -> None:
    asyncio.run(_backfill(harness))


async def _backfill(h: Harness) -> None:
    async with EmulatorServer([TENANT], seed=5, days=5, records_per_day=60, scenario="quiet",
                              faults="feedmissing=12") as emu:
        # [today - 4 days, today - 1 day): three whole days, all older than the emulator's clock.
        h.configure(AUDITLAKE_TENANTS=TENANT, AUDITLAKE_API_ROOT=emu.api_root, AUDITLAKE_GRAPH_ROOT=emu.graph_root,
                    AUDITLAKE_SEARCH_HISTORY_DAYS="4")
        host = FunctionsHost(h)
        today = day_floor(datetime.now(UTC))
        since, until = today - 4 * DAY, today - DAY
        try:
            await _invoke(host)
            first_queries = emu.state.search.stats.queries
            await flush_mirror()
            first = h.adx.read_ingestions()
            await _invoke(host)
            await flush_mirror()
            second = h.adx.read_ingestions()
        finally:
            await close_runtime()
        expected, feed_missing = await _truth(emu, since, until)

    # Slices: one per whole day, settled in Table Storage, each with the query that answered it.
    slices = _slices(h)
    days = (since, since + DAY, since + 2 * DAY)
    assert sorted(slices) == [f"{iso_second(d)}/{iso_second(d + DAY)}/all" for d in days]
    assert {r["Status"] for r in slices.values()} == {"ingested"}
    assert all(str(r["ContentUri"]).startswith(emu.graph_root) for r in slices.values())
    assert first_queries == 3

    # Records: every record the search holds for the window, the feed's missing ones included.
    searched = [r for r in _rows(first, "AuditRecord") if r["ContentType"] == SEARCH_CONTENT_TYPE]
    got = {(str(r["Id"]), int(r["RecordType"]), str(r["Operation"])) for r in searched}
    assert feed_missing, "the fault withheld no record inside the window: pick another seed"
    assert feed_missing <= got
    assert got == expected
    assert {r["ContentId"] for r in searched} <= set(slices)

    # Counts: one set of SearchCount rows per day, adding up to the records.
    counts = _rows(first, "SearchCount")
    assert {str(r["Day"])[:10] for r in counts} == {d.date().isoformat() for d in days}
    assert sum(int(r["SearchRecords"]) for r in counts) == len(expected)

    # The ledger mirror: the slices' changes reach ADX's ContentLedger like blob rows.
    mirrored = [r for r in _rows(first, "ContentLedger") if r["ContentType"] == SEARCH_CONTENT_TYPE]
    assert {r["ContentId"] for r in mirrored} == set(slices)
    assert {r["Status"] for r in mirrored} >= {"listed", "queued", "ingested"}
    assert all(r["ContentUri"] for r in mirrored if r["Status"] != "listed")

    # The second run: every day is done, so Graph is not asked again and nothing is written.
    assert emu.state.search.stats.queries == first_queries
    assert _rows(second, "AuditRecord") == [] and _rows(second, "SearchCount") == []


def test_a_tenant_in_a_cloud_without_the_api_is_skipped_in_one_line(
        harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    tenants = json.dumps([{"tenantId": TENANT, "cloud": "GCCHigh"}])
    harness.configure(AUDITLAKE_TENANTS=tenants, AUDITLAKE_SEARCH_HISTORY_DAYS="4")

    async def run() -> None:
        try:
            await _invoke(FunctionsHost(harness))
        finally:
            await close_runtime()

    with caplog.at_level(logging.INFO, logger="function_app"):
        asyncio.run(run())
    lines = [r for r in caplog.records if "Purview audit search API does not exist" in r.getMessage()]
    assert len(lines) == 1 and TENANT in lines[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert _slices(harness) == {}
    assert harness.adx.read_ingestions() == []


def test_a_run_stopped_by_its_budget_leaves_the_rest_to_the_next(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    asyncio.run(_stopped(harness, monkeypatch))


async def _stopped(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    # A clock that moves a minute each time the run looks at it: with host.json's 10 minutes the
    # run stops starting days at minute 7, after the budget's start, the cancel check and five days.
    ticks = iter(range(0, 10_000, 60))
    monkeypatch.setattr(search_module, "monotonic", lambda: float(next(ticks)))
    async with EmulatorServer([TENANT], seed=8, days=9, records_per_day=30, scenario="quiet") as emu:
        h.configure(AUDITLAKE_TENANTS=TENANT, AUDITLAKE_API_ROOT=emu.api_root, AUDITLAKE_GRAPH_ROOT=emu.graph_root,
                    AUDITLAKE_SEARCH_HISTORY_DAYS="8")
        host = FunctionsHost(h)
        today = day_floor(datetime.now(UTC))
        try:
            await _invoke(host)
            stopped = _slices(h)
            queries_then = emu.state.search.stats.queries
            monkeypatch.setattr(search_module, "monotonic", lambda: 0.0)  # the next run has its whole budget
            await _invoke(host)
        finally:
            await close_runtime()
        expected, _ = await _truth(emu, today - 8 * DAY, today - DAY)

    # The first run did the five oldest days and planned nothing for the last two.
    days = [today - n * DAY for n in range(8, 1, -1)]
    assert sorted(stopped) == [f"{iso_second(d)}/{iso_second(d + DAY)}/all" for d in days[:5]]
    assert {r["Status"] for r in stopped.values()} == {"ingested"}
    assert queries_then == 5
    # The next run did only the two left, and the window is whole.
    done = _slices(h)
    assert sorted(done) == [f"{iso_second(d)}/{iso_second(d + DAY)}/all" for d in days]
    assert {r["Status"] for r in done.values()} == {"ingested"}
    assert emu.state.search.stats.queries == 7
    got = {(str(r["Id"]), int(r["RecordType"]), str(r["Operation"]))
           for r in _rows(h.adx.read_ingestions(), "AuditRecord") if r["ContentType"] == SEARCH_CONTENT_TYPE}
    assert got == expected
