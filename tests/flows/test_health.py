"""HealthChecks (auditlake/kql/functions/HealthChecks.kql) and auditlake.health on real lakes.

The demo lake (`auditlake demo --days 2`, built once per module) is unhealthy by design: the
emulator expires one blob and cuts another off. Copies of it are made unhealthy in other ways
(a content type gone silent, a stuck blob, a collector failing pass after pass); a lake collected
from the emulator without faults is healthy. The KQL runs as `auditlake health` runs it: the query
of health_query() through run_kql on a read-only lake.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from auditlake.cli import DEMO_TENANT, run_kql
from auditlake.emulator.incident import Incident
from auditlake.emulator.tenant import SyntheticTenant
from auditlake.health import CHECKS, Finding, HealthThresholds, findings, health_query, verdict_line
from auditlake.lake.duckdb_lake import LocalLake
from tests.flows.conftest import AUDITLAKE, REPO, collect_env

DAYS = 2
CLEAN_TENANT = "0b7f3c2e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"


@dataclass(frozen=True)
class Demo:
    lake: Path
    incident: Incident


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    lake = tmp_path_factory.mktemp("health") / "demo.duckdb"
    proc = subprocess.run([AUDITLAKE, "demo", "--lake", str(lake), "--days", str(DAYS)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    incident = SyntheticTenant.generate(DEMO_TENANT, seed=7, now=datetime.now(UTC), days=DAYS).incident
    assert incident is not None
    return Demo(lake, incident)


@pytest.fixture
def lake_copy(demo: Demo, tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "copy.duckdb"
    shutil.copyfile(demo.lake, path)
    yield path


def kql(lake: Path, text: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    opened = LocalLake(lake, read_only=True)
    try:
        columns, _, rows = run_kql(opened.connection, text)
    finally:
        opened.close()
    return columns, rows


def health(lake: Path, thresholds: HealthThresholds | None = None) -> list[Finding]:
    return findings(*kql(lake, health_query(thresholds or HealthThresholds())))


def sql(lake: Path, statement: str, params: list[Any] | None = None) -> None:
    con = duckdb.connect(str(lake))
    try:
        con.execute("SET TimeZone='UTC'")
        con.execute(statement, params or [])
    finally:
        con.close()


def naive_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


# -- the Python side, no lake ----------------------------------------------------------------


def test_the_query_passes_the_thresholds_by_position_as_kql_literals() -> None:
    assert health_query(HealthThresholds()) == "HealthChecks(6.0, 24.0, 3, 24h)"
    assert health_query(HealthThresholds(0.5, 12.25, 1, 1.5)) == "HealthChecks(0.5, 12.25, 1, 5400s)"
    for bad in ({"gap_hours": 0}, {"near_expiry_hours": -1}, {"failed_runs": 0}, {"lookback_hours": float("nan")}):
        with pytest.raises(ValueError, match="must be"):
            HealthThresholds(**bad)  # type: ignore[arg-type]


def test_findings_read_columns_by_name_and_refuse_a_result_that_is_not_health_checks() -> None:
    columns = ["Since", "Detail", "Subject", "ContentType", "TenantId", "Severity", "Check"]
    row = (datetime(2026, 1, 2, 3, 4, 5), "why", "blob-1", "DLP.All", "t", "warning", "BlobNearExpiry")
    [found] = findings(columns, [row])
    assert found == Finding("BlobNearExpiry", "warning", "t", "DLP.All", "blob-1", "why",
                            datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert not found.is_error
    with pytest.raises(ValueError, match="no column Since"):
        findings(columns[1:], [])


def test_the_verdict_is_one_line_counting_severities_and_checks() -> None:
    assert verdict_line([]) == "healthy: 6 checks passed" and len(CHECKS) == 6

    def f(check: str, severity: str = "error") -> Finding:
        return Finding(check, severity, "t", "c", "s", "d", None)

    assert verdict_line([f("LogFlowGap"), f("BlobExpired"), f("BlobNearExpiry", "warning")]) == (
        "unhealthy: 2 errors, 1 warning (BlobExpired 1, BlobNearExpiry 1, LogFlowGap 1)")
    assert verdict_line([f("BlobNearExpiry", "warning")] * 2) == "unhealthy: 2 warnings (BlobNearExpiry 2)"
    # A severity nobody told this code about fails the check rather than passing it.
    assert verdict_line([f("SomethingNew", "critical")]) == "unhealthy: 1 error (SomethingNew 1)"


# -- on lakes --------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_demo_fails_on_its_expired_and_failed_blobs(demo: Demo) -> None:
    _, problems = kql(demo.lake, 'ContentLedger | where Status != "ingested" | project ContentId, Status')
    statuses = {status for _, status in problems}
    assert statuses == {"expired", "failed"}, problems  # the emulator's expired=1 and cutoff=1
    found = health(demo.lake)
    check_of = {"expired": "BlobExpired", "failed": "BlobFailed"}
    assert sorted((f.check, f.subject) for f in found) == sorted((check_of[s], c) for c, s in problems)
    for f in found:
        assert (f.severity, f.tenant_id) == ("error", DEMO_TENANT)
        assert f.since is not None and datetime.now(UTC) - f.since < timedelta(hours=1)
    failed = next(f for f in found if f.check == "BlobFailed")
    assert "replay it (auditlake replay) within the next" in failed.detail
    assert "lost" in next(f for f in found if f.check == "BlobExpired").detail
    verdict = verdict_line(found)
    assert verdict.startswith(f"unhealthy: {len(found)} errors (")
    assert "BlobExpired" in verdict and "BlobFailed" in verdict
    # The command cron runs: the findings on stdout, the verdict as the one error line, exit 1.
    proc = subprocess.run([AUDITLAKE, "health", "--lake", str(demo.lake), "--format", "csv"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"auditlake: error: {verdict}"]
    assert sorted(line.split(",")[0] for line in proc.stdout.splitlines()[1:]) == ["BlobExpired", "BlobFailed"]


@pytest.mark.slow
def test_the_report_command_writes_the_page_with_its_chart_data(demo: Demo, tmp_path: Path) -> None:
    page = tmp_path / "report" / "lake.html"
    proc = subprocess.run([AUDITLAKE, "report", "--lake", str(demo.lake), "--html", str(page)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    html = page.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert 'id="chart-data"' in html and "BlobExpired" in html
    assert not list(page.parent.glob("*.partial"))


@pytest.mark.slow
def test_audit_switched_off_counts_within_the_lookback(demo: Demo) -> None:
    inc = demo.incident
    # The demo scripts the incident 1.2 days back (--days 2): outside the default day, inside two.
    assert not [f for f in health(demo.lake) if f.check == "AuditTampering"]
    [tampering] = [f for f in health(demo.lake, HealthThresholds(lookback_hours=48)) if f.check == "AuditTampering"]
    assert (tampering.severity, tampering.subject, tampering.tenant_id) == ("error", inc.victim_upn, DEMO_TENANT)
    assert "mailbox auditing disabled" in tampering.detail and inc.attacker_ip in tampering.detail
    assert tampering.since is not None and abs(tampering.since - inc.audit_disabled_time) < timedelta(minutes=3)


@pytest.mark.slow
def test_a_content_type_gone_silent_is_a_log_flow_gap(lake_copy: Path) -> None:
    cutoff = naive_now() - timedelta(hours=14)
    for table in ("ContentLedger", "AuditRecord"):
        sql(lake_copy, f'DELETE FROM "{table}" WHERE "ContentType" = \'DLP.All\' AND "ContentCreated" > ?', [cutoff])
    found = health(lake_copy)
    [gap] = [f for f in found if f.check == "LogFlowGap"]
    assert (gap.severity, gap.tenant_id, gap.content_type, gap.subject) == ("error", DEMO_TENANT, "DLP.All", "DLP.All")
    assert gap.since is not None and gap.since.replace(tzinfo=None) <= cutoff
    assert "no new content for 1" in gap.detail
    assert {f.check for f in found} == {"LogFlowGap", "BlobExpired", "BlobFailed"}
    # Out of the fixed ceiling's reach, the feed's own rhythm (LogFlowGaps: DLP blobs come about
    # an hour apart) still finds the silence.
    [by_rhythm] = [f for f in health(lake_copy, HealthThresholds(gap_hours=48)) if f.check == "LogFlowGap"]
    assert by_rhythm.content_type == "DLP.All" and "usually come at most" in by_rhythm.detail


@pytest.mark.slow
def test_a_stuck_blob_warns_and_a_failing_collector_errs_but_blobs_in_flight_do_not(lake_copy: Path) -> None:
    now = naive_now()
    created = now - timedelta(days=6, hours=12)
    blobs = [("stuck", "queued", now - timedelta(hours=3)), ("in-flight", "listed", now - timedelta(minutes=5)),
             ("settled", "ingested", now - timedelta(hours=3))]
    for content_id, status, listed in blobs:
        sql(lake_copy, """INSERT INTO "ContentLedger" ("TenantId", "ContentType", "ContentId", "ContentCreated",
            "ContentExpiration", "ListedAt", "IngestedAt", "Status", "Attempts")
            VALUES (?, 'Audit.Exchange', ?, ?, ?, ?, ?, ?, 0)""",
            [DEMO_TENANT, content_id, created, created + timedelta(days=7), listed,
             listed if status == "ingested" else None, status])
    # Three failing passes after the demo's clean one for SharePoint; two for DLP (not yet enough).
    for content_type, n in (("Audit.SharePoint", 3), ("DLP.All", 2)):
        for i in range(n):
            sql(lake_copy, """INSERT INTO "CollectorRun" ("RunId", "StartedAt", "FinishedAt", "TenantId",
                "ContentType", "Errors") VALUES (?, ?, ?, ?, ?, ?)""",
                [f"{content_type}-{i}", now + timedelta(minutes=i), now + timedelta(minutes=i, seconds=5), DEMO_TENANT,
                 content_type, '["HTTP 401: the token was refused"]'])
    found = health(lake_copy)
    [stuck] = [f for f in found if f.check == "BlobNearExpiry"]
    assert (stuck.subject, stuck.severity, stuck.content_type) == ("stuck", "warning", "Audit.Exchange")
    assert "served for only 11." in stuck.detail or "served for only 12." in stuck.detail
    [failing] = [f for f in found if f.check == "CollectorRunFailing"]
    assert (failing.content_type, failing.subject) == ("Audit.SharePoint", "Audit.SharePoint-2")
    assert failing.severity == "error"
    assert failing.detail.startswith("3 listing passes in a row failed") and "HTTP 401" in failing.detail
    assert failing.since is not None and failing.since.replace(tzinfo=None) == now
    assert verdict_line(found) == (
        "unhealthy: 3 errors, 1 warning (BlobExpired 1, BlobFailed 1, BlobNearExpiry 1, CollectorRunFailing 1)")
    # Two failures in a row are enough when the threshold says so; one clean pass clears it.
    two = [f.content_type for f in health(lake_copy, HealthThresholds(failed_runs=2))
           if f.check == "CollectorRunFailing"]
    assert sorted(two) == ["Audit.SharePoint", "DLP.All"]
    sql(lake_copy, """INSERT INTO "CollectorRun" ("RunId", "StartedAt", "TenantId", "ContentType", "Errors")
        VALUES ('clean', ?, ?, 'Audit.SharePoint', '[]')""", [now + timedelta(minutes=10), DEMO_TENANT])
    assert not [f for f in health(lake_copy) if f.check == "CollectorRunFailing"]


@pytest.mark.slow
def test_a_clean_collection_is_healthy(emulator_factory: Any, tmp_path: Path) -> None:
    emu = emulator_factory("--tenant-id", CLEAN_TENANT)  # no --faults: nothing goes wrong
    lake = tmp_path / "clean.duckdb"
    proc = subprocess.run([AUDITLAKE, "collect", "--once", "--quiet", "--tenant-id", CLEAN_TENANT, "--api-root",
                           emu.api_root, "--lake", str(lake)], env=collect_env(), cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert health(lake) == []
    assert verdict_line(health(lake)) == "healthy: 6 checks passed"
    proc = subprocess.run([AUDITLAKE, "health", "--lake", str(lake)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "healthy: 6 checks passed\n")
    # The emulator's tenant runs the same scripted incident two days back: a longer look finds
    # the audit switched off, and only that.
    assert [f.check for f in health(lake, HealthThresholds(lookback_hours=72))] == ["AuditTampering"]
