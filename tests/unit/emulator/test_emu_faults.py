"""FaultSpec grammar and the injector's decisions."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from auditlake.emulator.faults import (
    OVERSIZE_BYTES,
    PAGE_HEADER_SPELLINGS,
    FaultInjector,
    FaultSpec,
    apply_blob_faults,
    cutoff_body,
    malformed_body,
    oversize_body,
)
from auditlake.emulator.tenant import SyntheticTenant
from tests.unit.emulator.helpers import NOW, TENANT

FULL = (
    "throttle=0.1,throttle429=0.05,5xx=0.05,slow=0.02:1.5,truncate=0.05,shuffle,late=0.1,expired=2,cutoff=1,"
    "headercase,gateway=0.02,reset=0.03,burst=4,malformed=1,oversize=2,dupblobs=0.2,pagesize=7,hostile=2,hugestring=1"
)


def test_parse_full_spec() -> None:
    spec = FaultSpec.parse(FULL)
    assert spec == FaultSpec(
        throttle=0.1, throttle429=0.05, server_error=0.05, slow=0.02, slow_seconds=1.5, truncate=0.05,
        shuffle=True, late=0.1, expired=2, cutoff=1, headercase=True, gateway=0.02, reset=0.03, burst=4,
        malformed=1, oversize=2, dupblobs=0.2, pagesize=7, hostile=2, hugestring=1,
    )
    assert spec.active
    assert FaultSpec.parse("burst=1") == FaultSpec() and not FaultSpec.parse("burst=1").active


@pytest.mark.parametrize("text", ["", " ", ",", " , "])
def test_empty_spec_is_no_faults(text: str) -> None:
    spec = FaultSpec.parse(text)
    assert spec == FaultSpec()
    assert not spec.active
    assert str(spec) == ""


def test_slow_seconds_default_and_flags_off() -> None:
    spec = FaultSpec.parse("slow=0.5, shuffle=false, headercase=1")
    assert (spec.slow, spec.slow_seconds, spec.shuffle, spec.headercase) == (0.5, 1.0, False, True)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("bogus=1", "bogus"),
        ("throttle=0.1,explode", "explode"),
        ("throttle=2", "throttle"),
        ("5xx=abc", "5xx"),
        ("expired=-1", "expired"),
        ("cutoff=1.5", "cutoff"),
        ("late", "late"),
        ("shuffle=maybe", "shuffle"),
        ("slow=0.1:fast", "slow"),
        ("throttle=0.1,throttle=0.2", "throttle"),
        ("burst=0", "burst"),
        ("burst=2.5", "burst"),
        ("pagesize=0", "pagesize"),
        ("reset=1.5", "reset"),
        ("gateway=x", "gateway"),
        ("dupblobs=-0.1", "dupblobs"),
        ("malformed=-2", "malformed"),
        ("oversize=many", "oversize"),
        ("malformed", "malformed"),
        ("hostile=-1", "hostile"),
        ("hugestring=big", "hugestring"),
        ("hostile", "hostile"),
    ],
)
def test_bad_specs_name_the_key(text: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        FaultSpec.parse(text)


probability = st.sampled_from([0.0, 0.05, 0.25, 1.0])


@given(
    throttle=probability, throttle429=probability, server_error=probability, slow=probability,
    slow_seconds=st.sampled_from([0.0, 0.5, 2.0]), truncate=probability, shuffle=st.booleans(), late=probability,
    expired=st.integers(0, 5), cutoff=st.integers(0, 5), headercase=st.booleans(), gateway=probability,
    reset=probability, burst=st.integers(1, 6), malformed=st.integers(0, 5), oversize=st.integers(0, 5),
    dupblobs=probability, pagesize=st.sampled_from([0, 1, 50]), hostile=st.integers(0, 3),
    hugestring=st.integers(0, 2),
)
def test_str_round_trips(**values: object) -> None:
    spec = FaultSpec(**values)  # type: ignore[arg-type]
    parsed = FaultSpec.parse(str(spec))
    if not spec.slow:
        # slow_seconds only means something with a slow probability; the string omits it otherwise.
        parsed = FaultSpec(**{**values, "slow_seconds": spec.slow_seconds})  # type: ignore[arg-type]
    assert parsed == spec


def test_injector_is_reproducible_from_the_seed() -> None:
    spec = FaultSpec.parse("throttle=0.2,throttle429=0.1,5xx=0.1")
    a, b = FaultInjector(spec, 5), FaultInjector(spec, 5)
    seq_a = [a.request_fault() for _ in range(300)]
    assert seq_a == [b.request_fault() for _ in range(300)]
    assert {"throttle", "throttle429", "5xx", None} == set(seq_a)
    assert a.injected == b.injected
    assert seq_a != [FaultInjector(spec, 6).request_fault() for _ in range(300)]


def test_server_errors_alternate_500_503() -> None:
    inj = FaultInjector(FaultSpec(server_error=1.0), 1)
    assert [inj.server_error_status() for _ in range(4)] == [500, 503, 500, 503]


def test_header_case_rotates_and_sometimes_lowercases_endtime() -> None:
    inj = FaultInjector(FaultSpec(headercase=True), 3)
    uri = "http://h/api/v1.0/t/activity/feed/subscriptions/content?contentType=X&startTime=a&endTime=b&nextPage=1"
    answers = [inj.page_header(uri) for _ in range(30)]
    assert [name for name, _ in answers[:3]] == list(PAGE_HEADER_SPELLINGS)
    assert {value for _, value in answers} == {uri, uri.replace("endTime=", "endtime=")}
    assert FaultInjector(FaultSpec(), 3).page_header(uri) == ("NextPageUri", uri)


def test_truncation_is_a_strict_prefix_and_cutoff_is_stable() -> None:
    body = b'[{"Id":"x","RecordType":1,"Operation":"Set-Mailbox"}]'
    always = FaultInjector(FaultSpec(truncate=1.0), 2)
    cut = always.truncate("a$b", body)
    assert cut is not None and body.startswith(cut) and 0 < len(cut) < len(body)
    # Once per blob, so a client's retry gets it whole; another blob is still cut.
    assert always.truncate("a$b", body) is None
    assert always.truncate("a$c", body) is not None
    assert FaultInjector(FaultSpec(), 2).truncate("a$b", body) is None
    assert cutoff_body(body, "a$b") == cutoff_body(body, "a$b")
    assert len(cutoff_body(body, "a$b")) < len(body)


def test_a_burst_repeats_each_fault_without_drawing() -> None:
    spec = "throttle=0.1,throttle429=0.05,5xx=0.05,gateway=0.05,reset=0.05"
    single = FaultInjector(FaultSpec.parse(spec), 9)
    bursty = FaultInjector(FaultSpec.parse(f"{spec},burst=3"), 9)
    drawn = [single.request_fault() for _ in range(400)]
    # No draw during a burst: the bursty sequence is the single one with every fault tripled.
    expanded = [kind for kind in drawn for _ in range(3 if kind else 1)]
    got = [bursty.request_fault() for _ in range(len(expanded))]
    assert got == expanded
    assert set(drawn) == {"throttle", "throttle429", "5xx", "gateway", "reset", None}
    faults = sum(1 for kind in drawn if kind)
    assert bursty.injected["burst"] == faults and single.injected["burst"] == 0
    assert sum(bursty.injected[k] for k in ("throttle", "throttle429", "5xx", "gateway", "reset")) == 3 * faults


def test_new_request_faults_leave_the_old_draws_alone() -> None:
    old = FaultInjector(FaultSpec.parse("throttle=0.2,5xx=0.1"), 4)
    new = FaultInjector(FaultSpec.parse("throttle=0.2,5xx=0.1,gateway=0.1,reset=0.1"), 4)
    for _ in range(300):
        before, after = old.request_fault(), new.request_fault()
        assert before == after or (before is None and after in ("gateway", "reset"))


def test_gateway_statuses_alternate_and_reset_has_both_modes() -> None:
    inj = FaultInjector(FaultSpec(reset=1.0), 1)
    assert [inj.gateway_status() for _ in range(3)] == [502, 504, 502]
    modes = {inj.reset_mid_body() for _ in range(50)}
    assert modes == {True, False}


BODY = b'[{"Id":"a","RecordType":1,"Operation":"Set-Mailbox"},{"Id":"b","RecordType":2,"Operation":"Send"}]'


def test_malformed_bodies_never_parse_and_are_stable() -> None:
    errors = set()
    for i in range(30):
        content_id = f"2025$blob{i}$audit_exchange$Audit_Exchange"
        body = malformed_body(BODY, content_id)
        assert body == malformed_body(BODY, content_id)
        with pytest.raises(orjson.JSONDecodeError) as caught:
            orjson.loads(body)
        errors.add(str(caught.value).split(":")[0])
    # All three corruptions occur, each a different parser complaint.
    assert len(errors) == 3, errors


def test_a_malformed_body_is_corrupt_even_where_a_string_holds_escaped_json() -> None:
    body = orjson.dumps([{"Id": "a", "P": "x" * 12 + '{"k":1}'}])
    at = body.find(b'":', len(body) // 2)
    assert orjson.loads(body[:at] + b'"=' + body[at + 2 :]), "the naive corruption would still parse"
    for i in range(30):
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(malformed_body(body, f"2025$blob{i}$audit_exchange$Audit_Exchange"))


def test_oversize_body_is_big_and_holds_the_same_records() -> None:
    body = oversize_body(BODY)
    assert len(body) >= OVERSIZE_BYTES
    assert orjson.loads(body) == orjson.loads(BODY)


def _tenant() -> SyntheticTenant:
    return SyntheticTenant.generate(TENANT, seed=3, now=NOW, days=1, records_per_day=300, scenario="quiet")


def _marked(tenant: SyntheticTenant, attribute: str) -> set[str]:
    return {b.content_id for b in tenant.blobs if getattr(b, attribute)}


def test_blob_faults_are_disjoint_counted_and_do_not_move_each_other() -> None:
    tenant = _tenant()
    apply_blob_faults(tenant, FaultSpec.parse("expired=2,cutoff=1"), 5)
    before = {a: _marked(tenant, a) for a in ("expired", "cutoff")}
    apply_blob_faults(tenant, FaultSpec.parse("expired=2,cutoff=1,malformed=2,oversize=3,dupblobs=0.3"), 5)
    after = {a: _marked(tenant, a) for a in ("expired", "cutoff", "malformed", "oversize")}
    assert {a: after[a] for a in before} == before
    assert [len(after[a]) for a in ("expired", "cutoff", "malformed", "oversize")] == [2, 1, 2, 3]
    assert len(set().union(*after.values())) == 8
    reasons = {b.content_id: b.undeliverable_reason for b in tenant.blobs if b.undeliverable_reason}
    # A malformed blob is whole: a collector keeps every record around the corruption.
    assert reasons == {cid: a for a, ids in after.items() if a != "malformed" for cid in ids}
    duplicated = _marked(tenant, "duplicated")
    assert 0.15 < len(duplicated) / len(tenant.blobs) < 0.45
    again = _tenant()
    apply_blob_faults(again, FaultSpec.parse("expired=2,cutoff=1,malformed=2,oversize=3,dupblobs=0.3"), 5)
    assert _marked(again, "duplicated") == duplicated and _marked(again, "oversize") == after["oversize"]
    apply_blob_faults(again, FaultSpec(), 5)
    assert not any(b.undeliverable_reason or b.duplicated for b in again.blobs)
