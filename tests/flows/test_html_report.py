"""`auditlake report`'s page (auditlake.lake.html_report) drawn from a demo lake.

The charts are checked by their data, read back from the page two ways (the ``chart-data`` JSON
block and the ``data-*`` attributes of the SVG marks), against what the KQL answers on the same
lake. The demo lake (`auditlake demo --days 2`) is built once per module; a copy of it gets a
tampering record written by someone who knows the page is HTML.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import duckdb
import pytest

from auditlake.cli import DEMO_TENANT, run_kql
from auditlake.health import findings, verdict_line
from auditlake.lake.duckdb_lake import LocalLake
from auditlake.lake.html_report import PERCENTILES, render_html, report_queries
from tests.flows.conftest import AUDITLAKE, REPO

pytestmark = pytest.mark.slow

Result = tuple[list[str], list[str], list[tuple[Any, ...]]]
GENERATED = datetime(2030, 1, 1, tzinfo=UTC)  # any instant: the page only prints it and ends its axes there
HOSTILE_TARGET = "<script>alert('inbox rule')</script>"
HOSTILE_ACTOR = '"><img src=x onerror=alert(1)>'


@pytest.fixture(scope="module")
def demo_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake = tmp_path_factory.mktemp("report") / "demo.duckdb"
    proc = subprocess.run([AUDITLAKE, "demo", "--lake", str(lake), "--days", "2"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return lake


def run_all(lake: Path, queries: dict[str, str]) -> dict[str, Result]:
    opened = LocalLake(lake, read_only=True)
    try:
        return {name: run_kql(opened.connection, text) for name, text in queries.items()}
    finally:
        opened.close()


@pytest.fixture(scope="module")
def page(demo_lake: Path) -> tuple[str, dict[str, Result]]:
    results = run_all(demo_lake, report_queries())
    return render_html(results, title="AuditLake: demo", generated_at=GENERATED), results


class Marks(HTMLParser):
    """The page's chart-data block, every data-* mark, and every tag and attribute it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.chart: str | None = None
        self.scripts: list[dict[str, str | None]] = []
        self._in_data = False
        self._current_chart: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "svg":
            self._current_chart.append(a.get("data-chart") or "")
        self.tags.append((tag, {**a, "_chart": self._current_chart[-1] if self._current_chart else None}))
        if tag == "script":
            self.scripts.append(a)
            self._in_data = a.get("id") == "chart-data"

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._current_chart.pop()
        if tag == "script":
            self._in_data = False

    def handle_data(self, data: str) -> None:
        if self._in_data:
            self.chart = (self.chart or "") + data

    def marks(self, chart: str) -> list[dict[str, str | None]]:
        return [a for _, a in self.tags if a.get("_chart") == chart and "data-value" in a]


def parse(html: str) -> tuple[Marks, dict[str, Any]]:
    marks = Marks()
    marks.feed(html)
    assert marks.chart is not None
    data: dict[str, Any] = json.loads(marks.chart)
    return marks, data


def seconds(value: Any) -> float:
    assert isinstance(value, timedelta), value
    return value.total_seconds()


def test_the_latency_charts_plot_what_audit_latency_answers(page: tuple[str, dict[str, Result]],
                                                            demo_lake: Path) -> None:
    html, _ = page
    marks, data = parse(html)
    columns, _, rows = run_all(demo_lake, {"l": "AuditLatency"})["l"]
    expected: dict[str, dict[str, dict[str, float]]] = {"event_to_available": {}, "available_to_queryable": {}}
    for row in rows:
        r = dict(zip(columns, row, strict=True))
        for leg, column in (("event_to_available", "EventToAvailable"),
                            ("available_to_queryable", "AvailableToQueryable")):
            expected[leg][r["ContentType"]] = {p.lower(): seconds(r[f"{column}{p}"]) for p in PERCENTILES}
    assert len(expected["event_to_available"]) == 5
    assert data["latency"] == expected
    for leg, feeds in expected.items():
        drawn = {(m["data-label"], m["data-series"]): float(m["data-value"] or "nan")
                 for m in marks.marks(f"latency-{leg}")}
        assert drawn == {(feed, p): v for feed, per in feeds.items() for p, v in per.items()}
    # The emulator's records become available 60-90 minutes after they happen.
    assert all(3600 <= per["p50"] <= 5400 for per in expected["event_to_available"].values())


def test_the_ledger_chart_plots_every_blob_by_outcome_failed_and_expired_included(
        page: tuple[str, dict[str, Result]], demo_lake: Path) -> None:
    html, _ = page
    marks, data = parse(html)
    # Counted independently: the local ledger keeps one row per blob.
    _, _, rows = run_all(demo_lake, {"l": "ContentLedger | summarize Blobs = count() by ContentType, Status"})["l"]
    expected: dict[str, dict[str, int]] = {}
    for content_type, status, blobs in rows:
        expected.setdefault(content_type, {"ingested": 0, "pending": 0, "failed": 0, "expired": 0})[status] += blobs
    assert data["ledger"] == expected
    drawn = {(m["data-label"], m["data-series"]): int(m["data-value"] or -1) for m in marks.marks("ledger")}
    assert drawn == {(ct, s): n for ct, per in expected.items() for s, n in per.items() if n}
    # The demo's expired and cut-off blobs are on the chart, not lost in a sliver.
    for outcome in ("failed", "expired"):
        assert sum(per[outcome] for per in expected.values()) >= 1, outcome
    for m in marks.tags:
        if m[1].get("data-series") in ("failed", "expired"):
            assert float(m[1]["width"] or 0) >= 5


