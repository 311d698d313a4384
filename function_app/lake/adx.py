"""The ADX sink: the rows of the blobs one process writes at once become ONE JSON-lines ingestion, into
the staging table.

Each ingestion costs the ingest SDK ~8.6 ms of client CPU whatever its size, so a blob's rows
of every table built from records go together into ``AuditIngest`` and ADX's transactional
update policies fan them out into the tables (``lake.staging``); and the blobs the Functions host
hands this process at once (up to host.json's ``batchSize`` plus ``newBatchThreshold`` content
messages run concurrently on one event loop) share that ingestion: concurrent ``write_blob`` calls
gather into a batch, which is ingested when every blob this process is processing has handed its
rows over (the ledger mirror tells the sink which blobs it has claimed: ``expect``, ``forget``), or
``BATCH_LINGER_SECONDS`` after its first blob, or at a size cap, whichever comes first. A lone blob
therefore goes at once. A ``write_blob`` returns only once the ingestion holding its rows was
accepted, and raises if it was not, so a blob is marked ingested only after that, as before. The
ledger mirror's rows wait in the sink (``defer``) and ride along with the next staging ingestion.
Tables that are not staged (the Entra raw table, search counts, bookkeeping rows written alone) get
one ingestion each, as before.

Queued ingestion by default (the data-management service batches; see the table's
ingestion batching policy), or managed streaming (falls back to queued above 4 MB or on
transient errors). Neither path de-duplicates: re-writing a blob adds its rows again and
the materialized views in ``infra/kql`` drop the duplicates at query time. Ingest-by tags
are deliberately not used: streaming ingestion ignores them, and ADX advises against one
tag per ingestion.

Queued ingestion is asynchronous: an accepted ingestion can still fail in the service. Such
failures are reported to the failed-ingestions status queue (``failure_queue_urls``); each
ingestion's stream name lists the blobs it holds (``batch_stream_name``, ``blob_keys``) so the
watcher in ``function_app.azure.ingest_failures`` can settle each one's ledger row.

The Kusto SDK is synchronous (``requests``); every call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import re
import threading
import uuid
import zlib
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
from isal import isal_zlib

from function_app.core.model import ContentBlob, WriteResult, utc
from function_app.lake.cells import repaired_row
from function_app.lake.derived_tables import BODIES
from function_app.lake.entra_schema import RAW_TABLE, raw_table
from function_app.lake.schema import (
    AUDIT_RECORD,
    COLLECTOR_RUN,
    CONTENT_LEDGER,
    RECORD_TABLES,
    SCHEMA_OBSERVATION,
    TABLES_BY_NAME,
    Kind,
    Table,
    json_mapping_name,
)
from function_app.lake.staging import STAGED_TABLES, STAGING_TABLE, staging_rows, staging_table
from function_app.logredact import redact as redact  # re-exported; defined once, with the log redaction
from function_app.records.schema_observation import SchemaObserver

log = logging.getLogger(__name__)
# The one line per shared ingestion on a logger of its own, so it can be turned on (``make bench``
# counts the batches from it) without the sink's per-blob debug lines.
batch_log = logging.getLogger(f"{__name__}.batches")

# Namespace of the per-(blob, table) source ids; fixed forever so retries of one blob
# carry the same id in ADX's ingestion status and failure reports.
SOURCE_ID_NAMESPACE = uuid.UUID("5b0f8c52-3f0e-4c55-9a43-2f1d6f7a0c11")

_DUMPS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS


# The stream name of every ingestion carries the identity of the blobs it holds, so a failure ADX
# reports later (its IngestionSourcePath is the temp blob, named {db}__{table}__{source id}__{stream
# name}) leads back to their ledger rows. One blob: "al1-" (version 1), the identity as unpadded
# base64url (tenant id, content type, content id joined by newlines), ".", 32 hex digits unique per
# attempt (the temp blob is uploaded without overwrite), ".json.gz" (the service reads the suffix to
# know the blob is compressed). base64url keeps any content id valid in a blob name and in a URL,
# unchanged by percent-encoding; with a 256-character content id and a 260-character database name
# the blob name stays under the 1,024-character limit. Several blobs: "al2-" and the zlib of their
# identities (each its three lines, all joined by newlines), as unpadded base64url: the ids of one
# feed share most of their characters, so ~18 characters name one more blob, and a batch takes no
# blob its stream name could not name (``_Batch.takes``).
STREAM_PREFIX = "al1-"
BATCH_STREAM_PREFIX = "al2-"
_STREAM_NAME = re.compile(r"(?:^|__)al([12])-([A-Za-z0-9_-]+)\.[0-9a-f]{32}\.json(?:\.gz)?$")
MAX_BLOB_NAME_CHARS = 1024
# What the SDK puts around a stream name, and what a stream name has besides its token.
_TEMP_NAME_EXTRA = len("____") + 36 + len("__")
_STREAM_NAME_EXTRA = len(BATCH_STREAM_PREFIX) + 1 + 32 + len(".json.gz")
# Largest identity list a name decodes to (a token of under 1,024 characters cannot hold more
# than ~200 blobs): bounds what a forged name makes zlib inflate.
_MAX_IDENTITY_BYTES = 256 * 1024


class BlobKey(NamedTuple):
    """The identity of a content blob: what its ledger row is keyed by."""

    tenant_id: str
    content_type: str
    content_id: str


def key_of(blob: ContentBlob | BlobKey) -> BlobKey:
    return BlobKey(blob.tenant_id, blob.content_type, blob.content_id)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def _batch_token(keys: Sequence[BlobKey]) -> str:
    return _b64(zlib.compress("\n".join(part for key in keys for part in key).encode("utf-8"), 9))


def stream_name(blob: ContentBlob | BlobKey) -> str:
    """A new stream name (unique per call) for an ingestion of *blob*'s rows alone; see ``blob_keys``."""
    identity = "\n".join((blob.tenant_id, blob.content_type, blob.content_id)).encode("utf-8")
    return f"{STREAM_PREFIX}{_b64(identity)}.{uuid.uuid4().hex}.json.gz"


