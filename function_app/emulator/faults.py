"""Fault injection for the Management Activity API emulator.

A :class:`FaultSpec` is parsed from a short string (the CLI's ``--faults``); a
:class:`FaultInjector` turns it into per-request decisions drawn from one seeded
``random.Random`` so a sequential client sees the same faults on every run.
Blob-level faults (late, expired, cutoff) are fixed once per tenant by
:func:`apply_blob_faults`, also from the seed.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections import Counter
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from function_app.emulator.tenant import SyntheticTenant

log = logging.getLogger(__name__)

T = TypeVar("T")

# The paging header in the three spellings clients meet in the wild; the rotation is
# what makes a case-sensitive header lookup fail fast in tests.
PAGE_HEADER_SPELLINGS: tuple[str, ...] = ("nextpageuri", "NEXTPAGEURI", "NextPageUri")

_PROBABILITY_KEYS = {
    "throttle": "throttle",
    "throttle429": "throttle429",
    "5xx": "server_error",
    "truncate": "truncate",
    "late": "late",
}
_COUNT_KEYS = {"expired": "expired", "cutoff": "cutoff"}
_FLAG_KEYS = {"shuffle": "shuffle", "headercase": "headercase"}
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
    ``throttle=P``, ``throttle429=P``, ``5xx=P``, ``truncate=P``, ``late=P`` take a
    probability in [0, 1]; ``slow=P:SECONDS`` (SECONDS defaults to 1); ``expired=N`` and
    ``cutoff=N`` take a blob count per tenant; ``shuffle`` and ``headercase`` are flags
    (``=0``/``=false`` turns them off).
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
            elif key in _COUNT_KEYS:
                try:
                    count = int(raw)
                except ValueError:
                    raise ValueError(f"fault {key!r}: {raw!r} is not a whole number") from None
                if count < 0:
                    raise ValueError(f"fault {key!r}: {count} is negative")
                values[_COUNT_KEYS[key]] = count
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
        names = {v: k for k, v in {**_PROBABILITY_KEYS, **_COUNT_KEYS}.items()}
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
    return key in _PROBABILITY_KEYS or key in _COUNT_KEYS or key in _FLAG_KEYS or key == "slow"


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
        self._header_turn = 0

    def request_fault(self) -> str | None:
        """``"throttle"``, ``"throttle429"``, ``"5xx"`` or None for this API request."""
        s = self.spec
        if not (s.throttle or s.throttle429 or s.server_error):
            return None
        u = self.rng.random()
        kind: str | None = None
        if u < s.throttle:
            kind = "throttle"
        elif u < s.throttle + s.throttle429:
            kind = "throttle429"
        elif u < s.throttle + s.throttle429 + s.server_error:
            kind = "5xx"
        if kind:
            self.injected[kind] += 1
        return kind

    def server_error_status(self) -> int:
        """500 and 503 in alternation, so clients see both."""
        self._5xx_turn += 1
        return 500 if self._5xx_turn % 2 else 503

    def delay(self) -> float:
        """Seconds to hold this response back (0 when not slowed)."""
        if self.spec.slow and self.rng.random() < self.spec.slow:
            self.injected["slow"] += 1
            return self.spec.slow_seconds
        return 0.0

    def truncate(self, body: bytes) -> bytes | None:
        """A randomly cut copy of *body* for a transient truncation, or None to serve it whole."""
        if self.spec.truncate and len(body) > 1 and self.rng.random() < self.spec.truncate:
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

    def record(self, kind: str) -> None:
        """Count a fault the server applied itself (late, expired, cutoff)."""
        self.injected[kind] += 1


def cutoff_body(body: bytes, content_id: str) -> bytes:
    """The permanently cut-off body of a ``cutoff`` blob: always the same prefix, never valid JSON."""
    if len(body) <= 2:
        return body[:1]
    cut = random.Random(stable_seed("cutoff", content_id)).randrange(1, len(body) - 1)
    return body[:cut]


def apply_blob_faults(tenant: SyntheticTenant, spec: FaultSpec, seed: int) -> None:
    """Mark the tenant's late, expired and cutoff blobs as *spec* asks, the same way for the same seed.

    Expired and cutoff blobs are chosen among blobs already available at generation time
    that carry no incident record (so the scripted investigation always has its evidence);
    the two sets are disjoint. Late blobs are any blobs, the incident's included.
    """
    rng = random.Random(stable_seed(seed, tenant.tenant_id, "blob-faults"))
    for blob in tenant.blobs:
        blob.late = blob.expired = blob.cutoff = blob.late_hidden = False
    if spec.late:
        for blob in tenant.blobs:
            if rng.random() < spec.late:
                blob.late = True
    eligible = [b for b in tenant.blobs if b.content_created <= tenant.now and not b.has_incident]
    wanted = min(len(eligible), spec.expired + spec.cutoff)
    chosen = rng.sample(eligible, wanted)
    for blob in chosen[: spec.expired]:
        blob.expired = True
    for blob in chosen[spec.expired :]:
        blob.cutoff = True
    if wanted < spec.expired + spec.cutoff:
        log.warning(
            "tenant has only %d eligible blobs for expired=%d cutoff=%d",
            len(eligible),
            spec.expired,
            spec.cutoff,
            extra={"tenant_id": tenant.tenant_id},
        )
