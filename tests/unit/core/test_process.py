"""process_blob over the real DuckDB lake: a cut-off body keeps what was delivered, and only the
API (never a message's contentExpiration) can make a blob expired."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from auditlake.lake.duckdb_lake import LocalLake
from auditlake.state.local import LocalStateStore
from function_app.compose import build_rows
from function_app.core.errors import ContentExpiredError, MalformedContentError
from function_app.core.model import BlobStatus, ContentBlob, FetchedContent
from function_app.core.process import BlobOutcome, process_blob
from function_app.records.reader import parse_content
from tests.fakes import FakeClock

T = "11111111-2222-3333-4444-555555555555"
CT = "Audit.Exchange"
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


class OneBlobApi:
    """Answers every fetch with *answer*: content, or an exception to raise."""

    def __init__(self, answer: FetchedContent | Exception) -> None:
        self.answer = answer
        self.fetches = 0

    async def start_subscription(self, tenant_id: str, content_type: str) -> None:
        raise AssertionError("not called")

    def list_content(self, tenant_id: str, content_type: str, start: datetime,
                     end: datetime) -> AsyncIterator[list[ContentBlob]]:
        raise AssertionError("not called")

    async def fetch_content(self, tenant_id: str, content_uri: str) -> FetchedContent:
        self.fetches += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def blob(expiration: datetime) -> ContentBlob:
    return ContentBlob(T, CT, "c1", f"https://manage.office.com/api/v1.0/{T}/activity/feed/audit/c1",
                       NOW - timedelta(hours=1), expiration)


def record(i: int) -> dict[str, Any]:
    return {"Id": f"r{i}", "RecordType": 1, "Operation": "Set-Mailbox", "CreationTime": "2026-12-03T11:00:00"}


def run(tmp_path: Path, api: OneBlobApi, b: ContentBlob) -> tuple[BlobOutcome, list[tuple[Any, ...]], tuple[Any, ...]]:
    async def go() -> BlobOutcome:
        state = LocalStateStore(lake)
        await state.register_listed([b], NOW)
        return await process_blob(b, api=api, sink=lake, state=state, build_rows=build_rows, clock=FakeClock(NOW))

    lake = LocalLake(tmp_path / "lake.duckdb")
    try:
        outcome = asyncio.run(go())
        rows = lake.connection.execute('SELECT "Id", "Quality" FROM "AuditRecord" ORDER BY "Id"').fetchall()
        ledger = lake.connection.execute(
            'SELECT "Status", "Error", "Records", "Attempts" FROM "ContentLedger"').fetchone()
        assert ledger is not None
        return outcome, rows, ledger
    finally:
        lake.close()


def test_a_cut_off_body_is_failed_once_with_every_record_before_the_cut_written(tmp_path: Path) -> None:
    body = orjson.dumps([record(i) for i in range(10)])
    cut = body[: body.index(b'"r7"') + 2]
    salvaged = parse_content(cut).records
    api = OneBlobApi(MalformedContentError("content body is not valid JSON (cut off or corrupt)", body=cut,
                                           salvaged=salvaged))
    outcome, rows, (status, error, records, attempts) = run(tmp_path, api, blob(NOW + timedelta(days=6)))
    assert outcome.status is BlobStatus.FAILED and outcome.inserted == 8
    ids = [r[0] for r in rows]
    assert ids[:7] == [f"r{i}" for i in range(7)]
    assert len(rows) == 8, "the cut record is kept too, raw and flagged"
    assert "record:unreadable:cut-off" in orjson.loads(rows[7][1])
    assert status == "failed" and attempts == 1 and records == 8
    assert "cut off or corrupt" in error and "8 rows written from what was read before the cut" in error


def test_a_body_that_is_not_an_array_is_failed_and_nothing_is_written(tmp_path: Path) -> None:
    api = OneBlobApi(MalformedContentError("content body of 7 bytes is a JSON dict, not an array", body=b'{"a":1}'))
    outcome, rows, (status, error, _, _) = run(tmp_path, api, blob(NOW + timedelta(days=6)))
    assert outcome.status is BlobStatus.FAILED and rows == []
    assert status == "failed" and "not an array" in error and "before the cut" not in error


def test_a_past_expiration_given_with_the_blob_does_not_stop_the_fetch(tmp_path: Path) -> None:
    api = OneBlobApi(FetchedContent([record(1), record(2)], 100))
    outcome, rows, (status, _, records, _) = run(tmp_path, api, blob(NOW - timedelta(days=1)))
    assert api.fetches == 1
    assert outcome.status is BlobStatus.INGESTED and status == "ingested" and records == 2
    assert [r[0] for r in rows] == ["r1", "r2"]


def test_only_the_api_saying_af20051_makes_a_blob_expired(tmp_path: Path) -> None:
    api = OneBlobApi(ContentExpiredError("Content requested with the key c1 has already expired", code="AF20051"))
    outcome, rows, (status, error, _, _) = run(tmp_path, api, blob(NOW + timedelta(days=6)))
    assert outcome.status is BlobStatus.EXPIRED and status == "expired" and "AF20051" in error and rows == []


def test_a_ledger_keeps_the_rows_only_of_its_own_lake(tmp_path: Path) -> None:
    # Asked once per blob, answered from the class after the first time: still per instance and sink.
    from function_app.core.ports import rows_kept_by

    lake, other = LocalLake(tmp_path / "a.duckdb"), LocalLake(tmp_path / "b.duckdb")
    try:
        state = LocalStateStore(lake)
        for _ in range(2):
            assert rows_kept_by(state, lake) is state
            assert rows_kept_by(state, other) is None
            assert rows_kept_by(object(), lake) is None  # type: ignore[arg-type]
    finally:
        lake.close()
        other.close()
