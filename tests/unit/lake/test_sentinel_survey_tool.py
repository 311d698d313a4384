"""bench/sentinel_survey.py classifies each query of a corpus by what happens on a real (empty) lake
and under Kusto.Language, and tallies what the queries compare OfficeActivity's columns with."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from bench.sentinel_survey import SurveyInputError, fill_placeholders, summary, survey
from function_app.lake.schema import TABLES, duckdb_ddl

NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)

# The tool's own test corpus, written for it: nothing here comes from Azure-Sentinel.
QUERIES = {
    "runs": """\
let kinds = dynamic(["Admin", "DcAdmin"]);
OfficeActivity
| where OfficeWorkload =~ "Exchange" and UserType in~ (kinds)
| summarize Events = count() by UserId
""",
    "mv-apply": """\
OfficeActivity
| mv-apply p = todynamic(Parameters) on (top 1 by tostring(p.Name))
""",
    "unknown-column": """\
OfficeActivity
| where NoSuchColumn == "x"
""",
    "placeholder": """\
let starttime = todatetime('{{StartTimeISO}}');
let endtime = todatetime('{{EndTimeISO}}');
OfficeActivity
| where TimeGenerated between (starttime .. endtime)
| where Logon_Type != "Owner"
""",
}


def _yaml(qid: str, query: str) -> str:
    body = "".join(f"  {line}\n" for line in query.splitlines())
    return f"id: {qid}\nname: Test {qid}\nquery: |\n{body}version: 1.0.0\n"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "survey"
    (root / "corpus").mkdir(parents=True)
    manifest: list[dict[str, Any]] = []
    for qid, query in QUERIES.items():
        (root / "corpus" / f"{qid}.yaml").write_text(_yaml(qid, query), encoding="utf-8")
        manifest.append({"id": qid, "name": f"Test {qid}", "kind": "hunting", "path": f"{qid}.yaml", "commit": ""})
    (root / "corpus" / "no-query.yaml").write_text("id: no-query\nname: Test no-query\nversion: 1\n", encoding="utf-8")
    manifest.append({"id": "no-query", "name": "Test no-query", "kind": "analytic", "path": "", "commit": ""})
    (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return root


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    path = tmp_path / "lake.duckdb"
    con = duckdb.connect(str(path))
    con.execute("SET TimeZone='UTC'")
    for table in TABLES:
        con.execute(duckdb_ddl(table))
    con.close()
    return path


def test_each_query_is_classified_on_the_lake_and_for_adx(corpus: Path, lake: Path) -> None:
    data = survey(corpus, lake, timeout=60, now=NOW)
    by_id = {q["id"]: q for q in data["queries"]}

    assert by_id["runs"]["outcome"] == "runs" and by_id["runs"]["rows"] == 0
    assert by_id["placeholder"]["outcome"] == "runs"
    assert by_id["placeholder"]["placeholders"] == ["EndTimeISO", "StartTimeISO"]
    assert by_id["mv-apply"]["outcome"] == "unsupported"
    assert "mv-apply" in by_id["mv-apply"]["construct"]
    assert (by_id["unknown-column"]["outcome"], by_id["unknown-column"]["column"]) == ("column", "NoSuchColumn")
    assert by_id["no-query"]["outcome"] == "error"
    assert by_id["no-query"]["detail"].endswith("no-query.yaml: no query field")
    assert data["totals"] | {"by_kind": None} == {
        "queries": 5, "by_kind": None, "runs": 2, "unsupported": 1, "column": 1, "error": 1,
        "adx_checked": True, "adx_clean": 3, "adx_with_errors": 1}

    # Kusto.Language knows OfficeActivity from the function library: only the unknown column fails.
    assert [q["id"] for q in data["queries"] if q["adx"].get("ok")] == ["runs", "mv-apply", "placeholder"]
    [adx_error] = by_id["unknown-column"]["adx"]["errors"]
    assert "NoSuchColumn" in adx_error["message"]

    # The literals compared with columns, the let of literals resolved to its values.
    assert data["dependencies"]["UserType"] == {"Admin": {"queries": 1, "ops": ["in~"]},
                                               "DcAdmin": {"queries": 1, "ops": ["in~"]}}
    assert data["dependencies"]["Logon_Type"] == {"Owner": {"queries": 1, "ops": ["!="]}}
    assert data["dependencies"]["OfficeWorkload"] == {"Exchange": {"queries": 1, "ops": ["=~"]}}
    assert by_id["mv-apply"]["operators"] == {"mv-apply": 1, "top": 1}
    assert by_id["unknown-column"]["unresolved"] == ["NoSuchColumn"]
    assert {"OfficeWorkload", "UserType", "UserId"} <= set(by_id["runs"]["columns"])

    printed = summary(data)
    assert "runs 2 (40%), unsupported 1 (20%), column 1 (20%), error 1 (20%)" in printed
    assert "NoSuchColumn (unknown) in Test unknown-column" in printed


def test_time_placeholders_are_filled_and_others_reported() -> None:
    start = datetime(2026, 3, 3, 5, 6, 7, tzinfo=UTC)
    text, unknown = fill_placeholders("a('{{StartTimeISO}}') b('{{ EndTimeISO }}') c({{Tenant}})", start, NOW)
    assert text == "a('2026-03-03T05:06:07Z') b('2026-03-04T05:06:07Z') c({{Tenant}})"
    assert unknown == ["Tenant"]


def test_a_broken_corpus_is_one_clear_line(tmp_path: Path, lake: Path) -> None:
    with pytest.raises(SurveyInputError, match=r"corpus: no such directory"):
        survey(tmp_path, lake, now=NOW)
