"""The one definition of every table; ADX KQL and DuckDB DDL are both rendered from it.

A new source field never adds a column: the raw record is kept whole in ``AuditData``
and ``SchemaObservation`` reports the field instead, so ingestion cannot break on drift.

Everything ADX needs is rendered from here into ``infra/kql/`` (see ``ADX_SCRIPTS``), and
deployed in the order tables, policies, views:

* ``tables.kql``: ``.create-merge table`` and the JSON ingestion mapping of every ADX table, and
  of the staging table ``AuditIngest`` (``lake.staging``) that the collector's rows arrive in;
* ``policies.kql``: retention (``Table.retention_days``) and ingestion batching per table, and the
  update policies that fan ``AuditIngest`` out into the tables (one rendered function per table);
* ``views.kql``: the materialized views. A table with a ``dedup_lookback_days`` gets
  ``<Table>Dedup`` (``take_any(*)`` by its key); a table whose columns carry a ``merge`` rule
  gets ``<Table>Summary`` (the rule's aggregate by its key). The local lake applies the same
  rules on write: ``INSERT OR IGNORE`` on the key, or an upsert with the merge rules.

A third rule, ``Table.latest_by``, is for rows that restate a value (a recount): the row with the
latest value of that column replaces the stored one. The local lake upserts so; ADX keeps every
row, as it keeps every ContentLedger row, and its readers take ``arg_max(<latest_by>, *)`` by the key.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from function_app.lake.entra_schema import build_entra_tables, render_adx_entra


class Kind(StrEnum):
    """Column kinds, named as KQL names them."""

    STRING = "string"
    INT = "int"
    LONG = "long"
    REAL = "real"
    BOOL = "bool"
    DATETIME = "datetime"
    DYNAMIC = "dynamic"


class Merge(StrEnum):
    """How an aggregate table combines a column when a row with the same key arrives again."""

    MIN = "min"
    MAX = "max"
    SUM = "sum"


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

AUDIT_RETENTION_DAYS = 3650
"""Default retention of audit data in ADX: ten years, the reason the lake exists."""
OPERATIONAL_RETENTION_DAYS = 365
"""Retention of the collector's own bookkeeping (ledger, runs): a year of operations history."""


@dataclass(frozen=True, slots=True)
class IngestionBatching:
    """ADX ingestion batching policy: a batch is sealed at whichever limit comes first.

    The service default is 5 minutes; audit data is wanted within a minute of arriving, and
    the collector hands over one small ingestion per handful of blobs (the blobs a worker writes at
    once share one, into the staging table, see ``lake.adx`` and ``lake.staging``), so time is the
    limit that matters. 10 seconds is the minimum the
    service accepts.
    """

    max_seconds: int = 30
    max_items: int = 500
    max_raw_mb: int = 1024

    def policy_json(self) -> str:
        minutes, seconds = divmod(self.max_seconds, 60)
        hours, minutes = divmod(minutes, 60)
        return json.dumps(
            {
                "MaximumBatchingTimeSpan": f"{hours:02d}:{minutes:02d}:{seconds:02d}",
                "MaximumNumberOfItems": self.max_items,
                "MaximumRawDataSizeMB": self.max_raw_mb,
            },
            separators=(",", ":"),
        )


