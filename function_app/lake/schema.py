"""The one definition of every table; ADX KQL and DuckDB DDL are both rendered from it.

A new source field never adds a column: the raw record is kept whole in ``AuditData``
and ``SchemaObservation`` reports the field instead, so ingestion cannot break on drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    """Column kinds, named as KQL names them."""

    STRING = "string"
    INT = "int"
    LONG = "long"
    REAL = "real"
    BOOL = "bool"
    DATETIME = "datetime"
    DYNAMIC = "dynamic"


_DUCKDB_TYPES: dict[Kind, str] = {
    Kind.STRING: "VARCHAR",
    Kind.INT: "INTEGER",
    Kind.LONG: "BIGINT",
    Kind.REAL: "DOUBLE",
    Kind.BOOL: "BOOLEAN",
    # Naive TIMESTAMP holding UTC: duckdb-kql compares it with ago()/now() in UTC.
    Kind.DATETIME: "TIMESTAMP",
    Kind.DYNAMIC: "JSON",
}


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    kind: Kind
    doc: str = ""


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    doc: str = ""
    # Local-only tables hold collector state that ADX does not need (checkpoints live in
    # Azure Table Storage there).
    local_only: bool = False

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"table {self.name} has no column {name}")


def _c(name: str, kind: Kind, doc: str = "") -> Column:
    return Column(name, kind, doc)


S, N, L, R, B, T, D = Kind.STRING, Kind.INT, Kind.LONG, Kind.REAL, Kind.BOOL, Kind.DATETIME, Kind.DYNAMIC

AUDIT_RECORD = Table(
    "AuditRecord",
    (
        _c("TimeGenerated", T, "CreationTime of the record, UTC"),
        _c("Id", S, "record Id as delivered (a surrogate 'x-<sha1>' when the record has none)"),
        _c("TenantId", S, "tenant the blob was listed for"),
        _c("ContentType", S, "content type of the blob"),
        _c("ContentId", S, "contentId of the blob the record came in (the first one kept)"),
        _c("ContentCreated", T, "when the blob became available at Microsoft"),
        _c("RecordType", N, "RecordType as a number (ints and numeric strings accepted; -2147483648 when missing)"),
        _c("RecordTypeName", S, "AuditLogRecordType member name from the schema's enum"),
        _c("Operation", S, "Operation as delivered"),
        _c("Workload", S, "Workload as delivered"),
        _c("ResultStatus", S, "ResultStatus as delivered"),
        _c("UserId", S, "UserId as delivered"),
        _c("UserPrincipal", S, "lower-cased UPN; empty for placeholders (flagged in Quality)"),
        _c("UserKey", S, "UserKey as delivered"),
        _c("UserType", N, "UserType as a number"),
        _c("UserTypeName", S, "UserType member name from the schema's enum"),
        _c("ClientIP", S, "address only: no port, no brackets, IPv4-mapped IPv6 as IPv4"),
        _c("ClientPort", N, "port when the delivered value carried one"),
        _c("ClientIPRaw", S, "ClientIP (or ClientIPAddress / ActorIpAddress) as delivered"),
        _c("ClientIPKind", S, "public, private, loopback, link-local, unspecified, invalid or missing"),
        _c("ObjectId", S, "ObjectId as delivered"),
        _c("AppId", S, "AppId, ApplicationId or AppAccessContext.ClientAppId"),
        _c("SessionId", S, "SessionId or AppAccessContext.AADSessionId"),
        _c("Properties", D, "name/value arrays as maps, JSON-in-strings parsed"),
        _c("AuditData", D, "the record exactly as delivered"),
        _c("Quality", D, "list of flags describing the record's own defects"),
        _c("IngestedAt", T, "when the row was written"),
    ),
    key=("Id", "RecordType", "Operation"),
    doc="One row per audit record; duplicates re-delivered by the service are dropped on write",
)

CONTENT_LEDGER = Table(
    "ContentLedger",
    (
        _c("TenantId", S),
        _c("ContentType", S),
        _c("ContentId", S),
        _c("ContentUri", S),
        _c("ContentCreated", T),
        _c("ContentExpiration", T),
        _c("ListedAt", T),
        _c("FetchedAt", T),
        _c("IngestedAt", T),
        _c("Records", L),
        _c("Bytes", L),
        _c("Status", S, "listed, ingested, failed or expired"),
        _c("Attempts", N),
        _c("Error", S),
    ),
    key=("TenantId", "ContentType", "ContentId"),
    doc="One row per content blob: every blob ends ingested, failed (with the error) or expired",
)

COLLECTOR_RUN = Table(
    "CollectorRun",
    (
        _c("RunId", S),
        _c("StartedAt", T),
        _c("FinishedAt", T),
        _c("TenantId", S),
        _c("ContentType", S),
        _c("WindowStart", T),
        _c("WindowEnd", T),
        _c("Pages", N),
        _c("BlobsListed", N),
        _c("BlobsNew", N),
        _c("Throttled", N),
        _c("Errors", D),
    ),
    key=("RunId", "TenantId", "ContentType"),
    doc="One row per planning pass for a tenant and content type",
)

CHECKPOINT = Table(
    "Checkpoint",
    (
        _c("TenantId", S),
        _c("ContentType", S),
        _c("Position", T),
        _c("LastSweep", T),
        _c("UpdatedAt", T),
    ),
    key=("TenantId", "ContentType"),
    doc="Listing progress per tenant and content type (local lake only)",
    local_only=True,
)

TABLES: tuple[Table, ...] = (AUDIT_RECORD, CONTENT_LEDGER, COLLECTOR_RUN, CHECKPOINT)
TABLES_BY_NAME: dict[str, Table] = {t.name: t for t in TABLES}


def duckdb_ddl(table: Table) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for DuckDB, with the key as PRIMARY KEY."""
    cols = ",\n".join(f'    "{c.name}" {_DUCKDB_TYPES[c.kind]}' for c in table.columns)
    key = ", ".join(f'"{k}"' for k in table.key)
    return f'CREATE TABLE IF NOT EXISTS "{table.name}" (\n{cols},\n    PRIMARY KEY ({key})\n);'


def adx_create_table(table: Table) -> str:
    """``.create-merge table`` for ADX: creates, or adds missing columns, never drops."""
    cols = ", ".join(f"{c.name}:{c.kind.value}" for c in table.columns)
    doc = table.doc.replace('"', "'")
    return f'.create-merge table {table.name} ({cols}) with (docstring="{doc}", folder="AuditLake")'


def json_mapping_name(table: Table) -> str:
    """The name of *table*'s JSON ingestion mapping in ADX (referenced at ingestion)."""
    return f"{table.name}_json"


def adx_json_mapping(table: Table) -> str:
    """``.create-or-alter`` of the JSON mapping: each column from the same-named top-level field."""
    entries = ",".join(
        f'{{"column":"{c.name}","datatype":"{c.kind.value}","Properties":{{"Path":"$.{c.name}"}}}}'
        for c in table.columns
    )
    return f".create-or-alter table {table.name} ingestion json mapping \"{json_mapping_name(table)}\" '[{entries}]'"


def render_duckdb() -> str:
    return "\n\n".join(duckdb_ddl(t) for t in TABLES) + "\n"


def render_adx() -> str:
    parts = []
    for table in TABLES:
        if not table.local_only:
            parts += [adx_create_table(table), adx_json_mapping(table)]
    return "\n\n".join(parts) + "\n"
