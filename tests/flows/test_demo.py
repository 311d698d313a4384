"""`auditlake demo`: the README's main job, end to end, finds the scripted incident."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from auditlake.cli import DEMO_TENANT
from auditlake.emulator.tenant import SyntheticTenant
from tests.flows.conftest import AUDITLAKE, REPO

pytestmark = pytest.mark.slow


def test_demo_collects_and_answers_the_investigations(tmp_path: Path) -> None:
    lake = tmp_path / "demo.duckdb"
    proc = subprocess.run([AUDITLAKE, "demo", "--lake", str(lake), "--days", "3"], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    incident = SyntheticTenant.generate(DEMO_TENANT, seed=7, now=datetime.now(UTC), days=3).incident
    assert incident is not None
    for expected in ("duplicates dropped", "event→available p50/p95/max", "Audit.Exchange", "DLP.All",
                     incident.attacker_ip, incident.victim_upn, incident.forward_to, "Set-Mailbox", "False",
                     "expired", "failed"):
        assert expected in out, f"{expected!r} missing from the demo output"
    con = duckdb.connect(str(lake), read_only=True)
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        (rows,) = con.execute('SELECT count(*) FROM "AuditRecord"').fetchone() or (0,)
    finally:
        con.close()
    assert {"AuditRecord", "ContentLedger", "CollectorRun", "Checkpoint"} <= tables
    assert rows > 1000


def test_demo_refuses_to_replace_a_lake_it_did_not_make(tmp_path: Path) -> None:
    lake = tmp_path / "mine.duckdb"
    con = duckdb.connect(str(lake))
    con.execute("CREATE TABLE precious (x INT)")
    con.close()
    proc = subprocess.run([AUDITLAKE, "demo", "--lake", str(lake)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and "not made by the demo" in proc.stderr
    assert lake.exists()
