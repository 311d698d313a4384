"""Blobs that cannot be ingested end in the ledger with their reason, and do not stop the rest."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from auditlake.emulator.faults import FaultSpec
from auditlake.emulator.server import EmulatorServer
from auditlake.lake.duckdb_lake import LocalLake
from auditlake.localrun import collect
from function_app.config import Settings
from function_app.core.model import CONTENT_TYPES, BlobStatus
from function_app.o365.auth import StaticTokenProvider
from tests.flows.conftest import AUDITLAKE, REPO, collect_env

TENANT = "5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d"


async def _collect_with(faults: str, lake_path: Path) -> tuple[Any, list[tuple[Any, ...]]]:
    async with EmulatorServer(tenant_ids=[TENANT], seed=5, days=2, records_per_day=800, scenario="quiet",
                              faults=FaultSpec.parse(faults)) as emu:
        lake = LocalLake(lake_path)
        try:
            settings = Settings(api_root=emu.api_root, retry_base=0.01, retry_max=0.05, retry_attempts=3)
            report = await collect(settings, lake, [TENANT], CONTENT_TYPES, tokens=StaticTokenProvider("t"))
            ledger = lake.connection.execute(
                'SELECT "ContentId", "Status", "Error", "Records" FROM "ContentLedger"').fetchall()
        finally:
            lake.close()
    return report, ledger


def test_expired_and_cut_off_blobs_are_settled_with_reasons(tmp_path: Path) -> None:
    report, ledger = asyncio.run(_collect_with("expired=1,cutoff=1", tmp_path / "lake.duckdb"))
    by_status: dict[str, list[tuple[Any, ...]]] = {}
    for row in ledger:
        by_status.setdefault(row[1], []).append(row)
    assert len(by_status[BlobStatus.EXPIRED.value]) == 1
    assert "AF20051" in by_status[BlobStatus.EXPIRED.value][0][2]
    assert len(by_status[BlobStatus.FAILED.value]) == 1
    failed_error = by_status[BlobStatus.FAILED.value][0][2]
    assert "not valid JSON (cut off or corrupt)" in failed_error
    ingested = by_status[BlobStatus.INGESTED.value]
    assert len(ingested) > 20 and all(r[3] and r[3] > 0 for r in ingested)
    assert set(by_status) == {"ingested", "failed", "expired"}, "a blob was left unsettled"
    assert not report.ok


def test_collect_exits_1_with_one_line_when_blobs_failed(emulator_factory: Any, tmp_path: Path) -> None:
    emu = emulator_factory("--tenant-id", TENANT, "--faults", "expired=1", "--days", "1", "--scenario", "quiet",
                           "--records-per-day", "500")
    proc = subprocess.run(
        [AUDITLAKE, "collect", "--once", "--quiet", "--tenant-id", TENANT, "--api-root", emu.api_root,
         "--lake", str(tmp_path / "l.duckdb")],
        env=collect_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("auditlake: error: 0 blob(s) failed and 1 expired")
    assert "expired" in proc.stdout  # the summary names the blob and the reason


@pytest.mark.parametrize("args", [["collect", "--since", "yesterday"], ["query"], ["collect", "--tenant-id", "nope"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    assert subprocess.run([AUDITLAKE, *args], capture_output=True, timeout=60).returncode == 2


def test_collect_without_a_tenant_fails_clearly(tmp_path: Path) -> None:
    env = collect_env()
    env.pop("AUDITLAKE_TENANTS", None)
    proc = subprocess.run([AUDITLAKE, "collect", "--once", "--lake", str(tmp_path / "x.duckdb")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "no tenant" in proc.stderr


def test_query_on_a_missing_lake_says_so(tmp_path: Path) -> None:
    proc = subprocess.run([AUDITLAKE, "query", "--lake", str(tmp_path / "none.duckdb"), "AuditRecord | count"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "no lake at" in proc.stderr


def test_bad_setting_is_named(tmp_path: Path) -> None:
    env = collect_env(AUDITLAKE_OVERLAP_MINUTES="soon")
    proc = subprocess.run([AUDITLAKE, "collect", "--once", "--tenant-id", TENANT, "--lake",
                           str(tmp_path / "x.duckdb")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "AUDITLAKE_OVERLAP_MINUTES" in proc.stderr


def test_replay_redrives_failed_blobs_and_says_when_they_fail_again(emulator_factory: Any, tmp_path: Path) -> None:
    emu = emulator_factory("--tenant-id", TENANT, "--faults", "cutoff=1", "--days", "1", "--scenario", "quiet",
                           "--records-per-day", "300")
    lake = str(tmp_path / "l.duckdb")
    base = ["--tenant-id", TENANT, "--api-root", emu.api_root, "--lake", lake]
    collected = subprocess.run([AUDITLAKE, "collect", "--once", "--quiet", *base], env=collect_env(), cwd=REPO,
                               capture_output=True, text=True, timeout=300)
    assert collected.returncode == 1 and "1 blob(s) failed" in collected.stderr
    planned = subprocess.run([AUDITLAKE, "replay", "--dry-run", "--format", "json", *base], env=collect_env(),
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert planned.returncode == 0, planned.stderr
    assert '"planned": 1' in planned.stdout
    # The emulator still cuts that blob off: replay tries it, and says it failed again.
    again = subprocess.run([AUDITLAKE, "replay", *base], env=collect_env(), cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines()[-1] == "auditlake: error: 1 failed again, 0 expired"
