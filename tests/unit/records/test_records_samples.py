"""Every record of the public sample corpus flattens into one well-formed AuditRecord row."""

from __future__ import annotations

import copy
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from function_app.lake.schema import AUDIT_RECORD, Kind
from function_app.records.flatten import flatten_blob, flatten_record, record_key

from ._samples import NOT_RECORDS, SAMPLES, blob_context, load, record_files, require_samples, sample_files

require_samples()

CTX = blob_context()


def assert_well_formed(row: dict[str, Any]) -> None:
    """The row contract every consumer relies on."""
    assert tuple(row) == AUDIT_RECORD.column_names
    record_id, record_type, operation = record_key(row)
    assert isinstance(record_id, str) and record_id
    assert type(record_type) is int
    assert isinstance(operation, str)
    for column in AUDIT_RECORD.columns:
        value = row[column.name]
        if column.kind is Kind.STRING:
            assert value is None or type(value) is str, column.name
        elif column.kind is Kind.INT:
            assert value is None or (type(value) is int and -(2**31) <= value < 2**31), column.name
        elif column.kind is Kind.DATETIME:
            assert value is None or (isinstance(value, datetime) and value.tzinfo is UTC), column.name
    assert isinstance(row["Properties"], dict)
    assert isinstance(row["Quality"], list) and all(type(f) is str for f in row["Quality"])
    assert not [f for f in row["Quality"] if f.startswith("flatten:error")]
    assert row["ClientIPKind"] in {
        "public",
        "private",
        "loopback",
        "link-local",
        "unspecified",
        "invalid",
        "missing",
    }
    for name in ("Properties", "AuditData", "Quality"):
        orjson.dumps(row[name])


def test_corpus_is_all_accounted_for() -> None:
    files = sample_files()
    assert set(NOT_RECORDS) <= set(files), "a file listed as not-records has gone; update NOT_RECORDS"
    assert len(record_files()) >= 20
    assert any(f.startswith("elastic-integrations/") and f.endswith(".json") for f in files)
    assert "msdocs/msdocs_example_records.jsonl" in files


@pytest.mark.parametrize("name", record_files())
def test_every_sample_record_gives_one_well_formed_row(name: str) -> None:
    records = load(name)
    assert records, f"{SAMPLES / name} holds no records"
    before = copy.deepcopy(records)
    rows = flatten_blob(records, CTX)
    assert len(rows) == len(records)
    for record, row, original in zip(records, rows, before, strict=True):
        assert row["AuditData"] is record
        assert row["AuditData"] == original
        assert_well_formed(row)
        assert row["TenantId"] == CTX.tenant_id
        assert row["ContentId"] == CTX.content_id
        assert row["ContentCreated"] == CTX.content_created
        assert row["IngestedAt"] == CTX.ingested_at
    assert records == before, "flatten changed its input"


@pytest.mark.parametrize("name", record_files())
def test_flatten_is_deterministic(name: str) -> None:
    records = load(name)
    first = [flatten_record(r, CTX) for r in records]
    again = [flatten_record(r, CTX) for r in load(name)]
    assert first == again


def test_redelivered_copies_share_a_key_and_distinct_records_do_not() -> None:
    # 06-sharepointfileop re-delivers the same Ids with keys in another order.
    rows = flatten_blob(load("elastic-beats/06-sharepointfileop.log"), CTX)
    by_id: dict[str, set[tuple[str, int, str]]] = defaultdict(set)
    for row in rows:
        by_id[row["Id"]].add(record_key(row))
    assert len(rows) > len(by_id)
    assert all(len(keys) == 1 for keys in by_id.values())


def test_records_sharing_an_id_with_different_operations_keep_distinct_keys() -> None:
    rows = flatten_blob(load("elastic-beats/13-dlp-exchange.log"), CTX)
    operations_by_id: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        operations_by_id[row["Id"]].add(row["Operation"])
    shared = {i for i, ops in operations_by_id.items() if len(ops) > 1}
    assert shared, "the corpus no longer has a DLP match and undo sharing an Id"
    keys = {record_key(r) for r in rows if r["Id"] in shared}
    assert len(keys) == sum(len(operations_by_id[i]) for i in shared)


def test_rows_serialise_for_the_sink() -> None:
    for name in record_files():
        for row in flatten_blob(load(name), CTX):
            orjson.dumps(row, option=orjson.OPT_NON_STR_KEYS)
