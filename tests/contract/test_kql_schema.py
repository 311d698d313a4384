"""The ADX schema in infra/kql is exactly what the one schema definition renders."""

from __future__ import annotations

import subprocess
from pathlib import Path

from function_app.lake.schema import TABLES, json_mapping_name, render_adx, render_duckdb
from tests.flows.conftest import AUDITLAKE

KQL = Path(__file__).resolve().parents[2] / "infra" / "kql"


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
