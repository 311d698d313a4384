"""A local fake of the ADX data-management endpoint, backed by Azurite.

It answers the two management commands ``QueuedIngestClient`` sends
(``.get ingestion resources`` and ``.get kusto identity token``) with SAS URLs into
Azurite, so the real SDK uploads its blob and posts its queue message there;
``read_ingestions`` then pops those messages and reads the blobs back as rows.

Ingestions into the staging table ``AuditIngest`` are fanned out as ADX's update policies would:
the bodies of the rendered functions ``AuditIngestExpand_<Table>()`` (``function_app.lake.staging``,
the text deployed by ``infra/kql/policies.kql``) are translated by duckdb-kql and run over the
staging rows loaded into DuckDB with the staging table's column types, so the tests exercise the
policy text itself. ``read_ingestions`` returns each staging ingestion as one ``Ingestion`` per
target table that got rows (``table`` is the target; ``staged`` says it came from the staging
table); ``raw_ingestions`` keeps every ingestion the client made, unexpanded, to count them.

``report_failure`` plays the service failing an ingestion after it accepted it: it posts a
failure report onto the failed-ingestions status queue the way the data-management service
does (base64 of a JSON object with OperationId, Database, Table, FailedOn, IngestionSourceId,
IngestionSourcePath, Details, ErrorCode, FailureStatus, RootActivityId,
OriginatesFromUpdatePolicy, ShouldRetry), where ``KustoIngestStatusQueues(client).failure``
and the app's watcher read it.
"""

from __future__ import annotations

import base64
import functools
import gzip
import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import orjson
from azure.core.credentials import AzureNamedKeyCredential
from azure.data.tables import TableSasPermissions, TableServiceClient, generate_table_sas
from azure.storage.blob import BlobClient, BlobServiceClient, ContainerSasPermissions, generate_container_sas
from azure.storage.queue import QueueClient, QueueSasPermissions, QueueServiceClient, generate_queue_sas

from function_app.lake.derived_tables import BODIES
from function_app.lake.schema import TABLES_BY_NAME, Kind, Table
from function_app.lake.staging import DERIVED_COLUMN, STAGING_TABLE, TARGET_TABLES, expansion_body, staging_table
from tests.azurite import Azurite

IDENTITY_TOKEN = "FAKE-IDENTITY-TOKEN"
CONTAINER = "tempstorage"
READY_QUEUE = "readyforaggregation-secured"
FAILED_QUEUE = "failedingestions"
SUCCESS_QUEUE = "successfulingestions"
STATUS_TABLE = "ingestionsstatus"


@dataclass
class Ingestion:
    """One ingestion the client queued: its decoded message and the rows of its blob."""

    message: dict[str, Any]
    rows: list[dict[str, Any]]
    blob_name: str
    target: str | None = None
    """The table an update policy filled from this staging ingestion (None: ingested directly)."""

    @property
    def database(self) -> str:
        return str(self.message["DatabaseName"])

    @property
    def table(self) -> str:
        """The table the rows are in: the policy's target for a fanned-out staging ingestion."""
        return self.target or self.ingested_table

    @property
    def ingested_table(self) -> str:
        """The table the client ingested into (``AuditIngest`` for a staging ingestion)."""
        return str(self.message["TableName"])

    @property
    def staged(self) -> bool:
        return self.target is not None

    @property
    def additional_properties(self) -> dict[str, Any]:
        return dict(self.message["AdditionalProperties"])

    @property
    def source_id(self) -> str:
        return str(self.message["Id"])

    @property
    def blob_url(self) -> str:
        """The temp blob's URL without its SAS (what a failure report names)."""
        url = urlsplit(str(self.message["BlobPath"]))
        return urlunsplit((url.scheme, url.netloc, url.path, "", ""))


@dataclass
class StreamedIngestion:
    """One streaming ingestion (``POST /v1/rest/ingest/{db}/{table}``) and its rows."""

    database: str
    table: str
    query: dict[str, list[str]]
    rows: list[dict[str, Any]]


@dataclass
class MgmtRequest:
    db: str
    csl: str
    headers: dict[str, str]


