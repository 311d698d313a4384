"""The Purview audit search backfill against `auditlake emulator` in its own process.

The feed is collected first (`auditlake collect --once`: its last 7 days), then the search backfills
the rest: every record the search holds for the range is then in the lake exactly once, each slice is
settled in the ledger, a kill during a slice loses and duplicates nothing, and each search fault
(stuck, failed, record-count limit, pagings that disagree, 429, timeouts on long ranges, records the
feed never delivered) ends with nothing lost.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from auditlake import localrun
from auditlake.lake.duckdb_lake import LocalLake
from function_app.config import Settings
from function_app.o365.auth import StaticTokenProvider
from function_app.purview.backfill import SEARCH_CONTENT_TYPE, BackfillOptions, BackfillReport
from function_app.purview.slices import SlicingRules, day_floor, iso_second
from tests.flows.conftest import AUDITLAKE, REPO, RunningEmulator, collect_env

TENANT = "5d2c9a1e-3b4f-4a6d-9c8e-7f1a2b3c4d5e"
Key = tuple[str, int, str]

pytestmark = pytest.mark.slow

# Quick polling for the emulator (a query ends on its second GET); a stuck query is given up
# after a few seconds instead of an hour.
OPTIONS = BackfillOptions(poll_interval=0.02, max_poll_interval=0.2, stuck_after=3.0, concurrency=4,
                          rules=SlicingRules(min_span=timedelta(hours=1)))


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as resp:
        return json.loads(resp.read())


def _graph_root(emu: RunningEmulator) -> str:
    return f"{emu.base_url}/graph"


def _env(emu: RunningEmulator) -> dict[str, str]:
    return collect_env(AUDITLAKE_API_ROOT=emu.api_root, AUDITLAKE_GRAPH_ROOT=_graph_root(emu))


def search_truth(emu: RunningEmulator, start: datetime, end: datetime) -> tuple[set[Key], set[Key]]:
    body = _get(f"{emu.base_url}/_emulator/search_truth?tenant={TENANT}&start={iso_second(start)}"
                f"&end={iso_second(end)}")
    keys = {(str(a), int(b), str(c)) for a, b, c in body["records"]}
    return keys, {(str(a), int(b), str(c)) for a, b, c in body["feedMissing"]}


def feed_truth(emu: RunningEmulator) -> set[Key]:
    body = _get(f"{emu.base_url}/_emulator/truth?tenantId={TENANT}")
    return {(str(a), int(b), str(c)) for a, b, c in body["records"]}


def _query(lake: Path, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(lake), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def collect_feed(emu: RunningEmulator, lake: Path) -> None:
    subprocess.run([AUDITLAKE, "collect", "--once", "--quiet", "--tenant-id", TENANT, "--lake", str(lake)],
                   env=_env(emu), cwd=REPO, check=True, capture_output=True, timeout=600)


def backfill(emu: RunningEmulator, lake: Path, since: datetime, until: datetime,
             options: BackfillOptions = OPTIONS) -> BackfillReport:
    env = _env(emu)

    async def go() -> BackfillReport:
        store = LocalLake(lake)
        try:
            return await localrun.backfill(Settings.from_env(env), store, [TENANT], since=since, until=until,
                                           tokens=StaticTokenProvider("test-token"), env=env, options=options)
        finally:
            store.close()

    return asyncio.run(go())


def assert_every_record_once(emu: RunningEmulator, lake: Path, since: datetime, until: datetime) -> set[Key]:
    expected, feed_missing = search_truth(emu, day_floor(since), until)
    rows = [(str(a), int(b), str(c)) for a, b, c in
            _query(lake, 'SELECT "Id", "RecordType", "Operation" FROM "AuditRecord"')]
    assert len(rows) == len(set(rows)), "a record is in the lake twice"
    missing = expected - set(rows)
    assert not missing, f"{len(missing)} of {len(expected)} search records missing, e.g. {sorted(missing)[:3]}"
    assert feed_missing <= set(rows)
    statuses = dict(_query(lake, f"""SELECT "Status", count(*) FROM "ContentLedger"
                                    WHERE "ContentType" = '{SEARCH_CONTENT_TYPE}' GROUP BY 1"""))
    assert set(statuses) == {"ingested"}, statuses
    return expected


def test_a_first_run_of_90_days_leaves_every_record_once(emulator_factory: Any, tmp_path: Path) -> None:
    emu = emulator_factory("--tenant-id", TENANT, "--days", "90", "--records-per-day", "100", "--seed", "21",
                           "--faults", "feedmissing=5")
    lake = tmp_path / "lake.duckdb"
    collect_feed(emu, lake)
    now = datetime.now(UTC)
    since, until = now - timedelta(days=90), now
    report = backfill(emu, lake, since, until)
    assert report.ok, report.tenants[0].errors
    expected = assert_every_record_once(emu, lake, since, until)
    assert len(expected) > 8000
    # The feed's records stay as the feed delivered them; the search adds the rest, marked.
    by_source = dict(_query(lake, 'SELECT "ContentType" = \'Purview.Search\', count(*) FROM "AuditRecord" GROUP BY 1'))
    assert by_source[False] >= len(feed_truth(emu)) - 5 and by_source[True] > 0
    t = report.tenants[0]
    assert t.ids.different == 0 and t.ids.same == t.records
    # Every whole day is counted; the counts add up to what the search returned for those days.
    counted = _query(lake, 'SELECT count(DISTINCT "Day"), sum("SearchRecords") FROM "SearchCount"')[0]
    assert counted[0] == 90
    # A second run asks nothing of the search: every day is done.
    again = backfill(emu, lake, since, until)
    assert again.tenants[0].days_done_before == again.tenants[0].days and again.tenants[0].queries_created == 0


_KILLABLE = """
import asyncio, os, sys
from datetime import datetime, timedelta
from auditlake import localrun
from auditlake.lake.duckdb_lake import LocalLake
from function_app.config import Settings
from function_app.o365.auth import StaticTokenProvider
from function_app.purview.backfill import BackfillOptions
from function_app.purview.slices import SlicingRules

