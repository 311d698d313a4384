"""TableStateStore's fewer round trips against real Azurite: transactions of a listing's rows and
remembered ETags instead of reads keep every guarantee of the one-entity path when another writer
(another instance, with its own memory) changes the rows."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from azure.core.pipeline import PipelineRequest
from azure.data.tables.aio import TableServiceClient

from function_app.core.model import BlobStatus, ContentBlob
from function_app.state.table import OPEN_PREFIX, TableStateStore, encode_key, partition_key
from tests.azurite import Azurite

T = TypeVar("T")

TENANT = "11111111-2222-3333-4444-555555555555"
CT = "Audit.Exchange"
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
LEASE = timedelta(minutes=5)


class Requests:
    """What a store sent to the Table service: (method, first path segment after the account).
    Point operations and transactions go through the store's lean client (its request hook);
    queries through the SDK (its raw request hook): both are counted."""

    def __init__(self) -> None:
        self.seen: Counter[tuple[str, str]] = Counter()

    def __call__(self, request: PipelineRequest[Any]) -> None:
        self.sent(request.http_request.method, request.http_request.url)

    def sent(self, method: str, url: str) -> None:
        path = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        self.seen[(method, "$batch" if path == "$batch" else "entity")] += 1

    def total(self) -> int:
        return sum(self.seen.values())


StoreFactory = Callable[..., TableStateStore]


@pytest.fixture
def stores(azurite: Azurite) -> StoreFactory:
    """Stores on fresh tables of this test; each call is another instance (own session, own memory)."""
    suffix = uuid.uuid4().hex[:10]

    def make(requests: Requests | None = None) -> TableStateStore:
        service = TableServiceClient.from_connection_string(
            azurite.connection_string, **({"raw_request_hook": requests} if requests else {}))
        return TableStateStore(service, checkpoints_table=f"Cp{suffix}", ledger_table=f"Led{suffix}",
                               runs_table=f"Run{suffix}", clock=lambda: NOW,
                               request_hook=requests.sent if requests else None)

    return make


def two(make: StoreFactory, body: Callable[[TableStateStore, TableStateStore], Awaitable[T]]) -> T:
    """Run *body* with two instances of the store on one event loop."""

    async def main() -> T:
        async with make() as first, make() as second:
            return await body(first, second)

    return asyncio.run(main())


def blob(cid: str, created: datetime = NOW - timedelta(hours=1)) -> ContentBlob:
    return ContentBlob(TENANT, CT, cid, f"https://manage.office.com/api/v1.0/{TENANT}/activity/feed/audit/{cid}",
                       created, created + timedelta(days=7))


def ids(blobs: Sequence[ContentBlob]) -> list[str]:
    return [b.content_id for b in blobs]


async def status(store: TableStateStore, b: ContentBlob) -> Any:
    row = await store.ledger_row(b)
    return None if row is None else row["Status"]


async def markers(store: TableStateStore) -> list[str]:
    """The content ids whose open marker exists (read directly: ``pending`` would tidy them)."""
    table = await store._ledger()
    rows = table.query_entities("PartitionKey eq @pk", parameters={"pk": partition_key(TENANT, CT)})
    return sorted([str(r["ContentId"]) async for r in rows if str(r["RowKey"]).startswith(OPEN_PREFIX)])


def test_a_listing_page_takes_a_transaction_and_a_claim_and_mark_read_nothing_back(
        stores: StoreFactory) -> None:
    page = [blob(f"b{i:03}", NOW - timedelta(minutes=i)) for i in range(120)]  # three transactions' worth
    requests = Requests()

    async def main() -> None:
        async with stores(requests) as s:
            assert await s.pending(TENANT, CT) == []  # creates the tables
            requests.seen.clear()
            assert ids(await s.register_listed(page, NOW)) == ids(page)
            await s.mark_queued(page)
            assert requests.seen == Counter({("POST", "$batch"): 3 + 2})  # 50 blobs + markers / 100 rows a time
            requests.seen.clear()
            for b in page[:10]:
                assert await s.claim(b, "me", LEASE, NOW)
                await s.mark(b, BlobStatus.INGESTED, at=NOW, records=3)
            # Nothing this instance wrote is read back: a claim is one update, a mark one transaction
            # of its update and the marker's removal.
            assert requests.seen == Counter({("PUT", "entity"): 10, ("POST", "$batch"): 10})
            assert ids(await s.pending(TENANT, CT)) == list(reversed(ids(page[10:])))  # oldest first
            row = await s.ledger_row(page[0])
            assert row is not None and (row["Status"], row["Attempts"], row["Records"]) == ("ingested", 1, 3)
            assert "ClaimOwner" not in row

    asyncio.run(main())


def test_a_listing_with_known_blobs_among_new_ones_records_each_as_the_one_entity_path_would(
        stores: StoreFactory) -> None:
    # Known blobs at both ends and in the middle of one transaction's worth, more of them than
    # transactions are retried, so some of the new ones are left to the one-entity path too.
    page = [blob(f"b{i:02}", NOW - timedelta(minutes=60 - i)) for i in range(50)]
    known = {0: None, 7: BlobStatus.QUEUED, 8: BlobStatus.INGESTED, 30: BlobStatus.FAILED, 49: None}

    async def body(s: TableStateStore, other: TableStateStore) -> None:
        await other.register_listed([page[i] for i in known], NOW - timedelta(hours=1))
        for i, settled in known.items():
            if settled is not None:
                await other.mark(page[i], settled, at=NOW - timedelta(hours=1))
        handed = await s.register_listed(page, NOW)
        new = [b for i, b in enumerate(page) if i not in known]
        assert ids(handed) == [*ids(new), "b00", "b49"]  # new first, then those still listed
        for i, b in enumerate(page):
            row = await s.ledger_row(b)
            settled = known.get(i)
            assert row is not None and row["ContentId"] == b.content_id
            assert row["Status"] == (settled.value if settled is not None else "listed"), b
            assert row["ListedAt"] == (NOW - timedelta(hours=1) if i in known else NOW)
        open_ = [b.content_id for i, b in enumerate(page) if known.get(i) not in (BlobStatus.INGESTED,
                                                                                  BlobStatus.FAILED)]
        assert await markers(s) == sorted(open_)
        # A second listing of the same page: every row is known now, none is new.
        assert ids(await s.register_listed(page, NOW)) == [b.content_id for i, b in enumerate(page)
                                                           if known.get(i) is None]

    two(stores, body)


def test_listing_again_what_this_instance_handed_on_only_rewrites_the_markers(stores: StoreFactory) -> None:
    page = [blob(f"b{i}", NOW - timedelta(minutes=10 - i)) for i in range(10)]
    requests = Requests()

    async def main() -> None:
        async with stores(requests) as s, stores() as other:
            await s.register_listed(page, NOW)
            await s.mark_queued(page)
            # Since then, elsewhere: b0 was processed (its marker went with it), b1 lost its marker
            # (``pending`` tidied it while the row was briefly settled).
            assert await other.claim(page[0], "elsewhere", LEASE, NOW)
            await other.mark(page[0], BlobStatus.INGESTED, at=NOW)
            table = await other._ledger()
            await table.delete_entity(partition_key(TENANT, CT), OPEN_PREFIX + encode_key(page[1].content_id))
            requests.seen.clear()
            assert await s.register_listed(page, NOW + timedelta(minutes=5)) == []  # nothing new, all handed on
            assert requests.seen == Counter({("POST", "$batch"): 1})
            assert await markers(other) == ids(page)  # b1's is back; b0's is stale, for ``pending`` to tidy
            assert ids(await other.pending(TENANT, CT)) == ids(page[1:])
            assert await markers(other) == ids(page[1:])
            assert await other.register_listed(page, NOW + timedelta(minutes=6)) == []  # read, not remembered
            assert [await status(other, b) for b in page] == ["ingested"] + ["queued"] * 9

    asyncio.run(main())


def test_mark_queued_moves_a_page_around_rows_another_instance_changed(stores: StoreFactory) -> None:
    page = [blob(f"b{i}") for i in range(6)]

    async def body(s: TableStateStore, other: TableStateStore) -> None:
        assert ids(await s.register_listed(page, NOW)) == ids(page)
        # Between hand-off and "queued" the content function elsewhere already took two blobs.
        assert await other.claim(page[1], "elsewhere", LEASE, NOW)
        assert await other.claim(page[4], "elsewhere", LEASE, NOW)
        await other.mark(page[4], BlobStatus.INGESTED, at=NOW, records=1)
        await s.mark_queued(page)
        assert [await status(other, b) for b in page] == ["queued"] * 4 + ["ingested", "queued"]
        row = await other.ledger_row(page[1])
        assert row is not None and row["ClaimOwner"] == "elsewhere"  # the claim written elsewhere is kept
        assert ids(await other.pending(TENANT, CT)) == ["b0", "b1", "b2", "b3", "b5"]

    two(stores, body)


def test_a_stale_remembered_etag_is_detected_and_the_current_row_decides(stores: StoreFactory) -> None:
    a = blob("a")

    async def body(s: TableStateStore, other: TableStateStore) -> None:
        await s.register_listed([a], NOW)
        await s.mark_queued([a])
        assert await s.claim(a, "here", LEASE, NOW)  # s remembers the row as it wrote it
        # Another instance records a failed attempt after the lease ran out, then a replay requeues it.
        later = NOW + LEASE + timedelta(seconds=1)
        assert await other.claim(a, "elsewhere", LEASE, later)
        await other.mark(a, BlobStatus.FAILED, at=later, error="MalformedContentError: cut off")
        await other.mark(a, BlobStatus.QUEUED, at=later, error="replay: re-enqueued")
        # s's memory is three writes old: its mark must count them, not overwrite them.
        written = await s.mark(a, BlobStatus.INGESTED, at=later + timedelta(minutes=1), records=7)
        assert written is not None
        stored = await other.ledger_row(a)
        assert stored is not None
        for row in (written, stored):
            assert (row["Status"], row["Attempts"], row["Records"]) == ("ingested", 3, 7)
            assert row["FirstError"] == "MalformedContentError: cut off" and row.get("Error") is None
        assert await markers(other) == []

    two(stores, body)


def test_a_claim_refused_on_a_remembered_row_is_checked_against_the_stored_one(stores: StoreFactory) -> None:
    a = blob("a")

    async def body(s: TableStateStore, other: TableStateStore) -> None:
        await s.register_listed([a], NOW)
        assert await other.claim(a, "elsewhere", LEASE, NOW)
        assert not await s.claim(a, "here", LEASE, NOW)  # s now remembers the live claim of "elsewhere"
        await other.release(a, "elsewhere")
        assert await s.claim(a, "here", LEASE, NOW + timedelta(minutes=1))  # released: s reads and wins
        assert not await other.claim(a, "elsewhere", LEASE, NOW + timedelta(minutes=2))
        row = await other.ledger_row(a)
        assert row is not None and row["ClaimOwner"] == "here"

    two(stores, body)


def test_concurrent_claims_sharing_one_memory_and_another_instance_exactly_one_wins(stores: StoreFactory) -> None:
    a = blob("contended")

    async def body(s: TableStateStore, other: TableStateStore) -> None:
        await s.register_listed([a], NOW)
        await s.mark_queued([a])  # every claimer of s starts from the same remembered ETag
        for round_ in range(3):
            at = NOW + round_ * (LEASE + timedelta(seconds=1))
            results = await asyncio.gather(*(s.claim(a, f"s-{i}", LEASE, at) for i in range(6)),
                                           *(other.claim(a, f"other-{i}", LEASE, at) for i in range(2)))
            assert sum(r is not None for r in results) == 1, results

    two(stores, body)


def test_a_mark_whose_marker_is_gone_still_settles_the_row(stores: StoreFactory) -> None:
    a, b = blob("a"), blob("b")

    async def body(s: TableStateStore, other: TableStateStore) -> None:
        await s.register_listed([a, b], NOW)
        table = await other._ledger()
        await table.delete_entity(partition_key(TENANT, CT), OPEN_PREFIX + encode_key(a.content_id))
        # The marker is gone already; the row is settled all the same.
        written = await s.mark(a, BlobStatus.INGESTED, at=NOW, records=2)
        assert written is not None and written["Status"] == "ingested"
        assert await status(other, a) == "ingested"
        # A stale memory never hides another instance's mark: the attempt counts on the stored row.
        await other.mark(b, BlobStatus.EXPIRED, at=NOW, error="gone")
        await s.mark(b, BlobStatus.FAILED, at=NOW, error="late")
        row = await other.ledger_row(b)
        assert row is not None and (row["Status"], row["Attempts"]) == ("failed", 2)
        assert await markers(other) == []

    two(stores, body)


def test_a_mark_that_leaves_the_blob_open_writes_its_marker_in_the_same_transaction(stores: StoreFactory) -> None:
    a = blob("a")
    requests = Requests()

    async def main() -> None:
        async with stores(requests) as s, stores() as other:
            await s.register_listed([a], NOW)
            assert await s.claim(a, "me", LEASE, NOW)
            table = await other._ledger()
            await table.delete_entity(partition_key(TENANT, CT), OPEN_PREFIX + encode_key(a.content_id))
            requests.seen.clear()
            written = await s.mark(a, BlobStatus.QUEUED, at=NOW, error="throttled, again later")
            assert written is not None and written["Attempts"] == 1
            assert requests.seen == Counter({("POST", "$batch"): 1})
            assert await markers(other) == ["a"]
            assert await s.pending(TENANT, CT) == [a]

    asyncio.run(main())
