"""Timeline tests of the Entra poller: a fake clock, a real DuckDB state store (ledger and
checkpoints), Graph as a leaf object holding records with the times they become visible."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from auditlake.lake.duckdb_lake import LocalLake
from auditlake.state.local import LocalStateStore
from function_app.core.errors import PermanentApiError, StoreUnavailableError
from function_app.core.model import ContentBlob, WriteResult, iso_z
from function_app.entra.poller import EntraPoller, EntraRules
from function_app.entra.streams import RAW_TABLE, STREAMS_BY_NAME, Stream
from tests.fakes import FakeClock

T = "11111111-2222-3333-4444-555555555555"
SP = STREAMS_BY_NAME["Entra.ServicePrincipalSignInLogs"]
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


class FakeGraph:
    """Sign-ins visible from ``visible_at``; pages of *page_size* newest first, as Graph serves them."""

    def __init__(self, clock: FakeClock, page_size: int = 3) -> None:
        self.clock = clock
        self.page_size = page_size
        self.records: list[tuple[datetime, dict[str, Any]]] = []
        self.fail_windows_starting: set[datetime] = set()
        self.requests: list[tuple[datetime, datetime]] = []

    def add(self, rid: str, created: datetime, visible_after: timedelta = timedelta(0)) -> None:
        self.records.append((created + visible_after, {"id": rid, "createdDateTime": iso_z(created),
                                                       "servicePrincipalId": "sp-1"}))

    def first_url(self, stream: Stream, start: datetime, end: datetime) -> str:
        return f"https://graph.example/{stream.path}?from={iso_z(start)}&to={iso_z(end)}"

    async def pages(self, tenant_id: str, stream: Stream, start: datetime, end: datetime
                    ) -> AsyncIterator[list[dict[str, object]]]:
        self.requests.append((start, end))
        if any(start <= s < end for s in self.fail_windows_starting):
            raise PermanentApiError("HTTP 500 for the third time", status=500)
        now = self.clock()
        shown = [r for visible, r in self.records if visible <= now
                 and start <= datetime.fromisoformat(r["createdDateTime"].replace("Z", "+00:00")) < end]
        shown.sort(key=lambda r: r["createdDateTime"], reverse=True)
        for i in range(0, len(shown), self.page_size):
            yield shown[i:i + self.page_size]


class RecordingSink:
    """Keeps envelopes by record id, as the tables' key does; refuses writes when told to."""

    def __init__(self) -> None:
        self.by_id: dict[str, dict[str, Any]] = {}
        self.writes = 0
        self.fail: bool = False

    async def write_blob(self, blob: ContentBlob, tables: Mapping[str, Sequence[Mapping[str, Any]]]) -> WriteResult:
        if self.fail:
            raise StoreUnavailableError("disk full")
        self.writes += 1
        inserted = duplicates = 0
        for row in tables[RAW_TABLE]:
            for env in row["Records"]:
                rid = env["properties"]["id"]
                if rid in self.by_id:
                    duplicates += 1
                else:
                    self.by_id[rid] = env
                    inserted += 1
        return WriteResult(inserted, duplicates)


class Harness:
    def __init__(self, tmp_path: Path, rules: EntraRules | None = None) -> None:
        self.clock = FakeClock(NOW)
        self.graph = FakeGraph(self.clock)
        self.lake = LocalLake(tmp_path / "lake.duckdb")
        self.state = LocalStateStore(self.lake)
        self.sink = RecordingSink()
        self.rules = rules or EntraRules(initial_lookback=timedelta(hours=5), max_window=timedelta(hours=1))
        self.poller = EntraPoller(self.graph, self.state, self.sink, rules=self.rules, now=self.clock)

    def poll(self) -> Any:
        return asyncio.run(self.poller.poll(T, SP))

    def checkpoint(self) -> datetime | None:
        cp = asyncio.run(self.state.get_checkpoint(T, SP.name))
        return None if cp is None else cp.position

    def ledger(self) -> list[tuple[str, str, int | None, str | None]]:
        return [(str(cid), str(status), records, error) for cid, status, records, error in self.lake.connection.execute(
            'SELECT "ContentId", "Status", "Records", "Error" FROM "ContentLedger" WHERE "ContentType" = ? '
            'ORDER BY "ContentId"', [SP.name]).fetchall()]


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_first_poll_reads_the_lookback_in_windows_and_checkpoints_at_the_end(h: Harness) -> None:
    for i in range(10):
        h.graph.add(f"r{i}", NOW - timedelta(minutes=29 * i + 3))
    out = h.poll()
    assert sorted(h.sink.by_id) == sorted(f"r{i}" for i in range(10))
    assert out.records == 10 and out.inserted == 10 and not out.errors
    end = NOW - h.rules.lag
    assert h.checkpoint() == end
    rows = h.ledger()
    # Five hours in windows of at most one hour: every window a ledger row, each ingested.
    assert len(rows) == 5 and {r[1] for r in rows} == {"ingested"}
    assert sum(r[2] or 0 for r in rows) == 10
    # Each envelope says what it is, and keeps the Graph resource whole.
    env = h.sink.by_id["r0"]
    assert env["category"] == "ServicePrincipalSignInLogs" and env["tenantId"] == T
    assert env["properties"]["servicePrincipalId"] == "sp-1"


