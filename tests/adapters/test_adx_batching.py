"""Blobs written at once share one staging ingestion: the real ingest client against the fake ADX
(Azurite), the ledger mirror announcing the blobs this process claimed, as in the Functions app."""

from __future__ import annotations

import asyncio
import base64
import json
import operator
import os
import uuid
import zlib
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

import function_app.lake.adx as adx
from function_app.azure.ingest_failures import parse_failure
from function_app.azure.mirror import AdxMirroredState
from function_app.compose import build_rows_for_adx
from function_app.core.model import BlobStatus, ContentBlob
from function_app.lake.adx import (
    INGEST_ALONE,
    MAX_BLOB_NAME_CHARS,
    AdxIngestError,
    AdxSink,
    BlobKey,
    batch_stream_name,
    blob_key,
    blob_keys,
    ingestion_source_id,
    key_of,
    source_id,
)
from function_app.lake.derived_tables import BODIES
from function_app.lake.schema import RECORD_TABLES, TABLES_BY_NAME, Merge
from function_app.lake.staging import STAGING_TABLE
from function_app.records.flatten import BlobContext
from function_app.records.tables import flatten_tables
from tests.adapters.fake_adx import FakeAdx, Ingestion, dedup_view, fan_out
from tests.adapters.test_adx_staging import CREATED, DB, TENANT, as_adx, canonical
from tests.samples import all_records

# Long enough that a batch which goes at all went for a reason other than the linger.
NEVER = 3600.0
T = TypeVar("T")


def blob(content_id: str) -> ContentBlob:
    return ContentBlob(TENANT, "Audit.General", content_id,
                       f"https://manage.office.com/api/v1.0/{TENANT}/activity/feed/audit/{content_id}", CREATED,
                       CREATED + timedelta(days=7))


def content_id(i: int) -> str:
    stamp = f"20261121100000{i:03d}{i * 7919 % 10**6:06d}"
    return f"{stamp}${stamp}$audit_general$Audit_General$nam0001"


def all_rows_of(records: list[Any], b: ContentBlob) -> dict[str, list[dict[str, Any]]]:
    """Every table's rows as the Python builders make them (what the local lake writes)."""
    ctx = BlobContext(b.tenant_id, b.content_type, b.content_id, b.content_created, datetime.now(UTC))
    return flatten_tables(records, ctx)


def rows_of(records: list[Any], b: ContentBlob) -> dict[str, list[dict[str, Any]]]:
    """The rows the collector sends ADX: not those of the tables its policies derive."""
    return {name: rows for name, rows in all_rows_of(records, b).items() if name not in BODIES}


def fresh(records: list[Any], tag: str) -> list[Any]:
    """*records* with Ids of their own, so each blob's rows are distinct."""
    return [{**r, "Id": f"{tag}-{r.get('Id')}"} for r in records]


