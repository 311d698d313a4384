"""The ledger's point operations and entity group transactions, signed and sent by
``signed_rest.SignedRest`` (see there for why: 0.4-1.1 ms of client CPU a call where
azure-data-tables costs 2-3 ms, and a transaction ~9 ms, since it builds and parses the multipart
body with the ``email`` package). Nothing else changes:

* entities are decoded by the SDK's own function and encoded exactly as its own function does
  (``encode_entity``: the ledger's strings, flags and times directly, anything else by the SDK's),
  so EDM types, ETags and the ``TableEntity`` the store reads are exactly what the SDK would give;
* the same errors: ``ResourceNotFoundError`` (404), ``ResourceExistsError`` (409),
  ``ResourceModifiedError`` (412), ``TableTransactionError`` naming the refused operation's
  index, ``HttpResponseError`` for anything else; a delete of a missing entity is not an error,
  as in the SDK;
* queries and table creation, rare and paged, stay on the SDK client (``sdk``).

With ``coalesce=True`` the ETag-guarded updates and the transactions that run at the same time on
one partition go as ONE entity group transaction (``_Coalescer``): the Functions host runs dozens
of messages at once, and the blobs of one shared ADX ingestion are marked together, so their
ledger writes meet in the same turn of the event loop. Each caller still gets exactly what it
would have got alone: a merged transaction the service refuses is sent again without the refused
caller's part, and that part alone, so its own error (or success) is the one it sees.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, cast
from urllib.parse import quote

import aiohttp
import orjson
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.data.tables import EdmType, EntityProperty, TableEntity, TableTransactionError, UpdateMode
from azure.data.tables._deserialize import _convert_to_entity as _sdk_decode  # the SDK's own, on purpose
from azure.data.tables._serialize import _add_entity_properties  # the SDK's own encoding, on purpose
from azure.data.tables.aio import TableClient

from function_app.azure.signed_rest import RequestHook, SignedRest

_decode = cast(Callable[[Any], TableEntity], _sdk_decode)  # the SDK leaves it untyped

API_VERSION = "2019-02-02"  # the version azure-data-tables speaks; bearer tokens need >= 2019-02-02
_ACCEPT = "application/json;odata=minimalmetadata"
_ODATA = {"Accept": _ACCEPT, "DataServiceVersion": "3.0", "MaxDataServiceVersion": "3.0;NetFx"}
_JSON = {**_ODATA, "Content-Type": "application/json"}

# One operation of a transaction, as the SDK takes it: its name, the entity, keyword arguments.
TransactionOp = tuple[str, Mapping[str, Any], Mapping[str, Any]]


def _edm_datetime(value: datetime) -> str:
    # The SDK's text of a time (strftime "%Y-%m-%dT%H:%M:%S.%fZ" in UTC), made ~5x faster.
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def encode_entity(entity: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON properties of *entity*, exactly as the SDK's ``_add_entity_properties`` makes them.

    The ledger's entities are strings, flags, times and counts: encoded here. Any other value (floats,
    other EDM tuples, the SDK's round-trip times, times before year 1000, which strftime does not pad)
    sends the whole entity through the SDK's function. That function spent most of its time in
    strftime (~2 % of the Azure path's client CPU: every claim, mark and listed blob writes one)."""
    properties: dict[str, Any] = {}
    for name, value in entity.items():
        kind = type(value)
        if kind is str:
            properties[name] = value
            properties[name + "@odata.type"] = "Edm.String"
        elif kind is bool or (kind is int and -(2**31) <= value < 2**31):
            properties[name] = value  # an Edm.Int32 or Edm.Boolean: the service's defaults, not annotated
        elif kind is datetime and value.year >= 1000:
            properties[name] = _edm_datetime(value)
            properties[name + "@odata.type"] = "Edm.DateTime"
        elif kind is EntityProperty and value[1] is EdmType.INT64 and type(value[0]) is int \
                and -(2**63) <= value[0] < 2**63:
            properties[name] = str(value[0])
            properties[name + "@odata.type"] = "Edm.Int64"
        elif value is not None:
            return _add_entity_properties(entity)
    return properties


def _key_path(table: str, partition_key: str, row_key: str) -> str:
    """The entity's URL path segment; a quote in a key is doubled (OData), the rest percent-encoded."""
    return f"{table}(PartitionKey='{_quoted_key(partition_key)}',RowKey='{_quoted_key(row_key)}')"


@lru_cache(maxsize=8192)
def _quoted_key(key: str) -> str:
    # Cached: a feed's partition key is in every call, and a blob's row key in its claim, its mark
    # and its marker's (urllib's quote was ~1 % of the Azure path's samples).
    return quote(key.replace("'", "''"), safe="")


