"""Turn delivered audit records into ``AuditRecord`` rows (see ``function_app.lake.schema``).

A row keeps the record whole in ``AuditData`` (the very object delivered, never copied or
changed; ``tables.flatten_tables`` puts the record's delivered text there instead when the body
carries it, ``reader.DeliveredRecords``) and adds normalised columns beside the raw ones.
Whatever the record looks like, a row comes out with a non-null key (``Id``, ``RecordType``,
``Operation``) and ``Quality`` listing what was wrong with the record. Rows share nested values
with the record: treat both as read-only.

Choices:

* ``Id`` missing or empty: ``x-<sha1>`` of the record's canonical JSON (stdlib ``json``, sorted
  keys, compact separators, ``ensure_ascii=False``), so a re-delivered copy gets the same key.
* ``RecordType`` missing or not an integer: ``RECORD_TYPE_MISSING`` (-2**31). ``-1`` is not used
  as the sentinel because real fixtures deliver ``-1`` itself.
* ``Operation`` missing: ``""``.
* ``ClientIPRaw`` is the first of ClientIP, ClientIPAddress, ActorIpAddress that is neither null
  nor ``""`` (ClientIP as delivered when none is); ``ClientIP`` is ``""`` unless it parses.
* ``AppId``/``SessionId``: the first non-empty of their sources, else ``None``.
* String columns receive non-string values as their JSON text (flagged ``<Field>:not-a-string``).
* Records whose top-level keys differ from the documented ones only in case (converted data,
  e.g. ``creationtime``) are read case-insensitively, flagged ``keys:case-mismatch``.
* ``Properties`` holds the five name/value arrays as maps. A list of plain strings (Exchange
  mailbox ``ModifiedProperties``) stays a list. ``Included Updated Properties`` becomes a list of
  names. A repeated name keeps every value as a list (flagged). An array delivered as a
  PowerShell parameter string (``-Identity "x" -Force``) is parsed into the same map.

Quality flags (stable; ``<path>`` is ``Array.Name[.Key]``, ``<Array>`` one of the five arrays):

================================  ==============================================================
flag                              meaning
================================  ==============================================================
record:not-an-object              the record is not a JSON object; only AuditData/Id are filled
keys:case-mismatch                common fields found only under differently-cased keys
Id:missing                        no Id (or empty); Id is the ``x-<sha1>`` surrogate
Id:not-a-string                   Id delivered as another JSON type; its JSON text is used
RecordType:missing                absent or null; RecordType is RECORD_TYPE_MISSING
RecordType:unparseable            not an integer (or outside int32); RECORD_TYPE_MISSING
RecordType:string                 the number arrived as a numeric string
RecordType:float                  the number arrived as an integral float
RecordType:unknown-value          an integer the schema's enum does not list; name ""
UserType:<same as RecordType>     missing / unparseable (value null), string, float, unknown-value
Operation:missing                 absent or null; Operation is ""
CreationTime:missing              absent, null or ""; TimeGenerated is null
CreationTime:unparseable          not a timestamp parse_time accepts; TimeGenerated is null
UserId:missing                    absent, null or blank; UserPrincipal is ""
UserId:placeholder                Not Available / Unknown / No UPN / N/A ...; UserPrincipal ""
UserId:service-principal          ServicePrincipal_<id>; kept lower-cased
UserId:system-account             NT AUTHORITY\\SYSTEM, SHAREPOINT\\system, app@sharepoint, ...
UserId:exchange-legacy-name       /o=ExchangeLabs/... DN or Exchange hosted-organisation path
UserId:sid                        a Windows SID that is not a well-known system one
UserId:whitespace                 blanks trimmed around the value
UserId:not-a-string               UserId is not a string; UserPrincipal ""
ClientIP:invalid                  the chosen address value is not an IP address
ClientIP:whitespace               blanks trimmed around the address
ClientIP:odd-mapped               ``ffff:a.b.c.d`` read as the IPv4 address a.b.c.d
ClientIP:non-routable             public, but documentation/benchmark/reserved/multicast range
ClientIP:not-a-string             the address value is not a string
<Field>:not-a-string              Workload, ResultStatus, UserKey, ObjectId, AppId, SessionId,
                                  Operation delivered as a non-string; JSON text stored
OrganizationId:mismatch           OrganizationId is not the tenant the blob was listed for
<Array>:stringified               the array arrived as a JSON string and was parsed
<Array>:cmdlet-string             the array arrived as a PowerShell parameter string, parsed
<Array>:unexpected-shape          neither array nor parseable string; kept as delivered
<Array>:unnamed-entry             entries without a string Name, kept under ``_unnamed``
duplicate-name:<Array>.<Name>     a Name repeated in one array; all values kept as a list
truncated:<path>                  JSON-looking string ending in "..." that does not parse
not-json:<path>                   JSON-looking string (starts with { or [) that does not parse
too-deep:<path>                   JSON inside a string nested deeper than MAX_EMBEDDED_DEPTH;
                                  kept as the string
too-large:<path>                  JSON inside a string longer than MAX_EMBEDDED_CHARS; kept as
                                  the string
record:recovered:<reason>         the strict parser refused the record and a lenient one read
                                  it (reason: invalid-text, non-finite-number, lenient-json);
                                  lone surrogates and bad bytes are U+FFFD, NaN/Infinity and
                                  numbers past a double's range are their delivered text
record:unreadable:<reason>        no parser read the element (reason: unreadable, cut-off,
                                  after-array); AuditData is its raw text, RecordType,
                                  Operation, CreationTime are taken from that text when present,
                                  and Id is the ``x-<sha1>`` of the text, never the record's own
record:raw-cut-to:<n>             the raw text of an unreadable element was longer than n
                                  characters; AuditData holds its first n
<Column>:unserialisable:<reason>  set by a sink: the value could not be written as it is
                                  (too-deep, invalid-text, ...); the cell holds its JSON text
flatten:error:<ExceptionType>     a bug in this module; the row holds only AuditData and key
================================  ==============================================================
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from function_app.lake.schema import AUDIT_RECORD
from function_app.records.enums import RECORD_TYPE_NAMES, USER_TYPE_NAMES
from function_app.records.normalise import (
    KIND_INVALID,
    KIND_MISSING,
    normalise_enum,
    normalise_ip,
    normalise_principal,
    parse_time,
)
from function_app.records.reader import RecoveredRecord

RECORD_TYPE_MISSING = -(2**31)
"""RecordType stored when the record has none (or an unusable one); the key stays non-null."""

ARRAY_FIELDS: tuple[str, ...] = (
    "Parameters",
    "ExtendedProperties",
    "ModifiedProperties",
    "OperationProperties",
    "DeviceProperties",
)
INCLUDED_UPDATED_PROPERTIES = "Included Updated Properties"
MAX_EMBEDDED_DEPTH = 64
"""JSON inside a string is expanded only this deep: a row must stay writable (orjson writes
254 levels) and an attacker can name an inbox rule ``[[[[...]]]]``."""
MAX_EMBEDDED_CHARS = 1024 * 1024
"""JSON inside a string longer than this stays a string: expansion costs several times its size."""
UNNAMED_KEY = "_unnamed"

_JSON_DECODE_ERROR = orjson.JSONDecodeError
_orjson_loads = orjson.loads


@dataclass(frozen=True, slots=True)
class BlobContext:
    """Where a batch of records came from; copied onto every row."""

    tenant_id: str
    content_type: str
    content_id: str
    content_created: datetime | None
    ingested_at: datetime


def flatten_blob(records: Iterable[Any], ctx: BlobContext) -> list[dict[str, Any]]:
    """One ``AuditRecord`` row per record, in order; never raises on record content."""
    return [flatten_record(record, ctx) for record in records]


def record_key(row: Mapping[str, Any]) -> tuple[str, int, str]:
    """The de-duplication key of an ``AuditRecord`` row: ``(Id, RecordType, Operation)``."""
    return row["Id"], row["RecordType"], row["Operation"]


def flatten_record(record: Any, ctx: BlobContext) -> dict[str, Any]:
    """Return the ``AuditRecord`` row for one delivered record; never raises, never mutates it.

    The row has exactly ``AUDIT_RECORD.column_names`` as keys, in that order, a non-null key,
    ``AuditData`` bound to ``record`` itself, and ``Quality`` empty when the record is clean.
    """
    try:
        if isinstance(record, dict):
            return _flatten_object(record, ctx)
        if type(record) is RecoveredRecord:
            return _flatten_recovered(record, ctx)
        return _bare_row(record, ctx, ["record:not-an-object"])
    except Exception as exc:  # the contract is one row per record, whatever happens
        return _bare_row(record, ctx, [f"flatten:error:{type(exc).__name__}"])


def _flatten_recovered(record: RecoveredRecord, ctx: BlobContext) -> dict[str, Any]:
    if record.readable:
        row = flatten_record(record.value, ctx)
        row["Quality"] = [*row["Quality"], f"record:recovered:{record.reason}"]
        return row
    flags = [f"record:unreadable:{record.reason}"]
    if record.raw_chars > len(record.raw):
        flags.append(f"record:raw-cut-to:{len(record.raw)}")
    row = _bare_row(record.raw, ctx, flags)
    # The element did not parse, but its fields usually still stand in its text: they make the row
    # findable by operation, type and time. Not by Id: the row keeps the surrogate Id of its raw
    # text, so it never holds a record's own key, and a later whole delivery of that record (a
    # replay, a re-delivery) is stored beside it instead of being dropped as its duplicate.
    fields = _fields_in_text(record.raw)
    if "Operation" in fields:
        row["Operation"] = fields["Operation"]
    if "RecordType" in fields:
        rt = normalise_enum(fields["RecordType"], RECORD_TYPE_NAMES)
        if rt.value is not None:
            row["RecordType"], row["RecordTypeName"] = rt.value, rt.name
    if "CreationTime" in fields:
        row["TimeGenerated"] = parse_time(fields["CreationTime"])
    return row


_TEXT_FIELD = re.compile(r'"(Id|Operation|CreationTime)"\s*:\s*"([^"\\]{1,256})"|"(RecordType)"\s*:\s*(\d{1,9})')


def _fields_in_text(raw: str) -> dict[str, Any]:
    """The Id, Operation, CreationTime and RecordType written plainly among the record's own
    (top-level) fields in *raw*; a nested object's ``Id`` (a folder's, a target's) is not the record's."""
    text = raw[:65536]
    found: dict[str, Any] = {}
    depth, in_string, pos = 0, False, 0
    for m in _TEXT_FIELD.finditer(text):
        # Walk to the match, tracking nesting and strings, so only keys of the outermost object count.
        while pos < m.start():
            ch = text[pos]
            if in_string:
                if ch == "\\":
                    pos += 1
                elif ch == '"':
                    in_string = False
            elif ch == '"':
                in_string = True
            elif ch in "{[":
                depth += 1
            elif ch in "}]":
                depth -= 1
            pos += 1
        if in_string or depth != 1:
            continue
        name = m.group(1) or m.group(3)
        if name in found:
            continue
        found[name] = m.group(2) if m.group(1) else int(m.group(4))
    return found


class _CaseInsensitive:
    """Field lookup that falls back to a case-insensitive match, remembering whether it had to."""

    __slots__ = ("lowered", "record", "used")

    def __init__(self, record: dict[Any, Any]) -> None:
        self.record = record
        self.lowered = {k.lower(): v for k, v in record.items() if type(k) is str}
        self.used = False

    def get(self, name: str) -> Any:
        value = self.record.get(name, _ABSENT)
        if value is _ABSENT:
            value = self.lowered.get(name.lower(), _ABSENT)
            if value is _ABSENT:
                return None
            self.used = True
        return value


_ABSENT: Any = object()


def _flatten_object(record: dict[Any, Any], ctx: BlobContext) -> dict[str, Any]:
    quality: list[str] = []
    add = quality.append

    # Documented records always carry these; only odd ones pay for the case-insensitive index.
    folded: _CaseInsensitive | None = None
    get: Callable[[str], Any]
    if "Id" in record and "CreationTime" in record and "RecordType" in record:
        get = record.get
    else:
        folded = _CaseInsensitive(record)
        get = folded.get

    raw_id = get("Id")
    if type(raw_id) is str and raw_id:
        record_id = raw_id
    elif raw_id is None or raw_id == "":
        record_id = _surrogate_id(record)
        add("Id:missing")
    else:
        record_id = _as_text(raw_id)
        add("Id:not-a-string")

    raw = get("RecordType")
    if type(raw) is int and raw in RECORD_TYPE_NAMES:
        record_type: int = raw
        record_type_name = RECORD_TYPE_NAMES[raw]
    else:
        rt = normalise_enum(raw, RECORD_TYPE_NAMES)
        record_type = RECORD_TYPE_MISSING if rt.value is None else rt.value
        record_type_name = rt.name
        for flag in rt.flags:
            add("RecordType:" + flag)

    operation = get("Operation")
    if type(operation) is not str:
        if operation is None:
            operation = ""
            add("Operation:missing")
        else:
            operation = _as_text(operation)
            add("Operation:not-a-string")

    created = get("CreationTime")
    time_generated = parse_time(created)
    if time_generated is None:
        add("CreationTime:missing" if created is None or created == "" else "CreationTime:unparseable")

    user_id = get("UserId")
    principal, principal_flags = normalise_principal(user_id)
    for flag in principal_flags:
        add("UserId:" + flag)
    if user_id is not None and type(user_id) is not str:
        user_id = _as_text(user_id)

    raw = get("UserType")
    if type(raw) is int and raw in USER_TYPE_NAMES:
        user_type: int | None = raw
        user_type_name = USER_TYPE_NAMES[raw]
    else:
        ut = normalise_enum(raw, USER_TYPE_NAMES)
        user_type, user_type_name = ut.value, ut.name
        for flag in ut.flags:
            add("UserType:" + flag)

    ip_raw = get("ClientIP")
    if ip_raw is None or ip_raw == "":
        for alternative in ("ClientIPAddress", "ActorIpAddress"):
            value = get(alternative)
            if value is not None and value != "":
                ip_raw = value
                break
    ip = normalise_ip(ip_raw)
    for flag in ip.flags:
        add("ClientIP:" + flag)
    if ip.kind == KIND_INVALID and type(ip_raw) is str:
        add("ClientIP:invalid")
    if ip_raw is not None and type(ip_raw) is not str:
        ip_raw = _as_text(ip_raw)

    context = get("AppAccessContext")
    if type(context) is list:
        context = next((c for c in context if type(c) is dict), None)
    if type(context) is not dict:
        context = None
    app_id = _first_text("AppId", add, get("AppId"), get("ApplicationId"),
                         context.get("ClientAppId") if context is not None else None)
    session_id = _first_text("SessionId", add, get("SessionId"),
                             context.get("AADSessionId") if context is not None else None)

    tenant = ctx.tenant_id
    organization = get("OrganizationId")
    if (
        tenant
        and type(organization) is str
        and organization
        and organization != tenant
        and organization.lower() != tenant.lower()
    ):
        add("OrganizationId:mismatch")

    properties: dict[str, Any] = {}
    for field in ARRAY_FIELDS:
        value = get(field)
        if value is not None:
            properties[field] = _convert_array(field, value, quality)

    workload = get("Workload")
    result_status = get("ResultStatus")
    user_key = get("UserKey")
    object_id = get("ObjectId")
    # One combined test keeps the common all-strings case to a single branch.
    if not (
        (workload is None or type(workload) is str)
        and (result_status is None or type(result_status) is str)
        and (user_key is None or type(user_key) is str)
        and (object_id is None or type(object_id) is str)
    ):
        workload = _text_value(workload, "Workload", quality)
        result_status = _text_value(result_status, "ResultStatus", quality)
        user_key = _text_value(user_key, "UserKey", quality)
        object_id = _text_value(object_id, "ObjectId", quality)

    if folded is not None and folded.used:
        add("keys:case-mismatch")
    if len(quality) > 1:
        quality = list(dict.fromkeys(quality))

    # A copy of a dict with the columns as keys, values then set: twice as fast as a dict display of
    # 27 keys, which grows its table several times (measured 0.6 against 1.2 microseconds).
    row = _ROW_KEYS.copy()
    row["TimeGenerated"] = time_generated
    row["Id"] = record_id
    row["TenantId"] = tenant
    row["ContentType"] = ctx.content_type
    row["ContentId"] = ctx.content_id
    row["ContentCreated"] = ctx.content_created
    row["RecordType"] = record_type
    row["RecordTypeName"] = record_type_name
    row["Operation"] = operation
    row["Workload"] = workload
    row["ResultStatus"] = result_status
    row["UserId"] = user_id
    row["UserPrincipal"] = principal
    row["UserKey"] = user_key
    row["UserType"] = user_type
    row["UserTypeName"] = user_type_name
    row["ClientIP"] = ip.address
    row["ClientPort"] = ip.port
    row["ClientIPRaw"] = ip_raw
    row["ClientIPKind"] = ip.kind
    row["ObjectId"] = object_id
    row["AppId"] = app_id
    row["SessionId"] = session_id
    row["Properties"] = properties
    row["AuditData"] = record
    row["Quality"] = quality
    row["IngestedAt"] = ctx.ingested_at
    return row


_ROW_KEYS: dict[str, Any] = dict.fromkeys(AUDIT_RECORD.column_names)
"""Every AuditRecord column, in order, with no value: what ``_flatten_object`` fills."""


def _bare_row(record: Any, ctx: BlobContext, quality: list[str]) -> dict[str, Any]:
    """The row for a value that could not be read as a record: AuditData and a key only."""
    return {
        "TimeGenerated": None,
        "Id": _surrogate_id(record),
        "TenantId": ctx.tenant_id,
        "ContentType": ctx.content_type,
        "ContentId": ctx.content_id,
        "ContentCreated": ctx.content_created,
        "RecordType": RECORD_TYPE_MISSING,
        "RecordTypeName": "",
        "Operation": "",
        "Workload": None,
        "ResultStatus": None,
        "UserId": None,
        "UserPrincipal": "",
        "UserKey": None,
        "UserType": None,
        "UserTypeName": "",
        "ClientIP": "",
        "ClientPort": None,
        "ClientIPRaw": None,
        "ClientIPKind": KIND_MISSING,
        "ObjectId": None,
        "AppId": None,
        "SessionId": None,
        "Properties": {},
        "AuditData": record,
        "Quality": quality,
        "IngestedAt": ctx.ingested_at,
    }


def _text_value(value: Any, name: str, quality: list[str]) -> str | None:
    if value is None or type(value) is str:
        return value
    quality.append(name + ":not-a-string")
    return _as_text(value)


def _first_text(column: str, add: Callable[[str], None], *candidates: Any) -> str | None:
    """The first candidate that is neither None nor empty, as text; a non-string is flagged."""
    # A plain loop, not next() over a generator: it runs twice a record, and making the generator
    # was 8 % of flatten_record.
    for value in candidates:
        if value is not None and value != "":
            break
    else:
        return None
    if type(value) is not str:
        add(f"{column}:not-a-string")
        return _as_text(value)
    return value


def as_text(value: Any) -> str:
    """JSON text of a non-string value (``7`` -> ``"7"``), so a string column can hold it; never raises."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        return _safe_repr(value)