FRESH_BATCHING = IngestionBatching()


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    kind: Kind
    doc: str = ""
    source: str = ""
    """Where the value comes from in the delivered record (for the data dictionary)."""
    merge: Merge | None = None
    """Set on the non-key columns of an aggregate table (see ``Table.is_aggregate``)."""
    backfill: str | None = None
    """DuckDB expression over the row's other columns that gives the rows of a lake made before
    this column their value when the lake gains it (NULL without one)."""


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    doc: str = ""
    # Local-only tables hold collector state that ADX does not need (checkpoints live in
    # Azure Table Storage there).
    local_only: bool = False
    retention_days: int = AUDIT_RETENTION_DAYS
    batching: IngestionBatching = field(default=FRESH_BATCHING)
    dedup_lookback_days: int | None = None
    """When set, ADX gets a ``take_any(*)`` view by the key that looks back this many days."""
    from_records: bool = False
    """Built from audit records by ``function_app.records.tables`` (``auditlake flatten`` can print it)."""
    latest_by: str | None = None
    """When set, a row replaces the stored row of its key unless that one has a later value in this
    column (a recount supersedes the count before it). Only the local lake folds on write; ADX
    appends, so queries there take ``arg_max(<latest_by>, *)`` by the key (no materialized view:
    such a table gains a few hundred rows a day, so folding it when read costs nothing)."""

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"table {self.name} has no column {name}")

    @property
    def is_aggregate(self) -> bool:
        """Rows with the same key are merged (min/max/sum) instead of the first one kept."""
        return any(c.merge is not None for c in self.columns)

    @property
    def view_name(self) -> str | None:
        """The ADX materialized view over this table, if it has one."""
        if self.local_only:
            return None
        if self.is_aggregate:
            return f"{self.name}Summary"
        if self.dedup_lookback_days is not None:
            return f"{self.name}Dedup"
        return None


def _c(name: str, kind: Kind, doc: str = "", source: str = "", merge: Merge | None = None) -> Column:
    return Column(name, kind, doc, source, merge)


S, N, L, R, B, T, D = Kind.STRING, Kind.INT, Kind.LONG, Kind.REAL, Kind.BOOL, Kind.DATETIME, Kind.DYNAMIC

# The 7-day lookback matches how long the API keeps content: a record the service
# re-delivers arrives within that window of its first copy.
DEDUP_LOOKBACK_DAYS = 7

AUDIT_RECORD = Table(
    "AuditRecord",
    (
        _c("TimeGenerated", T, "CreationTime of the record, UTC", "CreationTime"),
        _c("Id", S, "record Id as delivered (a surrogate 'x-<sha1>' when the record has none)", "Id"),
        _c("TenantId", S, "tenant the blob was listed for", "(collector) tenant of the subscription"),
        _c("ContentType", S, "content type of the blob", "(collector) contentType"),
        _c("ContentId", S, "contentId of the blob the record came in (the first one kept)", "(collector) contentId"),
        _c("ContentCreated", T, "when the blob became available at Microsoft", "(collector) contentCreated"),
        _c("RecordType", N, "RecordType as a number (ints and numeric strings accepted; -2147483648 when missing)",
           "RecordType"),
        _c("RecordTypeName", S, "AuditLogRecordType member name from the schema's enum", "RecordType"),
        _c("Operation", S, "Operation as delivered", "Operation"),
        _c("Workload", S, "Workload as delivered", "Workload"),
        _c("ResultStatus", S, "ResultStatus as delivered", "ResultStatus"),
        _c("UserId", S, "UserId as delivered", "UserId"),
        _c("UserPrincipal", S, "lower-cased UPN; empty for placeholders (flagged in Quality)", "UserId"),
        _c("UserKey", S, "UserKey as delivered", "UserKey"),
        _c("UserType", N, "UserType as a number", "UserType"),
        _c("UserTypeName", S, "UserType member name from the schema's enum", "UserType"),
        _c("ClientIP", S, "address only: no port, no brackets, IPv4-mapped IPv6 as IPv4",
           "ClientIP, else ClientIPAddress, else ActorIpAddress"),
        _c("ClientPort", N, "port when the delivered value carried one", "ClientIP"),
        _c("ClientIPRaw", S, "ClientIP (or ClientIPAddress / ActorIpAddress) as delivered",
           "ClientIP, else ClientIPAddress, else ActorIpAddress"),
        _c("ClientIPKind", S, "public, private, loopback, link-local, unspecified, invalid or missing", "ClientIP"),
        _c("ObjectId", S, "ObjectId as delivered", "ObjectId"),
        _c("AppId", S, "AppId, ApplicationId or AppAccessContext.ClientAppId",
           "AppId, ApplicationId, AppAccessContext.ClientAppId"),
        _c("SessionId", S, "SessionId or AppAccessContext.AADSessionId", "SessionId, AppAccessContext.AADSessionId"),
        _c("Properties", D, "name/value arrays as maps, JSON-in-strings parsed",
           "Parameters, ExtendedProperties, ModifiedProperties, OperationProperties, DeviceProperties"),
        _c("AuditData", D, "the record exactly as delivered", "(the whole record)"),
        _c("Quality", D, "list of flags describing the record's own defects", "(computed)"),
        _c("IngestedAt", T, "when the row was written", "(collector) time the blob was fetched"),
    ),
    key=("Id", "RecordType", "Operation"),
    doc="One row per audit record; duplicates re-delivered by the service are dropped on write",
    dedup_lookback_days=DEDUP_LOOKBACK_DAYS,
    from_records=True,
)

