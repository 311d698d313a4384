"""`auditlake collect --source entra` against the emulator's Graph Entra ID logs, faults on: every
record the logs held once in its Sentinel table, a kill mid-run losing nothing, and one clear line
for a tenant without the licence or the permission.

Ground truth is the emulator's ``/_emulator/entra_truth``, asked *before* collecting for records
created up to the poller's lag before the run: each of those was visible when the run read its
window, so each must be in the lake. Asked again after, the truth bounds what the lake may hold.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.flows.conftest import AUDITLAKE, REPO, RunningEmulator, collect_env, start_emulator

TENANT = "6e1d2c3b-4a5f-4e6d-8c7b-9a0f1e2d3c4b"
FAULTS = "entra_throttle=0.08,entra_5xx=0.15,entra_cutoff=0.15,entra_dup=0.9,entra_late=0.05,entra_drift=0.1"
TABLES = {
    "interactiveUser": "SigninLogs",
    "nonInteractiveUser": "AADNonInteractiveUserSignInLogs",
    "servicePrincipal": "AADServicePrincipalSignInLogs",
    "managedIdentity": "AADManagedIdentitySignInLogs",
}

pytestmark = pytest.mark.slow


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    emu = start_emulator("--tenant-id", TENANT, "--days", "2", "--records-per-day", "20", "--scenario", "quiet",
                         "--signins-per-day", "600", "--faults", FAULTS)
    try:
        yield emu
    finally:
        emu.process.terminate()
        emu.process.wait(timeout=30)


def collect_args(emu: RunningEmulator, lake: Path) -> list[str]:
    return [AUDITLAKE, "collect", "--once", "--quiet", "--no-serve", "--source", "entra", "--since", "2d",
            "--tenant-id", TENANT, "--graph-root", f"{emu.base_url}/graph", "--lake", str(lake)]


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900, env=collect_env(),
                          stdin=subprocess.DEVNULL)


def query(lake: Path, kql: str) -> list[dict[str, Any]]:
    proc = run([AUDITLAKE, "query", "--lake", str(lake), "--format", "json", kql])
    assert proc.returncode == 0, proc.stderr
    rows: list[dict[str, Any]] = orjson.loads(proc.stdout)
    return rows


def truth(emu: RunningEmulator, end: datetime | None = None) -> dict[str, Any]:
    url = f"{emu.base_url}/_emulator/entra_truth?tenant={TENANT}"
    if end is not None:
        url += f"&end={end.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    with urllib.request.urlopen(url, timeout=60) as resp:
        found: dict[str, Any] = json.loads(resp.read())
    return found


def expected_ids(found: dict[str, Any]) -> dict[str, set[str]]:
    by_table: dict[str, set[str]] = {t: set() for t in (*TABLES.values(), "AuditLogs")}
    for rid, kind in found["signIns"]:
        by_table[TABLES[kind]].add(rid)
    by_table["AuditLogs"] = set(found["directoryAudits"])
    return by_table


def lake_ids(lake: Path) -> dict[str, list[str]]:
    return {table: [r["Id"] for r in query(lake, f"{table} | project Id")]
            for table in (*TABLES.values(), "AuditLogs")}


def stats(emu: RunningEmulator) -> dict[str, Any]:
    with urllib.request.urlopen(f"{emu.base_url}/_emulator/stats", timeout=60) as resp:
        found: dict[str, Any] = json.loads(resp.read())
    return found


def assert_every_record_once(emu: RunningEmulator, lake: Path, before: dict[str, Any]) -> None:
    must = expected_ids(before)
    may = expected_ids(truth(emu))
    held = lake_ids(lake)
    for table, ids in held.items():
        assert len(ids) == len(set(ids)), f"{table}: a record twice"
        assert must[table] <= set(ids), f"{table}: {len(must[table] - set(ids))} records missing"
        assert set(ids) <= may[table], f"{table}: records the logs never held"
        assert ids, f"{table}: empty"


def test_collect_entra_keeps_every_record_once_through_graphs_faults(emulator: RunningEmulator,
                                                                     tmp_path: Path) -> None:
    lake = tmp_path / "lake.duckdb"
    before = truth(emulator, datetime.now(UTC) - timedelta(minutes=3))
    proc = run(collect_args(emulator, lake))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert_every_record_once(emulator, lake, before)
    injected = stats(emulator)["entra"]["faults"]
    # The faults were met and survived, not avoided (the seed fixes which requests draw them).
    for fault in ("entra_throttle", "entra_5xx", "entra_cutoff", "entra_dup", "entra_drift_served",
                  "entra_late_served"):
        assert injected.get(fault, 0) > 0, (fault, injected)
    # Records with properties no schema knows are kept whole, with Sentinel's columns filled.
    drifted = set(truth(emulator)["drift"])
    rows = query(lake, "union SigninLogs, AADNonInteractiveUserSignInLogs, AADServicePrincipalSignInLogs, "
                       "AADManagedIdentitySignInLogs, AuditLogs | project Id, AuditLakeFlag, RawRecord")
    kept = {r["Id"]: r for r in rows}
    assert drifted & set(kept), "no drifted record was collected"
    for rid in drifted & set(kept):
        assert kept[rid]["AuditLakeFlag"] == ""
    # Every window is a settled ledger row.
    ledger = query(lake, "ContentLedger | where ContentType startswith 'Entra.' "
                         "| summarize n = count() by ContentType, Status")
    assert {r["Status"] for r in ledger} == {"ingested"}, ledger
    assert {r["ContentType"] for r in ledger} == {
        "Entra.SignInLogs", "Entra.NonInteractiveUserSignInLogs", "Entra.ServicePrincipalSignInLogs",
        "Entra.ManagedIdentitySignInLogs", "Entra.AuditLogs"}
    # A second run reads only the overlap: nothing new is written twice.
    again = run(collect_args(emulator, lake))
    assert again.returncode == 0, again.stderr
    assert_every_record_once(emulator, lake, before)


def test_a_killed_collect_loses_nothing_and_duplicates_nothing(emulator: RunningEmulator, tmp_path: Path) -> None:
    lake = tmp_path / "lake.duckdb"
    before = truth(emulator, datetime.now(UTC) - timedelta(minutes=3))
    proc = subprocess.Popen(collect_args(emulator, lake), cwd=REPO, env=collect_env(), text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    # Killed once it has read some of the logs but not all (five logs, several windows each).
    while time.monotonic() < deadline and proc.poll() is None:
        if stats(emulator)["entra"]["requests_total"] >= 6:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed: give the emulator more to serve"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    again = run(collect_args(emulator, lake))
    assert again.returncode == 0, again.stderr
    assert_every_record_once(emulator, lake, before)


@pytest.mark.parametrize(("fault", "says"), [
    ("entra_nopremium", "no Microsoft Entra ID P1 or P2 licence"),
    ("entra_noperm", "AuditLog.Read.All"),
])
def test_a_tenant_without_the_licence_or_permission_gets_one_line(tmp_path: Path, fault: str, says: str) -> None:
    emu = start_emulator("--tenant-id", TENANT, "--days", "1", "--records-per-day", "5", "--scenario", "quiet",
                         "--signins-per-day", "5", "--faults", fault)
    try:
        lake = tmp_path / "lake.duckdb"
        proc = run(collect_args(emu, lake))
    finally:
        emu.process.terminate()
        emu.process.wait(timeout=30)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("auditlake: error:"), proc.stderr
    assert says in lines[0] and "Traceback" not in proc.stderr
    failed = query(lake, "ContentLedger | where ContentType startswith 'Entra.' and Status == 'failed' "
                         "| project Error")
    assert failed and all(says in r["Error"] for r in failed)
