"""The local lake: one DuckDB file holding the tables, the ledger and the checkpoints.

Rows are written in batches through Arrow with ``INSERT OR IGNORE`` on each table's key,
so the same record from another blob, or the same blob processed twice, never makes a
second row. DuckDB is synchronous; every call runs in a worker thread behind one lock so
the event loop keeps fetching while a batch is written.

Writes use group commit: operations submitted while a commit is running are committed
together in the next transaction. A DuckDB commit costs milliseconds whatever its size,
so committing each blob and each ledger update on its own would bound the pipeline at a
few hundred blobs a second; grouped, a commit carries everything the workers produced
meanwhile. Each caller still returns only once its own operation is durable.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import orjson
import pyarrow as pa

from function_app.core.model import ContentBlob, WriteResult
from function_app.lake.schema import TABLES, TABLES_BY_NAME, Kind, Table, duckdb_ddl, duckdb_insert

T = TypeVar("T")

_ARROW_TYPES: dict[Kind, pa.DataType] = {
    Kind.STRING: pa.string(),
    Kind.INT: pa.int32(),
    Kind.LONG: pa.int64(),
    Kind.REAL: pa.float64(),
    Kind.BOOL: pa.bool_(),
    Kind.DATETIME: pa.timestamp("us"),
    # JSON text; DuckDB casts it to its JSON type on insert.
    Kind.DYNAMIC: pa.string(),
}

LAKE_INFO_DDL = 'CREATE TABLE IF NOT EXISTS "LakeInfo" ("Key" VARCHAR PRIMARY KEY, "Value" VARCHAR)'


def naive_utc(value: datetime | None) -> datetime | None:
    """DuckDB TIMESTAMP holds UTC without a zone; aware values are converted, naive kept."""
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def _dump(value: Any) -> str | None:
    if value is None:
        return None
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def to_arrow(table: Table, rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Column-wise Arrow table of *rows* in *table*'s column order."""
    arrays = []
    for column in table.columns:
        name, kind = column.name, column.kind
        if kind is Kind.DYNAMIC:
            values: list[Any] = [_dump(r.get(name)) for r in rows]
        elif kind is Kind.DATETIME:
            values = [naive_utc(r.get(name)) for r in rows]
        else:
            values = [r.get(name) for r in rows]
        arrays.append(pa.array(values, type=_ARROW_TYPES[kind]))
    return pa.Table.from_arrays(arrays, names=list(table.column_names))


def insert_tables(
    con: duckdb.DuckDBPyConnection, tables: Mapping[str, Sequence[Mapping[str, Any]]]
) -> WriteResult:
    """Insert every table's rows (inside the caller's transaction); existing keys are skipped.

    Aggregate tables (``SchemaObservation``) are merged into the stored rows instead (see
    ``duckdb_insert``); they count neither as inserted nor as duplicates, being tallies, not rows
    of the blob.
    """
    inserted = duplicates = 0
    for name, rows in tables.items():
        if not rows:
            continue
        table = TABLES_BY_NAME[name]
        batch = to_arrow(table, rows)
        con.register("_batch", batch)
        try:
            row = con.execute(duckdb_insert(table, "_batch")).fetchone()
        finally:
            con.unregister("_batch")
        if table.is_aggregate:
            continue
        count = int(row[0]) if row else 0
        inserted += count
        duplicates += len(rows) - count
    return WriteResult(inserted=inserted, duplicates=duplicates)


def _isolated(con: duckdb.DuckDBPyConnection, fn: Callable[[duckdb.DuckDBPyConnection], Any]) -> tuple[bool, Any]:
    """Run *fn* in a transaction of its own: (True, result) or (False, the exception)."""
    try:
        con.execute("BEGIN TRANSACTION")
        value = fn(con)
        con.execute("COMMIT")
        return True, value
    except Exception as exc:
        con.execute("ROLLBACK")
        return False, exc


class LocalLake:
    """A DuckDB lake file; safe to share between coroutines of one process."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not self.path.exists():
            raise FileNotFoundError(f"no lake at {self.path}")
        self._con = duckdb.connect(str(self.path), read_only=read_only)
        self._con.execute("SET TimeZone='UTC'")
        self._lock = threading.Lock()
        self._pending: list[tuple[Callable[[duckdb.DuckDBPyConnection], Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        if not read_only:
            for table in TABLES:
                self._con.execute(duckdb_ddl(table))
            self._con.execute(LAKE_INFO_DDL)

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        return self._con

    def close(self) -> None:
        with self._lock:
            self._con.close()

    @contextmanager
    def locked(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._lock:
            yield self._con

    async def run(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run *fn* inside a transaction in a worker thread; return once it is committed.

        *fn* must not manage transactions itself. Operations submitted together share a
        commit; if one raises, the others are re-run in transactions of their own so one
        bad operation never takes its neighbours down with it.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((fn, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            outcomes = await asyncio.to_thread(self._commit, [fn for fn, _ in batch])
            for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def _commit(self, fns: list[Callable[[duckdb.DuckDBPyConnection], Any]]) -> list[tuple[bool, Any]]:
        with self._lock:
            con = self._con
            try:
                con.execute("BEGIN TRANSACTION")
                results = [(True, fn(con)) for fn in fns]
                con.execute("COMMIT")
                return results
            except Exception:
                con.execute("ROLLBACK")
            # Whatever committed alone is reported as done: its caller must not retry it.
            return [_isolated(con, fn) for fn in fns]

    # -- Sink ---------------------------------------------------------------------------

    def write_tables(self, tables: Mapping[str, Sequence[Mapping[str, Any]]]) -> WriteResult:
        """Insert every table's rows in one transaction; rows whose key exists are skipped."""
        with self._lock:
            ok, value = _isolated(self._con, lambda con: insert_tables(con, tables))
        if not ok:
            raise value
        assert isinstance(value, WriteResult)
        return value

    async def write_blob(
        self, blob: ContentBlob, tables: Mapping[str, Sequence[Mapping[str, Any]]]
    ) -> WriteResult:
        return await self.run(lambda con: insert_tables(con, tables))

    # -- lake metadata ------------------------------------------------------------------

    def get_info(self, key: str) -> str | None:
        with self._lock:
            try:
                row = self._con.execute('SELECT "Value" FROM "LakeInfo" WHERE "Key" = ?', [key]).fetchone()
            except duckdb.CatalogException:
                return None
        return None if row is None else str(row[0])

    def set_info(self, key: str, value: str) -> None:
        with self._lock:
            self._con.execute('INSERT OR REPLACE INTO "LakeInfo" VALUES (?, ?)', [key, value])