_as_text = as_text


def _surrogate_id(value: Any) -> str:
    """``x-<sha1>`` of the canonical JSON of ``value``: equal records get equal ids."""
    try:
        text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        text = _safe_repr(value)
    digest = hashlib.sha1(text.encode("utf-8", "surrogatepass"), usedforsecurity=False)
    return "x-" + digest.hexdigest()


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:  # a hostile __repr__ must not cost us the row
        return f"<unrepresentable {type(value).__name__}>"


# ---------------------------------------------------------------------------------------------
# Properties


def _convert_array(field: str, value: Any, quality: list[str]) -> Any:
    if type(value) is list:
        return _name_value_map(field, value, quality)
    if type(value) is str:
        if _looks_like_json(value):
            parsed = _embedded_json(value, field, None, None, quality)
            if type(parsed) is list:
                quality.append(field + ":stringified")
                return _name_value_map(field, parsed, quality)
            if parsed is value:
                return value
            quality.append(field + ":unexpected-shape")
            return parsed
        params = _parse_cmdlet_parameters(value)
        if params is not None:
            quality.append(field + ":cmdlet-string")
            out: dict[str, Any] = {}
            repeated: set[str] = set()
            for name, param in params:
                _put(out, repeated, name, param, field, quality)
            return out
    quality.append(field + ":unexpected-shape")
    return value


