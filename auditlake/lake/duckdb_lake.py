"""The local lake: one DuckDB file holding the tables, the ledger and the checkpoints.

Rows are written in batches through Arrow with ``INSERT OR IGNORE`` on each table's key,
so the same record from another blob, or the same blob processed twice, never makes a
second row; the derived tables' rows are written only for the ``AuditRecord`` rows kept
(``FOLLOWS_AUDIT_RECORD``). DuckDB is synchronous; every call runs in a worker thread behind one lock so
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

A blob bigger than ``SLICE_ROWS`` records is the exception to both: its ``AuditRecord`` rows are
converted and inserted a slice at a time, each slice freed once written, so it never sits in
memory whole as rows, as Arrow and in DuckDB at once; since its slices can be written only once,
it commits in a transaction of its own (its rows and its ledger mark still together). The lake is
attached with small row groups (``ROW_GROUP_ROWS``) so DuckDB writes such a blob's rows to the
file as they come instead of holding them all until the commit.

Failures come in two kinds. An operation can fail on its own data (a table that does not
exist, a value that cannot be written): the rest of its commit group is re-run in transactions
of its own, so one bad operation never takes its neighbours down. Or the lake itself fails (the
disk is full, an IO error, DuckDB is out of memory, the file is damaged, or a fatal error
invalidated the database): then every pending and every later operation fails at once with one
``LakeUnavailableError`` naming the cause and the path, and nothing is retried operation by
operation. Either way every caller's future is resolved, and the error reported is the first
one, never a secondary error of the ROLLBACK or of the clean-up after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import threading
import weakref
from array import array
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from auditlake.lake.entra_expand import insert_envelopes
from function_app.core.errors import StoreUnavailableError
from function_app.core.model import ContentBlob, WriteResult
from function_app.lake.cells import repaired_row
from function_app.lake.entra_schema import RAW_TABLE
from function_app.lake.schema import (
    TABLES,
    TABLES_BY_NAME,
    Kind,
    Table,
    duckdb_add_missing,
    duckdb_ddl,
    duckdb_insert,
    duckdb_insert_distinct,
)
from function_app.records.derived import MAIL_ITEMS_ACCESSED
from function_app.records.schema_observation import SchemaObserver

if TYPE_CHECKING:
    from auditlake.state.local import LocalStateStore

T = TypeVar("T")

log = logging.getLogger(__name__)

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
_NAIVE_TIMESTAMP = _ARROW_TYPES[Kind.DATETIME]


def to_arrow(table: Table, rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Column-wise Arrow table of *rows* in *table*'s column order.

    Rows whose keys are exactly the table's columns in order (what every builder in records/
    produces) are transposed in one C-level ``zip``; any other row shape is read column by
    column. Datetimes may be aware (converted to UTC) or naive (taken as UTC already).
    """
    try:
        return _to_arrow(table, rows)
    except (TypeError, ValueError, RecursionError):  # orjson and Arrow refuse with these (ArrowInvalid too)
        # Only a batch holding a value orjson or Arrow cannot write pays for this: each row is
        # checked cell by cell and the offending cells kept as bounded text, flagged (lake.cells).
        return _to_arrow(table, [_writable(table, r) for r in rows])


def _dump_cell(value: Any) -> bytes:
    return _dumps(value, option=_DUMP_OPTIONS)


def _writable(table: Table, row: Mapping[str, Any]) -> Mapping[str, Any]:
    try:
        for value in row.values():
            if value is not None and not isinstance(value, int | float | bool | datetime):
                _dump_cell(value)
    except (TypeError, ValueError, RecursionError):
        return repaired_row(table, row, _dump_cell)
    return row


