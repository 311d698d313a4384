"""AdxSink through the real azure-kusto-ingest client, against a fake DM endpoint and Azurite."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import socket
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from azure.kusto.data import KustoConnectionStringBuilder
from azure.kusto.ingest import QueuedIngestClient

from function_app.core.model import ContentBlob
from function_app.lake.adx import (
    AdxIngestError,
    AdxSink,
    encode_row,
    gzipped_json_lines,
    source_id,
    to_json_lines,
)
from function_app.lake.schema import (
    AUDIT_RECORD,
    COLLECTOR_RUN,
    CONTENT_LEDGER,
    Kind,
    Table,
    adx_json_mapping,
    json_mapping_name,
)
from function_app.lake.staging import STAGING_TABLE, staging_table
from tests.adapters.fake_adx import IDENTITY_TOKEN, FakeAdx, Ingestion, fan_out

DB = "auditlake"
TENANT = "11111111-2222-3333-4444-555555555555"
CREATED = datetime(2026, 11, 21, 10, 0, 0, 123000, tzinfo=UTC)
CONTENT_ID = "20261121100000123$20261121100000123$audit_exchange$Audit_Exchange$emea0001"
BLOB = ContentBlob(TENANT, "Audit.Exchange", CONTENT_ID,
                   f"https://manage.office.com/api/v1.0/{TENANT}/activity/feed/audit/x", CREATED,
                   CREATED + timedelta(days=7))


def audit_row(i: int) -> dict[str, Any]:
    record = {"Id": f"id-{i}", "RecordType": 2, "Operation": "MailItemsAccessed", "CreationTime": "2026-11-21T09:59:58",
              "Nested": {"a": [1, 2, {"b": None}]}, "Unicode": "Zoë ✓"}
    return {
        "TimeGenerated": datetime(2026, 11, 21, 9, 59, 58, 456789, tzinfo=UTC),
        "Id": f"id-{i}", "TenantId": TENANT, "ContentType": BLOB.content_type, "ContentId": BLOB.content_id,
        # An aware value in another zone must arrive as UTC.
        "ContentCreated": CREATED.astimezone(timezone(timedelta(hours=2))),
        "RecordType": 2, "RecordTypeName": "ExchangeItem", "Operation": "MailItemsAccessed", "Workload": "Exchange",
        "ResultStatus": "Succeeded", "UserId": "Alice@Contoso.com", "UserPrincipal": "alice@contoso.com",
        "UserKey": "1003", "UserType": 0, "UserTypeName": "Regular", "ClientIP": "203.0.113.7", "ClientPort": 443,
        "ClientIPRaw": "[203.0.113.7]:443", "ClientIPKind": "public", "ObjectId": None, "AppId": "app",
        "SessionId": "s-1", "Properties": {"Folder": "/Inbox", "Count": i}, "AuditData": record,
        "Quality": ["client_ip_had_port"], "IngestedAt": datetime(2026, 11, 21, 10, 1, tzinfo=UTC),
        "NotAColumn": "dropped",
    }


def ledger_row() -> dict[str, Any]:
    return {
        "TenantId": TENANT, "ContentType": BLOB.content_type, "ContentId": BLOB.content_id,
        "ContentUri": BLOB.content_uri, "ContentCreated": CREATED, "ContentExpiration": BLOB.content_expiration,
        "ListedAt": CREATED + timedelta(minutes=1), "FetchedAt": CREATED + timedelta(minutes=2),
        "IngestedAt": CREATED + timedelta(minutes=3), "Records": 5_000_000_000, "Bytes": 1234,
        "Status": "ingested", "Attempts": 1, "Error": None,
    }


@pytest.fixture
def drained(fake: FakeAdx) -> FakeAdx:
    fake.read_ingestions()
    fake.streamed.clear()
    return fake


class Recording:
    """Delegates to the real client and keeps what it was given."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[Any, Any]] = []

    def ingest_from_stream(self, descriptor: Any, properties: Any) -> Any:
        self.calls.append((descriptor, properties))
        return self.inner.ingest_from_stream(descriptor, properties)

    def close(self) -> None:
        self.inner.close()


def by_table(ingestions: list[Ingestion]) -> dict[str, Ingestion]:
    return {i.table: i for i in ingestions}