def batch_stream_name(keys: Sequence[BlobKey]) -> str:
    """A new stream name (unique per call) for an ingestion of the rows of the blobs *keys* (one or
    more, none repeated, none with a newline in its identity); see ``blob_keys``."""
    if len(keys) == 1:
        return stream_name(keys[0])
    return f"{BATCH_STREAM_PREFIX}{_batch_token(keys)}.{uuid.uuid4().hex}.json.gz"


def blob_keys(source_path: str) -> list[BlobKey] | None:
    """The blobs an ingestion was made for, in the order it listed them, from its
    IngestionSourcePath (the temp blob's URL, with or without its SAS, or just its name); None if
    the path is not one this sink named."""
    name = unquote(urlsplit(source_path).path.rsplit("/", 1)[-1])
    m = _STREAM_NAME.search(name)
    if m is None:
        return None
    try:
        data = _unb64(m.group(2))
        if m.group(1) == "2":
            inflate = zlib.decompressobj()
            data = inflate.decompress(data, _MAX_IDENTITY_BYTES)
            if inflate.unconsumed_tail or not inflate.eof:
                return None
        text = data.decode("utf-8")
    except (ValueError, UnicodeDecodeError, zlib.error):  # binascii.Error is a ValueError
        return None
    parts = text.split("\n")
    if len(parts) % 3 or not all(parts):
        return None
    keys = [BlobKey(*parts[i:i + 3]) for i in range(0, len(parts), 3)]
    if (len(keys) == 1) != (m.group(1) == "1"):
        return None
    return keys


def blob_key(source_path: str) -> BlobKey | None:
    """The blob an ingestion of one blob's rows was made for (see ``blob_keys``); None if the path
    is not one this sink named, or names several blobs."""
    keys = blob_keys(source_path)
    return keys[0] if keys is not None and len(keys) == 1 else None


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


def ingestion_source_id(keys: Sequence[BlobKey], table: str) -> uuid.UUID:
    """The deterministic ingestion source id of *table*'s rows of the blobs *keys*, in that order
    (``source_id`` for one blob)."""
    if len(keys) == 1:
        return source_id(keys[0], table)
    return uuid.uuid5(SOURCE_ID_NAMESPACE, "\n".join((*(part for key in keys for part in key), table)))


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


# Table name -> (the table, its column names, its datetime columns): encode_row runs once per row
# and cell (~40 % of the Azure path's staging encode when it asked each column its kind).
_LAYOUTS: dict[str, tuple[Table, tuple[str, ...], tuple[str, ...]]] = {}


def _layout(table: Table) -> tuple[tuple[str, ...], tuple[str, ...]]:
    known = _LAYOUTS.get(table.name)
    if known is None or known[0] is not table:
        known = (table, tuple(c.name for c in table.columns),
                 tuple(c.name for c in table.columns if c.kind is Kind.DATETIME))
        _LAYOUTS[table.name] = known
    return known[1], known[2]


