"""`auditlake backfill` as a user runs it, and what `Completeness` then says of each day.

The emulator holds 10 days of history and withholds a few records from the feed (`feedmissing`):
`collect --once` gets the feed's 7 days, `backfill --since 10d` the rest and the withheld records,
and `Completeness` shows those records as the search's own while every searched day reads complete.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.flows.conftest import AUDITLAKE, REPO, RunningEmulator, collect_env, start_emulator

TENANT = "6e1d2c3b-4a5f-4e6d-8c7b-9a0f1e2d3c4b"
WITHHELD = 4

pytestmark = pytest.mark.slow


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    emu = start_emulator("--tenant-id", TENANT, "--days", "10", "--records-per-day", "60", "--scenario", "quiet",
                         "--faults", f"feedmissing={WITHHELD}")
    try:
        yield emu
    finally:
        emu.process.terminate()
        emu.process.wait(timeout=30)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AUDITLAKE, *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=collect_env(), stdin=subprocess.DEVNULL)


def query(lake: Path, kql: str) -> list[dict[str, Any]]:
    proc = run("query", "--lake", str(lake), "--format", "json", kql)
    assert proc.returncode == 0, proc.stderr
    rows: list[dict[str, Any]] = orjson.loads(proc.stdout)
    return rows


def test_backfill_brings_what_the_feed_never_delivered_and_the_days_read_complete(
        emulator: RunningEmulator, tmp_path: Path) -> None:
    lake = tmp_path / "lake.duckdb"
    collected = run("collect", "--once", "--quiet", "--no-serve", "--tenant-id", TENANT, "--api-root",
                    emulator.api_root, "--lake", str(lake))
    assert collected.returncode == 0, collected.stderr
    assert query(lake, "Completeness | where Status != 'not-searched' | count")[0]["Count"] == 0

    backfilled = run("backfill", "--quiet", "--tenant-id", TENANT, "--graph-root", f"{emulator.base_url}/graph",
                     "--since", "10d", "--lake", str(lake))
    assert backfilled.returncode == 0, backfilled.stderr
    summary = backfilled.stdout.strip().splitlines()[-1]
    assert summary.startswith("backfill: 11 days (0 done before, 11 completed)"), summary

    with urllib.request.urlopen(f"{emulator.base_url}/_emulator/search_truth?tenant={TENANT}", timeout=60) as resp:
        truth = json.loads(resp.read())
    withheld = {tuple(k) for k in truth["feedMissing"]}
    assert len(withheld) == WITHHELD
    from_search = query(lake, "AuditRecord | where ContentType == 'Purview.Search' "
                              "| project Id, RecordType, Operation")
    lake_keys = {(r["Id"], r["RecordType"], r["Operation"]) for r in
                 query(lake, "AuditRecord | project Id, RecordType, Operation")}
    assert withheld <= {(r["Id"], r["RecordType"], r["Operation"]) for r in from_search}
    assert {tuple(k) for k in truth["records"]} <= lake_keys
    assert query(lake, "AuditRecord | summarize n = count() by Id, RecordType, Operation | where n > 1") == []

    rows = query(lake, "Completeness")
    searched = [r for r in rows if r["Status"] != "not-searched"]
    assert searched and {r["Status"] for r in searched} == {"complete"}
    assert sum(r["SearchOnlyRecords"] for r in rows) == len(from_search)
    # The feed's own 7 days: the withheld records show as the search's alone, and the day is whole.
    assert sum(r["SearchOnlyRecords"] for r in searched) >= WITHHELD
    by_day = query(lake, "CompletenessByDay")
    assert by_day and all(d["Status"] in ("complete", "not-searched") for d in by_day)

    again = run("backfill", "--quiet", "--tenant-id", TENANT, "--graph-root", f"{emulator.base_url}/graph",
                "--since", "10d", "--lake", str(lake))
    assert again.returncode == 0, again.stderr
    assert "(10 done before, 1 completed)" in again.stdout or "(11 done before, 0 completed)" in again.stdout


def test_a_cloud_without_the_search_api_is_one_line_and_changes_nothing(tmp_path: Path) -> None:
    lake = tmp_path / "lake.duckdb"
    proc = run("backfill", "--quiet", "--tenant-id", TENANT, "--cloud", "GCCHigh", "--since", "2d",
               "--lake", str(lake))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("auditlake: error: the backfill is not complete")
    assert "does not exist in cloud GCCHigh" in lines[0] and "Traceback" not in proc.stderr
    assert query(lake, "ContentLedger | where ContentType == 'Purview.Search' | count")[0]["Count"] == 0
