"""The entra timer driven as the host drives it: emulator (Graph's Entra routes over HTTP) → the
``entra_poll`` function → Table Storage (Azurite) checkpoints and ledger, and the fake ADX, which
receives the envelopes in ``EntraActivityRaw`` (its update policies are ADX's own; the local lake
runs the same expansion, tests/flows/test_entra_collect.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from azure.functions.timer import TimerRequest

from auditlake.emulator.server import EmulatorServer
from function_app.azure.deps import close_runtime
from tests.azure.conftest import FunctionsHost, Harness, flush_mirror

TENANT = "8e1d2c3b-4a5f-4e6d-8c7b-9a0f1e2d3c4b"


def _envelopes(ingestions: list[Any]) -> list[dict[str, Any]]:
    return [e for i in ingestions if i.table == "EntraActivityRaw" for r in i.rows for e in r["Records"]]


def test_the_timer_polls_the_named_logs_into_adx_and_a_second_run_reads_only_the_overlap(harness: Harness) -> None:
    asyncio.run(_poll(harness))


async def _poll(h: Harness) -> None:
    async with EmulatorServer([TENANT], seed=5, days=2, records_per_day=20, scenario="quiet",
                              faults="entra_throttle=0.1") as emu:
        h.configure(AUDITLAKE_TENANTS=TENANT, AUDITLAKE_API_ROOT=emu.api_root, AUDITLAKE_GRAPH_ROOT=emu.graph_root,
                    AUDITLAKE_ENTRA_STREAMS="serviceprincipal,directoryaudits")
        host = FunctionsHost(h)
        try:
            await host.functions["entra_poll"](TimerRequest())
            await flush_mirror()
            first = h.adx.read_ingestions()
            await host.functions["entra_poll"](TimerRequest())
            await flush_mirror()
            second = h.adx.read_ingestions()
        finally:
            await close_runtime()
        async with aiohttp.ClientSession() as session, \
                session.get(f"{emu.base_url}/_emulator/entra_truth?tenant={TENANT}") as resp:
            truth = await resp.json()

    envelopes = _envelopes(first)
    got = {(e["category"], e["properties"]["id"]) for e in envelopes}
    assert {c for c, _ in got} == {"ServicePrincipalSignInLogs", "AuditLogs"}
    # Seven days back by default, but the emulator holds two: everything it held that was visible,
    # less what arrived in the poller's last two minutes.
    sp = {rid for rid, kind in truth["signIns"] if kind == "servicePrincipal"}
    audits = set(truth["directoryAudits"])
    ours = {rid for c, rid in got}
    assert len(sp - ours) <= 3 and len(audits - ours) <= 3 and ours <= sp | audits
    assert all(e["tenantId"] == TENANT and isinstance(e["properties"], dict) for e in envelopes)
    # Every window a ledger row in Table Storage, settled; and mirrored to ADX's ContentLedger.
    rows = [r for r in h.ledger().values() if str(r["ContentType"]).startswith("Entra.")]
    assert rows and {r["Status"] for r in rows} == {"ingested"}
    assert {r["ContentType"] for r in rows} == {"Entra.ServicePrincipalSignInLogs", "Entra.AuditLogs"}
    mirrored = [r for i in first if i.table == "ContentLedger" for r in i.rows]
    assert {r["ContentType"] for r in mirrored} >= {"Entra.ServicePrincipalSignInLogs", "Entra.AuditLogs"}
    # The second run starts at the checkpoints: it reads the overlap again, nothing older.
    again = {(e["category"], e["properties"]["id"]) for e in _envelopes(second)}
    assert len(again) < len(got)


def test_with_no_logs_named_the_timer_does_nothing(harness: Harness) -> None:
    async def run() -> None:
        harness.configure(AUDITLAKE_TENANTS=TENANT)
        host = FunctionsHost(harness)
        try:
            await host.functions["entra_poll"](TimerRequest())
        finally:
            await close_runtime()

    asyncio.run(run())
    assert _envelopes(harness.adx.read_ingestions()) == []