def _name_value_map(field: str, items: list[Any], quality: list[str]) -> Any:
    out: dict[str, Any] = {}
    unnamed: list[Any] | None = None
    repeated: set[str] | None = None
    for item in items:
        name = item.get("Name") if type(item) is dict else None
        if type(name) is not str:
            if unnamed is None:
                unnamed = []
            unnamed.append(item)
            continue
        if name == INCLUDED_UPDATED_PROPERTIES:
            value = _names_list(item.get("NewValue", item.get("Value")))
        elif len(item) == 2 and "Value" in item:
            value = item["Value"]
            # Inline first-character test: most values are plain strings and this runs per entry.
            if type(value) is str and value:
                first = value[0]
                if first == "{" or first == "[" or first.isspace():
                    value = _embedded_json(value, field, name, None, quality)
        elif len(item) == 1:
            value = None
        else:
            value = {
                key: _embedded_json(v, field, name, key, quality) if type(v) is str and v else v
                for key, v in item.items()
                if key != "Name"
            }
        if name in out:
            if repeated is None:
                repeated = set()
            _put(out, repeated, name, value, field, quality)
        else:
            out[name] = value
    if unnamed is not None:
        if not out and all(type(i) is str for i in unnamed):
            return unnamed
        out[UNNAMED_KEY] = unnamed
        quality.append(field + ":unnamed-entry")
    return out


