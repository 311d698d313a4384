"""Timeline tests of the planner with a fake clock and a real DuckDB state store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from auditlake.lake.duckdb_lake import LocalLake
from auditlake.state.local import LocalStateStore
from function_app.core.collector import Planner, PlanRequest
from function_app.core.errors import ThrottledError
from function_app.core.model import ContentBlob, FetchedContent
from function_app.core.windows import PlanningRules
from function_app.o365.retry import RetryPolicy
from tests.fakes import FakeApi, FakeClock

T = "11111111-2222-3333-4444-555555555555"
CT = "Audit.Exchange"
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


class Harness:
    def __init__(self, tmp_path: Path, rules: PlanningRules | None = None) -> None:
        self.clock = FakeClock(NOW)
        self.api = FakeApi(self.clock)
        self.lake = LocalLake(tmp_path / "lake.duckdb")
        self.state = LocalStateStore(self.lake)
        self.handed: list[ContentBlob] = []
        self.fail_hand_off_after: int | None = None
        self.planner = Planner(self.api, self.state, self.hand_off, self.clock, rules or PlanningRules())

    async def hand_off(self, blobs: Sequence[ContentBlob]) -> None:
        if self.fail_hand_off_after is not None and len(self.handed) >= self.fail_hand_off_after:
            raise RuntimeError("queue unavailable")
        self.handed.extend(blobs)

    def run(self, **kw: object) -> object:
        return asyncio.run(self.planner.run(PlanRequest(T, CT, **kw)))  # type: ignore[arg-type]

    def checkpoint(self) -> datetime | None:
        cp = asyncio.run(self.state.get_checkpoint(T, CT))
        return None if cp is None else cp.position


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_backfill_hands_on_every_blob_across_pages_and_days(h: Harness) -> None:
    for i in range(9):
        h.api.add(T, CT, f"b{i}", NOW - timedelta(hours=20 * i + 1), [{"Id": str(i)}])
    h.run()
    assert sorted(b.content_id for b in h.handed) == sorted(f"b{i}" for i in range(9))
    assert h.checkpoint() == NOW - PlanningRules().safety_lag


def test_two_blobs_with_the_same_content_created_are_both_handed_on(h: Harness) -> None:
    h.api.add(T, CT, "a", NOW - timedelta(hours=2), [])
    h.api.add(T, CT, "b", NOW - timedelta(hours=2), [])
    h.run()
    assert {b.content_id for b in h.handed} == {"a", "b"}


def test_relisting_does_not_hand_on_a_known_blob_twice(h: Harness) -> None:
    h.api.add(T, CT, "a", NOW - timedelta(minutes=30), [])
    h.run()
    h.clock.advance(timedelta(minutes=10))
    h.run()
    assert [b.content_id for b in h.handed] == ["a"]


def test_a_blob_listed_late_is_caught_by_the_overlap(h: Harness) -> None:
    h.run()  # first pass, nothing yet; also sweeps
    late = h.api.add(T, CT, "late", NOW - timedelta(minutes=20), [])
    h.api.hidden.add("late")
    h.clock.advance(timedelta(minutes=2))
    h.run()
    assert h.handed == []
    # Yesterday's blob shows up in the listing only now, after the checkpoint passed it.
    h.api.hidden.clear()
    h.clock.advance(timedelta(minutes=2))
    h.run()
    assert h.handed == [late]


def test_a_blob_listed_hours_late_is_caught_by_the_sweep(tmp_path: Path) -> None:
    h = Harness(tmp_path, PlanningRules(sweep_every=timedelta(hours=3)))
    h.run()
    old = h.api.add(T, CT, "old", NOW - timedelta(hours=5), [])
    h.api.hidden.add("old")
    h.clock.advance(timedelta(minutes=2))
    h.run()
    h.api.hidden.clear()
    h.clock.advance(timedelta(hours=2))
    h.run()  # overlap of 1 h does not reach back 7 h
    assert h.handed == []
    h.clock.advance(timedelta(hours=1))
    h.run()  # the sweep, re-listing the last 24 h, does
    assert h.handed == [old]


def test_checkpoint_stays_before_a_window_whose_hand_off_failed(h: Harness) -> None:
    h.api.add(T, CT, "d1", NOW - timedelta(days=6), [])
    h.api.add(T, CT, "d2", NOW - timedelta(days=3), [])
    h.fail_hand_off_after = 1
    with pytest.raises(RuntimeError):
        h.run()
    cp = h.checkpoint()
    assert cp is not None and cp <= NOW - timedelta(days=3)
    # The next pass re-lists from there and hands d2 on.
    h.fail_hand_off_after = None
    h.run()
    assert {b.content_id for b in h.handed} == {"d1", "d2"}


def test_listing_error_keeps_checkpoint_and_is_reported(h: Harness) -> None:
    h.api.add(T, CT, "d1", NOW - timedelta(days=6), [])
    h.api.fail_listing_after = 2
    stats = h.run()
    assert stats.errors and "AF50000" in stats.errors[0]  # type: ignore[attr-defined]
    cp = h.checkpoint()
    assert cp is not None and cp < NOW - timedelta(days=4)


def test_missing_subscription_is_started_and_listing_retried(h: Harness) -> None:
    h.api.subscribed = False
    h.api.add(T, CT, "a", NOW - timedelta(hours=1), [])
    stats = h.run()
    assert h.api.started == 1
    assert [b.content_id for b in h.handed] == ["a"]
    assert not stats.errors  # type: ignore[attr-defined]


def test_a_checkpoint_in_the_future_enqueues_nothing(h: Harness) -> None:
    from function_app.core.model import Checkpoint

    h.api.add(T, CT, "a", NOW - timedelta(hours=1), [])
    asyncio.run(h.state.save_checkpoint(Checkpoint(T, CT, NOW + timedelta(hours=3), last_sweep=NOW)))
    h.run()
    assert h.handed == []
    assert h.api.list_calls == []


def test_outage_longer_than_seven_days_is_reported_as_a_gap(h: Harness) -> None:
    from function_app.core.model import Checkpoint

    asyncio.run(h.state.save_checkpoint(Checkpoint(T, CT, NOW - timedelta(days=10), last_sweep=NOW)))
    stats = h.run()
    assert any(e.startswith("gap:") for e in stats.errors)  # type: ignore[attr-defined]
    assert all(s >= NOW - timedelta(days=7) for s, _ in h.api.list_calls)


def test_every_run_is_recorded(h: Harness) -> None:
    h.api.add(T, CT, "a", NOW - timedelta(hours=1), [])
    h.run()
    rows = h.lake.connection.execute(
        'SELECT "BlobsListed", "BlobsNew", "Pages" FROM "CollectorRun"').fetchall()
    assert rows == [(2, 1, 2)]  # listed in catch-up and again by the first sweep


class ThrottledListings:
    """The fake API behind one shared retry policy, as a client is shared by every feed: the
    first *throttles* listing calls of *content_type* are answered AF429 before they succeed."""

    def __init__(self, inner: FakeApi, policy: RetryPolicy, content_type: str, throttles: int) -> None:
        self.inner, self.policy = inner, policy
        self.content_type, self.left = content_type, throttles

    async def start_subscription(self, tenant_id: str, content_type: str) -> None:
        await self.inner.start_subscription(tenant_id, content_type)

    async def fetch_content(self, tenant_id: str, content_uri: str) -> FetchedContent:
        return await self.inner.fetch_content(tenant_id, content_uri)

    async def list_content(self, tenant_id: str, content_type: str, start: datetime,
                           end: datetime) -> AsyncIterator[list[ContentBlob]]:
        async def attempt() -> None:
            # A yield between the throttles lets the other feed's calls interleave with these.
            await asyncio.sleep(0)
            if content_type == self.content_type and self.left > 0:
                self.left -= 1
                raise ThrottledError("Too many requests. Method=ListContent", code="AF429", status=403)

        await self.policy.call(attempt, f"list {content_type}")
        async for page in self.inner.list_content(tenant_id, content_type, start, end):
            yield page


def test_concurrent_feeds_each_count_only_their_own_throttles(tmp_path: Path) -> None:
    async def no_wait(_: float) -> None:
        return None

    async def run() -> tuple[list[int], int]:
        clock = FakeClock(NOW)
        policy = RetryPolicy(max_attempts=50, sleep=no_wait)
        api = ThrottledListings(FakeApi(clock), policy, "Audit.Exchange", throttles=20)
        lake = LocalLake(tmp_path / "lake.duckdb")
        try:
            async def hand_off(blobs: Sequence[ContentBlob]) -> None:
                return None

            planner = Planner(api, LocalStateStore(lake), hand_off, clock, PlanningRules())
            runs = await asyncio.gather(*(planner.run(PlanRequest(T, ct)) for ct in
                                          ("Audit.Exchange", "Audit.SharePoint", "Audit.General")))
            return [r.throttled for r in runs], policy.stats.throttled
        finally:
            lake.close()

    per_feed, client_total = asyncio.run(run())
    assert client_total == 20
    assert per_feed == [20, 0, 0], "each feed's CollectorRun counts the throttles of its own calls only"
