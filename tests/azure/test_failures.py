"""Messages and blobs that cannot be processed end ``failed`` in the ledger with their reason
(nothing waits silently in a queue), and ``replay`` re-drives them once they are fixed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from function_app.azure.deps import close_runtime
from function_app.config import Settings
from function_app.core.messages import decode_message, encode_message
from function_app.core.model import CONTENT_TYPES, ContentBlob
from function_app.emulator.faults import cutoff_body
from function_app.emulator.server import EmulatorServer
from function_app.emulator.tenant import EmulatedBlob
from function_app.lake.duckdb_lake import LocalLake
from function_app.localrun import collect
from function_app.o365.auth import StaticTokenProvider
from function_app.replay import replay
from tests.azure.conftest import MAX_DEQUEUE_COUNT, FunctionsHost, Harness

TENANT = "8e7d6c5b-4a39-4281-9f0e-1d2c3b4a5968"
OTHER_TENANT = "11111111-2222-4333-8444-555555555555"


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
    finally:
        container.close()


def test_untrusted_messages_are_settled_failed_with_their_reason_and_not_retried(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    async def run() -> None:
        async with EmulatorServer([TENANT], seed=2, days=0.2, records_per_day=20, scenario="quiet") as emu:
            harness.configure(AUDITLAKE_TENANTS=TENANT, AUDITLAKE_API_ROOT=emu.api_root)
            host = FunctionsHost(harness)
            try:
                # Each returns normally: the queue deletes the message, nothing is retried.
                await host.deliver(_message(emu.api_root, "20990101$bad$time", contentExpiration="next tuesday"))
                await host.deliver(_message(
                    emu.api_root, "20990101$other$host",
                    contentUri=f"https://evil.example.com/api/v1.0/{TENANT}/activity/feed/audit/20990101$other$host"))
                await host.deliver(_message(emu.api_root, "20990101$future$v", v=2))
                await host.deliver("{this is not json")
                await host.deliver(_message(emu.api_root, "20990101$not$ours", tenantId=OTHER_TENANT,
                                            contentUri=f"{emu.api_root}/{OTHER_TENANT}/activity/feed/audit/20990101$not$ours"))
            finally:
                await close_runtime()
            assert emu.state.stats.requests["GetBlob"] == 0, "an untrusted message made the app fetch"

    with caplog.at_level(logging.ERROR):
        asyncio.run(run())
    ledger = harness.ledger()
    assert set(ledger) == {"20990101$bad$time", "20990101$other$host", "20990101$future$v"}
    assert all(r["Status"] == "failed" for r in ledger.values())
    assert "contentExpiration: not an ISO 8601 time" in ledger["20990101$bad$time"]["Error"]
    assert "not the Management API host" in ledger["20990101$other$host"]["Error"]
    assert "v: unsupported version 2" in ledger["20990101$future$v"]["Error"]
    # The one naming no blob (and the foreign tenant's) is logged and kept, not lost.
    assert any("message is not JSON" in r.getMessage() for r in caplog.records)
    assert any("not a monitored tenant" in r.getMessage() for r in caplog.records)
    assert len(_dead_letters(harness, "messages/")) == 5


def _cutoff_blob(emu: EmulatorServer) -> EmulatedBlob:
    tenant = emu.state.tenants[TENANT]
    return next(b for b in tenant.blobs if b.cutoff)


def _blob_of(b: EmulatedBlob, api_root: str) -> ContentBlob:
    return ContentBlob(TENANT, b.content_type, b.content_id, f"{api_root}/{TENANT}/activity/feed/audit/{b.content_id}",
                       b.content_created, b.content_expiration)


async def _collect_with_a_cutoff_blob(h: Harness, emu: EmulatorServer) -> tuple[FunctionsHost, EmulatedBlob]:
    h.configure(AUDITLAKE_TENANTS=TENANT, AUDITLAKE_API_ROOT=emu.api_root, AUDITLAKE_RETRY_ATTEMPTS="3")
    host = FunctionsHost(h)
    await host.timer()
    await host.drain()
    return host, _cutoff_blob(emu)


def _audit_keys(h: Harness, content_id: str) -> set[tuple[str, int, str]]:
    return {(str(r["Id"]), int(r["RecordType"]), str(r["Operation"]))
            for i in h.adx.read_ingestions() if i.table == "AuditRecord"
            for r in i.rows if r["ContentId"] == content_id}


def test_a_blob_that_always_fails_is_dead_lettered_then_replayed_once_fixed(harness: Harness) -> None:
    async def run() -> None:
        async with EmulatorServer([TENANT], seed=9, days=0.5, records_per_day=120, scenario="quiet",
                                  faults="cutoff=1") as emu:
            try:
                host, bad = await _collect_with_a_cutoff_blob(harness, emu)
                # Retried by the queue maxDequeueCount times, then the poison trigger settled it.
                attempts = [d for d in host.deliveries if decode_message(d.body).content_id == bad.content_id]
                assert [d.dequeue_count for d in attempts] == list(range(1, MAX_DEQUEUE_COUNT + 1))
                assert all(d.error and "RetryLaterError" in d.error for d in attempts)
                assert len(host.poisoned) == 1
                ledger = harness.ledger()
                row = ledger[bad.content_id]
                assert row["Status"] == "failed"
                assert "dead-lettered" in row["Error"] and f"delivery {MAX_DEQUEUE_COUNT}:" in row["Error"]
                assert "not valid JSON (cut off or corrupt)" in row["Error"]
                assert f"raw content kept at {harness.container}/content/{TENANT}/" in row["Error"]
                assert {r["Status"] for k, r in ledger.items() if k != bad.content_id} == {"ingested"}
                kept = _dead_letters(harness, "content/")
                assert list(kept.values()) == [cutoff_body(bad.body, bad.content_id)]
                assert _dead_letters(harness, "messages/"), "the poison message is kept"
                harness.adx.read_ingestions()

                # Fixed at the source: replay moves it back to the queue and the app ingests it.
                bad.cutoff = False
                summary = await replay(azure=True)
                assert summary.counts() == {"requeued": 1}
                assert harness.ledger()[bad.content_id]["Status"] == "queued"
                assert await host.drain() == 1
                assert harness.ledger()[bad.content_id]["Status"] == "ingested"
                assert _audit_keys(harness, bad.content_id) == set(bad.record_keys)
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
            harness.adx.read_ingestions()
            # The API keeps serving it cut off; an operator repairs the kept copy instead.
            container = harness.container_client()
            name = f"content/{TENANT}/{bad.content_type}/{bad.content_id}.json"
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
                for poisoned_id, poisoned in await host.receive(harness.poison):
                    await host.deliver_poison(poisoned, message_id=poisoned_id)
                row = harness.ledger()[blob.content_id]
                assert row["Status"] == "failed"
                assert "dead-lettered" in row["Error"] and "AdxIngestError" in row["Error"]
                # The records were fetched fine: they are kept for a replay after the API's copy expires.
                kept = list(_dead_letters(harness, "content/").values())
                assert len(kept) == 1 and len(orjson.loads(kept[0])) > 0
            finally:
                await close_runtime()

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
    ingestions = harness.adx.read_ingestions()
    assert len({i.source_id for i in ingestions}) == len(ingestions), "a blob was ingested twice"


def test_local_replay_reingests_a_failed_blob_once_the_api_serves_it_whole(tmp_path: Path) -> None:
    async def run() -> None:
        async with EmulatorServer([TENANT], seed=12, days=0.5, records_per_day=120, scenario="quiet",
                                  faults="cutoff=1") as emu:
            settings = Settings(api_root=emu.api_root, retry_base=0.01, retry_max=0.05, retry_attempts=3)
            tokens = StaticTokenProvider("t")
            lake = LocalLake(tmp_path / "lake.duckdb")
            try:
                await collect(settings, lake, [TENANT], CONTENT_TYPES, tokens=tokens)
            finally:
                lake.close()
            bad = _cutoff_blob(emu)
            still_bad = await replay(lake=tmp_path / "lake.duckdb", settings=settings, tokens=tokens)
            assert [i.action for i in still_bad.items] == ["failed"] and not still_bad.ok
            bad.cutoff = False
            summary = await replay(lake=tmp_path / "lake.duckdb", settings=settings, tokens=tokens)
            assert summary.counts() == {"ingested": 1} and summary.ok
            lake = LocalLake(tmp_path / "lake.duckdb")
            try:
                status = lake.connection.execute(
                    'SELECT "Status" FROM "ContentLedger" WHERE "ContentId" = ?', [bad.content_id]).fetchone()
                keys = lake.connection.execute(
                    'SELECT "Id", "RecordType", "Operation" FROM "AuditRecord" WHERE "ContentId" = ?',
                    [bad.content_id]).fetchall()
            finally:
                lake.close()
            assert status == ("ingested",)
            assert {(str(a), int(b), str(c)) for a, b, c in keys} == set(bad.record_keys)

    asyncio.run(run())


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
