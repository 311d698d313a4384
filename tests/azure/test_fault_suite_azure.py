"""The fault suite's blob faults on the Azure path (timer → Azurite queue → queue function →
real ingest client → fake ADX → poison queue): what tests/azure does not cover yet.

A malformed blob is retried by the queue, poisoned, and settled ``failed`` with the parser's
complaint and its raw body kept; an oversize blob is settled ``failed`` naming the limit on its
first delivery; blobs the API lists twice (in one listing and in the next window) are enqueued
once; everything else reaches ADX.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from function_app.azure.deps import close_runtime
from function_app.core.messages import decode_message
from function_app.emulator.faults import malformed_body
from function_app.emulator.server import EmulatorServer
from tests.azure.conftest import MAX_DEQUEUE_COUNT, FunctionsHost, Harness

TENANT = "2b3c4d5e-6f70-4a81-9b2c-3d4e5f607182"
LIMIT = 1024 * 1024


def test_malformed_and_oversize_blobs_end_failed_with_their_reason_and_duplicates_are_enqueued_once(
    harness: Harness,
) -> None:
    facts: dict[str, Any] = {}

    async def run() -> None:
        async with EmulatorServer([TENANT], seed=17, days=1.5, records_per_day=150, scenario="quiet",
                                  faults="malformed=1,oversize=1,dupblobs=0.3,pagesize=5") as emu:
            harness.configure(AUDITLAKE_TENANTS=TENANT, AUDITLAKE_API_ROOT=emu.api_root,
                              AUDITLAKE_MAX_BLOB_BYTES=str(LIMIT))
            host = FunctionsHost(harness)
            try:
                # The truth is what was available when the timer listed, not when the test ends.
                listed_at = datetime.now(UTC)
                await host.timer()
                messages = await host.receive()
                facts["enqueued"] = [decode_message(body).content_id for _, body in messages]
                for message_id, body in messages:
                    await host.run_message(message_id, body)
                for message_id, body in await host.receive(harness.poison):
                    await host.deliver_poison(body, message_id=message_id)
            finally:
                await close_runtime()
            tenant = emu.state.tenants[TENANT]
            week = listed_at - timedelta(days=7)
            facts["truth"] = tenant.truth(None, week, listed_at, listed_at)
            facts["bad"] = {b.content_id: (reason, b.body) for b, reason in
                            tenant.undeliverable(None, week, listed_at, listed_at)}
            facts["faults"] = emu.state.injector.injected.copy()
            facts["deliveries"] = Counter(decode_message(d.body).content_id for d in host.deliveries)
            facts["poisoned"] = len(host.poisoned)

    asyncio.run(run())

    enqueued = facts["enqueued"]
    faults = facts["faults"]
    assert faults["dupblobs"] > 0 and faults["dupblobs_window"] > 0, faults
    assert len(enqueued) == len(set(enqueued)), "a blob listed twice was enqueued twice"

    reasons = {reason: cid for cid, (reason, _) in facts["bad"].items()}
    assert set(reasons) == {"malformed", "oversize"}
    ledger = harness.ledger()
    assert set(ledger) == set(enqueued)
    assert {cid for cid, row in ledger.items() if row["Status"] != "ingested"} == set(reasons.values())

    malformed = ledger[reasons["malformed"]]
    assert malformed["Status"] == "failed"
    assert "dead-lettered" in malformed["Error"] and "not valid JSON (cut off or corrupt)" in malformed["Error"]
    assert "line 1 column" in malformed["Error"], "the reason names the parser's complaint"
    assert facts["deliveries"][reasons["malformed"]] == MAX_DEQUEUE_COUNT and facts["poisoned"] == 1
    container = harness.container_client()
    try:
        kept = container.download_blob(
            f"content/{TENANT}/{malformed['ContentType']}/{reasons['malformed']}.json").readall()
    finally:
        container.close()
    assert kept == malformed_body(facts["bad"][reasons["malformed"]][1], reasons["malformed"])

    oversize = ledger[reasons["oversize"]]
    assert oversize["Status"] == "failed"
    assert f"exceeds the limit of {LIMIT} bytes" in oversize["Error"]
    # Refused by size, not by luck: settled on its first delivery, never retried or poisoned.
    assert facts["deliveries"][reasons["oversize"]] == 1

    ingestions = harness.adx.read_ingestions()
    per_blob: Counter[tuple[str, str]] = Counter((i.source_id, i.table) for i in ingestions)
    assert not [k for k, n in per_blob.items() if n > 1], "a blob was ingested twice"
    keys = {(str(r["Id"]), int(r["RecordType"]), str(r["Operation"]))
            for i in ingestions if i.table == "AuditRecord" for r in i.rows}
    truth = facts["truth"]
    assert keys == truth, f"missing {len(truth - keys)}, unexpected {len(keys - truth)}"
