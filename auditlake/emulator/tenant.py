"""A deterministic synthetic tenant: content blobs as the Management Activity API would serve them.

Blobs are made per content type along a timeline of ``contentCreated`` instants. A record
lands in the first blob created after it became available at Microsoft: 60-90 minutes after
its ``CreationTime`` for most records, sooner for a few, and 24-30 hours for the records of
about 1% of blobs. Records inside a blob are unordered. About 2% of records are delivered
again in a later blob of the same content type, keys reordered, values equal; that is the
same record and the ground truth counts it once.

Each blob body is serialised once, when the blob is made; only the bytes, the record keys and
where each record's text ends are kept, so a large tenant costs its serialised size and little
more.

``days`` may exceed the feed's 7 days: the older blobs are expired for the feed (it refuses
their windows and their content) but their records stay in the tenant's unified audit log, which
the audit search (:mod:`auditlake.emulator.purview`) serves. Generation is linear in
``days * records_per_day`` (about 0.1 s per 3,000 records on one core).
"""

from __future__ import annotations

import bisect
import logging
import math
import random
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson

from auditlake.emulator.faults import AddedRecords, Delivery, delivery, record_spans, stable_seed
from auditlake.emulator.incident import Incident, RecordKey, record_key, script_incident
from auditlake.emulator.synth import Record, RecordFactory, World
from function_app.core.model import CONTENT_TYPES, utc

log = logging.getLogger(__name__)

SCENARIOS = ("default", "quiet")
RETENTION = timedelta(days=7)

# Share of the tenant's records per content type: mail and files dominate, DLP is rare.
_SHARE = {
    "Audit.AzureActiveDirectory": 0.25,
    "Audit.Exchange": 0.35,
    "Audit.SharePoint": 0.28,
    "Audit.General": 0.09,
    "DLP.All": 0.03,
}
_SLUG = {
    "Audit.AzureActiveDirectory": "audit_azureactivedirectory$Audit_AzureActiveDirectory",
    "Audit.Exchange": "audit_exchange$Audit_Exchange",
    "Audit.SharePoint": "audit_sharepoint$Audit_SharePoint",
    "Audit.General": "audit_general$Audit_General",
    "DLP.All": "dlp_all$DLP_All",
}
_TARGET_RECORDS_PER_BLOB = 25
_MIN_GAP_S, _MAX_GAP_S = 300.0, 3600.0
_REDELIVERY = 0.02
_DLP_UNDO = 0.08
_TAIL_BLOBS = 0.01
_USUAL_LAG = timedelta(minutes=60)


@dataclass(slots=True, eq=False)
class EmulatedBlob:
    """One content blob: listing metadata, the body exactly as served, and the keys of its records.

    ``body`` is ``orjson.dumps`` of the records (``[`` + their texts joined by ``,`` + ``]``);
    ``ends[i]`` is the offset just past record ``i``'s text, whose key is ``record_keys[i]``.
    ``late``, ``expired``, ``cutoff``, ``malformed``, ``oversize``, ``duplicated`` and ``added``
    (records a ``hostile`` or ``hugestring`` fault put beside the blob's own, with the body then
    served) are set by fault injection; ``late_hidden`` records that a late blob has already been
    left out of the one listing it was hidden from.
    """

    content_type: str
    content_id: str
    content_created: datetime
    content_expiration: datetime
    body: bytes
    record_keys: list[RecordKey]
    ends: array[int] = field(default_factory=lambda: array("I"))
    has_incident: bool = False
    late: bool = False
    late_hidden: bool = False
    expired: bool = False
    cutoff: bool = False
    malformed: bool = False
    oversize: bool = False
    duplicated: bool = False
    added: AddedRecords | None = None

    @property
    def served_body(self) -> bytes:
        """The body served when no fault cuts, corrupts or pads it: with the added records, if any."""
        return self.added.body if self.added is not None else self.body

    @property
    def undeliverable_reason(self) -> str | None:
        """``"expired"``, ``"cutoff"`` or ``"oversize"`` for a blob a collector can never ingest
        whole, else None.

        A cutoff blob still yields the records before the cut (see :func:`faults.delivery`). An
        oversize blob is whole and valid; it counts as undeliverable because the fault exists to
        exceed a collector's size limit, and a collector within its limit must refuse it. A
        malformed blob is whole: a collector reads every record around the corruption.
        """
        flags = (("expired", self.expired), ("cutoff", self.cutoff), ("oversize", self.oversize))
        return next((reason for reason, flagged in flags if flagged), None)


