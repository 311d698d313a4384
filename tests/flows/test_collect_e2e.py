"""`auditlake emulator` in its own process, `auditlake collect --once` against it over real
HTTP: every record the emulator holds in range is in the lake exactly once."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tests.flows.conftest import AUDITLAKE, REPO, RunningEmulator, collect_env

TENANT = "0b7f3c2e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
FAULTS = "throttle=0.05,throttle429=0.02,5xx=0.05,shuffle,late=0.1,headercase"

pytestmark = pytest.mark.slow


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def truth(emu: RunningEmulator, start: datetime, end: datetime) -> set[tuple[str, int, str]]:
    q = f"tenantId={TENANT}&start={start.strftime('%Y-%m-%dT%H:%M:%SZ')}&end={end.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    body = _get(f"{emu.base_url}/_emulator/truth?{q}")
    return {(r[0], int(r[1]), r[2]) for r in body["records"]}


def lake_keys(lake: Path) -> list[tuple[str, int, str]]:
    con = duckdb.connect(str(lake), read_only=True)
    try:
        rows = con.execute('SELECT "Id", "RecordType", "Operation" FROM "AuditRecord"').fetchall()
    finally:
        con.close()
    return [(str(a), int(b), str(c)) for a, b, c in rows]


def collect_cmd(emu: RunningEmulator, lake: Path, *extra: str) -> list[str]:
    return [AUDITLAKE, *extra, "collect", "--once", "--quiet", "--tenant-id", TENANT,
            "--api-root", emu.api_root, "--lake", str(lake)]


def assert_exactly_once(emu: RunningEmulator, lake: Path, started: datetime) -> None:
    # The range every blob of which the run was certain to list: from 7 days before it
    # started (plus the planner's margin) to when it started.
    expected = truth(emu, started - timedelta(days=7) + timedelta(minutes=6), started)
    assert len(expected) > 5000
    keys = lake_keys(lake)
    assert len(keys) == len(set(keys)), "a record is in the lake twice"
    missing = expected - set(keys)
    assert not missing, f"{len(missing)} records missing, e.g. {sorted(missing)[:3]}"
    stats = _get(f"{emu.base_url}/_emulator/stats")
    assert stats["missing_publisher_identifier"] == 0
    assert stats["window_rejected"] == 0 and 0 < stats["max_window_seconds"] <= 24 * 3600


def test_collect_once_gets_every_record_exactly_once_under_faults(emulator_factory: Any, tmp_path: Path) -> None:
    emu = emulator_factory("--tenant-id", TENANT, "--faults", FAULTS, "--seed", "11")
    lake = tmp_path / "lake.duckdb"
    started = datetime.now(UTC)
    proc = subprocess.run(collect_cmd(emu, lake), env=collect_env(), cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "duplicates dropped" in proc.stdout
    assert_exactly_once(emu, lake, started)
    stats = _get(f"{emu.base_url}/_emulator/stats")
    injected = stats["faults"]
    assert injected.get("throttle", 0) > 0 and injected.get("5xx", 0) > 0 and injected.get("late", 0) > 0


def _run_until(cmd: list[str], pattern: str, count: int) -> None:
    """Start *cmd*, SIGKILL it once *pattern* has appeared *count* times on stderr."""
    proc = subprocess.Popen(cmd, env=collect_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = 0
    deadline = time.monotonic() + 300
    for line in proc.stderr:
        if pattern in line:
            seen += 1
            if seen >= count:
                proc.send_signal(signal.SIGKILL)
                break
        if time.monotonic() > deadline:
            break
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"


def test_collect_killed_after_listing_and_mid_ingest_then_restarted(emulator_factory: Any, tmp_path: Path) -> None:
    emu = emulator_factory("--tenant-id", TENANT, "--faults", FAULTS, "--seed", "12")
    lake = tmp_path / "lake.duckdb"
    started = datetime.now(UTC)
    # Killed right after the first window's blobs were recorded, then mid-ingest.
    _run_until(collect_cmd(emu, lake, "-v"), "listed tenant_id=", 1)
    _run_until(collect_cmd(emu, lake, "-v"), "blob ingested", 150)
    proc = subprocess.run(collect_cmd(emu, lake), env=collect_env(), cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_exactly_once(emu, lake, started)
