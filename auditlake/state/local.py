"""Checkpoints, the content ledger and run history kept in the local DuckDB lake.

Keeping them in the same file as the rows means a killed ``collect`` restarts from a
consistent state: a blob is either ``listed`` (and re-driven) or settled.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from auditlake.lake.duckdb_lake import (
    COUNTED_TABLE,
    SLICE_ROWS,
    ArrowSlices,
    LocalLake,
    insert_blobs,
    insert_tables,
    naive_utc,
    to_arrow,
)
from function_app.core.model import (
    FAILURE_STATUSES,
    BlobStatus,
    Checkpoint,
    ContentBlob,
    RunStats,
    WriteResult,
    first_error,
    utc,
)
from function_app.core.ports import Sink
from function_app.lake.entra_schema import RAW_TABLE
from function_app.lake.schema import AUDIT_RECORD, CONTENT_LEDGER, TABLES_BY_NAME


def _aware(value: datetime | None) -> datetime | None:
    return None if value is None else utc(value)


def _blob(row: tuple[object, ...]) -> ContentBlob:
    tenant, ctype, cid, uri, created, expiration = row
    assert isinstance(created, datetime) and isinstance(expiration, datetime)
    return ContentBlob(str(tenant), str(ctype), str(cid), str(uri), utc(created), utc(expiration))


_MARK_SCHEMA = pa.schema([
    ("TenantId", pa.string()), ("ContentType", pa.string()), ("ContentId", pa.string()),
    ("Status", pa.string()), ("Error", pa.string()), ("Records", pa.int64()), ("Bytes", pa.int64()),
    ("FetchedAt", pa.timestamp("us")), ("IngestedAt", pa.timestamp("us")), ("Marks", pa.int64()),
    ("FirstError", pa.string()),
])

# model.first_error in SQL, over the row before this group's marks (l) and the first error of the
# group's own marks (m): the rule has to hold inside the one UPDATE a commit group makes.
_FIRST_ERROR_SQL = (
    'coalesce(nullif(l."FirstError", \'\'), '
    'CASE WHEN l."Status" IN ({statuses}) AND l."Error" <> \'\' THEN l."Error" END, m."FirstError")'
).format(statuses=", ".join(f"'{s.value}'" for s in sorted(FAILURE_STATUSES)))


def _apply_marks(con: duckdb.DuckDBPyConnection, marks: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    """Settle the ledger rows of *marks* (ledger values by column name) in one UPDATE: one
    statement per blob cost milliseconds each and bounded the pipeline. A blob marked twice in
    one group keeps its last mark and counts both attempts. Returns, per mark, the row as
    written (None for a blob the ledger does not hold)."""
    last: dict[tuple[str, str, str], dict[str, Any]] = {}
    for m in marks:
        key = (m["TenantId"], m["ContentType"], m["ContentId"])
        earlier = last.get(key) or {}
        last[key] = {**m, "Marks": 1 + earlier.get("Marks", 0),
                     "FirstError": first_error(earlier, BlobStatus(m["Status"]), m["Error"])}
    con.register("_marks", pa.Table.from_pylist(list(last.values()), schema=_MARK_SCHEMA))
    # Not in a `finally`: after a failed statement the transaction is aborted, unregistering would
    # fail with "Current transaction is aborted" and hide the real error; the ROLLBACK drops the view.
    con.execute(
        'UPDATE "ContentLedger" AS l SET "Status" = m."Status", "Attempts" = l."Attempts" + m."Marks", '
        '"Error" = m."Error", "Records" = coalesce(m."Records", l."Records"), '
        '"Bytes" = coalesce(m."Bytes", l."Bytes"), "FetchedAt" = coalesce(m."FetchedAt", l."FetchedAt"), '
        '"IngestedAt" = coalesce(m."IngestedAt", l."IngestedAt"), '
        f'"FirstError" = {_FIRST_ERROR_SQL} FROM _marks AS m '
        'WHERE l."TenantId" = m."TenantId" AND l."ContentType" = m."ContentType" '
        'AND l."ContentId" = m."ContentId" RETURNING *'
    )
    written = _rows_by_key(con)
    con.unregister("_marks")
    return [written.get((m["TenantId"], m["ContentType"], m["ContentId"])) for m in marks]


def _rows_by_key(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str, str], dict[str, Any]]:
    """The rows the last statement returned, by blob."""
    assert con.description is not None
    names = [d[0] for d in con.description]
    rows = (dict(zip(names, r, strict=True)) for r in con.fetchall())
    return {(r["TenantId"], r["ContentType"], r["ContentId"]): r for r in rows}


log = logging.getLogger(__name__)

CONVERT_ROWS = 1_000
"""AuditRecord rows handed over (blobs' rows together) before they are converted to Arrow at once.
A conversion costs ~5 microseconds per column whatever its rows: for a blob of 46 records that was
a third of its cost. Measured here on a sample of the emulator's records, microseconds a record:
12.9 a blob at a time, 8.7 at 1,000 rows, 8.7 at 2,000, and 15.3 at 3,000 (the buffers outgrow
the cache). Rows wait as Python objects until then, a few MB."""


@dataclass(frozen=True, slots=True)
class _Ingested:
    """One blob's rows and what its ``ingested`` mark needs, waiting for a commit. ``AuditRecord`` is
    Arrow, or its rows until ``LocalStateStore._convert_handed_over`` makes them its slice of one."""

    blob: ContentBlob
    tables: dict[str, Any]
    clock: Callable[[], datetime]
    records: int
    size: int


def _insert_ingested(con: duckdb.DuckDBPyConnection, items: list[_Ingested], *,
                     memory_limit: int | None, keyed: Collection[str]) -> list[WriteResult]:
    """The rows of every blob of *items*, then their ``ingested`` marks, in the caller's transaction
    (*keyed*: the lake's keyed derived tables, see ``insert_blobs``)."""
    results = insert_blobs(con, [i.tables for i in items], memory_limit=memory_limit, keyed=keyed)
    marks = []
    for item in items:
        # Stamped now, inside the commit: IngestedAt says when the rows became queryable.
        at = naive_utc(item.clock())
        marks.append({"TenantId": item.blob.tenant_id, "ContentType": item.blob.content_type,
                      "ContentId": item.blob.content_id, "Status": BlobStatus.INGESTED.value, "Error": None,
                      "Records": item.records, "Bytes": item.size, "FetchedAt": at, "IngestedAt": at})
    _apply_marks(con, marks)
    return results


class LocalStateStore:
    """StateStore over a LocalLake; one process writes a lake at a time (DuckDB's own lock)."""

    def __init__(self, lake: LocalLake) -> None:
        self._lake = lake
        # One object for every submission: the lake batches the items of the same batcher.
        self._ingest = functools.partial(_insert_ingested, memory_limit=lake.memory_limit,
                                         keyed=lake.keyed_derived)
        # Blobs handed over whose AuditRecord rows are still rows: converted together (CONVERT_ROWS).
        self._unconverted: list[_Ingested] = []
        self._unconverted_rows = 0
        lake.before_commit(self._convert_handed_over)

    async def get_checkpoint(self, tenant_id: str, content_type: str) -> Checkpoint | None:
        def q(con: duckdb.DuckDBPyConnection) -> Checkpoint | None:
            rows = con.execute(
                'SELECT "Position", "LastSweep" FROM "Checkpoint" WHERE "TenantId" = ? AND "ContentType" = ?',
                [tenant_id, content_type],
            ).fetchall()
            # fetchall, not fetchone: a result left unfinished on the connection makes DuckDB refuse
            # to register the Arrow batch of another operation in the same commit group.
            if not rows:
                return None
            row = rows[0]
            return Checkpoint(tenant_id, content_type, utc(row[0]), last_sweep=_aware(row[1]))

        return await self._lake.run(q)

    async def save_checkpoint(self, checkpoint: Checkpoint) -> Checkpoint:
        def q(con: duckdb.DuckDBPyConnection) -> None:
            con.execute(
                'INSERT OR REPLACE INTO "Checkpoint" VALUES (?, ?, ?, ?, now()::TIMESTAMP)',
                [checkpoint.tenant_id, checkpoint.content_type, naive_utc(checkpoint.position),
                 naive_utc(checkpoint.last_sweep)],
            )

        await self._lake.run(q)
        return checkpoint

    async def register_listed(self, blobs: Sequence[ContentBlob], listed_at: datetime) -> list[ContentBlob]:
        if not blobs:
            return []

        def q(con: duckdb.DuckDBPyConnection) -> list[ContentBlob]:
            known: dict[tuple[str, str, str], str] = {}
            tenants = {b.tenant_id for b in blobs}
            for tenant in tenants:
                ids = [b.content_id for b in blobs if b.tenant_id == tenant]
                rows = con.execute(
                    'SELECT "ContentType", "ContentId", "Status" FROM "ContentLedger" '
                    'WHERE "TenantId" = ? AND "ContentId" IN (SELECT unnest(?))',
                    [tenant, ids],
                ).fetchall()
                known.update({(tenant, str(ct), str(cid)): str(status) for ct, cid, status in rows})
            new = [b for b in blobs if (b.tenant_id, b.content_type, b.content_id) not in known]
            never_handed = [b for b in blobs
                            if known.get((b.tenant_id, b.content_type, b.content_id)) == BlobStatus.LISTED.value]
            if new:
                # One statement for the window: DuckDB pays milliseconds per statement.
                ledger_rows = [{"TenantId": b.tenant_id, "ContentType": b.content_type, "ContentId": b.content_id,
                                "ContentUri": b.content_uri, "ContentCreated": b.content_created,
                                "ContentExpiration": b.content_expiration, "ListedAt": listed_at,
                                "Status": BlobStatus.LISTED.value, "Attempts": 0} for b in new]
                insert_tables(con, {CONTENT_LEDGER.name: ledger_rows})
            return new + never_handed

        return await self._lake.run(q)

    async def mark_queued(self, blobs: Sequence[ContentBlob]) -> None:
        def q(con: duckdb.DuckDBPyConnection) -> None:
            for tenant, ctype in {(b.tenant_id, b.content_type) for b in blobs}:
                con.execute(
                    'UPDATE "ContentLedger" SET "Status" = ? WHERE "TenantId" = ? AND "ContentType" = ? '
                    'AND "Status" = ? AND "ContentId" IN (SELECT unnest(?))',
                    [BlobStatus.QUEUED.value, tenant, ctype, BlobStatus.LISTED.value,
                     [b.content_id for b in blobs if (b.tenant_id, b.content_type) == (tenant, ctype)]],
                )

        await self._lake.run(q)

    async def pending(self, tenant_id: str, content_type: str) -> list[ContentBlob]:
        def q(con: duckdb.DuckDBPyConnection) -> list[ContentBlob]:
            rows = con.execute(
                'SELECT "TenantId", "ContentType", "ContentId", "ContentUri", "ContentCreated", '
                '"ContentExpiration" FROM "ContentLedger" WHERE "TenantId" = ? AND "ContentType" = ? '
                'AND "Status" IN (?, ?) ORDER BY "ContentCreated"',
                [tenant_id, content_type, BlobStatus.LISTED.value, BlobStatus.QUEUED.value],
            ).fetchall()
            return [_blob(r) for r in rows]

        return await self._lake.run(q)

    async def failed(self, tenant_id: str | None = None) -> list[ContentBlob]:
        """Blobs whose last attempt failed, for ``replay``."""

        def q(con: duckdb.DuckDBPyConnection) -> list[ContentBlob]:
            rows = con.execute(
                'SELECT "TenantId", "ContentType", "ContentId", "ContentUri", "ContentCreated", '
                '"ContentExpiration" FROM "ContentLedger" WHERE "Status" = ? '
                'AND (? IS NULL OR "TenantId" = ?) ORDER BY "ContentCreated"',
                [BlobStatus.FAILED.value, tenant_id, tenant_id],
            ).fetchall()
            return [_blob(r) for r in rows]

        return await self._lake.run(q)

    async def mark(
        self,
        blob: ContentBlob,
        status: BlobStatus,
        *,
        at: datetime,
        records: int | None = None,
        size: int | None = None,
        error: str | None = None,
    ) -> dict[str, Any] | None:
        """Move the ledger row of *blob* to *status*, counting the attempt; returns the row as written.

        ``Error`` is the latest attempt's; ``FirstError`` keeps what the blob first failed with."""
        ingested_at = naive_utc(at) if status is BlobStatus.INGESTED else None
        # FetchedAt is the time of the last attempt, whatever its outcome.
        mark = {"TenantId": blob.tenant_id, "ContentType": blob.content_type, "ContentId": blob.content_id,
                "Status": status.value, "Error": error, "Records": records, "Bytes": size,
                "FetchedAt": naive_utc(at), "IngestedAt": ingested_at}
        written: dict[str, Any] | None = await self._lake.run_batched(_apply_marks, mark)
        return written

    def keeps_rows_of(self, sink: Sink) -> bool:
        return sink is self._lake

    def commit_soon(self) -> None:
        self._lake.commit_soon()

    async def submit_ingested(
        self,
        blob: ContentBlob,
        tables: Mapping[str, Any],
        *,
        clock: Callable[[], datetime],
        records: int,
        size: int,
    ) -> Awaitable[WriteResult]:
        """Hand over *blob*'s rows with its ``ingested`` mark; the returned future resolves once
        both are committed, in one transaction shared with other blobs (``LocalLake.submit_batched``).

        A blob of more than ``SLICE_ROWS`` records is taken over, not copied: its ``AuditRecord``
        row list is emptied as it becomes ``ArrowSlices``, and the blob commits in a transaction of
        its own, its rows and its mark together as any other's.

        Entra records go the way ``LocalLake.write_blob`` takes them (expanded), then marked."""
        if RAW_TABLE in tables:
            result = await self._lake.write_blob(blob, tables)
            await self.mark(blob, BlobStatus.INGESTED, at=clock(), records=records, size=size)
            done: asyncio.Future[WriteResult] = asyncio.get_running_loop().create_future()
            done.set_result(result)
            return done
        # AuditRecord, a row per record, becomes Arrow in the event loop's thread, so the lake's
        # thread spends its time in DuckDB: the rows of several blobs together (CONVERT_ROWS); the
        # small tables are converted per commit there.
        rows = dict(tables)
        audit = rows.get(COUNTED_TABLE)
        big = False
        if isinstance(audit, list) and len(audit) > SLICE_ROWS:
            big = True
            # Each slice of rows is dropped once it is Arrow, and with it the parsed records it
            # holds (AuditData is the record itself), so the blob's memory moves rather than grows.
            rows[COUNTED_TABLE] = ArrowSlices(AUDIT_RECORD, audit)
            # The derived tables' rows hold pieces of the same records: kept as rows until the
            # commit, they would keep the memory those records occupied from going back.
            rows = {name: to_arrow(TABLES_BY_NAME[name], part) if isinstance(part, list) and name in TABLES_BY_NAME
                    else part for name, part in rows.items()}
        unconverted = audit if isinstance(audit, list) and not big else None
        del audit
        item = _Ingested(blob, rows, clock, records, size)
        done = self._lake.submit_batched(self._ingest, item, records=max(records, 1), alone=big)
        if unconverted is not None:
            self._unconverted.append(item)
            self._unconverted_rows += len(unconverted)
            if self._unconverted_rows >= CONVERT_ROWS:
                self._convert_handed_over()
        return done

    def _convert_handed_over(self) -> None:
        """The ``AuditRecord`` rows of the blobs handed over since the last call, as one Arrow
        table, each blob's rows replaced by its slice of it. Runs in the event loop's thread, at
        ``CONVERT_ROWS`` rows and when the lake takes a group for a commit (``LocalLake.before_commit``),
        so no blob reaches the lake's thread unconverted but by a failure here: the commit then
        converts its rows as it does the small tables', and a blob's failure stays its own."""
        items, self._unconverted, self._unconverted_rows = self._unconverted, [], 0
        if not items:
            return
        parts = [item.tables[COUNTED_TABLE] for item in items]
        try:
            converted = to_arrow(AUDIT_RECORD, [row for part in parts for row in part])
        except Exception:  # to_arrow repairs what a row holds; this is a defect, and costs no row
            log.exception("converting %d blobs' AuditRecord rows together failed; their commit converts them",
                          len(items))
            return
        start = 0
        for item, part in zip(items, parts, strict=True):
            item.tables[COUNTED_TABLE] = converted.slice(start, len(part))
            start += len(part)

    async def record_run(self, run: RunStats) -> None:
        def q(con: duckdb.DuckDBPyConnection) -> None:
            con.execute(
                'INSERT OR REPLACE INTO "CollectorRun" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
                [run.run_id, naive_utc(run.started_at), naive_utc(run.finished_at), run.tenant_id,
                 run.content_type, naive_utc(run.window_start), naive_utc(run.window_end), run.pages,
                 run.blobs_listed, run.blobs_new, run.throttled, orjson.dumps(run.errors).decode()],
            )

        await self._lake.run(q)
