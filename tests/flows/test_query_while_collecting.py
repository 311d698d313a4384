"""While a collector writes the lake it holds the file; it serves the lake over Kusto REST, and
`auditlake query`, `query_endpoint` and azure-kusto-data's KustoClient read it there meanwhile.

Real parts throughout: the emulator over HTTP, the collector, duckdb-kql's server, the Kusto SDK.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from azure.kusto.data import KustoClient, KustoConnectionStringBuilder

from auditlake.cli import run_kql
from auditlake.emulator.server import EmulatorServer
from auditlake.lake.duckdb_lake import LocalLake
from auditlake.lake.serve import EndpointError, LakeEndpoint, endpoint_file, find_endpoint, query_endpoint
from auditlake.localrun import collect
from function_app.config import Settings
from function_app.core.model import CONTENT_TYPES
from function_app.o365.auth import StaticTokenProvider
from tests.flows.conftest import AUDITLAKE, REPO, RunningEmulator, collect_env

pytestmark = pytest.mark.slow

TENANT = "3e1d2c4b-5a69-4788-9c0d-1e2f3a4b5c6d"
Key = tuple[str, int, str]


def _truth(base_url: str, end: datetime | None = None) -> set[Key]:
    """The keys of every record the emulator makes available (up to *end*)."""
    query = f"tenantId={TENANT}" + (f"&end={end.strftime('%Y-%m-%dT%H:%M:%SZ')}" if end else "")
    with urllib.request.urlopen(f"{base_url}/_emulator/truth?{query}", timeout=30) as resp:
        body = json.loads(resp.read())
    return {(r[0], int(r[1]), r[2]) for r in body["records"]}


def kusto_rows(url: str, database: str, kql: str) -> list[list[Any]]:
    with KustoClient(KustoConnectionStringBuilder.with_no_authentication(url)) as client:
        table = client.execute_query(database, kql).primary_results[0]
        return [row.to_list() for row in table]


@dataclass
class Answer:
    name: str
    seconds: float
    value: int
    during: bool
    """Answered while collect() had not yet returned."""


class BlobGate:
    """Holds the emulator's blob GETs past a limit the test thread moves, so that answers are asked
    at the points of the backfill the test needs (an empty lake, then a part of it) whatever the
    machine's speed. ``limit`` None serves every blob."""

    def __init__(self) -> None:
        self.limit: int | None = 0
        self.served = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._moved: asyncio.Condition | None = None

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if "/audit/" in request.path:
            if self._moved is None:
                self._loop, self._moved = asyncio.get_running_loop(), asyncio.Condition()
            async with self._moved:
                await self._moved.wait_for(lambda: self.limit is None or self.served < self.limit)
                self.served += 1
        return await handler(request)

    def open_to(self, limit: int | None) -> None:
        """From another thread: serve blobs up to *limit* in all (None: every blob)."""
        self.limit = limit
        if self._loop is not None and not self._loop.is_closed():
            asyncio.run_coroutine_threadsafe(self._notify(), self._loop).result(timeout=10)

    async def _notify(self) -> None:
        assert self._moved is not None
        async with self._moved:
            self._moved.notify_all()


@dataclass
class Collector:
    """collect() in a thread with its own event loop, the emulator in the same loop."""

    lake: LocalLake
    days: float
    records_per_day: int
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished: threading.Event = field(default_factory=threading.Event)
    report: Any = None
    error: BaseException | None = None
    expected: set[Key] = field(default_factory=set)
    served: set[Key] = field(default_factory=set)
    gate: BlobGate | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished.set()

    async def _run(self) -> None:
        middlewares = [self.gate.middleware] if self.gate else []
        async with EmulatorServer(tenant_ids=[TENANT], seed=23, days=self.days, records_per_day=self.records_per_day,
                                  scenario="quiet", middlewares=middlewares) as emu:
            settings = Settings(api_root=emu.api_root, retry_base=0.01, retry_max=0.05)
            self.started = datetime.now(UTC)
            try:
                self.report = await collect(settings, self.lake, [TENANT], CONTENT_TYPES,
                                            tokens=StaticTokenProvider("t"))
            finally:
                self.finished.set()
            # As test_collect_e2e: every record available when the run started must be in the lake,
            # and nothing the emulator never served.
            self.expected = await asyncio.to_thread(_truth, emu.base_url, self.started)
            self.served = await asyncio.to_thread(_truth, emu.base_url)


