"""Fault injection for the Management Activity API emulator.

A :class:`FaultSpec` is parsed from a short string (the CLI's ``--faults``); a
:class:`FaultInjector` turns it into per-request decisions drawn from one seeded
``random.Random`` so a sequential client sees the same faults on every run.
Blob-level faults (late, expired, cutoff, malformed, oversize, dupblobs, hostile,
hugestring) are fixed once per tenant by :func:`apply_blob_faults`, also from the seed.

:func:`delivery` says what a perfect collector keeps of a faulted blob (the ground truth of
``/_emulator/truth``). It is worked out from the byte span of each record in the body, never by
reading records back out of a body, so the truth shares no parser's mistakes with the collector
it judges.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import random
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from auditlake.emulator.incident import RecordKey

if TYPE_CHECKING:
    from auditlake.emulator.tenant import EmulatedBlob, SyntheticTenant

log = logging.getLogger(__name__)

T = TypeVar("T")

# The paging header in the three spellings clients meet in the wild; the rotation is
# what makes a case-sensitive header lookup fail fast in tests.
PAGE_HEADER_SPELLINGS: tuple[str, ...] = ("nextpageuri", "NEXTPAGEURI", "NextPageUri")

# A padded ``oversize`` blob is at least this big: above any limit a test sets with
# AUDITLAKE_MAX_BLOB_BYTES, far below the collector's default of 256 MiB.
OVERSIZE_BYTES = 2 * 1024 * 1024

# The string value a ``hugestring`` record carries: 50 MB of ASCII that needs no escaping, so the
# value's length in a lake is this number exactly.
HUGE_STRING_CHARS = 50 * 1000 * 1000

# How deep the deepest ``hostile`` structures nest: past what orjson writes (254 levels), well
# within what it and Python's json read.
HOSTILE_DEPTH = 300

# Request faults in the order their probabilities are stacked on one draw; new kinds go at
# the end so an existing spec keeps drawing the same faults for the same seed.
REQUEST_FAULTS: tuple[str, ...] = ("throttle", "throttle429", "5xx", "gateway", "reset")

_PROBABILITY_KEYS = {
    "throttle": "throttle",
    "throttle429": "throttle429",
    "5xx": "server_error",
    "gateway": "gateway",
    "reset": "reset",
    "truncate": "truncate",
    "late": "late",
    "dupblobs": "dupblobs",
    "search_throttle": "search_throttle",
    "entra_throttle": "entra_throttle",
    "entra_5xx": "entra_server_error",
    "entra_cutoff": "entra_cutoff",
    "entra_dup": "entra_dup",
    "entra_late": "entra_late",
    "entra_drift": "entra_drift",
}
_COUNT_KEYS = {"expired": "expired", "cutoff": "cutoff", "malformed": "malformed", "oversize": "oversize",
               "hostile": "hostile", "hugestring": "hugestring", "feedmissing": "feedmissing",
               "search_stuck": "search_stuck", "search_fail": "search_fail", "search_flaky": "search_flaky"}
# Counts that only mean something from 1 up; the field default stands for "off".
_POSITIVE_KEYS = {"burst": "burst", "pagesize": "pagesize", "search_limit": "search_limit"}
# A positive number of days; the field default (0) stands for "no limit".
_DAYS_KEYS = {"search_max_days": "search_max_days"}
_FLAG_KEYS = {"shuffle": "shuffle", "headercase": "headercase", "entra_nopremium": "entra_nopremium",
              "entra_noperm": "entra_noperm"}
_TRUE = {"", "1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def stable_seed(*parts: object) -> int:
    """A 64-bit seed derived from *parts*; unlike ``hash()`` it is the same in every process."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _probability(key: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"fault {key!r}: {raw!r} is not a probability") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"fault {key!r}: probability {value} is outside [0, 1]")
    return value


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """Which faults the emulator injects, and how often.

    Grammar: comma-separated items, each ``key=value`` or a bare flag; ``""`` means none.

    Per request, a probability in [0, 1]: ``throttle=P`` (HTTP 403 + AF429),
    ``throttle429=P`` (HTTP 429 + AF429 + ``Retry-After``), ``5xx=P`` (500/503 + AF50000),
    ``gateway=P`` (502/504 with an HTML body and no AF code, as a front end answers),
    ``reset=P`` (the connection is closed: before any answer, or halfway through the body),
    ``truncate=P`` (a blob body cut short once), ``slow=P:SECONDS`` (SECONDS defaults to 1).
    ``burst=N`` repeats each throttle/throttle429/5xx/gateway/reset fault on the next N-1
    API requests as well, so faults come in runs, as a spent quota or an outage does.

    Per blob: ``late=P`` (hidden from the first listing that covers it), ``dupblobs=P``
    (listed twice in its own listing, and again by a window that starts within 6 h after
    it); ``expired=N``, ``cutoff=N`` (always cut off), ``malformed=N`` (always corrupt
    JSON) and ``oversize=N`` (padded to at least :data:`OVERSIZE_BYTES`) take a blob count
    per tenant, and so do the two that add records beside a blob's own:
    ``hostile=N`` (the records of :func:`hostile_records`: an inbox rule named with
    :data:`HOSTILE_DEPTH` ``[`` then as many ``]``, a record nested :data:`HOSTILE_DEPTH`
    levels deep, and one record each with a lone surrogate escape, ``NaN``, ``Infinity``,
    ``1e400`` and a byte that is not UTF-8 inside a string) and ``hugestring=N`` (one record
    holding a string of :data:`HUGE_STRING_CHARS` characters). ``pagesize=N`` pages listings
    every N items. ``shuffle`` and ``headercase`` are flags (``=0``/``=false`` turns them off).

    ``feedmissing=N`` (per tenant): N records the audit search returns but the feed never delivers,
    taken out of the blobs that carried them (see :meth:`SyntheticTenant.withhold_from_feed`).

    The audit search (Graph ``/security/auditLog/queries``, :mod:`auditlake.emulator.purview`) has
    its own faults, counted over the queries of the whole emulator in the order they are created:
    ``search_stuck=N`` (the first N queries never leave ``running``), ``search_fail=N`` (the N
    queries after those end ``failed``), ``search_flaky=N`` (the first N queries that succeed drop
    about one record in 50 from the pages of their first paging; a second paging returns them all),
    ``search_limit=K`` (a query matching more than K records succeeds with
    ``isRecordCountLimitExceeded`` true and serves only the K earliest), ``search_throttle=P`` (each
    search request answers 429 with ``Retry-After: 1``) and ``search_max_days=D`` (a query spanning
    more than D days, or with an open end, ends ``failed``, as a timeout; it takes no place in the
    stuck, fail or flaky counts).

    The Entra ID logs (Graph ``/auditLogs/signIns`` and ``/auditLogs/directoryAudits``,
    :mod:`auditlake.emulator.entra`) have theirs, each drawn from its own stream: per request
    ``entra_throttle=P`` (429 with ``Retry-After: 1``), ``entra_5xx=P`` (500, 503, 504 in turn) and
    ``entra_cutoff=P`` (a page's body cut halfway); per page boundary ``entra_dup=P`` (a page begins
    with the last record of the one before); per record ``entra_late=P`` (visible 1 to 4 hours after
    its time) and ``entra_drift=P`` (properties no schema has); and two flags, ``entra_nopremium``
    (sign-ins answer 403 ``Authentication_RequestFromNonPremiumTenantOrB2CTenant``) and
    ``entra_noperm`` (both logs answer 403 ``Authentication_MSGraphPermissionMissing``).
    """

    throttle: float = 0.0
    throttle429: float = 0.0
    server_error: float = 0.0
    slow: float = 0.0
    slow_seconds: float = 0.0
    truncate: float = 0.0
    shuffle: bool = False
    late: float = 0.0
    expired: int = 0
    cutoff: int = 0
    headercase: bool = False
    gateway: float = 0.0
    reset: float = 0.0
    burst: int = 1
    malformed: int = 0
    oversize: int = 0
    dupblobs: float = 0.0
    pagesize: int = 0
    hostile: int = 0
    hugestring: int = 0
    feedmissing: int = 0
    search_stuck: int = 0
    search_fail: int = 0
    search_limit: int = 0
    search_flaky: int = 0
    search_throttle: float = 0.0
    search_max_days: float = 0.0
    entra_throttle: float = 0.0
    entra_server_error: float = 0.0
    entra_cutoff: float = 0.0
    entra_dup: float = 0.0
    entra_late: float = 0.0
    entra_drift: float = 0.0
    entra_nopremium: bool = False
    entra_noperm: bool = False

    @classmethod
    def parse(cls, spec: str) -> FaultSpec:
        """Parse *spec*; raise ValueError naming the offending key for anything not in the grammar."""
        values: dict[str, Any] = {}
        seen: set[str] = set()
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            key, sep, raw = item.partition("=")
            key, raw = key.strip().lower(), raw.strip()
            if key in seen:
                raise ValueError(f"fault {key!r} given twice")
            seen.add(key)
            if key in _FLAG_KEYS:
                if raw.lower() in _TRUE:
                    values[_FLAG_KEYS[key]] = True
                elif raw.lower() in _FALSE:
                    values[_FLAG_KEYS[key]] = False
                else:
                    raise ValueError(f"fault {key!r}: {raw!r} is not a flag value")
            elif not sep:
                raise ValueError(f"fault {key!r} needs a value" if _known(key) else f"unknown fault {key!r}")
            elif key in _PROBABILITY_KEYS:
                values[_PROBABILITY_KEYS[key]] = _probability(key, raw)
            elif key in _COUNT_KEYS or key in _POSITIVE_KEYS:
                try:
                    count = int(raw)
                except ValueError:
                    raise ValueError(f"fault {key!r}: {raw!r} is not a whole number") from None
                if key in _POSITIVE_KEYS and count < 1:
                    raise ValueError(f"fault {key!r}: {count} is less than 1")
                if count < 0:
                    raise ValueError(f"fault {key!r}: {count} is negative")
                values[{**_COUNT_KEYS, **_POSITIVE_KEYS}[key]] = count
            elif key in _DAYS_KEYS:
                try:
                    days = float(raw)
                except ValueError:
                    raise ValueError(f"fault {key!r}: {raw!r} is not a number of days") from None
                if not days > 0 or days == float("inf"):
                    raise ValueError(f"fault {key!r}: {raw!r} is not a positive number of days")
                values[_DAYS_KEYS[key]] = days
            elif key == "slow":
                prob, _, secs = raw.partition(":")
                values["slow"] = _probability(key, prob)
                try:
                    values["slow_seconds"] = float(secs) if secs else 1.0
                except ValueError:
                    raise ValueError(f"fault 'slow': {secs!r} is not a number of seconds") from None
                if values["slow_seconds"] < 0:
                    raise ValueError("fault 'slow': seconds must not be negative")
            else:
                raise ValueError(f"unknown fault {key!r}")
        return cls(**values)

    @property
    def active(self) -> bool:
        """True when at least one fault is switched on."""
        return self != FaultSpec()

    def __str__(self) -> str:
        """The canonical spec string; ``FaultSpec.parse(str(spec)) == spec``."""
        parts: list[str] = []
        names = {v: k for k, v in {**_PROBABILITY_KEYS, **_COUNT_KEYS, **_POSITIVE_KEYS, **_DAYS_KEYS}.items()}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "slow_seconds" or value == f.default:
                continue
            if f.name in _FLAG_KEYS:
                parts.append(f.name)
            elif f.name == "slow":
                parts.append(f"slow={value}:{self.slow_seconds}")
            else:
                parts.append(f"{names[f.name]}={value}")
        return ",".join(parts)