class ClaimingStore:
    """Just enough of a claiming state store for the mirror: claims, marks, releases in memory."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def _row(self, b: ContentBlob) -> dict[str, Any]:
        return self.rows.setdefault(b.content_id, {"Status": "queued", "Attempts": 0, "Error": None})

    async def claim(self, b: ContentBlob, owner: str, lease: timedelta, now: datetime) -> dict[str, Any] | None:
        row = self._row(b)
        if row["Status"] in ("ingested", "failed", "expired"):
            return None
        row["ClaimOwner"] = owner
        return dict(row)

    async def mark(self, b: ContentBlob, status: BlobStatus, *, at: datetime, records: int | None = None,
                   size: int | None = None, error: str | None = None) -> Mapping[str, Any]:
        row = self._row(b)
        row.update(Status=status.value, FetchedAt=at, Records=records, Bytes=size, Error=error,
                   Attempts=row["Attempts"] + 1)
        return dict(row)

    async def release(self, b: ContentBlob, owner: str) -> None:
        self._row(b).pop("ClaimOwner", None)


@pytest.fixture
def drained(fake: FakeAdx) -> FakeAdx:
    fake.read_ingestions()
    fake.raw_ingestions.clear()
    fake.clear_failures()
    return fake


@pytest.fixture(scope="module")
def sample_records() -> list[Any]:
    return [record for _, record in all_records()]


@pytest.fixture
def lingering(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adx, "BATCH_LINGER_SECONDS", NEVER)


def bounded(aw: Awaitable[T]) -> Awaitable[T]:
    """*aw*, failing instead of hanging if a batch waited for the linger (an hour here)."""
    return asyncio.wait_for(aw, 60)


async def settle(mirror: AdxMirroredState, sink: AdxSink, b: ContentBlob, tables: dict[str, Any]) -> None:
    """What ``core.process`` does with a claimed blob: write its rows, then mark it ingested."""
    await sink.write_blob(b, tables)
    await mirror.mark(b, BlobStatus.INGESTED, at=datetime.now(UTC), records=1, size=1)


async def claim_and_settle_at_once(fake: FakeAdx, blobs: list[ContentBlob], records: list[Any]) -> None:
    """Claim every blob, then write and mark them all at once (each with *records*), then close the sink."""
    sink = AdxSink.create(fake.uri, DB)
    mirror = AdxMirroredState(ClaimingStore(), sink)  # type: ignore[arg-type]
    for b in blobs:
        await mirror.claim(b, "me", timedelta(minutes=5), datetime.now(UTC))
    await bounded(asyncio.gather(*(settle(mirror, sink, b, rows_of(records, b)) for b in blobs)))
    await asyncio.to_thread(sink.close)


def by_table(ingestions: list[Ingestion]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for ingestion in ingestions:
        for expanded in fan_out(ingestion):
            out.setdefault(expanded.table, []).extend(expanded.rows)
    return out


def test_blobs_written_at_once_share_one_ingestion_and_every_row_lands_once(
    drained: FakeAdx, sample_records: list[Any], lingering: None
) -> None:
    blobs = [blob(content_id(i)) for i in range(5)]
    built = {b.content_id: all_rows_of(fresh(sample_records, b.content_id), b) for b in blobs}
    tables = {cid: {n: rows for n, rows in t.items() if n not in BODIES} for cid, t in built.items()}

    async def run() -> None:
        sink = AdxSink.create(drained.uri, DB)
        mirror = AdxMirroredState(ClaimingStore(), sink)  # type: ignore[arg-type]
        for b in blobs:
            assert await mirror.claim(b, "me", timedelta(minutes=5), datetime.now(UTC)) is not None
        # The first writes while the others are still on their way; it must wait for them.
        first = asyncio.create_task(settle(mirror, sink, blobs[0], tables[blobs[0].content_id]))
        await asyncio.sleep(0.2)
        assert not first.done(), "the batch went before the other claimed blobs wrote their rows"
        await bounded(asyncio.gather(first, *(settle(mirror, sink, b, tables[b.content_id]) for b in blobs[1:])))
        await asyncio.to_thread(sink.close)

    asyncio.run(run())
    drained.read_ingestions(expand=False)
    staging = [i for i in drained.raw_ingestions if i.ingested_table == STAGING_TABLE]
    assert len(staging) == 1
    [raw] = staging
    keys = [key_of(b) for b in blobs]
    # The stream name names every blob of the ingestion, the source id follows from them.
    assert sorted(blob_keys(raw.blob_url) or []) == sorted(keys)
    assert raw.source_id == str(ingestion_source_id(blob_keys(raw.blob_url) or [], STAGING_TABLE))
    assert blob_key(raw.blob_url) is None  # not one blob's
    assert len(raw.blob_name) <= MAX_BLOB_NAME_CHARS

    got = by_table(drained.raw_ingestions)
    for name in RECORD_TABLES:
        table = TABLES_BY_NAME[name]
        sent = [r for b in blobs for r in built[b.content_id][name]]  # derived ones: by the policies
        assert canonical(table, got[name]) == canonical(table, sent), name
        keyed = dedup_view(name, got[name])
        assert len(keyed) == len({tuple(json.dumps(r[k]) for k in table.key) for r in got[name]})
    # The ledger mirror's marks rode along or were flushed at close: one row per blob.
    assert sorted(r["ContentId"] for r in got["ContentLedger"]) == sorted(b.content_id for b in blobs)


def test_the_schema_observations_of_a_batch_go_folded_and_read_the_same_in_the_summary(
    drained: FakeAdx, sample_records: list[Any], lingering: None
) -> None:
    blobs = [blob(content_id(i)) for i in range(4)]
    at = datetime.now(UTC)
    # What the content function hands the sink: the SchemaObservation rows as the blob's observer.
    tables = {b.content_id: build_rows_for_adx(fresh(sample_records, b.content_id), b, at) for b in blobs}
    per_blob = [dict(r) for b in blobs for r in tables[b.content_id]["SchemaObservation"]]

    async def run() -> None:
        sink = AdxSink.create(drained.uri, DB)
        mirror = AdxMirroredState(ClaimingStore(), sink)  # type: ignore[arg-type]
        for b in blobs:
            await mirror.claim(b, "me", timedelta(minutes=5), datetime.now(UTC))
        await bounded(asyncio.gather(*(settle(mirror, sink, b, dict(tables[b.content_id])) for b in blobs)))
        await asyncio.to_thread(sink.close)

    asyncio.run(run())
    drained.read_ingestions(expand=False)
    assert len([i for i in drained.raw_ingestions if i.ingested_table == STAGING_TABLE]) == 1
    got = by_table(drained.raw_ingestions)
    table = TABLES_BY_NAME["SchemaObservation"]

    folds: dict[Merge, Callable[[Any, Any], Any]] = {Merge.MIN: min, Merge.MAX: max, Merge.SUM: operator.add}
    merged = [c for c in table.columns if c.merge is not None]
    assert [c.name for c in merged] == ["FirstSeen", "LastSeen", "Records"]

    def summary(rows: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, Any]]:
        # SchemaObservationSummary's rule: each column folded by its merge rule in the schema.
        out: dict[tuple[Any, ...], dict[str, Any]] = {}
        for row in (as_adx(table, r) for r in rows):
            key = tuple(row[k] for k in table.key)
            held = out.get(key)
            if held is None:
                out[key] = {c.name: row[c.name] for c in merged}
                continue
            for c in merged:
                assert c.merge is not None
                held[c.name] = folds[c.merge](held[c.name], row[c.name])
        return out

    assert len(got["SchemaObservation"]) == len(summary(per_blob)) < len(per_blob)  # one row a key
    assert summary(got["SchemaObservation"]) == summary(per_blob)
    audit = TABLES_BY_NAME["AuditRecord"]
    sent = [dict(r) for b in blobs for r in tables[b.content_id]["AuditRecord"]]
    assert canonical(audit, got["AuditRecord"]) == canonical(audit, sent)


def test_a_lone_blob_is_not_held_for_the_linger(drained: FakeAdx, sample_records: list[Any],
                                                 lingering: None) -> None:
    alone, settled, unclaimed = blob("alone"), blob("settled-without-rows"), blob("unclaimed")

    async def run() -> None:
        sink = AdxSink.create(drained.uri, DB)
        mirror = AdxMirroredState(ClaimingStore(), sink)  # type: ignore[arg-type]
        # Claimed alone: it goes as soon as its rows are written.
        await mirror.claim(alone, "me", timedelta(minutes=5), datetime.now(UTC))
        await bounded(settle(mirror, sink, alone, rows_of(sample_records[:5], alone)))
        # Another claimed blob ends without rows (expired, say): the batch stops waiting for it.
        for b in (unclaimed, settled):
            await mirror.claim(b, "me", timedelta(minutes=5), datetime.now(UTC))
        writing = asyncio.create_task(settle(mirror, sink, unclaimed, rows_of(sample_records[:5], unclaimed)))
        await asyncio.sleep(0.2)
        assert not writing.done()
        await mirror.mark(settled, BlobStatus.EXPIRED, at=datetime.now(UTC), error="gone")
        await bounded(writing)
        # A write nobody announced (the search backfill, the CLI) waits for nobody.
        await bounded(sink.write_blob(blob("search"), rows_of(sample_records[:5], blob("search"))))
        await asyncio.to_thread(sink.close)

    asyncio.run(run())
    staging = [i for i in drained.read_ingestions(expand=False) if i.ingested_table == STAGING_TABLE]
    assert [blob_key(i.blob_url) for i in staging] == [key_of(alone), key_of(unclaimed), key_of(blob("search"))]


def test_the_linger_bounds_the_wait_for_a_claimed_blob_that_does_not_come(
    drained: FakeAdx, sample_records: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(adx, "BATCH_LINGER_SECONDS", 0.2)
    waiting, late = blob("waiting"), blob("late")

    async def run() -> None:
        sink = AdxSink.create(drained.uri, DB)
        mirror = AdxMirroredState(ClaimingStore(), sink)  # type: ignore[arg-type]
        for b in (waiting, late):
            await mirror.claim(b, "me", timedelta(minutes=5), datetime.now(UTC))
        await bounded(settle(mirror, sink, waiting, rows_of(sample_records[:5], waiting)))
        # The late blob was claimed longer ago than the linger: it holds no batch back any more.
        await bounded(settle(mirror, sink, blob("next"), rows_of(sample_records[:5], blob("next"))))
        await asyncio.to_thread(sink.close)

    asyncio.run(run())
    staging = [i for i in drained.read_ingestions(expand=False) if i.ingested_table == STAGING_TABLE]
    assert [blob_key(i.blob_url) for i in staging] == [key_of(waiting), key_of(blob("next"))]


def test_a_failing_ingestion_makes_every_waiting_write_raise(sample_records: list[Any], lingering: None) -> None:
    class Refusing:
        calls = 0

        def ingest_from_stream(self, descriptor: Any, properties: Any) -> None:
            self.calls += 1
            raise ConnectionError("refused")

        def close(self) -> None:
            pass

    client = Refusing()
    blobs = [blob(content_id(i)) for i in range(3)]

    async def run() -> list[BaseException | None]:
        sink = AdxSink(client, DB)
        mirror = AdxMirroredState(ClaimingStore(), sink)  # type: ignore[arg-type]
        sink.defer("ContentLedger", [{"TenantId": TENANT, "ContentId": "earlier", "Status": "ingested"}])
        for b in blobs:
            await mirror.claim(b, "me", timedelta(minutes=5), datetime.now(UTC))
        outcomes = await bounded(asyncio.gather(
            *(sink.write_blob(b, rows_of(sample_records[:5], b)) for b in blobs), return_exceptions=True))
        # The mirror row it was to carry waits for the next ingestion.
        assert sink.pending == 1
        return [o if isinstance(o, BaseException) else None for o in outcomes]

    errors = asyncio.run(run())
    assert client.calls == 1  # one ingestion held the three blobs
    for b, error in zip(blobs, errors, strict=True):
        assert isinstance(error, AdxIngestError), error
        assert error.content_id == b.content_id and error.table == STAGING_TABLE
        assert "refused" in str(error)


def test_a_cancelled_writer_does_not_cancel_the_ingestion_of_the_others(
    drained: FakeAdx, sample_records: list[Any], lingering: None
) -> None:
    gone, stays = blob("cancelled"), blob("stays")

    async def run() -> None:
        sink = AdxSink.create(drained.uri, DB)
        mirror = AdxMirroredState(ClaimingStore(), sink)  # type: ignore[arg-type]
        for b in (gone, stays):
            await mirror.claim(b, "me", timedelta(minutes=5), datetime.now(UTC))
        cancelled = asyncio.create_task(sink.write_blob(gone, rows_of(sample_records[:5], gone)))
        await asyncio.sleep(0.2)
        cancelled.cancel()  # the function timed out while its batch waited
        await bounded(settle(mirror, sink, stays, rows_of(sample_records[:5], stays)))
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        await asyncio.to_thread(sink.close)

    asyncio.run(run())
    [raw] = [i for i in drained.read_ingestions(expand=False) if i.ingested_table == STAGING_TABLE]
    # The cancelled blob's rows went too (it is redelivered; the views absorb the repeat).
    assert sorted(blob_keys(raw.blob_url) or []) == sorted([key_of(gone), key_of(stays)])


def test_a_blob_to_be_ingested_alone_gets_an_ingestion_of_its_own(
    drained: FakeAdx, sample_records: list[Any], lingering: None
) -> None:
    blobs = [blob(content_id(i)) for i in range(3)]
    store = ClaimingStore()
    error = f"ADX ingestion into AuditIngest failed after it was accepted: ...; re-enqueued {INGEST_ALONE}"
    store.rows[blobs[1].content_id] = {"Status": "queued", "Attempts": 2, "Error": error}

    async def run() -> None:
        sink = AdxSink.create(drained.uri, DB)
        mirror = AdxMirroredState(store, sink)  # type: ignore[arg-type]
        for b in blobs:
            await mirror.claim(b, "me", timedelta(minutes=5), datetime.now(UTC))
        await bounded(asyncio.gather(*(settle(mirror, sink, b, rows_of(sample_records[:5], b)) for b in blobs)))
        await asyncio.to_thread(sink.close)

    asyncio.run(run())
    staging = [i for i in drained.read_ingestions(expand=False) if i.ingested_table == STAGING_TABLE]
    named = sorted(sorted(blob_keys(i.blob_url) or []) for i in staging)
    assert named == sorted([[key_of(blobs[1])], sorted([key_of(blobs[0]), key_of(blobs[2])])])


def test_a_batch_takes_no_blob_its_stream_name_could_not_name(
    drained: FakeAdx, sample_records: list[Any], lingering: None
) -> None:
    # 256-character content ids that compress badly: few fit in one name.
    blobs = [blob(base64.b32encode(os.urandom(160)).decode()) for _ in range(6)]

    asyncio.run(claim_and_settle_at_once(drained, blobs, sample_records[:3]))
    staging = [i for i in drained.read_ingestions(expand=False) if i.ingested_table == STAGING_TABLE]
    assert 1 < len(staging) < len(blobs)
    named = [k for i in staging for k in blob_keys(i.blob_url) or []]
    assert sorted(named) == sorted(key_of(b) for b in blobs)
    assert all(len(i.blob_name) <= MAX_BLOB_NAME_CHARS for i in staging)


def test_a_reported_failure_of_a_batch_names_each_of_its_blobs(
    drained: FakeAdx, sample_records: list[Any], lingering: None
) -> None:
    blobs = [blob(content_id(i)) for i in range(4)]

    asyncio.run(claim_and_settle_at_once(drained, blobs, sample_records[:5]))
    [raw] = [i for i in drained.read_ingestions(expand=False) if i.ingested_table == STAGING_TABLE]
    drained.report_failure(raw, status="Permanent", from_update_policy=True)
    [message] = drained.failure_messages()
    failure = parse_failure(message)
    # What the watcher reads: the temp blob's URL names every blob, and the source id is theirs.
    keys = blob_keys(failure.source_path)
    assert keys is not None and sorted(keys) == sorted(key_of(b) for b in blobs)
    assert failure.source_id == str(ingestion_source_id(keys, STAGING_TABLE))
    assert failure.table == STAGING_TABLE


@pytest.mark.parametrize("count", [1, 2, 30])
def test_the_batch_stream_name_lists_its_blobs_reversibly_and_fits_a_blob_name(count: int) -> None:
    keys = [BlobKey(TENANT, "Audit.SharePoint", content_id(i)) for i in range(count)]
    name = batch_stream_name(keys)
    assert name != batch_stream_name(keys), "unique per attempt"
    assert name.startswith("al1-" if count == 1 else "al2-") and name.endswith(".json.gz")
    ids = ingestion_source_id(keys, STAGING_TABLE)
    temp = f"{DB}__{STAGING_TABLE}__{ids}__{name}"
    assert len(temp) <= MAX_BLOB_NAME_CHARS
    assert blob_keys(temp) == keys
    assert blob_keys(f"https://acct.blob.core.windows.net/tempstorage/{temp}?sv=1&sig=x") == keys
    assert blob_keys(f"http://127.0.0.1:10000/devstoreaccount1/tempstorage/{temp.replace('_', '%5F')}") == keys
    if count == 1:
        assert ids == source_id(keys[0], STAGING_TABLE)
    else:
        assert ids != source_id(keys[0], STAGING_TABLE)
        assert ids != ingestion_source_id(list(reversed(keys)), STAGING_TABLE)


def _token(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _named(token_of: bytes, version: str = "al2", *, compressed: bool = True) -> str:
    data = zlib.compress(token_of) if compressed else token_of
    return f"{version}-{_token(data)}.{uuid.uuid4().hex}.json.gz"


@pytest.mark.parametrize("name", [
    _named(b"only-one\nkey\nhere"),  # one blob is al1's
    _named(b"a\nb\nc\nd\ne"),  # not triples
    _named(b"a\nb\nc\n\ne\nf"),  # an empty part
    _named(b"not zlib at all", compressed=False),
    _named(bytes(10**7)),  # inflates past any real list
    _named(b"a\nb\nc\nd\ne\nf", "al1", compressed=False),  # al1 names one blob
])
def test_a_stream_name_this_sink_did_not_make_names_no_blob(name: str) -> None:
    assert blob_keys(f"{DB}__{STAGING_TABLE}__{uuid.uuid4()}__{name}") is None
