"""Pure normalisation of single audit-record values: addresses, principals, times, numbers, enums.

Every function here accepts any value (records are untrusted input), never raises on it, and
returns the normalised value together with short flags describing what was wrong with the input.
Flags are returned unprefixed (``"invalid"``, ``"placeholder"``); the caller prefixes them with
the field they came from, so the same function serves ClientIP, MailboxOwnerUPN and the like.

Address classification (``IpInfo.kind``), checked in this order, first match wins:

=============  ===========================================================================
unspecified    ``0.0.0.0``, ``::``
loopback       ``127.0.0.0/8``, ``::1``
link-local     ``169.254.0.0/16``, ``fe80::/10``
private        RFC 1918 (``10/8``, ``172.16/12``, ``192.168/16``), shared CGNAT space
               ``100.64/10``, IPv6 unique-local ``fc00::/7`` and site-local ``fec0::/10``:
               addresses that name a host inside somebody's network
public         everything else that parses. Addresses that cannot be a real internet client
               (IPv4: ``0/8``, ``192.0.0/24``, documentation ``192.0.2/24``,
               ``198.51.100/24``, ``203.0.113/24``, benchmarking ``198.18/15``, multicast
               ``224/4``, reserved ``240/4``; IPv6: multicast and whatever ``ipaddress`` does not
               call global, e.g. ``2001:db8::/32``) are still ``public`` but carry the flag
               ``non-routable``
invalid        not an address (hostnames such as ``localhost:123``, garbage); address is ``""``
missing        ``None``, ``""`` or only whitespace
=============  ===========================================================================

``ipaddress`` calls documentation and benchmarking ranges "private". A SOC reading ``private``
expects an internal host it can look up in its own inventory; a documentation address in a
production log is nobody's internal host (it is test data, or spoofed), so it is kept out of
``private`` and marked with a flag instead.
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any, NamedTuple

from function_app.records.enums import RECORD_TYPE_NAMES, USER_TYPE_NAMES

KIND_PUBLIC = "public"
KIND_PRIVATE = "private"
KIND_LOOPBACK = "loopback"
KIND_LINK_LOCAL = "link-local"
KIND_UNSPECIFIED = "unspecified"
KIND_INVALID = "invalid"
KIND_MISSING = "missing"

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


class IpInfo(NamedTuple):
    """A delivered client address split into its parts.

    ``address`` is the bare address (no port, no brackets, IPv4-mapped IPv6 as IPv4) or ``""``
    when the input is not an address; ``port`` is set only when the input carried a valid one.
    """

    address: str
    port: int | None
    kind: str
    flags: tuple[str, ...] = ()


class EnumValue(NamedTuple):
    """A numeric enum field: its number (``None`` when absent or not a number), its name, flags."""

    value: int | None
    name: str
    flags: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# Addresses

_MISSING_IP = IpInfo("", None, KIND_MISSING)


def _v4_networks(*cidrs: str) -> tuple[ipaddress.IPv4Network, ...]:
    return tuple(ipaddress.IPv4Network(c) for c in cidrs)


# Checked in this order; the first network containing the address names its kind.
V4_KINDS: tuple[tuple[str, tuple[ipaddress.IPv4Network, ...]], ...] = (
    (KIND_UNSPECIFIED, _v4_networks("0.0.0.0/32")),
    (KIND_LOOPBACK, _v4_networks("127.0.0.0/8")),
    (KIND_LINK_LOCAL, _v4_networks("169.254.0.0/16")),
    (KIND_PRIVATE, _v4_networks("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")),
)
# "this network", IETF protocol assignments, documentation, benchmarking, multicast, reserved.
V4_NON_ROUTABLE = _v4_networks(
    "0.0.0.0/8",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
)
_NON_ROUTABLE = "non-routable"


def _v4_dispatch() -> tuple[tuple[tuple[int, int, str], ...], ...]:
    """Per first octet, the ``(network >> shift, shift, kind)`` rules that can apply to it.

    IPv4 is classified on the integer with this table: ipaddress objects and their ``is_*``
    properties cost tens of microseconds per address, and most first octets need no check at all.
    """
    rules = [(kind, net) for kind, nets in V4_KINDS for net in nets]
    rules += [(_NON_ROUTABLE, net) for net in V4_NON_ROUTABLE]
    table: list[list[tuple[int, int, str]]] = [[] for _ in range(256)]
    for kind, net in rules:
        shift = 32 - net.prefixlen
        first = int(net.network_address) >> 24
        last = int(net.broadcast_address) >> 24
        for octet in range(first, last + 1):
            table[octet].append((int(net.network_address) >> shift, shift, kind))
    return tuple(tuple(rules_for_octet) for rules_for_octet in table)


_V4_DISPATCH = _v4_dispatch()
_DOTTED_QUAD = re.compile(r"(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})")
_PRIVATE_V6 = tuple(ipaddress.IPv6Network(n) for n in ("fc00::/7", "fec0::/10"))

# Seen in the sample corpus as "ffff:10.11.0.229": an IPv4-mapped address that lost its leading
# "::". It is not valid IPv6 (two groups, no "::"), so reading it as IPv4 cannot shadow a real v6.
_ODD_MAPPED = re.compile(r"(?i)ffff:(\d{1,3}(?:\.\d{1,3}){3})")


def normalise_ip(raw: Any) -> IpInfo:
    """Split and classify a delivered client address; never raises.

    Accepts ``a.b.c.d``, ``a.b.c.d:port``, ``[v4]``, ``[v4]:port``, bare IPv6, ``[v6]``,
    ``[v6]:port`` and IPv4-mapped IPv6 in any of those forms. ``kind`` is exactly one of public,
    private, loopback, link-local, unspecified, invalid, missing (see the module docstring).
    Flags: ``whitespace`` (surrounding blanks removed), ``odd-mapped`` (``ffff:a.b.c.d`` read as
    IPv4), ``non-routable`` (public but cannot be a real client), ``not-a-string``.
    """
    if raw is None:
        return _MISSING_IP
    if type(raw) is str:
        return _normalise_ip_text(raw)
    return IpInfo("", None, KIND_INVALID, ("not-a-string",))


# Real logs repeat a small set of client addresses many times, so caching the parse pays off.
@lru_cache(maxsize=16384)
def _normalise_ip_text(raw: str) -> IpInfo:
    text = raw.strip()
    flags: tuple[str, ...] = ("whitespace",) if text != raw else ()
    if not text:
        return IpInfo("", None, KIND_MISSING, flags)
    host, port = _split_host_port(text)
    if host is None:
        return IpInfo("", None, KIND_INVALID, flags)
    if host[:5].lower() == "ffff:":
        odd = _ODD_MAPPED.fullmatch(host)
        if odd is not None:
            host = odd.group(1)
            flags += ("odd-mapped",)
    if ":" not in host:
        number = _ipv4_to_int(host)
        if number is None:
            return IpInfo("", None, KIND_INVALID, flags)
        return _ipv4_info(host, number, port, flags)
    try:
        ip = ipaddress.IPv6Address(host)
    except ValueError:
        return IpInfo("", None, KIND_INVALID, flags)
    mapped = ip.ipv4_mapped
    if mapped is not None:
        return _ipv4_info(str(mapped), int(mapped), port, flags)
    kind = _classify_v6(ip)
    if kind == KIND_PUBLIC and (ip.is_multicast or not ip.is_global):
        flags += ("non-routable",)
    return IpInfo(str(ip), port, kind, flags)


def _ipv4_to_int(text: str) -> int | None:
    """Dotted-quad to int with ipaddress's strictness (four decimal parts, no leading zeros)."""
    if _DOTTED_QUAD.fullmatch(text) is None:
        return None
    # The regex has fixed the shape, so inet_aton only has to reject octets above 255; it is
    # the fastest int conversion the stdlib offers.
    try:
        return int.from_bytes(socket.inet_aton(text), "big")
    except OSError:
        return None


