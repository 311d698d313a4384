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

Within a commit group, the blobs' rows are also merged into one statement per table, and
ledger updates into one statement: DuckDB pays 10-20 ms per ``INSERT OR IGNORE`` into a keyed
table whatever its size, so a statement per blob (most blobs hold a few dozen records) capped
the local pipeline at about 500 records a second.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
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


_dumps = orjson.dumps
_DUMP_OPTIONS = orjson.OPT_NON_STR_KEYS
_UTC_TIMESTAMP = pa.timestamp("us", tz="UTC")


def to_arrow(table: Table, rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Column-wise Arrow table of *rows* in *table*'s column order.

    Rows whose keys are exactly the table's columns in order (what every builder in records/
    produces) are transposed in one C-level ``zip``; any other row shape is read column by
    column. Datetimes may be aware (converted to UTC) or naive (taken as UTC already).
    """
    names = table.column_names
    if all(tuple(r) == names for r in rows):
        columns: list[Sequence[Any]] = list(zip(*(r.values() for r in rows), strict=True)) if rows \
            else [[] for _ in names]
    else:
        columns = [[r.get(n) for r in rows] for n in names]
    arrays = [_array(column.kind, values) for column, values in zip(table.columns, columns, strict=True)]
    return pa.Table.from_arrays(arrays, names=list(names))


def _array(kind: Kind, values: Sequence[Any]) -> pa.Array:
    if kind is Kind.DYNAMIC:
        # orjson's bytes go in as they are: Arrow takes UTF-8 bytes for a string column.
        return pa.array([None if v is None else _dumps(v, option=_DUMP_OPTIONS) for v in values],
                        type=_ARROW_TYPES[kind])
    if kind is Kind.DATETIME:
        # Through a UTC-zoned type: Arrow converts aware values and takes naive ones as UTC,
        # in C, instead of a Python call per value.
        return pa.array(values, type=_UTC_TIMESTAMP).cast(_ARROW_TYPES[kind])
    return pa.array(values, type=_ARROW_TYPES[kind])


def insert_tables(
    con: duckdb.DuckDBPyConnection, tables: Mapping[str, Sequence[Mapping[str, Any]]]
) -> WriteResult:
    """Insert every table's rows (inside the caller's transaction); existing keys are skipped."""
    return insert_blobs(con, [tables])[0]


# The table whose rows are counted per blob: one row per record, so inserted + duplicates = records.
COUNTED_TABLE = "AuditRecord"


def insert_blobs(
    con: duckdb.DuckDBPyConnection, blobs: Sequence[Mapping[str, Any]]
) -> list[WriteResult]:
    """Insert the rows of several blobs, one statement per table, inside the caller's transaction.

    Each of *blobs* maps table names to rows or to an Arrow table. Existing keys are skipped,
    and a key delivered twice within the batch keeps one row (DuckDB inserts in parallel, so
    which of them is not fixed; across batches the first delivery wins). A blob's result counts
    its ``AuditRecord`` rows: inserted, or dropped as duplicates (of the lake or of another blob
    of the batch). Aggregate tables (``SchemaObservation``) are merged into the stored rows (see
    ``duckdb_insert``).
    """
    results = [WriteResult(0, 0) for _ in blobs]
    names = dict.fromkeys(name for tables in blobs for name in tables)
    for name in names:
        table = TABLES_BY_NAME[name]
        parts: list[tuple[int, pa.Table]] = []
        for i, tables in enumerate(blobs):
            rows = tables.get(name)
            if rows is None:
                continue
            part = rows if isinstance(rows, pa.Table) else to_arrow(table, rows)
            if part.num_rows:
                parts.append((i, part))
        if not parts:
            continue
        batch = pa.concat_tables([p for _, p in parts]) if len(parts) > 1 else parts[0][1]
        con.register("_batch", batch)
        try:
            if name != COUNTED_TABLE:
                con.execute(duckdb_insert(table, "_batch"))
                continue
            # RETURNING yields only the rows kept, so the rows kept per blob are counted by ContentId.
            returned = con.execute(f'{duckdb_insert(table, "_batch")} RETURNING "ContentId"').fetchall()
            kept: Counter[str] = Counter(r[0] for r in returned)
        finally:
            con.unregister("_batch")
        for i, part in parts:
            # Two parts of one blob in a batch (the same blob written twice) share its count.
            content_id = part.column("ContentId")[0].as_py()
            n = min(kept[content_id], part.num_rows)
            kept[content_id] -= n
            results[i] = WriteResult(inserted=n, duplicates=part.num_rows - n)
    return results


Batcher = Callable[[duckdb.DuckDBPyConnection, list[Any]], list[Any]]


@dataclass(slots=True)
class _Op:
    """One submitted operation: a function of the connection, or an item for a batcher."""

    fn: Callable[[duckdb.DuckDBPyConnection], Any] | None
    batcher: Batcher | None
    item: Any
    future: asyncio.Future[Any]


def _run_group(con: duckdb.DuckDBPyConnection, ops: Sequence[_Op]) -> list[Any]:
    """The results of *ops*, in order: plain functions one by one, each batcher once for all its
    items (at the position of its first item: operations submitted together were concurrent, so
    their relative order carries no meaning)."""
    results: list[Any] = [None] * len(ops)
    done: set[int] = set()
    for i, op in enumerate(ops):
        if i in done:
            continue
        if op.fn is not None:
            results[i] = op.fn(con)
            continue
        members = [j for j in range(i, len(ops)) if ops[j].batcher is op.batcher]
        assert op.batcher is not None
        values = op.batcher(con, [ops[j].item for j in members])
        for j, value in zip(members, values, strict=True):
            results[j] = value
            done.add(j)
    return results


def _isolated(con: duckdb.DuckDBPyConnection, op: _Op) -> tuple[bool, Any]:
    """Run *op* in a transaction of its own: (True, result) or (False, the exception)."""
    try:
        con.execute("BEGIN TRANSACTION")
        value = _run_group(con, [op])[0]
        con.execute("COMMIT")
        return True, value
    except Exception as exc:
        con.execute("ROLLBACK")
        return False, exc


# DuckDB rewrites what it holds at each checkpoint; at the default 16 MB threshold a backfill
# spent more time checkpointing (and re-serialising the key index) than inserting. 256 MB of
# write-ahead log bounds the memory this costs and still checkpoints every few hundred blobs.
CHECKPOINT_THRESHOLD = "256MB"
MEMORY_LIMIT = "512MB"


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
        self._pending: list[_Op] = []
        self._flusher: asyncio.Task[None] | None = None
        if not read_only:
            self._con.execute(f"SET checkpoint_threshold='{CHECKPOINT_THRESHOLD}'")
            # DuckDB's buffer pool otherwise grows toward 80% of the machine's memory as the lake
            # grows; capped, it evicts (the lake is on disk), so the collector's memory stays
            # bounded by the blobs in flight, not by the size of the lake or of a backfill.
            self._con.execute(f"SET memory_limit='{MEMORY_LIMIT}'")
            # Audit records are mostly JSON text; zstd stores it in about a third of the space
            # of the default string compression, and costs less time at each checkpoint.
            self._con.execute("PRAGMA force_compression='zstd'")
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
        result: T = await self._submit(_Op(fn, None, None, asyncio.get_running_loop().create_future()))
        return result

    async def run_batched(self, batcher: Batcher, item: Any) -> Any:
        """Like :meth:`run`, but the items of one batcher submitted together are handed to it in
        one call, ``batcher(con, items) -> results`` (a result per item, in order), so a commit
        group costs one statement instead of one per item."""
        return await self._submit(_Op(None, batcher, item, asyncio.get_running_loop().create_future()))

    async def _submit(self, op: _Op) -> Any:
        self._pending.append(op)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await op.future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            outcomes = await asyncio.to_thread(self._commit, batch)
            for op, (ok, value) in zip(batch, outcomes, strict=True):
                if op.future.done():
                    continue
                if ok:
                    op.future.set_result(value)
                else:
                    op.future.set_exception(value)

    def _commit(self, ops: list[_Op]) -> list[tuple[bool, Any]]:
        with self._lock:
            con = self._con
            try:
                con.execute("BEGIN TRANSACTION")
                results = _run_group(con, ops)
                con.execute("COMMIT")
                return [(True, r) for r in results]
            except Exception:
                con.execute("ROLLBACK")
            # Whatever committed alone is reported as done: its caller must not retry it.
            return [_isolated(con, op) for op in ops]

    # -- Sink ---------------------------------------------------------------------------

    def write_tables(self, tables: Mapping[str, Sequence[Mapping[str, Any]]]) -> WriteResult:
        """Insert every table's rows in one transaction; rows whose key exists are skipped."""
        with self._lock:
            con = self._con
            con.execute("BEGIN TRANSACTION")
            try:
                result = insert_tables(con, tables)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return result

    async def write_blob(self, blob: ContentBlob, tables: Mapping[str, Any]) -> WriteResult:
        """Write one blob's rows (lists of row mappings, or Arrow tables); merged with the other
        blobs of its commit group into one statement per table."""
        result: WriteResult = await self.run_batched(insert_blobs, tables)
        return result

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
