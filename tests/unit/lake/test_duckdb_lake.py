"""The local lake's batched writes: one statement per table per commit group, counted per blob."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from auditlake.lake import duckdb_lake
from auditlake.lake.duckdb_lake import LocalLake, insert_blobs, naive_utc, to_arrow
from auditlake.state.local import LocalStateStore
from function_app.core.model import BlobStatus, ContentBlob
from function_app.lake.schema import AUDIT_RECORD, CONTENT_LEDGER, Kind
from function_app.records.flatten import BlobContext
from function_app.records.tables import flatten_tables

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def record(n: int, operation: str = "FileAccessed") -> dict[str, Any]:
    return {"Id": f"00000000-0000-0000-0000-{n:012d}", "RecordType": 6, "Operation": operation,
            "CreationTime": "2026-11-20T07:00:00", "UserId": "a@contoso.example", "Workload": "SharePoint"}


def blob_tables(content_id: str, records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    ctx = BlobContext("t", "Audit.SharePoint", content_id, T0, T0)
    return flatten_tables(records, ctx)


def blob(content_id: str) -> ContentBlob:
    return ContentBlob("t", "Audit.SharePoint", content_id, f"https://x/{content_id}", T0, T0 + timedelta(days=7))


def test_blobs_of_one_batch_keep_one_row_per_key_and_are_counted_each(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path / "l.duckdb")
    lake.write_tables(blob_tables("old", [record(1)]))
    with lake.locked() as con:
        results = insert_blobs(con, [
            blob_tables("a", [record(1), record(2), record(3)]),   # 1 is already in the lake
            blob_tables("b", [record(3), record(4)]),              # 3 comes with blob a too
            blob_tables("c", [record(4, "FileModified")]),         # another operation: a record of its own
        ])
        stored = dict(con.execute('SELECT "Id" || "Operation", "ContentId" FROM "AuditRecord"').fetchall())
    a, b, c = results
    # DuckDB inserts a batch in parallel: which blob keeps record 3 is not fixed, the counts are.
    assert (a.inserted + b.inserted, a.duplicates + b.duplicates, (c.inserted, c.duplicates)) == (3, 2, (1, 0))
    assert a.duplicates >= 1 and stored[record(3)["Id"] + "FileAccessed"] in {"a", "b"}
    assert (a.inserted, b.inserted) == ((2, 1) if stored[record(3)["Id"] + "FileAccessed"] == "a" else (1, 2))
    assert stored[record(1)["Id"] + "FileAccessed"] == "old" and len(stored) == 5


def test_rows_are_read_by_name_when_their_keys_are_not_the_columns_in_order() -> None:
    rows = blob_tables("a", [record(1), record(2)])["AuditRecord"]
    shuffled = [dict(reversed(list(r.items()))) for r in rows]
    missing = [{k: v for k, v in r.items() if k != "UserKey"} for r in rows]
    same = to_arrow(AUDIT_RECORD, rows)
    assert to_arrow(AUDIT_RECORD, shuffled).equals(same)
    assert to_arrow(AUDIT_RECORD, missing).column("UserKey").null_count == 2
    assert to_arrow(AUDIT_RECORD, []).num_rows == 0


def test_aware_datetimes_are_stored_as_utc_and_naive_ones_as_given() -> None:
    plus_two = timezone(timedelta(hours=2))
    rows = [{"TenantId": "t", "ContentType": "c", "ContentId": "x", "ContentCreated": datetime(2026, 1, 1, 12,
             tzinfo=plus_two), "ListedAt": datetime(2026, 1, 1, 12)}]
    table = to_arrow(CONTENT_LEDGER, rows)
    assert table.column("ContentCreated")[0].as_py() == datetime(2026, 1, 1, 10)
    assert table.column("ListedAt")[0].as_py() == datetime(2026, 1, 1, 12)


@pytest.mark.parametrize("values", [
    [datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))] * 3,  # one value repeated
    # the same instant in two zones compares equal: still one value, in UTC
    [datetime(2026, 1, 1, 10, tzinfo=UTC), datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))],
    [datetime(2026, 1, 1, 12)] * 2,
    [datetime(2026, 1, 1, 12, tzinfo=UTC), None, datetime(2026, 1, 1, 12, tzinfo=UTC)],
    [None, None],
    [datetime(2026, 1, 1, 12, 0, 1, 5, tzinfo=UTC), datetime(2026, 1, 1, 12), None],
    [datetime(2026, 1, 1, 12, tzinfo=UTC)],
    [],
])
def test_a_datetime_column_holds_each_value_in_utc_whether_repeated_or_not(values: list[datetime | None]) -> None:
    column = duckdb_lake._array(Kind.DATETIME, tuple(values))
    assert column.type == pa.timestamp("us")
    assert column.to_pylist() == [None if v is None else naive_utc(v) for v in values]


def test_writes_and_ledger_marks_submitted_together_share_statements_and_survive_a_bad_neighbour(
    tmp_path: Path,
) -> None:
    lake = LocalLake(tmp_path / "l.duckdb")
    state = LocalStateStore(lake)
    blobs = [blob(f"b{i}") for i in range(6)]

    async def go() -> list[Any]:
        await state.register_listed(blobs, T0)
        writes = [lake.write_blob(b, blob_tables(b.content_id, [record(i), record(100)]))
                  for i, b in enumerate(blobs)]
        bad = lake.write_blob(blobs[0], {"NoSuchTable": [{"x": 1}]})
        marks = [state.mark(b, BlobStatus.INGESTED, at=T0, records=2, size=10) for b in blobs]
        return await asyncio.gather(*writes, bad, *marks, return_exceptions=True)

    results = asyncio.run(go())
    assert isinstance(results[6], KeyError)
    written = results[:6]
    assert sum(r.inserted for r in written) == 7 and sum(r.duplicates for r in written) == 5
    with lake.locked() as con:
        ledger = con.execute('SELECT "Status", "Attempts", "Records" FROM "ContentLedger"').fetchall()
        assert con.execute('SELECT count(*) FROM "AuditRecord"').fetchone() == (7,)
    assert sorted(ledger) == [("ingested", 1, 2)] * 6


def test_a_blob_marked_twice_in_one_group_keeps_the_last_mark_and_counts_both(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path / "l.duckdb")
    state = LocalStateStore(lake)
    b = blob("x")

    async def go() -> None:
        await state.register_listed([b], T0)
        await asyncio.gather(state.mark(b, BlobStatus.FAILED, at=T0, error="boom"),
                             state.mark(b, BlobStatus.INGESTED, at=T0 + timedelta(minutes=1), records=3))

    asyncio.run(go())
    with lake.locked() as con:
        row = con.execute('SELECT "Status", "Attempts", "Error", "Records", "IngestedAt" '
                          'FROM "ContentLedger"').fetchone()
    assert row == ("ingested", 2, None, 3, datetime(2026, 11, 20, 8, 1))


def test_a_read_only_lake_needs_an_existing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no lake"):
        LocalLake(tmp_path / "none.duckdb", read_only=True)