def test_the_other_views_carry_the_lakes_answers(page: tuple[str, dict[str, Result]], demo_lake: Path) -> None:
    html, results = page
    _, data = parse(html)
    records = run_all(demo_lake, {"n": "AuditRecordDedup | where TimeGenerated >= ago(7d) | count"})["n"][2][0][0]
    assert sum(sum(v) for v in data["log_flow"]["series"].values()) == records
    assert set(data["log_flow"]["series"]) == {"Audit.AzureActiveDirectory", "Audit.Exchange", "Audit.SharePoint",
                                               "Audit.General", "DLP.All"}
    assert data["log_flow"]["step_seconds"] == 3600
    assert [e["row"] for e in data["tampering"]] == ["mailbox auditing disabled"]
    assert len(data["schema_drift"]) == len(results["schema_drift"][2])
    verdict = verdict_line(findings(results["health"][0], results["health"][2]))
    assert verdict.startswith("unhealthy:") and data["health"]["verdict"] == verdict
    assert f'<div class="verdict bad">{verdict}</div>' in html


def test_the_page_is_self_contained(page: tuple[str, dict[str, Result]]) -> None:
    html, _ = page
    marks, _ = parse(html)
    for tag, attrs in marks.tags:
        assert "src" not in attrs and "href" not in attrs, (tag, attrs)
        assert tag not in ("link", "img", "iframe", "object", "embed", "base"), tag
    assert marks.scripts == [{"type": "application/json", "id": "chart-data"}]
    assert not re.search(r"https?://|url\(|@import", html)
    size = len(html.encode())
    assert 20_000 < size < 1_000_000, size


def test_hostile_values_from_the_audit_log_are_text(demo_lake: Path, tmp_path: Path) -> None:
    lake = tmp_path / "hostile.duckdb"
    shutil.copyfile(demo_lake, lake)
    con = duckdb.connect(str(lake))
    try:
        con.execute("SET TimeZone='UTC'")
        parameters = {"Parameters": {"Identity": HOSTILE_TARGET, "AuditEnabled": "False"}}
        con.execute("""INSERT INTO "AuditRecord" ("TimeGenerated", "Id", "TenantId", "ContentType", "RecordType",
            "Operation", "Workload", "UserPrincipal", "ClientIP", "ObjectId", "Properties", "AuditData", "IngestedAt")
            VALUES (?, ?, ?, 'Audit.Exchange', 1, 'Set-Mailbox', 'Exchange', ?, '203.0.113.9', ?, ?, '{}', ?)""",
                    [datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1), str(uuid.uuid4()), DEMO_TENANT,
                     HOSTILE_ACTOR, HOSTILE_TARGET, json.dumps(parameters), datetime.now(UTC).replace(tzinfo=None)])
    finally:
        con.close()
    results = run_all(lake, report_queries())
    html = render_html(results, title="<b>lake</b>", generated_at=datetime.now(UTC))
    # The record reaches the page three ways: the tampering view, its timeline, and the health findings.
    assert any(HOSTILE_TARGET in str(r) for r in results["tampering"][2])
    assert any(f.subject == HOSTILE_TARGET for f in findings(results["health"][0], results["health"][2]))
    assert HOSTILE_TARGET not in html and HOSTILE_ACTOR not in html and "<b>lake</b>" not in html
    assert "&lt;script&gt;alert(&#x27;inbox rule&#x27;)&lt;/script&gt;" in html
    marks, data = parse(html)
    assert {tag for tag, _ in marks.tags} <= {
        "html", "head", "meta", "title", "style", "body", "main", "h1", "h2", "p", "section", "div", "span", "i",
        "svg", "line", "text", "rect", "circle", "polyline", "details", "summary", "table", "thead", "tbody",
        "tr", "th", "td", "footer", "script"}
    assert not [a for _, attrs in marks.tags for a in attrs if a.startswith("on")]
    # The chart data holds the value as it was, for whoever reads it as data.
    assert any(HOSTILE_TARGET in e["label"] and HOSTILE_ACTOR in e["label"] for e in data["tampering"])


def test_an_empty_or_partial_result_set_still_renders() -> None:
    html = render_html({}, title="empty", generated_at=GENERATED)
    _, data = parse(html)
    assert data["ledger"] == {} and data["health"]["verdict"] is None
    assert "not queried" in html
    columns = ["Check", "Severity", "TenantId", "ContentType", "Subject", "Detail", "Since"]
    only_health = render_html({"health": (columns, [], [])}, title="t", generated_at=GENERATED)
    assert '<div class="verdict ok">healthy: 6 checks passed</div>' in only_health