def _to_arrow(table: Table, rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    names = table.column_names
    if all(map(names.__eq__, map(tuple, rows))):
        columns: list[Sequence[Any]] = list(zip(*(r.values() for r in rows), strict=True)) if rows \
            else [[] for _ in names]
    else:
        columns = [[r.get(n) for r in rows] for n in names]
    arrays = [_array(column.kind, values) for column, values in zip(table.columns, columns, strict=True)]
    return pa.Table.from_arrays(arrays, names=list(names))


def _array(kind: Kind, values: Sequence[Any]) -> pa.Array:
    if kind is Kind.DYNAMIC:
        # Values read from JSON have text keys only, and orjson serialises them a third faster
        # without OPT_NON_STR_KEYS; a column holding another key (a dict built by code) is redone with it.
        try:
            return _json_array(values, None)
        except TypeError:
            return _json_array(values, _DUMP_OPTIONS)
    if kind is Kind.DATETIME:
        # Arrow converts aware values to UTC and takes naive ones as UTC itself, in C. A blob's
        # rows share one IngestedAt and one ContentCreated: such a column is converted once and
        # repeated (4 against 20 microseconds for a blob of 46 rows; checking costs 0.1).
        first = values[0] if len(values) > 1 else None
        if first is not None and values.count(first) == len(values):
            return pa.repeat(pa.scalar(first, type=_NAIVE_TIMESTAMP), len(values))
        return pa.array(values, type=_NAIVE_TIMESTAMP)
    return pa.array(values, type=_ARROW_TYPES[kind])


def _json_array(values: Sequence[Any], option: int | None) -> pa.Array:
    """A string array of the JSON text of *values* (None stays null), written straight into one
    buffer that becomes the array's data. A list of orjson's bytes objects, one per value, held
    about seven times its text (each output leaves the allocator a hole the next one does not fit:
    50 MB of AuditData cost 350 MB of RSS), and Arrow then copied it once more."""
    data = bytearray()
    ends = array("i", [0])
    end = ends.append
    nulls = 0
    try:
        for value in values:
            if value is None:
                nulls += 1
            else:
                data += _dumps(value, None, option)
            end(len(data))
    except OverflowError:
        # Over 2 GiB of text in one column: Arrow's own conversion splits it into chunks.
        return pa.array([None if v is None else _dumps(v, None, option) for v in values], type=pa.string())
    validity = pa.array([v is not None for v in values], type=pa.bool_()).buffers()[1] if nulls else None
    return pa.Array.from_buffers(pa.string(), len(values), [validity, pa.py_buffer(ends), pa.py_buffer(data)],
                                 null_count=nulls)


# -- failures of the lake itself ------------------------------------------------------------


class LakeCause(StrEnum):
    """Why the lake itself cannot be used; the text is what the error message says."""

    DISK_FULL = "disk full"
    OUT_OF_MEMORY = "out of memory"
    NOT_A_LAKE = "not a DuckDB database"
    DAMAGED = "the file is damaged"
    LOCKED = "in use by another process"
    INVALIDATED = "invalidated by an earlier fatal error"
    FATAL = "fatal error"
    IO_ERROR = "IO error"
    INTERNAL = "internal DuckDB error"
    CLOSED = "closed"


# Matched in the whole text of DuckDB's error, first match wins: DuckDB reports a full disk as an
# IOException from a statement, a TransactionException from COMMIT ("Failed to commit: Could not
# write file ...") or a FatalException from a checkpoint, and an invalidated database repeats the
# original error after "Original error:", so the disk comes before the exception's type.
_CAUSE_TEXT: tuple[tuple[str, LakeCause], ...] = (
    ("No space left on device", LakeCause.DISK_FULL),
    ("Disk quota exceeded", LakeCause.DISK_FULL),
    ("File too large", LakeCause.DISK_FULL),
    ("Out of Memory Error", LakeCause.OUT_OF_MEMORY),
    ("not a valid DuckDB database file", LakeCause.NOT_A_LAKE),
    ("Corrupt database file", LakeCause.DAMAGED),
    ("Could not read enough bytes", LakeCause.DAMAGED),
    ("Could not set lock on file", LakeCause.LOCKED),
    ("database has been invalidated", LakeCause.INVALIDATED),
    ("Could not write file", LakeCause.IO_ERROR),
    ("Could not read from file", LakeCause.IO_ERROR),
)
_CAUSE_TYPE: tuple[tuple[type[BaseException], LakeCause], ...] = (
    (duckdb.OutOfMemoryException, LakeCause.OUT_OF_MEMORY),
    (duckdb.FatalException, LakeCause.FATAL),
    (duckdb.IOException, LakeCause.IO_ERROR),
    (duckdb.InternalException, LakeCause.INTERNAL),
    (duckdb.ConnectionException, LakeCause.CLOSED),
)


def lake_cause(exc: BaseException) -> LakeCause | None:
    """The cause when *exc* says the lake itself failed (disk, memory, file, DuckDB), or None
    when it is a failure of one operation (its SQL, its data; ValueTooLargeError too)."""
    if not isinstance(exc, duckdb.Error):
        return None
    text = str(exc)
    for fragment, cause in _CAUSE_TEXT:
        if fragment in text:
            return cause
    for kind, cause in _CAUSE_TYPE:
        if isinstance(exc, kind):
            return cause
    return None


class LakeUnavailableError(StoreUnavailableError):
    """The lake at ``path`` cannot be used: ``cause`` says why, ``detail`` is DuckDB's own first
    line. Every pending and later operation of the lake fails with the same instance."""

    def __init__(self, path: Path, cause: LakeCause, error: BaseException, *, action: str = "written") -> None:
        self.path = path
        self.cause = cause
        self.action = action
        lines = str(error).strip().splitlines()
        self.detail = lines[0] if lines else type(error).__name__
        super().__init__(f"the lake at {path} cannot be {action}: {cause} ({self.detail})")


def lake_failure(path: Path, exc: BaseException, *, action: str = "written") -> LakeUnavailableError | None:
    """*exc* as a LakeUnavailableError when it is a failure of the lake itself, else None."""
    if isinstance(exc, LakeUnavailableError):
        return exc
    cause = lake_cause(exc)
    return None if cause is None else LakeUnavailableError(path, cause, exc, action=action)


class ValueTooLargeError(Exception):
    """A batch holds values too large to write even with the memory headroom given for them:
    a failure of that operation's data, not of the lake."""


# A cell of this size or more gets memory headroom: DuckDB's cast of JSON text to its JSON type
# holds about ten times the value at once (measured: a 50 MB AuditData needed a limit of 512 MB
# to 640 MB by itself, 100 MB needed 1 GB), more than the buffer pool's cap leaves free.
LARGE_VALUE = 1 << 20
VALUE_HEADROOM = 12


def _large_bytes(batch: pa.Table) -> int:
    """The total size of the text cells of *batch* of LARGE_VALUE bytes or more."""
    if batch.nbytes < LARGE_VALUE:
        return 0
    total = 0
    for column in batch.columns:
        if column.nbytes < LARGE_VALUE or not (pa.types.is_string(column.type)
                                               or pa.types.is_large_string(column.type)):
            continue
        lengths = pc.binary_length(column)
        total += int(pc.sum(pc.filter(lengths, pc.greater_equal(lengths, LARGE_VALUE))).as_py() or 0)
    return total


def _memory_cap() -> int | None:
    """80% of the machine's memory (DuckDB's own default limit), or None where it is unknown."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 0.8)
    except (AttributeError, ValueError, OSError):
        return None


def _set_memory_limit(con: duckdb.DuckDBPyConnection, limit: int) -> None:
    con.execute(f"SET memory_limit='{int(limit)}B'")


def insert_tables(
    con: duckdb.DuckDBPyConnection, tables: Mapping[str, Sequence[Mapping[str, Any]]],
    *, keyed: Collection[str] | None = None,
) -> WriteResult:
    """Insert every table's rows (inside the caller's transaction); existing keys are skipped.
    *keyed* as for ``insert_blobs``."""
    return insert_blobs(con, [tables], keyed=keyed)[0]


# The table whose rows are counted per blob: one row per record, so inserted + duplicates = records.
COUNTED_TABLE = "AuditRecord"

FOLLOWS_AUDIT_RECORD: dict[str, str] = {
    "MailItemAccess": f"k.\"Id\" = b.\"RecordId\" AND k.\"Operation\" = '{MAIL_ITEMS_ACCESSED}'",
    "SignIn": 'k."Id" = b."RecordId" AND k."Operation" = b."Operation"',
    "DirectoryChange": 'k."Id" = b."RecordId" AND k."Operation" = b."Operation"',
}
"""The derived tables, each with how its row ``b`` names the ``AuditRecord`` key ``k`` it comes from.