def _known(key: str) -> bool:
    return (key in _PROBABILITY_KEYS or key in _COUNT_KEYS or key in _POSITIVE_KEYS or key in _FLAG_KEYS
            or key in _DAYS_KEYS or key == "slow")


class FaultInjector:
    """Per-request fault decisions for one emulator, with a count of what was injected.

    Every decision consumes the same seeded generator, so the sequence of faults is a pure
    function of the seed and the order of requests.
    """

    def __init__(self, spec: FaultSpec, seed: int) -> None:
        self.spec = spec
        self.rng = random.Random(stable_seed(seed, "requests"))
        self.injected: Counter[str] = Counter()
        self._5xx_turn = 0
        self._gateway_turn = 0
        self._header_turn = 0
        self._burst_kind: str | None = None
        self._burst_left = 0
        self._truncated: set[str] = set()

    def request_fault(self) -> str | None:
        """One of :data:`REQUEST_FAULTS` or None for this API request.

        While a burst runs no random number is drawn, so the faults after it are the same
        whatever the burst length.
        """
        if self._burst_left and self._burst_kind is not None:
            self._burst_left -= 1
            self.injected[self._burst_kind] += 1
            return self._burst_kind
        s = self.spec
        chances = (s.throttle, s.throttle429, s.server_error, s.gateway, s.reset)
        if not any(chances):
            return None
        u = self.rng.random()
        kind: str | None = None
        edge = 0.0
        for name, chance in zip(REQUEST_FAULTS, chances, strict=True):
            edge += chance
            if u < edge:
                kind = name
                break
        if kind:
            self.injected[kind] += 1
            if s.burst > 1:
                self.injected["burst"] += 1
                self._burst_kind, self._burst_left = kind, s.burst - 1
        return kind

    def server_error_status(self) -> int:
        """500 and 503 in alternation, so clients see both."""
        self._5xx_turn += 1
        return 500 if self._5xx_turn % 2 else 503

    def gateway_status(self) -> int:
        """502 and 504 in alternation: a front end's answers, not the API's."""
        self._gateway_turn += 1
        return 502 if self._gateway_turn % 2 else 504

    def reset_mid_body(self) -> bool:
        """For a ``reset``: True to cut the connection halfway through the body, False before any answer."""
        return self.rng.random() < 0.5

    def delay(self) -> float:
        """Seconds to hold this response back (0 when not slowed)."""
        if self.spec.slow and self.rng.random() < self.spec.slow:
            self.injected["slow"] += 1
            return self.spec.slow_seconds
        return 0.0

    def truncate(self, content_id: str, body: bytes) -> bytes | None:
        """A randomly cut copy of *body* for a transient truncation, or None to serve it whole.

        A blob is cut at most once: the fault stands for a connection that dropped, and a client
        that retries must be able to succeed. Drawing afresh on every request would, now and then,
        cut one blob on every one of a client's retries and turn a transient fault into a lost blob.
        """
        if (self.spec.truncate and len(body) > 1 and content_id not in self._truncated
                and self.rng.random() < self.spec.truncate):
            self._truncated.add(content_id)
            self.injected["truncate"] += 1
            return body[: self.rng.randrange(1, len(body))]
        return None

    def shuffle(self, items: list[T]) -> None:
        """Shuffle *items* in place when the ``shuffle`` fault is on."""
        if self.spec.shuffle and len(items) > 1:
            self.injected["shuffle"] += 1
            self.rng.shuffle(items)

    def page_header(self, next_uri: str) -> tuple[str, str]:
        """The paging header name and value to send for *next_uri*."""
        if not self.spec.headercase:
            return "NextPageUri", next_uri
        self.injected["headercase"] += 1
        name = PAGE_HEADER_SPELLINGS[self._header_turn % len(PAGE_HEADER_SPELLINGS)]
        self._header_turn += 1
        if "endTime=" in next_uri and self.rng.random() < 0.5:
            next_uri = next_uri.replace("endTime=", "endtime=", 1)
        return name, next_uri

    def duplicate(self, items: list[T], twice: list[T], earlier: list[T]) -> None:
        """List each of *twice* (members of *items*) a second time at a later position of *items*,
        which may fall on the same page or a later one, and put *earlier* (blobs of the window
        before) in front, where their contentCreated would sort them."""
        for item in twice:
            at = self.rng.randrange(items.index(item) + 1, len(items) + 1)
            items.insert(at, item)
            self.injected["dupblobs"] += 1
        if earlier:
            items[:0] = earlier
            self.injected["dupblobs_window"] += len(earlier)

    def record(self, kind: str) -> None:
        """Count a fault the server applied itself (late, expired, cutoff, malformed, oversize,
        hostile, hugestring)."""
        self.injected[kind] += 1


