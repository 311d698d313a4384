"""Hostile record content on the Azure path (timer → Azurite queue → queue function → real ingest
client → fake ADX): one bad record never costs its neighbours, and never a retry.

Whoever names an inbox rule or a file chooses part of a record, so a blob can hold text the
strict parser refuses (a lone surrogate escape, ``NaN``, ``Infinity``, ``1e400``, a byte that
is not UTF-8), JSON inside a string nested 300 deep, or a record nested deeper than the
serialiser writes. Each kind gets a blob of its own: about fifty ordinary records with the
hostile one in the middle. Every ordinary record must reach ADX exactly once, the hostile one
must be there flagged in ``Quality``, and the blob must be settled on its one delivery. Two
whole-body cases ride along: a UTF-8 byte-order mark before the array (read as if absent), and
an empty body (settled ``failed`` once, its raw copy kept, never retried).

The pipeline runs once for the module (``run``); each test reads what it left behind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from azure.core.exceptions import ResourceNotFoundError

from auditlake.emulator.server import EmulatorServer
from auditlake.emulator.tenant import EmulatedBlob
from function_app.azure.deps import close_runtime
from function_app.config import reset_app_settings
from function_app.core.messages import decode_message
from tests.adapters.fake_adx import FakeAdx
from tests.azure.conftest import DATABASE, FunctionsHost, Harness
from tests.azurite import Azurite

TENANT = "3c4d5e6f-7081-4a92-8b3c-4d5e6f708193"
NEIGHBOURS = 50
DEPTH = 300
RETRY_ATTEMPTS = 3
BOM = b"\xef\xbb\xbf"
Key = tuple[str, int, str]


def _record_text(record_id: str, operation: str = "Set-Mailbox", *, extra: bytes = b"") -> bytes:
    """An Exchange admin record as JSON text, with *extra* (``,"Field":<value>``) spliced in
    before its closing brace: the only way to write a value no serialiser would."""
    base = orjson.dumps({
        "CreationTime": (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S"),
        "Id": record_id, "Operation": operation, "OrganizationId": TENANT, "RecordType": 1,
        "ResultStatus": "True", "UserKey": "10030000A1B2C3D4", "UserType": 2, "Version": 1,
        "Workload": "Exchange", "ClientIP": "203.0.113.7", "ObjectId": "mailbox-1",
        "UserId": "admin@contoso.com",
    })
    return base[:-1] + extra + b"}"


@dataclass(frozen=True)
class Hostile:
    """One hostile record: its text as served, its key (None for an element no parser reads: its
    row takes the surrogate key of its text, never a record's own), the flag its row must carry,
    and a check of the row's cells."""

    text: bytes
    key: Key | None
    flag: str
    check: Callable[[dict[str, Any]], None]


def _inbox_rule() -> Hostile:
    name = "[" * DEPTH + "]" * DEPTH
    rid = "hostile-inbox-rule"
    record = orjson.loads(_record_text(rid, "New-InboxRule"))
    record["Parameters"] = [{"Name": "Name", "Value": name}, {"Name": "MoveToFolder", "Value": "RSS Feeds"}]

    def check(row: dict[str, Any]) -> None:
        # Not expanded past the limit: kept as the string it is, beside the other parameters.
        assert row["Properties"]["Parameters"] == {"Name": name, "MoveToFolder": "RSS Feeds"}
        assert row["AuditData"] == record

    return Hostile(orjson.dumps(record), (rid, 1, "New-InboxRule"), "too-deep:Parameters.Name", check)


def _deep_record() -> Hostile:
    rid = "hostile-deep-record"
    text = _record_text(rid, extra=b',"Nested":' + b'{"a":[' * (DEPTH // 2) + b'"bottom"' + b"]}" * (DEPTH // 2))

    def check(row: dict[str, Any]) -> None:
        # Written as its JSON text: the whole record, nothing lost, readable by any client.
        assert isinstance(row["AuditData"], str)
        assert json.loads(row["AuditData"]) == json.loads(text)
        assert row["Workload"] == "Exchange" and row["UserPrincipal"] == "admin@contoso.com"

    return Hostile(text, (rid, 1, "Set-Mailbox"), "AuditData:unserialisable:too-deep", check)


def _text_value(name: str, raw: bytes, made_safe: str, flag: str) -> Hostile:
    rid = f"hostile-{name}"
    text = _record_text(rid, extra=b',"Comment":"' + raw + b'"')

    def check(row: dict[str, Any]) -> None:
        assert row["AuditData"]["Comment"] == made_safe
        assert row["AuditData"]["Id"] == rid and row["ObjectId"] == "mailbox-1"

    return Hostile(text, (rid, 1, "Set-Mailbox"), flag, check)


def _number(name: str, token: bytes) -> Hostile:
    rid = f"hostile-{name}"
    text = _record_text(rid, extra=b',"Score":' + token + b',"After":"kept"')

    def check(row: dict[str, Any]) -> None:
        # The number as the text delivered, and the fields after it still read.
        assert row["AuditData"]["Score"] == token.decode()
        assert row["AuditData"]["After"] == "kept" and row["ClientIP"] == "203.0.113.7"

    return Hostile(text, (rid, 1, "Set-Mailbox"), "record:recovered:non-finite-number", check)


def _unreadable() -> Hostile:
    rid = "hostile-unreadable"
    text = _record_text(rid, extra=b',"Broken" = 1')

    def check(row: dict[str, Any]) -> None:
        # No parser reads it: its raw text is kept, its type, operation and time read from that
        # text, and its Id is the surrogate of the text, so a whole copy later is never shadowed.
        assert row["AuditData"] == text.decode()
        assert row["TimeGenerated"] is not None
        assert (row["RecordType"], row["Operation"]) == (1, "Set-Mailbox")
        assert row["Id"].startswith("x-") and row["Id"] != rid

    return Hostile(text, None, "record:unreadable:unreadable", check)


HOSTILE: dict[str, Callable[[], Hostile]] = {
    "inbox-rule-named-300-brackets": _inbox_rule,
    "record-300-levels-deep": _deep_record,
    "lone-surrogate-escape": lambda: _text_value("surrogate", b"before\\ud800after", "before\ufffdafter",
                                                 "record:recovered:invalid-text"),
    "nan": lambda: _number("nan", b"NaN"),
    "infinity": lambda: _number("infinity", b"Infinity"),
    "1e400": lambda: _number("1e400", b"1e400"),
    "stray-xff-byte": lambda: _text_value("xff", b"before\xffafter", "before\ufffdafter",
                                          "record:recovered:invalid-text"),
    "element-no-parser-reads": _unreadable,
}
WHOLE_BODY = ("bom-before-the-array", "empty-body")


@dataclass
class Served:
    """What one blob served: its body, the keys of its ordinary records, its hostile record."""

    blob: EmulatedBlob
    body: bytes
    neighbours: set[Key]
    hostile: Hostile | None = None


@dataclass
class Outcome:
    """What the module's one run left behind."""

    served: dict[str, Served] = field(default_factory=dict)
    enqueued: list[str] = field(default_factory=list)
    deliveries: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    poisoned: list[str] = field(default_factory=list)
    left_on_queues: list[tuple[str, str]] = field(default_factory=list)
    gets: int = 0
    ledger: dict[str, dict[str, Any]] = field(default_factory=dict)
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    kept: dict[str, bytes] = field(default_factory=dict)
    logs: list[logging.LogRecord] = field(default_factory=list)


def _neighbours(pool: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """NEIGHBOURS ordinary records (the tenant's own, under fresh ids, so every key is unique)."""
    out = []
    for i in range(NEIGHBOURS):
        record = dict(pool[i % len(pool)])
        record["Id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"auditlake-hostile/{kind}/{i}"))
        out.append(record)
    return out


def _key(record: dict[str, Any]) -> Key:
    return str(record["Id"]), int(record["RecordType"]), str(record["Operation"])


def _serve(blob: EmulatedBlob, kind: str, pool: list[dict[str, Any]]) -> Served:
    """Replace *blob*'s body (and record keys) with this kind's, before anything lists it."""
    records = _neighbours(pool, kind)
    texts = [orjson.dumps(r) for r in records]
    hostile = HOSTILE[kind]() if kind in HOSTILE else None
    keys = [_key(r) for r in records]
    if hostile is not None:
        texts.insert(NEIGHBOURS // 2, hostile.text)
        if hostile.key is not None:
            keys.insert(NEIGHBOURS // 2, hostile.key)
    body = b"[" + b",".join(texts) + b"]"
    if kind == "bom-before-the-array":
        body = BOM + body
    elif kind == "empty-body":
        body, keys, records = b"", [], []
    blob.body, blob.record_keys = body, keys
    return Served(blob, body, {_key(r) for r in records}, hostile)


class _Collect(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.INFO)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


@pytest.fixture(scope="module")
def run(azurite: Azurite, fake_adx: FakeAdx) -> Iterator[Outcome]:
    """Serve one blob per kind, run the timer and deliver every message once, as the host would."""
    suffix = uuid.uuid4().hex[:8]
    with pytest.MonkeyPatch.context() as mp:
        h = Harness(azurite, fake_adx, mp, queue=f"content-{suffix}", prefix=f"T{suffix}",
                    container=f"deadletter-{suffix}")
        mp.delenv("FUNCTIONS_WORKER_RUNTIME", raising=False)
        mp.delenv("AUDITLAKE_TENANTS", raising=False)
        h.configure(
            AzureWebJobsStorage=azurite.connection_string, CONTENT_QUEUE=h.queue, STATE_TABLE_PREFIX=h.prefix,
            DEADLETTER_CONTAINER=h.container, ADX_INGEST_URI=fake_adx.uri, ADX_DATABASE=DATABASE,
            ADX_ALLOW_INSECURE_HTTP="true",
            AUDITLAKE_API_TOKEN="test-token", AUDITLAKE_RETRY_BASE_SECONDS="0.01",
            AUDITLAKE_RETRY_MAX_SECONDS="0.05", AUDITLAKE_RETRY_ATTEMPTS=str(RETRY_ATTEMPTS),
            AUDITLAKE_SAFETY_LAG_SECONDS="0",
        )
        fake_adx.read_ingestions()  # what earlier tests left behind
        out = Outcome()
        handler = _Collect(out.logs)
        logging.getLogger().addHandler(handler)
        try:
            asyncio.run(_run(h, out))
        finally:
            logging.getLogger().removeHandler(handler)
            reset_app_settings()
        yield out


async def _run(h: Harness, out: Outcome) -> None:
    async with EmulatorServer([TENANT], seed=21, days=0.5, records_per_day=300, scenario="quiet") as emu:
        tenant = emu.state.tenants[TENANT]
        available = [b for b in tenant.blobs if b.content_created <= tenant.now and b.undeliverable_reason is None]
        kinds = [*HOSTILE, *WHOLE_BODY]
        assert len(available) > len(kinds), "too few blobs for one per kind"
        pool = [r for b in available for r in orjson.loads(b.body)]
        # Spread over the content types, so each hostile record meets a different flattener path.
        targets = sorted(available, key=lambda b: (b.content_type, b.content_created))[:: len(available) // len(kinds)]
        for blob, kind in zip(targets, kinds, strict=False):
            out.served[kind] = _serve(blob, kind, pool)
        assert set(out.served) == set(kinds)
        h.configure(AUDITLAKE_TENANTS=TENANT, AUDITLAKE_API_ROOT=emu.api_root)
        host = FunctionsHost(h)
        try:
            await host.timer()
            messages = await host.receive()
            out.enqueued = [decode_message(body).content_id for _, body in messages]
            for message_id, body in messages:
                await host.run_message(message_id, body)
            out.left_on_queues = [*await host.receive(), *await host.receive(h.poison)]
        finally:
            await close_runtime()
        out.deliveries = Counter(decode_message(d.body).content_id for d in host.deliveries)
        out.errors = [d.error for d in host.deliveries if d.error]
        out.poisoned = list(host.poisoned)
        out.gets = emu.state.stats.requests["GetBlob"]
    out.ledger = h.ledger()
    for ingestion in h.adx.read_ingestions():
        if ingestion.table == "AuditRecord":
            for row in ingestion.rows:
                out.rows.setdefault(row["ContentId"], []).append(row)
    container = h.container_client()
    try:
        out.kept = {b.name: container.download_blob(b.name).readall() for b in container.list_blobs()}
    except ResourceNotFoundError:
        out.kept = {}
    finally:
        container.close()


def _cid(run: Outcome, kind: str) -> str:
    return run.served[kind].blob.content_id


def _row_key(row: dict[str, Any]) -> Key:
    return str(row["Id"]), int(row["RecordType"]), str(row["Operation"])


def test_every_blob_is_delivered_once_and_nothing_goes_back_to_the_queue_or_to_poison(run: Outcome) -> None:
    assert {_cid(run, k) for k in run.served} <= set(run.enqueued)
    assert run.deliveries == Counter(run.enqueued), "a message was delivered more than once"
    assert run.errors == [] and run.poisoned == [] and run.left_on_queues == []
    # The empty body was fetched RETRY_ATTEMPTS times within its one delivery; every other blob once.
    assert run.gets == len(run.enqueued) + RETRY_ATTEMPTS - 1
    # Only the empty body failed; only it left a raw copy.
    assert {cid for cid, row in run.ledger.items() if row["Status"] != "ingested"} == {_cid(run, "empty-body")}
    assert [n for n in run.kept if n.startswith("messages/")] == []


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_hostile_record_lands_flagged_beside_its_neighbours_on_the_first_delivery(run: Outcome, kind: str) -> None:
    served = run.served[kind]
    hostile = served.hostile
    assert hostile is not None
    cid = served.blob.content_id
    row = run.ledger[cid]
    assert (row["Status"], row["Attempts"], row.get("Error")) == ("ingested", 1, None), row
    assert getattr(row["Records"], "value", row["Records"]) == NEIGHBOURS + 1
    assert run.deliveries[cid] == 1

    rows = run.rows[cid]
    counts = Counter(_row_key(r) for r in rows)
    [found] = [r for r in rows if hostile.flag in r["Quality"]]
    if hostile.key is not None:
        assert _row_key(found) == hostile.key
    # Every ordinary record exactly once, the hostile one exactly once, nothing else.
    assert set(counts) == served.neighbours | {_row_key(found)}
    assert set(counts.values()) == {1}
    # The neighbours are untouched by it: none carries a flag of the hostile record's kind.
    neighbours = [r for r in rows if r is not found]
    assert not [r["Quality"] for r in neighbours if any(
        f.startswith(("record:", "too-deep:")) or ":unserialisable:" in f for f in r["Quality"])]
    assert hostile.flag in found["Quality"], found["Quality"]
    hostile.check(found)


def test_a_byte_order_mark_before_the_array_is_read_as_if_absent(run: Outcome) -> None:
    served = run.served["bom-before-the-array"]
    cid = served.blob.content_id
    row = run.ledger[cid]
    assert (row["Status"], row["Attempts"], row.get("Error")) == ("ingested", 1, None), row
    rows = run.rows[cid]
    assert Counter(_row_key(r) for r in rows) == Counter(served.neighbours)
    assert not [r["Quality"] for r in rows if any(f.startswith("record:") for f in r["Quality"])]
    assert run.deliveries[cid] == 1


def test_an_empty_body_is_settled_failed_once_with_its_raw_copy_kept(run: Outcome) -> None:
    served = run.served["empty-body"]
    blob = served.blob
    row = run.ledger[blob.content_id]
    assert row["Status"] == "failed" and row["Attempts"] == 1
    assert "not valid JSON (cut off or corrupt)" in row["Error"] and "empty body" in row["Error"]
    assert "written" not in row["Error"], "nothing was read, so nothing can have been written"
    assert "dead-lettered" not in row["Error"], "settled by its own delivery, not by the poison trigger"
    assert run.deliveries[blob.content_id] == 1
    assert blob.content_id not in run.rows
    assert run.kept == {f"content/{TENANT}/{blob.content_type}/{blob.content_id}.json": b""}
