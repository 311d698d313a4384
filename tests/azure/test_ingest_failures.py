"""ADX failures reported after an ingestion was accepted reach the ledger: the real ingest
client ingests into the fake ADX (Azurite), the fake then reports a failure on the
failed-ingestions status queue as the service does, and the ``watch_ingestion_failures``
timer settles the blob, re-enqueues it, or keeps a report it cannot read."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from azure.functions.timer import TimerRequest
from azure.storage.queue import QueueClient

from auditlake.emulator.server import EmulatorServer
from function_app.azure.deps import close_runtime
from function_app.azure.ingest_failures import parse_failure
from function_app.core.messages import decode_message
from function_app.core.model import ContentBlob
from function_app.lake.adx import (
    INGEST_ALONE,
    MAX_BLOB_NAME_CHARS,
    BlobKey,
    batch_stream_name,
    blob_key,
    blob_keys,
    ingestion_source_id,
    source_id,
    stream_name,
)
from function_app.lake.staging import STAGING_TABLE
from tests.adapters.fake_adx import FAILED_QUEUE, Ingestion
from tests.azure.conftest import DATABASE, FunctionsHost, Harness, flush_mirror

TENANT = "5d4c3b2a-1f0e-4d9c-8b7a-695847362514"
SECRET = "c2VjcmV0LXNpZ25hdHVyZQ%3D%3D"
# A blob's records are one ingestion into the staging table; its failure names that table.
REASON_START = "ADX ingestion into AuditIngest failed after it was accepted: "


def _key(ingestion: Ingestion) -> BlobKey:
    key = blob_key(ingestion.blob_url)
    assert key is not None, ingestion.blob_name
    return key


def _audit_ingestions(ingestions: list[Ingestion]) -> dict[str, Ingestion]:
    """AuditRecord ingestions by content id (the last one of each blob)."""
    return {_key(i).content_id: i for i in ingestions if i.table == "AuditRecord"}


def _ledger_mirror(ingestions: list[Ingestion], content_id: str) -> list[dict[str, Any]]:
    return [r for i in ingestions if i.table == "ContentLedger" for r in i.rows if r["ContentId"] == content_id]


async def _watch(host: FunctionsHost) -> None:
    await host.functions["watch_ingestion_failures"](TimerRequest())


async def _collected(h: Harness, emu: EmulatorServer) -> tuple[FunctionsHost, dict[str, Ingestion]]:
    h.configure(AUDITLAKE_TENANTS=TENANT, AUDITLAKE_API_ROOT=emu.api_root)
    h.adx.clear_failures()
    host = FunctionsHost(h)
    await host.timer()
    await host.drain()
    await flush_mirror()
    audit = _audit_ingestions(h.adx.read_ingestions())
    assert len(audit) >= 2, "the emulator should have produced a few blobs with records"
    ledger = h.ledger()
    assert all(ledger[cid]["Status"] == "ingested" for cid in audit)
    return host, audit


def test_a_permanent_failure_after_acceptance_settles_the_blob_failed_in_both_ledgers(harness: Harness) -> None:
    async def run() -> None:
        async with EmulatorServer([TENANT], seed=31, days=0.3, records_per_day=60, scenario="quiet") as emu:
            try:
                host, audit = await _collected(harness, emu)
                content_id, ingestion = sorted(audit.items())[0]
                # The service's Details can quote the blob URL with its SAS.
                harness.adx.report_failure(
                    ingestion, error_code="BadRequest_MappingReferenceWasNotFound",
                    details=f"Mapping reference 'AuditRecord_json' was not found. URI: {ingestion.blob_url}"
                            f"?sv=2024-01-01&sig={SECRET}",
                    status="Permanent")
                await _watch(host)
            finally:
                await close_runtime()

            ledger = harness.ledger()
            row = ledger[content_id]
            assert row["Status"] == "failed"
            error = row["Error"]
            assert error.startswith(REASON_START + "BadRequest_MappingReferenceWasNotFound Mapping reference "
                                                   "'AuditRecord_json' was not found."), error
            assert "(Permanent)" in error and "operation " in error
            assert SECRET not in error and "sig=REDACTED" in error
            # The other blobs are untouched.
            assert all(ledger[cid]["Status"] == "ingested" for cid in audit if cid != content_id)
            # ADX's ContentLedger mirror got the failed row too.
            mirror = _ledger_mirror(harness.adx.read_ingestions(), content_id)
            assert [(r["Status"], r["Error"]) for r in mirror] == [("failed", error)]
            # The report was consumed.
            assert harness.adx.failure_messages() == []

    asyncio.run(run())


def test_a_transient_failure_after_acceptance_re_enqueues_the_blob_which_is_ingested_again(
    harness: Harness,
) -> None:
    async def run() -> None:
        async with EmulatorServer([TENANT], seed=32, days=0.3, records_per_day=60, scenario="quiet") as emu:
            try:
                host, audit = await _collected(harness, emu)
                content_id, ingestion = sorted(audit.items())[-1]
                attempts_before = harness.ledger()[content_id]["Attempts"]
                harness.adx.report_failure(ingestion, error_code="Download_UnknownError",
                                           details="Transient failure downloading blob.", status="Transient")
                await _watch(host)

                row = harness.ledger()[content_id]
                assert row["Status"] == "queued"
                assert row["Error"].startswith(REASON_START + "Download_UnknownError Transient failure downloading "
                                                              "blob. (Transient)")
                assert row["Error"].endswith("re-enqueued for another attempt")
                assert harness.adx.failure_messages() == []
                # Every status change reaches ADX's ledger (issue 11), so LedgerHealth there sees it waiting.
                await flush_mirror()
                assert [r["Status"] for r in _ledger_mirror(harness.adx.read_ingestions(), content_id)] == ["queued"]
                # A second report for the blob while it waits (another table, a redelivered
                # report) does not enqueue it twice.
                harness.adx.report_failure(ingestion, status="Exhausted", error_code="General_RetryAttemptsExceeded")
                await _watch(host)
                assert harness.ledger()[content_id]["Error"] == row["Error"]

                # Exactly that blob is on the content queue again; the queue function ingests it anew.
                messages = await host.receive()
                assert [decode_message(body).content_id for _, body in messages] == [content_id]
                for message_id, body in messages:
                    assert await host.run_message(message_id, body)
            finally:
                await close_runtime()

            row = harness.ledger()[content_id]
            assert row["Status"] == "ingested" and row.get("Error") is None
            assert row["Attempts"] == attempts_before + 2  # the re-enqueue, then the settle
            again = harness.adx.read_ingestions()
            assert content_id in _audit_ingestions(again)
            assert [r["Status"] for r in _ledger_mirror(again, content_id)] == ["ingested"]

    asyncio.run(run())


def test_reports_it_cannot_apply_are_kept_and_logged_and_do_not_stop_the_run(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    other_db = Ingestion({"DatabaseName": "someone_elses_db", "TableName": "Events", "Id": str(uuid.uuid4()),
                          "BlobPath": "https://acct.blob.core.windows.net/temp/x__Events__y__z.json.gz?sig=abc"},
                         [], "x")
    old_style = Ingestion({"DatabaseName": DATABASE, "TableName": "AuditRecord", "Id": str(uuid.uuid4()),
                           "BlobPath": f"https://acct.blob.core.windows.net/temp/{DATABASE}__AuditRecord__"
                                       f"{uuid.uuid4()}__{uuid.uuid4().hex}.json.gz"},
                          [], "x")

    async def run() -> None:
        async with EmulatorServer([TENANT], seed=33, days=0.2, records_per_day=40, scenario="quiet") as emu:
            try:
                host, audit = await _collected(harness, emu)
                content_id, ingestion = sorted(audit.items())[0]
                harness.adx.post_failure_message("this is %% not base64 !")
                harness.adx.post_failure_message(base64.b64encode(b"[1, 2, 3]").decode())
                harness.adx.report_failure(old_style)  # our database, but names no blob of ours
                harness.adx.report_failure(other_db)   # another database's: not ours to take
                # A report whose source id does not belong to the blob its path names.
                forged = json.loads(json.dumps(ingestion.message))
                forged["Id"] = str(uuid.uuid4())
                harness.adx.report_failure(Ingestion(forged, [], ingestion.blob_name))
                with caplog.at_level(logging.INFO, logger="function_app"):
                    await _watch(host)
            finally:
                await close_runtime()

            kept = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ADX failure report kept")]
            assert len(kept) == 4, kept
            assert any("undecodable ADX failure report: not base64 JSON" in k for k in kept)
            assert any("undecodable ADX failure report: not a JSON object but list" in k for k in kept)
            assert any("names no blob of this app" in k for k in kept)
            assert any("does not match its blob" in k for k in kept)
            summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ADX failure reports read=")]
            assert summary == ["ADX failure reports read=5 failed=0 requeued=0 bookkeeping=0 unchanged=0 kept=4 "
                               "foreign=1 errors=0"]
            # Kept in the dead-letter container, as received.
            container = harness.container_client()
            try:
                bodies = {container.download_blob(b.name).readall() for b in container.list_blobs("messages/")}
            finally:
                container.close()
            assert b"this is %% not base64 !" in bodies and len(bodies) == 4
            # The other database's report is still in the queue; nothing else is.
            queue = QueueClient.from_connection_string(harness.azurite.connection_string, FAILED_QUEUE)
            try:
                assert queue.get_queue_properties().approximate_message_count == 1
            finally:
                queue.close()
            # No ledger row changed.
            assert harness.ledger()[content_id]["Status"] == "ingested"
            harness.adx.clear_failures()

    asyncio.run(run())


# -- ingestions that held several blobs ------------------------------------------------------------


async def _delivered_at_once(host: FunctionsHost, messages: list[tuple[str, str]]) -> list[Ingestion]:
    """Run *messages* concurrently, as the host runs a batch of them in one worker; the staging
    ingestions they made, as the client made them."""
    await asyncio.gather(*(host.run_message(message_id, body) for message_id, body in messages))
    await flush_mirror()
    return [i for i in host.harness.adx.read_ingestions(expand=False) if i.ingested_table == STAGING_TABLE]


def _keys(ingestion: Ingestion) -> list[BlobKey]:
    keys = blob_keys(ingestion.blob_url)
    assert keys is not None, ingestion.blob_name
    return keys


async def _batch_collected(h: Harness, emu: EmulatorServer) -> tuple[FunctionsHost, Ingestion, list[str]]:
    """Timer, then every message at once: one staging ingestion holding several blobs, and every
    content id the timer listed."""
    h.configure(AUDITLAKE_TENANTS=TENANT, AUDITLAKE_API_ROOT=emu.api_root)
    h.adx.clear_failures()
    host = FunctionsHost(h)
    await host.timer()
    messages = await host.receive()
    staged = await _delivered_at_once(host, messages)
    shared = [i for i in staged if len(_keys(i)) > 1]
    assert shared, f"the blobs written at once should have shared an ingestion: {[len(_keys(i)) for i in staged]}"
    ledger = h.ledger()
    assert {row["Status"] for row in ledger.values()} == {"ingested"}
    return host, shared[0], sorted(ledger)


def test_a_transient_failure_of_a_shared_ingestion_re_enqueues_each_of_its_blobs(harness: Harness) -> None:
    async def run() -> None:
        async with EmulatorServer([TENANT], seed=34, days=0.3, records_per_day=60, scenario="quiet") as emu:
            try:
                host, batch, listed = await _batch_collected(harness, emu)
                held = sorted(k.content_id for k in _keys(batch))
                harness.adx.report_failure(batch, error_code="Download_UnknownError",
                                           details="Transient failure downloading blob.", status="Transient")
                await _watch(host)
                ledger = harness.ledger()
                for cid in held:
                    assert ledger[cid]["Status"] == "queued", cid
                    assert ledger[cid]["Error"].startswith(REASON_START + "Download_UnknownError")
                    assert f"(an ingestion of {len(held)} blobs)" in ledger[cid]["Error"]
                    assert ledger[cid]["Error"].endswith("re-enqueued for another attempt")
                assert all(ledger[cid]["Status"] == "ingested" for cid in listed if cid not in held)
                assert harness.adx.failure_messages() == []
                # Exactly those blobs are on the queue again, and are ingested anew.
                messages = await host.receive()
                assert sorted(decode_message(body).content_id for _, body in messages) == held
                again = await _delivered_at_once(host, messages)
            finally:
                await close_runtime()
            assert {row["Status"] for row in harness.ledger().values()} == {"ingested"}
            assert sorted(k.content_id for i in again for k in _keys(i)) == held

    asyncio.run(run())


def test_a_permanent_failure_of_a_shared_ingestion_retries_each_blob_alone_and_fails_only_the_bad_one(
    harness: Harness,
) -> None:
    async def run() -> None:
        async with EmulatorServer([TENANT], seed=35, days=0.3, records_per_day=60, scenario="quiet") as emu:
            try:
                host, batch, listed = await _batch_collected(harness, emu)
                held = sorted(k.content_id for k in _keys(batch))
                # The failure cannot be pinned on one blob: none is settled failed yet.
                harness.adx.report_failure(batch, error_code="BadRequest_InvalidBlob",
                                           details="A record could not be read.", status="Permanent",
                                           from_update_policy=True)
                await _watch(host)
                ledger = harness.ledger()
                for cid in held:
                    assert ledger[cid]["Status"] == "queued", cid
                    assert ledger[cid]["Error"].endswith(f"re-enqueued {INGEST_ALONE}")
                messages = await host.receive()
                assert sorted(decode_message(body).content_id for _, body in messages) == held
                # Delivered at once again, each goes in an ingestion of its own.
                alone = await _delivered_at_once(host, messages)
                assert sorted(len(_keys(i)) for i in alone) == [1] * len(held)
                assert {row["Status"] for row in harness.ledger().values()} == {"ingested"}
                # The blob that really was bad fails again, alone: now it is settled failed.
                bad = alone[0]
                harness.adx.report_failure(bad, error_code="BadRequest_InvalidBlob",
                                           details="A record could not be read.", status="Permanent")
                await _watch(host)
            finally:
                await close_runtime()
            ledger = harness.ledger()
            bad_id = _keys(bad)[0].content_id
            assert ledger[bad_id]["Status"] == "failed"
            assert ledger[bad_id]["Error"].startswith(REASON_START + "BadRequest_InvalidBlob")
            assert all(ledger[cid]["Status"] == "ingested" for cid in listed if cid != bad_id)

    asyncio.run(run())


def test_a_shared_ingestion_report_naming_an_unknown_blob_settles_the_known_ones_and_is_kept(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    async def run() -> None:
        async with EmulatorServer([TENANT], seed=36, days=0.2, records_per_day=40, scenario="quiet") as emu:
            try:
                host, audit = await _collected(harness, emu)
                known = _key(sorted(audit.items())[0][1])
                stranger = BlobKey(TENANT, known.content_type, "20261121100000123$never$listed$here$nam0001")
                keys = [known, stranger]
                ids = ingestion_source_id(keys, STAGING_TABLE)
                forged = Ingestion({"DatabaseName": DATABASE, "TableName": STAGING_TABLE, "Id": str(ids),
                                    "BlobPath": f"https://acct.blob.core.windows.net/tempstorage/{DATABASE}__"
                                                f"{STAGING_TABLE}__{ids}__{batch_stream_name(keys)}"}, [], "x")
                harness.adx.report_failure(forged, status="Permanent")
                with caplog.at_level(logging.INFO, logger="function_app"):
                    await _watch(host)
            finally:
                await close_runtime()
            assert harness.ledger()[known.content_id]["Status"] == "queued"
            kept = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ADX failure report kept")]
            assert len(kept) == 1 and "blobs the ledger does not know" in kept[0] and "never$listed" in kept[0]
            summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ADX failure reports read=")]
            assert summary == ["ADX failure reports read=1 failed=0 requeued=1 bookkeeping=0 unchanged=0 kept=1 "
                               "foreign=0 errors=0"]
            assert harness.adx.failure_messages() == []

    asyncio.run(run())


# -- the encoding the reports are traced with ------------------------------------------------------


@pytest.mark.parametrize("content_id", [
    "20261121100000123$20261121100000123$audit_exchange$Audit_Exchange$emea0001",
    "a",
    "-._$" * 64,  # 256 characters, every punctuation a content id may have
    "run:2b5f0c1e",  # the mirror's pseudo-blob of a collector run
])
def test_the_stream_name_names_its_blob_reversibly_and_fits_a_blob_name(content_id: str) -> None:
    blob = ContentBlob(TENANT, "Audit.AzureActiveDirectory", content_id, "", datetime.now(UTC), datetime.now(UTC))
    name = stream_name(blob)
    assert name != stream_name(blob), "unique per attempt"
    assert name.endswith(".json.gz")
    # The SDK names the temp blob {db}__{table}__{source id}__{stream name}; ADX database
    # names have at most 260 characters.
    temp = f"{'d' * 260}__SchemaObservation__{source_id(blob, 'SchemaObservation')}__{name}"
    assert len(temp) <= MAX_BLOB_NAME_CHARS
    expected = BlobKey(TENANT, "Audit.AzureActiveDirectory", content_id)
    assert blob_key(temp) == expected
    assert blob_key(f"https://acct.blob.core.windows.net/tempstorage/{temp}?sv=1&sig=x") == expected
    assert blob_key(f"http://127.0.0.1:10000/devstoreaccount1/tempstorage/{temp.replace('_', '%5F')}") == expected
    assert blob_key(f"https://acct.blob.core.windows.net/tempstorage/{DATABASE}__AuditRecord__x__"
                    f"{uuid.uuid4().hex}.json.gz") is None


def test_failure_reports_are_parsed_leniently_and_classified() -> None:
    body = {"Database": DATABASE, "Table": "AuditRecord", "IngestionSourcePath": "p", "FailureStatus": 2,
            "ErrorCode": "Download_UnknownError", "Details": "x" * 5000 + " sig=abc"}
    failure = parse_failure(base64.b64encode(json.dumps(body).encode()).decode())
    assert failure.status == "Transient" and failure.retryable
    assert failure.details.endswith("...[truncated]") and len(failure.details) < 2100
    exhausted = parse_failure(json.dumps({**body, "FailureStatus": "Exhausted"}))
    assert exhausted.retryable
    permanent = parse_failure(json.dumps({**body, "FailureStatus": "Permanent", "ShouldRetry": True}))
    assert not permanent.retryable
    unknown = parse_failure(json.dumps({**body, "FailureStatus": None, "ShouldRetry": False, "Details": None}))
    assert unknown.status == "Unknown" and not unknown.retryable and unknown.details == "no details"
    policy = parse_failure(json.dumps({**body, "OriginatesFromUpdatePolicy": True, "Details": "sig=abc"}))
    assert policy.reason == ("ADX ingestion into AuditRecord failed after it was accepted: Download_UnknownError "
                             "sig=REDACTED (Transient) in an update policy")