def test_a_late_record_inside_the_overlap_is_caught_and_counted_late(h: Harness) -> None:
    h.graph.add("early", NOW - timedelta(hours=1))
    h.poll()
    # Created before the checkpoint, visible only after the first poll: within the overlap.
    h.graph.add("late", NOW - timedelta(minutes=10), visible_after=timedelta(minutes=20))
    h.graph.add("new", NOW + timedelta(minutes=5))
    h.clock.advance(timedelta(minutes=15))
    out = h.poll()
    assert set(h.sink.by_id) == {"early", "late", "new"}
    assert out.late == 1 and out.inserted == 2


def test_a_failed_window_stops_the_stream_and_is_asked_again_with_the_same_ledger_row(h: Harness) -> None:
    for i in range(5):
        h.graph.add(f"r{i}", NOW - timedelta(minutes=60 * i + 30))
    bad_start = NOW - timedelta(hours=3)
    h.graph.fail_windows_starting.add(bad_start + timedelta(minutes=1))
    out = h.poll()
    assert out.errors and "HTTP 500" in out.errors[0]
    cp = h.checkpoint()
    assert cp is not None and cp <= bad_start + timedelta(minutes=1)
    failed = [r for r in h.ledger() if r[1] == "failed"]
    assert len(failed) == 1 and "HTTP 500" in (failed[0][3] or "")
    # Nothing after the failed window was read in that run.
    assert max(s for s, _ in h.graph.requests) <= bad_start + timedelta(minutes=1)
    h.graph.fail_windows_starting.clear()
    h.clock.advance(timedelta(minutes=5))
    again = h.poll()
    assert not again.errors
    assert sorted(h.sink.by_id) == sorted(f"r{i}" for i in range(5))
    rows = h.ledger()
    assert {r[1] for r in rows} == {"ingested"}, rows
    assert failed[0][0] in {r[0] for r in rows}


def test_a_sink_failure_leaves_the_checkpoint_behind_the_window(h: Harness) -> None:
    h.graph.add("r1", NOW - timedelta(hours=2))
    h.sink.fail = True
    with pytest.raises(StoreUnavailableError):
        h.poll()
    # Empty windows before it moved the checkpoint; the one holding r1 did not.
    cp = h.checkpoint()
    assert cp is not None and cp <= NOW - timedelta(hours=2)
    h.sink.fail = False
    h.poll()
    assert set(h.sink.by_id) == {"r1"}


def test_the_sweep_catches_a_record_later_than_the_overlap(tmp_path: Path) -> None:
    h = Harness(tmp_path, EntraRules(initial_lookback=timedelta(hours=3), max_window=timedelta(hours=1),
                                     overlap=timedelta(minutes=10),
                                     sweep_span=timedelta(hours=6), sweep_every=timedelta(hours=2)))
    h.poll()
    h.graph.add("very-late", NOW - timedelta(hours=1), visible_after=timedelta(hours=1, minutes=30))
    h.clock.advance(timedelta(hours=1))
    out = h.poll()
    assert "very-late" not in h.sink.by_id and not out.swept
    h.clock.advance(timedelta(hours=1, minutes=5))
    out = h.poll()
    assert out.swept and out.late == 1 and "very-late" in h.sink.by_id
    assert any(r[0].startswith("sweep/") and r[1] == "ingested" for r in h.ledger())


def test_a_kill_after_writing_before_the_checkpoint_reads_again_without_duplicates(h: Harness) -> None:
    for i in range(4):
        h.graph.add(f"r{i}", NOW - timedelta(minutes=50 * i + 5))

    class Killed(Exception):
        pass

    real_save = h.state.save_checkpoint
    calls = 0

    async def save_then_die(cp: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise Killed()
        return await real_save(cp)

    h.state.save_checkpoint = save_then_die  # type: ignore[method-assign,assignment]
    with pytest.raises(Killed):
        h.poll()
    h.state.save_checkpoint = real_save  # type: ignore[method-assign]
    written = len(h.sink.by_id)
    out = h.poll()
    assert sorted(h.sink.by_id) == sorted(f"r{i}" for i in range(4))
    assert out.inserted == 4 - written
    assert h.checkpoint() == NOW - h.rules.lag
