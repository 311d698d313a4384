"""OfficeActivity returns exactly the columns Sentinel documents for its OfficeActivity table, with
their types and in their order.

The documented list is sentinel_officeactivity_columns.json (its ``source`` names the reference pages
and commits it was read from). The function runs on an empty local lake through duckdb-kql, the engine
`auditlake query` uses; the DuckDB type of each result column is mapped to the KQL type ADX gives the
same expression, and KQL's own ``getschema`` on the lake must agree with that mapping.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import duckdb_kql
import pytest

from auditlake.lake.duckdb_lake import LocalLake
from auditlake.lake.kql_functions import register_functions

REPO = Path(__file__).resolve().parents[2]
FUNCTION = REPO / "auditlake" / "kql" / "functions" / "OfficeActivity.kql"
DOCUMENTED = Path(__file__).with_name("sentinel_officeactivity_columns.json")

# DuckDB type of a result column -> the KQL type of the expression that produced it.
KQL_TYPE = {
    "VARCHAR": "string",
    "INTEGER": "int",
    "BIGINT": "long",
    "DOUBLE": "real",
    "BOOLEAN": "bool",
    "TIMESTAMP": "datetime",
    "TIMESTAMP WITH TIME ZONE": "datetime",
    "JSON": "dynamic",
}


def documented() -> list[tuple[str, str]]:
    data = json.loads(DOCUMENTED.read_text(encoding="utf-8"))
    return [(c["name"], c["type"]) for c in data["columns"]]


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[duckdb.DuckDBPyConnection]:
    path = tmp_path_factory.mktemp("oa") / "lake.duckdb"
    LocalLake(path).close()  # creates the lake's tables, empty
    con = duckdb.connect(str(path), read_only=True)
    yield con
    con.close()


def run(con: duckdb.DuckDBPyConnection, kql: str) -> Any:
    register_functions(kql)
    return duckdb_kql.kql(con, kql)


def test_the_documented_list_names_its_source_and_has_no_duplicates() -> None:
    data = json.loads(DOCUMENTED.read_text(encoding="utf-8"))
    assert data["source"] and all(re.fullmatch(r"[0-9a-f]{40}", s["commit"]) and s["path"] for s in data["source"])
    names = [n for n, _ in documented()]
    assert len(names) == len(set(names))
    assert {t for _, t in documented()} <= set(KQL_TYPE.values())
    # The columns named in our issue as missing are part of the list.
    assert {"_ResourceId", "_SubscriptionId", "AppAccessContext", "DeviceInformation", "SensitivityLabelId",
            "UniqueSharingId", "JoinTime", "LeaveTime", "MeetingDetailId", "Attendees"} <= set(names)


def test_officeactivity_returns_the_documented_columns_with_their_types(lake: duckdb.DuckDBPyConnection) -> None:
    rel = run(lake, "OfficeActivity | take 0")
    unknown = {str(t) for t in rel.types} - set(KQL_TYPE)
    assert not unknown, f"DuckDB types with no KQL mapping: {unknown}"
    returned = [(name, KQL_TYPE[str(t)]) for name, t in zip(rel.columns, rel.types, strict=True)]
    assert returned == documented()


def test_getschema_agrees_with_the_type_mapping(lake: duckdb.DuckDBPyConnection) -> None:
    rows = run(lake, "OfficeActivity | getschema | project ColumnName, ColumnType").fetchall()
    assert [(r[0], r[1]) for r in rows] == documented()


def project_columns(text: str) -> list[str]:
    """The output columns of the function body's final ``| project``, in order."""
    body = text[text.rindex("| project"):]
    return re.findall(r"^\s{8}(\w+)(?: =|,|\s*$)", body, re.M)


def test_the_function_body_projects_every_documented_column_in_order() -> None:
    text = FUNCTION.read_text(encoding="utf-8")
    assert project_columns(text) == [n for n, _ in documented()]