def parse_dt(value: str) -> datetime:
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value[:-1] + "+00:00")


def assert_valid(table: Table, row: dict[str, Any]) -> None:
    assert list(row) == list(table.column_names)
    for column in table.columns:
        value = row[column.name]
        if value is None:
            continue
        match column.kind:
            case Kind.DATETIME:
                assert isinstance(value, str)
                parse_dt(value)
            case Kind.INT | Kind.LONG:
                assert isinstance(value, int) and not isinstance(value, bool)
            case Kind.STRING:
                assert isinstance(value, str)
            case Kind.DYNAMIC:
                assert isinstance(value, dict | list)
            case _:
                pass


KQL_TABLES = Path(__file__).resolve().parents[2] / "infra" / "kql" / "tables.kql"


def mapping_paths(table: Table) -> dict[str, str]:
    """Column -> Path of the table's mapping as deployed: parsed from the committed infra/kql/tables.kql."""
    commands = KQL_TABLES.read_text(encoding="utf-8").split("\n\n")
    found = [c.strip() for c in commands if c.startswith(f".create-or-alter table {table.name} ingestion json")]
    assert len(found) == 1, f"no single JSON mapping for {table.name} in {KQL_TABLES}"
    assert found[0] == adx_json_mapping(table)
    m = re.fullmatch(r'\.create-or-alter table (\w+) ingestion json mapping "(\w+)" \'(.*)\'', found[0], re.S)
    assert m, found[0]
    assert m.group(1) == table.name
    assert m.group(2) == json_mapping_name(table)
    return {e["column"]: e["Properties"]["Path"] for e in json.loads(m.group(3))}


def test_rows_arrive_in_adx_shape_in_one_staging_ingestion_with_its_mapping(drained: FakeAdx) -> None:
    client = Recording(QueuedIngestClient(KustoConnectionStringBuilder.with_no_authentication(drained.uri)))
    sink = AdxSink(client, DB)
    rows = [audit_row(1), audit_row(2)]
    result = asyncio.run(sink.write_blob(BLOB, {"AuditRecord": rows, "ContentLedger": [ledger_row()],
                                                "CollectorRun": []}))
    sink.close()
    # Counted as records (its AuditRecord rows), as the local lake counts them: the ledger row rides along.
    assert (result.inserted, result.duplicates) == (2, 0)

    # The record rows and the bookkeeping row travel in ONE ingestion into the staging table.
    [raw] = drained.read_ingestions(expand=False)
    staging = staging_table()
    assert raw.table == STAGING_TABLE == "AuditIngest"
    assert raw.database == DB
    props = raw.additional_properties
    assert props["format"] == "json"
    assert props["ingestionMappingReference"] == json_mapping_name(staging) == "AuditIngest_json"
    assert props["ingestionMappingType"] == "Json"
    assert props["authorizationContext"] == IDENTITY_TOKEN
    assert "tags" not in props and "ingestIfNotExists" not in props
    assert raw.source_id == str(source_id(BLOB, STAGING_TABLE))
    assert raw.blob_name.startswith(f"{DB}__{STAGING_TABLE}__{raw.source_id}__")
    assert raw.blob_name.endswith(".json.gz")
    assert raw.message["RawDataSize"] > 0
    # The mapping the reference names takes every column from the same-named field.
    assert mapping_paths(staging) == {c: f"$.{c}" for c in staging.column_names}
    for row in raw.rows:
        assert list(row) == list(staging.column_names)
    # Two record rows, then one aside row (Id empty) carrying the ledger row.
    assert [r["Id"] for r in raw.rows] == ["id-1", "id-2", ""]
    assert raw.rows[0]["Derived"] is None
    assert raw.rows[2]["Derived"]["ContentLedger"][0]["ContentId"] == BLOB.content_id

    got = by_table(fan_out(raw))
    # An empty table gets nothing; MailItemAccess is derived by its policy from the two
    # MailItemsAccessed records (one row each: they list no folder).
    assert set(got) == {"AuditRecord", "ContentLedger", "MailItemAccess"}
    assert [r["RecordId"] for r in got["MailItemAccess"].rows] == ["id-1", "id-2"]
    for table in (AUDIT_RECORD, CONTENT_LEDGER):
        for row in got[table.name].rows:
            assert_valid(table, row)

    audit = got["AuditRecord"].rows
    assert [r["Id"] for r in audit] == ["id-1", "id-2"]
    for sent, back in zip(rows, audit, strict=True):
        assert parse_dt(back["TimeGenerated"]) == sent["TimeGenerated"]
        assert back["ContentCreated"] == "2026-11-21T10:00:00.123000Z"
        assert back["AuditData"] == sent["AuditData"]  # nested JSON, not a string
        assert back["Properties"] == sent["Properties"]
        assert back["Quality"] == sent["Quality"]
        assert back["ObjectId"] is None
        for name in ("UserId", "UserPrincipal", "RecordType", "UserType", "ClientPort", "ClientIPRaw"):
            assert back[name] == sent[name]

    ledger = got["ContentLedger"].rows
    assert len(ledger) == 1
    sent_ledger = ledger_row()
    for name, value in sent_ledger.items():
        if isinstance(value, datetime):
            assert parse_dt(ledger[0][name]) == value
        elif value is None and CONTENT_LEDGER.column(name).kind is Kind.STRING:
            assert ledger[0][name] == ""  # tostring(): ADX keeps no null string
        else:
            assert ledger[0][name] == value

    assert len(client.calls) == 1
    assert drained.commands().count(".get kusto identity token") >= 1


