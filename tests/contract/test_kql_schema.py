"""The ADX schema in infra/kql is exactly what the one schema definition renders."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from function_app.lake.schema import (
    ADX_SCRIPTS,
    AUDIT_RETENTION_DAYS,
    OPERATIONAL_RETENTION_DAYS,
    TABLES,
    TABLES_BY_NAME,
    adx_tables,
    json_mapping_name,
    render_adx,
    render_adx_policies,
    render_adx_views,
    render_duckdb,
)
from tests.flows.conftest import AUDITLAKE

REPO = Path(__file__).resolve().parents[2]
KQL = REPO / "infra" / "kql"
DICTIONARY = REPO / "docs" / "data-dictionary.md"  # one "## <Table>" section per table


def test_committed_tables_kql_equals_the_rendered_schema() -> None:
    committed = (KQL / "tables.kql").read_text(encoding="utf-8")
    assert committed == render_adx(), "infra/kql/tables.kql is stale: run `auditlake schema --target adx`"


def test_every_adx_table_has_its_table_and_mapping_command() -> None:
    text = render_adx()
    for table in TABLES:
        if table.local_only:
            assert f"table {table.name} " not in text
            continue
        assert f".create-merge table {table.name} (" in text
        assert f'ingestion json mapping "{json_mapping_name(table)}"' in text


def test_schema_command_prints_the_same_ddl() -> None:
    for target, expected in (("adx", render_adx()), ("duckdb", render_duckdb())):
        out = subprocess.run([AUDITLAKE, "schema", "--target", target], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and out.stdout == expected


@pytest.mark.parametrize("name", list(ADX_SCRIPTS))
def test_every_committed_script_equals_its_rendering(name: str) -> None:
    committed = (KQL / name).read_text(encoding="utf-8")
    assert committed == ADX_SCRIPTS[name](), f"infra/kql/{name} is stale: render it from function_app.lake.schema"


def test_infra_kql_holds_only_rendered_scripts() -> None:
    assert {p.name for p in KQL.glob("*.kql")} == set(ADX_SCRIPTS)


@pytest.mark.parametrize("name", list(ADX_SCRIPTS))
def test_scripts_are_commands_separated_by_blank_lines(name: str) -> None:
    for command in ADX_SCRIPTS[name]().strip().split("\n\n"):
        assert command.startswith("."), command
        assert "\n\n" not in command


def test_every_table_keeps_its_retention_and_fresh_batching() -> None:
    text = render_adx_policies()
    for table in adx_tables():
        days = OPERATIONAL_RETENTION_DAYS if table.name in {"ContentLedger", "CollectorRun"} else AUDIT_RETENTION_DAYS
        assert table.retention_days == days
        assert f".alter-merge table {table.name} policy retention softdelete = {days}d" in text
        m = re.search(rf"\.alter table {table.name} policy ingestionbatching '([^']*)'", text)
        assert m, table.name
        policy = json.loads(m.group(1))
        assert policy["MaximumBatchingTimeSpan"] == "00:00:30"
        assert policy["MaximumNumberOfItems"] > 0 and policy["MaximumRawDataSizeMB"] > 0
    assert "Checkpoint" not in text


VIEW = re.compile(
    r"\.create-or-alter materialized-view with \((?P<props>[^)]*)\) (?P<view>\w+) on table (?P<table>\w+)\n"
    r"\{\n    (?P=table)\n    \| summarize (?P<aggs>.*) by (?P<key>[\w, ]+)\n\}"
)


def test_views_deduplicate_by_each_key_and_fold_the_schema_observations() -> None:
    text = render_adx_views()
    views = {m.group("view"): m for m in VIEW.finditer(text)}
    assert set(views) == {"AuditRecordDedup", "MailItemAccessDedup", "DirectoryChangeDedup", "SignInDedup",
                          "SchemaObservationSummary", "SigninLogsDedup", "AADNonInteractiveUserSignInLogsDedup",
                          "AADServicePrincipalSignInLogsDedup", "AADManagedIdentitySignInLogsDedup", "AuditLogsDedup"}
    audit = views["AuditRecordDedup"]
    assert audit.group("aggs") == "take_any(*)" and audit.group("key") == "Id, RecordType, Operation"
    for name, m in views.items():
        table = TABLES_BY_NAME[m.group("table")]
        assert m.group("key") == ", ".join(table.key)
        assert all(k in table.column_names for k in table.key)
        assert f".alter-merge materialized-view {name} policy retention softdelete = {table.retention_days}d" in text
        if name.endswith("Dedup"):
            assert "lookback=7d" in m.group("props") and m.group("aggs") == "take_any(*)"
            assert f".alter materialized-view {name} autoUpdateSchema true" in text
    summary = views["SchemaObservationSummary"]
    assert summary.group("aggs") == "FirstSeen = min(FirstSeen), LastSeen = max(LastSeen), Records = sum(Records)"
    assert "lookback" not in summary.group("props")


def test_every_key_column_exists_and_duckdb_has_every_table() -> None:
    ddl = render_duckdb()
    for table in TABLES:
        assert set(table.key) <= set(table.column_names), table.name
        assert f'CREATE TABLE IF NOT EXISTS "{table.name}"' in ddl


def test_the_data_dictionary_names_every_table_and_column() -> None:
    text = DICTIONARY.read_text(encoding="utf-8")
    for table in TABLES:
        if table.local_only:
            continue
        section = text.split(f"\n## {table.name}\n", 1)
        assert len(section) == 2, f"no section for {table.name} in {DICTIONARY.name}"
        body = section[1].split("\n## ", 1)[0]
        for column in table.columns:
            assert f"| {column.name} | {column.kind.value} |" in body, f"{table.name}.{column.name}"
