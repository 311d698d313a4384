"""The ADX sink: the rows of one blob become ONE JSON-lines ingestion, into the staging table.

Each ingestion costs the ingest SDK ~8.6 ms of client CPU whatever its size, so a blob's rows
of every table built from records go together into ``AuditIngest`` and ADX's transactional
update policies fan them out into the tables (``lake.staging``); the ledger mirror's rows wait
in the sink (``defer``) and ride along with the next blob's ingestion. Tables that are not
staged (the Entra raw table, search counts, bookkeeping rows written alone) get one ingestion
each, as before.

Queued ingestion by default (the data-management service batches; see the table's
ingestion batching policy), or managed streaming (falls back to queued above 4 MB or on
transient errors). Neither path de-duplicates: re-writing a blob adds its rows again and
the materialized views in ``infra/kql`` drop the duplicates at query time. Ingest-by tags
are deliberately not used: streaming ingestion ignores them, and ADX advises against one
tag per ingestion.

Queued ingestion is asynchronous: an accepted ingestion can still fail in the service. Such
failures are reported to the failed-ingestions status queue (``failure_queue_urls``); each
ingestion's stream name encodes its blob (``stream_name``, ``blob_key``) so the watcher in
``function_app.azure.ingest_failures`` can settle that blob's ledger row.

The Kusto SDK is synchronous (``requests``); every call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import logging
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol
from urllib.parse import unquote, urlsplit

import orjson
from azure.core.credentials import TokenCredential
from azure.identity import DefaultAzureCredential
from azure.kusto.data import DataFormat, KustoConnectionStringBuilder
from azure.kusto.ingest import (
    IngestionMappingKind,
    IngestionProperties,
    ManagedStreamingIngestClient,
    QueuedIngestClient,
    ReportLevel,
    StreamDescriptor,
)
from azure.kusto.ingest.status import KustoIngestStatusQueues

from function_app.core.model import ContentBlob, WriteResult, utc
from function_app.lake.cells import repaired_row
from function_app.lake.entra_schema import RAW_TABLE, raw_table
from function_app.lake.schema import (
    COLLECTOR_RUN,
    CONTENT_LEDGER,
    RECORD_TABLES,
    TABLES_BY_NAME,
    Kind,
    Table,
    json_mapping_name,
)
from function_app.lake.staging import STAGED_TABLES, STAGING_TABLE, staging_rows, staging_table
from function_app.logredact import redact as redact  # re-exported; defined once, with the log redaction

log = logging.getLogger(__name__)

# Namespace of the per-(blob, table) source ids; fixed forever so retries of one blob
# carry the same id in ADX's ingestion status and failure reports.
SOURCE_ID_NAMESPACE = uuid.UUID("5b0f8c52-3f0e-4c55-9a43-2f1d6f7a0c11")

_DUMPS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS


# The stream name of every ingestion carries its blob's identity, so a failure ADX reports
# later (its IngestionSourcePath is the temp blob, named {db}__{table}__{source id}__{stream
# name}) leads back to the ledger row: "al1-" (version 1), the identity as unpadded base64url
# (tenant id, content type, content id joined by newlines), ".", 32 hex digits unique per
# attempt (the temp blob is uploaded without overwrite), ".json.gz" (the service reads the
# suffix to know the blob is compressed). base64url keeps any content id valid in a blob
# name and in a URL, unchanged by percent-encoding; with a 256-character content id and a
# 260-character database name the blob name stays under the 1,024-character limit.
STREAM_PREFIX = "al1-"
_STREAM_NAME = re.compile(r"(?:^|__)al1-([A-Za-z0-9_-]+)\.[0-9a-f]{32}\.json(?:\.gz)?$")
MAX_BLOB_NAME_CHARS = 1024


class BlobKey(NamedTuple):
    """The identity of a content blob: what its ledger row is keyed by."""

    tenant_id: str
    content_type: str
    content_id: str


def stream_name(blob: ContentBlob) -> str:
    """A new stream name (unique per call) for an ingestion of *blob*'s rows; see ``blob_key``."""
    identity = "\n".join((blob.tenant_id, blob.content_type, blob.content_id)).encode("utf-8")
    token = base64.urlsafe_b64encode(identity).rstrip(b"=").decode("ascii")
    return f"{STREAM_PREFIX}{token}.{uuid.uuid4().hex}.json.gz"