def _ipv4_info(address: str, number: int, port: int | None, flags: tuple[str, ...]) -> IpInfo:
    kind, non_routable = classify_ipv4(number)
    if non_routable:
        flags += (_NON_ROUTABLE,)
    return IpInfo(address, port, kind, flags)


def classify_ipv4(number: int) -> tuple[str, bool]:
    """``(kind, non_routable)`` of the IPv4 address ``number`` (0..2**32-1)."""
    non_routable = False
    for prefix, shift, kind in _V4_DISPATCH[number >> 24]:
        if number >> shift == prefix:
            if kind != _NON_ROUTABLE:
                return kind, False
            non_routable = True
    return KIND_PUBLIC, non_routable


def _split_host_port(text: str) -> tuple[str | None, int | None]:
    """``(host, port)``; host ``None`` when the text has a bracket or port that does not parse."""
    colons = text.count(":")
    if colons == 0 and text[0] != "[":
        return text, None
    if text[0] == "[":
        close = text.find("]")
        if close < 0:
            return None, None
        rest = text[close + 1 :]
        if not rest:
            return text[1:close], None
        if rest[0] != ":":
            return None, None
        port = _port(rest[1:])
        return (text[1:close], port) if port is not None else (None, None)
    if colons == 1:
        host, _, tail = text.partition(":")
        port = _port(tail)
        if port is not None:
            return host, port
        # One colon without a numeric port: not host:port; maybe the odd "ffff:a.b.c.d" form.
    return text, None


