"""Forged queue messages naming a genuine, listed blob (Azure path: timer → Azurite queue → queue
function → emulator → fake ADX).

Anyone who can write to the content queue can write a message, so a message is only a hint of
which blob to process: it never settles a blob (a rejected one is dead-lettered and leaves the
ledger row alone), it never decides that a blob expired (only the API's AF20051 does), it never
makes the app send its token anywhere but a plain content URI of the tenant's feed, and once a
blob is claimed the URI and times the API listed win over the message's.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from azure.core.exceptions import ResourceNotFoundError

from auditlake.emulator.server import EmulatorServer
from auditlake.emulator.tenant import EmulatedBlob
from function_app.azure.deps import close_runtime
from function_app.core.messages import decode_message
from tests.azure.conftest import FunctionsHost, Harness

TENANT = "4d5e6f70-8192-4a3b-9c4d-5e6f708192a3"
Key = tuple[str, int, str]
ALERT = "ALERT content expired"


def _forge(genuine: str, **changes: Any) -> str:
    """The genuine message *genuine* with *changes* to its fields."""
    body = orjson.loads(genuine)
    body.update(changes)
    return orjson.dumps(body).decode()


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _audit_keys(h: Harness) -> dict[str, set[Key]]:
    """The keys of the AuditRecord rows ingested since the last read, by content id."""
    out: dict[str, set[Key]] = {}
    for i in h.adx.read_ingestions():
        if i.table == "AuditRecord":
            for r in i.rows:
                out.setdefault(r["ContentId"], set()).add((str(r["Id"]), int(r["RecordType"]), str(r["Operation"])))
    return out


def _kept_messages(h: Harness) -> dict[str, tuple[bytes, str]]:
    """Dead-lettered messages by message id: (raw body, reason)."""
    container = h.container_client()
    try:
        return {b.name.rsplit("/", 1)[-1].removesuffix(".txt"):
                (container.download_blob(b.name).readall(), str((b.metadata or {}).get("reason", "")))
                for b in container.list_blobs("messages/", include=["metadata"])}
    except ResourceNotFoundError:
        return {}
    finally:
        container.close()


async def _listed(h: Harness) -> tuple[FunctionsHost, dict[str, str]]:
    """Run the timer and take its messages off the queue, undelivered: the genuine message of
    each listed blob, by content id."""
    host = FunctionsHost(h)
    await host.timer()
    genuine = {decode_message(body).content_id: body for _, body in await host.receive()}
    assert len(genuine) >= 4, "too few blobs listed for these tests"
    return host, genuine


def _blob(emu: EmulatorServer, content_id: str) -> EmulatedBlob:
    found = emu.state.tenants[TENANT].blob(content_id)
    assert found is not None
    return found


def test_a_past_contentexpiration_in_a_message_never_makes_a_blob_expired(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Only the API says a blob expired: a message's contentExpiration is not believed, whether
    the ledger knows the blob (its listed times win) or the message is the first to name it."""

    async def run() -> None:
        async with EmulatorServer([TENANT], seed=31, days=0.3, records_per_day=120, scenario="quiet") as emu:
            harness.configure(AUDITLAKE_TENANTS=TENANT, AUDITLAKE_API_ROOT=emu.api_root)
            tenant = emu.state.tenants[TENANT]
            now = datetime.now(UTC)
            past = {"contentCreated": _iso(now - timedelta(days=8)), "contentExpiration": _iso(now - timedelta(days=1))}
            # Never listed: the message is the first to name it (the claim records it as queued).
            unlisted = next(b for b in tenant.blobs if b.content_created <= tenant.now)
            unlisted_msg = orjson.dumps({
                "v": 1, "tenantId": TENANT, "contentType": unlisted.content_type, "contentId": unlisted.content_id,
                "contentUri": f"{emu.api_root}/{TENANT}/activity/feed/audit/{unlisted.content_id}", **past,
            }).decode()
            host = FunctionsHost(harness)
            try:
                await host.deliver(unlisted_msg, message_id="forged-unlisted")
                assert emu.state.stats.requests["GetBlob"] == 1
                host, genuine = await _listed(harness)
                listed_id = next(cid for cid in sorted(genuine) if cid != unlisted.content_id)
                before = harness.ledger()[listed_id]
                await host.deliver(_forge(genuine[listed_id], **past), message_id="forged-listed")
                assert emu.state.stats.requests["GetBlob"] == 2
                after = harness.ledger()[listed_id]
                # The ledger keeps the times the API listed; the message's are not written anywhere.
                assert after["ContentExpiration"] == before["ContentExpiration"]
                assert after["ContentCreated"] == before["ContentCreated"]

                # The contrast: the API's own AF20051 still makes a blob expired, with the alert.
                gone_id = next(cid for cid in sorted(genuine) if cid not in (unlisted.content_id, listed_id))
                _blob(emu, gone_id).expired = True
                await host.deliver(genuine[gone_id], message_id="genuine-gone")
            finally:
                await close_runtime()
            facts["unlisted"], facts["listed"], facts["gone"] = unlisted, _blob(emu, listed_id), gone_id

    facts: dict[str, Any] = {}
    with caplog.at_level(logging.INFO):
        asyncio.run(run())
    ledger = harness.ledger()
    keys = _audit_keys(harness)
    for blob in (facts["unlisted"], facts["listed"]):
        row = ledger[blob.content_id]
        assert row["Status"] == "ingested" and row.get("Error") is None, row
        assert keys[blob.content_id] == set(blob.record_keys)
    gone = ledger[facts["gone"]]
    assert gone["Status"] == "expired" and "AF20051" in gone["Error"]
    alerts = [r for r in caplog.records if ALERT in r.getMessage()]
    assert [r.levelno for r in alerts] == [logging.CRITICAL]
    assert facts["gone"] in alerts[0].getMessage(), "the only alert is the API's own expiry"