def encode_row(table: Table, row: Mapping[str, Any]) -> bytes:
    """One row as JSON: exactly *table*'s columns, in order (see ``to_json_lines``); never raises
    on row content."""
    names, datetimes = _layout(table)
    # A row that already has exactly the columns, in order (the staging rows, a flattened row), is
    # encoded as it is: the copy cost 3.7–4.1 µs a staging row, the check 0.5. It is copied only
    # if a value has to change.
    cells: dict[str, Any] = (row if type(row) is dict and tuple(row) == names
                             else dict(zip(names, map(row.get, names), strict=True)))
    for name in datetimes:
        value = cells[name]
        if isinstance(value, datetime) and value.tzinfo is not UTC:
            # Aware values in another zone would otherwise keep their offset.
            if cells is row:
                cells = dict(row)
            cells[name] = utc(value)
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
"""ISA-L's level (0-3; ``isal_zlib`` writes the same gzip format as the standard library's zlib, ~4× faster).
Measured on this machine (2 cores) over 40 staging payloads of 50 records each drawn from
tests/samples (212 KiB of JSON lines per blob), CPU per blob: zlib level 1 (the previous choice)
681 µs (13.6 µs/record) 18.8 KiB; ISA-L level 0 148 µs 20.5 KiB, level 1 155 µs (3.1 µs/record)
18.3 KiB, level 2 160 µs 18.2 KiB, level 3 882 µs 18.0 KiB; zlib-ng level 1 251 µs 22.3 KiB. In the
bench's Azure part, interleaved, the switch took the client CPU from 156/155/167 to 135/136/144
µs/record (the standard GzipFile also pays a separate CRC pass). Client CPU per record is the bar;
ADX reads any gzip alike."""


class GzipWriter:
    """A gzip stream written into *out* as data comes: one member, header and trailer written by
    ISA-L itself (``wbits`` 31), modification time 0, so the same rows give the same bytes on a retry."""

    def __init__(self, out: _Writable) -> None:
        self._out = out
        self._compressor = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 31)

    def write(self, data: bytes | bytearray, /) -> int:
        self._out.write(self._compressor.compress(data))
        return len(data)

    def close(self) -> None:
        self._out.write(self._compressor.flush())


def gzipped_json_lines(table: Table, rows: Iterable[Mapping[str, Any]]) -> tuple[io.BytesIO, int]:
    """The gzip of ``to_json_lines`` (rewound, ready to upload) and the uncompressed size."""
    buffer = io.BytesIO()
    compressed = GzipWriter(buffer)
    size = write_json_lines(table, rows, compressed)
    compressed.close()
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

BATCH_LINGER_SECONDS = 0.5
"""Longest the first blob of a batch waits for the other blobs this process claimed, and longest a
claimed blob holds batches back. Measured with ``tests/bench/azure_path.py`` (~300 blobs of ~41
records, host.json's 8 + 4 messages at once), blobs per ingestion and p95 of a delivery's wall time:
API answering at once: 0.1 s 6.5, 0.5 s 7.1 (0.36 s), 1 s 7.5; 5 % of answers held 3 s: 0.3 s 6.1
(0.6 s), 0.5 s 6.9 (0.8 s), 1 s 7.0 (1.4 s); half of them held 1 s: 0.3 s 3.0, 0.5 s 4.5, 1 s 4.1.
An ingestion costs ~8.6 ms of CPU, so past ~4 blobs a longer wait saves under 20 µs per record while
it holds the message slots; 0.5 s is under 2 % of the 30 s freshness bar."""
BATCH_MAX_BYTES = 100 * 1024 * 1024
"""Uncompressed JSON lines at which a batch takes no more blobs (ADX's advice: ingestions of 100 MB
or more; the service batches further). A blob joining a batch just under it is not cut."""
BATCH_MAX_BLOBS = 64
"""Most blobs in one ingestion, however short their ids (how many a failure of it re-drives)."""
EXPECT_MAX_SECONDS = 600.0
"""How long a claimed blob's expectation is kept (for its ``alone``) when neither its rows nor its
``forget`` come (the ledger write failed); it holds batches back for ``BATCH_LINGER_SECONDS`` only."""
INGEST_ALONE = "to be ingested alone"
"""Said by a ledger row's Error when its blob's next ingestion must hold no other blob (its
ingestion with others failed for good in ADX: ``function_app.azure.ingest_failures``); ``expect``
is told so by the ledger mirror when the blob is claimed."""