async def main():
    lake = LocalLake(sys.argv[1])
    options = BackfillOptions(poll_interval=0.02, max_poll_interval=0.2, stuck_after=3.0, concurrency=4,
                              rules=SlicingRules(min_span=timedelta(hours=1)))
    def seen(slice_id, status):
        print(status, slice_id, flush=True)
    await localrun.backfill(Settings.from_env(os.environ), lake, [sys.argv[2]],
                            since=datetime.fromisoformat(sys.argv[3]), until=datetime.fromisoformat(sys.argv[4]),
                            tokens=StaticTokenProvider("test-token"), options=options, on_slice=seen)
    print("done", flush=True)

asyncio.run(main())
"""


def test_a_kill_during_a_slice_loses_and_duplicates_nothing(emulator_factory: Any, tmp_path: Path) -> None:
    # The first query never finishes, so a slice is surely in flight when the kill comes.
    emu = emulator_factory("--tenant-id", TENANT, "--days", "90", "--records-per-day", "100", "--seed", "22",
                           "--faults", "search_stuck=1")
    lake = tmp_path / "lake.duckdb"
    collect_feed(emu, lake)
    now = datetime.now(UTC)
    since, until = now - timedelta(days=90), now
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, str(lake), TENANT, since.isoformat(), until.isoformat()],
                            env=_env(emu), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    ingested = 0
    deadline = time.monotonic() + 300
    try:
        for line in proc.stdout:
            ingested += line.startswith("ingested")
            assert not line.startswith("done"), "the run ended before the kill"
            if ingested >= 12 or time.monotonic() > deadline:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert ingested >= 12
    in_flight = _query(lake, f"""SELECT count(*) FROM "ContentLedger" WHERE "ContentType" = '{SEARCH_CONTENT_TYPE}'
                                AND "Status" = 'queued' AND "ContentUri" <> ''""")[0][0]
    assert in_flight >= 1, "no slice was in flight when the run was killed"
    report = backfill(emu, lake, since, until)
    assert report.ok, report.tenants[0].errors
    assert report.tenants[0].queries_reused >= 1  # the queries the killed run made were polled again
    assert_every_record_once(emu, lake, since, until)


@pytest.mark.parametrize("faults", [
    "search_stuck=3",             # status never leaves running
    "search_fail=4",              # failed queries
    "search_limit=40",            # record-count limit exceeded
    "search_flaky=5",             # two pagings of one query differ
    "search_throttle=0.15",       # 429 with Retry-After
    "search_max_days=0.5",        # a day is too long: the query fails as a timeout
    "feedmissing=8",              # records only the search has
])
def test_search_faults_lose_nothing(emulator_factory: Any, tmp_path: Path, faults: str) -> None:
    emu = emulator_factory("--tenant-id", TENANT, "--days", "20", "--records-per-day", "100", "--seed", "23",
                           "--faults", faults)
    lake = tmp_path / "lake.duckdb"
    collect_feed(emu, lake)
    now = datetime.now(UTC)
    since, until = now - timedelta(days=20), now
    # A throttled poll waits its Retry-After (1 s): give stuck queries room beyond that.
    options = OPTIONS if "throttle" not in faults else BackfillOptions(
        poll_interval=0.02, max_poll_interval=0.2, stuck_after=10.0, concurrency=4, rules=OPTIONS.rules)
    report = backfill(emu, lake, since, until, options)
    assert report.ok, report.tenants[0].errors
    assert_every_record_once(emu, lake, since, until)
    t = report.tenants[0]
    stats = _get(f"{emu.base_url}/_emulator/stats")["search"]
    key = faults.split("=")[0]
    if key.startswith("search_"):
        assert stats["faults"].get(key, 0) > 0, stats
    if key == "search_flaky":
        # Every flaky first paging that left a record out was paged again (every record once, above).
        # Not "5 repagings": a flaky query whose slice holds no record drops none and needs none, and
        # which slices are the first five depends on the hour the test runs.
        assert stats["faults"]["search_flaky_records"] > 0
        assert t.repagings >= 1 and t.inconsistent_slices >= 1
        assert _query(lake, 'SELECT count(*) FROM "SearchCount" WHERE NOT "Consistent"')[0][0] >= 1
    if key in ("search_limit", "search_max_days"):
        assert t.slices_split > 0