def test_a_row_of_exactly_the_columns_is_encoded_as_given_and_never_changed() -> None:
    # The exact-columns row is encoded without a copy; its non-UTC value still arrives as UTC, and
    # the caller's row keeps its own value.
    exact = {name: audit_row(1).get(name) for name in AUDIT_RECORD.column_names}
    zone = exact["ContentCreated"].tzinfo
    assert zone is not UTC and list(exact) == list(AUDIT_RECORD.column_names)
    with_extra = audit_row(1)
    assert encode_row(AUDIT_RECORD, exact) == encode_row(AUDIT_RECORD, with_extra)
    assert exact["ContentCreated"].tzinfo is zone
    assert json.loads(encode_row(AUDIT_RECORD, exact))["ContentCreated"] == "2026-11-21T10:00:00.123000Z"
    in_utc = {**exact, "ContentCreated": CREATED}
    assert encode_row(AUDIT_RECORD, in_utc) == encode_row(AUDIT_RECORD, exact)


def test_bookkeeping_rows_alone_and_other_tables_get_their_own_ingestions(drained: FakeAdx) -> None:
    client = Recording(QueuedIngestClient(KustoConnectionStringBuilder.with_no_authentication(drained.uri)))
    sink = AdxSink(client, DB)
    asyncio.run(sink.write_blob(BLOB, {"ContentLedger": [ledger_row()],
                                       "CollectorRun": [{"RunId": "r", "TenantId": TENANT, "Errors": []}]}))
    sink.close()
    got = by_table(drained.read_ingestions(expand=False))
    assert set(got) == {"ContentLedger", "CollectorRun"}
    for table in (CONTENT_LEDGER, COLLECTOR_RUN):
        ingestion = got[table.name]
        assert ingestion.additional_properties["ingestionMappingReference"] == json_mapping_name(table)
        assert ingestion.source_id == str(source_id(BLOB, table.name))
        assert mapping_paths(table) == {c: f"$.{c}" for c in table.column_names}
        for row in ingestion.rows:
            assert_valid(table, row)
    # The SDK writes into additional_properties: each call must have had its own dict.
    dicts = [p.additional_properties for _, p in client.calls]
    assert len(dicts) == 2 and dicts[0] is not dicts[1]


