"""Every table of a blob from one pass (`flatten_tables`), in the local lake, and `auditlake flatten --table`."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from auditlake.cli import main
from auditlake.lake.duckdb_lake import LocalLake
from function_app.compose import build_rows, build_rows_for_adx
from function_app.core.model import ContentBlob
from function_app.lake.schema import RECORD_TABLES, TABLES_BY_NAME
from function_app.records import tables
from function_app.records.flatten import BlobContext
from function_app.records.reader import DeliveredRecords, parse_content
from function_app.records.tables import flatten_tables

from ._samples import all_records, blob_context, require_samples

require_samples()

CTX = blob_context()
SAMPLE_RECORDS = [record for _, record in all_records()]


def test_one_pass_gives_every_table_with_well_formed_rows() -> None:
    out = flatten_tables(SAMPLE_RECORDS, CTX)
    assert tuple(out) == RECORD_TABLES
    assert len(out["AuditRecord"]) == len(SAMPLE_RECORDS)
    for name, rows in out.items():
        table = TABLES_BY_NAME[name]
        assert rows, f"no {name} rows from the samples"
        for row in rows:
            assert set(row) == set(table.column_names)
            assert all(row[k] is not None for k in table.key), (name, row)


def test_build_rows_is_flatten_tables_for_a_blob() -> None:
    blob = ContentBlob("t", "Audit.General", "c1", "https://x/c1", CTX.content_created or datetime.now(UTC),
                       datetime.now(UTC) + timedelta(days=1))
    out = build_rows(SAMPLE_RECORDS, blob, CTX.ingested_at)
    assert set(out) == set(RECORD_TABLES)
    assert all(r["ContentId"] == "c1" for r in out["AuditRecord"])


def test_only_the_asked_tables_are_returned() -> None:
    out = flatten_tables(SAMPLE_RECORDS, CTX, ("SignIn",))
    assert list(out) == ["SignIn"] and out["SignIn"]
    with pytest.raises(ValueError, match="ContentLedger"):
        flatten_tables([], CTX, ("ContentLedger",))


def test_a_record_that_cannot_be_flattened_gets_its_audit_row_only() -> None:
    out = flatten_tables([["not", "a", "record"], "text", 7], CTX)
    assert len(out["AuditRecord"]) == 3
    assert all(r["Quality"] == ["record:not-an-object"] for r in out["AuditRecord"])
    assert not any(out[name] for name in RECORD_TABLES if name != "AuditRecord")


def test_a_failing_builder_costs_only_its_rows(monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    def broken(record: Any, row: Any) -> list[Any]:
        raise RuntimeError("bug")

    monkeypatch.setattr(tables, "build_sign_in", broken)
    with caplog.at_level(logging.ERROR):
        out = flatten_tables(SAMPLE_RECORDS, CTX)
    assert out["SignIn"] == [] and len(out["AuditRecord"]) == len(SAMPLE_RECORDS) and out["MailItemAccess"]
    assert "derived rows failed builder=broken" in caplog.text


# ---------------------------------------------------------------------------------------------
# the local lake


def ctx_at(ingested: datetime) -> BlobContext:
    return BlobContext("t", "Audit.SharePoint", "c", None, ingested)


def observation(lake: LocalLake) -> dict[str, tuple[Any, ...]]:
    rows = lake.connection.execute(
        'SELECT "FieldPath", "FieldType", "FirstSeen", "LastSeen", "Records" FROM "SchemaObservation" '
        "WHERE \"Operation\" = 'LakeProbe'").fetchall()
    return {f"{r[0]}:{r[1]}": r[2:] for r in rows}


def probe(i: int, day: int, **extra: Any) -> dict[str, Any]:
    return {"Id": f"p{i}", "RecordType": 6, "Operation": "LakeProbe", "Workload": "SharePoint",
            "CreationTime": f"2026-11-{day:02d}T10:00:00", **extra}


def test_schema_observation_is_merged_in_the_lake(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path / "l.duckdb")
    try:
        first = flatten_tables([probe(1, 10), probe(2, 12)], ctx_at(datetime(2026, 11, 20, tzinfo=UTC)))
        result = lake.write_tables(first)
        assert result.inserted == 2  # the tallies are not counted as rows of the blob
        lake.write_tables(flatten_tables([probe(3, 5, New=True), probe(4, 11)],
                                         ctx_at(datetime(2026, 11, 21, tzinfo=UTC))))
        got = observation(lake)
        assert got["Id:string"] == (datetime(2026, 11, 5, 10), datetime(2026, 11, 12, 10), 4)
        assert got["New:bool"] == (datetime(2026, 11, 5, 10), datetime(2026, 11, 5, 10), 1)
    finally:
        lake.close()


def test_every_record_table_lands_in_the_lake(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path / "l.duckdb")
    try:
        out = flatten_tables(SAMPLE_RECORDS, CTX)
        lake.write_tables(out)
        for name in RECORD_TABLES:
            (count,) = lake.connection.execute(f'SELECT count(*) FROM "{name}"').fetchone() or (0,)
            assert count > 0, name
    finally:
        lake.close()


# A body as the service might write it: spaces, escapes orjson writes otherwise ("\u00e9", "\/"),
# a number with a trailing zero, a repeated key; and a record whose text is no longer stored as is.
DELIVERED = [
    b'{ "Id" : "d-1", "RecordType": 1, "Operation": "Set-Mailbox", "Subject": "caf\\u00e9 \\/ x",'
    b' "Size": 1.50, "CreationTime": "2026-12-01T00:00:00" }',
    b'{"Id":"d-2","RecordType":1,"Operation":"Set-Mailbox","Workload":"Exchange","Workload":"SharePoint"}',
    b'{"Id":"d-3","RecordType":1,"Operation":"X","Nested":' + b"[" * 260 + b"]" * 260 + b"}",
]


def delivered_body() -> bytes:
    return b"[\n  " + b" ,\n  ".join(DELIVERED) + b"\n]"


def test_the_local_lake_keeps_each_records_delivered_text_as_its_audit_data(tmp_path: Path) -> None:
    records = parse_content(delivered_body()).records
    rows = flatten_tables(records, CTX, ("AuditRecord",))["AuditRecord"]
    lake = LocalLake(tmp_path / "l.duckdb")
    try:
        lake.write_tables({"AuditRecord": rows})
        stored = {row[0]: row[1:] for row in lake.connection.execute(
            'SELECT "Id", "AuditData"::VARCHAR, "Workload", "Quality"::VARCHAR FROM "AuditRecord"').fetchall()}
    finally:
        lake.close()
    # Byte for byte what the service wrote, not the parsed record written again.
    assert stored["d-1"][0] == DELIVERED[0].decode()
    assert json.loads(stored["d-1"][0])["Size"] == 1.5
    # A repeated key stays in the text as delivered; the record's columns take its last value.
    assert stored["d-2"][:2] == (DELIVERED[1].decode(), "SharePoint")
    # Nested past what the sinks write: the parsed record goes to the sink, which stores it as
    # its bounded text, flagged, as it did before the delivered texts.
    assert json.loads(json.loads(stored["d-3"][0])) == json.loads(DELIVERED[2])
    assert "AuditData:unserialisable:too-deep" in json.loads(stored["d-3"][2])


def test_the_records_of_a_body_give_their_texts_once_and_adx_gets_the_records_written_again() -> None:
    records = parse_content(delivered_body()).records
    assert isinstance(records, DeliveredRecords)
    texts = records.texts()
    assert texts is not None
    assert [orjson.dumps(t) if t is not None else None for t in texts] == [DELIVERED[0], DELIVERED[1], None]
    assert records.texts() is None, "the body is let go once split"
    # ADX: the record itself, so a repeated key reaches it once (its last value).
    again = parse_content(delivered_body()).records
    blob = ContentBlob("t", "Audit.General", "c1", "https://x/c1", datetime(2026, 12, 1, tzinfo=UTC),
                       datetime(2026, 12, 8, tzinfo=UTC))
    adx = build_rows_for_adx(again, blob, datetime(2026, 12, 1, tzinfo=UTC))["AuditRecord"]
    assert [row["AuditData"] for row in adx] == list(again)
    assert orjson.dumps(adx[1]["AuditData"]) == (
        b'{"Id":"d-2","RecordType":1,"Operation":"Set-Mailbox","Workload":"SharePoint"}')
    # A body that is not one whole array gives no texts: a plain list, the records themselves.
    assert type(parse_content(b"[" + DELIVERED[0] + b",").records) is list


# ---------------------------------------------------------------------------------------------
# auditlake flatten --table


@pytest.mark.parametrize("table", RECORD_TABLES)
def test_flatten_prints_every_record_table(table: str, tmp_path: Path, capsys: Any) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in SAMPLE_RECORDS) + "\n", encoding="utf-8")
    assert main(["flatten", "--input", str(source), "--table", table]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows and all(set(r) == set(TABLES_BY_NAME[table].column_names) for r in rows)
    if table == "AuditRecord":
        assert len(rows) == len(SAMPLE_RECORDS)


@pytest.mark.parametrize("table", ["ContentLedger", "CollectorRun", "Nope"])
def test_flatten_names_the_tables_it_can_produce(table: str, capsys: Any) -> None:
    assert main(["flatten", "--input", "-", "--table", table]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert f"--table {table}: flatten produces AuditRecord, MailItemAccess, DirectoryChange, SignIn" in err