A derived row is written in the statement after its record's, only when that record's
``AuditRecord`` row was kept (``RETURNING``), and once per derived key within the statement: so
the key of ``AuditRecord`` keeps the derived tables free of repeats too, and a lake made by this
version gives them no key of their own. Their keys cost DuckDB more than their rows: offline, the
7-day backfill's 150,620 MailItemAccess rows inserted in commits of 8,600 took 3.9 s of CPU into
the keyed table and 1.7 s into one without the key (SignIn 1.1 and 0.4 s, DirectoryChange 0.35 and
0.20 s); without their indexes the backfill's lake is 11 % smaller (276-283 against 308-321 MiB), though
its wall time did not move beyond the noise. A lake made before keeps its keyed tables, and the
statement keeps ``OR IGNORE`` there.

The one difference from a keyed table: two records with the same Id and Operation but another
RecordType are two ``AuditRecord`` rows, and each keeps its derived rows, where a key would keep
the first one's (in ADX, the derived tables' dedup views still show one)."""


def insert_blobs(
    con: duckdb.DuckDBPyConnection, blobs: Sequence[Mapping[str, Any]], *, memory_limit: int | None = None,
    keyed: Collection[str] | None = None,
) -> list[WriteResult]:
    """Insert the rows of several blobs, one statement per table, inside the caller's transaction.

    Each of *blobs* maps table names to rows, an Arrow table or ``ArrowSlices``. Existing keys are
    skipped, and a key delivered twice within the batch keeps one row (DuckDB inserts in parallel,
    so which of them is not fixed; across batches the first delivery wins). A blob's result counts
    its ``AuditRecord`` rows: inserted, or dropped as duplicates (of the lake or of another blob
    of the batch). Aggregate tables (``SchemaObservation``) are merged into the stored rows (see
    ``duckdb_insert``). ``ArrowSlices`` get a statement per slice, each slice freed once written.
    The derived tables get the rows of the records whose ``AuditRecord`` row was kept
    (``FOLLOWS_AUDIT_RECORD``); derived rows without ``AuditRecord`` rows beside them raise ValueError.
    *keyed* names the derived tables that have a key in this lake (``LocalLake.keyed_derived``, read
    once when the lake opens); None reads them from the catalog.

    With *memory_limit* (the connection's limit, in bytes), a statement whose batch holds values
    of ``LARGE_VALUE`` bytes or more runs with the limit raised by ``VALUE_HEADROOM`` times their
    size, and the limit is put back after it; if it still runs out of memory the error is a
    ValueTooLargeError (the operation's data, not the lake). Whatever fails, the error raised is
    the statement's own, never one of the clean-up after it.
    """
    inserted = [0] * len(blobs)
    duplicates = [0] * len(blobs)
    # AuditRecord first: the derived tables' rows follow the records it keeps (FOLLOWS_AUDIT_RECORD).
    names = sorted(dict.fromkeys(name for tables in blobs for name in tables), key=lambda n: n != COUNTED_TABLE)
    follow = [n for n in names if n in FOLLOWS_AUDIT_RECORD]
    if follow and COUNTED_TABLE not in names:
        raise ValueError(f"{', '.join(follow)} rows are written only with the AuditRecord rows they come from")
    if follow and keyed is None:
        keyed = keyed_derived_tables(con)
    kept_keys: list[pa.Table] = []
    for name in names:
        table = TABLES_BY_NAME[name]
        if name in FOLLOWS_AUDIT_RECORD:
            if not kept_keys:
                continue
            con.register("_kept", pa.concat_tables(kept_keys) if len(kept_keys) > 1 else kept_keys[0])
        for batch, parts in _table_batches(table, [tables.get(name) for tables in blobs]):
            large = _large_bytes(batch) if memory_limit is not None else 0
            returned = _insert(con, table, batch, memory_limit, large, keyed=name in (keyed or ()))
            del batch  # a slice's Arrow goes before the next slice is written
            if returned is None:
                continue
            if follow and returned.num_rows:
                kept_keys.append(returned.select(["Id", "Operation"]))
            counts = pc.value_counts(returned.column("ContentId")).to_pylist()
            kept: Counter[str] = Counter({c["values"]: c["counts"] for c in counts})
            for i, content_id, count in parts:
                # Two parts of one blob in a batch (the same blob written twice) share its count.
                n = min(kept[content_id], count)
                kept[content_id] -= n
                inserted[i] += n
                duplicates[i] += count - n
        if name in FOLLOWS_AUDIT_RECORD:
            con.unregister("_kept")
    return [WriteResult(inserted=n, duplicates=d) for n, d in zip(inserted, duplicates, strict=True)]


SLICE_ROWS = 5_000
"""A blob with more ``AuditRecord`` rows than this is converted to Arrow and inserted this many rows
at a time (``ArrowSlices``): measured on a 50 MB blob, DuckDB's keyed insert of its 50,700 rows in
one statement grew the process by ~290 MB, in statements of 5,000 rows by ~175 MB (the rows
themselves included); a statement's fixed cost (10-20 ms) is small beside 5,000 rows."""


class ArrowSlices:
    """One table's rows of one blob as Arrow tables of at most ``SLICE_ROWS`` rows, built from rows
    that are dropped as they are converted, and taken by the insert one by one, so the blob is never
    whole as Python rows, as Arrow and in DuckDB at once.

    Taken, they are gone: they can be written once, so a blob handed over this way commits in a
    transaction of its own (``LocalLake.submit_batched(alone=True)``), never re-run after a failure
    of another operation; a second ``take`` raises instead of writing nothing."""

    __slots__ = ("_slices", "_taken", "content_id", "rows")

    def __init__(self, table: Table, rows: list[Mapping[str, Any]]) -> None:
        """Convert *rows* slice by slice, emptying the list as it goes."""
        self.rows = len(rows)
        self.content_id: Any = rows[0].get("ContentId") if rows else None
        self._slices: list[pa.Table] = []
        self._taken = False
        while rows:
            self._slices.append(to_arrow(table, rows[:SLICE_ROWS]))
            del rows[:SLICE_ROWS]
            release_free_heap()  # the rows and records just dropped, before the next slice takes more

    def __len__(self) -> int:
        return self.rows

    def take(self) -> Iterator[pa.Table]:
        """The slices, in order, each released here as it is handed out."""
        if self._taken:
            raise RuntimeError("a blob's Arrow slices were already written once and are gone")
        self._taken = True
        while self._slices:
            yield self._slices.pop(0)


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):  # not glibc: its allocator returns memory its own way
        return None
    return trim


_MALLOC_TRIM = _malloc_trim()


def release_free_heap() -> None:
    """Give the pages the C heap holds free back to the system (glibc; elsewhere nothing).

    glibc returns freed memory only from the top of its heap: after a big blob, the pages its
    parsed records and rows occupied stay counted in the process's memory, unusable by DuckDB's
    and Arrow's own allocators, until this is called."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


Counted = list[tuple[int, Any, int]]


def _table_batches(table: Table, parts: Sequence[Any]) -> Iterator[tuple[pa.Table, Counted]]:
    """The Arrow batches one table's *parts* (per blob: rows, an Arrow table, ``ArrowSlices``, a
    SchemaObserver or None) are inserted in and, per batch, for each blob it holds rows of: (the
    blob's index, its first ContentId, its row count in the batch).

    Each ``ArrowSlices`` slice is a batch of its own; everything else is one batch. Row lists are
    converted together, not blob by blob: each Arrow conversion costs a fixed few microseconds per
    column, which for a table with a handful of rows per blob cost more than the rows did. The
    blobs' Arrow tables are copied into one contiguous batch: DuckDB takes the GIL for each batch it
    reads from a registered stream, and while the event loop's thread runs Python each take waits up
    to the interpreter's switch interval (5 ms). 435 batches of 46 rows took 2.55 s to insert beside
    a busy Python thread, one batch of the same 20,000 rows 0.14 s (0.26 and 0.10 s with no other
    thread; 0.48 s for the 435 at a 0.5 ms switch interval). In pairs of runs of the 7-day backfill,
    a commit's AuditRecord as ~440 blob-sized slices of shared tables was slower than the code
    before in five of six pairs (up to 54.3 against 44.7 s); combined, it took 41.3 and 42.6 s
    against 44.6 and 49.3 s. The copy costs a memcpy of the group.
    Observers are folded into one before they become rows (``SchemaObserver.fold``)."""
    observers = [p for p in parts if isinstance(p, SchemaObserver)]
    if observers:
        parts = [None if isinstance(p, SchemaObserver) else p for p in parts]
        folded = SchemaObserver.fold(observers).rows()
        parts = [*parts, folded]
    arrow: list[pa.Table] = []
    rows: list[Mapping[str, Any]] = []
    counted: Counted = []
    sliced: list[tuple[int, ArrowSlices]] = []
    counts_rows = table.name == COUNTED_TABLE
    for i, part in enumerate(parts):
        if part is None or not len(part):
            continue
        if isinstance(part, ArrowSlices):
            sliced.append((i, part))
        elif isinstance(part, pa.Table):
            arrow.append(part)
            if counts_rows:
                counted.append((i, part.column("ContentId")[0].as_py(), part.num_rows))
        else:
            rows.extend(part)
            if counts_rows:
                counted.append((i, part[0]["ContentId"], len(part)))
    if rows:
        arrow.append(to_arrow(table, rows))
    del rows
    if arrow:
        yield (pa.concat_tables(arrow).combine_chunks() if len(arrow) > 1 else arrow[0]), counted
    del arrow
    for i, slices in sliced:
        for batch in slices.take():
            yield batch, [(i, slices.content_id, batch.num_rows)] if counts_rows else []
            del batch
            release_free_heap()  # the slice just written


def keyed_derived_tables(con: duckdb.DuckDBPyConnection) -> frozenset[str]:
    """The derived tables that have a primary key in this lake (made before FOLLOWS_AUDIT_RECORD)."""
    rows = con.execute(
        "SELECT table_name FROM duckdb_constraints() WHERE database_name = current_database() "
        "AND schema_name = 'main' AND constraint_type = 'PRIMARY KEY' AND list_contains(?, table_name)",
        [list(FOLLOWS_AUDIT_RECORD)]).fetchall()
    return frozenset(str(r[0]) for r in rows)


def _insert(
    con: duckdb.DuckDBPyConnection, table: Table, batch: pa.Table, memory_limit: int | None, large: int,
    *, keyed: bool = True,
) -> pa.Table | None:
    """Run *table*'s insert of *batch*: for the counted table, the ContentId and key (Id, Operation)
    of each row kept, else None. A derived table's rows are those of the AuditRecord rows registered
    as ``_kept`` (see FOLLOWS_AUDIT_RECORD); *keyed* says whether it has a primary key here.

    When the statement fails the transaction is aborted, and any clean-up statement would fail
    with "Current transaction is aborted" and hide the real error: the registered view and the
    raised limit are left to the caller's ROLLBACK (which drops the view) and its clean-up.
    """
    limit = None
    if large and memory_limit is not None:
        cap = _memory_cap()
        limit = memory_limit + VALUE_HEADROOM * large
        limit = max(memory_limit, min(limit, cap)) if cap is not None else limit
        log.info("memory limit raised to %d bytes for %d bytes of large values table=%s", limit, large, table.name)
        _set_memory_limit(con, limit)
    # As a stream: DuckDB keeps a registered Arrow table alive until the transaction ends, and a
    # big blob's slices would then all stay in memory beside DuckDB's copy of them.
    con.register("_batch", pa.RecordBatchReader.from_batches(batch.schema, batch.to_batches()))
    try:
        if table.name in FOLLOWS_AUDIT_RECORD:
            following = f"_batch b SEMI JOIN _kept k ON {FOLLOWS_AUDIT_RECORD[table.name]}"
            con.execute(duckdb_insert_distinct(table, following, keyed=keyed))
            returned = None
        elif table.name != COUNTED_TABLE:
            con.execute(duckdb_insert(table, "_batch"))
            returned = None
        else:
            # RETURNING yields only the rows kept, so the rows kept per blob are counted by ContentId.
            # As a relation: a statement with side effects runs once, at once, its result kept;
            # Arrow from the DB-API result would copy it once more.
            returned = con.sql(
                f'{duckdb_insert(table, "_batch")} RETURNING "ContentId", "Id", "Operation"').to_arrow_table()
    except duckdb.OutOfMemoryException as exc:
        if limit is None:
            raise
        raise ValueTooLargeError(
            f"{table.name}: {large} bytes of large values in one batch ran out of memory even with the "
            f"limit raised to {limit} bytes ({str(exc).splitlines()[0]})") from exc
    con.unregister("_batch")
    if limit is not None and memory_limit is not None:
        _set_memory_limit(con, memory_limit)
    return returned


Batcher = Callable[[duckdb.DuckDBPyConnection, list[Any]], list[Any]]


@dataclass(slots=True)
class _Op:
    """One submitted operation: a function of the connection, or an item for a batcher.

    A lingering operation (blob rows handed over by the collector) lets its commit wait for more
    such operations, up to the lake's ``commit_records`` records or ``COMMIT_SECONDS``. An operation
    *alone* commits in a transaction of its own (its item can be written only once)."""

    fn: Callable[[duckdb.DuckDBPyConnection], Any] | None
    batcher: Batcher | None
    item: Any
    future: asyncio.Future[Any]
    records: int = 0
    linger_until: float | None = None
    alone: bool = False


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


def _run_one(op: _Op, con: duckdb.DuckDBPyConnection) -> Any:
    return _run_group(con, [op])[0]


Outcome = tuple[bool, Any]
Connect = Callable[[str, bool], duckdb.DuckDBPyConnection]


ROW_GROUP_ROWS = 2_048
"""Rows per row group the lake writes (DuckDB's default is 122,880; 2,048, one vector, is the smallest
it accepts). A transaction that appends more than a row group writes each full one to the file
before its commit (DuckDB's optimistic write); only the rows past the last full one go through the
write-ahead log, and are rewritten into the file at the next checkpoint.

Small row groups do two things. A big blob's rows do not all sit in memory at once: measured on a
50 MB blob, DuckDB's own peak fell from ~230 MB at the default to ~130 MB at 16,384. And a commit of
the collector (``COMMIT_RECORDS``) leaves less than a row group of each table in the log: at 16,384,
the ~3,600 AuditRecord rows left over from each 20,000-record commit, with the derived tables' rows,
filled the log to ``CHECKPOINT_THRESHOLD`` two or three times in the 7-day backfill, and those
checkpoints (0.8-2.6 s each, on the lake's thread) held every blob of the backfill waiting. At 2,048
the backfill ran no checkpoint before its close: the lake's COMMITs took 2.2-3.3 s in all against
6.7-9.2 s, AuditRecord's inserts 11-16 s against 7.6-8.9 s, the close 0.6-0.8 s against 0.7-1.4 s,
and in seven interleaved pairs the backfill took 40.7 s on average against 43.7 s (faster in five).
The 50 MB blob's peak did not grow (430-433 MB against 431-448 MB) and the backfill's lake shrank
(328-337 MB against 346-433 MB). Reads pay a little for the finer grain, measured over a synthetic
table of 10 million narrow rows: a scan of one column 82-106 against 71-73 ms, a group-by 123-176
against 119-121 ms, a count over one day's time range 13-18 against 3 ms (each row group's bounds are
checked); over the backfill's lake, a group-by and a scan of AuditData took the same time. The row
group size is a setting of the attachment, not of the file, so lakes written before keep their row
groups."""

LAKE_ALIAS = "lake"
"""The lake's name on the connection that writes it (``current_database()``)."""


def _connect(path: str, read_only: bool) -> duckdb.DuckDBPyConnection:
    if read_only:
        return duckdb.connect(path, read_only=True)
    # The row group size is an ATTACH option only, so the lake is attached to an in-memory
    # connection and made its only database: the default of this connection and of its cursors.
    con = duckdb.connect()
    try:
        quoted = path.replace("'", "''")
        # Where a connection to the file would spill (the in-memory one would use ./.tmp).
        con.execute(f"SET temp_directory='{quoted}.tmp'")
        con.execute(f"ATTACH '{quoted}' AS {LAKE_ALIAS} (ROW_GROUP_SIZE {ROW_GROUP_ROWS})")
        con.execute(f"USE {LAKE_ALIAS}")
        con.execute("DETACH memory")
    except BaseException:
        _close_quietly(con)
        raise
    return con


# DuckDB rewrites what it holds at each checkpoint; at the default 16 MB threshold a backfill
# spent more time checkpointing (and re-serialising the key index) than inserting. 256 MB of
# write-ahead log bounds the memory this costs; with small row groups (ROW_GROUP_ROWS) the
# collector's commits put little in the log: the 7-day backfill does not reach it before its close.
CHECKPOINT_THRESHOLD = "256MB"
# Bytes, as DuckDB counts "512MB"; a statement writing a large value gets headroom above it (insert_blobs).
MEMORY_LIMIT = 512 * 1000 * 1000

# A commit of the collector's blobs waits for this many records, or this long after the first of
# them was handed over, whichever comes first (and not at all once nothing else is in hand:
# ``commit_soon``). Each commit and each statement costs milliseconds whatever its size, so groups
# of ~500 records spent most of the time on those. Past a row group (``ROW_GROUP_ROWS``) of
# AuditRecord rows, a commit also costs far less per row: DuckDB writes the full row groups to the
# file as the insert runs, compressed, and the write-ahead log only points at them, where a smaller
# commit copies every row into the log and rewrites it into the file at the next checkpoint.
# Measured here, the rows of the 7-day backfill (351,427 records) inserted in groups of ~3,000
# records took the lake 21.6 s (COMMIT alone 8.2 s, checkpoints included), in groups of ~17,500
# 15.1 s (COMMIT 1.8 s, 3.6 s more at close); the collector's own groups under a 0.25 s linger
# were ~3,000 records. A second is nothing next to the API's own delay of minutes.
COMMIT_RECORDS = 20_000
COMMIT_SECONDS = 1.0


class LocalLake:
    """A DuckDB lake file; safe to share between coroutines of one process.

    Once the lake itself fails (see the module's docstring) it stays failed: ``failure`` holds
    the first error, and every later operation raises it at once.
    """

    def __init__(self, path: str | Path, *, read_only: bool = False, connect: Connect = _connect) -> None:
        """Open (or create) the lake at *path*; *connect* opens the DuckDB connection (tests
        wrap it to inject failures). Raises LakeUnavailableError when the file cannot be
        opened as a lake (not a DuckDB database, damaged, locked, disk full)."""
        self.path = Path(path)
        self._read_only = read_only
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not self.path.exists():
            raise FileNotFoundError(f"no lake at {self.path}")
        self._lock = threading.Lock()
        self._pending: list[_Op] = []
        self._pending_records = 0
        self.commit_records = COMMIT_RECORDS
        """Records a lingering commit waits for (``submit_batched``); the collector sets its setting."""
        # Resolved when the pending group reaches COMMIT_RECORDS while a commit lingers; made per
        # wait, so a lake used from several event loops one after another never holds a stale one.
        self._enough: asyncio.Future[None] | None = None
        # Set by ``commit_soon``: the pending group commits without waiting out its linger.
        self._hurry = False
        self._running: list[_Op] = []
        self._flusher: asyncio.Task[None] | None = None
        self._before_commit: list[weakref.WeakMethod[Callable[[], None]]] = []
        self._failed: LakeUnavailableError | None = None
        self._memory_limit = MEMORY_LIMIT
        self._keyed_derived: frozenset[str] = frozenset()
        con: duckdb.DuckDBPyConnection | None = None
        try:
            con = connect(str(self.path), read_only)
            self._setup(con)
        except duckdb.Error as exc:
            if con is not None:
                _close_quietly(con)
            failure = lake_failure(self.path, exc, action="opened")
            if failure is None:
                raise
            raise failure from exc
        self._con = con
        self._insert_blobs: Batcher = functools.partial(
            insert_blobs, memory_limit=self._memory_limit, keyed=self._keyed_derived)

    def _setup(self, con: duckdb.DuckDBPyConnection) -> None:
        con.execute("SET TimeZone='UTC'")
        if self._read_only:
            return
        con.execute(f"SET checkpoint_threshold='{CHECKPOINT_THRESHOLD}'")
        # Each full row group of a big append goes to the file at once (see ROW_GROUP_ROWS);
        # DuckDB's default buffers five before writing them.
        con.execute("SET write_buffer_row_group_count=1")
        # DuckDB's buffer pool otherwise grows toward 80% of the machine's memory as the lake
        # grows; capped, it evicts (the lake is on disk), so the collector's memory stays
        # bounded by the blobs in flight, not by the size of the lake or of a backfill.
        _set_memory_limit(con, self._memory_limit)
        # Audit records are mostly JSON text; zstd stores it in about a third of the space
        # of the default string compression, and costs less time at each checkpoint.
        con.execute("PRAGMA force_compression='zstd'")
        for table in TABLES:
            con.execute(duckdb_ddl(table, keyed=table.name not in FOLLOWS_AUDIT_RECORD))
        _add_missing_columns(con)
        con.execute(LAKE_INFO_DDL)
        self._keyed_derived = keyed_derived_tables(con)

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        return self._con

    @property
    def memory_limit(self) -> int:
        """The connection's memory limit, in bytes (``insert_blobs`` raises it for large values)."""
        return self._memory_limit

    @property
    def keyed_derived(self) -> frozenset[str]:
        """The derived tables this lake keeps keyed (made before ``FOLLOWS_AUDIT_RECORD``), read once at open."""
        return self._keyed_derived

    @property
    def failure(self) -> LakeUnavailableError | None:
        """The failure of the lake itself that ended its use, if any."""
        return self._failed

    @property
    def unresolved_operations(self) -> int:
        """Operations submitted with ``run``/``run_batched`` whose callers are still waiting."""
        return sum(not op.future.done() for op in (*self._pending, *self._running))

    def close(self) -> None:
        with self._lock:
            try:
                self._con.close()
            except duckdb.Error as exc:
                if self._failed is None:
                    self._raise_if_lake(exc)
                    raise
                # The lake already failed and said why; closing it cannot add anything useful.
                log.debug("closing a failed lake path=%s error=%s", self.path, exc)

    @contextmanager
    def locked(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._lock:
            yield self._con

    async def run(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run *fn* inside a transaction in a worker thread; return once it is committed.

        *fn* must not manage transactions itself, nor catch DuckDB's errors and go on (DuckDB
        then silently rolls back at COMMIT). Operations submitted together share a commit; if
        one raises, the others are re-run in transactions of their own so one bad operation
        never takes its neighbours down with it. If the lake itself fails, every operation
        pending and every later one raises the same LakeUnavailableError.
        """
        result: T = await self._submit(_Op(fn, None, None, asyncio.get_running_loop().create_future()))
        return result

    async def run_batched(self, batcher: Batcher, item: Any) -> Any:
        """Like :meth:`run`, but the items of one batcher submitted together are handed to it in
        one call, ``batcher(con, items) -> results`` (a result per item, in order), so a commit
        group costs one statement instead of one per item."""
        return await self._submit(_Op(None, batcher, item, asyncio.get_running_loop().create_future()))

    def submit_batched(self, batcher: Batcher, item: Any, *, records: int, alone: bool = False) -> asyncio.Future[Any]:
        """Hand *item* to *batcher* like :meth:`run_batched`, without waiting: the returned future
        resolves once it is committed. Its commit lingers for more such items (``commit_records``
        records in all, or ``COMMIT_SECONDS`` after the first), so the collector's blobs share
        few, large commits. Raises the lake's failure at once if it has failed.

        With *alone*, *item* is consumed as it is written (a big blob's ``ArrowSlices``), so it
        could not be re-run if another operation of its group failed: it commits in a transaction
        of its own, right after its group's, and fails or succeeds by itself."""
        if self._failed is not None:
            raise self._failed
        loop = asyncio.get_running_loop()
        op = _Op(None, batcher, item, loop.create_future(), records, loop.time() + COMMIT_SECONDS, alone)
        self._enqueue(op)
        return op.future

    def before_commit(self, prepare: Callable[[], None]) -> None:
        """Call *prepare*, a bound method, in the event loop's thread each time a group of submitted
        operations is taken for a commit, before the lake's thread reads them: a submitter finishes
        there what it put off to do for several operations at once (``LocalStateStore`` converts the
        rows of many blobs to Arrow together). An exception from *prepare* is logged and the commit
        goes on. The lake holds *prepare* weakly: a state store made for one command (``state_store``)
        does not live on in the lake, nor its hook run, once nothing else holds it."""
        self._before_commit.append(weakref.WeakMethod(prepare))

    def commit_soon(self) -> None:
        """Nothing more is coming for now (the collector has no other blob in hand): the
        pending group commits at once instead of lingering ``COMMIT_SECONDS`` for company. A
        blob's rows then reach the lake up to that long sooner after the last fetch of a pass,
        which at a short poll is most of a fresh blob's wait after its fetch."""
        self._hurry = True
        if self._enough is not None and not self._enough.done():
            self._enough.set_result(None)

    async def _submit(self, op: _Op) -> Any:
        if self._failed is not None:
            raise self._failed
        self._enqueue(op)
        return await op.future

    def _enqueue(self, op: _Op) -> None:
        self._pending.append(op)
        self._pending_records += op.records
        if self._pending_records >= self.commit_records and self._enough is not None and not self._enough.done():
            self._enough.set_result(None)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _linger(self) -> None:
        """Wait, while the pending group holds lingering operations, for it to hold
        ``commit_records`` records or for the first of them to have waited ``COMMIT_SECONDS``."""
        deadline = min((op.linger_until for op in self._pending if op.linger_until is not None), default=None)
        if deadline is None or self._pending_records >= self.commit_records or self._hurry:
            return
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        self._enough = loop.create_future()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._enough), remaining)
        finally:
            self._enough = None

    async def _flush(self) -> None:
        """Commit what is pending, group after group; every operation taken ends resolved."""
        while self._pending:
            try:
                await self._linger()
            except asyncio.CancelledError:
                for op in self._pending:
                    op.future.cancel()
                self._pending = []
                raise
            batch, self._pending = self._pending, []
            self._pending_records = 0
            self._hurry = False
            self._running = batch
            live = []
            for ref in self._before_commit:
                prepare = ref()
                if prepare is None:  # its owner is gone
                    continue
                live.append(ref)
                try:
                    prepare()
                except Exception:  # what it left undone is done by the commit itself
                    log.exception("preparing a commit failed path=%s", self.path)
            self._before_commit = live
            try:
                outcomes = await asyncio.to_thread(self._commit, batch)
            except asyncio.CancelledError:
                # The event loop is going away: nobody may be left waiting for what will not run.
                for op in (*batch, *self._pending):
                    op.future.cancel()
                self._pending = []
                raise
            except Exception as exc:  # a defect of the commit path itself: fail the group, never hang it
                log.exception("lake commit failed path=%s", self.path)
                outcomes = [(False, exc)] * len(batch)
            finally:
                self._running = []
            for op, (ok, value) in zip(batch, outcomes, strict=True):
                if op.future.done():
                    continue
                if ok:
                    op.future.set_result(value)
                else:
                    op.future.set_exception(value)

    def _commit(self, ops: list[_Op]) -> list[Outcome]:
        with self._lock:
            shared = [op for op in ops if not op.alone]
            outcomes = iter(self._commit_group(shared) if shared else [])
            return [self._commit_alone(op) if op.alone else next(outcomes) for op in ops]

    def _commit_alone(self, op: _Op) -> Outcome:
        """Commit *op* in a transaction of its own; the caller holds the lock."""
        if self._failed is not None:
            return False, self._failed
        ok, value = self._transaction(self._con, functools.partial(_run_one, op))
        failure = None if ok else self._lake_failure(value)
        return (False, failure) if failure is not None else (ok, value)

    def _commit_group(self, ops: list[_Op]) -> list[Outcome]:
        """Commit *ops* in one transaction, or each in its own if one fails; the caller holds the lock."""
        if self._failed is not None:
            return [(False, self._failed)] * len(ops)
        con = self._con
        ok, value = self._transaction(con, lambda c: _run_group(c, ops))
        if ok:
            return [(True, r) for r in value]
        failure = self._lake_failure(value)
        if failure is not None:
            # Not retried op by op: the lake, not one operation's data, is what failed.
            return [(False, failure)] * len(ops)
        if len(ops) == 1:
            return [(False, value)]
        # Whatever committed alone is reported as done: its caller must not retry it. Once the lake
        # itself fails, _commit_alone answers the rest with that failure without running them.
        return [self._commit_alone(op) for op in ops]

    def _transaction(self, con: duckdb.DuckDBPyConnection, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> Outcome:
        """(True, fn's result) once committed, or (False, the first error) with the transaction
        rolled back; never raises, and never reports an error of the clean-up instead."""
        began = False
        try:
            con.execute("BEGIN TRANSACTION")
            began = True
            value = fn(con)
        except Exception as exc:
            if began:
                self._rollback(con)
            return False, exc
        try:
            # DuckDB ends the transaction whatever COMMIT's outcome: no ROLLBACK after it.
            con.execute("COMMIT")
        except Exception as exc:
            self._reset_memory_limit(con)
            return False, exc
        return True, value

    def _rollback(self, con: duckdb.DuckDBPyConnection) -> None:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error as exc:  # a lake that failed may fail this too: the first error is the one reported
            log.debug("rollback failed after an earlier error path=%s error=%s", self.path, exc)
        self._reset_memory_limit(con)

    def _reset_memory_limit(self, con: duckdb.DuckDBPyConnection) -> None:
        # A statement that failed left its memory headroom in place (see insert_blobs).
        if self._read_only:
            return
        try:
            _set_memory_limit(con, self._memory_limit)
        except duckdb.Error as exc:
            log.debug("memory limit not reset path=%s error=%s", self.path, exc)

    def _lake_failure(self, exc: BaseException) -> LakeUnavailableError | None:
        """Record and return *exc* as the lake's failure when it is one (the first one stays)."""
        failure = lake_failure(self.path, exc, action="read" if self._read_only else "written")
        if failure is not None and self._failed is None:
            self._failed = failure
            log.info("lake failed path=%s cause=%s error=%s", self.path, failure.cause, failure.detail)
        return self._failed if failure is not None else None

    def _raise_if_lake(self, exc: BaseException) -> None:
        failure = self._lake_failure(exc)
        if failure is not None:
            raise failure from exc

    def state_store(self) -> LocalStateStore:
        """The ledger, checkpoints and runs kept in this lake."""
        from auditlake.state.local import LocalStateStore

        return LocalStateStore(self)

    # -- Sink ---------------------------------------------------------------------------

    def write_tables(self, tables: Mapping[str, Sequence[Mapping[str, Any]]]) -> WriteResult:
        """Insert every table's rows in one transaction; rows whose key exists are skipped."""
        with self._lock:
            if self._failed is not None:
                raise self._failed
            ok, value = self._transaction(self._con, lambda con: insert_tables(con, tables, keyed=self._keyed_derived))
            if not ok:
                self._raise_if_lake(value)
                raise value
        result: WriteResult = value
        return result

    async def write_blob(self, blob: ContentBlob, tables: Mapping[str, Any]) -> WriteResult:
        """Write one blob's rows (lists of row mappings, or Arrow tables); merged with the other
        blobs of its commit group into one statement per table. A group holding a large value
        gets the memory it needs for that statement (see insert_blobs).

        Rows for ``EntraActivityRaw`` (Entra ID records in their diagnostic-settings envelope) are
        not kept as they are: the same KQL expansion ADX's update policies run makes them rows of
        the five Entra tables, in one transaction (``entra_expand``)."""
        if RAW_TABLE in tables:
            envelopes = [e for row in tables[RAW_TABLE] for e in row["Records"]]
            counts = await self.run(lambda con: insert_envelopes(con, envelopes))
            expanded = WriteResult(sum(counts.values()), len(envelopes) - sum(counts.values()))
            rest = {name: rows for name, rows in tables.items() if name != RAW_TABLE}
            if not rest:
                return expanded
            other: WriteResult = await self.run_batched(self._insert_blobs, rest)
            return WriteResult(expanded.inserted + other.inserted, expanded.duplicates + other.duplicates)
        result: WriteResult = await self.run_batched(self._insert_blobs, tables)
        return result

    # -- lake metadata ------------------------------------------------------------------

    def get_info(self, key: str) -> str | None:
        with self._lock:
            if self._failed is not None:
                raise self._failed
            try:
                row = self._con.execute('SELECT "Value" FROM "LakeInfo" WHERE "Key" = ?', [key]).fetchone()
            except duckdb.CatalogException:
                return None
            except duckdb.Error as exc:
                self._raise_if_lake(exc)
                raise
        return None if row is None else str(row[0])

    def set_info(self, key: str, value: str) -> None:
        with self._lock:
            if self._failed is not None:
                raise self._failed
            try:
                self._con.execute('INSERT OR REPLACE INTO "LakeInfo" VALUES (?, ?)', [key, value])
            except duckdb.Error as exc:
                self._raise_if_lake(exc)
                raise


def _add_missing_columns(con: duckdb.DuckDBPyConnection) -> None:
    """Give a lake made by an earlier version the columns added to the schema since."""
    rows = con.execute("SELECT table_name, column_name FROM information_schema.columns "
                       "WHERE table_catalog = current_database() AND table_schema = 'main' "
                       "ORDER BY table_name, ordinal_position").fetchall()
    existing: dict[str, list[str]] = {}
    for table_name, column_name in rows:
        existing.setdefault(str(table_name), []).append(str(column_name))
    statements = [s for t in TABLES for s in duckdb_add_missing(t, existing.get(t.name, t.column_names))]
    if not statements:
        return
    # One transaction: a column added without its backfill would never be backfilled.
    con.execute("BEGIN TRANSACTION")
    for statement in statements:
        con.execute(statement)
    con.execute("COMMIT")


def _close_quietly(con: duckdb.DuckDBPyConnection) -> None:
    try:
        con.close()
    except duckdb.Error as exc:
        log.debug("closing a connection that failed to open error=%s", exc)
