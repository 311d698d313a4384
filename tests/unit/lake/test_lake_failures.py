"""The local lake fails fast and clearly when the lake itself fails, and keeps isolating an
operation that fails on its own data: real DuckDB, with faults injected at the connection."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from auditlake.lake.duckdb_lake import (
    LakeCause,
    LakeUnavailableError,
    LocalLake,
    insert_tables,
)
from auditlake.state.local import LocalStateStore
from function_app.core.errors import StoreUnavailableError
from function_app.core.model import BlobStatus, ContentBlob
from function_app.records.flatten import BlobContext
from function_app.records.tables import flatten_tables

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
DISK_FULL_AT_COMMIT = ('TransactionContext Error: Failed to commit: Could not write file "{wal}": '
                       "No space left on device")


def record(n: int, **extra: Any) -> dict[str, Any]:
    return {"Id": f"00000000-0000-0000-0000-{n:012d}", "RecordType": 6, "Operation": "FileAccessed",
            "CreationTime": "2026-11-20T07:00:00", "UserId": "a@contoso.example", "Workload": "SharePoint", **extra}


def tables(content_id: str, records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    return flatten_tables(records, BlobContext("t", "Audit.SharePoint", content_id, T0, T0))


def blob(content_id: str) -> ContentBlob:
    return ContentBlob("t", "Audit.SharePoint", content_id, f"https://x/{content_id}", T0, T0 + timedelta(days=7))


class FaultyConnection:
    """A real DuckDB connection whose statements fail as *fault* decides, recording every statement.

    ``fault(sql, con)`` returns an exception to raise instead of running *sql* (after doing to the
    real connection what DuckDB itself would have done), or None to run it."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._con = con
        self.statements: list[str] = []
        self.fault: Callable[[str, duckdb.DuckDBPyConnection], BaseException | None] = lambda sql, con: None

    def _run(self, sql: str) -> None:
        self.statements.append(sql)
        exc = self.fault(sql, self._con)
        if exc is not None:
            raise exc

    def execute(self, sql: str, *args: Any) -> Any:
        self._run(sql)
        return self._con.execute(sql, *args)

    def sql(self, sql: str, *args: Any) -> Any:  # AuditRecord's insert, whose RETURNING comes back as Arrow
        self._run(sql)
        return self._con.sql(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


def faulty_lake(path: Path) -> tuple[LocalLake, FaultyConnection]:
    made: list[FaultyConnection] = []

    def connect(p: str, read_only: bool) -> Any:
        made.append(FaultyConnection(duckdb.connect(p, read_only=read_only)))
        return made[0]

    return LocalLake(path, connect=connect), made[0]


def disk_full_at_commit(after: int, wal: Path) -> Callable[[str, duckdb.DuckDBPyConnection], BaseException | None]:
    """COMMITs fail as they do when the write-ahead log meets a full disk, once *after* succeeded:
    DuckDB ends the transaction before it reports, so a ROLLBACK then says "no transaction"."""
    commits = 0

    def fault(sql: str, con: duckdb.DuckDBPyConnection) -> BaseException | None:
        nonlocal commits
        if sql != "COMMIT":
            return None
        commits += 1
        if commits <= after:
            return None
        con.execute("ROLLBACK")
        return duckdb.TransactionException(DISK_FULL_AT_COMMIT.format(wal=wal))

    return fault


async def _settled(aws: list[Any]) -> list[Any]:
    # A hang is the failure this guards against: bound the wait.
    return await asyncio.wait_for(asyncio.gather(*aws, return_exceptions=True), timeout=30)


def test_disk_full_at_commit_fails_the_group_and_every_later_operation_with_the_first_error(tmp_path: Path) -> None:
    path = tmp_path / "l.duckdb"
    lake, con = faulty_lake(path)
    state = LocalStateStore(lake)
    blobs = [blob(f"b{i}") for i in range(5)]

    async def go() -> tuple[list[Any], list[Any], BaseException | None]:
        await state.register_listed(blobs, T0)
        con.fault = disk_full_at_commit(0, path.with_name(path.name + ".wal"))
        group = await _settled([lake.write_blob(b, tables(b.content_id, [record(i)])) for i, b in enumerate(blobs)]
                               + [state.mark(b, BlobStatus.INGESTED, at=T0) for b in blobs])
        assert lake.unresolved_operations == 0
        con.statements.clear()
        later = await _settled([lake.write_blob(blobs[0], tables("b0", [record(0)])), state.pending("t", "x")])
        try:
            lake.write_tables(tables("b9", [record(9)]))
        except LakeUnavailableError as exc:
            sync_error: BaseException | None = exc
        else:
            sync_error = None
        return group, later, sync_error

    group, later, sync_error = asyncio.run(go())
    errors = {id(e) for e in [*group, *later, sync_error]}
    assert len(errors) == 1, "every operation fails with the one first error"
    error = group[0]
    assert isinstance(error, LakeUnavailableError) and isinstance(error, StoreUnavailableError)
    assert error.cause is LakeCause.DISK_FULL and error.path == path
    assert str(error) == (f"the lake at {path} cannot be written: disk full "
                          f"({DISK_FULL_AT_COMMIT.format(wal=path.with_name(path.name + '.wal'))})")
    assert "no transaction is active" not in str(error)
    # Later operations fail at once, without touching DuckDB; the group was never retried op by op.
    assert con.statements == []
    assert lake.failure is error


def test_a_failed_commit_is_not_rolled_back_and_a_failing_rollback_never_replaces_the_error(tmp_path: Path) -> None:
    path = tmp_path / "l.duckdb"
    lake, con = faulty_lake(path)

    # COMMIT fails as on a full disk: DuckDB has ended the transaction, a ROLLBACK would fail.
    con.fault = disk_full_at_commit(0, path)
    with pytest.raises(LakeUnavailableError, match="No space left on device") as caught:
        lake.write_tables(tables("a", [record(1)]))
    assert "ROLLBACK" not in con.statements[con.statements.index("COMMIT"):]
    assert caught.value.__cause__ is not None and "Failed to commit" in str(caught.value.__cause__)

    # A statement fails with an IO error, and the ROLLBACK after it fails too (the database was
    # invalidated meanwhile): the statement's error is the one reported.
    lake2, con2 = faulty_lake(tmp_path / "m.duckdb")

    def fault(sql: str, _: duckdb.DuckDBPyConnection) -> BaseException | None:
        if sql.startswith("INSERT OR IGNORE INTO \"AuditRecord\""):
            return duckdb.IOException('IO Error: Could not write file "m.duckdb": Input/output error')
        if sql == "ROLLBACK":
            return duckdb.FatalException("FATAL Error: Failed: database has been invalidated because of a "
                                         "previous fatal error.")
        return None

    con2.fault = fault
    with pytest.raises(LakeUnavailableError) as caught2:
        lake2.write_tables(tables("a", [record(1)]))
    assert caught2.value.cause is LakeCause.IO_ERROR
    assert "Input/output error" in str(caught2.value) and "invalidated" not in str(caught2.value)
    assert "ROLLBACK" in con2.statements


@pytest.mark.parametrize(("raised", "cause"), [
    (duckdb.OutOfMemoryException("Out of Memory Error: failed to allocate data of size 64.0 MiB "
                                 "(467.9 MiB/488.2 MiB used)\n\nPossible solutions: ..."), LakeCause.OUT_OF_MEMORY),
    (duckdb.IOException('IO Error: Could not write file "l.duckdb": No space left on device'), LakeCause.DISK_FULL),
    (duckdb.FatalException('FATAL Error: Failed to create checkpoint because of error: Could not write file '
                           '"l.duckdb": Input/output error'), LakeCause.IO_ERROR),
    (duckdb.FatalException("FATAL Error: Failed: database has been invalidated because of a previous fatal "
                           "error."), LakeCause.INVALIDATED),
    (duckdb.Error("Corrupt database file: computed checksum 1 does not match stored checksum 2 in block at "
                  "location 4096"), LakeCause.DAMAGED),
])
def test_a_failure_of_the_lake_in_a_group_is_never_retried_op_by_op(
    tmp_path: Path, raised: duckdb.Error, cause: LakeCause
) -> None:
    lake, con = faulty_lake(tmp_path / "l.duckdb")
    state = LocalStateStore(lake)
    blobs = [blob(f"b{i}") for i in range(4)]

    async def go() -> list[Any]:
        await state.register_listed(blobs, T0)
        fired = False

        def fault(sql: str, _: duckdb.DuckDBPyConnection) -> BaseException | None:
            nonlocal fired
            if sql.startswith("INSERT OR IGNORE INTO \"AuditRecord\"") and not fired:
                fired = True
                return raised
            return None

        con.fault = fault
        con.statements.clear()
        return await _settled([lake.write_blob(b, tables(b.content_id, [record(i)])) for i, b in enumerate(blobs)]
                              + [state.get_checkpoint("t", "x")])

    results = asyncio.run(go())
    assert all(isinstance(r, LakeUnavailableError) and r.cause is cause for r in results), results
    assert str(raised).splitlines()[0] in str(results[0])
    # One transaction was tried, and rolled back; no transaction of one operation followed.
    assert con.statements.count("BEGIN TRANSACTION") == 1 and "ROLLBACK" in con.statements
    assert not [s for s in con.statements[con.statements.index("ROLLBACK"):] if s.startswith(("BEGIN", "INSERT"))]
    assert lake.unresolved_operations == 0


def test_an_operation_failing_on_its_own_data_still_fails_alone(tmp_path: Path) -> None:
    lake, con = faulty_lake(tmp_path / "l.duckdb")
    con.statements.clear()
    state = LocalStateStore(lake)
    blobs = [blob(f"b{i}") for i in range(3)]

    async def go() -> list[Any]:
        await state.register_listed(blobs, T0)

        def bad(c: duckdb.DuckDBPyConnection) -> None:
            c.execute('INSERT INTO "NoSuchTable" VALUES (1)')

        return await _settled([lake.write_blob(b, tables(b.content_id, [record(i)])) for i, b in enumerate(blobs)]
                              + [lake.run(bad)])

    results = asyncio.run(go())
    assert [r.inserted for r in results[:3]] == [1, 1, 1]
    assert isinstance(results[3], duckdb.CatalogException)
    assert lake.failure is None
    # The group failed, and its operations were re-run one transaction each.
    assert con.statements.count("BEGIN TRANSACTION") >= 1 + 4
    assert lake.connection.execute('SELECT count(*) FROM "AuditRecord"').fetchone() == (3,)


def test_a_real_out_of_memory_error_is_reported_not_the_clean_up_after_it(tmp_path: Path) -> None:
    # Without memory headroom (insert_tables gives none) 30 rows of 900 KB overflow a 16 MB limit.
    lake = LocalLake(tmp_path / "l.duckdb")
    con = lake.connection
    con.execute("SET memory_limit='16MB'")
    con.execute("BEGIN TRANSACTION")
    with pytest.raises(duckdb.OutOfMemoryException):
        insert_tables(con, tables("a", [record(i, Pad="y" * 900_000) for i in range(30)]))
    con.execute("ROLLBACK")
    # The view registered for the batch went with the ROLLBACK; the connection works on.
    con.execute("BEGIN TRANSACTION")
    insert_tables(con, tables("b", [record(1)]))
    con.execute("COMMIT")
    assert con.execute('SELECT count(*) FROM "AuditRecord"').fetchone() == (1,)


def test_a_blob_with_a_50_mb_value_lands_whole_with_the_rest_of_its_commit_group(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path / "l.duckdb")
    state = LocalStateStore(lake)
    blobs = [blob(f"b{i}") for i in range(4)]
    big = "x" * (50 << 20)

    async def go() -> list[Any]:
        await state.register_listed(blobs, T0)
        contents = [[record(0, Big=big), record(1)], [record(2)], [record(3)], [record(4)]]
        return await _settled([lake.write_blob(b, tables(b.content_id, c)) for b, c in zip(blobs, contents,
                                                                                              strict=True)]
                              + [state.mark(b, BlobStatus.INGESTED, at=T0) for b in blobs])

    results = asyncio.run(go())
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert [r.inserted for r in results[:4]] == [2, 1, 1, 1]
    con = lake.connection
    assert con.execute('SELECT count(*) FROM "AuditRecord"').fetchone() == (5,)
    stored = con.execute('SELECT length("AuditData"->>\'$.Big\') FROM "AuditRecord" WHERE "ContentId" = \'b0\' '
                         'AND "Id" LIKE \'%0\'').fetchone()
    assert stored == (len(big),)
    assert con.execute('SELECT DISTINCT "Status" FROM "ContentLedger"').fetchall() == [("ingested",)]
    # The headroom was for that statement only.
    assert con.execute("SELECT current_setting('memory_limit')").fetchone() == ("488.2 MiB",)


def test_a_value_too_large_for_any_headroom_fails_its_own_blob_and_the_lake_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No headroom at all: a 60 MB JSON value does not fit the 512 MB the lake allows DuckDB.
    monkeypatch.setattr("auditlake.lake.duckdb_lake.VALUE_HEADROOM", 0)
    lake = LocalLake(tmp_path / "l.duckdb")
    blobs = [blob(f"b{i}") for i in range(3)]

    async def go() -> list[Any]:
        contents = [[record(0, Big="x" * (60 << 20))], [record(1)], [record(2)]]
        return await _settled([lake.write_blob(b, tables(b.content_id, c))
                               for b, c in zip(blobs, contents, strict=True)])

    results = asyncio.run(go())
    assert "out of memory" in str(results[0]) and "Out of Memory Error" in str(results[0])
    assert not isinstance(results[0], LakeUnavailableError)
    assert [r.inserted for r in results[1:]] == [1, 1]
    assert lake.failure is None
    assert lake.connection.execute("SELECT current_setting('memory_limit')").fetchone() == ("488.2 MiB",)


def _damaged(path: Path) -> None:
    lake = LocalLake(path)
    lake.write_tables(tables("a", [record(i) for i in range(100)]))
    lake.close()
    with path.open("r+b") as f:
        f.seek(4096)
        f.write(os.urandom(8192))


@pytest.mark.parametrize(("make", "cause"), [
    (lambda p: p.write_text("not a lake\n"), LakeCause.NOT_A_LAKE),
    (lambda p: p.write_bytes(b""), LakeCause.NOT_A_LAKE),
    (_damaged, LakeCause.DAMAGED),
])
@pytest.mark.parametrize("read_only", [False, True])
def test_a_file_that_is_not_a_sound_lake_fails_to_open_with_the_cause(
    tmp_path: Path, make: Callable[[Path], None], cause: LakeCause, read_only: bool
) -> None:
    path = tmp_path / "bad.duckdb"
    make(path)
    with pytest.raises(LakeUnavailableError) as caught:
        LocalLake(path, read_only=read_only)
    assert caught.value.cause is cause
    assert str(caught.value).startswith(f"the lake at {path} cannot be opened: {cause} (")
