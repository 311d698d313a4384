"""The ADX sink: each table's rows of one blob become one JSON-lines ingestion.

Queued ingestion by default (the data-management service batches; see the table's
ingestion batching policy), or managed streaming (falls back to queued above 4 MB or on
transient errors). Neither path de-duplicates: re-writing a blob adds its rows again and
the materialized views in ``infra/kql`` drop the duplicates at query time. Ingest-by tags
are deliberately not used: streaming ingestion ignores them, and ADX advises against one
tag per ingestion.

The Kusto SDK is synchronous (``requests``); every call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

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

from function_app.core.model import ContentBlob, WriteResult, utc
from function_app.lake.schema import TABLES_BY_NAME, Kind, Table, json_mapping_name

log = logging.getLogger(__name__)

# Namespace of the per-(blob, table) source ids; fixed forever so retries of one blob
# carry the same id in ADX's ingestion status and failure reports.
SOURCE_ID_NAMESPACE = uuid.UUID("5b0f8c52-3f0e-4c55-9a43-2f1d6f7a0c11")

_DUMPS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS


_SAS_SIGNATURE = re.compile(r"(?i)\bsig=[^&\s'\"]+")


def redact(text: str) -> str:
    """*text* with SAS signatures blanked: SDK errors can quote the storage URLs they used."""
    return _SAS_SIGNATURE.sub("sig=REDACTED", text)


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


def source_id(blob: ContentBlob, table: str) -> uuid.UUID:
    """The deterministic ingestion source id of *table*'s rows of *blob*."""
    return uuid.uuid5(SOURCE_ID_NAMESPACE, "\n".join((blob.tenant_id, blob.content_type, blob.content_id, table)))


def _cell(kind: Kind, value: Any) -> Any:
    if kind is Kind.DATETIME and isinstance(value, datetime):
        # Aware values in another zone would otherwise keep their offset.
        return utc(value)
    return value


def to_json_lines(table: Table, rows: Sequence[Mapping[str, Any]]) -> bytes:
    """*rows* as JSON lines: exactly *table*'s columns (missing ones null, extra keys
    dropped), datetimes ISO 8601 UTC with ``Z``, dynamic values as nested JSON."""
    columns = [(c.name, c.kind) for c in table.columns]
    out = bytearray()
    for row in rows:
        out += orjson.dumps({name: _cell(kind, row.get(name)) for name, kind in columns}, option=_DUMPS)
        out += b"\n"
    return bytes(out)


def _gzip(data: bytes) -> bytes:
    # mtime=0 keeps the payload byte-identical across retries of the same rows.
    return gzip.compress(data, compresslevel=6, mtime=0)


def _kcsb(uri: str, credential: TokenCredential | None) -> Any:
    if uri.startswith("http://"):
        # Only a local fake or emulator speaks plain http; it takes no token.
        return KustoConnectionStringBuilder.with_no_authentication(uri)
    # The Kusto SDK has no default chain of its own: without a credential it refuses.
    return KustoConnectionStringBuilder.with_azure_token_credential(uri, credential or DefaultAzureCredential())


class AdxSink:
    """Sink into ADX through an azure-kusto-ingest client (queued or managed streaming)."""

    def __init__(self, ingest_client: Any, database: str, *, streaming: bool = False) -> None:
        self._client = ingest_client
        self._database = database
        self._streaming = streaming

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

    def close(self) -> None:
        """Release the client's HTTP sessions."""
        self._client.close()

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

    def _ingest(self, blob: ContentBlob, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
        raw = to_json_lines(table, rows)
        # The temp blob is named {db}__{table}__{source_id}__{stream_name} and uploaded
        # without overwrite, so with a deterministic source id a retry of the same blob
        # would fail with BlobAlreadyExists: the stream name is unique per attempt. It
        # must end in .gz, which is how the service knows the blob is compressed.
        # size is the uncompressed size: it becomes RawDataSize, which the service uses to
        # decide when a batch is full.
        descriptor = StreamDescriptor(io.BytesIO(_gzip(raw)), source_id=source_id(blob, table.name),
                                      is_compressed=True, stream_name=f"{uuid.uuid4().hex}.json.gz",
                                      size=len(raw))
        try:
            self._client.ingest_from_stream(descriptor, self._properties(table))
        except Exception as exc:
            raise AdxIngestError(table.name, blob.content_id, exc) from exc

    async def write_blob(self, blob: ContentBlob, tables: Mapping[str, Sequence[Mapping[str, Any]]]) -> WriteResult:
        """Hand every non-empty table's rows to ADX, one ingestion per table.

        Returns ``inserted`` = all rows handed over and ``duplicates`` = 0: ADX does not
        de-duplicate on ingestion; the views de-duplicate at query time. Queued ingestion
        is asynchronous, so success means accepted, not yet queryable. Raises
        AdxIngestError for the first table that failed (earlier tables stay ingested; a
        retry re-ingests them and the views absorb the repeat), ValueError for a table
        that is not in the ADX schema.
        """
        plan: list[tuple[Table, Sequence[Mapping[str, Any]]]] = []
        for name, rows in tables.items():
            table = TABLES_BY_NAME.get(name)
            if table is None or table.local_only:
                raise ValueError(f"{name} is not an ADX table")
            if rows:
                plan.append((table, rows))
        inserted = 0
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
