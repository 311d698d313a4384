"""Emulator → timer function → Azurite queue → queue function → real ingest client → fake ADX:
the rows ADX received are the emulator's ground truth, with throttling and 5xx on, a message
delivered twice, and an instance that stopped mid-blob."""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.storage.queue import QueueClient

from auditlake.emulator.server import EmulatorServer
from function_app.azure.deps import close_runtime
from function_app.core.messages import decode_message
from function_app.lake.schema import TABLES_BY_NAME, json_mapping_name
from function_app.lake.staging import staging_table
from function_app.state.table import TableStateStore
from tests.azure.conftest import DATABASE, FunctionsHost, Harness

TENANT = "3c9d2f1e-7a6b-4c5d-9e8f-1a2b3c4d5e6f"
FAULTS = "throttle=0.05,5xx=0.05"


def test_timer_to_adx_equals_the_emulator_truth_despite_redelivery_and_a_dead_instance(harness: Harness) -> None:
    asyncio.run(_timer_to_adx(harness))


async def _timer_to_adx(h: Harness) -> None:
    async with EmulatorServer([TENANT], seed=21, days=2, records_per_day=100, scenario="quiet",
                              faults=FAULTS) as emu:
        h.configure(AUDITLAKE_TENANTS=TENANT, AUDITLAKE_API_ROOT=emu.api_root)
        host = FunctionsHost(h)
        store = TableStateStore.from_connection_string(
            h.azurite.connection_string, checkpoints_table=f"{h.prefix}Checkpoints",
            ledger_table=f"{h.prefix}Ledger", runs_table=f"{h.prefix}Runs")
        try:
            await host.timer()
            messages = await host.receive()
            tenant = emu.state.tenants[TENANT]
            available = [b for b in tenant.blobs if b.content_created <= datetime.now(UTC)]
            assert sorted(decode_message(body).content_id for _, body in messages) == sorted(
                b.content_id for b in available), "one message per listed blob"

            # A message delivered twice in a row: the second delivery finds the blob settled.
            (id1, body1), (id2, body2), (id3, body3) = messages[:3]
            await host.deliver(body1, message_id=id1)
            await host.deliver(body1, message_id=id1, dequeue_count=2)
            # ... and twice at the same moment: one claim wins, the other delivery is skipped.
            await asyncio.gather(host.deliver(body2, message_id=id2), host.deliver(body2, message_id=f"{id2}-copy"))

            # An instance took message 3, claimed its blob and died before writing anything.
            blob3 = decode_message(body3)
            assert await store.claim(blob3, "instance-that-died", timedelta(seconds=2), datetime.now(UTC))
            await host.deliver(body3, message_id=f"{id3}-copy")  # a copy while the claim lives: skipped
            row = h.ledger()[blob3.content_id]
            assert row["Status"] == "queued" and row["ClaimOwner"] == "instance-that-died"
            await asyncio.sleep(2.5)
            # The dead instance's own message becomes visible again and another instance takes it.
            assert await host.run_message(id3, body3, first_dequeue=2)

            for message_id, body in messages[3:]:
                assert await host.run_message(message_id, body), host.deliveries[-1]

            # The next run re-lists the overlap and sweeps, and hands nothing on twice.
            await host.timer()
            assert await host.receive() == []
        finally:
            await store.close()
            await close_runtime()
        expected = tenant.truth(None, datetime.now(UTC) - timedelta(days=7), datetime.now(UTC), datetime.now(UTC))
        stats = emu.state.stats.to_json(emu.state.injector.injected)

    assert stats["faults"].get("throttle", 0) > 0 and stats["faults"].get("5xx", 0) > 0
    assert stats["missing_publisher_identifier"] == 0

    ledger = h.ledger()
    assert {r["Status"] for r in ledger.values()} == {"ingested"}
    assert set(ledger) == {b.content_id for b in available}

    ingestions = h.adx.read_ingestions()
    per_blob_table: Counter[tuple[str, str]] = Counter()
    keys: list[tuple[str, int, str]] = []
    for ingestion in ingestions:
        table = TABLES_BY_NAME[ingestion.table]
        assert ingestion.database == DATABASE
        # The records came in the staging table's ingestion, fanned out by the update policies.
        ingested = staging_table() if ingestion.staged else table
        assert ingestion.additional_properties["ingestionMappingReference"] == json_mapping_name(ingested)
        content_ids = {r["ContentId"] for r in ingestion.rows} if ingestion.table == "AuditRecord" else set()
        assert len(content_ids) <= 1
        per_blob_table[(ingestion.source_id, ingestion.table)] += 1
        if ingestion.table == "AuditRecord":
            assert set(ingestion.rows[0]) == {c.name for c in table.columns}
            keys.extend((str(r["Id"]), int(r["RecordType"]), str(r["Operation"])) for r in ingestion.rows)
    # Every blob's ledger changes and every planning pass are countable with KQL in ADX too: its
    # listing, then its settling, which is its latest row (the documented arg_max reads that).
    adx_ledger = [r for i in ingestions if i.table == "ContentLedger" for r in i.rows]
    assert {r["ContentId"] for r in adx_ledger} == set(ledger)
    assert {r["ContentId"] for r in adx_ledger if r["Status"] == "listed"} == set(ledger)
    latest: dict[str, dict[str, Any]] = {}
    for r in adx_ledger:
        when = r.get("IngestedAt") or r.get("FetchedAt") or r.get("ListedAt") or ""
        cid = r["ContentId"]
        if cid not in latest or when >= (latest[cid].get("IngestedAt") or latest[cid].get("FetchedAt")
                                         or latest[cid].get("ListedAt") or ""):
            latest[cid] = r
    assert {r["Status"] for r in latest.values()} == {"ingested"} and all(r["Records"] > 0 for r in latest.values())
    adx_runs = [r for i in ingestions if i.table == "CollectorRun" for r in i.rows]
    assert len(adx_runs) == 2 * 5 and {r["TenantId"] for r in adx_runs} == {TENANT}
    # One ingestion per blob with records, the ledger mirror included: its rows ride along, but for
    # those still waiting when a runtime closed (one flush each).
    raw = h.adx.raw_ingestions
    staged = [i for i in raw if i.table == "AuditIngest"]
    print(f"ingestions: {len(raw)} for {len(ledger)} blobs ({len(staged)} staging, "
          f"{len(raw) - len(staged)} mirror flushes)")
    assert len(staged) == len({i.source_id for i in staged}) <= len(ledger)
    assert len(raw) <= len(ledger) + 4
    twice = [k for k, n in per_blob_table.items() if n > 1]
    assert not twice, f"blobs ingested more than once: {twice[:3]}"
    # The service re-delivers some records in a second blob; the de-duplicating view drops those.
    got = set(keys)
    assert got == expected, f"missing {len(expected - got)}, unexpected {len(got - expected)}"


def test_the_timer_enqueues_base64_messages_the_queue_trigger_can_read(harness: Harness) -> None:
    async def run() -> list[str]:
        async with EmulatorServer([TENANT], seed=4, days=0.3, records_per_day=40, scenario="quiet") as emu:
            harness.configure(AUDITLAKE_TENANTS=TENANT, AUDITLAKE_API_ROOT=emu.api_root)
            try:
                await FunctionsHost(harness).timer()
            finally:
                await close_runtime()
        # No decode policy: the text exactly as stored, which the host base64-decodes.
        raw = QueueClient.from_connection_string(harness.azurite.connection_string, harness.queue)
        texts = [str(m.content) for m in raw.peek_messages(max_messages=32)]
        raw.close()
        return texts

    texts = asyncio.run(run())
    assert texts
    for text in texts:
        message = json.loads(base64.b64decode(text, validate=True))
        assert message["v"] == 1 and set(message) == {
            "v", "tenantId", "contentType", "contentId", "contentUri", "contentCreated", "contentExpiration"}
        assert decode_message(base64.b64decode(text)).tenant_id == TENANT
