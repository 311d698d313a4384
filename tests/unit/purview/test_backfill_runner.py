"""The backfill runner over fakes: ledger states, cutting, paging twice, resuming, SearchCount."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from function_app.compose import build_rows
from function_app.core.model import BlobStatus, ContentBlob, WriteResult
from function_app.purview.backfill import BackfillOptions, BackfillRunner, SliceRow, TenantBackfill
from function_app.purview.client import QueryState, QueryStatus
from function_app.purview.slices import SlicingRules

T0 = datetime(2026, 9, 5, tzinfo=UTC)
TENANT = "t1"


def _record(i: int, at: datetime) -> dict[str, Any]:
    return {"Id": f"id-{i}", "RecordType": 1, "Operation": "Op", "CreationTime": at.strftime("%Y-%m-%dT%H:%M:%S"),
            "Workload": "Exchange"}


@dataclass
class FakeSearch:
    stored: list[dict[str, Any]]
    limit: int = 10**6
    fail_first: int = 0
    stuck_first: int = 0
    flaky_first: int = 0
    created: list[tuple[datetime, datetime]] = field(default_factory=list)
    queries: dict[str, dict[str, Any]] = field(default_factory=dict)

    async def create_query(self, tenant_id: str, start: datetime, end: datetime, *, display_name: str,
                           services: Sequence[str] = (), record_types: Sequence[str] = ()) -> QueryState:
        n = len(self.created)
        self.created.append((start, end))
        fate = "stuck" if n < self.stuck_first else "failed" if n < self.stuck_first + self.fail_first else "ok"
        url = f"https://graph.test/q/{n}"
        self.queries[url] = {"start": start, "end": end, "fate": fate, "pagings": 0}
        return QueryState(url, QueryStatus.NOT_STARTED)

    def _found(self, url: str) -> list[dict[str, Any]]:
        q = self.queries[url]
        return [r for r in self.stored
                if q["start"] <= datetime.fromisoformat(r["CreationTime"]).replace(tzinfo=UTC) < q["end"]]

    async def get_query(self, tenant_id: str, query_url: str) -> QueryState:
        q = self.queries[query_url]
        if q["fate"] == "stuck":
            return QueryState(query_url, QueryStatus.RUNNING)
        if q["fate"] == "failed":
            return QueryState(query_url, QueryStatus.FAILED)
        found = self._found(query_url)
        return QueryState(query_url, QueryStatus.SUCCEEDED, self.limit, len(found) > self.limit,
                          min(len(found), self.limit))

    async def records(self, tenant_id: str, query_url: str) -> AsyncIterator[list[dict[str, Any]]]:
        q = self.queries[query_url]
        q["pagings"] += 1
        found = self._found(query_url)[: self.limit]
        if q["pagings"] == 1 and self.flaky_first > 0 and found:
            self.flaky_first -= 1
            found = found[1:]
        for i in range(0, len(found), 3):
            yield [{"id": r["Id"], "auditData": r} for r in found[i:i + 3]]


@dataclass
class Memory:
    """StateStore + SliceLedger + Sink in memory."""

    ledger: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: set[tuple[Any, ...]] = field(default_factory=set)
    counts: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)

    async def register_listed(self, blobs: Sequence[ContentBlob], listed_at: datetime) -> list[ContentBlob]:
        new = [b for b in blobs if b.content_id not in self.ledger]
        for b in new:
            self.ledger[b.content_id] = {"Status": "listed", "ContentUri": b.content_uri, "Records": None}
        return new

    async def mark(self, blob: ContentBlob, status: BlobStatus, *, at: datetime, records: int | None = None,
                   size: int | None = None, error: str | None = None) -> dict[str, Any] | None:
        row = self.ledger.get(blob.content_id)
        if row is not None:
            row.update(Status=status.value, Records=records, Error=error)
        return row

    async def slice_rows(self, tenant_id: str) -> Mapping[str, SliceRow]:
        return {cid: SliceRow(r["Status"], r["ContentUri"]) for cid, r in self.ledger.items()}

    async def set_query(self, blob: ContentBlob) -> None:
        self.ledger[blob.content_id].update(ContentUri=blob.content_uri, Status="queued")

    async def write_blob(self, blob: ContentBlob, tables: Mapping[str, Sequence[Mapping[str, Any]]]) -> WriteResult:
        inserted = duplicates = 0
        for row in tables.get("AuditRecord", ()):
            key = (row["Id"], row["RecordType"], row["Operation"])
            if key in self.keys:
                duplicates += 1
            else:
                self.keys.add(key)
                inserted += 1
        for row in tables.get("SearchCount", ()):
            self.counts[(row["Day"], row["Workload"], row["RecordType"])] = dict(row)
        return WriteResult(inserted, duplicates)


def _run(search: FakeSearch, memory: Memory, days: int = 2, **options: Any) -> TenantBackfill:
    async def nap(_: float) -> None:
        await asyncio.sleep(0)

    ticks = iter(range(10**6))
    opts = BackfillOptions(poll_interval=0.01, stuck_after=5, concurrency=2,
                           rules=SlicingRules(min_span=timedelta(hours=3)), **options)
    runner = BackfillRunner(search=search, state=memory, ledger=memory, sink=memory,  # type: ignore[arg-type]
                            build_rows=build_rows, clock=lambda: T0 + timedelta(days=10), options=opts,
                            sleep=nap, monotonic=lambda: float(next(ticks)))
    return asyncio.run(runner.run(TENANT, T0 + timedelta(hours=7), T0 + timedelta(days=days)))


RECORDS = [_record(i, T0 + timedelta(minutes=37 * i)) for i in range(70)]  # about 39 a day over 2 days
EXPECTED = {(r["Id"], 1, "Op") for r in RECORDS}


def test_a_clean_run_writes_every_record_and_settles_every_day() -> None:
    memory = Memory()
    report = _run(FakeSearch(RECORDS), memory)
    assert report.ok and report.days == report.days_completed == 2
    assert memory.keys == EXPECTED
    assert {r["Status"] for r in memory.ledger.values()} == {"ingested"}
    assert sum(c["SearchRecords"] for c in memory.counts.values()) == len(EXPECTED)
    # A second run finds every day done and asks nothing.
    search = FakeSearch(RECORDS)
    again = _run(search, memory)
    assert again.days_done_before == 2 and not search.created


def test_a_limit_exceeded_cuts_the_day_in_halves_until_it_fits() -> None:
    memory = Memory()
    search = FakeSearch(RECORDS, limit=12)
    report = _run(search, memory)
    assert report.ok and report.slices_split > 0
    assert memory.keys == EXPECTED
    assert all(end - start <= timedelta(days=1) for start, end in search.created)


def test_a_limit_still_exceeded_at_the_shortest_slice_fails_it_keeping_what_it_gives() -> None:
    memory = Memory()
    report = _run(FakeSearch(RECORDS, limit=2), memory)
    assert not report.ok and report.slices_failed > 0
    assert any("at the shortest slice" in (r.get("Error") or "")
               for r in memory.ledger.values())
    assert memory.keys and memory.keys < EXPECTED
    assert not memory.counts  # no day is complete, so none is counted


def test_failed_and_stuck_queries_are_asked_again_then_cut() -> None:
    memory = Memory()
    search = FakeSearch(RECORDS, stuck_first=1, fail_first=3)
    report = _run(search, memory)
    assert report.ok and memory.keys == EXPECTED
    assert report.queries_abandoned == 1 and len(search.created) > 2


def test_pagings_that_disagree_are_paged_again_and_counted_inconsistent() -> None:
    memory = Memory()
    report = _run(FakeSearch(RECORDS, flaky_first=1), memory)
    assert report.ok and memory.keys == EXPECTED and report.repagings >= 1
    assert report.inconsistent_slices == 1
    assert [c["Consistent"] for c in memory.counts.values()].count(False) == 1


def test_a_restart_re_polls_the_query_it_had_and_recounts_the_day() -> None:
    memory = Memory()
    search = FakeSearch(RECORDS)
    # A run killed after creating the first day's query and writing part of it.
    state = asyncio.run(search.create_query(TENANT, T0, T0 + timedelta(days=1), display_name="x"))
    sid = "2026-09-05T00:00:00Z/2026-09-06T00:00:00Z/all"
    memory.ledger[sid] = {"Status": "queued", "ContentUri": state.url, "Records": None}
    memory.keys.add(("id-0", 1, "Op"))
    report = _run(search, memory)
    assert report.ok and report.queries_reused == 1 and len(search.created) == 2  # only the second day's
    assert memory.keys == EXPECTED and report.duplicates == 1
