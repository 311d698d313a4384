"""The collector's write path into the local lake: blobs handed over with their ``ingested`` mark
share large commits; each blob's rows and mark stay one unit; schema observations are folded."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import auditlake.lake.duckdb_lake as duckdb_lake
import auditlake.state.local as local_state
from auditlake.lake.duckdb_lake import LocalLake
from auditlake.state.local import LocalStateStore
from function_app.compose import build_rows
from function_app.core.model import ContentBlob, WriteResult
from function_app.core.pipeline import Pipeline
from function_app.core.windows import PlanningRules
from function_app.records.flatten import BlobContext
from function_app.records.tables import flatten_tables
from tests.fakes import FakeApi, FakeClock

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
COMMITTED_AT = datetime(2026, 11, 20, 8, 5, tzinfo=UTC)


def record(n: int, operation: str = "FileAccessed", **extra: Any) -> dict[str, Any]:
    return {"Id": f"00000000-0000-0000-0000-{n:012d}", "RecordType": 6, "Operation": operation,
            "CreationTime": f"2026-11-20T07:{n % 60:02d}:00", "UserId": "a@contoso.example",
            "Workload": "SharePoint", **extra}


def blob(content_id: str) -> ContentBlob:
    return ContentBlob("t", "Audit.SharePoint", content_id, f"https://x/{content_id}", T0, T0 + timedelta(days=7))


class CountingLake(LocalLake):
    """The real lake, counting the transactions it commits."""

    commits = 0

    def _transaction(self, con: Any, fn: Any) -> Any:
        outcome = super()._transaction(con, fn)
        if outcome[0]:
            self.commits += 1
        return outcome


def hand_over(state: LocalStateStore, blobs: list[tuple[ContentBlob, list[dict[str, Any]]]]
              ) -> list[WriteResult | BaseException]:
    async def go() -> list[WriteResult | BaseException]:
        pending: list[Awaitable[WriteResult]] = []
        for b, records in blobs:
            tables = build_rows(records, b, T0)
            pending.append(await state.submit_ingested(b, tables, clock=lambda: COMMITTED_AT,
                                                       records=len(records), size=100))
        return await asyncio.gather(*pending, return_exceptions=True)

    return asyncio.run(go())


def ledger(lake: LocalLake) -> dict[str, tuple[Any, ...]]:
    rows = lake.connection.execute('SELECT "ContentId", "Status", "Records", "IngestedAt", "Attempts" '
                                   'FROM "ContentLedger"').fetchall()
    return {r[0]: r[1:] for r in rows}


def test_blobs_handed_over_together_share_one_commit_with_their_marks(tmp_path: Path) -> None:
    lake = CountingLake(tmp_path / "l.duckdb")
    state = LocalStateStore(lake)
    blobs = [(blob(f"b{i}"), [record(10 * i + j) for j in range(3)] + [record(999)]) for i in range(20)]
    asyncio.run(state.register_listed([b for b, _ in blobs], T0))
    before = lake.commits

    results = hand_over(state, blobs)

    assert lake.commits - before == 1
    # record 999 is in every blob: one of them (which one is not fixed within a commit) keeps it.
    assert sorted(r.inserted for r in results if isinstance(r, WriteResult)) == [3] * 19 + [4]
    assert sum(r.duplicates for r in results if isinstance(r, WriteResult)) == 19
    assert set(ledger(lake).values()) == {("ingested", 4, COMMITTED_AT.replace(tzinfo=None), 1)}
    assert lake.connection.execute('SELECT count(*) FROM "AuditRecord"').fetchone() == (61,)


def test_a_blob_whose_rows_fail_is_not_marked_and_its_neighbours_are(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path / "l.duckdb")
    state = LocalStateStore(lake)
    good = [blob("g1"), blob("g2")]
    bad = blob("bad")
    asyncio.run(state.register_listed([*good, bad], T0))

    async def go() -> list[Any]:
        first = await state.submit_ingested(good[0], build_rows([record(1)], good[0], T0), clock=lambda: COMMITTED_AT,
                                            records=1, size=1)
        # A table the lake does not have: this blob's own data, not the lake, is at fault.
        failing = await state.submit_ingested(bad, {"AuditRecord": build_rows([record(2)], bad, T0)["AuditRecord"],
                                                    "NoSuchTable": [{"x": 1}]},
                                              clock=lambda: COMMITTED_AT, records=1, size=1)
        second = await state.submit_ingested(good[1], build_rows([record(3)], good[1], T0),
                                             clock=lambda: COMMITTED_AT, records=1, size=1)
        return await asyncio.gather(first, failing, second, return_exceptions=True)

    outcomes = asyncio.run(go())

    assert isinstance(outcomes[1], KeyError)
    assert ledger(lake)["bad"][0] == "listed"
    assert ledger(lake)["g1"][0] == ledger(lake)["g2"][0] == "ingested"
    ids = {r[0] for r in lake.connection.execute('SELECT "Id" FROM "AuditRecord"').fetchall()}
    assert ids == {record(1)["Id"], record(3)["Id"]}


def test_a_commit_goes_as_soon_as_it_holds_enough_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(duckdb_lake, "COMMIT_RECORDS", 10)
    monkeypatch.setattr(duckdb_lake, "COMMIT_SECONDS", 60.0)
    lake = CountingLake(tmp_path / "l.duckdb")
    state = LocalStateStore(lake)
    blobs = [(blob(f"b{i}"), [record(10 * i + j) for j in range(4)]) for i in range(3)]
    asyncio.run(state.register_listed([b for b, _ in blobs], T0))

    async def go() -> list[WriteResult]:
        pending = [await state.submit_ingested(b, build_rows(r, b, T0), clock=lambda: COMMITTED_AT, records=len(r),
                                               size=1) for b, r in blobs]
        # Twelve records reach the threshold of ten: no waiting out the minute of lingering.
        return await asyncio.wait_for(asyncio.gather(*pending), timeout=30)

    assert [r.inserted for r in asyncio.run(go())] == [4, 4, 4]


def test_a_commit_short_of_records_goes_when_its_time_is_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(duckdb_lake, "COMMIT_SECONDS", 0.05)
    lake = LocalLake(tmp_path / "l.duckdb")
    state = LocalStateStore(lake)
    b = blob("only")
    asyncio.run(state.register_listed([b], T0))
    [result] = hand_over(state, [(b, [record(1)])])
    assert result == WriteResult(1, 0)
    assert ledger(lake)["only"][0] == "ingested"


def test_a_commits_schema_observations_are_those_of_its_records_observed_together(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path / "l.duckdb")
    state = LocalStateStore(lake)
    batches = [(blob("b1"), [record(1), record(2, "FileModified", Extra=1)]),
               (blob("b2"), [record(3), record(4, "FileModified", Extra="text")]),
               (blob("b3"), [record(5, "FileDeleted")])]
    asyncio.run(state.register_listed([b for b, _ in batches], T0))
    hand_over(state, batches)

    together = flatten_tables([r for _, rs in batches for r in rs], BlobContext("t", "Audit.SharePoint", "all", T0, T0),
                              ("SchemaObservation",))["SchemaObservation"]
    stored = lake.connection.execute('SELECT "Workload", "RecordType", "Operation", "FieldPath", "FieldType", '
                                     '"FirstSeen", "LastSeen", "Records" FROM "SchemaObservation"').fetchall()
    expected = {(r["Workload"], r["RecordType"], r["Operation"], r["FieldPath"], r["FieldType"],
                 r["FirstSeen"].replace(tzinfo=None), r["LastSeen"].replace(tzinfo=None), r["Records"])
                for r in together}
    assert set(stored) == expected
    assert ("SharePoint", 6, "FileModified", "Extra", "int", datetime(2026, 11, 20, 7, 2), datetime(2026, 11, 20, 7, 2),
            1) in expected


class SlowFetchApi(FakeApi):
    """Counts the fetches in flight at once."""

    in_flight = 0
    most_in_flight = 0

    async def fetch_content(self, tenant_id: str, content_uri: str) -> Any:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.002)
            return await super().fetch_content(tenant_id, content_uri)
        finally:
            self.in_flight -= 1


def slow_fetch_pipeline(lake: LocalLake, ages: list[timedelta]) -> tuple[SlowFetchApi, Pipeline]:
    """A pipeline of two fetch slots over *lake*, and its API holding a one-record blob per age."""
    clock = FakeClock(datetime(2026, 11, 21, 12, 0, tzinfo=UTC))
    api = SlowFetchApi(clock)
    for i, age in enumerate(ages):
        api.add("t", "Audit.SharePoint", f"b{i:02d}", clock() - age, [record(i)])
    return api, Pipeline(api=api, state=LocalStateStore(lake), sink=lake, build_rows=build_rows, clock=clock,
                         rules=PlanningRules(), concurrency=2)


def test_fetches_stay_within_the_concurrency_while_many_blobs_wait_for_their_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(duckdb_lake, "COMMIT_SECONDS", 0.5)
    lake = LocalLake(tmp_path / "l.duckdb")
    api, pipeline = slow_fetch_pipeline(lake, [timedelta(hours=3, minutes=i) for i in range(30)])
    groups: list[int] = []
    write_group = local_state.insert_blobs

    def counted(con: Any, blobs: Any, **kwargs: Any) -> Any:
        groups.append(len(blobs))
        return write_group(con, blobs, **kwargs)

    monkeypatch.setattr(local_state, "insert_blobs", counted)

    report = asyncio.run(pipeline.collect_once([("t", "Audit.SharePoint")]))

    assert report.ok and len(report.outcomes) == 30
    assert api.most_in_flight == 2
    # 30 blobs fetched two at a time, 2 ms each, inside one half-second window of lingering: had
    # each fetch slot waited for its blob's commit, there would be a commit per blob or two.
    assert sum(groups) == 30 and len(groups) <= 5, groups
    assert lake.connection.execute('SELECT count(*) FROM "AuditRecord"').fetchone() == (30,)


def test_commit_soon_ends_the_lingering_of_what_was_handed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(duckdb_lake, "COMMIT_SECONDS", 60.0)
    lake = CountingLake(tmp_path / "l.duckdb")
    state = LocalStateStore(lake)
    blobs = [(blob(f"b{i}"), [record(i)]) for i in range(2)]
    asyncio.run(state.register_listed([b for b, _ in blobs], T0))
    before = lake.commits

    async def go() -> list[WriteResult]:
        pending = [await state.submit_ingested(b, build_rows(r, b, T0), clock=lambda: COMMITTED_AT, records=len(r),
                                               size=1) for b, r in blobs]
        await asyncio.sleep(0.05)  # the commit is lingering for company now
        state.commit_soon()
        return await asyncio.wait_for(asyncio.gather(*pending), timeout=30)

    assert [r.inserted for r in asyncio.run(go())] == [1, 1]
    assert lake.commits - before == 1


def test_a_pass_commits_its_last_blobs_without_lingering_for_blobs_that_are_not_coming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A poll that finds a few fresh blobs: once the last of them is handed over and nothing is
    # queued, waiting for company only delays them (a minute here, a second by default).
    monkeypatch.setattr(duckdb_lake, "COMMIT_SECONDS", 60.0)
    lake = CountingLake(tmp_path / "l.duckdb")
    _, pipeline = slow_fetch_pipeline(lake, [timedelta(minutes=5 + i) for i in range(3)])

    async def go() -> Any:
        return await asyncio.wait_for(pipeline.collect_once([("t", "Audit.SharePoint")]), timeout=30)

    report = asyncio.run(go())

    assert report.ok and len(report.outcomes) == 3
    assert [status for status, *_ in ledger(lake).values()] == ["ingested"] * 3
    assert lake.connection.execute('SELECT count(*) FROM "AuditRecord"').fetchone() == (3,)


def _stored_ids_by_blob(lake: LocalLake) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for content_id, record_id in lake.connection.execute('SELECT "ContentId", "Id" FROM "AuditRecord"').fetchall():
        out.setdefault(content_id, set()).add(record_id)
    return out


def test_blobs_rows_become_arrow_together_and_each_blob_keeps_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(local_state, "CONVERT_ROWS", 7)
    conversions: list[int] = []

    def counting_to_arrow(table: Any, rows: Any) -> Any:
        if table.name == "AuditRecord":
            conversions.append(len(rows))
        return duckdb_lake.to_arrow(table, rows)

    monkeypatch.setattr(local_state, "to_arrow", counting_to_arrow)
    lake = LocalLake(tmp_path / "l.duckdb")
    state = LocalStateStore(lake)
    sizes = [3, 1, 4, 2, 5, 0, 3, 6, 2, 1]
    blobs = [(blob(f"b{i}"), [record(100 * i + j) for j in range(n)]) for i, n in enumerate(sizes)]
    asyncio.run(state.register_listed([b for b, _ in blobs], T0))

    results = hand_over(state, blobs)

    assert [r.inserted for r in results if isinstance(r, WriteResult)] == sizes
    # Seven rows or more at a time, and the rest when the lake took them for the commit.
    assert sum(conversions) == sum(sizes) and len(conversions) < len(sizes)
    assert all(n >= 7 for n in conversions[:-1])
    assert _stored_ids_by_blob(lake) == {b.content_id: {r["Id"] for r in recs} for b, recs in blobs if recs}
    assert {status for status, *_ in ledger(lake).values()} == {"ingested"}


def test_rows_that_fail_to_convert_together_are_converted_by_their_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken_to_arrow(table: Any, rows: Any) -> Any:
        raise RuntimeError("a defect in the conversion")

    monkeypatch.setattr(local_state, "CONVERT_ROWS", 2)
    monkeypatch.setattr(local_state, "to_arrow", broken_to_arrow)
    lake = LocalLake(tmp_path / "l.duckdb")
    state = LocalStateStore(lake)
    blobs = [(blob(f"b{i}"), [record(10 * i + j) for j in range(3)]) for i in range(4)]
    asyncio.run(state.register_listed([b for b, _ in blobs], T0))

    results = hand_over(state, blobs)

    assert [r.inserted for r in results if isinstance(r, WriteResult)] == [3, 3, 3, 3]
    assert _stored_ids_by_blob(lake) == {b.content_id: {r["Id"] for r in recs} for b, recs in blobs}


def test_a_state_store_nothing_holds_leaves_no_hook_behind_in_the_lake(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path / "l.duckdb")
    calls: list[str] = []

    class Preparing:
        def __init__(self, name: str) -> None:
            self.name = name
            lake.before_commit(self.prepare)

        def prepare(self) -> None:
            calls.append(self.name)

    kept = Preparing("kept")
    dropped = weakref.ref(Preparing("dropped"))
    gc.collect()
    assert dropped() is None  # the lake does not keep it alive

    async def one_commit() -> None:
        await lake.run(lambda con: con.execute("SELECT 1").fetchall())

    asyncio.run(one_commit())
    assert calls == ["kept"]
    assert kept.name == "kept"