@dataclass
class FakeAdx:
    """The data-management endpoint; ``uri`` is what the ingest client connects to."""

    azurite: Azurite
    requests: list[MgmtRequest] = field(default_factory=list)
    streamed: list[StreamedIngestion] = field(default_factory=list)
    raw_ingestions: list[Ingestion] = field(default_factory=list)
    """Every queued ingestion read so far, as the client made it (a staging one not fanned out)."""
    _server: ThreadingHTTPServer | None = None
    _resources: list[list[str]] = field(default_factory=list)

    @property
    def uri(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeAdx:
        self._provision()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts: list[bytes] = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_POST(self) -> None:
                raw = self._body()
                url = urlsplit(self.path)
                if url.path.startswith("/v1/rest/ingest/"):
                    if self.headers.get("Content-Encoding", "").lower() == "gzip":
                        raw = gzip.decompress(raw)
                    _, db, table = url.path.rsplit("/", 2)
                    rows = [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]
                    fake.streamed.append(StreamedIngestion(db, table, parse_qs(url.query), rows))
                    status, payload = 200, _v1_table(
                        ["ConsumedRecordsCount", "UpdatePolicyStatus", "UpdatePolicyFailureCode",
                         "UpdatePolicyFailureReason"], [[0, "Inactive", "Unknown", None]])
                else:
                    body = json.loads(raw or b"{}")
                    fake.requests.append(MgmtRequest(str(body.get("db")), str(body.get("csl")),
                                                     {k.lower(): v for k, v in self.headers.items()}))
                    status, payload = fake._answer(url.path, str(body.get("csl", "")))
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, name="fake-adx", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _answer(self, path: str, csl: str) -> tuple[int, dict[str, Any]]:
        if path != "/v1/rest/mgmt":
            return 404, {"error": {"code": "NotFound", "message": path, "@permanent": True}}
        command = csl.strip()
        if command == ".get ingestion resources":
            return 200, _v1_table(["ResourceTypeName", "StorageRoot"], self._resources)
        if command == ".get kusto identity token":
            return 200, _v1_table(["AuthorizationContext"], [[IDENTITY_TOKEN]])
        return 400, {"error": {"code": "BadRequest", "message": f"unsupported command {command}",
                               "@type": "Kusto.Data.Exceptions.SyntaxException", "@permanent": True}}

    def _provision(self) -> None:
        az = self.azurite
        expiry = datetime.now(UTC) + timedelta(hours=2)
        blobs = BlobServiceClient.from_connection_string(az.connection_string)
        if not blobs.get_container_client(CONTAINER).exists():
            blobs.create_container(CONTAINER)
        queues = QueueServiceClient.from_connection_string(az.connection_string)
        for name in (READY_QUEUE, FAILED_QUEUE, SUCCESS_QUEUE):
            queue = queues.get_queue_client(name)
            try:
                queue.create_queue()
            except Exception:  # already there from an earlier fake in this session
                queue.clear_messages()
        TableServiceClient.from_connection_string(az.connection_string).create_table_if_not_exists(STATUS_TABLE)
        container_sas = generate_container_sas(
            az.account_name, CONTAINER, az.account_key,
            permission=ContainerSasPermissions(read=True, write=True, create=True, list=True), expiry=expiry)
        queue_sas = {
            name: generate_queue_sas(az.account_name, name, az.account_key,
                                     permission=QueueSasPermissions(read=True, add=True, process=True),
                                     expiry=expiry)
            for name in (READY_QUEUE, FAILED_QUEUE, SUCCESS_QUEUE)
        }
        table_sas = generate_table_sas(AzureNamedKeyCredential(az.account_name, az.account_key), STATUS_TABLE,
                                       permission=TableSasPermissions(read=True, add=True, update=True),
                                       expiry=expiry)
        self._resources = [
            ["SecuredReadyForAggregationQueue", f"{az.queue_endpoint}/{READY_QUEUE}?{queue_sas[READY_QUEUE]}"],
            ["FailedIngestionsQueue", f"{az.queue_endpoint}/{FAILED_QUEUE}?{queue_sas[FAILED_QUEUE]}"],
            ["SuccessfulIngestionsQueue", f"{az.queue_endpoint}/{SUCCESS_QUEUE}?{queue_sas[SUCCESS_QUEUE]}"],
            ["TempStorage", f"{az.blob_endpoint}/{CONTAINER}?{container_sas}"],
            ["IngestionsStatusTable", f"{az.table_endpoint}/{STATUS_TABLE}?{table_sas}"],
        ]

    def _failed_queue(self) -> QueueClient:
        return QueueServiceClient.from_connection_string(self.azurite.connection_string).get_queue_client(
            FAILED_QUEUE)

    def report_failure(
        self,
        ingestion: Ingestion,
        *,
        error_code: str = "BadRequest_MappingReferenceWasNotFound",
        details: str = "Mapping reference was not found.",
        status: str | int = "Permanent",
        from_update_policy: bool = False,
        should_retry: bool | None = None,
        source_path: str | None = None,
    ) -> dict[str, Any]:
        """Fail *ingestion* after the fact, as the service would: post its failure report
        (base64 JSON) onto the failed-ingestions queue; returns the report."""
        report: dict[str, Any] = {
            "OperationId": str(uuid.uuid4()),
            "Database": ingestion.database,
            # The ingestion the service fails is the client's (for a fanned-out one, the staging
            # ingestion: a transactional update policy fails its source ingestion).
            "Table": ingestion.ingested_table,
            "FailedOn": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "IngestionSourceId": ingestion.source_id,
            "IngestionSourcePath": source_path if source_path is not None else ingestion.blob_url,
            "Details": details,
            "ErrorCode": error_code,
            "FailureStatus": status,
            "RootActivityId": str(uuid.uuid4()),
            "OriginatesFromUpdatePolicy": from_update_policy,
            "ShouldRetry": status == "Transient" if should_retry is None else should_retry,
        }
        self.post_failure_message(base64.b64encode(json.dumps(report).encode("utf-8")).decode("ascii"))
        return report

    def post_failure_message(self, content: str) -> None:
        """Put *content* on the failed-ingestions queue exactly as given (for malformed reports)."""
        self._failed_queue().send_message(content)

    def failure_messages(self) -> list[str]:
        """The messages now visible on the failed-ingestions queue (peeked, not taken)."""
        return [str(m.content) for m in self._failed_queue().peek_messages(max_messages=32)]

    def clear_failures(self) -> None:
        self._failed_queue().clear_messages()

    def commands(self) -> list[str]:
        return [r.csl for r in self.requests]

    def read_ingestions(self, *, expand: bool = True) -> list[Ingestion]:
        """Pop every message the client queued, in order, with the rows of its blob; a staging
        ingestion fanned out by the update policies (see the module docstring) unless not *expand*.
        Every ingestion read is also kept in ``raw_ingestions``."""
        raw = self._pop_ingestions()
        self.raw_ingestions.extend(raw)
        if not expand:
            return raw
        return [out for ingestion in raw for out in fan_out(ingestion)]

    def _pop_ingestions(self) -> list[Ingestion]:
        return pop_ingestions(self.azurite.connection_string)


# ---------------------------------------------------------------------------------------------
# The update policies of the staging table, run by duckdb-kql


_DUCKDB_TYPES = {Kind.STRING: "VARCHAR", Kind.INT: "INTEGER", Kind.LONG: "BIGINT", Kind.REAL: "DOUBLE",
                 Kind.BOOL: "BOOLEAN", Kind.DATETIME: "TIMESTAMP", Kind.DYNAMIC: "JSON"}
_DATETIME_JSON = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z


@functools.cache
def policy_sql(table: str) -> str:
    """DuckDB SQL of ``AuditIngestExpand_<table>()``'s body (the rendered KQL) over ``AuditIngest``."""
    import duckdb_kql

    from auditlake.lake.kql_reach import install

    install()  # what the derived bodies may use beyond duckdb-kql's own functions (bag_keys, ...)
    sql = duckdb_kql.to_sql(expansion_body(table), schema={STAGING_TABLE: list(staging_table().column_names)})
    if sql.parameters:
        raise RuntimeError(f"duckdb-kql translated the {table} fan-out with parameters {sorted(sql.parameters)}")
    return str(sql)


def _load_column(kind: Kind, name: str) -> str:
    """SQL reading column *name* of the registered text table as the mapping would ingest it."""
    col = f'"{name}"'
    if kind is Kind.STRING:
        return f"{col} ->> '$'"
    if kind is Kind.DATETIME:
        return f"CAST(CAST({col} ->> '$' AS TIMESTAMPTZ) AT TIME ZONE 'UTC' AS TIMESTAMP)"
    if kind is Kind.DYNAMIC:
        return col
    return f"CAST({col} AS {_DUCKDB_TYPES[kind]})"


def _json_cell(kind: Kind, value: Any) -> Any:
    """A DuckDB result cell as it reads back from ADX in JSON (datetimes ISO 8601 UTC with Z)."""
    if value is None:
        return None
    if kind is Kind.DATETIME and isinstance(value, datetime):
        return json.loads(orjson.dumps(value, option=_DATETIME_JSON))
    if kind is Kind.DYNAMIC and isinstance(value, str):
        return json.loads(value)
    return value


def apply_policies(
    rows: list[dict[str, Any]], tables: tuple[str, ...] = TARGET_TABLES
) -> dict[str, list[dict[str, Any]]]:
    """The rows each update policy makes of the staging *rows* (JSON objects as ingested): every
    table of *tables* named, in the order its function yields them."""
    import duckdb
    import pyarrow as pa

    from auditlake.lake.kql_reach import register_macros

    staging = staging_table()
    present = {name for r in rows if isinstance(r.get(DERIVED_COLUMN), dict) for name in r[DERIVED_COLUMN]}
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in tables}
    if not rows:
        return out
    con = duckdb.connect()
    try:
        register_macros(con)
        texts = {c.name: pa.array([None if r.get(c.name) is None else orjson.dumps(r[c.name]).decode()
                                   for r in rows], type=pa.string()) for c in staging.columns}
        con.register("_staged", pa.table(texts))
        select = ", ".join(f'{_load_column(c.kind, c.name)} AS "{c.name}"' for c in staging.columns)
        casts = ", ".join(f'CAST("{c.name}" AS JSON) AS "{c.name}"' if c.kind in (Kind.STRING, Kind.DATETIME,
                          Kind.DYNAMIC) else f'"{c.name}"' for c in staging.columns)
        con.execute(f'CREATE TEMP TABLE "{STAGING_TABLE}" AS SELECT {select} FROM (SELECT {casts} FROM _staged)')
        for name in tables:
            if name != "AuditRecord" and name not in BODIES and name not in present:
                continue
            target: Table = TABLES_BY_NAME[name]
            result = con.execute(policy_sql(name))
            columns = [d[0] for d in result.description]
            assert columns == list(target.column_names), (name, columns)
            kinds = [c.kind for c in target.columns]
            out[name] = [{c: _json_cell(k, v) for c, k, v in zip(columns, kinds, values, strict=True)}
                         for values in result.fetchall()]
    finally:
        con.close()
    return out


