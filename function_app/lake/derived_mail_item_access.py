"""``MailItemAccess`` built by ADX: the KQL body that derives its rows from ``AuditIngest``.

``BODY`` is the query ADX runs over ``AuditIngest`` (AuditRecord's columns) as the update policy of
the staging table (``function_app.lake.derived_tables``). It gives what
``function_app.records.derived.build_mail_item_access`` gives for a record and its AuditRecord row
(the local lake's definition: one row per item of ``Folders[].FolderItems[]`` and
``Messages[].MessageItems[]``, keyed by (RecordId, FolderPath, ItemKey), a folder listed without
items as one row with ItemKey "", a record listing no folder as one row). tests/unit/records/
test_derive_mail_item_access.py holds the two in lock-step, running the body through duckdb-kql
1.1.2, so the body keeps to KQL both engines run.

How it gets there, and why:

* Operation is tested first, on the typed column, so the other records cost one comparison. A record
  whose AuditData the sink had to store as text (``AuditData:unserialisable:``) is parsed back.
* Keys in another case (Quality ``keys:case-mismatch``): the builder then looks the fields up case-
  insensitively. KQL cannot index a dynamic by a computed key on duckdb-kql, so for flagged rows
  only, the last spelling of each field in the record's text is renamed ``~Field`` and the text parsed
  once (``_c``).
* ``Folders`` and ``Messages`` may be lists or JSON text holding one (the builder's ``_json_list``);
  each container, folder and item is expanded with its index, an empty list standing as ``[null]``
  so that every record keeps a row to fall back to.
* Which folders have items, and whether the record has any folder, is a per-record fact the item
  rows need: duckdb-kql has no ``prev``/``row_cumsum``, so the same expansion, summarised by Id, is
  joined back.
* ``summarize arg_min(_ord, *) by Id, _p, _k`` keeps the first item of each (FolderPath, ItemKey),
  as the builder does.
* Numbers: LogonType and SizeInBytes are read as ``int()`` and ``float()`` read them (text stripped
  of what ``str.strip`` strips; integer text exact to 64 bits without a detour through a double,
  anything out of range null).

Known differences, on shapes no service record has (listed in the tests' terms): the text of a
non-string value (a number in exponent form, a control character inside JSON text) is written by
each engine its own way; two different records sharing one Id in one ingestion are merged; a key
spelled in another case whose last spelling belongs to a nested object is missed.
"""

from __future__ import annotations

from function_app.lake.kql_case import case_folded

TABLE = "MailItemAccess"

# Python's str.strip() removes what str.isspace() calls whitespace; RE2's \s is ASCII only.
_WS = r"[\s\x0b\x1c-\x1f\x85\xa0\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]+"
# What float() and int() read once the text is stripped (nan/inf are refused later anyway).
_NUMBER = r"^[+-]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][+-]?[0-9]+)?$"
_INTEGER = r"^[+-]?[0-9]+$"
_PLACEHOLDERS = ("not available", "unknown", "no upn", "n/a", "na", "none", "null", "(null)", "<null>", "-")
_NUMERIC_TYPES = '("long", "int", "real", "double", "decimal")'

# Top-level fields the builder reads from the record itself (case-insensitively when flagged).
_CASE_FOLDED_FIELDS = ("MailboxOwnerUPN", "ClientInfoString", "LogonType", "Folders", "Messages")


def _field(name: str) -> str:
    return f'iff(_ci and gettype(_a.{name}) == "null", _c["~{name}"], _a.{name})'


def _list(v: str) -> str:
    """The builder's _json_list: a list, or the list a JSON string holds, else an empty list."""
    return (f'iff(gettype({v}) == "array", {v}, iff(gettype({v}) == "string", '
            f'parse_json(tostring({v})), dynamic([])))')


def _number_text(v: str, t: str) -> str:
    """The text to_int reads: a number's JSON text, a string stripped; "" for anything else."""
    return (f'iff({t} in {_NUMERIC_TYPES}, tostring({v}), iff({t} == "string", '
            f'trim(@"{_WS}", tostring({v})), ""))')


_PREFIX = (
    "AuditIngest",
    "| where isnotempty(Id)",
    '| where Operation == "MailItemsAccessed"',
    "| where gettype(AuditData) == \"dictionary\" or tostring(Quality) contains '\"AuditData:unserialisable:'",
    '| extend _a = iff(gettype(AuditData) == "dictionary", AuditData, parse_json(tostring(AuditData))),'
    ' _ci = set_has_element(Quality, "keys:case-mismatch")',
    '| where gettype(_a) == "dictionary"',
    f"| extend _c = iff(_ci, {case_folded('_a', _CASE_FOLDED_FIELDS)}, dynamic(null))",
)


def _folders_steps(keep: str) -> tuple[str, ...]:
    return (
        f"| extend _f = {_field('Folders')}, _m = {_field('Messages')}{keep}",
        f"| extend _f = {_list('_f')}, _m = {_list('_m')}",
        "| mv-expand with_itemindex=_cx _fs = pack_array(_f, _m)",
        "| extend _fs = iff(array_length(_fs) > 0, _fs, dynamic([null]))",
        "| mv-expand with_itemindex=_fi _fo = _fs",
        '| extend _fd = gettype(_fo) == "dictionary", _it = iff(_cx == 0, _fo.FolderItems, _fo.MessageItems)',
        f"| extend _it = {_list('_it')}",
        "| extend _it = iff(array_length(_it) > 0, _it, dynamic([null]))",
        "| mv-expand with_itemindex=_ii _i = _it",
        '| extend _id = gettype(_i) == "dictionary"',
    )