class _Batch:
    """Blobs whose staging rows go in one ingestion: one gzip stream written by each blob's worker
    thread in whole-line chunks, and the future every waiting ``write_blob`` awaits (its result is
    the cause of a failure, or None)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, first: ContentBlob, name_room: int) -> None:
        self.first = first
        self.keys: list[BlobKey] = []
        self.name_room = name_room
        self.opened = loop.time()
        self.buffer = io.BytesIO()
        self.gzip = GzipWriter(self.buffer)
        self.lock = threading.Lock()
        self.size = 0
        self.encoding = 0
        self.sealed = False
        self.sending = False
        # The blobs' SchemaObservation, folded into one set of rows when the batch goes.
        self.observers: list[SchemaObserver] = []
        self.timer: asyncio.TimerHandle | None = None
        self.done: asyncio.Future[BaseException | None] = loop.create_future()

    def write(self, data: bytes | bytearray) -> int:
        """Append whole JSON lines (any thread); ``write_json_lines`` writes nothing else."""
        with self.lock:
            self.gzip.write(data)
            self.size += len(data)
        return len(data)

    def takes(self, key: BlobKey) -> bool:
        """Whether *key* can join: under the caps, and the stream name can still name every blob."""
        if key in self.keys:
            return True
        if len(self.keys) >= BATCH_MAX_BLOBS or self.size >= BATCH_MAX_BYTES:
            return False
        return len(_batch_token([*self.keys, key])) <= self.name_room


class AdxSink:
    """Sink into ADX through an azure-kusto-ingest client (queued or managed streaming)."""

    def __init__(self, ingest_client: Any, database: str, *, streaming: bool = False) -> None:
        self._client = ingest_client
        self._database = database
        self._streaming = streaming
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[int]] = set()
        self._open: _Batch | None = None
        self._sends: set[asyncio.Task[None]] = set()
        # Blobs claimed by this process whose rows have not come yet: (claimed at, alone).
        self._expected: dict[BlobKey, tuple[float, bool]] = {}
        self._name_room = (MAX_BLOB_NAME_CHARS - _TEMP_NAME_EXTRA - len(database) - len(STAGING_TABLE)
                           - _STREAM_NAME_EXTRA)

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

    # -- gathering the blobs written at once (see the module docstring) -------------------------

    def expect(self, blob: ContentBlob, *, alone: bool = False) -> None:
        """*blob* was claimed by this process: an open batch waits for its rows until it writes
        them or ``forget`` is called, but no longer than ``BATCH_LINGER_SECONDS`` after the batch's
        first blob or after this claim. With *alone*, its rows will go in an ingestion of their own."""
        self._expected[key_of(blob)] = (asyncio.get_running_loop().time(), alone)

    def forget(self, blob: ContentBlob) -> None:
        """No rows of *blob* are coming (it was settled, or its attempt ended): stop waiting for it."""
        if self._expected.pop(key_of(blob), None) is not None and self._open is not None:
            self._consider(self._open)

    def _others_coming(self, now: float) -> bool:
        """Whether a blob claimed within the last ``BATCH_LINGER_SECONDS`` has not written yet.

        A blob claimed earlier holds no batch back: one slow fetch would otherwise make every batch
        opened while it lasts wait the whole linger."""
        stale = [k for k, (at, _) in self._expected.items() if now - at > EXPECT_MAX_SECONDS]
        for key in stale:
            del self._expected[key]
        return any(now - at <= BATCH_LINGER_SECONDS for at, _ in self._expected.values())

    def _join(self, loop: asyncio.AbstractEventLoop, blob: ContentBlob, alone: bool) -> _Batch:
        key = key_of(blob)
        # A newline would shift every identity after it in a batch's stream name.
        alone = alone or any("\n" in part for part in key)
        batch = self._open
        if batch is not None and not alone and not batch.takes(key):
            self._seal(batch)
            batch = None
        if batch is None or alone:
            batch = _Batch(loop, blob, self._name_room)
            if alone:
                batch.sealed = True
            else:
                self._open = batch
                batch.timer = loop.call_later(BATCH_LINGER_SECONDS, self._seal, batch)
        if key not in batch.keys:
            batch.keys.append(key)
        batch.encoding += 1
        return batch

    def _close_to_joins(self, batch: _Batch) -> None:
        batch.sealed = True
        if self._open is batch:
            self._open = None
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None

    def _seal(self, batch: _Batch) -> None:
        """*batch* takes no more blobs; it goes as soon as its blobs' rows are written."""
        self._close_to_joins(batch)
        self._consider(batch)

    def _consider(self, batch: _Batch) -> None:
        """Send *batch* if its rows are all written and it is sealed, full, or waits for nobody."""
        if batch.sending or batch.encoding or not batch.keys:
            return
        loop = batch.done.get_loop()
        if not (batch.sealed or batch.size >= BATCH_MAX_BYTES or not self._others_coming(loop.time())):
            return
        self._close_to_joins(batch)
        batch.sending = True
        carried = self._take_pending()
        task = loop.create_task(self._send(batch, carried))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    def _encode(self, loop: asyncio.AbstractEventLoop, batch: _Batch, blob: ContentBlob,
                tables: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
        """Write *blob*'s staging rows into *batch* (worker thread); the batch learns it is done
        from here, not from the awaiting coroutine, which may have been cancelled meanwhile."""
        try:
            observer = tables.get(SCHEMA_OBSERVATION.name)
            if isinstance(observer, SchemaObserver):
                # Its rows go folded with the other blobs' when the batch goes (``_ingest_batch``).
                with batch.lock:
                    batch.observers.append(observer)
                tables = {name: rows for name, rows in tables.items() if name != SCHEMA_OBSERVATION.name}
            rows = staging_rows(blob.tenant_id, blob.content_type, blob.content_id, tables)
            write_json_lines(staging_table(), rows, batch)
        finally:
            loop.call_soon_threadsafe(self._encoded, batch)

    def _encoded(self, batch: _Batch) -> None:
        batch.encoding -= 1
        if batch.size >= BATCH_MAX_BYTES:
            self._seal(batch)
        else:
            self._consider(batch)

    def _ingest_batch(self, batch: _Batch, carried: list[tuple[str, dict[str, Any]]]) -> None:
        """Add the carried mirror rows, finish the gzip stream and hand it to the client (worker
        thread; every blob's rows are written by now)."""
        try:
            mirrored: dict[str, list[Mapping[str, Any]]] = {}
            for name, row in carried:
                mirrored.setdefault(name, []).append(row)
            merged: dict[str, Sequence[Mapping[str, Any]]] = dict(mirrored)
            if batch.observers:
                # One row per (group, path, type) for the whole batch instead of one per blob: a blob
                # of ~40 records has ~6 such rows a record, ~80 % of its staging rows (make bench).
                # SchemaObservationSummary folds them by the same rule (min, max, sum), so it reads
                # the same either way.
                merged[SCHEMA_OBSERVATION.name] = SchemaObserver.fold(batch.observers)
            if merged:
                first = batch.first
                write_json_lines(staging_table(),
                                 staging_rows(first.tenant_id, first.content_type, first.content_id, merged), batch)
            batch.gzip.close()
            batch.buffer.seek(0)
            # The temp blob is named {db}__{table}__{source_id}__{stream_name} and uploaded without
            # overwrite, so with a deterministic source id a retry of the same blobs would fail with
            # BlobAlreadyExists: the stream name is unique per attempt, and names the blobs for
            # failure reports (see ``batch_stream_name``). size is the uncompressed size: it becomes
            # RawDataSize, which the service uses to decide when its own batch is full.
            descriptor = StreamDescriptor(batch.buffer, source_id=ingestion_source_id(batch.keys, STAGING_TABLE),
                                          is_compressed=True, stream_name=batch_stream_name(batch.keys),
                                          size=batch.size)
            self._client.ingest_from_stream(descriptor, self._properties(staging_table()))
        except Exception as exc:
            raise AdxIngestError(STAGING_TABLE, batch.first.content_id, exc) from exc

    async def _send(self, batch: _Batch, carried: list[tuple[str, dict[str, Any]]]) -> None:
        waited = batch.done.get_loop().time() - batch.opened
        try:
            await asyncio.to_thread(self._ingest_batch, batch, carried)
        except AdxIngestError as exc:
            self._restore(carried)
            log.error("adx batch ingestion failed blobs=%d bytes=%d error=%s", len(batch.keys), batch.size, exc)
            batch.done.set_result(exc.cause)
            return
        else:
            batch.done.set_result(None)
        finally:
            # Cancelled (the loop is closing): the writers must not wait forever; their blobs are
            # retried, and the views absorb the rows if the ingestion went after all.
            if not batch.done.done():
                batch.done.set_result(RuntimeError("the shared ingestion was cancelled before it was accepted"))
        batch_log.debug("adx batch ingestion queued blobs=%d bytes=%d mirror_rows=%d waited_ms=%d", len(batch.keys),
                  batch.size, len(carried), round(waited * 1000))

    async def _write_staged(self, blob: ContentBlob, tables: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
        """Put *blob*'s staging rows in a batch and wait until the batch was accepted; raises
        AdxIngestError if it was not."""
        loop = asyncio.get_running_loop()
        _, alone = self._expected.pop(key_of(blob), (0.0, False))
        batch = self._join(loop, blob, alone)
        await asyncio.to_thread(self._encode, loop, batch, blob, tables)
        # Shielded: the future is every writer's; a cancelled writer must not cancel it for the others.
        cause = await asyncio.shield(batch.done)
        if cause is not None:
            raise AdxIngestError(STAGING_TABLE, blob.content_id, cause) from cause

    async def write_blob(self, blob: ContentBlob, tables: Mapping[str, Sequence[Mapping[str, Any]]]) -> WriteResult:
        """Hand the blob's rows to ADX: when it has rows of a table built from records, they go with
        the bookkeeping rows among *tables* into the staging table ``AuditIngest``, in ONE
        ingestion shared with the blobs this process writes at the same time and with the waiting
        mirror rows (see the module docstring and ``defer``), and ADX's update policies fan them
        out (``lake.staging``); any other table (the Entra raw table, search counts, bookkeeping
        rows written alone) gets one ingestion of its own.

        Returns ``inserted`` = the blob's records handed over, ``duplicates`` = 0: its
        ``AuditRecord`` rows when it has any (its derived, SchemaObservation and bookkeeping rows
        ride along uncounted, as the local lake counts a blob's rows), else every row (a table
        written on its own: the Entra raw table, bookkeeping rows). ADX does not de-duplicate on
        ingestion; the views de-duplicate at query time. Returns only once the
        ingestion holding the rows was accepted; queued ingestion is asynchronous, so accepted,
        not yet queryable. Raises AdxIngestError for the first ingestion that failed (earlier
        ones stay ingested; a retry re-ingests them and the views absorb the repeat; the mirror
        rows it was to carry wait for the next one; every blob of a failed shared ingestion gets
        the error), ValueError for a table that is not in the ADX schema or that ADX builds itself
        (the derived tables: ``derived_tables``; the rows come from ``compose.build_rows_for_adx``).
        """
        staged: dict[str, Sequence[Mapping[str, Any]]] = {}
        plan: list[tuple[Table, Sequence[Mapping[str, Any]]]] = []
        stage = any(tables.get(name) for name in RECORD_TABLES)
        for name, rows in tables.items():
            if name in BODIES and rows:
                # Its update policy builds it from the AuditRecord rows: rows sent too would be twice in it.
                raise ValueError(f"{name} is built by ADX from the AuditRecord rows, not written")
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
        # Counted as records, not as every row handed over: a blob of 35 records stages ~370 rows with
        # its SchemaObservation, and "inserted=373" beside "records=35" read as a defect. Not summing
        # len() also spares each blob's SchemaObserver from working out its row count.
        records = len(tables.get(AUDIT_RECORD.name) or ())
        if staged:
            try:
                await self._write_staged(blob, staged)
            except AdxIngestError as exc:
                log.error("adx ingestion failed tenant_id=%s content_type=%s content_id=%s table=%s error=%s",
                          blob.tenant_id, blob.content_type, blob.content_id, STAGING_TABLE, exc)
                raise
            log.debug("adx ingestion queued tenant_id=%s content_type=%s content_id=%s table=%s records=%d",
                      blob.tenant_id, blob.content_type, blob.content_id, STAGING_TABLE, records)
        for table, rows in plan:
            try:
                await asyncio.to_thread(self._ingest, blob, table, rows)
            except AdxIngestError as exc:
                log.error("adx ingestion failed tenant_id=%s content_type=%s content_id=%s table=%s error=%s",
                          blob.tenant_id, blob.content_type, blob.content_id, table.name, exc)
                raise
            log.debug("adx ingestion queued tenant_id=%s content_type=%s content_id=%s table=%s rows=%d",
                      blob.tenant_id, blob.content_type, blob.content_id, table.name, len(rows))
        return WriteResult(inserted=records or sum(len(rows) for _, rows in plan), duplicates=0)
