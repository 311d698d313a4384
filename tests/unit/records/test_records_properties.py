"""Property tests: flatten and the normalisers hold their contracts for arbitrary JSON input."""

from __future__ import annotations

import copy
import ipaddress
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from function_app.lake.schema import AUDIT_RECORD
from function_app.records.flatten import flatten_record, record_key
from function_app.records.normalise import (
    classify_ipv4,
    normalise_ip,
    normalise_principal,
    parse_time,
    to_int,
)

from ._samples import blob_context
from .test_records_normalise import reference_ipv4

CTX = blob_context("b86ab9d4-fcf1-4b11-8a06-7a8f91b47fbd")
KINDS = {"public", "private", "loopback", "link-local", "unspecified", "invalid", "missing"}
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# orjson's domain: what the reader can hand to flatten (64-bit ints, finite floats).
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    # Strings that look like JSON, whole or cut off, so the embedded-JSON paths get exercised.
    st.sampled_from(["[]", "{}", '[{"a": 1}]', '{"x": [1, 2', "[1, 2...", "  [true]", "[EXTERNAL]"]),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=10), children, max_size=5),
    ),
    max_leaves=25,
)
name_value_entries = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"Name": st.one_of(st.sampled_from(["A", "B", "Included Updated Properties"]), json_values)},
            optional={"Value": json_values, "OldValue": json_values, "NewValue": json_values},
        ),
        json_values,
    ),
    max_size=6,
)
special_fields = st.fixed_dictionaries(
    {},
    optional={
        "Id": json_values,
        "ClientIP": st.one_of(json_values, st.sampled_from(["1.2.3.4:5", "[::1]:80", "ffff:10.0.0.1", "x:1"])),
        "ClientIPAddress": json_values,
        "ActorIpAddress": json_values,
        "CreationTime": st.one_of(json_values, st.sampled_from(["2026-11-20T10:00:00", "2026-11-20 10:00"])),
        "RecordType": st.one_of(json_values, st.sampled_from(["20", "-1", "1.0"])),
        "UserType": json_values,
        "Operation": json_values,
        "UserId": json_values,
        "OrganizationId": json_values,
        "AppAccessContext": json_values,
        "Parameters": st.one_of(name_value_entries, json_values, st.just('-Identity "x" -Force')),
        "ExtendedProperties": st.one_of(name_value_entries, json_values),
        "ModifiedProperties": st.one_of(name_value_entries, json_values),
        "OperationProperties": st.one_of(name_value_entries, json_values, st.just('[{"Name":"A","Value":"1"}]')),
        "DeviceProperties": st.one_of(name_value_entries, json_values),
    },
)
records = st.one_of(
    st.builds(
        lambda extra, special: {**extra, **special}, st.dictionaries(st.text(max_size=12), json_values), special_fields
    ),
    json_values,
)


@settings(SETTINGS, max_examples=250)
@given(records)
def test_flatten_never_raises_and_keeps_the_contract(record: Any) -> None:
    before = copy.deepcopy(record)
    row = flatten_record(record, CTX)
    assert tuple(row) == AUDIT_RECORD.column_names
    assert row["AuditData"] is record
    assert record == before
    record_id, record_type, operation = record_key(row)
    assert isinstance(record_id, str) and record_id
    assert type(record_type) is int and -(2**31) <= record_type < 2**31
    assert isinstance(operation, str)
    assert row["ClientIPKind"] in KINDS
    assert not [f for f in row["Quality"] if f.startswith("flatten:error")], row["Quality"]
    for name in ("Properties", "AuditData", "Quality"):
        orjson.dumps(row[name])
    if row["TimeGenerated"] is not None:
        assert row["TimeGenerated"].tzinfo is UTC


@SETTINGS
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=8))
def test_surrogate_id_ignores_key_order(record: dict[str, Any]) -> None:
    record.pop("Id", None)
    reordered = dict(reversed(list(record.items())))
    assert flatten_record(record, CTX)["Id"] == flatten_record(reordered, CTX)["Id"]


@SETTINGS
@given(st.one_of(st.text(max_size=60), json_values))
def test_normalise_ip_never_raises(raw: Any) -> None:
    info = normalise_ip(raw)
    assert info.kind in KINDS
    assert (info.address == "") == (info.kind in {"invalid", "missing"})
    assert info.port is None or 0 <= info.port <= 65535


@SETTINGS
@given(st.integers(min_value=0, max_value=2**32 - 1), st.one_of(st.none(), st.integers(0, 65535)))
def test_ipv4_fast_path_matches_ipaddress(number: int, port: int | None) -> None:
    address = str(ipaddress.IPv4Address(number))
    assert classify_ipv4(number) == reference_ipv4(address)
    text = address if port is None else f"{address}:{port}"
    info = normalise_ip(text)
    assert (info.address, info.port) == (address, port)
    mapped = normalise_ip(f"[::ffff:{address}]" + ("" if port is None else f":{port}"))
    assert (mapped.address, mapped.port, mapped.kind) == (address, port, info.kind)


@SETTINGS
@given(st.ip_addresses(v=6))
def test_ipv6_round_trips(ip: ipaddress.IPv6Address) -> None:
    info = normalise_ip(f"[{ip}]:443")
    expected = str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else str(ip)
    assert (info.address, info.port) == (expected, 443)


@SETTINGS
@given(st.one_of(st.text(max_size=40), json_values))
def test_normalise_principal_never_raises(raw: Any) -> None:
    principal, flags = normalise_principal(raw)
    assert principal == principal.lower()
    assert isinstance(flags, tuple)


@SETTINGS
@given(st.one_of(st.text(max_size=40), json_values))
def test_parse_time_never_raises(raw: Any) -> None:
    parsed = parse_time(raw)
    assert parsed is None or parsed.tzinfo is UTC


@SETTINGS
@given(
    st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(2999, 12, 30)),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
    st.sampled_from(["T", " "]),
)
def test_parse_time_round_trips(value: datetime, offset_minutes: int, separator: str) -> None:
    aware = value.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    assert parse_time(aware.isoformat(sep=separator)) == aware.astimezone(UTC)
    assert parse_time(value.isoformat(sep=separator)) == value.replace(tzinfo=UTC)


@SETTINGS
@given(st.integers(min_value=-(10**18), max_value=10**18))
def test_to_int_round_trips(number: int) -> None:
    assert to_int(number) == number
    assert to_int(str(number)) == number
    assert to_int(f" {number} ") == number


@SETTINGS
@given(json_values)
def test_to_int_never_raises(raw: Any) -> None:
    result = to_int(raw)
    assert result is None or type(result) is int