def blob_key(source_path: str) -> BlobKey | None:
    """The blob an ingestion was made for, from its IngestionSourcePath (the temp blob's URL,
    with or without its SAS, or just its name); None if the path is not one this sink named."""
    name = unquote(urlsplit(source_path).path.rsplit("/", 1)[-1])
    m = _STREAM_NAME.search(name)
    if m is None:
        return None
    token = m.group(1)
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("utf-8")
    except (ValueError, UnicodeDecodeError):  # binascii.Error is a ValueError
        return None
    parts = text.split("\n")
    if len(parts) != 3 or not all(parts):
        return None
    return BlobKey(*parts)


class AdxIngestError(Exception):
    """Handing one table's rows of one blob to ADX failed; ``cause`` is the SDK's error.

    The message (safe to log and to store in the ledger) has SAS signatures redacted.
    """

    def __init__(self, table: str, content_id: str, cause: BaseException) -> None:
        super().__init__(f"ADX ingestion into {table} failed for content {content_id}: "
                         f"{type(cause).__name__}: {redact(str(cause))}")
        self.table = table
        self.content_id = content_id
        self.cause = cause


def source_id(blob: ContentBlob | BlobKey, table: str) -> uuid.UUID:
    """The deterministic ingestion source id of *table*'s rows of *blob*."""
    return uuid.uuid5(SOURCE_ID_NAMESPACE, "\n".join((blob.tenant_id, blob.content_type, blob.content_id, table)))


def _cell(kind: Kind, value: Any) -> Any:
    if kind is Kind.DATETIME and isinstance(value, datetime):
        # Aware values in another zone would otherwise keep their offset.
        return utc(value)
    return value


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=_DUMPS)


def to_json_lines(table: Table, rows: Sequence[Mapping[str, Any]]) -> bytes:
    """*rows* as JSON lines: exactly *table*'s columns (missing ones null, extra keys
    dropped), datetimes ISO 8601 UTC with ``Z``, dynamic values as nested JSON.

    Never raises on row content: a row with a value orjson refuses is written with that
    cell as its bounded text, flagged in ``Quality`` (see ``lake.cells``)."""
    out = io.BytesIO()
    write_json_lines(table, rows, out)
    return out.getvalue()


_FLUSH_BYTES = 1024 * 1024


class _Writable(Protocol):
    def write(self, data: bytes | bytearray, /) -> int: ...


def encode_row(table: Table, row: Mapping[str, Any]) -> bytes:
    """One row as JSON: exactly *table*'s columns, in order (see ``to_json_lines``); never raises
    on row content."""
    cells = {c.name: _cell(c.kind, row.get(c.name)) for c in table.columns}
    try:
        return orjson.dumps(cells, option=_DUMPS)
    except (TypeError, ValueError, RecursionError):  # orjson.JSONEncodeError is a TypeError
        return orjson.dumps(repaired_row(table, cells, _dumps), option=_DUMPS)


def write_json_lines(table: Table, rows: Iterable[Mapping[str, Any]], out: _Writable) -> int:
    """Write ``to_json_lines`` of *rows* to *out* in chunks of about a megabyte; returns the bytes written.

    Chunked so that a large blob's JSON lines never exist whole in memory: written into a gzip
    stream they cost only their compressed size (``core.budget`` counts on it)."""
    chunk = bytearray()
    written = 0
    for row in rows:
        chunk += encode_row(table, row)
        chunk += b"\n"
        if len(chunk) >= _FLUSH_BYTES:
            out.write(chunk)
            written += len(chunk)
            chunk.clear()
    if chunk:
        out.write(chunk)
        written += len(chunk)
    return written


