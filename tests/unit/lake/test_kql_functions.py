"""Every file of the KQL library (auditlake/kql/functions, package data) is one ADX command that the
local lake can run too."""

from __future__ import annotations

import re
from collections.abc import Iterator
from importlib.resources.abc import Traversable
from pathlib import Path

import duckdb
import pytest

from auditlake.cli import CliError, run_kql
from auditlake.lake.kql_functions import (
    LIBRARY,
    VIEW_TABLES,
    KqlFunctionsError,
    library_files,
    load_functions,
    local_definitions,
    needed,
    parse_command,
)
from function_app.lake.schema import TABLES, duckdb_ddl

FILES = library_files()
REPO = Path(__file__).resolve().parents[3]


def _stem(path: Traversable) -> str:
    return path.name.removesuffix(".kql")

# The library of issue 5: the names are a contract with the people who call them.
EXPECTED = {
    "OfficeActivity", "LicenseChanges", "MessagesRead", "ServicePrincipalActivity", "AuditTampering",
    "LogFlowGaps", "AuditLatency", "SchemaDrift", "LedgerHealth", "HealthChecks", "Completeness",
    "CompletenessByDay", "ServicePrincipalSignInFailures", "ServicePrincipalChangesWithIP", "CredentialThenSignIns",
    "ManagedIdentityAccess", "ServicePrincipalNewAddresses",
}


@pytest.fixture
def empty_lake() -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone='UTC'")
    for table in TABLES:
        con.execute(duckdb_ddl(table))
    yield con
    con.close()


def test_the_library_is_the_contract() -> None:
    assert {f.name for f in load_functions()} == EXPECTED


def test_the_library_the_cli_loads_is_the_one_bicep_deploys() -> None:
    # One copy of each function: `auditlake query` reads the package data, adx-database.bicep
    # loads the same files into ADX.
    bicep = REPO / "infra" / "modules" / "adx-database.bicep"
    loaded = [(bicep.parent / m).resolve()
              for m in re.findall(r"loadTextContent\('([^']+)'\)", bicep.read_text(encoding="utf-8"))]
    source = REPO / "auditlake" / "kql" / "functions"
    deployed = {p.name: p for p in loaded if p.parent == source}
    assert sorted(deployed) == [p.name for p in FILES]
    for path in FILES:
        assert path.read_text(encoding="utf-8") == deployed[path.name].read_text(encoding="utf-8"), path.name
    assert LIBRARY.is_dir()


@pytest.mark.parametrize("path", FILES, ids=[_stem(p) for p in FILES])
def test_each_file_is_one_create_or_alter_function_command(path: Traversable) -> None:
    text = path.read_text(encoding="utf-8")
    # ADX runs each file as a database script: the command comes first (comments live in the
    # body), and a blank line would end the command there.
    assert text.startswith(".create-or-alter function with (")
    assert "\n\n" not in text.strip()
    assert len(re.findall(r"^\.", text, re.MULTILINE)) == 1
    function = parse_command(text, path.name)
    assert function.name == _stem(path)
    assert function.properties["folder"] == "AuditLake"
    assert len(function.properties["docstring"]) > 20
    assert function.properties.get("skipvalidation") == "false"
    assert function.definition.startswith(f"function {_stem(path)}(")
    assert function.definition.endswith("}")


@pytest.mark.parametrize("path", FILES, ids=[_stem(p) for p in FILES])
def test_each_function_runs_on_an_empty_lake(path: Traversable, empty_lake: duckdb.DuckDBPyConnection) -> None:
    columns, _, rows = run_kql(empty_lake, _stem(path))
    assert columns and rows == []


def test_the_view_names_read_the_local_tables(empty_lake: duckdb.DuckDBPyConnection) -> None:
    assert VIEW_TABLES == {
        "AuditRecordDedup": "AuditRecord", "MailItemAccessDedup": "MailItemAccess",
        "DirectoryChangeDedup": "DirectoryChange", "SignInDedup": "SignIn",
        "SchemaObservationSummary": "SchemaObservation", "SigninLogsDedup": "SigninLogs",
        "AADNonInteractiveUserSignInLogsDedup": "AADNonInteractiveUserSignInLogs",
        "AADServicePrincipalSignInLogsDedup": "AADServicePrincipalSignInLogs",
        "AADManagedIdentitySignInLogsDedup": "AADManagedIdentitySignInLogs", "AuditLogsDedup": "AuditLogs",
    }
    empty_lake.execute("""INSERT INTO "SignIn" ("RecordId", "Operation") VALUES ('r1', 'UserLoggedIn')""")
    assert run_kql(empty_lake, "SignInDedup | project RecordId")[2] == [("r1",)]


def test_a_query_registers_only_what_it_calls() -> None:
    assert needed("AuditRecord | count") == []
    # A function brings the view names its body reads.
    assert needed('MessagesRead("10.0.0.1") | count') == ["MailItemAccessDedup", "MessagesRead"]
    assert set(needed("LicenseChanges")) == {"LicenseChanges", "AuditRecordDedup", "DirectoryChangeDedup"}
    assert set(local_definitions()) == EXPECTED | set(VIEW_TABLES)


def test_an_unknown_function_is_still_refused(empty_lake: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(CliError, match="KQL"):
        run_kql(empty_lake, "NoSuchFunction()")


GOOD = """.create-or-alter function with (folder="AuditLake", docstring="Counts \\"things\\"", skipvalidation="false")
Things(n:long = 5) {
    // a comment with a brace } and a quote "
    AuditRecord | where RecordType > n | count
}
"""


def test_parse_command_converts_to_a_local_definition() -> None:
    function = parse_command(GOOD)
    assert function.name == "Things"
    assert function.parameters == "(n:long = 5)"
    assert function.properties == {"folder": "AuditLake", "docstring": 'Counts "things"', "skipvalidation": "false"}
    assert function.definition.startswith("function Things(n:long = 5) {\n    // a comment")
    assert function.definition.endswith("| count\n}")


@pytest.mark.parametrize(("text", "message"), [
    ("Things() { AuditRecord }", "expected `.create-or-alter function"),
    (".create-or-alter function Things() { AuditRecord }", "needs `with"),
    ('.create-or-alter function with (folder="AuditLake") Things() { AuditRecord }', "must set docstring"),
    ('.create-or-alter function with (docstring="d") Things() { AuditRecord }', "must set folder"),
    ('.create-or-alter function with (folder="A", docstring="d") Things() { AuditRecord }\n'
     '.create-or-alter function with (folder="A", docstring="d") More() { AuditRecord }', "one command per file"),
    ('.create-or-alter function with (folder="A", docstring="d") Things() AuditRecord', "expected `{`"),
    ('.create-or-alter function with (folder="A", docstring="d") Things() { AuditRecord', "unbalanced"),
    ('.create-or-alter function with (folder="A" docstring="d") Things() { T }', "cannot read the properties"),
])
def test_parse_command_refuses_anything_else(text: str, message: str) -> None:
    with pytest.raises(KqlFunctionsError, match=re.escape(message)):
        parse_command(text)


def test_a_missing_library_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KqlFunctionsError, match=r"package data of auditlake"):
        load_functions(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KqlFunctionsError, match=r"no \.kql file"):
        load_functions(tmp_path / "empty")


def test_a_function_may_not_take_a_view_name(tmp_path: Path) -> None:
    (tmp_path / "AuditRecordDedup.kql").write_text(GOOD.replace("Things(", "AuditRecordDedup("), encoding="utf-8")
    with pytest.raises(KqlFunctionsError, match="name of a materialized view"):
        local_definitions(tmp_path)
