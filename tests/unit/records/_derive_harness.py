"""Run a derived table's KQL body (``function_app.lake.derived_tables``) over records through DuckDB and
duckdb-kql, as the fake ADX runs ADX's update policies, and compare its rows with the Python builder of
the same table (the local lake's): the lock-step of the two definitions."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import duckdb
import duckdb_kql
import orjson

from auditlake.lake.duckdb_lake import to_arrow
from auditlake.lake.kql_reach import install, register_macros
from function_app.lake.schema import AUDIT_RECORD, TABLES_BY_NAME, Kind, duckdb_type
from function_app.records.flatten import BlobContext, flatten_record
from function_app.records.reader import RecoveredRecord

from ._samples import blob_context

CTX = blob_context()
SOURCE = "AuditIngest"


@functools.cache
def derived_sql(body: str) -> str:
    """DuckDB SQL of a derived table's KQL *body* over a table ``AuditIngest`` of AuditRecord's columns."""
    install()  # what the query path adds to duckdb-kql (bag_keys, make_bag, ...): both engines run those
    sql = duckdb_kql.to_sql(body, schema={SOURCE: list(AUDIT_RECORD.column_names)})
    assert not sql.parameters, f"a derived body reads no clock and declares no parameter: {sql.parameters}"
    return str(sql)


def derived_rows_sql(table: str, body: str) -> str:
    """A SELECT of *table*'s rows that *body* derives from ``AuditIngest``, its columns in order."""
    columns = ", ".join(f'"{c}"' for c in TABLES_BY_NAME[table].column_names)
    return f"SELECT {columns} FROM ({derived_sql(body)})"


def stage_audit_rows(con: duckdb.DuckDBPyConnection, relation: str) -> None:
    """(Re)create TEMP ``AuditIngest`` from *relation* (AuditRecord's columns, dynamic ones as JSON
    text), typed as the lake's AuditRecord table is."""
    register_macros(con)
    columns = ", ".join(f'CAST("{c.name}" AS {duckdb_type(c.kind)}) AS "{c.name}"' for c in AUDIT_RECORD.columns)
    con.execute(f'CREATE OR REPLACE TEMP TABLE "{SOURCE}" AS SELECT {columns} FROM {relation}')


def audit_rows(records: Iterable[Any], ctx: BlobContext = CTX) -> list[dict[str, Any]]:
    return [flatten_record(r, ctx) for r in records]


def kql_rows(table: str, body: str, records: Sequence[Any], ctx: BlobContext = CTX) -> list[dict[str, Any]]:
    """*table*'s rows that *body* derives from *records* (flattened as the collector does), run by
    DuckDB through duckdb-kql; dynamic cells parsed back from their JSON text."""
    rows = audit_rows(records, ctx)
    con = duckdb.connect()
    try:
        con.register("_rows", to_arrow(AUDIT_RECORD, rows))
        stage_audit_rows(con, "_rows")
        cursor = con.execute(derived_rows_sql(table, body))
        names = [d[0] for d in cursor.description]
        out = [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
    finally:
        con.close()
    dynamic = {c.name for c in TABLES_BY_NAME[table].columns if c.kind is Kind.DYNAMIC}
    for row in out:
        for name in dynamic:
            if row[name] is not None:
                row[name] = orjson.loads(row[name])
    return out


def python_rows(builder: Callable[[Any, dict[str, Any]], list[dict[str, Any]]], records: Sequence[Any],
                ctx: BlobContext = CTX) -> list[dict[str, Any]]:
    """The Python builder's rows for *records* (a recovered record is read as the lenient parser made it)."""
    out: list[dict[str, Any]] = []
    for record in records:
        row = flatten_record(record, ctx)
        value = record.value if type(record) is RecoveredRecord else record
        if value is not None:
            out.extend(builder(value, row))
    return out


def comparable(table: str, rows: Iterable[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Rows as sorted tuples in the table's column order: datetimes naive UTC, dynamic values as
    their sorted-key JSON text, a null string as "" (ADX has no null string: a null ingested into a
    string column reads as "", and KQL's tostring of nothing is ""), so the two engines' rows
    compare exactly."""
    target = TABLES_BY_NAME[table]
    out = []
    for row in rows:
        cells = []
        for column in target.columns:
            value = row.get(column.name)
            if isinstance(value, datetime) and value.tzinfo is not None:
                value = value.replace(tzinfo=None) if value.utcoffset() is None else \
                    (value - value.utcoffset()).replace(tzinfo=None)  # type: ignore[operator]
            if column.kind is Kind.STRING and value is None:
                value = ""
            if column.kind is Kind.DYNAMIC and value is not None:
                value = orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode()
            cells.append(value)
        out.append(tuple(cells))
    return sorted(out, key=repr)