GZIP_LEVEL = 1
"""Measured on this machine (2 cores) over 40 staging payloads of 50 records each drawn from
tests/samples (268 KiB of JSON lines per blob, SchemaObservation aside rows included), CPU per blob:
level 1 1,261 µs (25 µs/record) 30.1 KiB; level 3 1,402 µs (28 µs/record) 27.5 KiB; level 6 (the
previous choice) 3,663 µs (73 µs/record) 23.2 KiB; level 9 7,121 µs (142 µs/record) 22.8 KiB. Client
CPU per record is the bar (150 µs in all); the 30 % more bytes of level 1 cost the upload far less than
the 48 µs/record level 6 spends, and ADX reads any level alike."""


def gzipped_json_lines(table: Table, rows: Iterable[Mapping[str, Any]]) -> tuple[io.BytesIO, int]:
    """The gzip of ``to_json_lines`` (rewound, ready to upload) and the uncompressed size."""
    buffer = io.BytesIO()
    # mtime=0 keeps the payload byte-identical across retries of the same rows.
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as compressed:
        size = write_json_lines(table, rows, compressed)
    buffer.seek(0)
    return buffer, size


def _kcsb(uri: str, credential: TokenCredential | None) -> Any:
    if uri.startswith("http://"):
        # Only a local fake or emulator speaks plain http; it takes no token.
        return KustoConnectionStringBuilder.with_no_authentication(uri)
    # The Kusto SDK has no default chain of its own: without a credential it refuses.
    return KustoConnectionStringBuilder.with_azure_token_credential(uri, credential or DefaultAzureCredential())


