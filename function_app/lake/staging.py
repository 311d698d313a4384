"""``AuditIngest``: the ADX staging table every blob's rows arrive in, fanned out by update policies.

The Azure path hands ADX one staging ingestion for the blobs it writes at once (``AdxSink.write_blob``)
instead of one per table: the ingest SDK spends ~8.6 ms of client CPU per ingestion, whatever its
size, so the per-table ingestions cost ~1,000 µs per record. ADX then builds the tables from the
staging rows with transactional update policies, one KQL function per target table, rendered here
from the one schema definition (``Table.columns``): a column added to a table is in its function.
The rows of several blobs simply follow one another in the staging ingestion; each row names its blob.

One staging row per audit record holds that record's ``AuditRecord`` columns (the raw record
whole in ``AuditData``) plus ``Derived``: the record's rows of the derived tables the collector
builds, matched by ``RecordId``, as ``{"DirectoryChange": [row, ...]}`` (a table without rows is
left out; most records have none, so ``Derived`` is absent). MailItemAccess and SignIn are not
sent: their update policies build them from the AuditRecord rows with the KQL bodies of
``function_app.lake.derived_tables`` (DirectoryChange's rules have no exact KQL form yet; see
there). Rows that
belong to no single record ride in "aside" rows (``Id`` empty, the blob's TenantId, ContentType
and ContentId set): the ``SchemaObservation`` rows (the ADX sink folds those of an ingestion's
blobs into one row per key first, and sends the rows that share every column but FieldPath and
FieldType as one element listing those pairs: ``SchemaObserver.grouped``), the ledger mirror's ``ContentLedger``
and ``CollectorRun`` rows (``function_app.azure.mirror``), and derived rows too large to go
inline. ``AuditRecord`` takes the rows with an ``Id``; each other table ``mv-expand``s its part of
``Derived`` and converts every column to its type.

Each ``Derived`` cell is kept under ``CELL_BUDGET`` bytes of JSON (ADX refuses a dynamic value
over 1 MB by default, and a large one is slow to expand): a record whose derived rows would
exceed it sends them in aside rows instead, and aside rows are cut into chunks of at most the
budget (a single row over it, which no builder makes, travels alone).

The staging table keeps nothing (soft delete 0, so the policies are transactional: a row the
fan-out fails on fails the whole ingestion, reported on the failed-ingestions queue under a
stream name listing its blobs; ``function_app.azure.ingest_failures`` deals with each). Rendered into
``tables.kql`` (the table and its mapping) and ``policies.kql`` (retention, batching, the
functions and the update policies), which are deployed after the target tables exist.

The fake ADX of the tests (``tests/adapters/fake_adx.py``) runs the same function bodies through
duckdb-kql over the staging rows, so the tests exercise the policy text itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from functools import cache
from typing import Any

import orjson

from function_app.core.model import utc
from function_app.lake.derived_tables import BODIES, ENGINE_DERIVED
from function_app.lake.kql_commands import create_function, transactional_update_policy
from function_app.lake.schema import (
    AUDIT_RECORD,
    COLLECTOR_RUN,
    CONTENT_LEDGER,
    DIRECTORY_CHANGE,
    SCHEMA_OBSERVATION,
    TABLES_BY_NAME,
    Column,
    Kind,
    Table,
)
from function_app.records.schema_observation import SchemaObserver, as_grouped

STAGING_TABLE = "AuditIngest"
DERIVED_COLUMN = "Derived"
FUNCTION_PREFIX = "AuditIngestExpand_"

PER_RECORD_TABLES: tuple[str, ...] = (DIRECTORY_CHANGE.name,)
"""Derived tables the collector builds, whose rows name their audit record (``RecordId``) and ride
inline with it."""
ASIDE_TABLES: tuple[str, ...] = (SCHEMA_OBSERVATION.name, CONTENT_LEDGER.name, COLLECTOR_RUN.name)
"""Tables whose rows belong to the blob (or to the collector), not to one record: always aside."""
TARGET_TABLES: tuple[str, ...] = (AUDIT_RECORD.name, *ENGINE_DERIVED, *PER_RECORD_TABLES, *ASIDE_TABLES)
"""Every table an update policy fills from the staging table, in the order the policies are rendered."""
STAGED_TABLES = frozenset((AUDIT_RECORD.name, *PER_RECORD_TABLES, *ASIDE_TABLES))
"""The tables whose rows the collector sends; the others are built by their policies (``ENGINE_DERIVED``)."""

CELL_BUDGET = 256 * 1024
"""Most bytes of JSON in one ``Derived`` cell (ADX's default limit for a dynamic value is 1 MB)."""

_CONVERT: dict[Kind, str] = {
    Kind.STRING: "tostring",
    Kind.INT: "toint",
    Kind.LONG: "tolong",
    Kind.REAL: "toreal",
    Kind.BOOL: "tobool",
    Kind.DATETIME: "todatetime",
}

_DUMPS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS


@cache
def staging_table() -> Table:
    """``AuditIngest``: AuditRecord's columns, then ``Derived``. ADX only, not in ``TABLES``."""
    return Table(
        STAGING_TABLE,
        (*AUDIT_RECORD.columns,
         Column(DERIVED_COLUMN, Kind.DYNAMIC, "rows of the other tables: {table: [row, ...]}", "(collector)")),
        key=(),
        doc="One row per audit record with its derived rows, plus aside rows (Id empty) of blob-level rows; "
            "fanned out by update policies into AuditRecord, MailItemAccess, DirectoryChange, SignIn, "
            "SchemaObservation, ContentLedger and CollectorRun; kept no longer than the fan-out",
    )


# ---------------------------------------------------------------------------------------------
# KQL


def expansion_function(table: str) -> str:
    return f"{FUNCTION_PREFIX}{table}"


def _convert(column: Column, source: str) -> str:
    if column.kind is Kind.DYNAMIC:
        return source
    return f"{_CONVERT[column.kind]}({source})"


def expansion_body(table: str) -> str:
    """The query of ``AuditIngestExpand_<table>()``: *table*'s rows in the staging table, projected
    onto exactly its columns, in order, each of its type (a table ADX derives: its rows built from
    the AuditRecord rows, ``derived_tables``).

    One line per step and no blank line: the ADX scripts are cut into commands at blank lines.
    """
    if table in BODIES:
        return BODIES[table]
    target = TABLES_BY_NAME[table]
    if table == AUDIT_RECORD.name:
        projection = ", ".join(target.column_names)
        return f"{STAGING_TABLE}\n| where isnotempty(Id)\n| project {projection}"
    if table not in STAGED_TABLES:
        raise ValueError(f"{table} is not filled from {STAGING_TABLE}")
    part = f"{DERIVED_COLUMN}.{table}"
    steps = [STAGING_TABLE, f"| where isnotnull({part})", f"| mv-expand r = {part}"]
    sources = {c.name: f"r.{c.name}" for c in target.columns}
    if table == SCHEMA_OBSERVATION.name:
        # Grouped rows (SchemaObserver.grouped): the fields of one shape share every other column.
        steps.append("| mv-expand f = r.Fields")
        sources.update(FieldPath="f[0]", FieldType="f[1]")
    columns = ",\n    ".join(f"{c.name} = {_convert(c, sources[c.name])}" for c in target.columns)
    steps.append(f"| project\n    {columns}")
    return "\n".join(steps)


def _function_command(table: str) -> str:
    doc = f"Rows of {table} in {STAGING_TABLE} (its update policy)"
    return create_function(expansion_function(table), expansion_body(table), doc)


def _update_policy(table: str) -> str:
    return transactional_update_policy(table, STAGING_TABLE, expansion_function(table))


def render_staging_tables() -> list[str]:
    """The staging table and its JSON mapping (the end of ``tables.kql``)."""
    from function_app.lake.schema import adx_create_table, adx_json_mapping

    table = staging_table()
    return [adx_create_table(table), adx_json_mapping(table)]


def render_staging_policies() -> list[str]:
    """Retention, batching, the fan-out functions and their update policies (the end of
    ``policies.kql``, deployed after ``tables.kql`` has created every target table).

    The staging table keeps nothing (soft delete 0), which requires transactional policies: a
    staging ingestion is written to every target or to none, and a failure fails the ingestion."""
    from function_app.lake.schema import adx_batching

    table = staging_table()
    parts = [f".alter-merge table {STAGING_TABLE} policy retention softdelete = 0d recoverability = disabled",
             adx_batching(table)]
    parts += [_function_command(t) for t in TARGET_TABLES]
    parts += [_update_policy(t) for t in TARGET_TABLES]
    return parts


# ---------------------------------------------------------------------------------------------
# Rows


def encode_row(table: Table, row: Mapping[str, Any]) -> bytes:
    from function_app.lake.adx import encode_row as encode

    return encode(table, row)


def _encoded_rows(table: Table, rows: Iterable[Mapping[str, Any]]) -> Iterator[bytes]:
    for row in rows:
        yield encode_row(table, row)


def _encoded_observations(rows: Sequence[Mapping[str, Any]]) -> Iterator[bytes]:
    """``SchemaObservation`` rows in the grouped form its update policy expands (see
    ``SchemaObserver.grouped``): an observer's own grouping, or one element per row given."""
    grouped = rows.grouped() if isinstance(rows, SchemaObserver) else map(as_grouped, rows)
    for element in grouped:
        for name in ("FirstSeen", "LastSeen"):
            value = element[name]
            if isinstance(value, datetime):
                element[name] = utc(value)
        yield orjson.dumps(element, option=_DUMPS)


class _Cursor:
    """A derived table's rows, taken in record order: ``take(id)`` gives the rows at the front that
    name record *id*; rows left behind (out of order) are kept for ``rest``."""

    __slots__ = ("_at", "_rows", "_skipped")

    def __init__(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self._rows = rows
        self._at = 0
        self._skipped: list[Mapping[str, Any]] = []

    def take(self, record_id: Any, passed: set[Any]) -> list[Mapping[str, Any]]:
        """The rows at the front naming *record_id*; rows at the front naming a record already
        *passed* (its Id repeated in the blob) are set aside first."""
        rows, at = self._rows, self._at
        while at < len(rows) and rows[at].get("RecordId") in passed:
            self._skipped.append(rows[at])
            at += 1
        self._at = at
        if at >= len(rows) or rows[at].get("RecordId") != record_id:
            return []
        end = at
        while end < len(rows) and rows[end].get("RecordId") == record_id:
            end += 1
        self._at = end
        return list(rows[at:end])

    def rest(self) -> list[Mapping[str, Any]]:
        return [*self._skipped, *self._rows[self._at:]]


def _chunks(encoded: Iterable[bytes], budget: int) -> Iterator[list[orjson.Fragment]]:
    chunk: list[orjson.Fragment] = []
    size = 0
    for data in encoded:
        if chunk and size + len(data) + 1 > budget:
            yield chunk
            chunk, size = [], 0
        chunk.append(orjson.Fragment(data))
        size += len(data) + 1
    if chunk:
        yield chunk


def _with_derived(audit: Iterable[Mapping[str, Any]], pending: Mapping[str, _Cursor],
                  aside: dict[str, list[bytes]], budget: int) -> Iterator[dict[str, Any]]:
    """The staging rows of *audit*, each with its own rows of the *pending* tables inline (over
    *budget*: put *aside* instead)."""
    passed: set[Any] = set()
    for row in audit:
        own: dict[str, list[bytes]] = {}
        record_id = row.get("Id")
        for name, cursor in pending.items():
            taken = cursor.take(record_id, passed)
            if taken:
                table = TABLES_BY_NAME[name]
                own[name] = [encode_row(table, r) for r in taken]
        if own and sum(len(d) + 1 for rows in own.values() for d in rows) > budget:
            for name, rows in own.items():
                aside.setdefault(name, []).extend(rows)
            own = {}
        passed.add(record_id)
        out = dict(row)
        out[DERIVED_COLUMN] = {name: [orjson.Fragment(d) for d in rows] for name, rows in own.items()} or None
        yield out


def staging_rows(
    tenant_id: str,
    content_type: str,
    content_id: str,
    tables: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    budget: int = CELL_BUDGET,
) -> Iterator[dict[str, Any]]:
    """The staging rows of one blob's *tables* (names in ``STAGED_TABLES``): one per AuditRecord
    row, in order, with its derived rows inline, then the aside rows (see the module docstring).

    The rows of the other tables come back as ``orjson.Fragment``s, already JSON (columns exactly
    the table's, datetimes ISO 8601 UTC with ``Z``): write the staging rows with orjson.
    Every row given comes out exactly once after the fan-out."""
    unknown = set(tables) - STAGED_TABLES
    if unknown:
        raise ValueError(f"not staged in {STAGING_TABLE}: {', '.join(sorted(unknown))}"
                         + (" (its update policy builds it from the AuditRecord rows)"
                            if unknown & set(BODIES) else ""))
    audit = tables.get(AUDIT_RECORD.name, ())
    # The builders emit a record's derived rows in record order (records.tables), so each table's
    # rows are taken alongside the records, one record at a time, and only a record's own rows are
    # encoded at once: encoding every derived row of a 200 MB body first held ~1.7 times the body
    # more (make bench). A row that does not follow the order (its record repeated, or absent) is
    # kept and goes aside at the end, so every row still comes out exactly once.
    pending = {name: _Cursor(tables[name]) for name in PER_RECORD_TABLES if tables.get(name)}
    aside: dict[str, list[bytes]] = {}
    if pending:
        yield from _with_derived(audit, pending, aside, budget)
    else:
        # Most blobs have no derived rows to carry: nothing to match (1.1 against 2.0 µs a record).
        for row in audit:
            out = dict(row)
            out[DERIVED_COLUMN] = None
            yield out
    for name, cursor in pending.items():
        rest = cursor.rest()
        if rest:
            table = TABLES_BY_NAME[name]
            aside.setdefault(name, []).extend(encode_row(table, r) for r in rest)
    blob = {"TenantId": tenant_id, "ContentType": content_type, "ContentId": content_id, "Id": ""}
    for name in (*PER_RECORD_TABLES, *ASIDE_TABLES):
        encoded: Iterable[bytes]
        if name in aside:
            encoded = aside[name]
        elif name == SCHEMA_OBSERVATION.name and tables.get(name):
            encoded = _encoded_observations(tables[name])
        elif name in ASIDE_TABLES and tables.get(name):
            encoded = _encoded_rows(TABLES_BY_NAME[name], tables[name])
        else:
            continue
        for chunk in _chunks(encoded, budget):
            yield {**blob, DERIVED_COLUMN: {name: chunk}}