_FLAGS = " ".join((
    *_PREFIX,
    *_folders_steps(""),
    "| summarize _fw = make_set(iff(_fd and _id, _cx * 4294967296 + _fi, -1)), _rd = countif(_fd) > 0 by Id",
))

_BASE = (
    f"| extend _o = {_field('MailboxOwnerUPN')}, _s = {_field('ClientInfoString')}, _l = {_field('LogonType')},"
    " _t = Properties.OperationProperties.IsThrottled",
    "| extend _ot = gettype(_o), _lt = gettype(_l), _tt = gettype(_t)",
    f"| extend _o = iff(_ot == \"string\", tolower(trim(@\"{_WS}\", tostring(_o))), \"\"),"
    f" _l = {_number_text('_l', '_lt')},"
    f' _t = iff(_tt == "bool", tostring(_t), iff(_tt == "string", tolower(trim(@"{_WS}", tostring(_t))), ""))',
    "| extend _s = tostring(_s), _mat = tostring(Properties.OperationProperties.MailAccessType),"
    " _ld = iff(strlen(_l) <= 32 or _lt != \"string\", "
    f"iff(_l matches regex @\"{_NUMBER}\", todouble(_l), real(null)), real(null))",
)


def _body() -> str:
    placeholders = ", ".join(f'"{p}"' for p in _PLACEHOLDERS)
    return "\n".join((
        *_PREFIX,
        *_BASE,
        *_folders_steps(""),
        f"| join kind=inner ({_FLAGS}) on Id",
        "| extend _fk = _cx * 4294967296 + _fi",
        "| where (_fd and _id) or (_fd and _ii == 0 and not(set_has_element(_fw, _fk))) or (not(_rd) and _fk == 0)",
        '| extend _p = iff(_fd, tostring(_fo.Path), ""), _mi = iff(_id, tostring(_i.InternetMessageId), ""),'
        ' _im = iff(_id, tostring(_i.ImmutableId), ""), _iid = iff(_id, tostring(_i.Id), ""),'
        " _z = iff(_id, _i.SizeInBytes, dynamic(null))",
        '| extend _k = iff(isnotempty(_mi), _mi, iff(isnotempty(_im), _im, _iid)), _zt = gettype(_z)',
        f"| extend _z = {_number_text('_z', '_zt')}",
        "| extend _zs = iff(strlen(_z) <= 32 or _zt != \"string\", _z, \"\")",
        "| extend _ord = _cx * 2305843009213693952 + _fi * 1073741824 + _ii",
        "| project TimeGenerated, Id, TenantId, UserPrincipal, _o, ClientIP, ClientIPKind, SessionId, AppId, _s,"
        " _ld, _mat, _t, _p, _k, _mi, _im, _iid, _zs, _ord",
        "| summarize arg_min(_ord, *) by Id, _p, _k",
        # SizeInBytes: exact for integer text, through a double otherwise (as int() and float() read them).
        f"| extend _zu = replace_regex(_zs, @\"^[+-]?0*\", \"\"), _zneg = _zs startswith \"-\","
        f" _zint = _zs matches regex @\"{_INTEGER}\", _zd = iff(_zs matches regex @\"{_NUMBER}\","
        " todouble(_zs), real(null))",
        "| extend _zn = strlen(_zu)",
        "| extend _zhi = iff(_zn > 9, tolong(substring(_zu, 0, _zn - 9)), 0),"
        " _zlo = iff(_zn > 9, tolong(substring(_zu, _zn - 9)), tolong(_zu))",
        "| extend _size = iff(_zint, iff(_zn == 0, 0, iff(_zn > 19 or _zhi > 9223372036"
        " or (_zhi == 9223372036 and _zlo > iff(_zneg, 854775808, 854775807)), long(null),"
        " iff(_zneg, -_zhi * 1000000000 - _zlo, _zhi * 1000000000 + _zlo))),"
        " iff(_zd == round(_zd) and _zd >= -9223372036854775808.0 and _zd < 9223372036854775808.0,"
        " tolong(_zd), long(null)))",
        "| project TimeGenerated = todatetime(TimeGenerated), RecordId = tostring(Id), TenantId = tostring(TenantId),"
        " UserPrincipal = tostring(UserPrincipal),"
        f" MailboxOwnerUPN = iff(_o in ({placeholders}), \"\", _o),"
        " ClientIP = tostring(ClientIP), ClientIPKind = tostring(ClientIPKind), SessionId = tostring(SessionId),"
        " AppId = tostring(AppId), ClientInfoString = tostring(_s),"
        " LogonType = iff(_ld == round(_ld) and _ld >= -2147483648.0 and _ld <= 2147483647.0, toint(_ld), int(null)),"
        " MailAccessType = _mat,"
        ' IsThrottled = iff(_t == "true", true, iff(_t == "false", false, bool(null))),'
        " FolderPath = tostring(_p), ItemKey = tostring(_k), InternetMessageId = tostring(_mi),"
        " ImmutableId = tostring(_im), ItemId = tostring(_iid), SizeInBytes = tolong(_size)",
    ))


BODY = _body()
"""MailItemAccess's rows of the AuditRecord rows in ``AuditIngest`` (ADX KQL that duckdb-kql 1.1.2 runs too)."""
