"""Every KQL script ADX runs (infra/kql, and the function library auditlake/kql/functions) parses and
analyses cleanly with Microsoft's Kusto.Language.

``kql_check.cjs`` runs the parser of Kusto Explorer and the ADX web UI (npm
``@kusto/language-service-next``, pinned in package.json) under Node against a database described
from the one schema definition (``function_app.lake.schema``): syntax errors in any command, and
unknown tables, columns or functions in view queries and function bodies fail here rather than
at deployment. `make test` installs the package (`npm ci`); without it these tests fail.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from function_app.lake.entra_schema import ENTRA_TABLE_NAMES, expansion_function, raw_table
from function_app.lake.schema import TABLES_BY_NAME, Column, Kind, Table, adx_tables
from function_app.lake.staging import STAGING_TABLE, TARGET_TABLES, staging_table
from function_app.lake.staging import expansion_function as staged_expansion

REPO = Path(__file__).resolve().parents[2]
KQL = REPO / "infra" / "kql"
FUNCTIONS = REPO / "auditlake" / "kql" / "functions"
CHECKER = Path(__file__).with_name("kql_check.cjs")
PACKAGE = "@kusto/language-service-next"
MAIN_BICEP = REPO / "infra" / "main.bicep"


def database_name() -> str:
    """The database the deployment creates by default (``adxDatabaseName`` in main.bicep)."""
    m = re.search(r"^param adxDatabaseName string = '([^']+)'", MAIN_BICEP.read_text(encoding="utf-8"), re.M)
    assert m, "infra/main.bicep: no default for param adxDatabaseName"
    return m.group(1)


def _columns(columns: list[Column]) -> list[dict[str, str]]:
    return [{"name": c.name, "type": c.kind.value} for c in columns]


def view_columns(table: Table) -> list[Column]:
    """The columns of *table*'s materialized view: every column for a ``take_any(*)`` dedup view;
    for a summary view the key, then each merged column (``summarize agg(c) by key`` keeps names
    and types). kql_check.cjs holds this equal to what the view's query in views.kql yields."""
    if not table.is_aggregate:
        return list(table.columns)
    return [table.column(k) for k in table.key] + [c for c in table.columns if c.merge is not None]


def described_tables() -> tuple[Table, ...]:
    """Every ADX table: those of ``TABLES``, then the ADX-only Entra raw table (entra.kql creates it)
    and the ADX-only staging table (tables.kql creates it, policies.kql fans it out)."""
    return (*adx_tables(), raw_table(), staging_table())


def schema_description(extra_views: tuple[tuple[str, Table], ...] = ()) -> dict[str, Any]:
    """The ADX database as kql_check.cjs reads it, from the one schema definition; *extra_views*
    (name, table) declares views with the columns of those tables too."""
    tables = adx_tables()
    return {
        "database": database_name(),
        "tables": [{"name": t.name, "columns": _columns(list(t.columns))} for t in described_tables()],
        "materializedViews": [
            {"name": t.view_name, "columns": _columns(view_columns(t))} for t in tables if t.view_name is not None
        ] + [{"name": name, "columns": _columns(list(t.columns))} for name, t in extra_views],
    }


