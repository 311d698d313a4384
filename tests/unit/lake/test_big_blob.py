"""A blob of more records than ``SLICE_ROWS`` on the collector's write path into the local lake:
converted and inserted slice by slice, yet its rows and its ``ingested`` mark are still one unit,
committed together or not at all, and its neighbours in the commit are not disturbed by it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

import auditlake.lake.duckdb_lake as duckdb_lake
from auditlake.lake.duckdb_lake import ROW_GROUP_ROWS, ArrowSlices, LocalLake, to_arrow
from auditlake.state.local import LocalStateStore
from function_app.compose import build_rows
from function_app.core.model import ContentBlob, WriteResult
from function_app.lake.schema import AUDIT_RECORD, Kind
from function_app.records.flatten import BlobContext
from function_app.records.tables import flatten_tables

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
COMMITTED_AT = datetime(2026, 11, 20, 8, 5, tzinfo=UTC)
SLICE = 50
"""The slice size these tests run with (the lake's own is thousands): a blob of a few hundred
records crosses several slices."""


@pytest.fixture(autouse=True)
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(duckdb_lake, "SLICE_ROWS", SLICE)
    monkeypatch.setattr("auditlake.state.local.SLICE_ROWS", SLICE)


def record(n: int) -> dict[str, Any]:
    """A SharePoint record, every seventh a sign-in and every eleventh a mailbox access, so the
    derived tables get rows from every slice."""
    base: dict[str, Any] = {"Id": f"00000000-0000-0000-0000-{n:012d}", "RecordType": 6, "Operation": "FileAccessed",
                            "CreationTime": f"2026-11-20T07:{n % 60:02d}:00", "UserId": "a@contoso.example",
                            "Workload": "SharePoint", "ClientIP": "203.0.113.7"}
    if n % 7 == 0:
        base.update(RecordType=15, Operation="UserLoggedIn", Workload="AzureActiveDirectory", ResultStatus="Success")
    elif n % 11 == 0:
        base.update(RecordType=50, Operation="MailItemsAccessed", Workload="Exchange",
                    MailboxOwnerUPN="a@contoso.example",
                    OperationProperties=[{"Name": "MailAccessType", "Value": "Bind"}],
                    Folders=[{"Path": "\\Inbox", "FolderItems": [{"InternetMessageId": f"<m{n}@x>"}]}])
    return base


def blob(content_id: str) -> ContentBlob:
    return ContentBlob("t", "Audit.SharePoint", content_id, f"https://x/{content_id}", T0, T0 + timedelta(days=7))


def ledger(lake: LocalLake) -> dict[str, tuple[Any, ...]]:
    rows = lake.connection.execute('SELECT "ContentId", "Status", "Records", "IngestedAt" FROM "ContentLedger"'
                                   ).fetchall()
    return {r[0]: r[1:] for r in rows}


def count(lake: LocalLake, table: str, content_id: str | None = None) -> int:
    if content_id is None:
        row = lake.connection.execute(f'SELECT count(*) FROM "{table}"').fetchone()
    else:
        row = lake.connection.execute(f'SELECT count(*) FROM "{table}" WHERE "ContentId" = ?', [content_id]).fetchone()
    assert row is not None
    return int(row[0])


def hand_over(state: LocalStateStore, blobs: list[tuple[ContentBlob, list[dict[str, Any]]]]) -> list[Any]:
    """Every blob handed over at once, as the collector's workers do; each blob's outcome."""
    async def go() -> list[Any]:
        pending = [await state.submit_ingested(b, build_rows(records, b, T0), clock=lambda: COMMITTED_AT,
                                               records=len(records), size=100) for b, records in blobs]
        return await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), timeout=60)

    return asyncio.run(go())


class FailingInsert:
    """The lake's real connection, but the *nth* statement that inserts into *table* fails as a
    value DuckDB cannot write does (a failure of the operation's data, not of the lake)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, table: str, nth: int) -> None:
        self._con = con
        self._table = f'INTO "{table}"'
        self._left = nth

    def _count(self, sql: str) -> None:
        if self._table in sql:
            self._left -= 1
            if self._left == 0:
                raise duckdb.ConversionException("Could not convert string to JSON (injected)")

    def execute(self, sql: str, *args: Any) -> Any:
        self._count(sql)
        return self._con.execute(sql, *args)

    def sql(self, sql: str, *args: Any) -> Any:  # AuditRecord's insert, whose RETURNING comes back as Arrow
        self._count(sql)
        return self._con.sql(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


def failing_lake(path: Path, table: str, nth: int) -> LocalLake:
    def connect(p: str, read_only: bool) -> Any:
        return FailingInsert(duckdb_lake._connect(p, read_only), table, nth)

    return LocalLake(path, connect=connect)


def test_a_blob_bigger_than_a_slice_commits_every_row_of_every_table_with_its_mark(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path / "l.duckdb")
    state = LocalStateStore(lake)
    big = blob("big")
    records = [record(n) for n in range(7 * SLICE + 3)]
    asyncio.run(state.register_listed([big], T0))

    [result] = hand_over(state, [(big, records)])

    assert result == WriteResult(inserted=len(records), duplicates=0)
    assert ledger(lake)["big"] == ("ingested", len(records), COMMITTED_AT.replace(tzinfo=None))
    assert count(lake, "AuditRecord", "big") == len(records)
    expected = flatten_tables(records, BlobContext("t", "Audit.SharePoint", "big", T0, T0))
    for table in ("MailItemAccess", "SignIn", "SchemaObservation"):
        assert expected[table], f"the records make no {table} rows: the test proves nothing"
        assert count(lake, table) == len(expected[table]), table


def test_a_record_delivered_twice_in_one_big_blob_keeps_one_row_and_counts_once_as_duplicate(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path / "l.duckdb")
    state = LocalStateStore(lake)
    big = blob("big")
    # The first slice's first record again in the last slice.
    records = [record(n) for n in range(3 * SLICE)] + [record(0)]
    asyncio.run(state.register_listed([big], T0))

    [result] = hand_over(state, [(big, records)])

    assert result == WriteResult(inserted=3 * SLICE, duplicates=1)
    assert count(lake, "AuditRecord") == 3 * SLICE


@pytest.mark.parametrize("slice_that_fails", [1, 3])
def test_a_big_blob_failing_mid_way_leaves_neither_rows_nor_mark_and_its_neighbours_commit(
    tmp_path: Path, slice_that_fails: int,
) -> None:
    # The small blob's group commits first, with the first insert into AuditRecord; then the big
    # blob's transaction inserts a slice per statement.
    lake = failing_lake(tmp_path / "l.duckdb", "AuditRecord", 1 + slice_that_fails)
    state = LocalStateStore(lake)
    big, small = blob("big"), blob("small")
    asyncio.run(state.register_listed([big, small], T0))

    outcomes = hand_over(state, [(small, [record(100_000)]), (big, [record(n) for n in range(4 * SLICE)])])

    assert outcomes[0] == WriteResult(1, 0)
    assert isinstance(outcomes[1], duckdb.ConversionException)
    assert ledger(lake)["big"][0] == "listed"
    assert ledger(lake)["small"][0] == "ingested"
    assert count(lake, "AuditRecord", "big") == 0
    assert count(lake, "AuditRecord", "small") == 1
    assert lake.failure is None
    # The blob fetched again commits whole: nothing of the failed attempt is in the way.
    again = hand_over(state, [(big, [record(n) for n in range(4 * SLICE)])])
    assert again == [WriteResult(4 * SLICE, 0)]
    assert ledger(lake)["big"][0] == "ingested"


def test_a_neighbour_failing_on_its_own_data_does_not_write_the_big_blob_twice_or_lose_it(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path / "l.duckdb")
    state = LocalStateStore(lake)
    big, bad = blob("big"), blob("bad")
    asyncio.run(state.register_listed([big, bad], T0))

    async def go() -> list[Any]:
        # A table the lake does not have: that blob's own data is at fault, and its group is re-run
        # operation by operation; the big blob, whose slices are written once, is not in that group.
        bad_rows = {"AuditRecord": build_rows([record(100_000)], bad, T0)["AuditRecord"], "NoSuchTable": [{"x": 1}]}
        failing = await state.submit_ingested(bad, bad_rows, clock=lambda: COMMITTED_AT, records=1, size=1)
        records = [record(n) for n in range(4 * SLICE)]
        whole = await state.submit_ingested(big, build_rows(records, big, T0), clock=lambda: COMMITTED_AT,
                                            records=len(records), size=1)
        return list(await asyncio.gather(failing, whole, return_exceptions=True))

    outcomes = asyncio.run(go())

    assert isinstance(outcomes[0], KeyError)
    assert outcomes[1] == WriteResult(4 * SLICE, 0)
    assert ledger(lake)["big"][0] == "ingested" and ledger(lake)["bad"][0] == "listed"
    assert count(lake, "AuditRecord", "big") == 4 * SLICE


def test_a_big_blobs_rows_are_taken_over_and_its_slices_written_once() -> None:
    rows = build_rows([record(n) for n in range(2 * SLICE + 1)], blob("big"), T0)["AuditRecord"]
    assert isinstance(rows, list)
    expected = to_arrow(AUDIT_RECORD, rows)

    slices = ArrowSlices(AUDIT_RECORD, rows)

    assert rows == [], "the rows are dropped as they become Arrow"
    assert len(slices) == 2 * SLICE + 1 and slices.content_id == "big"
    taken = list(slices.take())
    assert [s.num_rows for s in taken] == [SLICE, SLICE, 1]
    assert pa.concat_tables(taken).equals(expected)
    with pytest.raises(RuntimeError, match="already written"):
        list(slices.take())


def test_json_cells_are_the_json_text_of_each_value_and_none_stays_null() -> None:
    values: list[Any] = [{"a": [1, "é"]}, None, "text", 3, {1: "key that is not text"}, None, []]

    column = duckdb_lake._array(Kind.DYNAMIC, values)

    column.validate(full=True)
    assert column.type == pa.string()
    assert column.to_pylist() == ['{"a":[1,"é"]}', None, '"text"', "3", '{"1":"key that is not text"}', None, "[]"]


def test_the_lake_writes_row_groups_of_its_own_size(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path / "l.duckdb")
    rows = ROW_GROUP_ROWS + 10
    lake.connection.execute('CREATE TABLE "Wide" AS SELECT range AS n FROM range(?)', [rows])
    groups = lake.connection.execute(
        "SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('Wide')").fetchall()
    lake.close()
    assert groups == [(2,)]
    with LocalLake(tmp_path / "l.duckdb", read_only=True).locked() as con:
        assert con.execute('SELECT count(*) FROM "Wide"').fetchall() == [(rows,)]