def _answer(name: str, ask: Callable[[], int], collector: Collector) -> Answer:
    began = time.perf_counter()
    value = ask()
    seconds = time.perf_counter() - began
    return Answer(name, seconds, value, during=not collector.finished.is_set())


FIRST_BLOBS = 6
HOLD_AT_MOST = 60.0
"""Seconds the first blobs are held for answers that see them; past it the test goes on and fails."""


def _saw_records(answers: list[Answer]) -> bool:
    return all(a.during and a.value > 0 for a in answers if a.name.endswith(("AuditRecord | count", "AuditLatency()")))


def _latency_line(answers: list[Answer]) -> str:
    times = sorted(a.seconds * 1000 for a in answers)
    return f"n={len(times)} p50={statistics.median(times):.0f} ms max={times[-1]:.0f} ms"


def test_endpoint_answers_during_a_backfill_and_sees_every_record_once(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path / "lake.duckdb")
    gate = BlobGate()
    collector = Collector(lake, days=2, records_per_day=6000, gate=gate)
    answers: list[Answer] = []
    try:
        with LakeEndpoint(lake) as endpoint:
            url = endpoint.url
            assert find_endpoint(lake.path) == url
            thread = threading.Thread(target=collector.run, name="collector")
            thread.start()

            def count(kql: str) -> int:
                _, _, rows = query_endpoint(url, kql)
                return int(rows[0][0])

            def kusto_count(kql: str) -> int:
                # As Kusto Explorer does: the database picked from `.show databases` (the lake's name).
                return int(sum(row[-1] for row in kusto_rows(url, "lake", kql)))

            queries: list[tuple[str, Callable[[], int]]] = [
                ("query_endpoint AuditRecord | count", lambda: count("AuditRecord | count")),
                ("KustoClient AuditRecord | count", lambda: kusto_count("AuditRecord | count")),
                ("KustoClient ContentLedger by Status",
                 lambda: kusto_count("ContentLedger | summarize count() by Status")),
                ("query_endpoint AuditLatency()",
                 lambda: count("AuditLatency() | summarize Records = coalesce(sum(Records), 0)")),
                ("query_endpoint LedgerHealth()", lambda: count("LedgerHealth() | count")),
            ]
            # The gate shapes the backfill: no blob until a round of answers has seen the lake empty,
            # then the first few, held until a round has seen them through the library functions as
            # well as the tables, then the rest, answered as they come.
            held_since = time.monotonic()
            while not collector.finished.is_set():
                for name, ask in queries:
                    answers.append(_answer(name, ask, collector))
                if gate.limit == 0:
                    gate.open_to(FIRST_BLOBS)
                    held_since = time.monotonic()
                elif gate.limit == FIRST_BLOBS and (
                        _saw_records(answers[-len(queries):]) or time.monotonic() - held_since > HOLD_AT_MOST):
                    gate.open_to(None)
            thread.join(timeout=120)
            assert collector.error is None, collector.error
            assert collector.report.ok

            total = count("AuditRecord | count")
            # The record key is (Id, RecordType, Operation): the service reuses an Id across record types.
            assert count("AuditRecord | summarize by Id, RecordType, Operation | count") == total
            _, _, key_rows = query_endpoint(url, "AuditRecord | project Id, RecordType, Operation")
            keys = {(str(i), int(r), str(o)) for i, r, o in key_rows}
            assert len(keys) == len(key_rows) == total
            assert len(collector.expected) > 4000
            assert collector.expected <= keys, f"{len(collector.expected - keys)} records missing"
            assert keys <= collector.served, f"{len(keys - collector.served)} records the emulator never served"
            _, _, ledger = query_endpoint(url, "ContentLedger | summarize count() by Status")
            assert {status for status, _ in ledger} == {"ingested"}

            # The endpoint's answer is shaped as `auditlake query` shapes a local one.
            shape = ("AuditRecord | top 3 by Id asc | project TimeGenerated, Id, RecordType, AuditData, IngestedAt, "
                     "Late = IngestedAt - TimeGenerated")
            remote = query_endpoint(url, shape)
            with lake.locked() as con:
                local = run_kql(con, shape)
            assert remote[0] == local[0]
            assert remote[1][3] == local[1][3] == "JSON" and remote[1][0] == local[1][0] == "TIMESTAMP"
            assert [[orjson.loads(v) if t == "JSON" else v for v, t in zip(row, remote[1], strict=True)]
                    for row in remote[2]] == \
                   [[orjson.loads(v) if t == "JSON" else v for v, t in zip(row, local[1], strict=True)]
                    for row in local[2]]
        assert not endpoint_file(lake.path).exists()
        with pytest.raises(EndpointError, match="stopped answering"):
            query_endpoint(url, "AuditRecord | count")
    finally:
        gate.open_to(None)  # a test that failed while blobs were held lets the collector end
        lake.close()

    during = [a for a in answers if a.during]
    counts = [a.value for a in answers if a.name.endswith("AuditRecord | count")]
    assert counts == sorted(counts), "a later answer saw fewer records than an earlier one"
    during_counts = [a.value for a in during if a.name.endswith("AuditRecord | count")]
    assert len(during_counts) >= 4, "too few answers arrived while the collector ran"
    assert len(set(during_counts)) >= 2 and min(during_counts) < total, "the answers did not follow the backfill"
    assert any(a.value > 0 for a in during if "AuditLatency" in a.name), "a library function saw no records"
    assert {a.name for a in during} == {name for name, _ in queries}
    # The first answer also paid for loading the Kusto client in this process; reported apart.
    later = [a for a in during if a is not answers[0]]
    print(f"\nendpoint answers during the backfill ({total} records): {_latency_line(later)}; "
          f"first answer {answers[0].seconds * 1000:.0f} ms", file=sys.stderr)
    for name, _ in queries:
        print(f"  {name}: {_latency_line([a for a in later if a.name == name])}", file=sys.stderr)