def test_a_malformed_message_is_dead_lettered_and_leaves_the_blob_to_its_genuine_message(
    harness: Harness,
) -> None:
    async def run() -> None:
        async with EmulatorServer([TENANT], seed=32, days=0.3, records_per_day=120, scenario="quiet") as emu:
            harness.configure(AUDITLAKE_TENANTS=TENANT, AUDITLAKE_API_ROOT=emu.api_root,
                              AUDITLAKE_REQUEUE_AFTER_MINUTES="0.01")
            try:
                host, genuine = await _listed(harness)
                target, lost, *rest = sorted(genuine)
                before = harness.ledger()
                await host.deliver(_forge(genuine[target], contentCreated="yesterday"), message_id="forged-target")
                await host.deliver(_forge(genuine[lost], contentCreated="2026-02-30T00:00:00Z"),
                                   message_id="forged-lost")
                assert emu.state.stats.requests["GetBlob"] == 0
                # Dead-lettered with the reason; the rows the messages name are exactly as listed.
                kept = _kept_messages(harness)
                assert set(kept) == {"forged-target", "forged-lost"}
                assert kept["forged-target"][0] == _forge(genuine[target], contentCreated="yesterday").encode()
                assert "contentCreated: not an ISO 8601 time" in kept["forged-target"][1]
                assert "contentCreated: not a valid time" in kept["forged-lost"][1]
                assert harness.ledger() == before
                assert {before[c]["Status"] for c in (target, lost)} == {"queued"}

                # The genuine message still processes its blob.
                await host.deliver(genuine[target], message_id="genuine-target")
                assert harness.ledger()[target]["Status"] == "ingested"
                for cid in rest:
                    await host.deliver(genuine[cid], message_id=f"genuine-{cid[-8:]}".replace("$", "-"))
                # The genuine message of `lost` never arrives: the timer's stale sweep re-enqueues
                # the blob the forged message named, and only that one.
                await asyncio.sleep(1.0)
                await host.timer()
                again = await host.receive()
                again_ids = [decode_message(b).content_id for _, b in again]
                # (A blob that became available meanwhile may be listed too; no other known one.)
                assert lost in again_ids and not (set(again_ids) - {lost}) & set(genuine), again_ids
                assert harness.ledger()[lost]["Error"].startswith("re-enqueued by the timer")
                for message_id, body in again:
                    assert await host.run_message(message_id, body)
            finally:
                await close_runtime()
            facts.update(blobs={cid: _blob(emu, cid) for cid in genuine}, target=target, lost=lost)

    facts: dict[str, Any] = {}
    asyncio.run(run())
    ledger = harness.ledger()
    assert {ledger[cid]["Status"] for cid in facts["blobs"]} == {"ingested"}
    assert ledger[facts["target"]]["Attempts"] == 1
    assert ledger[facts["lost"]]["Attempts"] == 2  # the re-enqueue, then the ingestion
    keys = _audit_keys(harness)
    for cid, blob in facts["blobs"].items():
        assert keys[cid] == set(blob.record_keys), cid