def cutoff_point(size: int, content_id: str) -> int:
    """Where the body (of *size* bytes) of a ``cutoff`` blob is cut: always the same place,
    after the ``[`` and before the last record's closing ``}``."""
    if size <= 2:
        return 1
    return random.Random(stable_seed("cutoff", content_id)).randrange(1, size - 1)


def cutoff_body(body: bytes, content_id: str) -> bytes:
    """The permanently cut-off body of a ``cutoff`` blob: always the same prefix, never valid JSON."""
    return body[: cutoff_point(len(body), content_id)]


def malformed_body(body: bytes, content_id: str) -> bytes:
    """The permanently corrupt body of a ``malformed`` blob: whole, never valid JSON, always the same.

    One of three corruptions, chosen by the content id: a key followed by ``=`` instead of
    ``:``, a byte that is not UTF-8 inside a string, or content after the closing bracket.
    """
    return malformed_corruption(body, content_id)[0]


def malformed_corruption(body: bytes, content_id: str) -> tuple[bytes, int]:
    """:func:`malformed_body` and the offset in *body* where it differs: inside the one record
    it corrupts, or ``len(body)`` when the corruption is content after the closing bracket."""
    kind = stable_seed("malformed", content_id) % 3
    if kind == 0:
        at = body.find(b'":', len(body) // 2)
        while at > 0:
            corrupt = body[:at] + b'"=' + body[at + 2 :]
            # '":' can sit inside a string value that holds escaped JSON; there '"=' still parses.
            if not _parses(corrupt):
                return corrupt, at
            at = body.find(b'":', at + 2)
    first_quote = body.find(b'"')
    if kind == 1 and first_quote >= 0:
        return body[: first_quote + 1] + b"\xff" + body[first_quote + 1 :], first_quote + 1
    return body + junk_after_array(content_id), len(body)


def junk_after_array(content_id: str) -> bytes:
    """The content a ``malformed`` blob of the third kind has after its closing bracket. It names
    its blob: the same junk in two blobs would read as one record (equal records get equal
    surrogate ids), one damaged row where the fault suite counts one per blob."""
    return b' {"Id":"' + content_id.encode("ascii", "replace") + b'",'


def _parses(body: bytes) -> bool:
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return True


def oversize_body(body: bytes) -> bytes:
    """*body* padded with whitespace inside the array to at least :data:`OVERSIZE_BYTES`: still the
    same records, valid JSON, too big for a collector with a lower limit."""
    pad = max(0, OVERSIZE_BYTES - len(body))
    return body[:1] + b" " * pad + body[1:]


def record_spans(ends: Sequence[int]) -> list[tuple[int, int]]:
    """The ``[start, end)`` byte span of each record in a body ``[r1,r2,...]`` whose records end
    (one past their closing ``}``) at *ends*: the first starts after ``[``, each next one after
    the ``,`` that ends the one before."""
    spans: list[tuple[int, int]] = []
    start = 1
    for end in ends:
        spans.append((start, end))
        start = end + 1
    return spans


# --------------------------------------------------------------------- what a collector keeps


@dataclass(frozen=True, slots=True)
class AddedRecord:
    """A record a fault puts in a blob beside the blob's own: its text as served, its key, and
    whether a collector must keep it as a damaged row (a strict JSON parser refuses its text, so
    only a lenient one reads it; its key is intact)."""

    name: str
    text: bytes
    key: RecordKey
    damaged: bool


@dataclass(frozen=True, slots=True)
class AddedRecords:
    """What a ``hostile`` or ``hugestring`` fault added to one blob: the body served with the added
    records (made once, when the fault is applied; the records' own texts are not kept beside it),
    their names and keys, and how many of them a collector keeps as damaged rows."""

    kind: str
    body: bytes
    names: tuple[str, ...]
    keys: tuple[RecordKey, ...]
    damaged: int

    @classmethod
    def of(cls, kind: str, body: bytes, records: Sequence[AddedRecord]) -> AddedRecords:
        return cls(kind, body, tuple(r.name for r in records), tuple(r.key for r in records),
                   sum(r.damaged for r in records))


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a perfect collector keeps of one blob.

    ``keys``: the records it holds under their own key: served whole, or read by a lenient parser
    with the key intact. ``damaged``: the rows it must keep flagged ``record:unreadable`` or
    ``record:recovered`` (a record it can read only leniently, the unreadable text of a corrupted
    one, the part of a record before a cut, junk after the array).
    """

    keys: list[RecordKey]
    damaged: int


def delivery(blob: EmulatedBlob) -> Delivery:
    """What a perfect collector keeps of *blob*, from the byte spans of its records.

    Expired and oversize blobs give nothing. A ``cutoff`` blob gives the records whose text lies
    wholly before the cut, and one damaged row when the cut falls inside a record. A
    ``malformed`` blob gives every record but the one whose text the corruption touches, and one
    damaged row: that record, or the junk after the array. A blob with added records gives its
    own and the added ones, the added ones a strict parser refuses as damaged rows.
    """
    if blob.expired or blob.oversize:
        return Delivery([], 0)
    if blob.cutoff:
        cut = cutoff_point(len(blob.body), blob.content_id)
        spans = record_spans(blob.ends)
        whole = [key for key, (_, end) in zip(blob.record_keys, spans, strict=True) if end <= cut]
        begun = any(start < cut < end for start, end in spans)
        return Delivery(whole, int(begun))
    if blob.malformed:
        _, at = malformed_corruption(blob.body, blob.content_id)
        kept = [key for key, (start, end) in zip(blob.record_keys, record_spans(blob.ends), strict=True)
                if not start <= at < end]
        return Delivery(kept, 1)
    if blob.added is not None:
        return Delivery([*blob.record_keys, *blob.added.keys], blob.added.damaged)
    return Delivery(list(blob.record_keys), 0)


# ----------------------------------------------------------------- records faults add


# Placeholders in a record serialised by orjson, replaced by bytes orjson would never write:
# _VALUE (with its quotes) by a bare token, _TEXT by characters inside the string holding it.
_VALUE = "@@auditlake-emulator-value@@"
_TEXT = "@@auditlake-emulator-text@@"


def _stable_uuid(*parts: object) -> str:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def _admin_record(
    tenant_id: str, domain: str, blob: EmulatedBlob, seed: int, name: str, operation: str,
    parameters: list[dict[str, str]], **extra: Any,
) -> tuple[dict[str, Any], RecordKey]:
    """An Exchange admin cmdlet record (RecordType 1) that became available with *blob*."""
    upn = f"mallory.ortiz@{domain}"
    rec: dict[str, Any] = {
        "CreationTime": f"{blob.content_created - timedelta(minutes=75):%Y-%m-%dT%H:%M:%S}",
        "Id": _stable_uuid(seed, blob.content_id, name),
        "Operation": operation,
        "OrganizationId": tenant_id,
        "RecordType": 1,
        "ResultStatus": "True",
        "UserKey": "10032003B5D7E9F1",
        "UserType": 0,
        "Version": 1,
        "Workload": "Exchange",
        "ClientIP": "185.220.101.47:50412",
        "UserId": upn,
        "AppId": "",
        "ClientAppId": "",
        "ExternalAccess": False,
        "ObjectId": upn,
        "OrganizationName": domain,
        "OriginatingServer": "AM0PR05MB4803 (15.20.7513.026)",
        "Parameters": parameters,
        **extra,
    }
    return rec, (rec["Id"], 1, operation)


def _with(rec: dict[str, Any], hole: str, token: bytes) -> bytes:
    text = orjson.dumps(rec)
    placeholder = f'"{hole}"'.encode() if hole == _VALUE else hole.encode()
    if text.count(placeholder) != 1:  # pragma: no cover - a mistake in this module
        raise ValueError(f"{hole} is not once in the record")
    return text.replace(placeholder, token)


def hostile_records(tenant_id: str, domain: str, blob: EmulatedBlob, seed: int) -> list[AddedRecord]:
    r"""The records of the ``hostile`` fault for *blob*, as an attacker who chooses values writes them.

    Read strictly: ``deep-name`` (a New-InboxRule named :data:`HOSTILE_DEPTH` ``[`` then as many
    ``]``: JSON inside a string, too deep to expand) and ``deep-record`` (the record itself nested
    :data:`HOSTILE_DEPTH` levels deep: read, but not written again by orjson). Refused by a strict
    parser, so damaged rows, each with its key intact: a lone surrogate escape ``\ud83d``,
    ``NaN``, ``Infinity``, ``1e400`` and a byte ``\xff`` inside a string value.
    """
    depth = HOSTILE_DEPTH
    bracket_name = "[" * depth + "]" * depth
    out: list[AddedRecord] = []

    def add(name: str, operation: str, params: list[dict[str, str]], hole: str | None, token: bytes,
            damaged: bool, **extra: Any) -> None:
        rec, key = _admin_record(tenant_id, domain, blob, seed, name, operation, params, **extra)
        text = orjson.dumps(rec) if hole is None else _with(rec, hole, token)
        out.append(AddedRecord(name, text, key, damaged))

    identity = [{"Name": "Identity", "Value": f"mallory.ortiz@{domain}"}]
    add("deep-name", "New-InboxRule", [
        {"Name": "Name", "Value": bracket_name}, {"Name": "From", "Value": "billing@contoso-payments.example"},
        {"Name": "MoveToFolder", "Value": "RSS Subscriptions"}, {"Name": "StopProcessingRules", "Value": "True"},
    ], None, b"", False)
    # Each level one object: {"Level":{"Level":...0}} inside the record makes it `depth` deep.
    nested = b'{"Level":' * (depth - 1) + b"0" + b"}" * (depth - 1)
    add("deep-record", "Set-Mailbox", identity, _VALUE, nested, False, Nested=_VALUE)
    add("lone-surrogate", "Set-InboxRule", [
        *identity, {"Name": "SubjectContainsWords", "Value": f"invoice {_TEXT}"}], _TEXT, b"\\ud83d", True)
    add("nan", "Set-Mailbox", identity, _VALUE, b"NaN", True, ItemCount=_VALUE)
    add("infinity", "Set-Mailbox", identity, _VALUE, b"Infinity", True, ItemCount=_VALUE)
    add("huge-number", "Set-Mailbox", identity, _VALUE, b"1e400", True, SizeInBytes=_VALUE)
    add("bad-byte", "Set-Mailbox", identity, _TEXT, b"\xff", True,
        ClientInfoString=f"Client=OWA;Action=ViaProxy;{_TEXT}")
    return out


def huge_string_record(tenant_id: str, domain: str, blob: EmulatedBlob, seed: int) -> AddedRecord:
    """The record of the ``hugestring`` fault: an automatic reply whose message is an HTML string of
    exactly :data:`HUGE_STRING_CHARS` ASCII characters (none needs escaping in JSON)."""
    rec, key = _admin_record(tenant_id, domain, blob, seed, "huge-string", "Set-MailboxAutoReplyConfiguration", [
        {"Name": "Identity", "Value": f"mallory.ortiz@{domain}"}, {"Name": "AutoReplyState", "Value": "Enabled"},
        {"Name": "InternalMessage", "Value": _TEXT}])
    head, tail = orjson.dumps(rec).split(_TEXT.encode())
    start = b"<html><body>"
    chunk = b"<p>I am out of the office until further notice; for anything urgent call the service desk.</p>" * 1024
    whole, rest = divmod(HUGE_STRING_CHARS - len(start), len(chunk))
    # One join of references to one chunk: the 50 MB are allocated once, with no copy on the way.
    text = b"".join([head, start, *([chunk] * whole), chunk[:rest], tail])
    return AddedRecord("huge-string", text, key, False)


def body_with(blob: EmulatedBlob, added: Sequence[AddedRecord], rng: random.Random) -> bytes:
    """*blob*'s body with the *added* records' texts put among its own records, where *rng* says."""
    parts = [blob.body[start:end] for start, end in record_spans(blob.ends)]
    for record in added:
        parts.insert(rng.randrange(len(parts) + 1), record.text)
    pieces = [b"["]
    for part in parts:
        pieces += (part, b",")
    pieces[-1] = b"]"
    # One join: a 50 MB record is copied once, into the body.
    return b"".join(pieces)


def _shared_keys(tenant: SyntheticTenant) -> set[RecordKey]:
    seen: Counter[RecordKey] = Counter()
    for blob in tenant.blobs:
        seen.update(set(blob.record_keys))
    return {key for key, n in seen.items() if n > 1}


def apply_blob_faults(tenant: SyntheticTenant, spec: FaultSpec, seed: int) -> None:
    """Mark the tenant's faulty blobs as *spec* asks, the same way for the same seed.

    The ``feedmissing`` records are taken out of their blobs first. Expired, cutoff, malformed and
    oversize blobs are chosen among blobs already available, and not yet expired, at generation
    time that carry no incident record (so the scripted investigation always has its
    evidence) and no record delivered in another blob too (so what a collector keeps of a damaged
    record never races a whole copy of it); the four sets are disjoint. Hostile and hugestring
    blobs are chosen, in that order, among the eligible blobs left, Audit.Exchange ones when there
    are enough (their records are Exchange cmdlets), and get their records and served body here.
    Late and duplicated blobs are any blobs, the incident's included; each fault draws from its
    own stream, so adding one to a spec leaves the blobs the others chose unchanged (hostile and
    hugestring only take what the four left).
    """
    # First, so every fault below sees the blobs as the feed serves them.
    tenant.withhold_from_feed(spec.feedmissing, seed)
    rng = random.Random(stable_seed(seed, tenant.tenant_id, "blob-faults"))
    for blob in tenant.blobs:
        blob.late = blob.expired = blob.cutoff = blob.late_hidden = False
        blob.malformed = blob.oversize = blob.duplicated = False
        blob.added = None
    if spec.late:
        for blob in tenant.blobs:
            if rng.random() < spec.late:
                blob.late = True
    shared = _shared_keys(tenant)
    # Only blobs the feed still serves: with more than 7 days of history a fault on an older blob
    # would never be seen. With 7 days or less every blob qualifies, so the picks are unchanged.
    eligible = [b for b in tenant.blobs if b.content_created <= tenant.now < b.content_expiration
                and not b.has_incident and shared.isdisjoint(b.record_keys)]
    counts = (spec.expired, spec.cutoff, spec.malformed, spec.oversize)
    wanted = min(len(eligible), sum(counts))
    picked = rng.sample(eligible, wanted)
    chosen = iter(picked)
    for attribute, count in zip(("expired", "cutoff", "malformed", "oversize"), counts, strict=True):
        for blob in itertools.islice(chosen, count):
            setattr(blob, attribute, True)
    if wanted < sum(counts):
        log.warning(
            "tenant has only %d eligible blobs for expired=%d cutoff=%d malformed=%d oversize=%d",
            len(eligible),
            *counts,
            extra={"tenant_id": tenant.tenant_id},
        )
    taken = {id(b) for b in picked}
    free = [b for b in eligible if id(b) not in taken]
    for kind, count in (("hostile", spec.hostile), ("hugestring", spec.hugestring)):
        if not count:
            continue
        kind_rng = random.Random(stable_seed(seed, tenant.tenant_id, kind))
        exchange = [b for b in free if b.content_type == "Audit.Exchange"]
        pool = exchange if len(exchange) >= count else free
        for blob in kind_rng.sample(pool, min(count, len(pool))):
            records = (hostile_records(tenant.tenant_id, tenant.domain, blob, seed) if kind == "hostile"
                       else [huge_string_record(tenant.tenant_id, tenant.domain, blob, seed)])
            blob.added = AddedRecords.of(kind, body_with(blob, records, kind_rng), records)
            del records  # its texts are in the body now: a 50 MB one is not kept twice
            taken.add(id(blob))
        if len(pool) < count:
            log.warning("tenant has only %d eligible blobs left for %s=%d", len(pool), kind, count,
                        extra={"tenant_id": tenant.tenant_id})
        free = [b for b in free if id(b) not in taken]
    if spec.dupblobs:
        dup_rng = random.Random(stable_seed(seed, tenant.tenant_id, "dupblobs"))
        for blob in tenant.blobs:
            if dup_rng.random() < spec.dupblobs:
                blob.duplicated = True