@dataclass(frozen=True, slots=True)
class WithheldRecord:
    """A record the ``feedmissing`` fault took out of the blob that carried it: in the audit
    search, in no blob the feed serves. ``text`` is its JSON as the blob held it."""

    key: RecordKey
    text: bytes
    content_id: str


@dataclass(eq=False)
class SyntheticTenant:
    """A tenant's blobs, sorted by (contentCreated, contentId), with lookups by id and by time."""

    tenant_id: str
    seed: int
    now: datetime
    days: float
    records_per_day: int
    scenario: str
    domain: str
    blobs: list[EmulatedBlob]
    incident: Incident | None = None
    # Records the ``feedmissing`` fault withholds from the feed (see :meth:`withhold_from_feed`).
    feed_missing: list[WithheldRecord] = field(default_factory=list)
    # contentId -> (body, record_keys, ends) before records were withheld, to undo it.
    _unwithheld: dict[str, tuple[bytes, list[RecordKey], array[int]]] = field(
        init=False, repr=False, default_factory=dict)
    _by_id: dict[str, EmulatedBlob] = field(init=False, repr=False)
    _by_type: dict[str, list[EmulatedBlob]] = field(init=False, repr=False)
    _created: dict[str, list[datetime]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.blobs.sort(key=lambda b: (b.content_created, b.content_id))
        self._by_id = {b.content_id: b for b in self.blobs}
        if len(self._by_id) != len(self.blobs):
            raise ValueError("content ids are not unique")
        self._by_type = {ct: [] for ct in CONTENT_TYPES}
        for b in self.blobs:
            self._by_type[b.content_type].append(b)
        self._created = {ct: [b.content_created for b in bs] for ct, bs in self._by_type.items()}

    @classmethod
    def generate(
        cls,
        tenant_id: str,
        *,
        seed: int,
        now: datetime,
        days: float = 7,
        records_per_day: int = 3000,
        scenario: str = "default",
    ) -> SyntheticTenant:
        """Make the tenant's blobs; the same arguments always give byte-identical blobs.

        Events span ``[now - days, now]``; blobs made available after ``now`` are included
        (a server whose clock passes their ``contentCreated`` starts listing them).
        ``scenario`` is ``"default"`` (about 200 users, background noise and the scripted
        incident about two days before ``now``) or ``"quiet"`` (15 users, no incident).
        """
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; expected one of {', '.join(SCENARIOS)}")
        tenant_id = str(uuid.UUID(tenant_id))
        if days <= 0 or records_per_day < 0:
            raise ValueError("days must be positive and records_per_day not negative")
        started = time.perf_counter()
        now = _ms(utc(now))
        rng = random.Random(stable_seed(seed, tenant_id, "tenant"))
        world = World(rng, tenant_id, 200 if scenario == "default" else 15)
        factory = RecordFactory(rng, world)
        incident: Incident | None = None
        scripted: dict[str, list[tuple[datetime, Record]]] = {ct: [] for ct in CONTENT_TYPES}
        if scenario == "default":
            back = timedelta(days=min(2.0, days * 0.6))
            incident, records = script_incident(factory, (now - back).replace(second=7, microsecond=0))
            for ct, t, rec in records:
                scripted[ct].append((t, rec))
        builder = _BlobBuilder(rng, factory, tenant_id, now, days, records_per_day)
        for ct in CONTENT_TYPES:
            builder.build(ct, scripted[ct])
        tenant = cls(
            tenant_id=tenant_id, seed=seed, now=now, days=days, records_per_day=records_per_day,
            scenario=scenario, domain=world.domain, blobs=builder.blobs, incident=incident,
        )
        log.info(
            "generated %d blobs in %.2fs",
            len(tenant.blobs),
            time.perf_counter() - started,
            extra={"tenant_id": tenant_id},
        )
        return tenant

    def withhold_from_feed(self, count: int, seed: int) -> None:
        """Take *count* records out of the blobs that carry them, the same ones for the same seed;
        they land in :attr:`feed_missing`. Calling it again first puts back what it took.

        Candidates are records in blobs the feed serves at generation time (available, not yet
        expired), without incident records, delivered in no other blob (a re-delivered copy would
        reach the collector anyway); a blob keeps at least one record. The blob's body, keys and
        record ends are rewritten, so every fault applied after this one, and the feed's ground
        truth, see the blob as served.
        """
        for content_id, (body, keys, ends) in self._unwithheld.items():
            blob = self._by_id[content_id]
            blob.body, blob.record_keys, blob.ends = body, keys, ends
        self._unwithheld.clear()
        self.feed_missing = []
        if count <= 0:
            return
        seen: Counter[RecordKey] = Counter()
        for b in self.blobs:
            seen.update(set(b.record_keys))
        candidates = [
            (b, i) for b in self.blobs
            if b.content_created <= self.now < b.content_expiration and not b.has_incident and len(b.record_keys) > 1
            for i, key in enumerate(b.record_keys) if seen[key] == 1
        ]
        rng = random.Random(stable_seed(seed, self.tenant_id, "feedmissing"))
        chosen: dict[str, set[int]] = {}
        for b, i in rng.sample(candidates, min(count, len(candidates))):
            taken = chosen.setdefault(b.content_id, set())
            if len(taken) + 1 < len(b.record_keys):
                taken.add(i)
        for content_id, taken in chosen.items():
            blob = self._by_id[content_id]
            self._unwithheld[content_id] = (blob.body, blob.record_keys, blob.ends)
            texts = [blob.body[start:end] for start, end in record_spans(blob.ends)]
            kept = [i for i in range(len(texts)) if i not in taken]
            new_ends: array[int] = array("I")
            end = 0
            for i in kept:
                end += 1 + len(texts[i])
                new_ends.append(end)
            self.feed_missing.extend(
                WithheldRecord(blob.record_keys[i], texts[i], content_id) for i in sorted(taken))
            blob.body = b"[" + b",".join(texts[i] for i in kept) + b"]"
            blob.record_keys = [blob.record_keys[i] for i in kept]
            blob.ends = new_ends
        if len(self.feed_missing) < count:
            log.warning("tenant has only %d records eligible for feedmissing=%d", len(self.feed_missing), count,
                        extra={"tenant_id": self.tenant_id})

    def blob(self, content_id: str) -> EmulatedBlob | None:
        """The blob with *content_id*, or None."""
        return self._by_id.get(content_id)

    def blobs_between(self, content_type: str, start: datetime, end: datetime) -> list[EmulatedBlob]:
        """Blobs of *content_type* with ``start <= contentCreated < end``, in contentCreated order."""
        created = self._created.get(content_type, [])
        lo = bisect.bisect_left(created, utc(start))
        hi = bisect.bisect_left(created, utc(end))
        return self._by_type[content_type][lo:hi]

    def _select(
        self, content_type: str | None, start: datetime, end: datetime, available_at: datetime
    ) -> Iterable[EmulatedBlob]:
        for ct in (content_type,) if content_type else CONTENT_TYPES:
            for b in self.blobs_between(ct, start, end):
                if b.content_created <= utc(available_at):
                    yield b

    def deliveries(
        self, content_type: str | None, start: datetime, end: datetime, available_at: datetime
    ) -> list[tuple[EmulatedBlob, Delivery]]:
        """What a perfect collector keeps of each blob of *content_type* (all when None) with
        ``start <= contentCreated < end`` and ``contentCreated <= available_at``.

        Natural expiry is not applied: choose *start* accordingly.
        """
        return [(b, delivery(b)) for b in self._select(content_type, start, end, available_at)]

    def truth(
        self, content_type: str | None, start: datetime, end: datetime, available_at: datetime
    ) -> set[RecordKey]:
        """Unique record keys a perfect collector would hold for the blobs of :meth:`deliveries`:
        every record served whole (those before the cut of a cutoff blob and those around the
        corruption of a malformed one included) and every record only a lenient parser reads
        whose key is intact."""
        keys: set[RecordKey] = set()
        for _, d in self.deliveries(content_type, start, end, available_at):
            keys.update(d.keys)
        return keys

    def damaged(self, content_type: str | None, start: datetime, end: datetime, available_at: datetime) -> int:
        """How many rows a perfect collector keeps flagged ``record:unreadable`` or ``record:recovered``
        for the blobs of :meth:`deliveries`."""
        return sum(d.damaged for _, d in self.deliveries(content_type, start, end, available_at))

    def undeliverable(
        self, content_type: str | None, start: datetime, end: datetime, available_at: datetime
    ) -> list[tuple[EmulatedBlob, str]]:
        """Blobs in the same selection as :meth:`truth` that can never be retrieved, with the reason."""
        out: list[tuple[EmulatedBlob, str]] = []
        for b in self._select(content_type, start, end, available_at):
            reason = b.undeliverable_reason
            if reason:
                out.append((b, reason))
        return out

    def summary(self) -> dict[str, object]:
        """Counts for logs and reports: blobs and records (with and without re-deliveries) per content type."""
        per_type: dict[str, dict[str, int]] = {}
        for ct, blobs in self._by_type.items():
            keys = [k for b in blobs for k in b.record_keys]
            per_type[ct] = {"blobs": len(blobs), "records": len(keys), "unique_records": len(set(keys)),
                            "bytes": sum(len(b.body) for b in blobs)}
        return {"tenant_id": self.tenant_id, "scenario": self.scenario, "content_types": per_type}


def _ms(t: datetime) -> datetime:
    """*t* truncated to milliseconds, the API's precision for contentCreated."""
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


class _BlobBuilder:
    """Lays one content type's records out on a timeline of blobs and serialises each blob once."""

    def __init__(
        self, rng: random.Random, factory: RecordFactory, tenant_id: str, now: datetime, days: float,
        records_per_day: int,
    ) -> None:
        self.rng = rng
        self.factory = factory
        self.now = now
        self.first_event = now - timedelta(days=days)
        self.records_per_day = records_per_day
        self.region = 1 + stable_seed(tenant_id, "region") % 12
        self.blobs: list[EmulatedBlob] = []
        self._ids: set[str] = set()

    def _latency(self) -> float:
        """Seconds from CreationTime to availability: mostly 60-90 min, sometimes 15-60."""
        if self.rng.random() < 0.05:
            return self.rng.uniform(900, 3600)
        return self.rng.uniform(3600, 5400)

    def _content_id(self, content_type: str, created: datetime) -> str:
        # Real ids start with the creation instant to the millisecond plus six more digits.
        while True:
            stamp = f"{created:%Y%m%d%H%M%S}{created.microsecond // 1000:03d}{self.rng.randrange(10**6):06d}"
            region = self.region + (self.rng.random() < 0.1)
            content_id = f"{stamp}${stamp}${_SLUG[content_type]}$nam{region}"
            if content_id not in self._ids:
                self._ids.add(content_id)
                return content_id

    def _emit(self, content_type: str, created: datetime, records: list[Record], has_incident: bool) -> None:
        if not records:
            return
        self.rng.shuffle(records)
        # The same bytes as orjson.dumps(records), with where each record's text ends.
        texts = [orjson.dumps(r) for r in records]
        ends: array[int] = array("I")
        end = 0
        for text in texts:
            end += 1 + len(text)
            ends.append(end)
        self.blobs.append(EmulatedBlob(
            content_type=content_type,
            content_id=self._content_id(content_type, created),
            content_created=created,
            content_expiration=created + RETENTION,
            body=b"[" + b",".join(texts) + b"]",
            record_keys=[record_key(r) for r in records],
            ends=ends,
            has_incident=has_incident,
        ))

    def _reordered(self, rec: Record) -> Record:
        items = list(rec.items())
        shuffled = items[:]
        self.rng.shuffle(shuffled)
        if shuffled == items:
            shuffled.reverse()
        return dict(shuffled)

    def build(self, content_type: str, scripted: list[tuple[datetime, Record]]) -> None:
        """Make the blobs of *content_type*, with *scripted* (time, record) pairs placed by their latency."""
        rate = self.records_per_day * _SHARE[content_type] / 86400.0
        if rate <= 0 and not scripted:
            return
        gap = min(_MAX_GAP_S, max(_MIN_GAP_S, _TARGET_RECORDS_PER_BLOB / rate)) if rate > 0 else _MAX_GAP_S
        # Slots: the contentCreated instants of the regular blobs, from the first instant a
        # record of the period can be available until every event up to now has become so.
        slots: list[datetime] = []
        t = self.first_event + timedelta(minutes=15)
        horizon = self.now + timedelta(minutes=95)
        while t <= horizon:
            t = _ms(t + timedelta(seconds=gap * self.rng.uniform(0.5, 1.5)))
            slots.append(t)
        pending: dict[int, list[Record]] = {}
        incident_slots: set[int] = set()
        for event, rec in scripted:
            idx = bisect.bisect_left(slots, event + _USUAL_LAG)
            if idx < len(slots):
                pending.setdefault(idx, []).append(rec)
                incident_slots.add(idx)
        make = self.factory.make
        # Epoch seconds in the hot loop: datetime arithmetic per record costs more than the record.
        first_s, now_s = self.first_event.timestamp(), self.now.timestamp()
        latency = self._latency
        prev = self.first_event
        for j, created in enumerate(slots):
            created_s = created.timestamp()
            span = created_s - prev.timestamp()
            records = pending.pop(j, [])
            # A blob gathers what became available since the previous one; its records
            # happened one latency before the blob was made.
            for _ in range(_count(self.rng, rate * span)):
                event_s = created_s - latency()
                if first_s <= event_s <= now_s:
                    event = datetime.fromtimestamp(event_s, UTC)
                    rec = make(content_type, event)
                    records.append(rec)
                    if content_type == "DLP.All" and self.rng.random() < _DLP_UNDO:
                        self._schedule_undo(rec, event, slots, j, pending)
            for rec in records:
                if self.rng.random() < _REDELIVERY and j + 1 < len(slots):
                    later = min(len(slots) - 1, j + self.rng.randrange(1, 7))
                    pending.setdefault(later, []).append(self._reordered(rec))
            self._emit(content_type, created, records, j in incident_slots)
            prev = created
        self._tail(content_type, rate, gap, len(slots))

    def _schedule_undo(
        self, match: Record, event: datetime, slots: list[datetime], j: int, pending: dict[int, list[Record]]
    ) -> None:
        undo_t = event + timedelta(minutes=self.rng.uniform(5, 90))
        idx = max(j + 1, bisect.bisect_left(slots, undo_t + _USUAL_LAG))
        if idx < len(slots):
            pending.setdefault(idx, []).append(self.factory.dlp_undo(match, undo_t))

    def _tail(self, content_type: str, rate: float, gap: float, regular: int) -> None:
        """The ~1% of blobs whose records became available 24-30 hours after they happened."""
        lo = self.first_event + timedelta(hours=24)
        hi = self.now + timedelta(hours=30)
        if rate <= 0 or hi <= lo:
            return
        expected = regular * _TAIL_BLOBS
        n = int(expected) + (self.rng.random() < expected - int(expected))
        for _ in range(n):
            created = _ms(lo + (hi - lo) * self.rng.random())
            records: list[Record] = []
            for _ in range(_count(self.rng, rate * gap)):
                event = created - timedelta(hours=self.rng.uniform(24, 30))
                if self.first_event <= event <= self.now:
                    records.append(self.factory.make(content_type, event))
            self._emit(content_type, created, records, False)


def _count(rng: random.Random, mean: float) -> int:
    """A Poisson-like count with *mean* (normal approximation above 30)."""
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, mean**0.5)))
    # Knuth's method is exact and cheap for small means.
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1