FORGERIES = [
    ("query-publisher", lambda uri, cid: {"contentUri": f"{uri}?PublisherIdentifier=attacker"},
     "contentUri carries a query string or fragment"),
    ("query-other", lambda uri, cid: {"contentUri": f"{uri}?contentType=Audit.General"},
     "query string or fragment"),
    ("fragment", lambda uri, cid: {"contentUri": f"{uri}#frag"}, "query string or fragment"),
    ("dot-id", lambda uri, cid: {"contentId": ".", "contentUri": uri.replace(cid, ".")}, "contentId: "),
    ("dots-id", lambda uri, cid: {"contentId": "...", "contentUri": uri.replace(cid, "...")}, "contentId: "),
    ("encoded-dots-id", lambda uri, cid: {"contentId": "..", "contentUri": uri.replace(cid, "%2E%2E")}, "contentId: "),
]


@pytest.mark.parametrize(("name", "change", "reason"), FORGERIES, ids=[f[0] for f in FORGERIES])
def test_a_content_uri_with_a_query_or_a_dot_only_content_id_is_refused_before_any_fetch(
    harness: Harness, name: str, change: Any, reason: str
) -> None:
    async def run() -> None:
        async with EmulatorServer([TENANT], seed=33, days=0.2, records_per_day=60, scenario="quiet") as emu:
            harness.configure(AUDITLAKE_TENANTS=TENANT, AUDITLAKE_API_ROOT=emu.api_root)
            try:
                host, genuine = await _listed(harness)
                cid = sorted(genuine)[0]
                uri = orjson.loads(genuine[cid])["contentUri"]
                before = harness.ledger()
                requests = sum(emu.state.stats.requests.values())
                await host.deliver(_forge(genuine[cid], **change(uri, cid)), message_id=f"forged-{name}")
                # Nothing at all was sent with the token, to any operation.
                assert sum(emu.state.stats.requests.values()) == requests
                assert "attacker" not in emu.state.stats.publishers
                assert harness.ledger() == before
                kept = _kept_messages(harness)
                assert set(kept) == {f"forged-{name}"} and reason in kept[f"forged-{name}"][1]
                # The blob itself is fine: its genuine message ingests it.
                await host.deliver(genuine[cid], message_id="genuine")
                assert harness.ledger()[cid]["Status"] == "ingested"
                assert emu.state.stats.requests["GetBlob"] == 1
            finally:
                await close_runtime()

    asyncio.run(run())


def test_a_message_whose_uri_differs_from_the_listed_one_makes_the_app_fetch_the_listed_uri(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Upper-case path segments pass the URI check (the host and the tenant's feed are compared
    case-insensitively) but the emulator serves no such path: if the app fetched the message's
    URI the blob would fail; it fetches the one the API listed and ingests it."""

    async def run() -> None:
        async with EmulatorServer([TENANT], seed=34, days=0.2, records_per_day=60, scenario="quiet") as emu:
            harness.configure(AUDITLAKE_TENANTS=TENANT, AUDITLAKE_API_ROOT=emu.api_root)
            try:
                host, genuine = await _listed(harness)
                cid = sorted(genuine)[0]
                listed_uri = harness.ledger()[cid]["ContentUri"]
                forged_uri = f"{emu.base_url}/API/V1.0/{TENANT}/activity/feed/audit/{cid}"
                assert forged_uri != listed_uri
                await host.deliver(_forge(genuine[cid], contentUri=forged_uri), message_id="forged-uri")
                assert emu.state.stats.requests["GetBlob"] == 1, "the listed URI was not fetched"
                row = harness.ledger()[cid]
                assert row["Status"] == "ingested" and row["Attempts"] == 1, row
                assert row["ContentUri"] == listed_uri
                assert _audit_keys(harness)[cid] == set(_blob(emu, cid).record_keys)
            finally:
                await close_runtime()

    with caplog.at_level(logging.WARNING):
        asyncio.run(run())
    assert any("message disagrees with the ledger" in r.getMessage() for r in caplog.records)
