"""The ADX dashboard and the Sentinel workbook in dashboards/ hold queries that work.

Every query is taken out of its JSON and analysed by Microsoft's Kusto.Language (kql_check.cjs, as
test_kql_parse does) against the ADX database: the tables and views of the one schema definition and
the function library. Then every query runs on a demo lake through duckdb-kql, so a tile that type-checks
but answers nothing useful, or answers differently from the function it stands for, fails here.

How each file reaches the lake decides how its queries are checked:

* The ADX dashboard runs in the database itself. Its time range parameter reaches the query the way
  the dashboard service sends it, as declared query parameters (``_startTime``, ``_endTime``); the
  checks prepend that declaration.
* The workbook runs in a Log Analytics (Sentinel) workspace and reaches the lake with the cross-service
  ``adx("{LakeDatabase}").Name``, ``LakeDatabase`` being a workbook parameter. Workbooks substitute their
  parameters as text, so the checks do the same (``{TimeRange:start}`` becomes a ``datetime()``), then
  drop the ``adx(...)`` prefix so the name resolves in the ADX database. Only workspace tables
  (WORKSPACE_TABLES) may appear without the prefix, only in the tiles meant to join the workspace, and
  never with it. Cross-service queries cannot call functions with parameters
  (https://learn.microsoft.com/azure/azure-monitor/logs/azure-monitor-data-explorer-proxy#limitations),
  so through ``adx()`` the workbook reads tables, views and parameterless functions only, and carries
  inline copies of the parameterised functions' logic; a test holds those copies to the functions'
  answers on the demo lake.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from auditlake.cli import DEMO_TENANT
from auditlake.emulator.tenant import SyntheticTenant
from auditlake.lake.kql_functions import KqlFunction, parse_command, register_functions
from tests.contract.test_kql_parse import CHECKER, FUNCTIONS, _installed_checker, schema_description
from tests.flows.conftest import AUDITLAKE

REPO = Path(__file__).resolve().parents[2]
ADX_DASHBOARD = REPO / "dashboards" / "adx-dashboard.json"
WORKBOOK = REPO / "dashboards" / "sentinel-workbook.json"
DOC = REPO / "docs" / "dashboards.md"

# The dashboard JSON schema version the file follows: the version Microsoft Learn documents for the
# Real-Time (ADX) dashboard definition, with top-level `queries` that tiles name through `queryRef`.
ADX_SCHEMA_VERSION = "52"
ADX_SCHEMA = f"https://dataexplorer.azure.com/static/d/schema/{ADX_SCHEMA_VERSION}/dashboard.json"
DASHBOARD_PARAMETERS = {"_startTime": "datetime", "_endTime": "datetime"}
DECLARE = "declare query_parameters(" + ", ".join(f"{n}:{t}" for n, t in DASHBOARD_PARAMETERS.items()) + ");\n"

# Workspace tables the workbook may join, with the columns its queries use (types as Microsoft's
# reference for the table gives them: https://learn.microsoft.com/azure/azure-monitor/reference/tables/signinlogs).
WORKSPACE_TABLES: dict[str, dict[str, str]] = {
    "SigninLogs": {"TimeGenerated": "datetime", "UserPrincipalName": "string", "IPAddress": "string",
                   "ResultType": "string"},
}
# Workbook tiles that join the lake with the workspace; every other tile reads the lake alone.
WORKSPACE_TILES = {"query - signins-x-activity"}

# Queries that cannot run on the local lake, with the reason. Empty: the workspace join runs too, on a
# copy of the demo lake given a SigninLogs table.
ADX_NOT_LOCAL: dict[str, str] = {}
WORKBOOK_NOT_LOCAL: dict[str, str] = {}

# What the dashboards are for: each view must be on the ADX dashboard (by the name it reads).
ADX_VIEWS = {"AuditRecordDedup", "AuditLatency", "ContentLedger", "SchemaDrift", "AuditTampering", "HealthChecks",
             "LogFlowGaps", "LedgerHealth"}
WORKBOOK_VIEWS = {"AuditRecordDedup", "ContentLedger", "SchemaObservationSummary", "CollectorRun", "OfficeActivity"}

# Only these stand for a cluster: no real cluster name is written into a shipped file.
PLACEHOLDER_HOSTS = {"CLUSTER.REGION", "<cluster>.<region>"}
KUSTO_HOST = re.compile(r"https?://([^/\s\"'`)]+)\.kusto\.windows\.net", re.IGNORECASE)
ADX_CALL = re.compile(r"\badx\s*\(\s*(?:\"([^\"]*)\"|'([^']*)')\s*\)\s*\.\s*([A-Za-z_]\w*)")
ANY_ADX = re.compile(r"\badx\s*\(")
STRING_OR_COMMENT = re.compile(r"//[^\n]*|@?\"(?:[^\"\\\n]|\\.)*\"|@?'(?:[^'\\\n]|\\.)*'")
WORD = re.compile(r"[A-Za-z_]\w*")
WORKBOOK_PLACEHOLDER = re.compile(r"\{[A-Za-z]\w*(?::[\w$.]+)?\}")
DOC_KQL = re.compile(r"^```kql\n(.*?)^```", re.M | re.S)


@dataclass(frozen=True)
class Query:
    key: str
    """Tile title (ADX dashboard), item name (workbook) or the kql block of docs/dashboards.md."""
    text: str
    """As written in the file."""
    workspace: bool
    """Runs in a Log Analytics workspace (reaches the lake through adx())."""


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def adx_queries() -> list[Query]:
    dashboard = load(ADX_DASHBOARD)
    texts = {q["id"]: q["text"] for q in dashboard["queries"]}
    return [Query(t["title"], texts[t["queryRef"]["queryId"]], workspace=False) for t in dashboard["tiles"]]


def workbook_queries() -> list[Query]:
    return [Query(item["name"], item["content"]["query"], workspace=True)
            for item in load(WORKBOOK)["items"] if item["type"] == 3]


def doc_queries() -> list[Query]:
    blocks = DOC_KQL.findall(DOC.read_text(encoding="utf-8"))
    return [Query(f"docs/dashboards.md kql block {n + 1}", b, workspace=bool(ANY_ADX.search(b)))
            for n, b in enumerate(blocks)]


def library() -> dict[str, KqlFunction]:
    functions = [parse_command(p.read_text(encoding="utf-8"), str(p)) for p in sorted(FUNCTIONS.glob("*.kql"))]
    return {f.name: f for f in functions}


def lake_names() -> set[str]:
    """Every name the ADX database answers to: tables, materialized views, functions."""
    described = schema_description()
    return ({t["name"] for t in described["tables"]} | {v["name"] for v in described["materializedViews"]}
            | set(library()))


def without_lake_calls(text: str) -> str:
    return ADX_CALL.sub(" ", text)


def references(text: str) -> tuple[list[tuple[str, str]], set[str]]:
    """(argument, name) of each ``adx("...").Name``, and the lake and workspace names the query
    reads without that prefix. Strings and comments are blanked first: a name in a string is text."""
    calls = [(m.group(1) if m.group(1) is not None else m.group(2), m.group(3)) for m in ADX_CALL.finditer(text)]
    bare = STRING_OR_COMMENT.sub(" ", without_lake_calls(text))
    known = lake_names() | set(WORKSPACE_TABLES)
    return calls, {w for w in WORD.findall(bare) if w in known}


def bind_workbook(text: str, start: datetime, end: datetime) -> str:
    """The query as the workbook sends it (parameters substituted as text), with the lake reached
    directly instead of through adx(): what the ADX database itself is asked."""
    text = text.replace("{TimeRange:start}", f"datetime({start:%Y-%m-%dT%H:%M:%SZ})")
    text = text.replace("{TimeRange:end}", f"datetime({end:%Y-%m-%dT%H:%M:%SZ})")
    text = ADX_CALL.sub(lambda m: m.group(3), text)
    left = WORKBOOK_PLACEHOLDER.findall(text)
    assert not left, f"workbook parameters the checks do not bind: {left}"
    return text


def checked_text(q: Query) -> str:
    """The text kql_check.cjs analyses for *q*."""
    if q.workspace:
        now = datetime(2026, 1, 8, tzinfo=UTC)
        return bind_workbook(q.text, now - timedelta(days=7), now)
    return DECLARE + q.text


# --- the files themselves ---------------------------------------------------------------------------


def test_both_files_parse() -> None:
    for path in (ADX_DASHBOARD, WORKBOOK):
        assert isinstance(load(path), dict), path


def test_the_adx_dashboard_is_one_consistent_import_file() -> None:
    d = load(ADX_DASHBOARD)
    assert d["$schema"] == ADX_SCHEMA and d["schema_version"] == ADX_SCHEMA_VERSION
    # An exported file carries the dashboard's own id and eTag; one to import must not.
    assert "id" not in d and "eTag" not in d
    for key in ("baseQueries", "parameters", "dataSources", "pages", "queries", "tiles"):
        assert isinstance(d[key], list), key
    ids = [x["id"] for key in ("parameters", "dataSources", "pages", "queries", "tiles") for x in d[key]]
    assert len(ids) == len(set(ids)), "ids repeat"
    for i in ids:
        assert str(uuid.UUID(i)) == i, f"not a lower-case UUID: {i}"
    [source] = d["dataSources"]
    assert source["kind"] == "manual-kusto" and source["database"] == schema_description()["database"]
    pages = {p["id"] for p in d["pages"]}
    [time_range] = d["parameters"]
    assert time_range["kind"] == "duration"
    assert {time_range["beginVariableName"], time_range["endVariableName"]} == set(DASHBOARD_PARAMETERS)
    queries = {q["id"]: q for q in d["queries"]}
    used = [t["queryRef"]["queryId"] for t in d["tiles"]]
    assert sorted(used) == sorted(queries), "every query belongs to exactly one tile"
    for tile in d["tiles"]:
        assert tile["pageId"] in pages and tile["title"] and tile["visualType"]
        query = queries[tile["queryRef"]["queryId"]]
        assert query["dataSource"] == {"kind": "inline", "dataSourceId": source["id"]}
        # The dashboard passes only the parameters a query says it uses.
        variables = {v for v in DASHBOARD_PARAMETERS if re.search(rf"\b{v}\b", query["text"])}
        assert set(query["usedVariables"]) == variables, tile["title"]
        assert not re.search(r"^\s*\|\s*render\b", query["text"], re.M), f"{tile['title']}: the tile sets the visual"
    layout = [(t["layout"]["x"], t["layout"]["y"], t["layout"]["width"], t["layout"]["height"]) for t in d["tiles"]]
    assert all(x >= 0 and w > 0 and x + w <= 24 for x, _, w, _ in layout), "tiles fit the 24-column grid"


def test_the_workbook_is_a_notebook_whose_queries_run_in_the_workspace() -> None:
    w = load(WORKBOOK)
    assert w["version"] == "Notebook/1.0"
    names = [item["name"] for item in w["items"]]
    assert len(names) == len(set(names))
    parameters = {p["name"]: p for item in w["items"] if item["type"] == 9 for p in item["content"]["parameters"]}
    assert parameters["TimeRange"]["type"] == 4  # time range picker
    lake = parameters["LakeDatabase"]
    assert lake["type"] == 1 and lake["isRequired"]  # free text: the cluster URI and database
    assert re.fullmatch(r"https://[^/]+\.kusto\.windows\.net/\w+", lake["value"])
    for item in w["items"]:
        if item["type"] != 3:
            continue
        content = item["content"]
        assert content["version"] == "KqlItem/1.0" and content["title"], item["name"]
        # Logs (Analytics) over the workspace: adx() is a function of the workspace's query language.
        assert content["queryType"] == 0 and content["resourceType"] == "microsoft.operationalinsights/workspaces"
        # adx() passes no time filter to the cluster, so each query filters on the parameter itself.
        assert "{TimeRange:start}" in content["query"] or item["name"] == "query - health", item["name"]
        assert content["timeContextFromParameter"] == "TimeRange"


def test_no_real_cluster_is_written_down() -> None:
    for path in (ADX_DASHBOARD, WORKBOOK, DOC):
        hosts = set(KUSTO_HOST.findall(path.read_text(encoding="utf-8")))
        assert hosts <= PLACEHOLDER_HOSTS, f"{path.name}: {sorted(hosts - PLACEHOLDER_HOSTS)}"
    assert load(ADX_DASHBOARD)["dataSources"][0]["clusterUri"] == "https://CLUSTER.REGION.kusto.windows.net"


# --- what each query reads --------------------------------------------------------------------------


def test_adx_dashboard_tiles_read_the_lake_only() -> None:
    seen: set[str] = set()
    for q in adx_queries():
        calls, names = references(q.text)
        assert not ANY_ADX.search(q.text) and not calls, f"{q.key}: adx() is for the workspace"
        assert names, f"{q.key}: reads no table, view or function of the lake"
        assert not names & set(WORKSPACE_TABLES), f"{q.key}: reads a workspace table"
        seen |= names
    assert seen >= ADX_VIEWS, f"missing from the ADX dashboard: {sorted(ADX_VIEWS - seen)}"


@pytest.mark.parametrize("source", ["workbook", "doc"])
def test_workspace_queries_reach_the_lake_only_through_adx(source: str) -> None:
    queries = workbook_queries() if source == "workbook" else [q for q in doc_queries() if q.workspace]
    assert queries
    functions = library()
    lake = lake_names()
    seen: set[str] = set()
    for q in queries:
        calls, names = references(q.text)
        for argument, name in calls:
            if source == "workbook":
                assert argument == "{LakeDatabase}", f"{q.key}: adx() must take the LakeDatabase parameter"
            else:
                assert re.fullmatch(r"https://<cluster>\.<region>\.kusto\.windows\.net/\w+", argument), argument
            assert name in lake, f"{q.key}: adx().{name} is not in the lake"
            if name in functions:
                assert functions[name].parameters.replace(" ", "") == "()", (
                    f"{q.key}: {name} takes parameters; cross-service queries cannot call it")
        # A lake name without adx() would be looked up in the workspace, where it does not exist
        # (the workspace's own tables, which the lake also has under Sentinel's names, are the workspace's).
        lake_only = lake - set(WORKSPACE_TABLES)
        assert not names & lake_only, f"{q.key}: {sorted(names & lake_only)} without adx()"
        assert len(ANY_ADX.findall(q.text)) == len(calls), f"{q.key}: an adx() the checks cannot read"
        assert calls, f"{q.key}: does not read the lake"
        workspace = names & set(WORKSPACE_TABLES)
        joins = q.key in WORKSPACE_TILES or source == "doc"
        assert bool(workspace) == joins, f"{q.key}: workspace tables {sorted(workspace)}"
        if joins:
            assert re.search(r"\bjoin\b[^\n]*\bhint\.remote\s*=", q.text), (
                f"{q.key}: a join across services needs hint.remote (Azure Monitor's rule)")
        seen |= {name for _, name in calls}
    if source == "workbook":
        assert seen >= WORKBOOK_VIEWS, f"missing from the workbook: {sorted(WORKBOOK_VIEWS - seen)}"


def test_the_doc_example_is_the_workbook_join_for_one_day() -> None:
    """docs/dashboards.md shows the join to paste into Sentinel's Logs: the workbook's tile with the
    parameters written out, so the two cannot drift apart unnoticed."""
    [example] = [q.text for q in doc_queries() if q.workspace]
    [tile] = [q.text for q in workbook_queries() if q.key in WORKSPACE_TILES]
    expected = (tile.replace('adx("{LakeDatabase}")', 'adx("https://<cluster>.<region>.kusto.windows.net/auditlake")')
                .replace("between ({TimeRange:start} .. {TimeRange:end})", "> ago(1d)"))
    assert example.strip() == expected.strip()


# --- Kusto.Language ---------------------------------------------------------------------------------


def run_checker(tmp_path: Path, queries: list[Query]) -> dict[str, list[str]]:
    """Kusto.Language's errors for each query, analysed with the function library in scope."""
    node = _installed_checker()
    schema = schema_description()
    # The workspace tables join the schema so a join's columns are checked too; which names a query
    # may read without adx() is test_workspace_queries_reach_the_lake_only_through_adx's business.
    # A workspace table the lake also has (SigninLogs, under Sentinel's name) is described once: the
    # lake's definition, which has Sentinel's columns.
    present = {t["name"] for t in schema["tables"]}
    schema["tables"] += [{"name": name, "columns": [{"name": c, "type": t} for c, t in cols.items()]}
                         for name, cols in WORKSPACE_TABLES.items() if name not in present]
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(schema), encoding="utf-8")
    files: dict[str, Query] = {}
    for n, q in enumerate(queries):
        f = tmp_path / f"query{n:02}.kql"
        f.write_text(checked_text(q), encoding="utf-8")
        files[str(f)] = q
    functions = [str(p.relative_to(REPO)) for p in sorted(FUNCTIONS.glob("*.kql"))]
    out = subprocess.run([node, str(CHECKER), str(schema_file), *functions, *files], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    if out.returncode not in (0, 1):
        pytest.fail(f"kql_check.cjs could not run (exit {out.returncode}): {out.stderr.strip()}", pytrace=False)
    report: dict[str, Any] = json.loads(out.stdout)
    errors: dict[str, list[str]] = {}
    for f in report["files"]:
        if f["file"] not in files:
            continue  # a library file: test_kql_parse answers for those
        q = files[f["file"]]
        # One command per query: a line starting with "." would have cut it in two.
        assert len(f["commands"]) == 1, f"{q.key}: read as {len(f['commands'])} commands"
        errors[q.key] = [f"{e['line']}:{e['column']} {e['code']} {e['message']}"
                         for c in f["commands"] for e in c["errors"]]
    assert len(errors) == len(queries)
    return errors


def test_every_query_type_checks_for_adx(tmp_path: Path) -> None:
    if not (FUNCTIONS / "HealthChecks.kql").is_file():
        pytest.fail("auditlake/kql/functions/HealthChecks.kql is missing: the health tile calls it", pytrace=False)
    queries = adx_queries() + workbook_queries() + doc_queries()
    errors = run_checker(tmp_path, queries)
    found = [f"{key}: {e}" for key, es in errors.items() for e in es]
    assert not found, f"{len(found)} KQL error(s) in dashboard queries:\n" + "\n".join(found)


def test_the_check_catches_a_wrong_column_and_a_workspace_table_read_bare(tmp_path: Path) -> None:
    bad = [Query("wrong column", "ContentLedger | summarize count() by Stat", workspace=False),
           Query("lake table without adx", "ContentLedger | where ContentCreated > {TimeRange:start}", workspace=True)]
    errors = run_checker(tmp_path, bad)
    assert any("Stat" in e for e in errors["wrong column"])
    # Kusto.Language cannot know ContentLedger lives elsewhere; the reference rule does.
    assert references(bad[1].text)[1] == {"ContentLedger"}


# --- the local lake ---------------------------------------------------------------------------------


DEMO_DAYS = 2


def attacker_ip() -> str:
    """The address the demo's scripted incident sprays passwords from (fixed by the demo's seed)."""
    incident = SyntheticTenant.generate(DEMO_TENANT, seed=7, now=datetime.now(UTC), days=DEMO_DAYS).incident
    assert incident is not None
    return incident.attacker_ip


@pytest.fixture(scope="module")
def demo_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo lake (as tests/flows/test_investigations.py builds one), given a SigninLogs table with
    the incident's failed sign-ins, and one from an address the audit log never saw, so the workspace
    join has something to find and something to leave out."""
    path = tmp_path_factory.mktemp("dashboards") / "demo.duckdb"
    proc = subprocess.run([AUDITLAKE, "demo", "--lake", str(path), "--days", str(DEMO_DAYS)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    con = duckdb.connect(str(path))
    try:
        # The lake has a SigninLogs table of its own (Sentinel's columns, filled by the demo's Entra
        # logs); here it stands for the workspace's table, holding only the rows this test knows.
        con.execute('DELETE FROM "SigninLogs"')
        columns = ", ".join(f'"{c}"' for c in ("Id", *WORKSPACE_TABLES["SigninLogs"]))
        now = datetime.now(UTC).replace(tzinfo=None)
        rows = [(f"ws-{h}", now - timedelta(hours=h), f"user{h}@example.com", attacker_ip(), "50126") for h in (3, 4)]
        rows.append(("ws-2", now - timedelta(hours=2), "someone@example.com", "198.51.100.7", "50126"))
        con.executemany(f'INSERT INTO "SigninLogs" ({columns}) VALUES (?, ?, ?, ?, ?)', rows)
    finally:
        con.close()
    return path


def run_local(lake: Path, q: Query, start: datetime, end: datetime) -> tuple[list[str], list[tuple[Any, ...]]]:
    """(columns, rows) of *q* on the local lake. As auditlake.cli.run_kql does (library functions
    registered, then duckdb-kql), except that the dashboard's parameters are passed as values of the
    declared query parameters, which run_kql has no argument for."""
    import duckdb_kql

    text = bind_workbook(q.text, start, end) if q.workspace else DECLARE + q.text
    con = duckdb.connect(str(lake), read_only=True)
    try:
        register_functions(text)
        parameters = None if q.workspace else {"_startTime": start, "_endTime": end}
        rel = duckdb_kql.kql(con, text, parameters)
        return list(rel.columns), rel.fetchall()
    finally:
        con.close()


def window() -> tuple[datetime, datetime]:
    end = datetime.now(UTC).replace(microsecond=0)
    return end - timedelta(days=7), end


# Tiles the demo's two days and scripted incident must fill (the others may rightly be empty).
ADX_FILLED = {"Health checks (what the alert rules see)", "Log flow per content type (records per hour)",
              "Latency: event to available at Microsoft (hours)", "Latency: available to queryable here (hours)",
              "Ledger outcomes per content type (blobs)", "Blobs in trouble (LedgerHealth)",
              "Audit tampering timeline (AuditTampering)"}
WORKBOOK_FILLED = {"query - health", "query - flow", "query - latency-available", "query - latency-queryable",
                   "query - ledger", "query - tampering", "query - signins-x-activity"}


@pytest.mark.slow
@pytest.mark.parametrize("source", ["adx", "workbook"])
def test_every_query_runs_on_the_local_lake(demo_lake: Path, source: str) -> None:
    queries, not_local, filled = ((adx_queries(), ADX_NOT_LOCAL, ADX_FILLED) if source == "adx"
                                  else (workbook_queries(), WORKBOOK_NOT_LOCAL, WORKBOOK_FILLED))
    keys = {q.key for q in queries}
    assert set(not_local) <= keys and filled <= keys
    start, end = window()
    failures = []
    for q in queries:
        if q.key in not_local:
            continue
        try:
            columns, rows = run_local(demo_lake, q, start, end)
        except Exception as exc:  # report every tile that fails, not just the first
            failures.append(f"{q.key}: {type(exc).__name__}: {str(exc)[:500]}")
            continue
        assert columns, q.key
        if q.key in filled and not rows:
            failures.append(f"{q.key}: no rows on the demo lake")
    assert not failures, "\n".join(failures)


def rows_of(lake: Path, key: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    [q] = [q for q in workbook_queries() + adx_queries() if q.key == key]
    columns, rows = run_local(lake, q, start, end)
    return [dict(zip(columns, r, strict=True)) for r in rows]


def function_rows(lake: Path, kql: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    columns, rows = run_local(lake, Query("function", kql, workspace=False), start, end)
    return [dict(zip(columns, r, strict=True)) for r in rows]


@pytest.mark.slow
def test_the_workbooks_inline_copies_agree_with_the_functions(demo_lake: Path) -> None:
    """adx() cannot call AuditTampering, AuditLatency or SchemaDrift (they take parameters), so the
    workbook repeats their logic; on the demo lake the copies must give the functions' answers."""
    start, end = window()
    key = ("TimeGenerated", "Detail", "Operation", "TenantId")
    tampering = [tuple(r[k] for k in key) for r in rows_of(demo_lake, "query - tampering", start, end)]
    expected = [tuple(r[k] for k in key) for r in function_rows(demo_lake, "AuditTampering(_startTime, _endTime)",
                                                                start, end)]
    assert tampering == expected and tampering

    for leg, prefix in (("available", "EventToAvailable"), ("queryable", "AvailableToQueryable")):
        latency = {r["ContentType"]: r for r in rows_of(demo_lake, f"query - latency-{leg}", start, end)}
        reference = function_rows(demo_lake, "AuditLatency(now() - _startTime)", start, end)
        assert set(latency) == {r["ContentType"] for r in reference}  # one tenant in the demo
        for r in reference:
            for p in ("P50", "P95", "P99", "Max"):
                hours = r[f"{prefix}{p}"] / timedelta(hours=1)
                assert latency[r["ContentType"]][f"{p}Hours"] == pytest.approx(hours, abs=0.006), (leg, p)

    drift_key = ("Change", "Workload", "RecordType", "Operation", "FieldPath", "FieldType")
    drift = {tuple(r[k] for k in drift_key) for r in rows_of(demo_lake, "query - drift", start, end)}
    expected_drift = {tuple(r[k] for k in drift_key)
                      for r in function_rows(demo_lake, "SchemaDrift(now() - _startTime)", start, end)
                      if r["Change"] != "field gone"}
    assert drift == expected_drift


@pytest.mark.slow
def test_the_workspace_join_finds_the_spraying_address(demo_lake: Path) -> None:
    start, end = window()
    rows = rows_of(demo_lake, "query - signins-x-activity", start, end)
    assert [r["IPAddress"] for r in rows] == [attacker_ip()]
    [row] = rows
    assert row["FailedSignIns"] == 2 and row["AuditRecords"] > 0