def _port(text: str) -> int | None:
    if not (0 < len(text) <= 5 and text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value <= 65535 else None


def _classify_v6(ip: ipaddress.IPv6Address) -> str:
    if ip.is_unspecified:
        return KIND_UNSPECIFIED
    if ip.is_loopback:
        return KIND_LOOPBACK
    if ip.is_link_local:
        return KIND_LINK_LOCAL
    if any(ip in net for net in _PRIVATE_V6):
        return KIND_PRIVATE
    return KIND_PUBLIC


# ---------------------------------------------------------------------------------------------
# Principals

# Values the service (or an upstream converter) writes when it has no user.
_PLACEHOLDERS = frozenset({"not available", "unknown", "no upn", "n/a", "na", "none", "null", "(null)", "<null>", "-"})
# System identities named in the schema documentation and seen in real records.
_SYSTEM_ACCOUNTS = frozenset(
    {
        "nt authority\\system",
        "sharepoint\\system",
        "app@sharepoint",
        "s-1-5-18",
        "s-1-5-19",
        "s-1-5-20",
        "certificate",
        "securitycompliancealerts",
        "airinvestigation",
        "threatintel",
        "dlpagent",
        "service account",
        "application",
    }
)
_SYSTEM_PREFIXES = ("nt authority\\", "sharepoint\\", "dlppolicyeventbasedassistant")
_SERVICE_PRINCIPAL_PREFIX = "serviceprincipal_"
_SID = re.compile(r"s-1-\d+(?:-\d+)+")

_MISSING_PRINCIPAL: tuple[str, tuple[str, ...]] = ("", ("missing",))


def normalise_principal(user_id: Any) -> tuple[str, tuple[str, ...]]:
    """Return ``(principal, flags)`` for a delivered UserId; never raises.

    The principal is the trimmed, lower-cased value. It is ``""`` for ``None``/blank (flag
    ``missing``), for placeholders such as ``Not Available``, ``Unknown``, ``No UPN``, ``N/A``
    (flag ``placeholder``) and for non-strings (flag ``not-a-string``). Recognised non-user
    identities keep their lower-cased value so they can still be grouped and searched, and are
    flagged ``service-principal`` (``ServicePrincipal_<id>``), ``system-account``
    (``NT AUTHORITY\\SYSTEM (...)``, ``SHAREPOINT\\system``, ``app@sharepoint``, well-known SIDs,
    DLP/alert/investigation agents), ``exchange-legacy-name`` (``/o=ExchangeLabs/...`` DNs and
    ``.../Microsoft Exchange Hosted Organizations/...`` object paths) or ``sid`` (other SIDs).
    ``whitespace`` is added when blanks had to be trimmed.
    """
    if user_id is None:
        return _MISSING_PRINCIPAL
    if type(user_id) is str:
        return _normalise_principal_text(user_id)
    return "", ("not-a-string",)


@lru_cache(maxsize=16384)
def _normalise_principal_text(raw: str) -> tuple[str, tuple[str, ...]]:
    text = raw.strip()
    if not text:
        return _MISSING_PRINCIPAL
    flags: tuple[str, ...] = ("whitespace",) if text != raw else ()
    low = text.lower()
    if low in _PLACEHOLDERS:
        return "", (*flags, "placeholder")
    if low.startswith(_SERVICE_PRINCIPAL_PREFIX) and len(low) > len(_SERVICE_PRINCIPAL_PREFIX):
        return low, (*flags, "service-principal")
    if low in _SYSTEM_ACCOUNTS or low.startswith(_SYSTEM_PREFIXES):
        return low, (*flags, "system-account")
    if low.startswith("/o=") or "/microsoft exchange hosted organizations/" in low:
        return low, (*flags, "exchange-legacy-name")
    if low.startswith("s-1-") and _SID.fullmatch(low):
        return low, (*flags, "sid")
    return low, flags


# ---------------------------------------------------------------------------------------------
# Times

_TIME_FALLBACK = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt _](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r"\s*(Z|z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)?"
)


