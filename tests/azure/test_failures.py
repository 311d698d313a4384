"""Messages and blobs that cannot be processed: where each ends, and how ``replay`` re-drives
the blobs once they are fixed.

* An untrusted message is dead-lettered (kept with its reason) and settles nothing: a message
  is anyone's to write, so it never touches the ledger row of the blob it names.
* A blob whose body never closes (cut off at the source) is re-fetched within its one delivery,
  then settled ``failed`` on that first delivery with the records read before the cut written
  and the raw body kept; the queue never sees it again.
* A delivery that fails for a reason a retry may fix (ADX unreachable) records the error, keeps
  the raw bytes exactly as fetched and releases its claim, then goes back to the queue; after
  ``maxDequeueCount`` the poison trigger settles it ``failed``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from azure.core.exceptions import ResourceNotFoundError

from auditlake.emulator.faults import cutoff_body
from auditlake.emulator.server import EmulatorServer
from auditlake.emulator.tenant import EmulatedBlob
from auditlake.lake.duckdb_lake import LocalLake
from auditlake.localrun import collect
from auditlake.replay import replay
from function_app.azure.deps import close_runtime
from function_app.config import Settings
from function_app.core.messages import decode_message, encode_message
from function_app.core.model import CONTENT_TYPES, ContentBlob
from function_app.o365.auth import StaticTokenProvider
from tests.azure.conftest import MAX_DEQUEUE_COUNT, FunctionsHost, Harness, flush_mirror

TENANT = "8e7d6c5b-4a39-4281-9f0e-1d2c3b4a5968"
OTHER_TENANT = "11111111-2222-4333-8444-555555555555"
RETRY_ATTEMPTS = 3
Key = tuple[str, int, str]


def _message(api_root: str, content_id: str, **overrides: Any) -> str:
    now = datetime.now(UTC)
    body: dict[str, Any] = {
        "v": 1, "tenantId": TENANT, "contentType": "Audit.Exchange", "contentId": content_id,
        "contentUri": f"{api_root}/{TENANT}/activity/feed/audit/{content_id}",
        "contentCreated": (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "contentExpiration": (now + timedelta(days=6)).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
    }
    body.update(overrides)
    return orjson.dumps(body).decode()


def _dead_letters(h: Harness, prefix: str) -> dict[str, bytes]:
    container = h.container_client()
    try:
        return {b.name: container.download_blob(b.name).readall() for b in container.list_blobs(prefix)}
    except ResourceNotFoundError:  # nothing was ever kept: the container was never made
        return {}
    finally:
        container.close()


def _dead_letter_reasons(h: Harness, prefix: str) -> dict[str, str]:
    """The ``reason`` metadata of each kept blob under *prefix*, by blob name."""
    container = h.container_client()
    try:
        return {b.name: str((b.metadata or {}).get("reason", ""))
                for b in container.list_blobs(prefix, include=["metadata"])}
    except ResourceNotFoundError:
        return {}
    finally:
        container.close()


def _ledger(h: Harness) -> dict[str, dict[str, Any]]:
    """The ledger rows, or none when nothing ever wrote to the ledger table."""
    try:
        return h.ledger()
    except ResourceNotFoundError:
        return {}


def test_untrusted_messages_are_dead_lettered_with_their_reason_and_settle_nothing(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    ids = {"bad-time": "m-bad-time", "other-host": "m-other-host", "future-v": "m-future-v",
           "not-json": "m-not-json", "not-ours": "m-not-ours"}

    async def run() -> None:
        async with EmulatorServer([TENANT], seed=2, days=0.2, records_per_day=20, scenario="quiet") as emu:
            harness.configure(AUDITLAKE_TENANTS=TENANT, AUDITLAKE_API_ROOT=emu.api_root)
            host = FunctionsHost(harness)
            try:
                # Each returns normally: the queue deletes the message, nothing is retried.
                await host.deliver(_message(emu.api_root, "20990101$bad$time", contentExpiration="next tuesday"),
                                   message_id=ids["bad-time"])
                await host.deliver(_message(
                    emu.api_root, "20990101$other$host",
                    contentUri=f"https://evil.example.com/api/v1.0/{TENANT}/activity/feed/audit/20990101$other$host"),
                    message_id=ids["other-host"])
                await host.deliver(_message(emu.api_root, "20990101$future$v", v=2), message_id=ids["future-v"])
                await host.deliver("{this is not json", message_id=ids["not-json"])
                await host.deliver(_message(emu.api_root, "20990101$not$ours", tenantId=OTHER_TENANT,
                                            contentUri=f"{emu.api_root}/{OTHER_TENANT}/activity/feed/audit/20990101$not$ours"),
                                   message_id=ids["not-ours"])
            finally:
                await close_runtime()
            assert emu.state.stats.requests["GetBlob"] == 0, "an untrusted message made the app fetch"

    with caplog.at_level(logging.ERROR):
        asyncio.run(run())
    # A message settles nothing: no ledger row was created or marked for the blobs they name.
    assert _ledger(harness) == {}
    kept = _dead_letters(harness, "messages/")
    assert len(kept) == 5, "every rejected message is kept"
    reasons = {name.rsplit("/", 1)[-1].removesuffix(".txt"): reason
               for name, reason in _dead_letter_reasons(harness, "messages/").items()}
    assert set(reasons) == set(ids.values())
    assert "contentExpiration: not an ISO 8601 time" in reasons[ids["bad-time"]]
    assert "not the Management API host" in reasons[ids["other-host"]]
    assert "v: unsupported version 2" in reasons[ids["future-v"]]
    assert "message is not JSON" in reasons[ids["not-json"]]
    assert "not a monitored tenant" in reasons[ids["not-ours"]]
    assert all(r.startswith("UntrustedMessageError: ") for r in reasons.values())
    assert {k.rsplit("/", 1)[-1] for k in kept} == {f"{i}.txt" for i in ids.values()}
    assert kept[next(k for k in kept if k.endswith(f"{ids['not-json']}.txt"))] == b"{this is not json"
    # The one naming no blob (and the foreign tenant's) is logged as well as kept.
    assert any("message is not JSON" in r.getMessage() for r in caplog.records)
    assert any("not a monitored tenant" in r.getMessage() for r in caplog.records)
    assert not any(r.getMessage().startswith("blob failed") for r in caplog.records)


def _spans(body: bytes) -> list[tuple[int, int, bytes]]:
    """``(start, end, text)`` of each record in *body* (``[`` + the records' texts joined by ``,``
    + ``]``, as the emulator serialises a blob), worked out from byte offsets."""
    texts = [orjson.dumps(r) for r in orjson.loads(body)]
    assert b"[" + b",".join(texts) + b"]" == body, "the emulator's body is not laid out as expected"
    spans: list[tuple[int, int, bytes]] = []
    start = 1
    for text in texts:
        spans.append((start, start + len(text), text))
        start += len(text) + 1
    return spans


def _cut_inside_a_record(blob: EmulatedBlob, *, after_key: bool) -> bool:
    """True when the ``cutoff`` fault cuts *blob* after at least one whole record and inside a
    later one (past that record's RecordType, so the key stands in its text, with *after_key*)."""
    cut = len(cutoff_body(blob.body, blob.content_id))
    spans = _spans(blob.body)
    if not any(end <= cut for _, end, _ in spans):
        return False
    for start, end, text in spans:
        if start < cut < end:
            if not after_key:
                return True
            rt = text.find(b'"RecordType":')
            return rt >= 0 and start + rt + len(b'"RecordType":') + 2 <= cut and text.find(b'"Id":') < rt \
                and text.find(b'"Operation":') < rt
    return False


def _choose_cutoff_blob(emu: EmulatorServer, *, after_key: bool = False) -> EmulatedBlob:
    """Make one available blob the tenant's only ``cutoff`` blob, chosen so the cut falls inside a
    record after whole ones (the seed alone cannot promise that: content ids carry the clock)."""
    tenant = emu.state.tenants[TENANT]
    for b in tenant.blobs:
        b.cutoff = False
    available = [b for b in tenant.blobs if b.content_created <= tenant.now and b.undeliverable_reason is None]
    chosen = next((b for b in available if _cut_inside_a_record(b, after_key=after_key)), None)
    assert chosen is not None, "no blob of this tenant is cut inside a record; use more records"
    chosen.cutoff = True
    return chosen


def _blob_of(b: EmulatedBlob, api_root: str) -> ContentBlob:
    return ContentBlob(TENANT, b.content_type, b.content_id, f"{api_root}/{TENANT}/activity/feed/audit/{b.content_id}",
                       b.content_created, b.content_expiration)


async def _collect_with_a_cutoff_blob(h: Harness, emu: EmulatorServer) -> tuple[FunctionsHost, EmulatedBlob]:
    bad = _choose_cutoff_blob(emu)
    h.configure(AUDITLAKE_TENANTS=TENANT, AUDITLAKE_API_ROOT=emu.api_root,
                AUDITLAKE_RETRY_ATTEMPTS=str(RETRY_ATTEMPTS))
    host = FunctionsHost(h)
    await host.timer()
    await host.drain()
    return host, bad


def _audit_rows(h: Harness, content_id: str) -> list[dict[str, Any]]:
    """The AuditRecord rows ingested (since the last read) for *content_id*."""
    return [r for i in h.adx.read_ingestions() if i.table == "AuditRecord" for r in i.rows
            if r["ContentId"] == content_id]


def _int(value: Any) -> Any:
    """An Int64 table property (an EntityProperty) as its value."""
    return getattr(value, "value", value)


def _key(row: dict[str, Any]) -> Key:
    return str(row["Id"]), int(row["RecordType"]), str(row["Operation"])


def _audit_keys(h: Harness, content_id: str) -> set[Key]:
    return {_key(r) for r in _audit_rows(h, content_id)}


def _says_what_was_written_before_the_cut(error: str, *, rows: int | None = None, whole: int | None = None) -> bool:
    """The error says the records read before the cut were written (in the wording of issue 17,
    or the one naming the counts, which then must be right)."""
    if "records read before the cut were written" in error:
        return True
    written = re.search(r"(\d+) rows written from what was read before the cut", error)
    counted = re.search(r"(\d+) whole records before the cut", error)
    if written is None:
        return False
    return (rows is None or int(written.group(1)) == rows) and (
        whole is None or (counted is not None and int(counted.group(1)) == whole))


def _whole_before(body: bytes, cut: int, keys: list[Key]) -> set[Key]:
    """The keys of the records whose text lies wholly within the first *cut* bytes of *body*."""
    return {key for key, (_, end, _) in zip(keys, _spans(body), strict=True) if end <= cut}


def test_a_cut_off_blob_is_settled_failed_on_its_first_delivery_with_what_came_before_the_cut_then_replayed(
    harness: Harness,
) -> None:
    async def run() -> None:
        async with EmulatorServer([TENANT], seed=9, days=0.5, records_per_day=120, scenario="quiet",
                                  faults="cutoff=1") as emu:
            try:
                host, bad = await _collect_with_a_cutoff_blob(harness, emu)
                served = cutoff_body(bad.body, bad.content_id)
                # Re-fetched within its one delivery, then settled: no queue retry, no poison.
                assert emu.state.injector.injected["cutoff"] == RETRY_ATTEMPTS
                attempts = [d for d in host.deliveries if decode_message(d.body).content_id == bad.content_id]
                assert [(d.dequeue_count, d.error) for d in attempts] == [(1, None)]
                assert host.poisoned == [] and await host.receive(harness.poison) == []
                ledger = harness.ledger()
                row = ledger[bad.content_id]
                assert row["Status"] == "failed" and row["Attempts"] == 1
                assert "not valid JSON (cut off or corrupt)" in row["Error"]
                assert _says_what_was_written_before_the_cut(row["Error"])
                assert "dead-lettered" not in row["Error"], "the poison trigger had a hand in it"
                assert {r["Status"] for k, r in ledger.items() if k != bad.content_id} == {"ingested"}
                # The body as fetched is kept for a replay after the API's copy expires.
                assert _dead_letters(harness, "content/") == {
                    f"content/{TENANT}/{bad.content_type}/{bad.content_id}.json": served}
                assert _dead_letters(harness, "messages/") == {}, "no message was poisoned"

                # The records before the cut reached ADX; a record the cut fell inside is at most
                # one row flagged as such, never passed off as whole.
                salvaged = _audit_rows(harness, bad.content_id)
                whole = _whole_before(bad.body, len(served), bad.record_keys)
                assert whole
                partial = [r for r in salvaged if "record:unreadable:cut-off" in r["Quality"]]
                assert len(partial) == 1, "the record the cut fell inside is one row, flagged"
                begun = next(start for start, end, _ in _spans(bad.body) if start < len(served) < end)
                assert partial[0]["AuditData"] == served[begun:].decode(), "kept as the text delivered"
                assert {_key(r) for r in salvaged if r not in partial} == whole
                assert len(salvaged) - len(partial) == len(whole), "a salvaged record was written twice"
                assert _int(row["Records"]) == len(salvaged)
                assert _says_what_was_written_before_the_cut(row["Error"], rows=len(salvaged), whole=len(whole))

                # Fixed at the source: replay moves it back to the queue and the app ingests it.
                bad.cutoff = False
                summary = await replay(azure=True)
                assert summary.counts() == {"requeued": 1}
                assert harness.ledger()[bad.content_id]["Status"] == "queued"
                assert await host.drain() == 1
                settled = harness.ledger()[bad.content_id]
                assert settled["Status"] == "ingested" and settled["Attempts"] == 3
                # The replay's requeue and the ingestion replaced Error; what it first failed with stays,
                # in Table Storage and in ADX's mirror of the row.
                assert "Error" not in settled and settled["FirstError"] == row["Error"]
                await flush_mirror()
                ingestions = harness.adx.read_ingestions()
                mirrored = [r for i in ingestions if i.table == "ContentLedger" for r in i.rows
                            if r["ContentId"] == bad.content_id]
                assert mirrored[-1]["Status"] == "ingested" and mirrored[-1]["FirstError"] == row["Error"]
                replayed = [r for i in ingestions if i.table == "AuditRecord" for r in i.rows
                            if r["ContentId"] == bad.content_id]
                assert {_key(r) for r in replayed} == set(bad.record_keys)
                assert all(not any(f.startswith("record:") for f in r["Quality"]) for r in replayed)
                # Through dedup (keys as a set) every record is there, the salvaged ones repeated
                # only as the same keys; a key of the replay nowhere else is no loss.
                everything = {_key(r) for r in salvaged + replayed}
                assert set(bad.record_keys) <= everything
                assert everything - set(bad.record_keys) <= {_key(r) for r in partial}
                assert (await replay(azure=True)).items == []
            finally:
                await close_runtime()

    asyncio.run(run())


def test_replay_reingests_the_fixed_dead_letter_copy_and_marks_lost_content_expired(harness: Harness) -> None:
    async def run() -> None:
        async with EmulatorServer([TENANT], seed=10, days=0.5, records_per_day=120, scenario="quiet",
                                  faults="cutoff=1") as emu:
            try:
                _, bad = await _collect_with_a_cutoff_blob(harness, emu)
            finally:
                await close_runtime()
            assert harness.ledger()[bad.content_id]["Status"] == "failed"
            harness.adx.read_ingestions()
            # The API keeps serving it cut off; an operator repairs the kept copy instead.
            container = harness.container_client()
            name = f"content/{TENANT}/{bad.content_type}/{bad.content_id}.json"
            assert container.download_blob(name).readall() == cutoff_body(bad.body, bad.content_id)
            container.upload_blob(name, bad.body, overwrite=True)
            container.close()
            assert (await replay(azure=True, dry_run=True)).counts() == {"planned": 1}
            summary = await replay(azure=True, from_deadletter=True)
            assert summary.counts() == {"reingested": 1}, summary
            assert harness.ledger()[bad.content_id]["Status"] == "ingested"
            assert _audit_keys(harness, bad.content_id) == set(bad.record_keys)

            # A failed blob past its expiry with no kept copy: the records are gone, said so.
            lost = _blob_of(bad, emu.api_root)
            lost = ContentBlob(lost.tenant_id, lost.content_type, "20990101$lost$blob",
                               lost.content_uri.replace(bad.content_id, "20990101$lost$blob"),
                               lost.content_created, lost.content_expiration)
            from function_app.state.table import TableStateStore

            async with TableStateStore.from_connection_string(
                    harness.azurite.connection_string, checkpoints_table=f"{harness.prefix}Checkpoints",
                    ledger_table=f"{harness.prefix}Ledger", runs_table=f"{harness.prefix}Runs") as store:
                from function_app.core.model import BlobStatus

                await store.mark(lost, BlobStatus.FAILED, at=datetime.now(UTC), error="AdxIngestError: boom")
            later: Callable[[], datetime] = lambda: datetime.now(UTC) + timedelta(days=8)  # noqa: E731
            summary = await replay(azure=True, clock=later)
            assert summary.counts() == {"expired": 1}
            row = harness.ledger()["20990101$lost$blob"]
            assert row["Status"] == "expired" and "no raw copy" in row["Error"]

    asyncio.run(run())


def test_adx_errors_are_retried_by_the_queue_then_settled_failed_with_the_error(harness: Harness) -> None:
    async def run() -> None:
        async with EmulatorServer([TENANT], seed=3, days=0.1, records_per_day=40, scenario="quiet") as emu:
            # Nothing listens on port 9: every ingestion fails to reach the DM endpoint.
            harness.configure(AUDITLAKE_TENANTS=TENANT, AUDITLAKE_API_ROOT=emu.api_root,
                              ADX_INGEST_URI="http://127.0.0.1:9")
            host = FunctionsHost(harness)
            try:
                await host.timer()
                messages = await host.receive()
                assert messages
                message_id, body = messages[0]
                blob = decode_message(body)
                with pytest.raises(Exception, match="will be retried"):
                    await host.deliver(body, message_id=message_id)
                row = harness.ledger()[blob.content_id]
                assert row["Status"] == "queued" and row.get("ClaimOwner") is None
                assert row["Error"].startswith("delivery 1: AdxIngestError")
                assert await host.run_message(message_id, body, first_dequeue=2) is False
                assert [d.dequeue_count for d in host.deliveries] == list(range(2, MAX_DEQUEUE_COUNT + 1))
                for poisoned_id, poisoned in await host.receive(harness.poison):
                    await host.deliver_poison(poisoned, message_id=poisoned_id)
                row = harness.ledger()[blob.content_id]
                assert row["Status"] == "failed"
                assert "dead-lettered" in row["Error"] and "AdxIngestError" in row["Error"]
                assert f"raw content kept at {harness.container}/content/{TENANT}/" in row["Error"]
                # The records were fetched fine: kept, byte for byte as the API served them, for a
                # replay after the API's copy expires.
                served = emu.state.tenants[TENANT].blob(blob.content_id)
                assert served is not None
                assert list(_dead_letters(harness, "content/").values()) == [served.body]
            finally:
                await close_runtime()

    asyncio.run(run())


DEPTH = 300


def _deep_record(content_id: str) -> tuple[bytes, Key]:
    """A record nested DEPTH levels deep (past the 254 orjson writes), as text, and its key."""
    record_id = f"deep-{content_id[-12:]}"
    text = (b'{"Id":"' + record_id.encode() + b'","RecordType":1,"Operation":"Set-Mailbox",'
            b'"CreationTime":"2026-01-01T00:00:00","Workload":"Exchange","UserId":"a@contoso.com",'
            b'"Nested":' + b'[' * DEPTH + b'"bottom"' + b']' * DEPTH + b'}')
    return text, (record_id, 1, "Set-Mailbox")


def _with_record(blob: EmulatedBlob, text: bytes, key: Key) -> bytes:
    """Put the record *text* in the middle of *blob*'s records (body and keys), as served from now on."""
    texts = [orjson.dumps(r) for r in orjson.loads(blob.body)]
    middle = len(texts) // 2
    blob.body = b"[" + b",".join([*texts[:middle], text, *texts[middle:]]) + b"]"
    blob.record_keys = [*blob.record_keys[:middle], key, *blob.record_keys[middle:]]
    return blob.body


def test_a_failed_delivery_records_the_error_keeps_the_body_as_served_and_releases_its_claim(
    harness: Harness,
) -> None:
    """_retry_later, with a body the serialiser refuses to write back (a record 300 levels deep):
    the copy kept is the fetched bytes themselves, never the records re-serialised."""

    async def run() -> None:
        async with EmulatorServer([TENANT], seed=4, days=0.2, records_per_day=60, scenario="quiet") as emu:
            tenant = emu.state.tenants[TENANT]
            target = next(b for b in tenant.blobs if b.content_created <= tenant.now and len(b.record_keys) >= 2)
            text, deep_key = _deep_record(target.content_id)
            served = _with_record(target, text, deep_key)
            harness.configure(AUDITLAKE_TENANTS=TENANT, AUDITLAKE_API_ROOT=emu.api_root,
                              ADX_INGEST_URI="http://127.0.0.1:9")
            host = FunctionsHost(harness)
            try:
                await host.timer()
                messages = dict((decode_message(b).content_id, (i, b)) for i, b in await host.receive())
                message_id, body = messages[target.content_id]
                with pytest.raises(Exception, match="will be retried") as caught:
                    await host.deliver(body, message_id=message_id)
                assert "AdxIngestError" in str(caught.value)
                row = harness.ledger()[target.content_id]
                # The error is on the row, the blob still waits for the queue, the claim is gone.
                assert row["Status"] == "queued" and row["Attempts"] == 1
                assert row["Error"].startswith("delivery 1: AdxIngestError")
                assert f"(raw content kept at {harness.container}/content/{TENANT}/" in row["Error"]
                assert row.get("ClaimOwner") in (None, "") and row.get("ClaimUntil") is None
                kept = _dead_letters(harness, "content/")
                assert kept == {f"content/{TENANT}/{target.content_type}/{target.content_id}.json": served}
                # Released, not just cleared on paper: another instance's delivery gets the blob
                # at once (a held claim would make it skip and return normally).
                with pytest.raises(Exception, match="will be retried"):
                    await host.deliver(body, dequeue_count=2, message_id="another-instance")
                assert harness.ledger()[target.content_id]["Error"].startswith("delivery 2: AdxIngestError")
            finally:
                await close_runtime()

            # ADX is back: the next delivery writes every record, the deep one as its text.
            harness.configure(ADX_INGEST_URI=harness.adx.uri)
            harness.adx.read_ingestions()
            try:
                await host.deliver(body, dequeue_count=3, message_id=message_id)
            finally:
                await close_runtime()
            row = harness.ledger()[target.content_id]
            assert row["Status"] == "ingested" and row.get("Error") is None
            rows = _audit_rows(harness, target.content_id)
            assert Counter(_key(r) for r in rows) == Counter(target.record_keys)
            deep = next(r for r in rows if _key(r) == deep_key)
            assert "AuditData:unserialisable:too-deep" in deep["Quality"]
            # The cell holds the record as JSON text: nothing of it is lost.
            assert isinstance(deep["AuditData"], str)
            assert json.loads(deep["AuditData"]) == json.loads(text)

    asyncio.run(run())


def test_lost_messages_are_reenqueued_by_the_timer(harness: Harness) -> None:
    async def run() -> None:
        async with EmulatorServer([TENANT], seed=5, days=0.2, records_per_day=60, scenario="quiet") as emu:
            harness.configure(AUDITLAKE_TENANTS=TENANT, AUDITLAKE_API_ROOT=emu.api_root,
                              AUDITLAKE_REQUEUE_AFTER_MINUTES="0.01")
            host = FunctionsHost(harness)
            try:
                await host.timer()
                lost = await host.receive()  # taken off the queue and never processed
                assert lost
                await asyncio.sleep(1.0)
                await host.timer()
                again = await host.receive()
                assert sorted(decode_message(b).content_id for _, b in again) == sorted(
                    decode_message(b).content_id for _, b in lost)
                for message_id, body in again:
                    assert await host.run_message(message_id, body)
            finally:
                await close_runtime()

    asyncio.run(run())
    rows = harness.ledger().values()
    assert {r["Status"] for r in rows} == {"ingested"}
    assert all(r["Attempts"] == 2 for r in rows)  # the re-enqueue and the ingestion


def test_two_timer_runs_at_once_conflict_on_the_checkpoint_without_failing(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    async def run() -> None:
        async with EmulatorServer([TENANT], seed=6, days=0.2, records_per_day=60, scenario="quiet") as emu:
            harness.configure(AUDITLAKE_TENANTS=TENANT, AUDITLAKE_API_ROOT=emu.api_root)
            host = FunctionsHost(harness)
            try:
                await asyncio.gather(host.timer(), host.timer())
                await host.drain()
            finally:
                await close_runtime()

    with caplog.at_level(logging.INFO):
        asyncio.run(run())
    assert any("checkpoint moved by another instance" in r.getMessage() for r in caplog.records)
    assert {r["Status"] for r in harness.ledger().values()} == {"ingested"}
    ingestions = harness.adx.read_ingestions(expand=False)
    assert len({i.source_id for i in ingestions}) == len(ingestions), "a blob was ingested twice"


async def _local_cutoff_then_replay(tmp_path: Path, *, after_key: bool) -> tuple[EmulatedBlob, list[dict[str, Any]]]:
    """Collect into a local lake with one blob cut off at the source, replay it while still cut
    (failed again), fix it, replay again; returns the blob and its AuditRecord rows in the lake."""
    async with EmulatorServer([TENANT], seed=12, days=0.5, records_per_day=120, scenario="quiet",
                              faults="cutoff=1") as emu:
        bad = _choose_cutoff_blob(emu, after_key=after_key)
        settings = Settings(api_root=emu.api_root, retry_base=0.01, retry_max=0.05, retry_attempts=3)
        tokens = StaticTokenProvider("t")
        lake = LocalLake(tmp_path / "lake.duckdb")
        try:
            await collect(settings, lake, [TENANT], CONTENT_TYPES, tokens=tokens)
        finally:
            lake.close()
        still_bad = await replay(lake=tmp_path / "lake.duckdb", settings=settings, tokens=tokens)
        assert [i.action for i in still_bad.items] == ["failed"] and not still_bad.ok
        bad.cutoff = False
        summary = await replay(lake=tmp_path / "lake.duckdb", settings=settings, tokens=tokens)
        assert summary.counts() == {"ingested": 1} and summary.ok
    lake = LocalLake(tmp_path / "lake.duckdb")
    try:
        status = lake.connection.execute(
            'SELECT "Status" FROM "ContentLedger" WHERE "ContentId" = ?', [bad.content_id]).fetchone()
        found = lake.connection.execute(
            'SELECT "Id", "RecordType", "Operation", CAST("AuditData" AS VARCHAR), CAST("Quality" AS VARCHAR) '
            'FROM "AuditRecord" WHERE "ContentId" = ?', [bad.content_id]).fetchall()
    finally:
        lake.close()
    assert status == ("ingested",)
    rows = [{"Id": a, "RecordType": b, "Operation": c, "AuditData": json.loads(d), "Quality": json.loads(e)}
            for a, b, c, d, e in found]
    return bad, rows


def test_local_replay_reingests_a_failed_blob_once_the_api_serves_it_whole(tmp_path: Path) -> None:
    bad, rows = asyncio.run(_local_cutoff_then_replay(tmp_path, after_key=False))
    keys = {_key(r) for r in rows}
    assert set(bad.record_keys) <= keys, f"missing {set(bad.record_keys) - keys}"
    # The one row beside them is the part of a record before the cut, flagged so.
    extra = [r for r in rows if _key(r) not in set(bad.record_keys)]
    assert all("record:unreadable:cut-off" in r["Quality"] for r in extra) and len(extra) <= 1


def test_after_a_replay_the_lake_holds_the_whole_record_not_the_part_before_the_cut(tmp_path: Path) -> None:
    bad, rows = asyncio.run(_local_cutoff_then_replay(tmp_path, after_key=True))
    whole = {key: orjson.loads(text) for key, (_, _, text) in zip(bad.record_keys, _spans(bad.body), strict=True)}
    by_key = {_key(r): r for r in rows}
    assert set(whole) <= set(by_key)
    damaged = {k: r["Quality"] for k, r in by_key.items() if k in whole and r["AuditData"] != whole[k]}
    assert damaged == {}, "records of the blob held as their cut-off text after the replay"


def test_replay_needs_exactly_one_target() -> None:
    with pytest.raises(ValueError, match="exactly one target"):
        asyncio.run(replay())
    with pytest.raises(ValueError, match="exactly one target"):
        asyncio.run(replay(lake="x.duckdb", azure=True))


def test_encode_then_decode_is_the_identity() -> None:
    now = datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=UTC)
    blob = ContentBlob(TENANT, "Audit.SharePoint", "20260301$x$audit_sharepoint$Audit_SharePoint$emea0011",
                       f"https://manage.office.com/api/v1.0/{TENANT}/activity/feed/audit/"
                       "20260301$x$audit_sharepoint$Audit_SharePoint$emea0011", now, now + timedelta(days=7))
    assert decode_message(encode_message(blob)) == blob


def test_a_failed_delivery_still_records_its_error_and_releases_its_claim_when_the_copy_cannot_be_kept(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """_retry_later's steps do not depend on each other: with the dead-letter blob leased by
    someone else (every write to it refused), the error is still recorded and the claim dropped."""

    async def run() -> None:
        async with EmulatorServer([TENANT], seed=8, days=0.2, records_per_day=60, scenario="quiet") as emu:
            harness.configure(AUDITLAKE_TENANTS=TENANT, AUDITLAKE_API_ROOT=emu.api_root,
                              ADX_INGEST_URI="http://127.0.0.1:9")
            host = FunctionsHost(harness)
            try:
                await host.timer()
                message_id, body = (await host.receive())[0]
                blob = decode_message(body)
                container = harness.container_client()
                container.create_container()
                name = f"content/{TENANT}/{blob.content_type}/{blob.content_id}.json"
                container.upload_blob(name, b"held by another writer")
                container.get_blob_client(name).acquire_lease(lease_duration=-1)
                container.close()
                with pytest.raises(Exception, match="will be retried"):
                    await host.deliver(body, message_id=message_id)
                row = harness.ledger()[blob.content_id]
                assert row["Status"] == "queued" and row["Attempts"] == 1
                assert row["Error"].startswith("delivery 1: AdxIngestError") and "raw content kept" not in row["Error"]
                assert row.get("ClaimOwner") in (None, "") and row.get("ClaimUntil") is None
                assert _dead_letters(harness, "content/") == {name: b"held by another writer"}
            finally:
                await close_runtime()

    with caplog.at_level(logging.ERROR):
        asyncio.run(run())
    assert any("could not keep the raw content" in r.getMessage() for r in caplog.records)