MAIL_ITEM_ACCESS = Table(
    "MailItemAccess",
    (
        _c("TimeGenerated", T, "CreationTime of the MailItemsAccessed record, UTC", "CreationTime"),
        _c("RecordId", S, "Id of the audit record (AuditRecord.Id)", "Id"),
        _c("TenantId", S, "tenant the blob was listed for", "(collector)"),
        _c("UserPrincipal", S, "who accessed the mail: lower-cased UPN, as AuditRecord.UserPrincipal", "UserId"),
        _c("MailboxOwnerUPN", S, "mailbox owner, lower-cased; empty for placeholders", "MailboxOwnerUPN"),
        _c("ClientIP", S, "client address, normalised as AuditRecord.ClientIP", "ClientIP, ClientIPAddress"),
        _c("ClientIPKind", S, "classification of ClientIP", "ClientIP, ClientIPAddress"),
        _c("SessionId", S, "Entra session (joins SignIn.SessionId)", "SessionId, AppAccessContext.AADSessionId"),
        _c("AppId", S, "application that accessed the mailbox", "AppId, AppAccessContext.ClientAppId"),
        _c("ClientInfoString", S, "client description as delivered", "ClientInfoString"),
        _c("LogonType", N, "0 owner, 1 admin, 2 delegated, ... (Exchange LogonType enum)", "LogonType"),
        _c("MailAccessType", S, "Bind (items read one by one) or Sync (a folder synchronised)",
           "OperationProperties[MailAccessType]"),
        _c("IsThrottled", B, "true when the service throttled MailItemsAccessed auditing for the mailbox",
           "OperationProperties[IsThrottled]"),
        _c("FolderPath", S, "folder of the message; '' on a row for a record that lists no folder",
           "Folders[].Path, Messages[].Path"),
        _c("ItemKey", S, "InternetMessageId, else ImmutableId, else Id of the item; '' on a folder or record row",
           "Folders[].FolderItems[]"),
        _c("InternetMessageId", S, "Internet Message-ID (joins Defender EmailEvents)",
           "Folders[].FolderItems[].InternetMessageId"),
        _c("ImmutableId", S, "Exchange immutable item id", "Folders[].FolderItems[].ImmutableId"),
        _c("ItemId", S, "Exchange store item id", "Folders[].FolderItems[].Id, Messages[].MessageItems[].Id"),
        _c("SizeInBytes", L, "message size (floats such as 1352491.00 read as integers)",
           "Folders[].FolderItems[].SizeInBytes"),
    ),
    key=("RecordId", "FolderPath", "ItemKey"),
    doc="One row per message of a MailItemsAccessed record (a Sync folder or an empty record gets one row)",
    dedup_lookback_days=DEDUP_LOOKBACK_DAYS,
    from_records=True,
)

