"""A blob written alone is one ingestion into AuditIngest; the update policies (their rendered KQL, run by duckdb-kql
in the fake ADX) make of it exactly the rows ``flatten_tables`` builds, table by table: those of the tables ADX
derives itself (MailItemAccess, SignIn) from the AuditRecord rows alone, the lock-step of their KQL with the
Python builders the local lake uses."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from function_app.azure.mirror import AdxMirroredState
from function_app.core.model import BlobStatus, ContentBlob
from function_app.lake.adx import AdxSink, encode_row
from function_app.lake.derived_tables import BODIES
from function_app.lake.schema import RECORD_TABLES, TABLES_BY_NAME, Kind, Table
from function_app.lake.staging import (
    CELL_BUDGET,
    DERIVED_COLUMN,
    STAGING_TABLE,
    TARGET_TABLES,
    staging_rows,
)
from function_app.records.flatten import BlobContext
from function_app.records.tables import flatten_tables
from tests.adapters.fake_adx import FakeAdx, Ingestion, apply_policies, dedup_view
from tests.samples import all_records

DB = "auditlake"
TENANT = "11111111-2222-3333-4444-555555555555"
CREATED = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


def blob(content_id: str) -> ContentBlob:
    return ContentBlob(TENANT, "Audit.General", content_id,
                       f"https://manage.office.com/api/v1.0/{TENANT}/activity/feed/audit/{content_id}", CREATED,
                       CREATED + timedelta(days=7))


def rows_of(records: list[Any], b: ContentBlob) -> dict[str, list[dict[str, Any]]]:
    """Every table's rows as the Python builders make them (what the local lake writes)."""
    ctx = BlobContext(b.tenant_id, b.content_type, b.content_id, b.content_created, datetime.now(UTC))
    return flatten_tables(records, ctx)


