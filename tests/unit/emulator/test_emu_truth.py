"""The emulator's ground truth of faulted blobs, and the faults that add records (hostile, hugestring).

The truth is computed from the byte span of each record in a blob's body; these tests check it
against the records themselves and, as an outside opinion, against the collector's own reader.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import orjson
import pytest

from auditlake.emulator import EmulatorServer, FaultSpec, SyntheticTenant
from auditlake.emulator.faults import (
    HOSTILE_DEPTH,
    HUGE_STRING_CHARS,
    apply_blob_faults,
    cutoff_body,
    cutoff_point,
    delivery,
    hostile_records,
    huge_string_record,
    malformed_corruption,
    record_spans,
)
from auditlake.emulator.incident import RecordKey, record_key
from auditlake.emulator.tenant import EmulatedBlob
from function_app.records.reader import RecoveredRecord, parse_content
from tests.unit.emulator.helpers import NOW, TENANT, Api, run


def _tenant(seed: int = 3, days: float = 2, records_per_day: int = 600) -> SyntheticTenant:
    return SyntheticTenant.generate(TENANT, seed=seed, now=NOW, days=days, records_per_day=records_per_day,
                                    scenario="quiet")


@pytest.fixture(scope="module")
def tenant() -> SyntheticTenant:
    return _tenant()


def _read(body: bytes) -> tuple[list[RecordKey], int, list[RecordKey]]:
    """What the collector's reader makes of *body*: keys of the records read strictly, how many
    it kept as RecoveredRecord, and the keys of those it could read leniently."""
    content = parse_content(body)
    strict = [record_key(r) for r in content.records if type(r) is not RecoveredRecord]
    recovered = [r for r in content.records if type(r) is RecoveredRecord]
    lenient = [record_key(r.value) for r in recovered if r.readable]
    return strict, len(recovered), lenient


def test_ends_are_where_each_records_text_ends(tenant: SyntheticTenant) -> None:
    for blob in tenant.blobs:
        assert len(blob.ends) == len(blob.record_keys) and blob.ends[-1] == len(blob.body) - 1
        assert blob.body == orjson.dumps(orjson.loads(blob.body)), "the body is orjson.dumps(records)"
        for key, (start, end) in zip(blob.record_keys, record_spans(blob.ends), strict=True):
            assert record_key(orjson.loads(blob.body[start:end])) == key
            assert blob.body[start - 1 : start] in (b"[", b",") and blob.body[end : end + 1] in (b",", b"]")


def test_record_spans() -> None:
    body = b'[{"a":1},{"bb":22},{}]'
    assert [body[s:e] for s, e in record_spans([8, 18, 21])] == [b'{"a":1}', b'{"bb":22}', b"{}"]
    assert record_spans([]) == []


def test_a_blob_without_faults_is_delivered_whole(tenant: SyntheticTenant) -> None:
    apply_blob_faults(tenant, FaultSpec(), 1)
    for blob in tenant.blobs:
        d = delivery(blob)
        assert (d.keys, d.damaged) == (blob.record_keys, 0)
        assert blob.served_body is blob.body


def test_cutoff_truth_is_the_records_wholly_before_the_cut(tenant: SyntheticTenant) -> None:
    apply_blob_faults(tenant, FaultSpec(cutoff=20), 4)
    cut_blobs = [b for b in tenant.blobs if b.cutoff]
    assert len(cut_blobs) == 20
    salvaged = begun = 0
    for blob in cut_blobs:
        d = delivery(blob)
        cut = cutoff_point(len(blob.body), blob.content_id)
        assert cutoff_body(blob.body, blob.content_id) == blob.body[:cut]
        # Counted independently of the spans: re-serialise each record and add up the lengths.
        end, whole, inside = 0, [], False
        for rec in orjson.loads(blob.body):
            start, end = end + 1, end + 1 + len(orjson.dumps(rec))
            if end <= cut:
                whole.append(record_key(rec))
            elif start < cut:
                inside = True
        assert d.keys == whole and d.damaged == int(inside)
        assert blob.undeliverable_reason == "cutoff"
        # The collector's reader keeps the same records, and the begun one as a damaged row.
        strict, recovered, _ = _read(blob.body[:cut])
        assert (strict, recovered) == (d.keys, d.damaged)
        salvaged += bool(whole)
        begun += inside
    assert salvaged and begun, "some cuts fall after whole records, some inside one"


def test_malformed_truth_spares_every_record_but_the_one_corrupted(tenant: SyntheticTenant) -> None:
    apply_blob_faults(tenant, FaultSpec(malformed=30), 4)
    bad = [b for b in tenant.blobs if b.malformed]
    assert len(bad) == 30
    kinds: Counter[str] = Counter()
    for blob in bad:
        corrupt, at = malformed_corruption(blob.body, blob.content_id)
        d = delivery(blob)
        assert blob.undeliverable_reason is None and d.damaged == 1
        if at == len(blob.body):
            kinds["after the array"] += 1
            assert corrupt.startswith(blob.body) and d.keys == blob.record_keys
        else:
            kinds["=" if corrupt[at : at + 2] == b'"=' else "byte"] += 1
            touched = [k for k, (s, e) in zip(blob.record_keys, record_spans(blob.ends), strict=True) if s <= at < e]
            assert len(touched) == 1 and d.keys == [k for k in blob.record_keys if k != touched[0]]
        strict, recovered, _ = _read(corrupt)
        assert (strict, recovered) == (d.keys, 1)
    assert set(kinds) == {"after the array", "=", "byte"}, kinds


def test_damaged_blobs_share_no_record_with_another_blob(tenant: SyntheticTenant) -> None:
    # Else the collector's damaged row and a whole copy elsewhere would race for one key.
    apply_blob_faults(tenant, FaultSpec(expired=5, cutoff=5, malformed=5, oversize=5), 2)
    everywhere = Counter(k for b in tenant.blobs for k in set(b.record_keys))
    faulted = [b for b in tenant.blobs if b.expired or b.cutoff or b.malformed or b.oversize]
    assert len(faulted) == 20
    assert all(everywhere[k] == 1 for b in faulted for k in b.record_keys)


def test_truth_and_damaged_add_up_over_the_blobs(tenant: SyntheticTenant) -> None:
    apply_blob_faults(tenant, FaultSpec(cutoff=3, malformed=3, expired=2, hostile=2), 6)
    span = (NOW.replace(year=2024), NOW)
    deliveries = tenant.deliveries(None, *span, NOW)
    assert tenant.damaged(None, *span, NOW) == sum(d.damaged for _, d in deliveries) >= 3 + 10
    assert tenant.truth(None, *span, NOW) == {k for _, d in deliveries for k in d.keys}
    assert Counter(r for _, r in tenant.undeliverable(None, *span, NOW)) == {"cutoff": 3, "expired": 2}


# ------------------------------------------------------------------------------- hostile


HOSTILE_SEED = 5


def _hostile(tenant: SyntheticTenant) -> list[EmulatedBlob]:
    apply_blob_faults(tenant, FaultSpec(hostile=2), HOSTILE_SEED)
    return [b for b in tenant.blobs if b.added is not None]


def test_hostile_records_are_what_the_fault_promises(tenant: SyntheticTenant) -> None:
    blobs = _hostile(tenant)
    assert len(blobs) == 2 and all(b.content_type == "Audit.Exchange" for b in blobs)
    for blob in blobs:
        assert blob.added is not None and blob.added.kind == "hostile"
        records = hostile_records(TENANT, tenant.domain, blob, HOSTILE_SEED)
        assert blob.added.names == tuple(r.name for r in records)
        assert blob.added.keys == tuple(r.key for r in records)
        by_name = {r.name: r for r in records}
        assert set(by_name) == {"deep-name", "deep-record", "lone-surrogate", "nan", "infinity", "huge-number",
                                "bad-byte"}
        for rec in records:
            assert rec.text in blob.served_body
            # Damaged exactly when a strict parser refuses the text.
            try:
                orjson.loads(rec.text)
            except orjson.JSONDecodeError:
                refused = True
            else:
                refused = False
            assert refused == rec.damaged, rec.name
            # A lenient parser reads every one, key intact.
            value = json.loads(rec.text.decode("utf-8", "surrogateescape"))
            assert record_key(value) == rec.key and value["Operation"] == rec.key[2]
        name = orjson.loads(by_name["deep-name"].text)
        assert name["Operation"] == "New-InboxRule"
        assert name["Parameters"][0] == {"Name": "Name", "Value": "[" * HOSTILE_DEPTH + "]" * HOSTILE_DEPTH}
        deep = orjson.loads(by_name["deep-record"].text)
        assert _depth(deep) == HOSTILE_DEPTH
        with pytest.raises(orjson.JSONEncodeError):
            orjson.dumps(deep)
        assert b'"invoice \\ud83d"' in by_name["lone-surrogate"].text
        assert b":NaN}" in by_name["nan"].text and b":Infinity}" in by_name["infinity"].text
        assert b":1e400}" in by_name["huge-number"].text
        # The stray byte is inside a value, never a key: the record keeps every field name.
        bad = json.loads(by_name["bad-byte"].text.decode("utf-8", "surrogateescape"))
        assert all(k.isascii() for k in bad) and bad["ClientInfoString"].endswith("\udcff")
        assert blob.added.damaged == 5


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return deepest


def test_hostile_blobs_serve_their_own_records_and_the_hostile_ones(tenant: SyntheticTenant) -> None:
    for blob in _hostile(tenant):
        assert blob.added is not None
        served = blob.served_body
        assert served is blob.served_body, "made once"
        d = delivery(blob)
        assert d.keys == [*blob.record_keys, *blob.added.keys] and d.damaged == 5
        assert len(set(blob.added.keys)) == 7 and set(blob.added.keys).isdisjoint(blob.record_keys)
        strict, recovered, lenient = _read(served)
        assert recovered == d.damaged
        assert sorted(strict + lenient) == sorted(d.keys)
        # Every record of the blob is still there, byte for byte, among the hostile ones.
        for start, end in record_spans(blob.ends):
            assert blob.body[start:end] in served


def test_hostile_and_hugestring_are_deterministic_and_move_no_other_fault() -> None:
    a, b = _tenant(seed=8, days=1), _tenant(seed=8, days=1)
    apply_blob_faults(a, FaultSpec.parse("expired=2,cutoff=1,malformed=1"), 3)
    before = {b.content_id: b.undeliverable_reason or b.malformed for b in a.blobs
              if b.undeliverable_reason or b.malformed}
    for t in (a, b):
        apply_blob_faults(t, FaultSpec.parse("expired=2,cutoff=1,malformed=1,hostile=2,hugestring=1"), 3)
    after = {b.content_id: b.undeliverable_reason or b.malformed for b in a.blobs
             if b.undeliverable_reason or b.malformed}
    assert after == before
    added = {x.content_id: x.added for x in a.blobs if x.added is not None}
    assert Counter(x.kind for x in added.values()) == {"hostile": 2, "hugestring": 1}
    assert set(added).isdisjoint(before)
    assert {x.content_id: x.added for x in b.blobs if x.added is not None} == added
    apply_blob_faults(a, FaultSpec(), 3)
    assert not any(x.added for x in a.blobs)


def test_hugestring_adds_one_record_with_a_50_mb_string() -> None:
    t = _tenant(seed=9, days=1, records_per_day=300)
    apply_blob_faults(t, FaultSpec(hugestring=1), 2)
    (blob,) = [b for b in t.blobs if b.added is not None]
    assert blob.added is not None and blob.added.kind == "hugestring" and blob.added.damaged == 0
    rec = huge_string_record(TENANT, t.domain, blob, 2)
    assert blob.added.keys == (rec.key,) and rec.text in blob.served_body
    value = orjson.loads(rec.text)
    message = value["Parameters"][2]
    assert message["Name"] == "InternalMessage" and len(message["Value"]) == HUGE_STRING_CHARS
    assert message["Value"].startswith("<html>") and message["Value"].isascii()
    records = orjson.loads(blob.served_body)
    assert [record_key(r) for r in records if record_key(r) != rec.key] == blob.record_keys
    assert delivery(blob).keys == [*blob.record_keys, rec.key]


def test_hostile_and_hugestring_over_http() -> None:
    async def body(emu: EmulatorServer, api: Api) -> None:
        tenant = emu.state.tenants[api.tenant]
        added = {b.content_id: b for b in tenant.blobs if b.added is not None}
        assert len(added) == 2
        for cid, blob in added.items():
            reply = await api.call("GET", f"{api.feed}/audit/{cid}")
            assert reply.status == 200 and reply.body == blob.served_body
        truth = (await api.control("truth")).json()
        kinds = {b.added.kind: b.added for b in added.values() if b.added is not None}
        assert {k: [tuple(x) for x in v] for k, v in truth["added"].items()} == {
            kind: list(a.keys) for kind, a in kinds.items()}
        assert truth["damaged"] == 5 and truth["undeliverable"] == []
        records = {tuple(r) for r in truth["records"]}
        assert all(k in records for a in kinds.values() for k in a.keys)
        faults = (await api.control("stats")).json()["faults"]
        assert (faults["hostile"], faults["hugestring"]) == (1, 1)

    run(body, faults="hostile=1,hugestring=1")
