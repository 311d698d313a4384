"""Derived tables: ``MailItemAccess``, ``DirectoryChange`` and ``SignIn`` rows of one record.

Each builder takes a delivered record and the ``AuditRecord`` row that ``flatten_record`` made
of it, and returns the derived table's rows: ``[]`` for a record that does not qualify, which
the builder decides from the row's RecordType and Operation before doing anything else. The
normalised values of the row (UserPrincipal, ClientIP, ``Properties`` with its JSON-in-strings
already parsed) are reused, never recomputed. Builders never raise on record content and never
change the record; rows may share nested values with it, so treat both as read-only.

Choices (documented in docs/data-dictionary.md):

* ``MailItemAccess``: one row per item of ``Folders[].FolderItems[]`` (and of the rarer
  ``Messages[].MessageItems[]``) of a ``MailItemsAccessed`` record, keyed by (RecordId,
  FolderPath, ItemKey) where ItemKey is InternetMessageId, else ImmutableId, else Id. A folder
  listed without items (a Sync) gets one row with ItemKey ``""``; a record listing no folder at
  all (throttled, or cut short) gets one row with FolderPath and ItemKey ``""``, so an access is
  never invisible in the table.
* ``DirectoryChange``: one row per named ``ModifiedProperties`` entry of a RecordType 8 record.
  The ``Included Updated Properties`` pseudo-entry is not a row of its own; a property it names
  that has no entry of its own gets a row with null values, so the change is still listed. A
  name repeated in one record gives one row whose values are the list of each occurrence's.
  When either value is a list, ``OldItems``/``NewItems`` hold its items normalised (a license
  ``[SkuName=X, ..., SkuId=Y, ...]`` or ``{"SkuId": ...}`` becomes its SkuName, else SkuId; a
  plan becomes its ServicePlanId; another object its sorted-key JSON; a scalar its text),
  distinct and sorted, and ``AddedValues``/``RemovedValues`` their differences. A missing or
  empty side next to a list counts as no items; a side that is neither (a value cut off by the
  service) leaves the comparison null.
* ``SignIn``: one row per RecordType 15 or 9 record (or any UserLoggedIn / UserLoginFailed).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

from function_app.records.flatten import INCLUDED_UPDATED_PROPERTIES, UNNAMED_KEY, as_text
from function_app.records.normalise import normalise_principal, to_int

MAIL_ITEMS_ACCESSED = "MailItemsAccessed"
DIRECTORY_RECORD_TYPE = 8
SIGN_IN_RECORD_TYPES = frozenset({9, 15})
SIGN_IN_OPERATIONS = frozenset({"UserLoggedIn", "UserLoginFailed"})

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_CASE_MISMATCH = "keys:case-mismatch"
_DUPLICATE_CHANGE = "duplicate-name:ModifiedProperties."

Row = dict[str, Any]


def build_mail_item_access(record: Any, row: Row) -> list[Row]:
    """``MailItemAccess`` rows of a ``MailItemsAccessed`` record (see the module docstring)."""
    if row["Operation"] != MAIL_ITEMS_ACCESSED or type(record) is not dict:
        return []
    get = _getter(record, row)
    operation = _name_values(row, "OperationProperties")
    owner, _ = normalise_principal(get("MailboxOwnerUPN"))
    # Every row of the record starts as a copy of this one (dict copies run at C speed; a
    # MailItemsAccessed record lists up to hundreds of items).
    base: Row = {
        "TimeGenerated": row["TimeGenerated"],
        "RecordId": row["Id"],
        "TenantId": row["TenantId"],
        "UserPrincipal": row["UserPrincipal"],
        "MailboxOwnerUPN": owner,
        "ClientIP": row["ClientIP"],
        "ClientIPKind": row["ClientIPKind"],
        "SessionId": row["SessionId"],
        "AppId": row["AppId"],
        "ClientInfoString": _text(get("ClientInfoString")),
        "LogonType": _bounded_int(get("LogonType"), _INT32),
        "MailAccessType": _text(operation.get("MailAccessType")),
        "IsThrottled": _bool(operation.get("IsThrottled")),
        "FolderPath": "",
        "ItemKey": "",
        "InternetMessageId": None,
        "ImmutableId": None,
        "ItemId": None,
        "SizeInBytes": None,
    }
    rows: dict[tuple[str, str], Row] = {}
    for container, items_key in _MAIL_CONTAINERS:
        for folder in _json_list(get(container)):
            if type(folder) is not dict:
                continue
            path = folder.get("Path")
            if type(path) is not str:
                path = "" if path is None else as_text(path)
            listed = False
            for item in _json_list(folder.get(items_key)):
                if type(item) is not dict:
                    continue
                listed = True
                message_id = item.get("InternetMessageId")
                immutable_id = item.get("ImmutableId")
                item_id = item.get("Id")
                if not (type(message_id) is str and type(immutable_id) is str and type(item_id) is str):
                    message_id, immutable_id, item_id = _text(message_id), _text(immutable_id), _text(item_id)
                item_key = message_id or immutable_id or item_id or ""
                if (path, item_key) in rows:
                    continue
                out = base.copy()
                out["FolderPath"] = path
                out["ItemKey"] = item_key
                out["InternetMessageId"] = message_id or None
                out["ImmutableId"] = immutable_id or None
                out["ItemId"] = item_id or None
                size = item.get("SizeInBytes")
                out["SizeInBytes"] = size if type(size) is int and _INT64[0] <= size <= _INT64[1] \
                    else _bounded_int(size, _INT64)
                rows[path, item_key] = out
            if not listed and (path, "") not in rows:
                out = base.copy()
                out["FolderPath"] = path
                rows[path, ""] = out
    if not rows:
        return [base]
    return list(rows.values())


_MAIL_CONTAINERS = (("Folders", "FolderItems"), ("Messages", "MessageItems"))


def build_directory_change(record: Any, row: Row) -> list[Row]:
    """``DirectoryChange`` rows of an Entra ID directory record (RecordType 8)."""
    if row["RecordType"] != DIRECTORY_RECORD_TYPE or type(record) is not dict:
        return []
    changes = row["Properties"].get("ModifiedProperties")
    if type(changes) is not dict or not changes:
        return []
    get = _getter(record, row)
    actor_upn, actor_name, actor_kind, actor_id = _identity(get("Actor"))
    target_upn, target_name, target_kind, target_id = _identity(get("Target"))
    actor = actor_upn or actor_name or row["UserPrincipal"] or None
    target = target_upn or target_name
    if not target:
        object_id = row["ObjectId"]
        target = object_id if object_id and object_id != "Not Available" else None
    duplicated = {
        flag[len(_DUPLICATE_CHANGE):] for flag in row["Quality"] if flag.startswith(_DUPLICATE_CHANGE)
    }
    base = (
        row["TimeGenerated"], row["Id"], row["TenantId"], row["Operation"], actor,
        actor_kind or ("User" if actor_upn else None), actor_id, target_id, target,
        target_kind or ("User" if target_upn else None),
    )
    out = []
    for name, value in changes.items():
        if name in (INCLUDED_UPDATED_PROPERTIES, UNNAMED_KEY):
            continue
        if name in duplicated and type(value) is list:
            old: Any = [_side(v, "OldValue") for v in value]
            new: Any = [_side(v, "NewValue") for v in value]
        else:
            old, new = _side(value, "OldValue"), _side(value, "NewValue")
        out.append(_change_row(base, name, old, new))
    listed = changes.get(INCLUDED_UPDATED_PROPERTIES)
    if type(listed) is list:
        for name in dict.fromkeys(n for n in listed if type(n) is str and n and n not in changes):
            out.append(_change_row(base, name, None, None))
    return out


def _change_row(base: tuple[Any, ...], name: str, old: Any, new: Any) -> Row:
    time, record_id, tenant, operation, actor, actor_type, actor_id, target_id, target, target_type = base
    old_items = _items(old, new)
    new_items = _items(new, old)
    added = removed = None
    if old_items is not None and new_items is not None:
        before, after = set(old_items), set(new_items)
        added = [i for i in new_items if i not in before]
        removed = [i for i in old_items if i not in after]
    return {
        "TimeGenerated": time,
        "RecordId": record_id,
        "TenantId": tenant,
        "Operation": operation,
        "Actor": actor,
        "ActorType": actor_type,
        "ActorId": actor_id,
        "TargetId": target_id,
        "TargetName": target,
        "TargetType": target_type,
        "Property": name,
        "OldValue": old,
        "NewValue": new,
        "OldItems": old_items,
        "NewItems": new_items,
        "AddedValues": added,
        "RemovedValues": removed,
    }


def build_sign_in(record: Any, row: Row) -> list[Row]:
    """The ``SignIn`` row of an Entra ID logon record (RecordType 15 or 9, or a logon operation)."""
    if (row["RecordType"] not in SIGN_IN_RECORD_TYPES and row["Operation"] not in SIGN_IN_OPERATIONS) \
            or type(record) is not dict:
        return []
    get = _getter(record, row)
    extended = _name_values(row, "ExtendedProperties")
    device = _name_values(row, "DeviceProperties")
    error_code = get("ErrorCode")
    if error_code is None or error_code == "":
        error_code = get("LoginStatus")
        if error_code is None or error_code == "":
            error_code = get("ErrorNumber")
    logon_error = get("LogonError")
    if logon_error is None or logon_error == "":
        logon_error = extended.get("LoginError")
    trust = device.get("TrustType")
    if trust is None:
        trust = device.get("DeviceTrustType", extended.get("DeviceTrustType"))
    application = get("ApplicationId")
    session = device.get("SessionId")
    return [{
        "TimeGenerated": row["TimeGenerated"],
        "RecordId": row["Id"],
        "TenantId": row["TenantId"],
        "Operation": row["Operation"],
        "UserPrincipal": row["UserPrincipal"],
        "ClientIP": row["ClientIP"],
        "ClientIPKind": row["ClientIPKind"],
        "ApplicationId": _text(application) or row["AppId"],
        "ResultStatus": row["ResultStatus"],
        "ResultStatusDetail": _text(extended.get("ResultStatusDetail")),
        "ErrorCode": _text(error_code),
        "LogonError": _text(logon_error),
        "UserAgent": _text(extended.get("UserAgent")),
        "RequestType": _text(extended.get("RequestType")),
        "AuthMethod": _text(extended.get("UserAuthenticationMethod")),
        "DeviceTrustType": _text(trust),
        "DeviceOS": _text(device.get("OS")),
        "BrowserType": _text(device.get("BrowserType")),
        "SessionId": _text(session) or row["SessionId"],
    }]


# ---------------------------------------------------------------------------------------------
# helpers


def _getter(record: dict[Any, Any], row: Row) -> Callable[[str], Any]:
    """Field lookup; case-insensitive for records flatten found under differently-cased keys."""
    if _CASE_MISMATCH not in row["Quality"]:
        return record.get
    lowered = {k.lower(): v for k, v in record.items() if type(k) is str}

    def get(name: str) -> Any:
        value = record.get(name)
        return lowered.get(name.lower()) if value is None else value

    return get


def _name_values(row: Row, field: str) -> dict[str, Any]:
    """The map flatten made of a name/value array (``{}`` when it is missing or not a map)."""
    value = row["Properties"].get(field)
    return value if type(value) is dict else {}


def _text(value: Any) -> str | None:
    if value is None or type(value) is str:
        return value
    return as_text(value)


def _bool(value: Any) -> bool | None:
    if type(value) is bool:
        return value
    if type(value) is str:
        text = value.strip().lower()
        if text == "true":
            return True
        if text == "false":
            return False
    return None


def _bounded_int(value: Any, bounds: tuple[int, int]) -> int | None:
    number = to_int(value)
    return number if number is not None and bounds[0] <= number <= bounds[1] else None


def _json_list(value: Any) -> list[Any]:
    """*value* if it is a list, the list a JSON string holds, else ``[]``."""
    if type(value) is list:
        return value
    if type(value) is str and value.lstrip()[:1] == "[":
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            return []
        return parsed if type(parsed) is list else []
    return []


# Identity entries of Actor[] / Target[] ({"ID": ..., "Type": n}); the Type numbers are the
# IdentityType enum in the order the schema lists it, as the samples bear out: 0 object id,
# 1 display name, 2 other (kind words and <Kind>_<id>), 3 PUID, 4 SPN, 5 UPN.
_KINDS = frozenset({"User", "ServicePrincipal", "Application", "Group", "Device", "Role", "Policy", "Contact",
                    "Directory", "Other"})


def _identity(entries: Any) -> tuple[str | None, str | None, str | None, str | None]:
    """``(upn, display name, kind, object id)`` named by an Actor[] or Target[] array."""
    upn = name = kind = object_id = fallback_id = None
    if type(entries) is not list:
        return None, None, None, None
    for entry in entries:
        if type(entry) is not dict:
            continue
        value = entry.get("ID")
        if type(value) is not str or not value:
            continue
        number = to_int(entry.get("Type"))
        if number == 5:
            upn = upn or normalise_principal(value)[0] or None
        elif number == 1:
            name = name or value
        elif number == 0:
            fallback_id = fallback_id or value
        elif number == 2:
            prefix, sep, rest = value.partition("_")
            if sep and rest and prefix in _KINDS:
                kind = kind or prefix
                object_id = object_id or rest
            elif value in _KINDS:
                kind = kind or value
    return upn, name, kind, object_id or fallback_id


def _side(value: Any, which: str) -> Any:
    """OldValue or NewValue of one ModifiedProperties entry as flatten mapped it."""
    if type(value) is dict and ("OldValue" in value or "NewValue" in value):
        return value.get(which)
    # An entry delivered as {"Name", "Value"} carries only the value after the change.
    return value if which == "NewValue" else None


_SKU_NAME = re.compile(r"SkuName=([^,\]\s]+)")
_SKU_ID = re.compile(r"SkuId=([0-9A-Fa-f-]{36})")
_SKU_KEYS = ("SkuName", "skuName", "SkuPartNumber", "skuPartNumber", "SkuId", "skuId")
_PLAN_KEYS = ("ServicePlanId", "servicePlanId")


def _items(value: Any, other: Any) -> list[str] | None:
    """*value*'s items normalised, distinct and sorted; ``[]`` for an empty side of a list change."""
    if type(value) is list:
        return sorted({_item(v) for v in value})
    if (value is None or value == "") and type(other) is list:
        return []
    return None


def _item(value: Any) -> str:
    if type(value) is str:
        if "Sku" in value:
            m = _SKU_NAME.search(value) or _SKU_ID.search(value)
            if m is not None:
                return m.group(1)
        return value.strip()
    if type(value) is dict:
        for keys in (_SKU_KEYS, _PLAN_KEYS):
            for key in keys:
                found = value.get(key)
                if type(found) is str and found:
                    return found
        return _canonical(value)
    return as_text(value)


def _canonical(value: Any) -> str:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        return as_text(value)


BUILDERS: tuple[tuple[str, Callable[[Any, Row], list[Row]]], ...] = (
    ("MailItemAccess", build_mail_item_access),
    ("DirectoryChange", build_directory_change),
    ("SignIn", build_sign_in),
)
"""Each derived table and its builder."""