def _put(out: dict[str, Any], repeated: set[str], name: str, value: Any, field: str, quality: list[str]) -> None:
    """Insert ``name``; a repeated name turns into a list of every value, flagged once.

    ``repeated`` holds the names already turned into lists, so a value that is itself a list
    (and belongs to the record) is never appended to.
    """
    if name not in out:
        out[name] = value
    elif name in repeated:
        out[name].append(value)
    else:
        out[name] = [out[name], value]
        repeated.add(name)
        quality.append(f"duplicate-name:{field}.{name}")


def _names_list(value: Any) -> Any:
    if type(value) is str:
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _looks_like_json(text: str) -> bool:
    if not text:
        return False
    first = text[0]
    if first == "{" or first == "[":
        return True
    if not first.isspace():
        return False
    first = text.lstrip()[:1]
    return first == "{" or first == "["


def _embedded_json(text: str, field: str, name: str | None, key: str | None, quality: list[str]) -> Any:
    """Parse a string holding JSON; leave any other string alone, flagging JSON that is cut off."""
    if not _looks_like_json(text):
        return text
    path = ".".join(p for p in (field, name, key) if p is not None)
    if len(text) > MAX_EMBEDDED_CHARS:
        quality.append(f"too-large:{path}")
        return text
    try:
        parsed = _orjson_loads(text)
    except _JSON_DECODE_ERROR:
        pass
    else:
        # Counting brackets is C-fast and bounds the depth from above; only a string with many
        # of them pays for the walk.
        if text.count("[") + text.count("{") > MAX_EMBEDDED_DEPTH and _deeper_than(parsed, MAX_EMBEDDED_DEPTH):
            quality.append(f"too-deep:{path}")
            return text
        return parsed
    tail = text.rstrip()
    reason = "truncated" if tail.endswith(("...", "\u2026")) else "not-json"
    quality.append(f"{reason}:{path}")
    return text