def _installed_checker() -> str:
    """The node binary, once the pinned package is installed; fails (never skips) otherwise."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the KQL check runs Kusto.Language under Node 20", pytrace=False)
    pinned = json.loads((REPO / "package.json").read_text(encoding="utf-8"))["devDependencies"][PACKAGE]
    manifest = REPO / "node_modules" / PACKAGE / "package.json"
    if not manifest.is_file():
        pytest.fail(f"{PACKAGE} is not installed: run `npm ci` in {REPO} (`make test` does)", pytrace=False)
    installed = json.loads(manifest.read_text(encoding="utf-8"))["version"]
    if installed != pinned:
        pytest.fail(f"node_modules has {PACKAGE} {installed}, package.json pins {pinned}: run `npm ci`", pytrace=False)
    return node


def run_check(tmp_path: Path, files: list[Path], extra_views: tuple[tuple[str, Table], ...] = ()) -> dict[str, Any]:
    """kql_check.cjs's report on *files* (exit 0 clean, 1 errors; anything else fails the test)."""
    node = _installed_checker()
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(schema_description(extra_views), indent=2), encoding="utf-8")
    args = [str(f.relative_to(REPO)) if f.is_relative_to(REPO) else str(f) for f in files]
    out = subprocess.run([node, str(CHECKER), str(schema), *args], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    if out.returncode not in (0, 1):
        pytest.fail(f"kql_check.cjs could not run (exit {out.returncode}): {out.stderr.strip()}", pytrace=False)
    report: dict[str, Any] = json.loads(out.stdout)
    assert report["ok"] == (out.returncode == 0) == (report["errorCount"] == 0)
    return report


def errors_by_file(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {
        Path(f["file"]).name: [{**e, "command": c["text"]} for c in f["commands"] for e in c["errors"]]
        for f in report["files"]
    }


def describe(report: dict[str, Any]) -> list[str]:
    return [
        f"{f['file']}:{e['line']}:{e['column']}: {e['code']} {e['message']}  [in: {c['text']}]"
        for f in report["files"] for c in f["commands"] for e in c["errors"]
    ]


def test_every_kql_script_parses_and_analyses_without_errors(tmp_path: Path) -> None:
    scripts = sorted(KQL.rglob("*.kql")) + sorted(FUNCTIONS.glob("*.kql"))
    assert len({s.parent for s in scripts}) == 2, "no KQL under infra/kql or auditlake/kql/functions"
    report = run_check(tmp_path, scripts)
    assert [Path(f["file"]) for f in report["files"]] == [s.relative_to(REPO) for s in scripts]
    assert all(f["commands"] for f in report["files"]), "a script without a command"
    errors = describe(report)
    assert not errors, f"{len(errors)} KQL error(s) ({report['package']}):\n" + "\n".join(errors)


SYNTAX_ERROR = """\
// A sound function, and one whose where clause ends at `and`.
.create-or-alter function with (folder="AuditLake") RecentSignIns(since:timespan) {
    SignInDedup
    | where TimeGenerated > ago(since)
}

.create-or-alter function with (folder="AuditLake") FailedSignIns(since:timespan) {
    RecentSignIns(since)

    | where ResultStatus != "Succeeded" and
}
"""

UNKNOWN_COLUMN = """\
.create-or-alter function with (folder="AuditLake") MailOfSession(session:string) {
    MailItemAccessDedup
    | where SessionId == session
    | project TimeGenerated, MailboxOwnerUPN, Subject
}

.create-or-alter function with (folder="AuditLake") RecentSignInUsers() {
    RecentSignIns(1d)
    | distinct UserPrincipal
}
"""


def test_the_check_reports_a_syntax_error_and_an_unknown_column(tmp_path: Path) -> None:
    syntax, unknown = tmp_path / "syntax_error.kql", tmp_path / "unknown_column.kql"
    syntax.write_text(SYNTAX_ERROR, encoding="utf-8")
    unknown.write_text(UNKNOWN_COLUMN, encoding="utf-8")
    report = run_check(tmp_path, [syntax, unknown])
    assert not report["ok"]
    errors, found = errors_by_file(report), "\n".join(describe(report))
    # The command with the dangling `and` fails where its expression is missing (just after the
    # `and` on line 10); the blank line inside its body does not cut it, and the sound function
    # before it passes.
    assert errors["syntax_error.kql"], found
    assert all("FailedSignIns(" in e["command"] for e in errors["syntax_error.kql"]), found
    assert any((e["code"], e["line"], e["column"]) == ("KS006", 10, 44) for e in errors["syntax_error.kql"]), found
    # Only `Subject` is unknown; RecentSignIns, defined in the other file, resolves.
    assert len(errors["unknown_column.kql"]) == 1, found
    [error] = errors["unknown_column.kql"]
    assert (error["code"], error["line"], error["column"]) == ("KS142", 4, 47), found
    assert "'Subject'" in error["message"]


def test_the_description_covers_every_adx_table_and_view() -> None:
    described = schema_description()
    assert [t["name"] for t in described["tables"]] == [t.name for t in adx_tables()] + ["EntraActivityRaw",
                                                                                           "AuditIngest"]
    views = {v["name"]: [c["name"] for c in v["columns"]] for v in described["materializedViews"]}
    assert set(views) == {"AuditRecordDedup", "MailItemAccessDedup", "DirectoryChangeDedup", "SignInDedup",
                          "SchemaObservationSummary", "SigninLogsDedup", "AADNonInteractiveUserSignInLogsDedup",
                          "AADServicePrincipalSignInLogsDedup", "AADManagedIdentitySignInLogsDedup",
                          "AuditLogsDedup"}
    assert views["SchemaObservationSummary"] == ["Workload", "RecordType", "Operation", "FieldPath", "FieldType",
                                                 "FirstSeen", "LastSeen", "Records"]


def test_each_entra_expansion_yields_exactly_its_tables_columns(tmp_path: Path) -> None:
    """An update policy's query must yield its target table's columns and types. kql_check.cjs
    compares a materialized view's query with the columns declared for it, so each expansion
    function is checked through a throw-away view over it declared with its table's columns."""
    tables = [t for t in adx_tables() if t.name in ENTRA_TABLE_NAMES]
    assert [t.name for t in tables] == list(ENTRA_TABLE_NAMES)
    probe = tmp_path / "entra_probe.kql"
    probe.write_text("\n\n".join(
        f".create-or-alter materialized-view Probe{t.name} on table EntraActivityRaw\n"
        f"{{\n    {expansion_function(t.name)}()\n    | summarize take_any(*) by Id\n}}" for t in tables) + "\n",
        encoding="utf-8")
    report = run_check(tmp_path, [KQL / "entra.kql", probe], tuple((f"Probe{t.name}", t) for t in tables))
    errors = describe(report)
    assert not errors, "\n".join(errors)
    # The probe itself can fail: a view declared with one column of another type is reported.
    wrong = tables[0]
    changed = Table(wrong.name, tuple(Column(c.name, Kind.STRING if c.name == "TimeGenerated" else c.kind)
                                      for c in wrong.columns), wrong.key)
    report = run_check(tmp_path, [KQL / "entra.kql", probe], tuple(
        (f"Probe{t.name}", changed if t is wrong else t) for t in tables))
    assert [e["code"] for e in errors_by_file(report)["entra_probe.kql"]] == ["AL-VIEW-SCHEMA"]


def _staging_probe(path: Path, tables: list[Table]) -> None:
    path.write_text("\n\n".join(
        f".create-or-alter materialized-view Probe{t.name} on table {STAGING_TABLE}\n"
        f"{{\n    {staged_expansion(t.name)}()\n    | summarize take_any(*) by {', '.join(t.column_names[:2])}\n}}"
        for t in tables) + "\n", encoding="utf-8")


def test_each_staging_fan_out_yields_exactly_its_tables_columns(tmp_path: Path) -> None:
    """Each update policy from AuditIngest (policies.kql) must yield its target's columns and types:
    checked, as the Entra expansions are, through a throw-away view over each function declared
    with the target's columns. The summarize keeps every column (take_any(*)); its key is any two."""
    tables = [TABLES_BY_NAME[name] for name in TARGET_TABLES]
    assert {"AuditRecord", "MailItemAccess", "DirectoryChange", "SignIn", "SchemaObservation"} <= set(TARGET_TABLES)
    probe = tmp_path / "staging_probe.kql"
    _staging_probe(probe, tables)
    report = run_check(tmp_path, [KQL / "policies.kql", probe], tuple((f"Probe{t.name}", t) for t in tables))
    errors = describe(report)
    assert not errors, "\n".join(errors)
    # A target whose column the fan-out would type differently is reported.
    wrong = TABLES_BY_NAME["MailItemAccess"]
    changed = Table(wrong.name, tuple(Column(c.name, Kind.STRING if c.name == "SizeInBytes" else c.kind)
                                      for c in wrong.columns), wrong.key)
    report = run_check(tmp_path, [KQL / "policies.kql", probe], tuple(
        (f"Probe{t.name}", changed if t is wrong else t) for t in tables))
    assert [e["code"] for e in errors_by_file(report)["staging_probe.kql"]] == ["AL-VIEW-SCHEMA"]