MIRROR_MAX_DELAY_SECONDS = 5.0
"""Longest a deferred mirror row waits for a staging ingestion to ride on before it is flushed alone."""
MIRROR_MAX_ROWS = 500
"""Waiting mirror rows that start a flush at once (a planning pass lists thousands of blobs)."""
MIRROR_MAX_PENDING = 100_000
"""Bound of waiting rows while ADX refuses every flush; beyond it the oldest are dropped, logged."""
_DEFERRABLE = (CONTENT_LEDGER.name, COLLECTOR_RUN.name)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class AdxSink:
    """Sink into ADX through an azure-kusto-ingest client (queued or managed streaming)."""

    def __init__(self, ingest_client: Any, database: str, *, streaming: bool = False) -> None:
        self._client = ingest_client
        self._database = database
        self._streaming = streaming
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[int]] = set()

    @classmethod
    def create(
        cls,
        ingest_uri: str,
        database: str,
        credential: TokenCredential | None = None,
        *,
        engine_uri: str | None = None,
        streaming: bool = False,
    ) -> AdxSink:
        """A sink for the cluster whose data-management endpoint is *ingest_uri*
        (``https://ingest-<cluster>...``); *credential* is a synchronous azure-identity
        credential (None: ``DefaultAzureCredential``; ignored for a local ``http://`` URL).

        With *streaming*, rows go to the engine (*engine_uri*, default *ingest_uri* without
        ``ingest-``) and fall back to queued ingestion through *ingest_uri*.
        """
        dm = _kcsb(ingest_uri, credential)
        if not streaming:
            return cls(QueuedIngestClient(dm), database)
        engine = engine_uri or ingest_uri.replace("://ingest-", "://", 1)
        return cls(ManagedStreamingIngestClient(_kcsb(engine, credential), dm), database, streaming=True)

    @property
    def database(self) -> str:
        return self._database

    def failure_queue_urls(self) -> list[str]:
        """The SAS URLs of the data-management service's failed-ingestions status queues,
        where ingestions accepted earlier and failed later are reported (``report_level``
        FailuresOnly, report method Queue). Blocking: asks the service for its ingestion
        resources when the SDK's cache (1 h) is stale.
        """
        # A managed streaming client reports its queued fallbacks through its queued client.
        queued = getattr(self._client, "queued_client", self._client)
        # The SDK's public way to its status queues; its constructor is unannotated.
        status = KustoIngestStatusQueues(queued)  # type: ignore[no-untyped-call]
        return [str(q.url) for q in status.failure.get_queues_func()]

    def _properties(self, table: Table) -> Any:
        return IngestionProperties(
            self._database,
            table.name,
            data_format=DataFormat.JSON,
            ingestion_mapping_reference=json_mapping_name(table),
            ingestion_mapping_kind=IngestionMappingKind.JSON,
            # Only failures are reported (to the status queue); success reports for every
            # small ingestion would load the service for nothing.
            report_level=ReportLevel.FailuresOnly,
            # The SDK writes into this dict (auth context, format, mapping): never share it.
            additional_properties={},
        )

    def _ingest(self, blob: ContentBlob, table: Table, rows: Iterable[Mapping[str, Any]]) -> None:
        stream, size = gzipped_json_lines(table, rows)
        # The temp blob is named {db}__{table}__{source_id}__{stream_name} and uploaded
        # without overwrite, so with a deterministic source id a retry of the same blob
        # would fail with BlobAlreadyExists: the stream name is unique per attempt, and
        # names the blob for failure reports (see ``stream_name``).
        # size is the uncompressed size: it becomes RawDataSize, which the service uses to
        # decide when a batch is full.
        descriptor = StreamDescriptor(stream, source_id=source_id(blob, table.name),
                                      is_compressed=True, stream_name=stream_name(blob), size=size)
        try:
            self._client.ingest_from_stream(descriptor, self._properties(table))
        except Exception as exc:
            raise AdxIngestError(table.name, blob.content_id, exc) from exc

    # -- the ledger mirror's rows (function_app.azure.mirror) ---------------------------------

    def defer(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Keep bookkeeping rows (ContentLedger, CollectorRun) to go with the next staging ingestion,
        or with a flush of their own at most ``MIRROR_MAX_DELAY_SECONDS`` later (sooner once
        ``MIRROR_MAX_ROWS`` are waiting). Never raises; needs a running event loop for the flush
        (without one the rows wait for the next ingestion or ``close``)."""
        if table not in _DEFERRABLE:
            raise ValueError(f"{table} rows are not deferred")
        self._pending.extend((table, dict(r)) for r in rows)
        if len(self._pending) > MIRROR_MAX_PENDING:
            dropped = len(self._pending) - MIRROR_MAX_PENDING
            del self._pending[:dropped]
            log.error("adx mirror rows dropped: %d waiting rows exceed the bound of %d (ADX has refused the "
                      "flushes meanwhile; the state store keeps every row) dropped=%d",
                      MIRROR_MAX_PENDING + dropped, MIRROR_MAX_PENDING, dropped)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if len(self._pending) >= MIRROR_MAX_ROWS:
            self._start_flush(loop)
        elif self._timer is None:
            self._timer = loop.call_later(MIRROR_MAX_DELAY_SECONDS, self._start_flush, loop)

    @property
    def pending(self) -> int:
        """Mirror rows waiting for an ingestion."""
        return len(self._pending)

    def _start_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task = loop.create_task(self.flush())
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    def _take_pending(self) -> list[tuple[str, dict[str, Any]]]:
        taken, self._pending = self._pending, []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return taken

    def _restore(self, taken: list[tuple[str, dict[str, Any]]]) -> None:
        self._pending[:0] = taken

    def _flush_now(self, taken: list[tuple[str, dict[str, Any]]]) -> None:
        """Ingest *taken* in one ingestion per table, named after a pseudo-blob of its own (a
        failure reported later names a bookkeeping table and no ledger row: see ingest_failures)."""
        first = taken[0][1]
        pseudo = ContentBlob(str(first.get("TenantId") or ""), str(first.get("ContentType") or ""),
                             f"mirror:{uuid.uuid4().hex}", "", _EPOCH, _EPOCH)
        for name in _DEFERRABLE:
            rows = [r for t, r in taken if t == name]
            if rows:
                self._ingest(pseudo, TABLES_BY_NAME[name], rows)

    async def flush(self) -> int:
        """Ingest every waiting mirror row now; returns how many. A failure is logged and the rows
        wait for the next ingestion or flush (never raises)."""
        taken = self._take_pending()
        if not taken:
            return 0
        try:
            await asyncio.to_thread(self._flush_now, taken)
        except Exception as exc:
            self._restore(taken)
            log.error("adx mirror flush failed; rows kept for the next attempt rows=%d error=%s", len(taken), exc)
            return 0
        log.debug("adx mirror rows flushed rows=%d", len(taken))
        return len(taken)

    def close(self) -> None:
        """Flush the waiting mirror rows (a failure is logged with their count), then release the
        client's HTTP sessions. Blocking."""
        taken = self._take_pending()
        if taken:
            try:
                self._flush_now(taken)
            except Exception as exc:
                log.error("adx mirror rows lost at close: the flush failed rows=%d error=%s", len(taken), exc)
        self._client.close()

    # -- writing a blob -------------------------------------------------------------------------

    def _stage(self, blob: ContentBlob, tables: Mapping[str, Sequence[Mapping[str, Any]]],
               carried: list[tuple[str, dict[str, Any]]]) -> None:
        merged: dict[str, list[Mapping[str, Any]]] = {name: list(rows) for name, rows in tables.items()}
        for name, row in carried:
            merged.setdefault(name, []).append(row)
        rows = staging_rows(blob.tenant_id, blob.content_type, blob.content_id, merged)
        self._ingest(blob, staging_table(), rows)

    async def write_blob(self, blob: ContentBlob, tables: Mapping[str, Sequence[Mapping[str, Any]]]) -> WriteResult:
        """Hand the blob's rows to ADX: when it has rows of a table built from records, ONE
        ingestion into the staging table ``AuditIngest`` carries them all, with the bookkeeping
        rows among *tables* and the waiting mirror rows (see ``defer``), and ADX's update
        policies fan them out (``lake.staging``); any other table (the Entra raw table, search
        counts, bookkeeping rows written alone) gets one ingestion of its own.

        Returns ``inserted`` = all rows handed over and ``duplicates`` = 0: ADX does not
        de-duplicate on ingestion; the views de-duplicate at query time. Queued ingestion
        is asynchronous, so success means accepted, not yet queryable. Raises
        AdxIngestError for the first ingestion that failed (earlier ones stay ingested; a
        retry re-ingests them and the views absorb the repeat; mirror rows it was to carry
        wait for the next one), ValueError for a table that is not in the ADX schema.
        """
        staged: dict[str, Sequence[Mapping[str, Any]]] = {}
        plan: list[tuple[Table, Sequence[Mapping[str, Any]]]] = []
        stage = any(tables.get(name) for name in RECORD_TABLES)
        for name, rows in tables.items():
            # The Entra raw table is ADX's alone (its update policies expand it), so not in TABLES.
            table = raw_table() if name == RAW_TABLE else TABLES_BY_NAME.get(name)
            if table is None or table.local_only:
                raise ValueError(f"{name} is not an ADX table")
            if not rows:
                continue
            if stage and name in STAGED_TABLES:
                staged[name] = rows
            else:
                plan.append((table, rows))
        inserted = 0
        if staged:
            carried = self._take_pending()
            try:
                await asyncio.to_thread(self._stage, blob, staged, carried)
            except AdxIngestError as exc:
                self._restore(carried)
                log.error("adx ingestion failed tenant_id=%s content_type=%s content_id=%s table=%s error=%s",
                          blob.tenant_id, blob.content_type, blob.content_id, STAGING_TABLE, exc)
                raise
            count = sum(len(rows) for rows in staged.values())
            inserted += count
            log.debug("adx ingestion queued tenant_id=%s content_type=%s content_id=%s table=%s rows=%d "
                      "mirror_rows=%d", blob.tenant_id, blob.content_type, blob.content_id, STAGING_TABLE, count,
                      len(carried))
        for table, rows in plan:
            try:
                await asyncio.to_thread(self._ingest, blob, table, rows)
            except AdxIngestError as exc:
                log.error("adx ingestion failed tenant_id=%s content_type=%s content_id=%s table=%s error=%s",
                          blob.tenant_id, blob.content_type, blob.content_id, table.name, exc)
                raise
            inserted += len(rows)
            log.debug("adx ingestion queued tenant_id=%s content_type=%s content_id=%s table=%s rows=%d",
                      blob.tenant_id, blob.content_type, blob.content_id, table.name, len(rows))
        return WriteResult(inserted=inserted, duplicates=0)