def refused_at(exc: TableTransactionError, size: int) -> int | None:
    """The operation of a transaction of *size* the service refused, or None if it did not say
    (the SDK reports 0 then)."""
    head = (exc.message or "").split(":", 1)[0]
    return exc.index if head.isdigit() and 0 <= exc.index < size else None


def _error_text(body: bytes) -> tuple[str | None, str]:
    """The service's error code and message from an OData error body (or the body itself)."""
    try:
        error = orjson.loads(body)["odata.error"]
        return str(error.get("code") or "") or None, str(error["message"]["value"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None, body.decode("utf-8", "replace")[:500]


def _table_signs(method: str, headers: Mapping[str, str]) -> str:
    # Table SharedKeyLite signs the date and the resource only.
    return f"{headers['x-ms-date']}\n"


def _if_match(kwargs: Mapping[str, Any]) -> str:
    """If-Match for an update or delete: the entity's ETag when the caller guards on it, else any."""
    etag, condition = kwargs.get("etag"), kwargs.get("match_condition")
    if etag and condition == MatchConditions.IfNotModified:
        return str(etag)
    if condition not in (None, MatchConditions.Unconditionally, MatchConditions.IfNotModified):
        raise ValueError(f"unsupported match condition {condition!r}")
    return "*"


def _update_method(mode: Any) -> str:
    return "PUT" if mode == UpdateMode.REPLACE else "MERGE"


class LeanTableClient:
    """One table's hot operations signed and sent directly (see the module docstring); *sdk* is
    the azure-data-tables client of the same table, kept for queries and its credential."""

    def __init__(self, sdk: TableClient, session: Callable[[], aiohttp.ClientSession], *,
                 request_hook: RequestHook | None = None, backoff_s: float = 0.8, coalesce: bool = False) -> None:
        self.sdk = sdk
        self.table_name = sdk.table_name
        self._rest = SignedRest(sdk.url, sdk.credential, session, headers_to_sign=_table_signs,
                                error_text=_error_text, version=API_VERSION, request_hook=request_hook,
                                backoff_s=backoff_s)
        self._coalescer = _Coalescer(self._submit) if coalesce else None

    # -- the SDK's interface, for what the ledger does most --------------------------------

    def query_entities(self, query_filter: str, **kwargs: Any) -> Any:
        return self.sdk.query_entities(query_filter, **kwargs)

    async def close(self) -> None:
        await self.sdk.close()

    async def get_entity(self, partition_key: str, row_key: str) -> TableEntity:
        _, _, body = await self._rest.send("GET", "/" + _key_path(self.table_name, partition_key, row_key),
                                           headers=_ODATA)
        return _decode(orjson.loads(body))

    async def create_entity(self, entity: Mapping[str, Any]) -> dict[str, Any]:
        _, headers, _ = await self._rest.send("POST", "/" + quote(self.table_name, safe=""),
                                              body=orjson.dumps(encode_entity(entity)),
                                              headers={**_JSON, "Prefer": "return-no-content"})
        return {"etag": headers.get("ETag")}

    async def update_entity(self, entity: Mapping[str, Any], mode: Any = UpdateMode.MERGE,
                            **kwargs: Any) -> dict[str, Any]:
        if_match = _if_match(kwargs)
        if self._coalescer is None:
            return await self._write(_update_method(mode), entity, if_match)
        op: TransactionOp = ("update", entity, {"mode": mode, "etag": kwargs.get("etag"),
                                                "match_condition": kwargs.get("match_condition")})

        async def alone() -> list[Mapping[str, Any]]:
            return [await self._write(_update_method(mode), entity, if_match)]

        results = await self._coalescer.submit([op], alone=alone)
        return dict(results[0])

    async def upsert_entity(self, entity: Mapping[str, Any], mode: Any = UpdateMode.MERGE,
                            **kwargs: Any) -> dict[str, Any]:
        return await self._write(_update_method(mode), entity, None)

    async def delete_entity(self, partition_key: str, row_key: str, **kwargs: Any) -> None:
        try:
            await self._rest.send("DELETE", "/" + _key_path(self.table_name, partition_key, row_key),
                                  headers={**_ODATA, "If-Match": _if_match(kwargs)})
        except ResourceNotFoundError:
            return

    async def submit_transaction(self, operations: Sequence[TransactionOp]) -> list[Mapping[str, Any]]:
        """One entity group transaction (one partition, at most 100 operations): all or none."""
        if self._coalescer is None or not operations:
            return await self._submit(operations)
        return await self._coalescer.submit(operations, alone=lambda: self._submit(operations))

    async def _submit(self, operations: Sequence[TransactionOp]) -> list[Mapping[str, Any]]:
        batch, changeset = f"batch_{uuid.uuid4()}", f"changeset_{uuid.uuid4()}"
        parts = [f"--{batch}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n".encode()]
        for index, op in enumerate(operations):
            parts.append(self._batch_part(changeset, index, op))
        parts.append(f"--{changeset}--\r\n--{batch}--\r\n".encode())
        _, headers, body = await self._rest.send(
            "POST", "/$batch", body=b"".join(parts), ok=(202,),
            headers={**_ODATA, "Content-Type": f"multipart/mixed; boundary={batch}", "Accept": "application/json"})
        responses = _batch_responses(headers.get("Content-Type", ""), body)
        for status, reason, _, part_body in responses:
            if not 200 <= status < 300:
                code, message = _error_text(part_body)
                # The message keeps its "index:" head: the SDK's error reads the index from it.
                error = TableTransactionError(message=message if code is None else f"{message} ({code})")
                error.status_code, error.reason = status, reason
                raise error
        if len(responses) != len(operations):
            raise HttpResponseError(message=f"the transaction answered {len(responses)} of "
                                            f"{len(operations)} operations")
        return [{"etag": part_headers.get("etag")} for _, _, part_headers, _ in responses]

    # -- wire -------------------------------------------------------------------------------

    async def _write(self, method: str, entity: Mapping[str, Any], if_match: str | None) -> dict[str, Any]:
        headers = _JSON if if_match is None else {**_JSON, "If-Match": if_match}
        path = "/" + _key_path(self.table_name, str(entity["PartitionKey"]), str(entity["RowKey"]))
        _, got, _ = await self._rest.send(method, path, body=orjson.dumps(encode_entity(entity)),
                                          headers=headers)
        return {"etag": got.get("ETag")}

    def _batch_part(self, changeset: str, index: int, op: TransactionOp) -> bytes:
        kind, entity, kwargs = op
        table = quote(self.table_name, safe="")
        key = _key_path(self.table_name, str(entity["PartitionKey"]), str(entity["RowKey"]))
        body: bytes | None = orjson.dumps(encode_entity(entity))
        extra = ""
        if kind == "create":
            method, path, extra = "POST", table, "Prefer: return-no-content\r\n"
        elif kind in ("update", "upsert"):
            method, path = _update_method(kwargs.get("mode", UpdateMode.MERGE)), key
            if kind == "update":
                extra = f"If-Match: {_if_match(kwargs)}\r\n"
        elif kind == "delete":
            method, path, body, extra = "DELETE", key, None, f"If-Match: {_if_match(kwargs)}\r\n"
        else:
            raise ValueError(f"unknown transaction operation {kind!r}")
        head = (f"--{changeset}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
                f"Content-ID: {index + 1}\r\n\r\n"
                f"{method} {self._rest.origin}{self._rest.root}/{path} HTTP/1.1\r\n"
                f"Accept: {_ACCEPT}\r\nDataServiceVersion: 3.0\r\n{extra}")
        if body is None:
            return (head + "\r\n").encode()
        return (head + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() \
            + body + b"\r\n"


def _split_head(block: bytes) -> tuple[dict[str, str], bytes]:
    head, _, rest = block.partition(b"\r\n\r\n")
    headers: dict[str, str] = {}
    for line in head.split(b"\r\n"):
        name, sep, value = line.decode("latin-1").partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers, rest


def _boundary(content_type: str) -> str:
    for piece in content_type.split(";"):
        name, _, value = piece.strip().partition("=")
        if name.lower() == "boundary":
            return value.strip('"')
    raise HttpResponseError(message=f"a transaction answer without a multipart boundary: {content_type!r}")


def _batch_responses(content_type: str, body: bytes) -> list[tuple[int, str, dict[str, str], bytes]]:
    """(status, reason, headers, body) of each operation in a $batch answer: its one changeset's
    parts, each an HTTP response. A refused transaction answers with one part, the refusal."""
    outer = _boundary(content_type).encode()
    answers: list[tuple[int, str, dict[str, str], bytes]] = []
    for part in body.split(b"--" + outer)[1:]:
        if part.startswith(b"--"):
            break
        headers, inner = _split_head(part.lstrip(b"\r\n"))
        if "multipart/mixed" in headers.get("content-type", ""):
            answers.extend(_batch_responses(headers["content-type"], inner))
            continue
        status_line, _, rest = inner.lstrip(b"\r\n").partition(b"\r\n")
        pieces = status_line.decode("latin-1").split(" ", 2)
        if len(pieces) < 2 or not pieces[1].isdigit():
            raise HttpResponseError(message=f"a transaction answer part without a status: {status_line[:80]!r}")
        part_headers, part_body = _split_head(rest)
        answers.append((int(pieces[1]), pieces[2] if len(pieces) > 2 else "", part_headers,
                        part_body.rstrip(b"\r\n")))
    return answers


MAX_COALESCED_OPS = 100
"""The most operations an entity group transaction may hold (the service's limit)."""
MAX_COALESCED_BYTES = 2 * 1024 * 1024
"""Most entity JSON merged into one transaction: half the service's 4 MiB payload limit, since a
ledger row's error text alone may be 60 KB."""


@dataclass
class _Part:
    """One caller's operations waiting to be merged, and what it is told."""

    operations: Sequence[TransactionOp]
    alone: Callable[[], Awaitable[list[Mapping[str, Any]]]]
    done: asyncio.Future[Any]
    keys: frozenset[tuple[str, str]]
    size: int


@dataclass
class _Group:
    parts: list[_Part] = field(default_factory=list)
    keys: set[tuple[str, str]] = field(default_factory=set)
    ops: int = 0
    size: int = 0


def _entity_key(op: TransactionOp) -> tuple[str, str]:
    return str(op[1]["PartitionKey"]), str(op[1]["RowKey"])


class _Coalescer:
    """Merges the writes submitted on one partition in the same turn of the event loop into one
    transaction (see the module docstring). A group takes no part that touches an entity it
    already holds (a transaction may name an entity once) and stays under ``MAX_COALESCED_OPS``
    and ``MAX_COALESCED_BYTES``; a part that does not fit starts the next group."""

    def __init__(self, submit: Callable[[Sequence[TransactionOp]], Awaitable[list[Mapping[str, Any]]]]) -> None:
        self._submit = submit
        self._open: dict[str, _Group] = {}
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, operations: Sequence[TransactionOp],
                     alone: Callable[[], Awaitable[list[Mapping[str, Any]]]]) -> list[Mapping[str, Any]]:
        loop = asyncio.get_running_loop()
        keys = frozenset(map(_entity_key, operations))
        partitions = {pk for pk, _ in keys}
        size = sum(len(orjson.dumps(op[1], default=str)) for op in operations)
        if len(partitions) != 1 or len(operations) > MAX_COALESCED_OPS or size > MAX_COALESCED_BYTES:
            return await alone()  # the service would refuse it merged
        part = _Part(operations, alone, loop.create_future(), keys, size)
        (partition,) = partitions
        group = self._open.get(partition)
        if group is not None and (group.keys & keys or group.ops + len(operations) > MAX_COALESCED_OPS
                                  or group.size + size > MAX_COALESCED_BYTES):
            self._close(partition)
            group = None
        if group is None:
            group = self._open[partition] = _Group()
            # After the callers already scheduled in this turn have added theirs.
            loop.call_soon(self._close_if, partition, group)
        group.parts.append(part)
        group.keys |= keys
        group.ops += len(operations)
        group.size += size
        return cast(list[Mapping[str, Any]], await part.done)

    def _close_if(self, partition: str, group: _Group) -> None:
        if self._open.get(partition) is group:
            self._close(partition)

    def _close(self, partition: str) -> None:
        group = self._open.pop(partition)
        task = asyncio.get_running_loop().create_task(self._run(group.parts))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, parts: list[_Part]) -> None:
        refused: list[asyncio.Task[None]] = []
        try:
            while len(parts) > 1:
                operations = [op for part in parts for op in part.operations]
                try:
                    results = await self._submit(operations)
                except TableTransactionError as exc:
                    owner = self._owner(parts, exc)
                    if owner is None:  # the service did not say which: each alone
                        break
                    parts.remove(owner)
                    refused.append(asyncio.create_task(self._alone(owner)))
                    continue
                except HttpResponseError as exc:
                    if exc.status_code == 400:  # the merged request itself refused: each alone
                        break
                    for part in parts:
                        _settle(part.done, exception=exc)
                    return
                except Exception as exc:  # transport failures after the retries: as each would see them
                    for part in parts:
                        _settle(part.done, exception=exc)
                    return
                at = 0
                for part in parts:
                    _settle(part.done, result=results[at:at + len(part.operations)])
                    at += len(part.operations)
                return
            await asyncio.gather(*(self._alone(part) for part in parts))
        finally:
            if refused:
                await asyncio.gather(*refused, return_exceptions=True)
            for part in parts:  # cancelled: nobody may wait forever
                part.done.cancel()

    @staticmethod
    def _owner(parts: list[_Part], exc: TableTransactionError) -> _Part | None:
        index = refused_at(exc, sum(len(part.operations) for part in parts))
        if index is None:
            return None
        for part in parts:
            if index < len(part.operations):
                return part
            index -= len(part.operations)
        return None

    @staticmethod
    async def _alone(part: _Part) -> None:
        try:
            _settle(part.done, result=await part.alone())
        except Exception as exc:
            _settle(part.done, exception=exc)


def _settle(done: asyncio.Future[Any], *, result: Any = None, exception: BaseException | None = None) -> None:
    if done.done():
        return
    if exception is not None:
        done.set_exception(exception)
    else:
        done.set_result(result)
