"""TableStateStore against real Azurite: the ledger semantics of the local store, plus
the concurrency only Azure has (ETag-guarded checkpoints and claims)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from function_app.core.collector import Planner, PlanRequest
from function_app.core.model import BlobStatus, Checkpoint, ContentBlob, RunStats
from function_app.core.windows import PlanningRules
from function_app.state.table import (
    CheckpointConflictError,
    TableStateStore,
    decode_key,
    encode_key,
)
from tests.azurite import Azurite
from tests.fakes import FakeApi, FakeClock

T = TypeVar("T")

TENANT = "11111111-2222-3333-4444-555555555555"
OTHER_TENANT = "99999999-2222-3333-4444-555555555555"
CT = "Audit.Exchange"
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
LEASE = timedelta(minutes=5)

StoreFactory = Callable[[], TableStateStore]


@pytest.fixture
def stores(azurite: Azurite) -> StoreFactory:
    """Stores on fresh tables of this test; each call is another instance (own session)."""
    suffix = uuid.uuid4().hex[:10]

    def make() -> TableStateStore:
        return TableStateStore.from_connection_string(
            azurite.connection_string, checkpoints_table=f"Cp{suffix}", ledger_table=f"Led{suffix}",
            runs_table=f"Run{suffix}", clock=lambda: NOW)

    return make


def run(make: StoreFactory, body: Callable[[TableStateStore], Awaitable[T]]) -> T:
    """Run *body* with one store on one event loop (the async SDK binds to its loop)."""

    async def main() -> T:
        async with make() as store:
            return await body(store)

    return asyncio.run(main())


def blob(cid: str, created: datetime = NOW - timedelta(hours=1), tenant: str = TENANT, ctype: str = CT) -> ContentBlob:
    return ContentBlob(tenant, ctype, cid, f"https://manage.office.com/api/v1.0/{tenant}/activity/feed/audit/{cid}",
                       created, created + timedelta(days=7))


def ids(blobs: Sequence[ContentBlob]) -> list[str]:
    return [b.content_id for b in blobs]


# -- ledger semantics (as state/local.py) -------------------------------------------------


def test_register_returns_new_blobs_then_only_those_never_handed_on(stores: StoreFactory) -> None:
    a, b, c = blob("a", NOW - timedelta(hours=3)), blob("b", NOW - timedelta(hours=2)), blob("c")

    async def body(s: TableStateStore) -> None:
        assert ids(await s.register_listed([a, b], NOW)) == ["a", "b"]
        # b was handed on; a was not (a crash between register and hand-off).
        await s.mark_queued([b])
        again = await s.register_listed([a, b, c], NOW + timedelta(minutes=2))
        assert ids(again) == ["c", "a"]  # new first, then still listed
        assert await s.register_listed([], NOW) == []
        assert ids(await s.pending(TENANT, CT)) == ["a", "b", "c"]  # oldest contentCreated first
        await s.mark(b, BlobStatus.INGESTED, at=NOW, records=3, size=10)
        await s.mark(a, BlobStatus.FAILED, at=NOW, error="boom")
        assert ids(await s.pending(TENANT, CT)) == ["c"]
        assert ids(await s.register_listed([a, b], NOW)) == []  # settled blobs are never handed on again
        assert await s.pending(TENANT, "Audit.General") == []

    run(stores, body)


def test_mark_queued_moves_only_listed_rows(stores: StoreFactory) -> None:
    a, b = blob("a"), blob("b")

    async def body(s: TableStateStore) -> None:
        await s.register_listed([a, b], NOW)
        await s.mark(b, BlobStatus.INGESTED, at=NOW)
        await s.mark_queued([a, b, blob("unknown")])
        row_a, row_b = await s.ledger_row(a), await s.ledger_row(b)
        assert row_a is not None and row_a["Status"] == "queued"
        assert row_b is not None and row_b["Status"] == "ingested"
        assert await s.ledger_row(blob("unknown")) is None
        assert ids(await s.pending(TENANT, CT)) == ["a"]

    run(stores, body)


def test_mark_counts_attempts_and_records_the_outcome(stores: StoreFactory) -> None:
    a = blob("a")
    t1, t2 = NOW + timedelta(minutes=1), NOW + timedelta(minutes=9, microseconds=123456)

    async def body(s: TableStateStore) -> None:
        await s.register_listed([a], NOW)
        row = await s.ledger_row(a)
        assert row is not None and row["Attempts"] == 0 and row["ListedAt"] == NOW
        assert row["ContentCreated"] == a.content_created and row["ContentCreated"].tzinfo is not None
        await s.mark(a, BlobStatus.FAILED, at=t1, error="AF50000 boom " + "x" * 100_000)
        row = await s.ledger_row(a)
        assert row is not None
        assert (row["Status"], row["Attempts"], row["FetchedAt"]) == ("failed", 1, t1)
        assert row["Error"].startswith("AF50000 boom") and len(row["Error"]) <= 30_000
        assert "IngestedAt" not in row and "Records" not in row
        await s.mark(a, BlobStatus.INGESTED, at=t2, records=5_000_000_000, size=1234)
        row = await s.ledger_row(a)
        assert row is not None
        assert (row["Status"], row["Attempts"], row["Records"], row["Bytes"]) == ("ingested", 2, 5_000_000_000, 1234)
        assert row["FetchedAt"] == t2 and row["IngestedAt"] == t2
        assert "Error" not in row  # cleared by a successful attempt
        await s.mark(a, BlobStatus.INGESTED, at=t2)
        row = await s.ledger_row(a)
        assert row is not None and row["Records"] == 5_000_000_000 and row["Attempts"] == 3  # kept when None

    run(stores, body)


def test_mark_of_an_unregistered_blob_records_it(stores: StoreFactory) -> None:
    x = blob("never-listed")

    async def body(s: TableStateStore) -> None:
        await s.mark(x, BlobStatus.EXPIRED, at=NOW, error="gone")
        row = await s.ledger_row(x)
        assert row is not None and row["Status"] == "expired" and row["Attempts"] == 1

    run(stores, body)


def test_failed_lists_failed_blobs_per_tenant_or_all(stores: StoreFactory) -> None:
    a, b = blob("a", NOW - timedelta(hours=2)), blob("b")
    other = blob("o", tenant=OTHER_TENANT, ctype="Audit.General")

    async def body(s: TableStateStore) -> None:
        await s.register_listed([a, b, other], NOW)
        await s.mark(b, BlobStatus.FAILED, at=NOW, error="e")
        await s.mark(a, BlobStatus.FAILED, at=NOW, error="e")
        await s.mark(other, BlobStatus.FAILED, at=NOW, error="e")
        assert ids(await s.failed(TENANT)) == ["a", "b"]
        assert ids(await s.failed(OTHER_TENANT)) == ["o"]
        assert sorted(ids(await s.failed())) == ["a", "b", "o"]
        await s.mark(a, BlobStatus.INGESTED, at=NOW)
        assert ids(await s.failed(TENANT)) == ["b"]

    run(stores, body)


def test_record_run_inserts_or_replaces(stores: StoreFactory) -> None:
    stats = RunStats("run/1", TENANT, CT, NOW, window_start=NOW - timedelta(hours=1), window_end=NOW,
                     pages=2, blobs_listed=5, blobs_new=3, throttled=1, errors=["AF429 throttled"])

    async def body(s: TableStateStore) -> None:
        await s.record_run(stats)
        assert await s.get_run(TENANT, CT, "run/1") == stats
        stats.finished_at = NOW + timedelta(seconds=30)
        stats.errors = [f"error {i} " + "y" * 1000 for i in range(100)]
        await s.record_run(stats)
        got = await s.get_run(TENANT, CT, "run/1")
        assert got is not None and got.finished_at == stats.finished_at
        assert got.errors[0] == stats.errors[0] and got.errors[-1].endswith("more")
        assert await s.get_run(TENANT, CT, "nope") is None

    run(stores, body)


def test_content_ids_with_dollars_slashes_and_other_key_breakers(stores: StoreFactory) -> None:
    weird = [
        "20261121093000123$20261121093000123$audit_exchange$Audit_Exchange$emea0001",
        "a/b/c", "back\\slash", "hash#tag", "what?now", "100%", "%O:looks-like-a-marker", "tab\tid",
        "quote'id", "Zoë✓",
    ]
    blobs = [blob(cid, NOW - timedelta(minutes=i)) for i, cid in enumerate(weird)]

    async def body(s: TableStateStore) -> None:
        assert ids(await s.register_listed(blobs, NOW)) == weird
        assert sorted(ids(await s.pending(TENANT, CT))) == sorted(weird)
        assert ids(await s.register_listed(blobs, NOW)) == weird  # still listed: known, not new
        for b in blobs:
            await s.mark(b, BlobStatus.FAILED, at=NOW, error="e")
        assert sorted(ids(await s.failed(TENANT))) == sorted(weird)
        assert await s.pending(TENANT, CT) == []
        assert not any(await asyncio.gather(*(s.claim(b, "x", LEASE, NOW) for b in blobs)))  # settled

    run(stores, body)


@given(st.text())
def test_key_encoding_round_trips_and_avoids_forbidden_characters(value: str) -> None:
    key = encode_key(value)
    assert decode_key(key) == value
    assert not any(ch in "/\\#?" or ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in key)
    assert "%O" not in key


# -- checkpoints --------------------------------------------------------------------------


def test_checkpoint_round_trip_and_etag_guard(stores: StoreFactory) -> None:
    async def body(s: TableStateStore) -> None:
        assert await s.get_checkpoint(TENANT, CT) is None
        saved = await s.save_checkpoint(Checkpoint(TENANT, CT, NOW - timedelta(hours=1)))
        assert saved.etag
        got = await s.get_checkpoint(TENANT, CT)
        assert got == saved and got.last_sweep is None and got.position.tzinfo is not None
        with pytest.raises(CheckpointConflictError):  # create when one exists
            await s.save_checkpoint(Checkpoint(TENANT, CT, NOW))
        moved = await s.save_checkpoint(Checkpoint(TENANT, CT, NOW, last_sweep=NOW, etag=saved.etag))
        assert moved.etag and moved.etag != saved.etag
        assert await s.get_checkpoint(TENANT, CT) == moved
        with pytest.raises(CheckpointConflictError):  # a stale etag
            await s.save_checkpoint(Checkpoint(TENANT, CT, NOW + timedelta(hours=1), etag=saved.etag))
        assert await s.get_checkpoint(TENANT, CT) == moved

    run(stores, body)


def test_two_concurrent_checkpoint_writers_exactly_one_wins(stores: StoreFactory) -> None:
    async def main() -> None:
        async with stores() as first:
            base = await first.save_checkpoint(Checkpoint(TENANT, CT, NOW - timedelta(hours=2)))
        writers = [stores() for _ in range(2)]
        positions = [NOW - timedelta(hours=1), NOW]
        try:
            pairs = list(zip(writers, positions, strict=True))
            results = await asyncio.gather(
                *(w.save_checkpoint(Checkpoint(TENANT, CT, p, etag=base.etag)) for w, p in pairs),
                return_exceptions=True)
            wins = [r for r in results if isinstance(r, Checkpoint)]
            conflicts = [r for r in results if isinstance(r, CheckpointConflictError)]
            assert len(wins) == 1 and len(conflicts) == 1, results
            stored = await writers[0].get_checkpoint(TENANT, CT)
            assert stored is not None and stored.position == wins[0].position
            # Two first-time creators: the same, without an etag.
            creators = [w.save_checkpoint(Checkpoint(TENANT, "DLP.All", p)) for w, p in pairs]
            results = await asyncio.gather(*creators, return_exceptions=True)
            assert sum(isinstance(r, Checkpoint) for r in results) == 1
            assert sum(isinstance(r, CheckpointConflictError) for r in results) == 1
        finally:
            for w in writers:
                await w.close()

    asyncio.run(main())


# -- claims --------------------------------------------------------------------------------


def test_exactly_one_of_many_concurrent_claims_wins(stores: StoreFactory) -> None:
    a = blob("contended")

    async def main() -> None:
        async with stores() as s:
            await s.register_listed([a], NOW)
        instances = [stores() for _ in range(8)]
        try:
            for round_ in range(3):
                at = NOW + round_ * (LEASE + timedelta(seconds=1))  # each round the last lease has expired
                results = await asyncio.gather(*(inst.claim(a, f"owner-{i}", LEASE, at)
                                                 for i, inst in enumerate(instances)))
                assert sum(r is not None for r in results) == 1, results
        finally:
            for inst in instances:
                await inst.close()

    asyncio.run(main())


def test_claim_lease_expiry_takeover_renewal_release_and_settled(stores: StoreFactory) -> None:
    a, fresh = blob("a"), blob("not-registered")

    async def body(s: TableStateStore) -> None:
        await s.register_listed([a], NOW)
        assert await s.claim(a, "A", LEASE, NOW)
        assert not await s.claim(a, "B", LEASE, NOW + timedelta(minutes=1))  # live claim of A
        assert await s.claim(a, "A", LEASE, NOW + timedelta(minutes=2))  # A renews to 00:07
        assert not await s.claim(a, "B", LEASE, NOW + timedelta(minutes=6))
        assert await s.claim(a, "B", LEASE, NOW + timedelta(minutes=8))  # expired: B takes over
        assert not await s.claim(a, "A", LEASE, NOW + timedelta(minutes=9))
        await s.release(a, "A")  # not A's any more: no effect
        assert not await s.claim(a, "C", LEASE, NOW + timedelta(minutes=9))
        await s.release(a, "B")
        assert await s.claim(a, "C", LEASE, NOW + timedelta(minutes=9))
        row = await s.ledger_row(a)
        assert row is not None and row["Status"] == "listed" and row["ClaimOwner"] == "C"
        await s.mark(a, BlobStatus.INGESTED, at=NOW + timedelta(minutes=10))
        row = await s.ledger_row(a)
        assert row is not None and "ClaimOwner" not in row
        assert not await s.claim(a, "C", LEASE, NOW + timedelta(hours=1))  # settled
        # A message for a blob the ledger never saw: recorded as queued, claimed, pending.
        assert await s.claim(fresh, "D", LEASE, NOW)
        row = await s.ledger_row(fresh)
        assert row is not None and row["Status"] == "queued"
        assert ids(await s.pending(TENANT, CT)) == ["not-registered"]

    run(stores, body)


# -- the planner on this store -------------------------------------------------------------


def test_planner_timeline_on_table_storage(stores: StoreFactory) -> None:
    clock = FakeClock(NOW)
    api = FakeApi(clock)
    handed: list[ContentBlob] = []

    async def hand_off(blobs: Sequence[ContentBlob]) -> None:
        handed.extend(blobs)

    for i in range(5):
        api.add(TENANT, CT, f"b{i}", NOW - timedelta(hours=20 * i + 1), [{"Id": str(i)}])

    async def body(s: TableStateStore) -> Any:
        planner = Planner(api, s, hand_off, clock, PlanningRules())
        first = await planner.run(PlanRequest(TENANT, CT))
        assert not first.errors
        assert sorted(ids(handed)) == [f"b{i}" for i in range(5)]
        cp = await s.get_checkpoint(TENANT, CT)
        assert cp is not None and cp.position == NOW - PlanningRules().safety_lag
        clock.advance(timedelta(minutes=10))
        late = api.add(TENANT, CT, "late", NOW - timedelta(minutes=20), [])
        second = await planner.run(PlanRequest(TENANT, CT))
        assert not second.errors
        assert ids(handed).count("b0") == 1 and handed[-1] == late
        assert await s.get_run(TENANT, CT, second.run_id) is not None
        assert len(await s.pending(TENANT, CT)) == 6  # all queued, none settled yet

    run(stores, body)
