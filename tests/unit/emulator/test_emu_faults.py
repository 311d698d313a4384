"""FaultSpec grammar and the injector's decisions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from function_app.emulator.faults import PAGE_HEADER_SPELLINGS, FaultInjector, FaultSpec, cutoff_body

FULL = (
    "throttle=0.1,throttle429=0.05,5xx=0.05,slow=0.02:1.5,truncate=0.05,shuffle,late=0.1,expired=2,cutoff=1,"
    "headercase"
)


def test_parse_full_spec() -> None:
    spec = FaultSpec.parse(FULL)
    assert spec == FaultSpec(
        throttle=0.1, throttle429=0.05, server_error=0.05, slow=0.02, slow_seconds=1.5, truncate=0.05,
        shuffle=True, late=0.1, expired=2, cutoff=1, headercase=True,
    )
    assert spec.active


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
    ],
)
def test_bad_specs_name_the_key(text: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        FaultSpec.parse(text)


probability = st.sampled_from([0.0, 0.05, 0.25, 1.0])


@given(
    throttle=probability, throttle429=probability, server_error=probability, slow=probability,
    slow_seconds=st.sampled_from([0.0, 0.5, 2.0]), truncate=probability, shuffle=st.booleans(), late=probability,
    expired=st.integers(0, 5), cutoff=st.integers(0, 5), headercase=st.booleans(),
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
    cut = FaultInjector(FaultSpec(truncate=1.0), 2).truncate(body)
    assert cut is not None and body.startswith(cut) and 0 < len(cut) < len(body)
    assert FaultInjector(FaultSpec(), 2).truncate(body) is None
    assert cutoff_body(body, "a$b") == cutoff_body(body, "a$b")
    assert len(cutoff_body(body, "a$b")) < len(body)