# -- the CLI ---------------------------------------------------------------------------------------


@pytest.fixture
def collecting(emulator_factory: Callable[..., RunningEmulator], tmp_path: Path) -> Iterator[tuple[Path, str,
                                                                                                   subprocess.Popen[str]]]:
    """`auditlake collect --once` running in the background, serving its lake: (lake, url, process)."""
    # Every answer held back 0.4 s, two at a time: the backfill lasts long enough to be queried
    # without keeping the CPU busy, so the CLI's own start-up is not what is measured.
    emu = emulator_factory("--tenant-id", TENANT, "--days", "1", "--records-per-day", "1500", "--scenario", "quiet",
                           "--seed", "29", "--faults", "slow=1:0.4")
    lake = tmp_path / "lake.duckdb"
    proc = subprocess.Popen(
        [AUDITLAKE, "collect", "--once", "--quiet", "--tenant-id", TENANT, "--api-root", emu.api_root,
         "--since", "1d", "--lake", str(lake)],
        env=collect_env(AUDITLAKE_CONCURRENCY="2"), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True)
    stderr: list[str] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: stderr.extend(proc.stderr or ()), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        url = None
        while url is None and proc.poll() is None and time.monotonic() < deadline:
            url = find_endpoint(lake)
            time.sleep(0.05)
        assert url is not None, f"the collector published no endpoint; exit {proc.poll()}: {''.join(stderr)[-2000:]}"
        yield lake, url, proc
        assert proc.wait(timeout=120) == 0, "".join(stderr)[-3000:]
        reader.join(timeout=10)
        assert f"serving the lake for queries at {url}" in "".join(stderr)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_cli_query_reads_a_lake_while_collect_holds_it(collecting: tuple[Path, str, subprocess.Popen[str]]) -> None:
    lake, url, proc = collecting
    began = time.perf_counter()
    queried = subprocess.run([AUDITLAKE, "query", "--lake", str(lake), "--format", "json", "AuditRecord | count"],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    cli_seconds = time.perf_counter() - began
    assert queried.returncode == 0, queried.stderr
    during = orjson.loads(queried.stdout)[0]["Count"]
    # The first listing commits its ledger rows a moment after the endpoint is up (later on a busy
    # machine): ask until they are there, as a user watching a backfill would.
    rows: list[list[Any]] = []
    deadline = time.monotonic() + 60
    while not rows and proc.poll() is None and time.monotonic() < deadline:
        rows = kusto_rows(url, "lake", "ContentLedger | summarize count() by Status")
        if not rows:
            time.sleep(0.2)
    # A command that must write the lake names the collector holding it, and where to query meanwhile.
    refused = subprocess.run([AUDITLAKE, "replay", "--lake", str(lake)], cwd=REPO, capture_output=True, text=True,
                             timeout=120)
    assert proc.poll() is None, "collect finished before the answers arrived: the test proved nothing"
    assert rows, "the ledger stayed empty while collect ran"
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert "is being collected into by another `auditlake collect`" in refused.stderr and url in refused.stderr
    print(f"\nauditlake query during collect: {cli_seconds * 1000:.0f} ms (process start included), "
          f"{during} records so far", file=sys.stderr)

    assert proc.wait(timeout=120) == 0
    assert not endpoint_file(lake).exists(), "the discovery file outlived the collector"
    after = subprocess.run([AUDITLAKE, "query", "--lake", str(lake), "--format", "json", "AuditRecord | count"],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    assert after.returncode == 0, after.stderr
    final = orjson.loads(after.stdout)[0]["Count"]
    assert final > 0 and final >= during


# -- discovery and errors ----------------------------------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_stale_discovery_files_are_ignored(tmp_path: Path) -> None:
    lake = tmp_path / "lake.duckdb"
    discovery = endpoint_file(lake)
    assert find_endpoint(lake) is None
    url = f"http://127.0.0.1:{_free_port()}"
    discovery.write_text(json.dumps({"url": url, "pid": _dead_pid()}))
    assert find_endpoint(lake) is None, "the process that wrote it is gone"
    discovery.write_text(json.dumps({"url": url, "pid": os.getpid()}))
    assert find_endpoint(lake) is None, "nothing answers at its URL"
    discovery.write_text("{not json")
    assert find_endpoint(lake) is None


def test_endpoint_errors_are_one_line(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path / "lake.duckdb")
    try:
        with LakeEndpoint(lake) as endpoint:
            # Another lake's path with this discovery file copied beside it is not served here.
            other = tmp_path / "other.duckdb"
            endpoint_file(other).write_bytes(endpoint_file(lake.path).read_bytes())
            assert find_endpoint(other) is None

            with pytest.raises(EndpointError) as bad:
                query_endpoint(endpoint.url, "AuditRecord | wher Id == 1")
            assert "\n" not in str(bad.value) and "could not parse" in str(bad.value), bad.value
            with pytest.raises(EndpointError) as unknown:
                query_endpoint(endpoint.url, "AuditRecord | where NoSuchColumn == 1")
            assert "\n" not in str(unknown.value) and "NoSuchColumn" in str(unknown.value), unknown.value
            with pytest.raises(EndpointError) as write:
                query_endpoint(endpoint.url, '.set-or-append AuditRecord <| print Id = "x"')
            assert "writes are disabled" in str(write.value), write.value
            assert query_endpoint(endpoint.url, "AuditRecord | count")[2] == [(0,)]

            port = int(endpoint.url.rsplit(":", 1)[1])
            with pytest.raises(EndpointError) as in_use, LakeEndpoint(lake, port=port):
                pass
            assert str(in_use.value).startswith(f"--serve-port {port}: in use"), in_use.value
            # The failed second endpoint did not take the first one's discovery file.
            assert find_endpoint(lake.path) == endpoint.url

            _, types, rows = query_endpoint(
                endpoint.url, 'print t = datetime(2024-05-01 10:00:00), d = 90m, j = dynamic({"a": [1, 2]}), s = "x"')
            assert types == ["TIMESTAMP", "INTERVAL", "JSON", "VARCHAR"]
            assert rows == [(datetime(2024, 5, 1, 10), timedelta(minutes=90), '{"a": [1, 2]}', "x")]
    finally:
        lake.close()


def test_leaving_the_endpoint_stops_a_running_query(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path / "lake.duckdb")
    heavy = ("range x from 1 to 40000 step 1 | extend k = 1 "
             "| join kind=inner (range y from 1 to 40000 step 1 | extend k = 1) on k | summarize count()")
    outcome: dict[str, Any] = {}

    def ask(url: str) -> None:
        try:
            outcome["answer"] = query_endpoint(url, heavy)
        except EndpointError as exc:
            outcome["error"] = str(exc)

    try:
        with LakeEndpoint(lake) as endpoint:
            query_endpoint(endpoint.url, "print 1")
            asker = threading.Thread(target=ask, args=(endpoint.url,))
            asker.start()
            time.sleep(0.5)  # the query is running on the endpoint's cursor
            leaving = time.perf_counter()
        left = time.perf_counter() - leaving
        asker.join(timeout=30)
        assert outcome == {"error": f"the collector at {endpoint.url} stopped answering"}
        assert left < 5, f"leaving took {left:.1f} s"
        # The lake's own connection is untouched and usable.
        with lake.locked() as con:
            assert con.execute('SELECT count(*) FROM "AuditRecord"').fetchone() == (0,)
    finally:
        lake.close()
