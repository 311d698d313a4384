"""The collection loop with a fake API and the real DuckDB lake: settle everything, once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from auditlake.lake.duckdb_lake import LocalLake
from auditlake.state.local import LocalStateStore
from function_app.compose import build_rows
from function_app.core.model import BlobStatus
from function_app.core.pipeline import Pipeline
from function_app.core.windows import PlanningRules
from tests.fakes import FakeApi, FakeClock

T = "11111111-2222-3333-4444-555555555555"
CT = "Audit.SharePoint"
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def rec(i: int, op: str = "FileAccessed", **extra: Any) -> dict[str, Any]:
    return {"Id": f"00000000-0000-0000-0000-{i:012d}", "RecordType": 6, "Operation": op,
            "CreationTime": "2026-11-21T09:00:00", "UserId": "a@b.c", **extra}


def make(tmp_path: Path) -> tuple[FakeClock, FakeApi, LocalLake, Pipeline]:
    clock = FakeClock(NOW)
    api = FakeApi(clock)
    lake = LocalLake(tmp_path / "lake.duckdb")
    pipeline = Pipeline(api=api, state=LocalStateStore(lake), sink=lake, build_rows=build_rows, clock=clock,
                        rules=PlanningRules(), concurrency=3)
    return clock, api, lake, pipeline


def rows(lake: LocalLake) -> list[tuple[Any, ...]]:
    return lake.connection.execute('SELECT "Id", "Operation", "ContentId" FROM "AuditRecord" ORDER BY 1, 2').fetchall()


def test_records_redelivered_in_another_blob_are_kept_once(tmp_path: Path) -> None:
    _, api, lake, pipeline = make(tmp_path)
    api.add(T, CT, "b1", NOW - timedelta(hours=3), [rec(1), rec(2)])
    # The same record again, keys reordered, plus a DLP-style pair that shares an Id.
    again = dict(reversed(list(rec(2).items())))
    api.add(T, CT, "b2", NOW - timedelta(hours=2), [again, rec(3, "DlpRuleMatch"), rec(3, "DlpRuleUndo")])
    report = asyncio.run(pipeline.collect_once([(T, CT)]))
    assert report.ok
    assert [r[:2] for r in rows(lake)] == [
        ("00000000-0000-0000-0000-000000000001", "FileAccessed"),
        ("00000000-0000-0000-0000-000000000002", "FileAccessed"),
        ("00000000-0000-0000-0000-000000000003", "DlpRuleMatch"),
        ("00000000-0000-0000-0000-000000000003", "DlpRuleUndo"),
    ]
    assert sum(o.duplicates for o in report.outcomes) == 1


def test_processing_the_same_blob_twice_adds_nothing(tmp_path: Path) -> None:
    _, api, lake, pipeline = make(tmp_path)
    blob = api.add(T, CT, "b1", NOW - timedelta(hours=3), [rec(1), rec(2)])
    asyncio.run(pipeline.collect_once([(T, CT)]))
    before = rows(lake)
    lake.connection.execute('UPDATE "ContentLedger" SET "Status" = \'queued\'')  # as if the run died
    report = asyncio.run(pipeline.collect_once([(T, CT)]))
    assert rows(lake) == before
    assert [o.blob for o in report.outcomes] == [blob]
    assert report.outcomes[0].duplicates == 2


def test_expired_blob_is_settled_and_the_rest_go_on(tmp_path: Path) -> None:
    _, api, lake, pipeline = make(tmp_path)
    api.add(T, CT, "gone", NOW - timedelta(hours=3), [rec(1)])
    api.add(T, CT, "ok", NOW - timedelta(hours=2), [rec(2)])
    api.expired.add("gone")
    report = asyncio.run(pipeline.collect_once([(T, CT)]))
    assert report.count(BlobStatus.EXPIRED) == 1 and report.count(BlobStatus.INGESTED) == 1
    assert not report.ok
    ledger = dict(lake.connection.execute('SELECT "ContentId", "Status" FROM "ContentLedger"').fetchall())
    assert ledger == {"gone": "expired", "ok": "ingested"}
    error = lake.connection.execute('SELECT "Error" FROM "ContentLedger" WHERE "ContentId" = \'gone\'').fetchone()
    assert error is not None and "AF20051" in error[0]