DIRECTORY_CHANGE = Table(
    "DirectoryChange",
    (
        _c("TimeGenerated", T, "CreationTime of the Entra ID record, UTC", "CreationTime"),
        _c("RecordId", S, "Id of the audit record (AuditRecord.Id)", "Id"),
        _c("TenantId", S, "tenant the blob was listed for", "(collector)"),
        _c("Operation", S, "the directory operation, e.g. 'Update user.'", "Operation"),
        _c("Actor", S, "who made the change: lower-cased UPN, else the principal of UserId, else a display name",
           "Actor[] (Type 5 UPN, Type 1 name), UserId"),
        _c("ActorType", S, "User, ServicePrincipal, Application, ... as the Actor[] entries name it", "Actor[]"),
        _c("ActorId", S, "object id of the actor", "Actor[] (<Type>_<id>, Type 0)"),
        _c("TargetId", S, "object id of the changed object", "Target[] (<Type>_<id>, Type 0)"),
        _c("TargetName", S, "UPN (lower-cased) or display name of the changed object, else ObjectId",
           "Target[] (Type 5 UPN, Type 1 name), ObjectId"),
        _c("TargetType", S, "User, ServicePrincipal, Application, Group, ...", "Target[]"),
        _c("Property", S, "the changed property", "ModifiedProperties[].Name"),
        _c("OldValue", D, "value before, JSON-in-strings parsed; a cut-off value stays a string",
           "ModifiedProperties[].OldValue"),
        _c("NewValue", D, "value after, parsed the same way", "ModifiedProperties[].NewValue"),
        _c("OldItems", D, "when the values are lists: the items before, normalised, sorted, distinct "
           "(license SKUs by SkuName, plans by ServicePlanId)", "ModifiedProperties[].OldValue"),
        _c("NewItems", D, "when the values are lists: the items after, normalised the same way",
           "ModifiedProperties[].NewValue"),
        _c("AddedValues", D, "NewItems not in OldItems (e.g. the SKUs assigned)", "(computed)"),
        _c("RemovedValues", D, "OldItems not in NewItems (e.g. the SKUs removed)", "(computed)"),
    ),
    key=("RecordId", "Operation", "Property"),
    doc="One row per ModifiedProperties entry of an Entra ID directory record (RecordType 8)",
    dedup_lookback_days=DEDUP_LOOKBACK_DAYS,
    from_records=True,
)

SIGN_IN = Table(
    "SignIn",
    (
        _c("TimeGenerated", T, "CreationTime of the logon record, UTC", "CreationTime"),
        _c("RecordId", S, "Id of the audit record (AuditRecord.Id)", "Id"),
        _c("TenantId", S, "tenant the blob was listed for", "(collector)"),
        _c("Operation", S, "UserLoggedIn, UserLoginFailed, ...", "Operation"),
        _c("UserPrincipal", S, "lower-cased UPN, as AuditRecord.UserPrincipal", "UserId"),
        _c("ClientIP", S, "client address, normalised as AuditRecord.ClientIP", "ClientIP, ActorIpAddress"),
        _c("ClientIPKind", S, "classification of ClientIP", "ClientIP, ActorIpAddress"),
        _c("ApplicationId", S, "application signed in to", "ApplicationId, else AppId"),
        _c("ResultStatus", S, "as delivered; for STS logons 'Succeeded' only means the request was served",
           "ResultStatus"),
        _c("ResultStatusDetail", S, "Success, Redirect, UserError, ...", "ExtendedProperties[ResultStatusDetail]"),
        _c("ErrorCode", S, "AADSTS error code ('0' is success); LoginStatus for account logons (RecordType 9)",
           "ErrorCode, else LoginStatus, else ErrorNumber"),
        _c("LogonError", S, "e.g. InvalidUserNameOrPassword", "LogonError, else ExtendedProperties[LoginError]"),
        _c("UserAgent", S, "client user agent", "ExtendedProperties[UserAgent]"),
        _c("RequestType", S, "e.g. OAuth2:Authorize, Login:login", "ExtendedProperties[RequestType]"),
        _c("AuthMethod", S, "UserAuthenticationMethod as delivered", "ExtendedProperties[UserAuthenticationMethod]"),
        _c("DeviceTrustType", S, "device trust type as delivered",
           "DeviceProperties[TrustType|DeviceTrustType], ExtendedProperties[DeviceTrustType]"),
        _c("DeviceOS", S, "operating system of the device", "DeviceProperties[OS]"),
        _c("BrowserType", S, "browser of the device", "DeviceProperties[BrowserType]"),
        _c("SessionId", S, "Entra session id (joins MailItemAccess.SessionId)",
           "DeviceProperties[SessionId], else SessionId"),
    ),
    key=("RecordId", "Operation"),
    doc="One row per Entra ID logon record (RecordType 15 STS logons and 9 account logons)",
    dedup_lookback_days=DEDUP_LOOKBACK_DAYS,
    from_records=True,
)