def _deeper_than(value: Any, limit: int) -> bool:
    """True when *value* nests lists and objects more than *limit* levels; iterative."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if type(item) is list:
            stack.extend((v, depth + 1) for v in item if type(v) is list or type(v) is dict)
        elif type(item) is dict:
            stack.extend((v, depth + 1) for v in item.values() if type(v) is list or type(v) is dict)
    return False


# PowerShell display form of cmdlet parameters, e.g. -Identity "x" -Force -Types ("A","B").
_CMDLET_PARAMETER = re.compile(r'\s*-([A-Za-z][\w.]*)(?:\s+("[^"]*"|\([^()]*\)|[^\s"()\-]\S*))?\s*')
_CMDLET_LIST_ITEM = re.compile(r'\s*(?:"([^"]*)"|([^,"]+))')


def _parse_cmdlet_parameters(text: str) -> list[tuple[str, Any]] | None:
    """``[(name, value), ...]`` when the whole text is cmdlet parameters, else ``None``."""
    pairs: list[tuple[str, Any]] = []
    pos, end = 0, len(text)
    while pos < end:
        m = _CMDLET_PARAMETER.match(text, pos)
        if m is None or m.end() == pos:
            return None
        pairs.append((m.group(1), _cmdlet_value(m.group(2))))
        pos = m.end()
    return pairs or None


def _cmdlet_value(token: str | None) -> Any:
    if token is None:
        # A bare switch; Parameters arrays spell switches as the string "True".
        return "True"
    if token[0] == '"':
        return token[1:-1]
    if token[0] == "(":
        items: list[str] = []
        for quoted, bare in _CMDLET_LIST_ITEM.findall(token[1:-1]):
            if not bare:
                items.append(quoted)
            elif bare.strip():
                items.append(bare.strip())
        return items
    return token
