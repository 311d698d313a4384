"""The local lake failing under `collect`: a full disk (a real one, a tmpfs in a private mount
namespace, and one injected at the DuckDB connection), a 50 MB record, and a lake file that is
not a sound DuckDB database. The emulator serves over real HTTP; the collector is the real CLI
where the test is about what the user sees.

What must hold: the run stops promptly with one clear line and exit 1, no operation is left
waiting, every blob the ledger calls ``ingested`` has its rows in the lake, and a rerun after
the cause is gone ends with every record of the emulator's truth in the lake exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from auditlake.emulator.server import EmulatorServer
from auditlake.lake.duckdb_lake import LakeCause, LakeUnavailableError, LocalLake
from auditlake.localrun import collect
from function_app.config import Settings
from function_app.core.model import CONTENT_TYPES
from function_app.core.pipeline import AWAITING_COMMIT_FACTOR
from function_app.o365.auth import StaticTokenProvider
from tests.flows.conftest import AUDITLAKE, REPO, collect_env

TENANT = "3c2b1a09-8f7e-4d6c-9b5a-4e3d2c1b0a98"
Key = tuple[str, int, str]

pytestmark = pytest.mark.slow


# -- what the lake holds ----------------------------------------------------------------------


def _query(lake: Path, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(lake), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _lake_keys(lake: Path) -> list[Key]:
    return [(str(a), int(b), str(c)) for a, b, c in _query(lake, 'SELECT "Id", "RecordType", "Operation" '
                                                                'FROM "AuditRecord"')]


def _ledger(lake: Path) -> dict[str, str]:
    return {str(cid): str(s) for cid, s in _query(lake, 'SELECT "ContentId", "Status" FROM "ContentLedger"')}


def _blob_keys(emu: EmulatorServer) -> dict[str, set[Key]]:
    return {b.content_id: {(k[0], int(k[1]), k[2]) for k in b.record_keys} for b in emu.state.tenants[TENANT].blobs}


def _assert_left_consistent(lake: Path, emu: EmulatorServer) -> dict[str, str]:
    """After a stopped run: nothing half-written. A blob the ledger calls ingested has every record
    in the lake; the others are still pending (listed or queued); no record is there twice."""
    ledger = _ledger(lake)
    keys = _lake_keys(lake)
    assert len(keys) == len(set(keys)), "a record is in the lake twice"
    assert set(ledger.values()) <= {"ingested", "queued", "listed"}, ledger
    blob_keys = _blob_keys(emu)
    for cid, status in ledger.items():
        if status == "ingested":
            assert blob_keys[cid] <= set(keys), f"blob {cid} is marked ingested without all its rows"
    return ledger


def _assert_exactly_once_and_all_ingested(lake: Path, emu: EmulatorServer, started: datetime) -> None:
    tenant = emu.state.tenants[TENANT]
    expected = {(k[0], int(k[1]), k[2])
                for k in tenant.truth(None, started - timedelta(days=7, minutes=-6), started, emu.state.now())}
    assert len(expected) > 500
    keys = _lake_keys(lake)
    assert len(keys) == len(set(keys)), "a record is in the lake twice"
    missing = expected - set(keys)
    assert not missing, f"{len(missing)} records missing, e.g. {sorted(missing)[:3]}"
    statuses = set(_ledger(lake).values())
    assert statuses == {"ingested"}, f"ledger statuses after the rerun: {statuses}"


def _collect_cmd(api_root: str, lake: str) -> list[str]:
    return [AUDITLAKE, "collect", "--once", "--quiet", "--tenant-id", TENANT, "--api-root", api_root, "--lake", lake]


def _assert_one_clear_line(stderr: str, expected_start: str, expected_end: str) -> None:
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr, stderr[-3000:]
    ours = [line for line in lines if line.startswith("auditlake:")]
    assert ours == [lines[-1]], stderr[-3000:]
    assert lines[-1].startswith(expected_start) and lines[-1].endswith(expected_end), lines[-1]
    # Logged errors would be a second account of the same failure (warnings such as a
    # subscription being started are the collector's ordinary talk).
    assert not [line for line in lines if " ERROR " in line or " CRITICAL " in line], stderr[-3000:]


# -- a real full disk -------------------------------------------------------------------------

# Runs inside a private mount namespace (unshare): mounts a tmpfs, fills it with ballast but for
# FREE bytes, runs the collector until the disk is full, keeps a copy of the lake, frees the
# space by deleting the ballast, and runs the collector again.
_DRIVER = r"""
import json, os, shutil, subprocess, sys, time
disk, out, free = sys.argv[1], sys.argv[2], int(sys.argv[3])
cmd = sys.argv[4:]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", disk], check=True)
st = os.statvfs(disk)
with open(os.path.join(disk, "ballast"), "wb") as f:
    f.write(b"\0" * (st.f_bavail * st.f_frsize - free))