CONTENT_LEDGER = Table(
    "ContentLedger",
    (
        _c("TenantId", S, "tenant of the subscription", "(collector)"),
        _c("ContentType", S, "content type", "contentType"),
        _c("ContentId", S, "blob id", "contentId"),
        _c("ContentUri", S, "where the blob was fetched from", "contentUri"),
        _c("ContentCreated", T, "when the blob became available at Microsoft", "contentCreated"),
        _c("ContentExpiration", T, "when Microsoft stops serving the blob", "contentExpiration"),
        _c("ListedAt", T, "when the collector first listed the blob", "(collector)"),
        _c("FetchedAt", T, "when the blob was last fetched", "(collector)"),
        _c("IngestedAt", T, "when its rows were written", "(collector)"),
        _c("Records", L, "records in the blob", "(collector)"),
        _c("Bytes", L, "size of the blob body", "(collector)"),
        _c("Status", S, "listed, ingested, failed or expired", "(collector)"),
        _c("Attempts", N, "fetch attempts", "(collector)"),
        _c("Error", S, "why the latest attempt failed, or why the blob expired", "(collector)"),
        # Last: a lake made before it gains it at the end (see duckdb_add_missing).
        Column("FirstError", S, "what the blob first failed or expired with; kept through replays", "(collector)",
               backfill='CASE WHEN "Status" IN (\'failed\', \'expired\') THEN "Error" END'),
    ),
    key=("TenantId", "ContentType", "ContentId"),
    doc="One row per content blob: every blob ends ingested, failed (with the error) or expired",
    retention_days=OPERATIONAL_RETENTION_DAYS,
)

COLLECTOR_RUN = Table(
    "CollectorRun",
    (
        _c("RunId", S, "id of the planning pass", "(collector)"),
        _c("StartedAt", T, "start of the pass", "(collector)"),
        _c("FinishedAt", T, "end of the pass", "(collector)"),
        _c("TenantId", S, "tenant", "(collector)"),
        _c("ContentType", S, "content type", "(collector)"),
        _c("WindowStart", T, "first listed window start", "(collector)"),
        _c("WindowEnd", T, "last listed window end", "(collector)"),
        _c("Pages", N, "list pages read (NextPageUri followed)", "(collector)"),
        _c("BlobsListed", N, "blobs the listing returned", "(collector)"),
        _c("BlobsNew", N, "blobs not yet in the ledger", "(collector)"),
        _c("Throttled", N, "throttled responses (AF429 / 429)", "(collector)"),
        _c("Errors", D, "listing errors", "(collector)"),
    ),
    key=("RunId", "TenantId", "ContentType"),
    doc="One row per planning pass for a tenant and content type",
    retention_days=OPERATIONAL_RETENTION_DAYS,
)

SCHEMA_OBSERVATION = Table(
    "SchemaObservation",
    (
        _c("Workload", S, "Workload as delivered ('' when missing)", "Workload"),
        _c("RecordType", N, "RecordType as in AuditRecord", "RecordType"),
        _c("Operation", S, "Operation as delivered", "Operation"),
        _c("FieldPath", S, "path of the field: object keys joined by '.', array elements as '[]', name/value "
           "array entries by name as 'ExtendedProperties[UserAgent]'", "(every field of the record)"),
        _c("FieldType", S, "JSON type seen at the path: string, int, real, bool, null, object or array",
           "(every field of the record)"),
        _c("FirstSeen", T, "earliest CreationTime of a record with the field (ingestion time if none)",
           "CreationTime", merge=Merge.MIN),
        _c("LastSeen", T, "latest CreationTime of a record with the field", "CreationTime", merge=Merge.MAX),
        _c("Records", L, "records seen with the field of that type (in ADX a re-ingested blob counts again)",
           "(count)", merge=Merge.SUM),
    ),
    key=("Workload", "RecordType", "Operation", "FieldPath", "FieldType"),
    doc="Every (Workload, RecordType, Operation, field path, type) seen, with first and last seen",
    from_records=True,
)

