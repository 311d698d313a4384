"""The fault suite's blob faults on the Azure path (timer → Azurite queue → queue function →
real ingest client → fake ADX → poison queue): what tests/azure does not cover yet.

A malformed blob (one of ``faults.malformed_body``'s three corruptions: ``"=`` for ``":``, a
byte that is not UTF-8 inside a string, content after the closing bracket) is ingested on its
first delivery with every record around the corruption and one damaged row, flagged; an
oversize blob is settled ``failed`` naming the limit on its first delivery; blobs the API lists
twice (in one listing and in the next window) are enqueued once; everything else reaches ADX.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from auditlake.emulator.faults import junk_after_array, malformed_body
from auditlake.emulator.server import EmulatorServer
from auditlake.emulator.tenant import EmulatedBlob, SyntheticTenant
from function_app.azure.deps import close_runtime
from function_app.core.messages import decode_message
from tests.azure.conftest import FunctionsHost, Harness

TENANT = "2b3c4d5e-6f70-4a81-9b2c-3d4e5f607182"
LIMIT = 1024 * 1024
Key = tuple[str, int, str]

# The three corruptions of malformed_body, and the flag of the one row each must leave.
FLAGS = {
    "equals-sign": "record:unreadable:unreadable",
    "bad-byte": "record:recovered:invalid-text",
    "after-array": "record:unreadable:after-array",
}


@dataclass(frozen=True)
class Malformed:
    """What a perfect collector keeps of one malformed blob, worked out from byte offsets."""

    kind: str
    served: bytes
    intact: set[Key]
    damaged_text: bytes  # the text of the one element the corruption touched, as served


def _spans(body: bytes) -> list[tuple[int, int]]:
    texts = [orjson.dumps(r) for r in orjson.loads(body)]
    assert b"[" + b",".join(texts) + b"]" == body, "the emulator's body is not laid out as expected"
    spans, start = [], 1
    for text in texts:
        spans.append((start, start + len(text)))
        start += len(text) + 1
    return spans


def _malformed(blob: EmulatedBlob) -> Malformed:
    served = malformed_body(blob.body, blob.content_id)
    if served[: len(blob.body)] == blob.body:
        junk = junk_after_array(blob.content_id)
        assert served[len(blob.body):] == junk
        return Malformed("after-array", served, set(blob.record_keys), junk.lstrip())
    at = next(i for i, (a, b) in enumerate(zip(blob.body, served, strict=False)) if a != b)
    kind = "bad-byte" if served[at:at + 1] == b"\xff" else "equals-sign"
    shift = len(served) - len(blob.body)
    spans = _spans(blob.body)
    hit = next(i for i, (start, end) in enumerate(spans) if start <= at < end)
    start, end = spans[hit]
    intact = {k for i, k in enumerate(blob.record_keys) if i != hit}
    return Malformed(kind, served, intact, served[start:end + shift])


def _cover_every_corruption(tenant: SyntheticTenant) -> None:
    """Besides the seed's malformed blob, make one more blob malformed for each corruption the
    seed did not pick (which one it picks depends on content ids, which carry the clock)."""
    have = {_malformed(b).kind for b in tenant.blobs if b.malformed}
    candidates = [b for b in tenant.blobs if b.content_created <= tenant.now and b.undeliverable_reason is None
                  and not b.malformed and len(b.record_keys) >= 2]
    for b in candidates:
        kind = _malformed(b).kind
        if kind not in have:
            b.malformed = True
            have.add(kind)
    assert have == set(FLAGS), f"no blob of this tenant gives the corruptions {set(FLAGS) - have}"


def _key(row: dict[str, Any]) -> Key:
    return str(row["Id"]), int(row["RecordType"]), str(row["Operation"])


def _damaged(row: dict[str, Any]) -> bool:
    return any(f.startswith(("record:unreadable:", "record:recovered:")) for f in row["Quality"])


def test_malformed_blobs_are_ingested_with_one_damaged_row_oversize_fails_and_duplicates_are_enqueued_once(
    harness: Harness,
) -> None:
    facts: dict[str, Any] = {}

    async def run() -> None:
        async with EmulatorServer([TENANT], seed=17, days=1.5, records_per_day=150, scenario="quiet",
                                  faults="malformed=1,oversize=1,dupblobs=0.3,pagesize=5") as emu:
            tenant = emu.state.tenants[TENANT]
            _cover_every_corruption(tenant)
            harness.configure(AUDITLAKE_TENANTS=TENANT, AUDITLAKE_API_ROOT=emu.api_root,
                              AUDITLAKE_MAX_BLOB_BYTES=str(LIMIT))
            host = FunctionsHost(harness)
            try:
                # The truth is what was available when the timer listed, not when the test ends.
                listed_at = datetime.now(UTC)
                await host.timer()
                done_listing = datetime.now(UTC)
                messages = await host.receive()
                facts["enqueued"] = [decode_message(body).content_id for _, body in messages]
                for message_id, body in messages:
                    await host.run_message(message_id, body)
                facts["requeued"] = await host.receive()
                facts["poison"] = await host.receive(harness.poison)
            finally:
                await close_runtime()
            week = listed_at - timedelta(days=7)
            facts["available"] = {b.content_id for b in tenant.blobs if week <= b.content_created <= listed_at}
            facts["possible"] = {b.content_id for b in tenant.blobs if week <= b.content_created <= done_listing}
            by_id = {b.content_id: b for b in tenant.blobs}
            facts["listed"] = [by_id[cid] for cid in facts["enqueued"]]
            facts["faults"] = emu.state.injector.injected.copy()
            facts["deliveries"] = Counter(decode_message(d.body).content_id for d in host.deliveries)
            facts["errors"] = [d.error for d in host.deliveries if d.error]
            facts["poisoned"] = list(host.poisoned)

    asyncio.run(run())

    enqueued = facts["enqueued"]
    faults = facts["faults"]
    assert faults["dupblobs"] > 0 and faults["dupblobs_window"] > 0, faults
    assert len(enqueued) == len(set(enqueued)), "a blob listed twice was enqueued twice"
    listed: list[EmulatedBlob] = facts["listed"]
    assert facts["available"] <= set(enqueued) <= facts["possible"], "a blob was missed or made up"

    # Every blob took one delivery: nothing went back to the queue, nothing was poisoned.
    assert facts["deliveries"] == Counter(enqueued) and facts["errors"] == []
    assert facts["requeued"] == [] and facts["poison"] == [] and facts["poisoned"] == []

    malformed = {b.content_id: _malformed(b) for b in listed if b.malformed}
    assert sorted(m.kind for m in malformed.values()) == sorted(FLAGS)
    [oversize_id] = [b.content_id for b in listed if b.oversize]
    ledger = harness.ledger()
    assert set(ledger) == set(enqueued)
    assert {cid for cid, row in ledger.items() if row["Status"] != "ingested"} == {oversize_id}

    oversize = ledger[oversize_id]
    assert oversize["Status"] == "failed" and oversize["Attempts"] == 1
    assert f"exceeds the limit of {LIMIT} bytes" in oversize["Error"]

    ingestions = harness.adx.read_ingestions()
    per_blob: Counter[tuple[str, str]] = Counter((i.source_id, i.table) for i in ingestions)
    assert not [k for k, n in per_blob.items() if n > 1], "a blob was ingested twice"
    rows: dict[str, list[dict[str, Any]]] = {}
    for i in ingestions:
        if i.table == "AuditRecord":
            for r in i.rows:
                rows.setdefault(r["ContentId"], []).append(r)
    assert oversize_id not in rows

    for cid, m in malformed.items():
        row = ledger[cid]
        assert (row["Status"], row["Attempts"], row.get("Error")) == ("ingested", 1, None), (m.kind, row)
        blob_rows = rows[cid]
        damaged = [r for r in blob_rows if _damaged(r)]
        assert len(damaged) == 1, (m.kind, [r["Quality"] for r in damaged])
        assert FLAGS[m.kind] in damaged[0]["Quality"], (m.kind, damaged[0]["Quality"])
        intact = Counter(_key(r) for r in blob_rows if not _damaged(r))
        assert set(intact) == m.intact and all(n == 1 for n in intact.values()), (m.kind, intact)
        if m.kind == "bad-byte":
            # Read leniently: the value whole, the bad byte as U+FFFD.
            assert orjson.dumps(damaged[0]["AuditData"]).replace("\ufffd".encode(), b"\xff") == m.damaged_text
        else:
            # Read by no parser: the element's text as delivered.
            assert damaged[0]["AuditData"] == m.damaged_text.decode()

    # Everything else reached ADX, once per record; the damaged rows are the three above.
    truth = {k for b in listed if not b.oversize for k in
             (malformed[b.content_id].intact if b.content_id in malformed else b.record_keys)}
    everything = [r for blob_rows in rows.values() for r in blob_rows]
    keys = {_key(r) for r in everything if not _damaged(r)}
    assert keys == truth, f"missing {len(truth - keys)}, unexpected {len(keys - truth)}"
    assert sum(_damaged(r) for r in everything) == len(malformed)

    # An ingested blob leaves no raw copy behind; only what failed for good could need one.
    container = harness.container_client()
    try:
        kept = [b.name for b in container.list_blobs("content/")] if container.exists() else []
    finally:
        container.close()
    assert not [name for name in kept if any(cid in name for cid in malformed)]