def for_adx(tables: Mapping[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """The tables the collector sends ADX (``compose.ADX_BUILT_TABLES``): not those its policies derive."""
    return {name: rows for name, rows in tables.items() if name not in BODIES}


def as_adx(table: Table, row: Mapping[str, Any]) -> dict[str, Any]:
    """*row* as ADX holds it: the JSON the sink writes, and no null string (ADX has none; the
    policies' ``tostring`` gives '', as ingestion through a mapping does)."""
    data: dict[str, Any] = json.loads(encode_row(table, row))
    for column in table.columns:
        if column.kind is Kind.STRING and data[column.name] is None:
            data[column.name] = ""
    return data


def canonical(table: Table, rows: list[dict[str, Any]]) -> Counter[str]:
    return Counter(json.dumps(as_adx(table, r), sort_keys=True) for r in rows)


def per_table(ingestions: list[Ingestion]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for i in ingestions:
        out.setdefault(i.table, []).extend(i.rows)
    return out


@pytest.fixture
def drained(fake: FakeAdx) -> FakeAdx:
    fake.read_ingestions()
    fake.raw_ingestions.clear()
    return fake


@pytest.fixture(scope="module")
def sample_records() -> list[Any]:
    return [record for _, record in all_records()]


def test_a_blob_is_one_ingestion_and_the_policies_make_exactly_the_flattened_rows(
    drained: FakeAdx, sample_records: list[Any]
) -> None:
    b = blob("samples")
    tables = rows_of(sample_records, b)
    # The samples hold MailItemsAccessed, directory (RecordType 8) and sign-in records.
    assert all(tables[name] for name in RECORD_TABLES), {n: len(r) for n, r in tables.items()}
    assert any(r["RecordType"] == 8 for r in tables["AuditRecord"])
    assert set(BODIES) == {"MailItemAccess", "SignIn"}
    sent = for_adx(tables)
    sink = AdxSink.create(drained.uri, DB)
    result = asyncio.run(sink.write_blob(b, sent))
    sink.close()
    # The blob's records, not its staged rows (derived and SchemaObservation rows ride along).
    assert result.inserted == len(sent["AuditRecord"]) < sum(len(r) for r in sent.values())

    [raw] = drained.read_ingestions(expand=False)
    assert raw.table == STAGING_TABLE
    got = apply_policies(raw.rows)
    for name in RECORD_TABLES:
        table = TABLES_BY_NAME[name]
        assert canonical(table, got[name]) == canonical(table, tables[name]), name
    assert got["ContentLedger"] == got["CollectorRun"] == []
    # AuditRecord keeps the record order; the raw record is whole in AuditData.
    assert [r["Id"] for r in got["AuditRecord"]] == [r["Id"] for r in tables["AuditRecord"]]
    assert [r["AuditData"] for r in got["AuditRecord"]] == json.loads(json.dumps(sample_records))


def test_a_record_seen_twice_appears_once_through_the_dedup_views(drained: FakeAdx,
                                                                   sample_records: list[Any]) -> None:
    first, again = blob("first"), blob("again")
    sink = AdxSink.create(drained.uri, DB)
    written = {}
    for b, records in ((first, sample_records), (again, sample_records)):
        written[b.content_id] = rows_of(records, b)
        asyncio.run(sink.write_blob(b, for_adx(written[b.content_id])))
    sink.close()
    assert len(drained.read_ingestions(expand=False)) == 2
    tables = per_table([i for raw in drained.raw_ingestions for i in _fan(raw)])
    for name in ("AuditRecord", "MailItemAccess", "DirectoryChange", "SignIn"):
        table = TABLES_BY_NAME[name]
        assert len(tables[name]) > len(written["first"][name])  # the re-delivered rows arrived again
        view = dedup_view(name, tables[name])
        keys = [tuple(as_adx(table, r)[k] for k in table.key) for r in written["first"][name]]
        assert sorted(tuple(r[k] for k in table.key) for r in view) == sorted(set(keys)), name


def _fan(raw: Ingestion) -> list[Ingestion]:
    from tests.adapters.fake_adx import fan_out

    return fan_out(raw)


def test_derived_rows_past_the_cell_budget_travel_aside_and_every_cell_stays_under_it(
    sample_records: list[Any]
) -> None:
    b = blob("big")
    tables = for_adx(rows_of(sample_records, b))
    changes = tables["DirectoryChange"]
    # One record changing thousands of properties, beside the others.
    big_id = changes[0]["RecordId"]
    many = [replace_row(changes[0], Property=f"Extension_{i}") for i in range(3000)]
    own = sum(1 for r in changes if r["RecordId"] == big_id)
    tables["DirectoryChange"] = [*changes[:own], *many, *changes[own:]]  # in record order
    budget = 64 * 1024
    rows = list(staging_rows(b.tenant_id, b.content_type, b.content_id, tables, budget=budget))
    for row in rows:
        derived = row[DERIVED_COLUMN]
        if derived is not None:
            # The budget counts the rows and their commas; the table's name and brackets come on top.
            assert len(orjson.dumps(derived)) <= budget + 64
    record_rows = [r for r in rows if r["Id"]]
    assert [r["Id"] for r in record_rows] == [r["Id"] for r in tables["AuditRecord"]]
    big = next(r for r in record_rows if r["Id"] == big_id)
    assert big[DERIVED_COLUMN] is None  # its rows went aside
    size = sum(len(encode_row(TABLES_BY_NAME["DirectoryChange"], r)) for r in many)
    assert sum(1 for r in rows if not r["Id"] and "DirectoryChange" in r[DERIVED_COLUMN]) >= size // budget
    # After the fan-out every row is there exactly once.
    lines = [json.loads(encode_row(staging_table_of(), r)) for r in rows]
    got = apply_policies(lines)
    table = TABLES_BY_NAME["DirectoryChange"]
    assert canonical(table, got["DirectoryChange"]) == canonical(table, tables["DirectoryChange"])
    assert CELL_BUDGET <= 512 * 1024  # "well under" ADX's 1 MB default for a dynamic value


def replace_row(row: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**row, **changes}


def staging_table_of() -> Table:
    from function_app.lake.staging import staging_table

    return staging_table()


class MemoryStore:
    """Just enough of a claiming state store for the mirror: mark returns the row written."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    async def mark(self, blob: ContentBlob, status: BlobStatus, *, at: datetime, records: int | None = None,
                   size: int | None = None, error: str | None = None) -> Mapping[str, Any]:
        row = self.rows.setdefault(blob.content_id, {"Attempts": 0, "ListedAt": CREATED})
        row.update(Status=status.value, FetchedAt=at, Records=records, Bytes=size, Error=error,
                   Attempts=row["Attempts"] + 1, IngestedAt=at if status is BlobStatus.INGESTED else None)
        return dict(row)


def test_the_content_path_makes_one_ingestion_per_blob_ledger_mirror_included(
    drained: FakeAdx, sample_records: list[Any]
) -> None:
    """Each blob's ledger mark rides on the next blob's staging ingestion; the last waits at most
    MIRROR_MAX_DELAY_SECONDS (here: until close) and goes in one flush."""
    blobs = [blob(f"b{i}") for i in range(6)]

    async def run() -> int:
        sink = AdxSink.create(drained.uri, DB)
        mirror = AdxMirroredState(MemoryStore(), sink)  # type: ignore[arg-type]
        for b in blobs:
            await sink.write_blob(b, for_adx(rows_of(sample_records[:40], b)))
            await mirror.mark(b, BlobStatus.INGESTED, at=datetime.now(UTC), records=40, size=1000)
        during = len(drained.read_ingestions(expand=False))
        assert sink.pending == 1
        await asyncio.to_thread(sink.close)
        return during

    during = asyncio.run(run())
    assert during == len(blobs)  # one per blob, the ledger mirror included
    drained.read_ingestions()
    raw = drained.raw_ingestions
    assert len(raw) == len(blobs) + 1  # the last mark, flushed at close
    assert [i.table for i in raw] == [STAGING_TABLE] * len(blobs) + ["ContentLedger"]
    ledger = per_table([i for r in raw for i in _fan(r)])["ContentLedger"]
    assert sorted(r["ContentId"] for r in ledger) == sorted(b.content_id for b in blobs)
    assert {r["Status"] for r in ledger} == {"ingested"}
    assert set(TARGET_TABLES) >= {"ContentLedger", "CollectorRun"}


def test_a_deferred_mirror_row_is_flushed_within_the_delay(drained: FakeAdx, monkeypatch: pytest.MonkeyPatch) -> None:
    import function_app.lake.adx as adx

    monkeypatch.setattr(adx, "MIRROR_MAX_DELAY_SECONDS", 0.2)
    b = blob("idle")

    async def run() -> None:
        sink = AdxSink.create(drained.uri, DB)
        mirror = AdxMirroredState(MemoryStore(), sink)  # type: ignore[arg-type]
        await mirror.mark(b, BlobStatus.FAILED, at=datetime.now(UTC), error="boom")
        assert sink.pending == 1
        for _ in range(100):
            await asyncio.sleep(0.05)
            if sink.pending == 0 and not sink._flushes:
                break
        assert sink.pending == 0
        await asyncio.to_thread(sink.close)

    asyncio.run(run())
    [raw] = drained.read_ingestions()
    assert raw.table == "ContentLedger" and raw.rows[0]["Status"] == "failed" and raw.rows[0]["Error"] == "boom"


def test_a_failed_staging_ingestion_keeps_the_mirror_rows_it_was_to_carry(drained: FakeAdx) -> None:
    class Refusing:
        def ingest_from_stream(self, descriptor: Any, properties: Any) -> None:
            raise ConnectionError("refused")

        def close(self) -> None:
            pass

    sink = AdxSink(Refusing(), DB)
    b = blob("refused")
    sink.defer("ContentLedger", [{"TenantId": TENANT, "ContentId": "earlier", "Status": "ingested"}])
    with pytest.raises(Exception, match="refused"):
        asyncio.run(sink.write_blob(b, {"AuditRecord": rows_of([{"Id": "x", "RecordType": 1}], b)["AuditRecord"]}))
    assert sink.pending == 1


def test_the_staging_row_is_every_audit_record_column_then_derived() -> None:
    staging = staging_table_of()
    audit = TABLES_BY_NAME["AuditRecord"]
    assert staging.column_names == (*audit.column_names, DERIVED_COLUMN)
    assert staging.column(DERIVED_COLUMN).kind is Kind.DYNAMIC
    assert replace(staging).name == STAGING_TABLE


def test_derived_rows_out_of_record_order_go_aside_and_come_out_once(sample_records: list[Any]) -> None:
    b = blob("order")
    tables = for_adx(rows_of(sample_records, b))
    changes = tables["DirectoryChange"]
    assert len({r["RecordId"] for r in changes}) >= 3
    # The last record's rows moved to the front (its record comes later), and one naming no record of the blob.
    last = [r for r in changes if r["RecordId"] == changes[-1]["RecordId"]]
    rest = [r for r in changes if r["RecordId"] != changes[-1]["RecordId"]]
    stray = replace_row(changes[0], RecordId="00000000-dead-beef-0000-000000000000")
    tables["DirectoryChange"] = [*last, *rest, stray]
    rows = list(staging_rows(b.tenant_id, b.content_type, b.content_id, tables))
    aside = [r for r in rows if not r["Id"] and r[DERIVED_COLUMN] and "DirectoryChange" in r[DERIVED_COLUMN]]
    assert aside, "the rows that broke the order went aside"
    lines = [json.loads(encode_row(staging_table_of(), r)) for r in rows]
    got = apply_policies(lines)
    table = TABLES_BY_NAME["DirectoryChange"]
    assert canonical(table, got["DirectoryChange"]) == canonical(table, tables["DirectoryChange"])


def test_rows_of_a_table_adx_derives_are_refused_with_the_reason(sample_records: list[Any]) -> None:
    b = blob("refused-derived")
    tables = rows_of(sample_records, b)
    assert tables["SignIn"]
    with pytest.raises(ValueError, match="update policy builds it from the AuditRecord rows"):
        list(staging_rows(b.tenant_id, b.content_type, b.content_id, tables))
    sink = AdxSink.create("http://127.0.0.1:9", DB)
    try:
        with pytest.raises(ValueError, match="built by ADX from the AuditRecord rows"):
            asyncio.run(sink.write_blob(b, {"AuditRecord": tables["AuditRecord"], "SignIn": tables["SignIn"]}))
    finally:
        sink.close()