def parse_time(value: Any) -> datetime | None:
    """Parse a delivered timestamp into an aware UTC datetime, or ``None``; never raises.

    Accepts ISO 8601 with ``T`` or a space, with or without ``Z``/offset (no zone means UTC, as
    the API documents), fractions of any number of digits (truncated to microseconds), and a
    date alone (midnight UTC). ``datetime`` values are converted (naive ones taken as UTC).
    """
    if type(value) is str:
        return _parse_time_text(value)
    if isinstance(value, datetime):
        return _to_utc(value)
    return None


# A content blob holds many records created within the same seconds.
@lru_cache(maxsize=4096)
def _parse_time_text(raw: str) -> datetime | None:
    text = raw.strip()
    if not 10 <= len(text) <= 64 or not text[:4].isdigit():
        return None
    parsed: datetime | None
    if len(text) == 19:
        # The API's own form, 2026-12-03T10:11:12, has no zone: read with UTC's offset appended, it is
        # made aware in the one parse (0.2 against 0.5 microseconds). A text that has a zone after
        # all gets a second one, which fromisoformat refuses, and goes the general way below.
        try:
            parsed = datetime.fromisoformat(text + "+00:00")
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is UTC:
            return parsed
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        parsed = _parse_time_fallback(text)
    return None if parsed is None else _to_utc(parsed)


def _parse_time_fallback(text: str) -> datetime | None:
    m = _TIME_FALLBACK.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = m.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    tz: timezone = UTC
    if zone and zone[0] in "+-":
        digits = zone[1:].replace(":", "")
        offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or "0"))
        if offset >= timedelta(hours=24):
            return None
        tz = timezone(-offset if zone[0] == "-" else offset)
    try:
        return datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0), micro, tz)
    except ValueError:
        return None


def _to_utc(value: datetime) -> datetime | None:
    if value.tzinfo is None:
        # combine() is several times faster than replace(tzinfo=...) on CPython 3.11.
        return datetime.combine(value.date(), value.time(), UTC)
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# Numbers and enums


def to_int(value: Any) -> int | None:
    """Return ``value`` as an int when it denotes one exactly, else ``None``; never raises.

    Accepts ints, integral finite floats (``2.0``) and strings holding either (``" 20 "``,
    ``"1.0"``, ``"1e3"``). Bools are not ints; digit separators (``1_000``) are not accepted.
    """
    kind = type(value)
    if kind is int:
        return int(value)
    if kind is bool:
        return None
    if kind is float:
        return int(value) if value.is_integer() else None
    if kind is str:
        return _text_to_int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    return None


def _text_to_int(value: str) -> int | None:
    text = value.strip()
    if not text or len(text) > 32 or "_" in text or not text.isascii():
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if math.isfinite(number) and number.is_integer() else None


def normalise_enum(raw: Any, names: Mapping[int, str]) -> EnumValue:
    """Read a numeric enum field (int or numeric string) and name it from ``names``; never raises.

    Flags: ``missing`` (``None`` or ``""``), ``unparseable`` (not an integer, or outside the
    32-bit range KQL ``int`` holds; value ``None``), ``string`` / ``float`` (the number arrived
    in that type), ``unknown-value`` (a number the enum does not list; name ``""``).
    """
    if type(raw) is int:
        if INT32_MIN <= raw <= INT32_MAX:
            name = names.get(raw)
            return EnumValue(raw, name) if name is not None else EnumValue(raw, "", ("unknown-value",))
        return EnumValue(None, "", ("unparseable",))
    if raw is None or raw == "":
        return EnumValue(None, "", ("missing",))
    number = to_int(raw)
    if number is None or not INT32_MIN <= number <= INT32_MAX:
        return EnumValue(None, "", ("unparseable",))
    kind = type(raw)
    drift: tuple[str, ...] = ("string",) if kind is str else ("float",) if kind is float else ()
    name = names.get(number)
    if name is None:
        return EnumValue(number, "", (*drift, "unknown-value"))
    return EnumValue(number, name, drift)


def record_type_name(value: int | None) -> str:
    """AuditLogRecordType member name as published (``"Viva Engage"`` included); ``""`` if unknown."""
    return RECORD_TYPE_NAMES.get(value, "") if value is not None else ""


def user_type_name(value: int | None) -> str:
    """UserType member name; ``""`` if unknown."""
    return USER_TYPE_NAMES.get(value, "") if value is not None else ""