def test_source_id_is_deterministic_per_blob_and_table(drained: FakeAdx) -> None:
    sink = AdxSink.create(drained.uri, DB)
    for _ in range(2):
        asyncio.run(sink.write_blob(BLOB, {"AuditRecord": [audit_row(1)]}))
    other = ContentBlob(TENANT, BLOB.content_type, "other", BLOB.content_uri, CREATED, BLOB.content_expiration)
    asyncio.run(sink.write_blob(other, {"AuditRecord": [audit_row(1)]}))
    sink.close()
    got = drained.read_ingestions(expand=False)
    ids = [i.source_id for i in got]
    # A retry of the same blob is a new temp blob (no BlobAlreadyExists) with the same source id.
    assert got[0].blob_name != got[1].blob_name
    assert ids[0] == ids[1] == str(source_id(BLOB, STAGING_TABLE))
    assert ids[2] == str(source_id(other, STAGING_TABLE)) != ids[0]
    assert source_id(BLOB, "AuditRecord") != source_id(BLOB, "ContentLedger")
    assert uuid.UUID(ids[0]).version == 5


def test_rewriting_a_blob_adds_its_rows_again_for_adx_to_deduplicate(drained: FakeAdx) -> None:
    sink = AdxSink.create(drained.uri, DB)
    first = asyncio.run(sink.write_blob(BLOB, {"AuditRecord": [audit_row(1)]}))
    again = asyncio.run(sink.write_blob(BLOB, {"AuditRecord": [audit_row(1)]}))
    sink.close()
    assert first == again and again.inserted == 1 and again.duplicates == 0
    got = [i for i in drained.read_ingestions() if i.table == "AuditRecord"]
    assert len(got) == 2 and got[0].rows == got[1].rows


def test_streaming_sends_json_with_the_mapping_to_the_engine(drained: FakeAdx) -> None:
    sink = AdxSink.create(drained.uri, DB, engine_uri=drained.uri, streaming=True)
    result = asyncio.run(sink.write_blob(BLOB, {"ContentLedger": [ledger_row()]}))
    sink.close()
    assert result.inserted == 1
    assert len(drained.streamed) == 1
    streamed = drained.streamed[0]
    assert (streamed.database, streamed.table) == (DB, "ContentLedger")
    assert streamed.query["streamFormat"] == ["json"]
    assert streamed.query["mappingName"] == ["ContentLedger_json"]
    assert_valid(CONTENT_LEDGER, streamed.rows[0])
    assert drained.read_ingestions() == []


def test_sdk_failure_is_raised_as_adx_ingest_error_naming_table_and_blob() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = AdxSink.create(f"http://127.0.0.1:{port}", DB)
    with pytest.raises(AdxIngestError) as info:
        asyncio.run(sink.write_blob(BLOB, {"AuditRecord": [audit_row(1)]}))
    sink.close()
    assert info.value.table == STAGING_TABLE
    assert info.value.content_id == BLOB.content_id
    assert info.value.cause is not None
    assert STAGING_TABLE in str(info.value) and BLOB.content_id in str(info.value)


def test_a_table_outside_the_adx_schema_is_refused(drained: FakeAdx) -> None:
    sink = AdxSink.create(drained.uri, DB)
    with pytest.raises(ValueError):
        asyncio.run(sink.write_blob(BLOB, {"Checkpoint": [{"TenantId": TENANT}]}))
    with pytest.raises(ValueError):
        asyncio.run(sink.write_blob(BLOB, {"Nope": []}))
    sink.close()


def test_json_lines_have_exactly_the_columns_in_order() -> None:
    lines = to_json_lines(COLLECTOR_RUN, [{"RunId": "r", "Errors": ["x"], "Extra": 1}]).splitlines()
    row = json.loads(lines[0])
    assert list(row) == list(COLLECTOR_RUN.column_names)
    assert row["Errors"] == ["x"] and row["StartedAt"] is None


def test_gzipped_lines_are_standard_gzip_of_the_json_lines_and_the_same_bytes_every_time() -> None:
    rows = [{"RunId": f"r{n}", "Errors": ["x" * n], "StartedAt": None} for n in range(3000)]
    first, size = gzipped_json_lines(COLLECTOR_RUN, rows)
    again, _ = gzipped_json_lines(COLLECTOR_RUN, rows)
    plain = to_json_lines(COLLECTOR_RUN, rows)
    assert size == len(plain) > 1024 * 1024  # more than one chunk went through the compressor
    assert gzip.decompress(first.getvalue()) == plain
    # A retry uploads the same payload: no time stamp or other varying byte in the stream.
    assert first.getvalue() == again.getvalue()
    assert len(first.getvalue()) < len(plain) // 5
