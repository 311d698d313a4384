"""Checkpoints, the content ledger and run history in Azure Table Storage.

Behaves like ``auditlake/state/local.py`` (the local tool's DuckDB store), with the concurrency
Azure adds: many Function instances share these tables, so every read-modify-write is guarded by the
entity's ETag. Checkpoint writes fail loudly (``CheckpointConflictError``) when another
writer moved the checkpoint; ``claim`` lets exactly one instance work on a blob at a time.

Layout (PartitionKey / RowKey):

* checkpoints: ``{tenant_id}|{content_type}`` / ``checkpoint``
* ledger: ``{tenant_id}|{content_type}`` / the content id, made key-safe by ``encode_key``;
  plus one *open marker* row per unsettled blob in the same partition (RowKey
  ``OPEN_PREFIX + key``), so ``pending`` reads the few open blobs with a RowKey range
  instead of scanning years of settled ones.
* runs: ``{tenant_id}|{content_type}`` / the run id.

The Purview audit search's slices are ledger rows like blobs (ContentType ``Purview.Search``,
ContentId the slice id, ContentUri the Graph query's URL); ``slice_rows`` and ``set_query`` are
the two things the backfill needs beyond the StateStore port (``purview.backfill.SliceLedger``).

Round trips (most of the Azure path's client CPU): the ledger's point operations and
transactions go through ``LeanTableClient`` (function_app/azure/table_rest.py), 0.4-1.1 ms of
client CPU a call against Azurite, where azure-data-tables' pipeline costs 2-3 ms and a
transaction ~9 ms; queries and table creation stay on the SDK. The store remembers the ETag and
properties of the ledger rows it last wrote or read (bounded, per process) and tries the
ETag-guarded update with them before reading the row again; a row changed elsewhere fails the
precondition and is read afresh, exactly as before. The rows of a listing (created with their
markers, moved to ``queued``) are written in entity group transactions (one partition, atomic); a
transaction refused for one entity (it exists, its ETag moved) is retried without it, and the
entities left over take the one-entity path. A mark writes its row and its marker (removed when
the blob settles, re-written while it is open) in one transaction, so a blob's claim and mark are
two round trips.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import orjson
from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import EdmType, EntityProperty, TableEntity, TableTransactionError, UpdateMode
from azure.data.tables.aio import TableServiceClient

from function_app.azure.signed_rest import LazySession, RequestHook
from function_app.azure.table_rest import LeanTableClient, refused_at
from function_app.core.errors import CheckpointConflictError
from function_app.core.model import (
    TERMINAL_STATUSES,
    BlobStatus,
    Checkpoint,
    ContentBlob,
    RunStats,
    first_error,
    utc,
)
from function_app.purview.backfill import SEARCH_CONTENT_TYPE, SliceRow

log = logging.getLogger(__name__)

T = TypeVar("T")
# One operation of an entity group transaction: its name, the entity, the keyword arguments.
_Op = tuple[str, dict[str, Any], dict[str, Any]]

DEFAULT_CHECKPOINTS_TABLE = "AuditLakeCheckpoints"
DEFAULT_LEDGER_TABLE = "AuditLakeLedger"
DEFAULT_RUNS_TABLE = "AuditLakeRuns"

CHECKPOINT_ROW_KEY = "checkpoint"
# encode_key turns every "%" into "%XX" with two upper-case hex digits, so no encoded id
# ever contains "%O": marker rows can never collide with ledger rows.
OPEN_PREFIX = "%O:"
_OPEN_END = "%O;"  # the next RowKey after every OPEN_PREFIX key (":" + 1 == ";")

# Characters Table Storage forbids in keys (plus "%", the escape itself).
_FORBIDDEN = frozenset("/\\#?%")
# A key with none of those nor a control character: encode_key leaves it as it is.
_KEY_SAFE = re.compile("[^" + re.escape("".join(sorted(_FORBIDDEN))) + r"\x00-\x1f\x7f-\x9f]*")
# A string property holds at most 64 KiB of UTF-16; leave room for surrogate pairs.
_MAX_STRING = 30_000
# Concurrent point operations per call: enough to hide latency, few enough to stay polite.
_PARALLEL = 16
# Bounded retries of an ETag-guarded read-modify-write before giving up.
_MAX_RETRIES = 8
# An entity group transaction holds at most 100 operations (and 4 MiB; a ledger row is < 64 KiB).
_TX_OPS = 100
# Fewer operations than this go one at a time. Through LeanTableClient a transaction of two costs
# about as much as one call (measured against Azurite: 0.53-0.87 ms of CPU against 0.42-0.56 ms a
# call and 0.86-1.10 ms for the two calls); through the SDK it cost ~9 ms, and this was 6.
_TX_MIN_OPS = 2
# Transactions tried per chunk, each without the entity that refused the last one, before the
# rest of the chunk goes one entity at a time (a re-listing of known blobs would otherwise
# cost a refused transaction per blob).
_TX_ATTEMPTS = 3
# Ledger rows whose ETag this process remembers: the rows between a listing and their
# settling on this instance (~2 KB each); an evicted row is only read again.
_ROW_CACHE = 4096


class StateConflictError(Exception):
    """A ledger row kept changing under an ETag-guarded update; try again later."""


def encode_key(value: str) -> str:
    """Make *value* usable as a PartitionKey/RowKey, reversibly (see ``decode_key``).

    Percent-encodes only what Table Storage forbids (``/ \\ # ?`` and control characters)
    and ``%`` itself, so ordinary content ids (``$``, ``_``, digits) stay readable.
    """
    if _KEY_SAFE.fullmatch(value):
        # Content ids and tenant ids almost always are (a ledger write encodes several keys).
        return value
    out = []
    for ch in value:
        code = ord(ch)
        if ch in _FORBIDDEN or code < 0x20 or 0x7F <= code <= 0x9F:
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8")))
        else:
            out.append(ch)
    return "".join(out)


def decode_key(key: str) -> str:
    """Invert ``encode_key``."""
    data = bytearray()
    i = 0
    raw = key.encode("utf-8")
    while i < len(raw):
        if raw[i] == 0x25 and i + 2 < len(raw):
            data.append(int(raw[i + 1:i + 3], 16))
            i += 3
        else:
            data.append(raw[i])
            i += 1
    return data.decode("utf-8")


def partition_key(tenant_id: str, content_type: str) -> str:
    """The PartitionKey shared by a feed's checkpoint, ledger and runs."""
    return f"{encode_key(tenant_id)}|{encode_key(content_type)}"


def _dt(value: Any) -> datetime | None:
    """A plain aware-UTC datetime from an entity value (the SDK returns a subclass)."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}")
    v = utc(value)
    return datetime.combine(v.date(), v.time(), tzinfo=UTC)


def _req_dt(value: Any) -> datetime:
    result = _dt(value)
    if result is None:
        raise ValueError("missing datetime property")
    return result


def _int(value: Any) -> int | None:
    # Int64 properties come back wrapped in EntityProperty; Int32 as plain int.
    if isinstance(value, EntityProperty):
        value = value.value
    return None if value is None else int(value)


def _int64(value: int | None) -> EntityProperty | None:
    return None if value is None else EntityProperty(value, EdmType.INT64)


def _clip(text: str | None) -> str | None:
    if text is None or len(text) <= _MAX_STRING:
        return text
    return text[: _MAX_STRING - 20] + " ...[truncated]"


def _blob_from(entity: TableEntity | dict[str, Any]) -> ContentBlob:
    return ContentBlob(
        str(entity["TenantId"]), str(entity["ContentType"]), str(entity["ContentId"]), str(entity["ContentUri"]),
        _req_dt(entity["ContentCreated"]), _req_dt(entity["ContentExpiration"]),
    )


def _props(entity: TableEntity) -> dict[str, Any]:
    """The entity's properties as a plain dict, for a REPLACE after modification."""
    out: dict[str, Any] = {}
    for name, value in entity.items():
        if isinstance(value, datetime):
            out[name] = _dt(value)
        else:
            out[name] = value
    return out


def _etag(entity: TableEntity) -> str:
    return str(entity.metadata["etag"])


_REPLACE: dict[str, Any] = {"mode": UpdateMode.REPLACE}


def _if_unchanged(etag: str) -> dict[str, Any]:
    """The keyword arguments of an update that replaces the row only if it still has *etag*."""
    return {"mode": UpdateMode.REPLACE, "etag": etag, "match_condition": MatchConditions.IfNotModified}


def _unwrapped(props: dict[str, Any]) -> dict[str, Any]:
    return {k: (_int(v) if isinstance(v, EntityProperty) else v) for k, v in props.items()}


def _key(blob: ContentBlob) -> tuple[str, str]:
    """The PartitionKey and RowKey of *blob*'s ledger row."""
    return partition_key(blob.tenant_id, blob.content_type), encode_key(blob.content_id)


def _marker(blob: ContentBlob) -> dict[str, Any]:
    """*blob*'s open marker row."""
    return {
        "PartitionKey": partition_key(blob.tenant_id, blob.content_type),
        "RowKey": OPEN_PREFIX + encode_key(blob.content_id),
        "ContentId": blob.content_id,
    }


def _chunks(items: Iterable[T], blob_of: Callable[[T], ContentBlob], ops_per_item: int) -> list[list[T]]:
    """*items* grouped by partition, each group small enough for one transaction."""
    by_partition: dict[str, list[T]] = defaultdict(list)
    for item in items:
        blob = blob_of(item)
        by_partition[partition_key(blob.tenant_id, blob.content_type)].append(item)
    size = _TX_OPS // ops_per_item
    return [group[i:i + size] for group in by_partition.values() for i in range(0, len(group), size)]


class TableStateStore:
    """StateStore over Azure Table Storage (async SDK); safe to share between coroutines
    of one event loop, and between instances of the app (ETag-guarded writes)."""

    def __init__(
        self,
        service: TableServiceClient,
        *,
        checkpoints_table: str = DEFAULT_CHECKPOINTS_TABLE,
        ledger_table: str = DEFAULT_LEDGER_TABLE,
        runs_table: str = DEFAULT_RUNS_TABLE,
        clock: Callable[[], datetime] | None = None,
        request_hook: RequestHook | None = None,
    ) -> None:
        self._service = service
        self._request_hook = request_hook
        # The lean calls' session, shared by the three tables.
        self._session = LazySession(limit=_PARALLEL * 2)
        self._names = (checkpoints_table, ledger_table, runs_table)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._tables: tuple[LeanTableClient, LeanTableClient, LeanTableClient] | None = None
        self._lock = asyncio.Lock()
        # (PartitionKey, RowKey) -> (ETag, properties) of ledger rows as last written or read here.
        self._rows: OrderedDict[tuple[str, str], tuple[str, dict[str, Any]]] = OrderedDict()

    @classmethod
    def from_connection_string(cls, connection_string: str, **kwargs: Any) -> TableStateStore:
        """A store on the account of *connection_string* (Azurite locally)."""
        return cls(TableServiceClient.from_connection_string(connection_string), **kwargs)

    async def close(self) -> None:
        """Close the HTTP session; the store cannot be used afterwards."""
        if self._tables is not None:
            for table in self._tables:
                await table.close()
        await self._service.close()
        await self._session.close()

    async def __aenter__(self) -> TableStateStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _clients(self) -> tuple[LeanTableClient, LeanTableClient, LeanTableClient]:
        """The three table clients, creating the tables on first use."""
        if self._tables is None:
            async with self._lock:
                if self._tables is None:
                    clients = []
                    for index, name in enumerate(self._names):
                        sdk = await self._service.create_table_if_not_exists(name)
                        # The ledger's writes of concurrent blobs go together (table_rest._Coalescer).
                        clients.append(LeanTableClient(sdk, self._session, request_hook=self._request_hook,
                                                       coalesce=index == 1))
                    self._tables = (clients[0], clients[1], clients[2])
        return self._tables

    async def _checkpoints(self) -> LeanTableClient:
        return (await self._clients())[0]

    async def _ledger(self) -> LeanTableClient:
        return (await self._clients())[1]

    async def _runs(self) -> LeanTableClient:
        return (await self._clients())[2]

    # -- checkpoints --------------------------------------------------------------------

    async def get_checkpoint(self, tenant_id: str, content_type: str) -> Checkpoint | None:
        """The checkpoint with its ETag, or None if the feed has none yet."""
        table = await self._checkpoints()
        try:
            entity = await table.get_entity(partition_key(tenant_id, content_type), CHECKPOINT_ROW_KEY)
        except ResourceNotFoundError:
            return None
        return Checkpoint(tenant_id, content_type, _req_dt(entity["Position"]),
                          last_sweep=_dt(entity.get("LastSweep")), etag=_etag(entity))

    async def save_checkpoint(self, checkpoint: Checkpoint) -> Checkpoint:
        """Persist *checkpoint* and return it with its new ETag.

        With an etag, replaces only if nobody wrote since that etag was read; without one,
        creates the checkpoint only if none exists. Otherwise raises CheckpointConflictError.
        """
        table = await self._checkpoints()
        entity = {
            "PartitionKey": partition_key(checkpoint.tenant_id, checkpoint.content_type),
            "RowKey": CHECKPOINT_ROW_KEY,
            "TenantId": checkpoint.tenant_id,
            "ContentType": checkpoint.content_type,
            "Position": utc(checkpoint.position),
            "LastSweep": None if checkpoint.last_sweep is None else utc(checkpoint.last_sweep),
            "UpdatedAt": utc(self._clock()),
        }
        try:
            if checkpoint.etag is None:
                meta = await table.create_entity(entity)
            else:
                meta = await table.update_entity(entity, mode=UpdateMode.REPLACE, etag=checkpoint.etag,
                                                 match_condition=MatchConditions.IfNotModified)
        except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError) as exc:
            log.warning("checkpoint conflict tenant_id=%s content_type=%s error=%s",
                        checkpoint.tenant_id, checkpoint.content_type, type(exc).__name__)
            raise CheckpointConflictError(checkpoint.tenant_id, checkpoint.content_type) from exc
        return Checkpoint(checkpoint.tenant_id, checkpoint.content_type, utc(checkpoint.position),
                          last_sweep=None if checkpoint.last_sweep is None else utc(checkpoint.last_sweep),
                          etag=str(meta["etag"]))

    # -- ledger -------------------------------------------------------------------------

    async def _gather(self, items: Iterable[T], fn: Callable[[T], Awaitable[Any]]) -> list[Any]:
        gate = asyncio.Semaphore(_PARALLEL)

        async def one(item: T) -> Any:
            async with gate:
                return await fn(item)

        return list(await asyncio.gather(*(one(i) for i in items)))

    def _ledger_entity(self, blob: ContentBlob, status: BlobStatus, listed_at: datetime) -> dict[str, Any]:
        return {
            "PartitionKey": partition_key(blob.tenant_id, blob.content_type),
            "RowKey": encode_key(blob.content_id),
            "TenantId": blob.tenant_id,
            "ContentType": blob.content_type,
            "ContentId": blob.content_id,
            "ContentUri": blob.content_uri,
            "ContentCreated": utc(blob.content_created),
            "ContentExpiration": utc(blob.content_expiration),
            "ListedAt": utc(listed_at),
            "Status": status.value,
            "Attempts": 0,
        }

    # -- rows remembered between writes ---------------------------------------------------

    def _remember(self, key: tuple[str, str], etag: str, props: dict[str, Any]) -> None:
        # As the service keeps it: a None property is not stored, so it is not read back either.
        self._rows[key] = (etag, {k: v for k, v in props.items() if v is not None})
        self._rows.move_to_end(key)
        while len(self._rows) > _ROW_CACHE:
            self._rows.popitem(last=False)

    def _recall(self, key: tuple[str, str]) -> tuple[str, dict[str, Any]] | None:
        hit = self._rows.get(key)
        # A copy: callers edit it, and what is remembered must stay what the service holds.
        return None if hit is None else (hit[0], dict(hit[1]))

    def _forget(self, key: tuple[str, str]) -> None:
        self._rows.pop(key, None)

    async def _transact(
        self,
        table: LeanTableClient,
        items: Sequence[T],
        ops_of: Callable[[T], list[_Op]],
        done: Callable[[T, list[Mapping[str, Any]]], None],
        refused: Callable[[T, int], None] = lambda item, op: None,
    ) -> list[T]:
        """Write the operations of *items* (one partition, at most ``_TX_OPS`` in all) as one
        transaction; *done* gets each written item with its operations' results.

        The service refuses a transaction whole and names the operation it refused: that item
        (*refused* is told which of its operations) is set aside and the rest tried again, up to
        ``_TX_ATTEMPTS`` transactions. Returns the items not written, for the one-entity path.
        """
        left, aside = list(items), []
        for _ in range(_TX_ATTEMPTS):
            groups = [ops_of(item) for item in left]
            ops = [op for group in groups for op in group]
            if len(ops) < _TX_MIN_OPS:
                break
            try:
                results = await table.submit_transaction(ops)
            except TableTransactionError as exc:
                at = refused_at(exc, len(ops))
                if at is None:
                    break
                for i, group in enumerate(groups):
                    if at < len(group):
                        refused(left[i], at)
                        aside.append(left.pop(i))
                        break
                    at -= len(group)
                continue
            start = 0
            for item, group in zip(left, groups, strict=True):
                done(item, results[start:start + len(group)])
                start += len(group)
            left = []
        return aside + left

    async def _open_marker(self, table: LeanTableClient, blob: ContentBlob) -> None:
        # Always written after the ledger row (so ``pending`` never sees a marker before its
        # row) and re-written whenever an unsettled row is seen; a marker left behind by a
        # settled row is removed by ``pending``.
        await table.upsert_entity(_marker(blob), **_REPLACE)

    async def _close_marker(self, table: LeanTableClient, blob: ContentBlob) -> None:
        # delete_entity treats a missing entity as deleted (404 is not raised).
        await table.delete_entity(partition_key(blob.tenant_id, blob.content_type),
                                  OPEN_PREFIX + encode_key(blob.content_id))

    async def register_listed(self, blobs: Sequence[ContentBlob], listed_at: datetime) -> list[ContentBlob]:
        """Record listed blobs; return the new ones, then those known but still ``listed``.

        A blob another planner registered at the same moment counts as known and
        ``listed``: it is returned by both, and ``claim`` decides who processes it.
        """
        if not blobs:
            return []
        table = await self._ledger()
        # Duplicates within one listing are recorded once, as the local store does.
        unique = list({_key(b): b for b in blobs}.values())
        unsettled = (BlobStatus.LISTED.value, BlobStatus.QUEUED.value)
        status_of: dict[tuple[str, str], str] = {}
        one_by_one: list[ContentBlob] = []

        async def one(blob: ContentBlob) -> None:
            key = _key(blob)
            entity = self._ledger_entity(blob, BlobStatus.LISTED, listed_at)
            try:
                meta = await table.create_entity(entity)
                self._remember(key, str(meta["etag"]), entity)
                status = "new"
            except ResourceExistsError:
                # Create-then-read rather than read-then-create: two planners racing on
                # one blob cannot both see it as new.
                existing = await table.get_entity(*key)
                self._remember(key, _etag(existing), _props(existing))
                status = str(existing["Status"])
            if status == "new" or status in unsettled:
                await self._open_marker(table, blob)
            status_of[key] = status

        def created(item: tuple[ContentBlob, dict[str, Any]], results: list[Mapping[str, Any]]) -> None:
            blob, entity = item
            self._remember(_key(blob), str(results[0]["etag"]), entity)
            status_of[_key(blob)] = "new"

        async def create(chunk: list[tuple[ContentBlob, dict[str, Any]]]) -> None:
            # Each new row with its marker; a row that exists refuses the transaction and is
            # looked at on its own.
            left = await self._transact(
                table, chunk, lambda item: [("create", item[1], {}), ("upsert", _marker(item[0]), _REPLACE)],
                created)
            one_by_one.extend(blob for blob, _ in left)

        async def reopen(chunk: list[ContentBlob]) -> None:
            left = await self._transact(table, chunk, lambda b: [("upsert", _marker(b), _REPLACE)],
                                        lambda b, results: None)
            one_by_one.extend(left)

        # A row this process moved to "queued" stays known and handed on whatever happened to it
        # since (nothing moves a row back to "listed"): listed again (the planner lists windows
        # more than once), only its marker is re-written. Every other blob is created.
        to_create: list[tuple[ContentBlob, dict[str, Any]]] = []
        handed: list[ContentBlob] = []
        for blob in unique:
            hit = self._rows.get(_key(blob))
            if hit is not None and hit[1].get("Status") == BlobStatus.QUEUED.value:
                status_of[_key(blob)] = BlobStatus.QUEUED.value
                handed.append(blob)
            else:
                to_create.append((blob, self._ledger_entity(blob, BlobStatus.LISTED, listed_at)))
        jobs = [partial(create, chunk) for chunk in _chunks(to_create, lambda item: item[0], 2)]
        jobs += [partial(reopen, chunk) for chunk in _chunks(handed, lambda b: b, 1)]
        await self._gather(jobs, lambda job: job())
        await self._gather(one_by_one, one)
        new = [b for b in unique if status_of[_key(b)] == "new"]
        never_handed = [b for b in unique if status_of[_key(b)] == BlobStatus.LISTED.value]
        return new + never_handed

    async def _replace(self, table: LeanTableClient, props: dict[str, Any], etag: str,
                       also: _Op | None) -> tuple[str, bool]:
        """The ETag-guarded replace of a ledger row, with *also* (its marker's write) in the same
        transaction when given: one round trip instead of two. Returns the row's new ETag and
        whether *also* was written. Raises what ``update_entity`` raises when the row moved; a
        transaction refused for *also* alone (a marker already gone) is sent again without it."""
        if also is not None:
            try:
                results = await table.submit_transaction([("update", props, _if_unchanged(etag)), also])
            except TableTransactionError as exc:
                if refused_at(exc, 2) == 0:  # the row itself, not its marker
                    if exc.status_code == 412:
                        raise ResourceModifiedError(message=exc.message) from exc
                    if exc.status_code == 404:
                        raise ResourceNotFoundError(message=exc.message) from exc
            else:
                return str(results[0]["etag"]), True
        meta = await table.update_entity(props, **_if_unchanged(etag))
        return str(meta["etag"]), False

    async def _modify(
        self,
        blob: ContentBlob,
        change: Callable[[dict[str, Any]], bool],
        *,
        create: Callable[[], dict[str, Any]] | None = None,
        also: _Op | None = None,
    ) -> tuple[dict[str, Any] | None, bool, bool]:
        """ETag-guarded read-modify-write of *blob*'s ledger row.

        *change* edits the properties in place and returns False to leave the row alone.
        A missing row is created from *create* (then changed) or, without it, ignored.
        An update carries *also* in its transaction (see ``_replace``).
        Returns the properties written (None if nothing was written), whether the row was
        created and whether *also* was written; raises StateConflictError if the row kept
        changing underneath.

        The row as this process last wrote or read it is tried first, without reading: its
        ETag proves it current or the update is refused and the row read afresh. Only a write
        is decided on it; a refusal (settled, claimed elsewhere) is confirmed on the row read.
        """
        table = await self._ledger()
        key = _key(blob)
        remembered = self._recall(key)
        if remembered is not None:
            etag, props = remembered
            if change(props):
                try:
                    new_etag, together = await self._replace(table, props, etag, also)
                except (ResourceModifiedError, ResourceNotFoundError):
                    self._forget(key)
                else:
                    self._remember(key, new_etag, props)
                    return props, False, together
        for _ in range(_MAX_RETRIES):
            try:
                entity = await table.get_entity(*key)
            except ResourceNotFoundError:
                self._forget(key)
                if create is None:
                    return None, False, False
                props = create()
                if not change(props):
                    return None, False, False
                try:
                    meta = await table.create_entity(props)
                except ResourceExistsError:
                    continue
                self._remember(key, str(meta["etag"]), props)
                return props, True, False
            props = _props(entity)
            self._remember(key, _etag(entity), props)
            if not change(props):
                return None, False, False
            try:
                new_etag, together = await self._replace(table, props, _etag(entity), also)
            except (ResourceModifiedError, ResourceNotFoundError):
                continue
            self._remember(key, new_etag, props)
            return props, False, together
        self._forget(key)
        raise StateConflictError(
            f"ledger row kept changing: tenant {blob.tenant_id} content type {blob.content_type} "
            f"content id {blob.content_id}")

    async def mark_queued(self, blobs: Sequence[ContentBlob]) -> None:
        """Move rows that are ``listed`` to ``queued``; rows in any other status are left alone."""

        def change(props: dict[str, Any]) -> bool:
            if props.get("Status") != BlobStatus.LISTED.value:
                return False
            props["Status"] = BlobStatus.QUEUED.value
            return True

        table = await self._ledger()
        # The rows just registered are remembered: a listing's page moves in one transaction
        # per partition. The others (and any a transaction refused) go one at a time.
        remembered: list[tuple[ContentBlob, str, dict[str, Any]]] = []
        one_by_one: list[ContentBlob] = []
        for blob in {_key(b): b for b in blobs}.values():
            hit = self._recall(_key(blob))
            if hit is not None and change(hit[1]):
                remembered.append((blob, hit[0], hit[1]))
            else:
                one_by_one.append(blob)

        def written(item: tuple[ContentBlob, str, dict[str, Any]], results: list[Mapping[str, Any]]) -> None:
            self._remember(_key(item[0]), str(results[0]["etag"]), item[2])

        async def together(chunk: list[tuple[ContentBlob, str, dict[str, Any]]]) -> None:
            left = await self._transact(
                table, chunk, lambda item: [("update", item[2], _if_unchanged(item[1]))], written,
                lambda item, _: self._forget(_key(item[0])))
            one_by_one.extend(blob for blob, _, _ in left)

        await self._gather(_chunks(remembered, lambda item: item[0], 1), together)

        async def one(blob: ContentBlob) -> None:
            await self._modify(blob, change)

        await self._gather(one_by_one, one)

    async def pending(self, tenant_id: str, content_type: str) -> list[ContentBlob]:
        """Blobs ``listed`` or ``queued`` but not settled, oldest ``contentCreated`` first."""
        table = await self._ledger()
        pk = partition_key(tenant_id, content_type)
        markers = table.query_entities(
            "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
            parameters={"pk": pk, "lo": OPEN_PREFIX, "hi": _OPEN_END},
            select=["RowKey"],
        )
        keys = [str(m["RowKey"])[len(OPEN_PREFIX):] async for m in markers]

        async def one(rk: str) -> ContentBlob | None:
            try:
                entity = await table.get_entity(pk, rk)
            except ResourceNotFoundError:
                entity = None
            if entity is not None and entity.get("Status") in (BlobStatus.LISTED.value, BlobStatus.QUEUED.value):
                return _blob_from(entity)
            # A stale marker: its row settled after the marker was (re-)written.
            await table.delete_entity(pk, OPEN_PREFIX + rk)
            return None

        found = [b for b in await self._gather(keys, one) if b is not None]
        return sorted(found, key=lambda b: (b.content_created, b.content_id))

    async def failed(self, tenant_id: str | None = None) -> list[ContentBlob]:
        """Blobs whose last attempt failed, for ``replay`` (a table scan: operator use only)."""
        table = await self._ledger()
        if tenant_id is None:
            rows = table.query_entities("Status eq @s", parameters={"s": BlobStatus.FAILED.value})
        else:
            rows = table.query_entities("Status eq @s and TenantId eq @t",
                                        parameters={"s": BlobStatus.FAILED.value, "t": tenant_id})
        # Open markers have no Status, so the filter never returns them.
        found = [_blob_from(e) async for e in rows]
        return sorted(found, key=lambda b: (b.content_created, b.content_id))

    async def mark(
        self,
        blob: ContentBlob,
        status: BlobStatus,
        *,
        at: datetime,
        records: int | None = None,
        size: int | None = None,
        error: str | None = None,
    ) -> dict[str, Any] | None:
        """Move the row to *status*, counting the attempt; settling releases any claim; returns
        the row's properties as written (ints unwrapped), so nobody needs to read it back.

        Error is replaced (cleared when None), FirstError follows ``model.first_error`` (a row
        written before it existed gains it at its next mark); Records, Bytes keep their value when None;
        FetchedAt is *at* (the last attempt), IngestedAt is *at* only for ``ingested``.
        A row that does not exist (a message for a blob never registered) is created, so
        the outcome is never lost (the local store would ignore it).
        """
        at = utc(at)

        def change(props: dict[str, Any]) -> bool:
            # Before Status and Error are replaced: the rule reads what the row said until now.
            props["FirstError"] = _clip(first_error(props, status, error))
            props["Status"] = status.value
            props["Attempts"] = (_int(props.get("Attempts")) or 0) + 1
            props["Error"] = _clip(error)
            if records is not None:
                props["Records"] = _int64(records)
            if size is not None:
                props["Bytes"] = _int64(size)
            props["FetchedAt"] = at
            if status is BlobStatus.INGESTED:
                props["IngestedAt"] = at
            if status in TERMINAL_STATUSES:
                props["ClaimOwner"] = None
                props["ClaimUntil"] = None
            return True

        settled = status in TERMINAL_STATUSES
        marker: _Op = ("delete", _marker(blob), {}) if settled else ("upsert", _marker(blob), _REPLACE)
        written, _, together = await self._modify(blob, change, create=lambda: self._ledger_entity(blob, status, at),
                                                  also=marker)
        table = await self._ledger()
        if settled:
            if not together:
                await self._close_marker(table, blob)
            # Settled rows are rarely written again; keep the room for the open ones.
            self._forget(_key(blob))
        elif not together:
            await self._open_marker(table, blob)
        return None if written is None else _unwrapped(written)

    async def claim(
        self, blob: ContentBlob, owner: str, lease: timedelta, now: datetime
    ) -> dict[str, Any] | None:
        """Take the right to process *blob* until ``now + lease``; the ledger row as written if
        *owner* holds it (what the listing recorded, so nobody reads it back), else None.

        Exactly one of any number of concurrent claimers wins (ETag-guarded). A live claim
        of another owner refuses; an expired one is taken over; the same owner renews.
        A settled blob (ingested, failed, expired) cannot be claimed. A blob missing from
        the ledger (a message for a blob never registered) is recorded as ``queued`` and
        claimed. A row that keeps changing underneath counts as lost (None).
        """
        now = utc(now)

        def change(props: dict[str, Any]) -> bool:
            if props.get("Status") in TERMINAL_STATUSES:
                return False
            holder, until = props.get("ClaimOwner"), _dt(props.get("ClaimUntil"))
            if holder and holder != owner and until is not None and until > now:
                return False
            props["ClaimOwner"] = owner
            props["ClaimUntil"] = now + lease
            return True

        try:
            written, created, _ = await self._modify(
                blob, change, create=lambda: self._ledger_entity(blob, BlobStatus.QUEUED, now))
        except StateConflictError:
            written, created = None, False
        if created:
            await self._open_marker(await self._ledger(), blob)
        log.info("claim tenant_id=%s content_type=%s content_id=%s owner=%s won=%s",
                 blob.tenant_id, blob.content_type, blob.content_id, owner, written is not None)
        return None if written is None else _unwrapped(written)

    async def release(self, blob: ContentBlob, owner: str) -> None:
        """Drop *owner*'s claim, if it still holds one (after a failure that leaves the blob
        to be retried), so another instance need not wait for the lease to run out."""

        def change(props: dict[str, Any]) -> bool:
            if props.get("ClaimOwner") != owner:
                return False
            props["ClaimOwner"] = None
            props["ClaimUntil"] = None
            return True

        await self._modify(blob, change)

    # -- search slices (purview.backfill.SliceLedger) ------------------------------------

    async def slice_rows(self, tenant_id: str) -> dict[str, SliceRow]:
        """Every ``Purview.Search`` ledger row of *tenant_id*, by ContentId, settled ones included.

        One partition read: a tenant's slices are a few hundred rows (a day each, more only where
        a day was cut), so no marker index is needed, unlike a feed's years of blobs."""
        table = await self._ledger()
        rows = table.query_entities("PartitionKey eq @pk", parameters={"pk": partition_key(tenant_id,
                                                                                            SEARCH_CONTENT_TYPE)},
                                    select=["ContentId", "Status", "ContentUri"])
        # Open markers carry a ContentId but no Status: they are not rows.
        return {str(e["ContentId"]): SliceRow(str(e["Status"]), str(e.get("ContentUri") or ""))
                async for e in rows if e.get("Status")}

    async def set_query(self, blob: ContentBlob) -> dict[str, Any] | None:
        """Point the slice's row at the query now answering for it: ContentUri, Status ``queued``.

        The runner registers the slice first, so the row exists; it is created if not, so a query
        is never forgotten (the next run would otherwise start another). Returns the row written."""
        uri = blob.content_uri

        def change(props: dict[str, Any]) -> bool:
            props["ContentUri"] = uri
            props["Status"] = BlobStatus.QUEUED.value
            return True

        written, _, _ = await self._modify(
            blob, change, create=lambda: self._ledger_entity(blob, BlobStatus.QUEUED, utc(self._clock())))
        # Open again (a settled slice asked again), like any unsettled row.
        await self._open_marker(await self._ledger(), blob)
        if written is None:  # pragma: no cover - change always writes
            return None
        return _unwrapped(written)

    # -- runs ---------------------------------------------------------------------------

    async def record_run(self, run: RunStats) -> None:
        """Insert or replace the run's row (keyed by tenant, content type and run id)."""
        table = await self._runs()
        errors = list(run.errors)
        text = orjson.dumps(errors).decode()
        # Keep whole messages while the list fits in one property; say how many were cut.
        while len(text) > _MAX_STRING and errors:
            errors = errors[:-1]
            text = orjson.dumps([*errors, f"... {len(run.errors) - len(errors)} more"]).decode()
        entity = {
            "PartitionKey": partition_key(run.tenant_id, run.content_type),
            "RowKey": encode_key(run.run_id),
            "RunId": run.run_id,
            "TenantId": run.tenant_id,
            "ContentType": run.content_type,
            "StartedAt": utc(run.started_at),
            "FinishedAt": None if run.finished_at is None else utc(run.finished_at),
            "WindowStart": None if run.window_start is None else utc(run.window_start),
            "WindowEnd": None if run.window_end is None else utc(run.window_end),
            "Pages": run.pages,
            "BlobsListed": run.blobs_listed,
            "BlobsNew": run.blobs_new,
            "Throttled": run.throttled,
            "Errors": _clip(text),
        }
        await table.upsert_entity(entity, mode=UpdateMode.REPLACE)

    async def get_run(self, tenant_id: str, content_type: str, run_id: str) -> RunStats | None:
        """The recorded run, or None."""
        table = await self._runs()
        try:
            e = await table.get_entity(partition_key(tenant_id, content_type), encode_key(run_id))
        except ResourceNotFoundError:
            return None
        return RunStats(
            run_id=str(e["RunId"]), tenant_id=str(e["TenantId"]), content_type=str(e["ContentType"]),
            started_at=_req_dt(e["StartedAt"]), finished_at=_dt(e.get("FinishedAt")),
            window_start=_dt(e.get("WindowStart")), window_end=_dt(e.get("WindowEnd")),
            pages=_int(e.get("Pages")) or 0, blobs_listed=_int(e.get("BlobsListed")) or 0,
            blobs_new=_int(e.get("BlobsNew")) or 0, throttled=_int(e.get("Throttled")) or 0,
            errors=list(orjson.loads(str(e.get("Errors") or "[]"))),
        )

    async def ledger_row(self, blob: ContentBlob) -> dict[str, Any] | None:
        """The ledger row's properties (datetimes aware UTC, ints unwrapped), or None."""
        table = await self._ledger()
        key = _key(blob)
        try:
            entity = await table.get_entity(*key)
        except ResourceNotFoundError:
            self._forget(key)
            return None
        props = _props(entity)
        # Read before a mark (the stale-row sweep, ingestion failure reports): remembered for it.
        self._remember(key, _etag(entity), props)
        return _unwrapped(props)
