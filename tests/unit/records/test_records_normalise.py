"""Normalisation rules, on values found in the sample corpus at test time and on literals."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from function_app.records.normalise import (
    IpInfo,
    classify_ipv4,
    normalise_enum,
    normalise_ip,
    normalise_principal,
    parse_time,
    record_type_name,
    to_int,
    user_type_name,
)

from ._samples import all_records, load, require_samples

require_samples()

# ---------------------------------------------------------------------------------------------
# ClientIP

# Expected (address, port, kind) for every ClientIP form in Elastic's ip-formats fixture.
IP_FORMATS = {
    "10.11.12.13": ("10.11.12.13", None, "private"),
    "10.11.12.13:12345": ("10.11.12.13", 12345, "private"),
    "[10.11.12.13]": ("10.11.12.13", None, "private"),
    "[10.11.12.13]:12345": ("10.11.12.13", 12345, "private"),
    "::ffff:10.11.12.13": ("10.11.12.13", None, "private"),
    "[::ffff:10.11.12.13]:12345": ("10.11.12.13", 12345, "private"),
    "2001:db8::abcd": ("2001:db8::abcd", None, "public"),
    "[2001:db8::abcd]": ("2001:db8::abcd", None, "public"),
    "[2001:db8::abcd]:12345": ("2001:db8::abcd", 12345, "public"),
    "localhost": ("", None, "invalid"),
    "localhost:12345": ("", None, "invalid"),
    "[localhost]:12345": ("", None, "invalid"),
    "cool.client.local": ("", None, "invalid"),
    "cool.client.local:12345": ("", None, "invalid"),
    "[cool.client.local]:12345": ("", None, "invalid"),
}


def test_every_ip_form_of_the_ip_formats_fixture() -> None:
    seen = set()
    for record in load("elastic-beats/ip-formats.log"):
        raw = record["ClientIP"]
        seen.add(raw)
        info = normalise_ip(raw)
        assert (info.address, info.port, info.kind) == IP_FORMATS[raw], raw
    assert seen == set(IP_FORMATS)


def test_documentation_range_is_public_but_flagged_non_routable() -> None:
    info = normalise_ip("[2001:db8::abcd]:12345")
    assert info.kind == "public" and "non-routable" in info.flags
    assert normalise_ip("203.0.113.7").flags == ("non-routable",)
    assert normalise_ip("192.0.2.10").kind == "public"


def sample_values(field: str) -> list[Any]:
    return [r[field] for _, r in all_records() if isinstance(r, dict) and field in r]


def test_odd_ffff_prefix_from_the_corpus_is_read_as_ipv4() -> None:
    odd = [v for v in sample_values("ClientIP") if isinstance(v, str) and v.lower().startswith("ffff:")]
    assert odd, "corpus no longer has the ffff:a.b.c.d form"
    for raw in odd:
        info = normalise_ip(raw)
        assert info.address == raw[5:]
        assert info.flags == ("odd-mapped",)
        assert info.kind == "private"


def test_loopback_unspecified_and_empty_from_the_corpus() -> None:
    values = set(v for v in sample_values("ClientIP") if isinstance(v, str))
    assert {"::1", "0.0.0.0", ""} <= values
    assert normalise_ip("::1") == IpInfo("::1", None, "loopback")
    assert normalise_ip("0.0.0.0") == IpInfo("0.0.0.0", None, "unspecified")
    assert normalise_ip("").kind == "missing"


def test_every_corpus_address_gets_exactly_one_kind() -> None:
    for field in ("ClientIP", "ClientIPAddress", "ActorIpAddress"):
        for raw in sample_values(field):
            info = normalise_ip(raw)
            assert info.kind in {"public", "private", "loopback", "link-local", "unspecified", "invalid", "missing"}
            assert (info.address == "") == (info.kind in {"invalid", "missing"})


def test_bad_client_ip_addresses_of_the_elastic_fixture_are_invalid() -> None:
    bad = [r["ClientIPAddress"] for r in load("elastic-integrations/test-bad-ips.json") if "ClientIPAddress" in r]
    assert len(bad) >= 3
    for raw in bad:
        assert normalise_ip(raw) == IpInfo("", None, "invalid"), raw


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, IpInfo("", None, "missing")),
        ("   ", IpInfo("", None, "missing", ("whitespace",))),
        (" 52.159.112.221", IpInfo("52.159.112.221", None, "public", ("whitespace",))),
        ("1.2.3.4:51234", IpInfo("1.2.3.4", 51234, "public")),
        ("[2001:db8::1]", IpInfo("2001:db8::1", None, "public", ("non-routable",))),
        ("[::ffff:1.2.3.4]:123", IpInfo("1.2.3.4", 123, "public")),
        ("::FFFF:192.168.1.1", IpInfo("192.168.1.1", None, "private")),
        ("FFFF:10.0.0.1", IpInfo("10.0.0.1", None, "private", ("odd-mapped",))),
        ("127.0.0.1:80", IpInfo("127.0.0.1", 80, "loopback")),
        ("::", IpInfo("::", None, "unspecified")),
        ("169.254.10.1", IpInfo("169.254.10.1", None, "link-local")),
        ("fe80::1", IpInfo("fe80::1", None, "link-local")),
        ("172.16.0.1", IpInfo("172.16.0.1", None, "private")),
        ("172.32.0.1", IpInfo("172.32.0.1", None, "public")),
        ("192.168.0.1", IpInfo("192.168.0.1", None, "private")),
        ("100.64.0.1", IpInfo("100.64.0.1", None, "private")),
        ("fd12:3456::1", IpInfo("fd12:3456::1", None, "private")),
        ("2001:4860:4860::8888", IpInfo("2001:4860:4860::8888", None, "public")),
        ("2001:DB8:0:0::ABCD", IpInfo("2001:db8::abcd", None, "public", ("non-routable",))),
        ("224.0.0.1", IpInfo("224.0.0.1", None, "public", ("non-routable",))),
        ("1.2.3.4:99999", IpInfo("", None, "invalid")),
        ("1.2.3.4:", IpInfo("", None, "invalid")),
        ("1.2.3", IpInfo("", None, "invalid")),
        ("01.2.3.4", IpInfo("", None, "invalid")),
        ("1.2.3.256", IpInfo("", None, "invalid")),
        ("[1.2.3.4", IpInfo("", None, "invalid")),
        ("[1.2.3.4]x", IpInfo("", None, "invalid")),
        ("ffff:1.2.3", IpInfo("", None, "invalid")),
        ("garbage", IpInfo("", None, "invalid")),
        (12345, IpInfo("", None, "invalid", ("not-a-string",))),
        (["1.2.3.4"], IpInfo("", None, "invalid", ("not-a-string",))),
    ],
)
def test_normalise_ip(raw: Any, expected: IpInfo) -> None:
    assert normalise_ip(raw) == expected


@pytest.mark.parametrize(
    "address",
    ["0.0.0.0", "0.1.2.3", "10.255.255.255", "100.127.255.255", "100.128.0.0", "127.0.0.1", "169.254.0.0",
     "172.15.255.255", "172.31.255.255", "192.0.0.8", "192.0.2.255", "192.88.99.1", "192.168.255.255",
     "198.17.255.255", "198.19.255.255", "198.51.100.1", "203.0.113.255", "223.255.255.255", "224.0.0.0",
     "239.255.255.255", "240.0.0.1", "255.255.255.255", "8.8.8.8"],
)  # fmt: skip
def test_ipv4_table_agrees_with_ipaddress_reference(address: str) -> None:
    assert classify_ipv4(int(ipaddress.IPv4Address(address))) == reference_ipv4(address)


def reference_ipv4(address: str) -> tuple[str, bool]:
    """The documented classification, written with ipaddress objects (slow, obviously right)."""
    ip = ipaddress.IPv4Address(address)
    if ip.is_unspecified:
        return "unspecified", False
    if ip.is_loopback:
        return "loopback", False
    if ip.is_link_local:
        return "link-local", False
    private = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
    if any(ip in ipaddress.IPv4Network(n) for n in private):
        return "private", False
    non_routable = ("0.0.0.0/8", "192.0.0.0/24", "192.0.2.0/24", "198.18.0.0/15", "198.51.100.0/24",
                    "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4")  # fmt: skip
    return "public", any(ip in ipaddress.IPv4Network(n) for n in non_routable)


# ---------------------------------------------------------------------------------------------
# Principals


def test_system_accounts_and_service_principals_of_the_corpus() -> None:
    user_ids = {v for v in sample_values("UserId") if isinstance(v, str)}
    system = [u for u in user_ids if u.upper().startswith(("NT AUTHORITY\\", "S-1-5-18", "APP@SHAREPOINT"))]
    assert len(system) >= 3
    for user_id in system:
        principal, flags = normalise_principal(user_id)
        assert flags == ("system-account",), user_id
        assert principal == user_id.lower()
    service_principals = [u for u in user_ids if u.startswith("ServicePrincipal_")]
    assert service_principals
    for user_id in service_principals:
        assert normalise_principal(user_id) == (user_id.lower(), ("service-principal",))


def test_exchange_system_account_variants_collapse_to_one_principal() -> None:
    # The corpus spells the same account "...ServiceHost)" and "...Servicehost)".
    variants = {v for v in sample_values("UserId") if isinstance(v, str) and v.startswith("NT AUTHORITY\\SYSTEM (")}
    assert len(variants) >= 2
    assert len({normalise_principal(v)[0] for v in variants}) == 1


def test_placeholder_user_key_from_the_corpus() -> None:
    placeholders = [v for v in sample_values("UserKey") if v == "Not Available"]
    assert placeholders
    assert normalise_principal(placeholders[0]) == ("", ("placeholder",))


def test_every_corpus_upn_is_lower_cased_and_unflagged() -> None:
    for user_id in sample_values("UserId"):
        if isinstance(user_id, str) and "@" in user_id and user_id.lower() != "app@sharepoint":
            assert normalise_principal(user_id) == (user_id.lower(), ())


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Alice@Contoso.COM", ("alice@contoso.com", ())),
        ("  bob@contoso.com ", ("bob@contoso.com", ("whitespace",))),
        (None, ("", ("missing",))),
        ("", ("", ("missing",))),
        ("   ", ("", ("missing",))),
        ("Not Available", ("", ("placeholder",))),
        ("Unknown", ("", ("placeholder",))),
        ("No UPN", ("", ("placeholder",))),
        ("N/A", ("", ("placeholder",))),
        ("ServicePrincipal_6d5a8f31-1111-4222-8333-944455556666",
         ("serviceprincipal_6d5a8f31-1111-4222-8333-944455556666", ("service-principal",))),
        ("NT AUTHORITY\\SYSTEM (w3wp)", ("nt authority\\system (w3wp)", ("system-account",))),
        ("SHAREPOINT\\system", ("sharepoint\\system", ("system-account",))),
        ("app@sharepoint", ("app@sharepoint", ("system-account",))),
        ("S-1-5-18", ("s-1-5-18", ("system-account",))),
        ("S-1-5-21-1111-2222-3333-1001", ("s-1-5-21-1111-2222-3333-1001", ("sid",))),
        ("/o=ExchangeLabs/ou=Exchange Administrative Group (FYDIBOHF23SPDLT)/cn=Recipients/cn=abc-alice",
         ("/o=exchangelabs/ou=exchange administrative group (fydibohf23spdlt)/cn=recipients/cn=abc-alice",
          ("exchange-legacy-name",))),
        ("NAMPR01.prod.outlook.com/Microsoft Exchange Hosted Organizations/contoso.onmicrosoft.com/alice",
         ("nampr01.prod.outlook.com/microsoft exchange hosted organizations/contoso.onmicrosoft.com/alice",
          ("exchange-legacy-name",))),
        (42, ("", ("not-a-string",))),
    ],
)  # fmt: skip
def test_normalise_principal(raw: Any, expected: tuple[str, tuple[str, ...]]) -> None:
    assert normalise_principal(raw) == expected


# ---------------------------------------------------------------------------------------------
# Times


def test_space_separated_creation_times_of_the_corpus() -> None:
    spaced = [v for v in sample_values("CreationTime") if isinstance(v, str) and " " in v]
    assert spaced, "corpus no longer has space-separated CreationTime values"
    for raw in spaced:
        assert parse_time(raw) == parse_time(raw.replace(" ", "T"))
        assert parse_time(raw) is not None


def test_every_corpus_creation_time_parses_to_utc() -> None:
    for _, record in all_records():
        raw = record.get("CreationTime") if isinstance(record, dict) else None
        if raw is not None:
            parsed = parse_time(raw)
            assert parsed is not None and parsed.tzinfo is UTC, raw
            assert parsed.replace(tzinfo=None).isoformat() == raw.replace(" ", "T")


T = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-11-20T10:00:00", T),
        ("2026-11-20T10:00:00Z", T),
        ("2026-11-20t10:00:00z", T),
        ("2026-11-20 10:00:00", T),
        ("2026-11-20T11:30:00+01:30", T),
        ("2026-11-20T05:00:00-0500", T),
        ("2026-11-20T10:00:00 UTC", T),
        ("  2026-11-20T10:00:00  ", T),
        ("2026-11-20T10:00:00.5", T.replace(microsecond=500000)),
        ("2026-11-20T10:00:00.1234567Z", T.replace(microsecond=123456)),
        ("2026-11-20T10:00:00.123456789", T.replace(microsecond=123456)),
        ("2026-11-20T10:00:00,25", T.replace(microsecond=250000)),
        ("2026-11-20", T.replace(hour=0)),
        ("2026-11-20T10:00", T),
        (datetime(2026, 11, 20, 10, 0), T),
        (datetime(2026, 11, 20, 12, 0, tzinfo=timezone(timedelta(hours=2))), T),
        ("2026-13-20T10:00:00", None),
        ("2026-11-20T25:00:00", None),
        ("0001-01-01T00:00:00+01:00", None),
        ("yesterday", None),
        ("", None),
        (None, None),
        (1763632800, None),
        ("2026-11-20T10:00:00+25:00", None),
        # Nineteen characters, the API's own length, with a zone after all or not a time.
        ("2026-11-20T11:30+01", T.replace(minute=30)),
        ("2026-11-20T05:00-05", T),
        ("2026-11-20T10:00:60", None),
        ("2026-02-29T10:00:00", None),
    ],
)
def test_parse_time(raw: Any, expected: datetime | None) -> None:
    parsed = parse_time(raw)
    assert parsed == expected
    if parsed is not None:
        assert parsed.tzinfo is UTC


# ---------------------------------------------------------------------------------------------
# Numbers and enums


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (20, 20),
        (-1, -1),
        ("20", 20),
        (" 20 ", 20),
        ("-1", -1),
        ("1.0", 1),
        ("1e3", 1000),
        (2.0, 2),
        (2.5, None),
        ("2.5", None),
        (True, None),
        (False, None),
        ("", None),
        ("abc", None),
        ("1_000", None),
        ("nan", None),
        ("inf", None),
        (float("inf"), None),
        (float("nan"), None),
        (None, None),
        ([1], None),
        ("9" * 40, None),
    ],
)
def test_to_int(raw: Any, expected: int | None) -> None:
    result = to_int(raw)
    assert result == expected and (result is None or type(result) is int)


def test_record_types_as_strings_in_the_corpus_get_their_names() -> None:
    strings = [v for v in sample_values("RecordType") if isinstance(v, str)]
    assert strings
    for raw in strings:
        value = normalise_enum(raw, {int(raw): "X"})
        assert value.value == int(raw) and "string" in value.flags
        assert record_type_name(int(raw)) != ""


def test_enum_names_as_published() -> None:
    assert record_type_name(22) == "Viva Engage"
    assert record_type_name(216) == "Viva Goals"
    assert record_type_name(50) == "ExchangeItemAggregated"
    assert record_type_name(-1) == ""
    assert record_type_name(None) == ""
    assert user_type_name(2) == "Admin"
    assert user_type_name(99) == ""


@pytest.mark.parametrize(
    ("raw", "value", "name", "flags"),
    [
        (15, 15, "AzureActiveDirectoryStsLogon", ()),
        ("15", 15, "AzureActiveDirectoryStsLogon", ("string",)),
        (15.0, 15, "AzureActiveDirectoryStsLogon", ("float",)),
        (-1, -1, "", ("unknown-value",)),
        ("5", 5, "", ("string", "unknown-value")),
        (None, None, "", ("missing",)),
        ("", None, "", ("missing",)),
        ("fifteen", None, "", ("unparseable",)),
        (True, None, "", ("unparseable",)),
        (2**40, None, "", ("unparseable",)),
        ({"v": 1}, None, "", ("unparseable",)),
    ],
)
def test_normalise_enum(raw: Any, value: int | None, name: str, flags: tuple[str, ...]) -> None:
    from function_app.records.enums import RECORD_TYPE_NAMES

    result = normalise_enum(raw, RECORD_TYPE_NAMES)
    assert (result.value, result.name, result.flags) == (value, name, flags)