lake = os.path.join(disk, "lake.duckdb")
runs = []
for i in (1, 2):
    st = os.statvfs(disk)
    started = time.monotonic()
    p = subprocess.run([lake if c == "{lake}" else c for c in cmd], capture_output=True, text=True, timeout=600)
    runs.append({"rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr,
                 "seconds": time.monotonic() - started, "free_before": st.f_bavail * st.f_frsize})
    dest = os.path.join(out, f"run{i}")
    os.makedirs(dest)
    for name in os.listdir(disk):
        if name.startswith("lake.duckdb"):
            shutil.copy(os.path.join(disk, name), dest)
    if i == 1:
        os.remove(os.path.join(disk, "ballast"))
with open(os.path.join(out, "runs.json"), "w") as f:
    json.dump(runs, f)
"""


def _namespaced(argv: list[str]) -> list[str]:
    # CI runs as root; elsewhere an unprivileged user namespace gives the same private mounts.
    # No skip: if neither works, the test fails and says so.
    if os.geteuid() == 0:
        return ["unshare", "--mount", "--propagation", "private", *argv]
    return ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private", *argv]


def test_collect_on_a_full_disk_stops_with_one_line_and_a_rerun_after_freeing_space_loses_nothing(
    tmp_path: Path,
) -> None:
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)

    async def go() -> tuple[list[dict[str, Any]], datetime, EmulatorServer]:
        async with EmulatorServer(tenant_ids=[TENANT], seed=31, days=1, records_per_day=3000,
                                  scenario="quiet") as emu:
            started = datetime.now(UTC)
            argv = _namespaced([sys.executable, str(driver), str(disk), str(out), str(3 << 20),
                                *_collect_cmd(emu.api_root, "{lake}")])
            # Small commits, so the disk fills between two of them, not at the first. One blob fetched at a
            # time: with more, a busy machine handed the first commit all the blobs fetched while the lake
            # was being created, and the disk filled at that commit (no blob ingested in the first run).
            proc = await asyncio.to_thread(subprocess.run, argv,
                                           env=collect_env(AUDITLAKE_COMMIT_RECORDS="50", AUDITLAKE_CONCURRENCY="1"),
                                           cwd=REPO, capture_output=True, text=True, timeout=1200)
            assert proc.returncode == 0, f"the disk-full driver failed (mount namespace, tmpfs):\n{proc.stderr}"
            runs: list[dict[str, Any]] = json.loads((out / "runs.json").read_text())
            _assert_left_consistent(out / "run1" / "lake.duckdb", emu)
            ledger = _ledger(out / "run1" / "lake.duckdb")
            assert "ingested" in ledger.values() and set(ledger.values()) != {"ingested"}, \
                "the disk did not fill up in the middle of the run"
            _assert_exactly_once_and_all_ingested(out / "run2" / "lake.duckdb", emu, started)
            return runs, started, emu

    runs, _, _ = asyncio.run(go())
    first, second = runs
    assert first["free_before"] < 4 << 20
    assert first["rc"] == 1, first["stderr"][-3000:]
    lake = disk / "lake.duckdb"
    _assert_one_clear_line(first["stderr"], f"auditlake: error: the lake at {lake} cannot be written: disk full (",
                           "No space left on device); nothing was lost: rerun collect after freeing space")
    assert second["rc"] == 0, second["stderr"][-3000:]
    print(f"\nfull disk: the failing run took {first['seconds']:.1f}s, the rerun {second['seconds']:.1f}s")


# -- a full disk injected at the connection, in process ---------------------------------------


class _DiskFillsUp:
    """A DuckDB connection whose COMMITs fail as on a full disk from the first one after
    ``fetched()`` blob GETs reached *at* (DuckDB ends the transaction before it reports); the
    disk stays full. Notes when, and after how many GETs, the first COMMIT failed."""

    def __init__(self, con: duckdb.DuckDBPyConnection, fetched: Callable[[], int], at: int) -> None:
        self._con, self._fetched, self._at = con, fetched, at
        self.failed_at: float | None = None
        self.fetched_at_failure = 0

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT" and (self.failed_at is not None or self._fetched() >= self._at):
            if self.failed_at is None:
                self.failed_at, self.fetched_at_failure = time.monotonic(), self._fetched()
            self._con.execute("ROLLBACK")
            raise duckdb.TransactionException('TransactionContext Error: Failed to commit: Could not write '
                                              'file "lake.duckdb.wal": No space left on device')
        return self._con.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


def test_a_lake_failing_mid_collect_stops_promptly_and_a_rerun_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "lake.duckdb"
    concurrency = 4
    # A blob is fetched only by a worker that holds no blob waiting for its commit, and there are
    # AWAITING_COMMIT_FACTOR workers per fetch slot: when the disk fills, at the fetch after those,
    # some blobs must have been committed however far the fetches ran ahead of the commits.
    fill_at = concurrency * AWAITING_COMMIT_FACTOR + 16

    async def go() -> dict[str, float]:
        async with EmulatorServer(tenant_ids=[TENANT], seed=32, days=1, records_per_day=2000,
                                  scenario="quiet") as emu:
            # Commits of a few blobs, so a commit does not wait for more records than there are left.
            settings = Settings(api_root=emu.api_root, retry_base=0.01, retry_max=0.05, concurrency=concurrency,
                                commit_records=10)
            fetches = emu.state.stats.requests
            connections: list[_DiskFillsUp] = []

            def connect(p: str, read_only: bool) -> Any:
                # The disk fills up once fill_at of the 126 blobs were fetched: in the middle of the run.
                connections.append(_DiskFillsUp(duckdb.connect(p, read_only=read_only),
                                                lambda: fetches["GetBlob"], fill_at))
                return connections[-1]

            lake = LocalLake(path, connect=connect)
            started = datetime.now(UTC)
            with pytest.raises(LakeUnavailableError) as caught:
                await asyncio.wait_for(collect(settings, lake, [TENANT], CONTENT_TYPES,
                                               tokens=StaticTokenProvider("t")), timeout=120)
            disk = connections[0]
            assert disk.failed_at is not None
            stopped_in = time.monotonic() - disk.failed_at
            fetched_after = fetches["GetBlob"] - disk.fetched_at_failure
            assert caught.value.cause is LakeCause.DISK_FULL and caught.value.path == path
            assert str(caught.value).startswith(f"the lake at {path} cannot be written: disk full (")
            assert lake.unresolved_operations == 0, "an operation was left waiting"
            assert lake.failure is caught.value
            # The blobs in flight when the lake failed may finish their GET; no new one starts.
            assert fetched_after <= concurrency, f"{fetched_after} blobs fetched after the lake failed"
            assert stopped_in < 5, f"collect took {stopped_in:.1f}s to stop"
            lake.close()

            ledger = _assert_left_consistent(path, emu)
            pending = sum(1 for s in ledger.values() if s != "ingested")
            assert "ingested" in ledger.values() and pending, "the lake did not fail in the middle of the run"

            lake = LocalLake(path)
            try:
                report = await collect(settings, lake, [TENANT], CONTENT_TYPES, tokens=StaticTokenProvider("t"))
            finally:
                lake.close()
            assert report.ok
            _assert_exactly_once_and_all_ingested(path, emu, started)
            return {"stopped_in": stopped_in, "fetched_after": fetched_after, "pending": pending}

    measured = asyncio.run(go())
    print(f"\ninjected full disk: stopped {measured['stopped_in'] * 1000:.0f} ms after the failure, "
          f"{measured['fetched_after']:.0f} blob GETs after it, {measured['pending']:.0f} blobs left pending")


# -- a 50 MB record ---------------------------------------------------------------------------


@dataclass
class _Ran:
    returncode: int
    stderr: str
    seconds: float
    max_rss_mib: float


def _run_measured(cmd: list[str], out: Path) -> _Ran:
    """Run *cmd* to its end; its own peak RSS comes from wait4, not from this process."""
    started = time.monotonic()
    with (out / "stdout").open("w") as so, (out / "stderr").open("w") as se:
        proc = subprocess.Popen(cmd, env=collect_env(), cwd=REPO, stdout=so, stderr=se)
        watchdog = threading.Timer(600, proc.kill)
        watchdog.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            watchdog.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss is in KiB on Linux.
    return _Ran(proc.returncode, (out / "stderr").read_text(), time.monotonic() - started, usage.ru_maxrss / 1024)


def test_a_blob_with_a_50_mb_record_lands_whole_with_its_neighbours(tmp_path: Path) -> None:
    big = "x" * (50 << 20)

    async def go() -> tuple[_Ran, _Ran, int]:
        async with EmulatorServer(tenant_ids=[TENANT], seed=33, days=0.5, records_per_day=1500,
                                  scenario="quiet") as emu:
            started = datetime.now(UTC)
            (tmp_path / "a").mkdir()
            (tmp_path / "b").mkdir()
            baseline = await asyncio.to_thread(
                _run_measured, _collect_cmd(emu.api_root, str(tmp_path / "a" / "lake.duckdb")), tmp_path / "a")
            assert baseline.returncode == 0, baseline.stderr[-3000:]
            # One record of one blob grows a 50 MB field; its blob is served with it from now on.
            target = next(b for b in emu.state.tenants[TENANT].blobs
                          if b.content_type == "Audit.Exchange" and len(b.record_keys) > 3)
            records = orjson.loads(target.body)
            records[0]["Big"] = big
            target.body = orjson.dumps(records)
            with_big = await asyncio.to_thread(
                _run_measured, _collect_cmd(emu.api_root, str(tmp_path / "b" / "lake.duckdb")), tmp_path / "b")
            assert with_big.returncode == 0, with_big.stderr[-3000:]
            lake = tmp_path / "b" / "lake.duckdb"
            _assert_exactly_once_and_all_ingested(lake, emu, started)
            stored = _query(lake, f'SELECT length("AuditData"->>\'$.Big\') FROM "AuditRecord" '
                                  f'WHERE "Id" = \'{records[0]["Id"]}\' AND "ContentId" = \'{target.content_id}\'')
            assert stored == [(len(big),)], "the 50 MB record is not in the lake whole"
            neighbours = _query(lake, f'SELECT count(*) FROM "AuditRecord" WHERE "ContentId" = '
                                      f'\'{target.content_id}\'')[0][0]
            return baseline, with_big, int(neighbours)

    baseline, with_big, rows = asyncio.run(go())
    assert rows >= 4
    print(f"\npeak RSS of `auditlake collect`: {baseline.max_rss_mib:.0f} MiB without the 50 MB record "
          f"({baseline.seconds:.1f}s), {with_big.max_rss_mib:.0f} MiB with it ({with_big.seconds:.1f}s)")
    # Measured: about 590 MiB, against 240 MiB without the record (DuckDB's cast of the JSON text
    # holds about ten times the value at once).
    assert with_big.max_rss_mib < 2048, f"peak RSS {with_big.max_rss_mib:.0f} MiB"


# -- a lake file that is not a sound DuckDB database ------------------------------------------


def _damaged_lake(path: Path) -> None:
    lake = LocalLake(path)
    lake.set_info("kind", "test")
    lake.close()
    with path.open("r+b") as f:
        f.seek(4096)
        f.write(os.urandom(8192))


@pytest.mark.parametrize(("make", "cause"), [
    (lambda p: p.write_text("this is not a lake\n"), "not a DuckDB database"),
    (_damaged_lake, "the file is damaged"),
], ids=["not-duckdb", "damaged"])
@pytest.mark.parametrize("command", ["query", "collect"])
def test_a_corrupt_lake_is_one_clear_line_and_exit_1(
    tmp_path: Path, make: Callable[[Path], None], cause: str, command: str
) -> None:
    lake = tmp_path / "bad.duckdb"
    make(lake)
    before = lake.read_bytes()
    argv = [AUDITLAKE, "query", "--lake", str(lake), "AuditRecord | count"] if command == "query" \
        else _collect_cmd("http://127.0.0.1:9/api/v1.0", str(lake))
    proc = subprocess.run(argv, env=collect_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], "more than one line on stderr"
    _assert_one_clear_line(proc.stderr, f"auditlake: error: the lake at {lake} cannot be opened: {cause} (",
                           "); restore it from a backup, or choose another --lake")
    assert lake.read_bytes() == before, "the damaged file was changed"