SEARCH_COUNT = Table(
    "SearchCount",
    (
        _c("TenantId", S, "tenant searched", "(collector)"),
        _c("Day", T, "the UTC day counted (midnight)", "(collector) search slice"),
        _c("Workload", S, "Workload as in AuditRecord.Workload", "(collector) search slice"),
        _c("RecordType", N, "RecordType as a number, as in AuditRecord.RecordType", "auditLogRecordType"),
        _c("SearchRecords", L, "records Purview's audit search returned for the day, workload and record type",
           "(count)"),
        _c("Consistent", B, "false when two pagings of the same search disagreed (SearchRecords is then the larger)",
           "(collector)"),
        _c("CountedAt", T, "when the search was counted; the latest count of a key is the one that holds",
           "(collector)"),
    ),
    key=("TenantId", "Day", "Workload", "RecordType"),
    doc="Records Purview's audit search holds per tenant, day, workload and record type: what the feed is "
        "reconciled against (the Completeness function)",
    latest_by="CountedAt",
)

CHECKPOINT = Table(
    "Checkpoint",
    (
        _c("TenantId", S, "tenant", "(collector)"),
        _c("ContentType", S, "content type", "(collector)"),
        _c("Position", T, "end of the last window whose blobs were all enqueued", "(collector)"),
        _c("LastSweep", T, "when the daily re-listing of the last 24 h last ran", "(collector)"),
        _c("UpdatedAt", T, "when the checkpoint last moved", "(collector)"),
    ),
    key=("TenantId", "ContentType"),
    doc="Listing progress per tenant and content type (local lake only)",
    local_only=True,
)

# SigninLogs, AADNonInteractiveUserSignInLogs, AADServicePrincipalSignInLogs,
# AADManagedIdentitySignInLogs and AuditLogs, as Sentinel names and types them (entra_schema).
ENTRA_TABLES: tuple[Table, ...] = build_entra_tables()

TABLES: tuple[Table, ...] = (
    AUDIT_RECORD,
    MAIL_ITEM_ACCESS,
    DIRECTORY_CHANGE,
    SIGN_IN,
    CONTENT_LEDGER,
    COLLECTOR_RUN,
    SCHEMA_OBSERVATION,
    SEARCH_COUNT,
    CHECKPOINT,
    *ENTRA_TABLES,
)
TABLES_BY_NAME: dict[str, Table] = {t.name: t for t in TABLES}
RECORD_TABLES: tuple[str, ...] = tuple(t.name for t in TABLES if t.from_records)
"""The tables built from audit records, in write order."""


# ---------------------------------------------------------------------------------------------
# DuckDB


def _q(name: str) -> str:
    return f'"{name}"'


def duckdb_type(kind: Kind) -> str:
    return _DUCKDB_TYPES[kind]