def fan_out(ingestion: Ingestion) -> list[Ingestion]:
    """*ingestion* as the tables hold it after the update policies: a staging ingestion becomes one
    ingestion per target table that got rows; any other is itself."""
    if ingestion.ingested_table != STAGING_TABLE:
        return [ingestion]
    return [Ingestion(ingestion.message, rows, ingestion.blob_name, target=name)
            for name, rows in apply_policies(ingestion.rows).items() if rows]


def dedup_view(table: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``<table>Dedup`` over *rows*: ``summarize take_any(*) by <key>`` (views.kql), one row per key
    (the first; take_any may keep any). Python, not duckdb-kql, which has no ``take_any(*)``."""
    key = TABLES_BY_NAME[table].key
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        seen.setdefault(tuple(json.dumps(row[k], sort_keys=True) for k in key), row)
    return list(seen.values())


def _v1_table(columns: list[str], rows: list[list[Any]]) -> dict[str, Any]:
    return {"Tables": [{
        "TableName": "Table_0",
        "Columns": [{"ColumnName": c, "DataType": "String", "ColumnType": "string"} for c in columns],
        "Rows": rows,
    }]}


def pop_ingestions(connection_string: str) -> list[Ingestion]:
    """Every ingestion the ingest client queued in the Azurite of *connection_string*, as queued (one
    per message on the ready-for-aggregation queue, with the rows of its blob), each message deleted."""
    queue = QueueServiceClient.from_connection_string(connection_string).get_queue_client(READY_QUEUE)
    found: list[Ingestion] = []
    while True:
        batch = list(queue.receive_messages(messages_per_page=32, max_messages=32))
        if not batch:
            return found
        for msg in batch:
            message = json.loads(base64.b64decode(msg.content))
            blob = BlobClient.from_blob_url(str(message["BlobPath"]))
            data = blob.download_blob().readall()
            if str(blob.blob_name).endswith(".gz"):
                data = gzip.decompress(data)
            rows = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
            found.append(Ingestion(message, rows, str(blob.blob_name)))
            queue.delete_message(msg)