def duckdb_ddl(table: Table, *, keyed: bool = True) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for DuckDB, with the key as PRIMARY KEY unless not *keyed*
    (a table whose writer guarantees the key some other way)."""
    cols = ",\n".join(f"    {_q(c.name)} {_DUCKDB_TYPES[c.kind]}" for c in table.columns)
    if not keyed:
        return f"CREATE TABLE IF NOT EXISTS {_q(table.name)} (\n{cols}\n);"
    key = ", ".join(_q(k) for k in table.key)
    return f"CREATE TABLE IF NOT EXISTS {_q(table.name)} (\n{cols},\n    PRIMARY KEY ({key})\n);"


def duckdb_add_missing(table: Table, existing: Sequence[str]) -> list[str]:
    """The statements that bring a lake's *table*, made with the columns *existing*, up to the
    schema: each column added since, then its backfill.

    Rows are inserted by position (``SELECT *``) and DuckDB adds a column at the end, so only
    columns appended to the schema can be added; any other difference raises ValueError rather
    than let values land in the wrong columns.
    """
    names = table.column_names
    if tuple(existing) != names[: len(existing)]:
        raise ValueError(f"table {table.name} has columns {', '.join(existing)}, which are not the "
                         f"first columns of its schema ({', '.join(names)})")
    statements: list[str] = []
    for column in table.columns[len(existing):]:
        statements.append(f"ALTER TABLE {_q(table.name)} ADD COLUMN {_q(column.name)} {_DUCKDB_TYPES[column.kind]}")
        if column.backfill:
            statements.append(f"UPDATE {_q(table.name)} SET {_q(column.name)} = {column.backfill}")
    return statements


_SQL_AGGREGATE = {Merge.MIN: "min", Merge.MAX: "max", Merge.SUM: "sum"}


def duckdb_insert(table: Table, source: str) -> str:
    """The statement writing the rows of relation *source* into *table* on the local lake.

    A plain table keeps the first row of a key (``INSERT OR IGNORE``). An aggregate table
    folds the batch by key with each column's merge rule, then merges it into the stored
    row: min and max keep the extreme (NULLs ignored), sum adds. A ``latest_by`` table keeps
    the batch's latest row of each key, which replaces the stored row unless that one is later
    (a tie goes to the row written last, as a recount at the same instant should).
    """
    if table.latest_by is not None:
        return _duckdb_replace_latest(table, source)
    if not table.is_aggregate:
        return f"INSERT OR IGNORE INTO {_q(table.name)} SELECT * FROM {source}"
    key = ", ".join(_q(k) for k in table.key)
    select = []
    updates = []
    for c in table.columns:
        col = _q(c.name)
        if c.name in table.key:
            select.append(col)
        elif c.merge is None:
            select.append(f"any_value({col})")
        else:
            select.append(f"{_SQL_AGGREGATE[c.merge]}({col})")
            stored, new = f"{_q(table.name)}.{col}", f"excluded.{col}"
            if c.merge is Merge.SUM:
                updates.append(f"{col} = coalesce({stored}, 0) + coalesce({new}, 0)")
            else:
                fn = "least" if c.merge is Merge.MIN else "greatest"
                updates.append(f"{col} = coalesce({fn}({stored}, {new}), {stored}, {new})")
    return (
        f"INSERT INTO {_q(table.name)} SELECT {', '.join(select)} FROM {source} GROUP BY {key} "
        f"ON CONFLICT ({key}) DO UPDATE SET {', '.join(updates)}"
    )


def duckdb_insert_distinct(table: Table, source: str, *, keyed: bool) -> str:
    """The statement writing the rows of *source* (a relation, or joined relations whose ``*`` is
    the table's columns) into *table*, one row per key of the table: ``OR IGNORE`` when the table
    is *keyed* here, else the writer guarantees the stored rows do not hold the keys again."""
    key = ", ".join(_q(k) for k in table.key)
    ignore = "OR IGNORE " if keyed else ""
    return f"INSERT {ignore}INTO {_q(table.name)} SELECT DISTINCT ON ({key}) * FROM {source}"


def _duckdb_replace_latest(table: Table, source: str) -> str:
    assert table.latest_by is not None
    by = _q(table.column(table.latest_by).name)
    key = ", ".join(_q(k) for k in table.key)
    updates = ", ".join(f"{_q(c)} = excluded.{_q(c)}" for c in table.column_names if c not in table.key)
    stored = f"{_q(table.name)}.{by}"
    # ON CONFLICT cannot update one row twice in a statement, so the batch is folded to one row
    # per key first; a row without a time never displaces one with a time.
    return (
        f"INSERT INTO {_q(table.name)} SELECT * FROM {source} "
        f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY {by} DESC NULLS LAST) = 1 "
        f"ON CONFLICT ({key}) DO UPDATE SET {updates} "
        f"WHERE {stored} IS NULL OR excluded.{by} >= {stored}"
    )


def render_duckdb() -> str:
    return "\n\n".join(duckdb_ddl(t) for t in TABLES) + "\n"


# ---------------------------------------------------------------------------------------------
# ADX


def adx_tables() -> tuple[Table, ...]:
    return tuple(t for t in TABLES if not t.local_only)


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


def adx_retention(table: Table) -> str:
    """``.alter-merge table ... policy retention`` with the table's soft-delete period."""
    return f".alter-merge table {table.name} policy retention softdelete = {table.retention_days}d"


def adx_batching(table: Table) -> str:
    """``.alter table ... policy ingestionbatching`` with the table's batching limits."""
    return f".alter table {table.name} policy ingestionbatching '{table.batching.policy_json()}'"


def adx_view(table: Table) -> list[str]:
    """The commands creating *table*'s materialized view and setting its retention ([] if none).

    Dedup views keep one row per key (``take_any(*)``) among rows ingested within the lookback;
    ``autoUpdateSchema`` lets them follow columns that ``.create-merge`` adds later. Summary
    views fold an aggregate table with its merge rules. A view keeps its source's retention.
    """
    view = table.view_name
    if view is None:
        return []
    key = ", ".join(table.key)
    props = []
    if table.is_aggregate:
        aggs = ", ".join(
            f"{c.name} = {c.merge.value}({c.name})" for c in table.columns if c.merge is not None
        )
        query = f"{table.name}\n    | summarize {aggs} by {key}"
        doc = f"{table.name} folded by {key}"
    else:
        props.append(f"lookback={table.dedup_lookback_days}d")
        query = f"{table.name}\n    | summarize take_any(*) by {key}"
        doc = f"{table.name} without re-delivered duplicates, one row per {key}"
    props += ['folder="AuditLake"', f'docString="{doc}"']
    commands = [
        f".create-or-alter materialized-view with ({', '.join(props)}) {view} on table {table.name}\n"
        f"{{\n    {query}\n}}"
    ]
    if not table.is_aggregate:
        commands.append(f".alter materialized-view {view} autoUpdateSchema true")
    commands.append(f".alter-merge materialized-view {view} policy retention softdelete = {table.retention_days}d")
    return commands


def render_adx() -> str:
    """``infra/kql/tables.kql``: every ADX table and its JSON ingestion mapping, then the staging
    table ``AuditIngest`` the collector ingests into (``lake.staging``; ADX only, not in ``TABLES``)."""
    from function_app.lake.staging import render_staging_tables

    parts = []
    for table in adx_tables():
        parts += [adx_create_table(table), adx_json_mapping(table)]
    parts += render_staging_tables()
    return "\n\n".join(parts) + "\n"


def render_adx_policies() -> str:
    """``infra/kql/policies.kql``: retention and ingestion batching of every ADX table, then the
    staging table's and its fan-out: one function per target table and its transactional update
    policy (``lake.staging``)."""
    from function_app.lake.staging import render_staging_policies

    parts = []
    for table in adx_tables():
        parts += [adx_retention(table), adx_batching(table)]
    parts += render_staging_policies()
    return "\n\n".join(parts) + "\n"


def render_adx_views() -> str:
    """``infra/kql/views.kql``: the materialized views (dedup and summary) and their retention."""
    parts = []
    for table in adx_tables():
        parts += adx_view(table)
    return "\n\n".join(parts) + "\n"


ADX_SCRIPTS: dict[str, Callable[[], str]] = {
    "tables.kql": render_adx,
    "policies.kql": render_adx_policies,
    "views.kql": render_adx_views,
    "entra.kql": render_adx_entra,
}
"""Every script of ``infra/kql/`` rendered from this module, in deployment order."""
