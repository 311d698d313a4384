"""``SignIn`` in the engine: the KQL body that derives its rows from ``AuditIngest``.

``SignIn`` holds one row per Entra ID logon record: RecordType 15 (STS logons) or 9 (account
logons), or any record whose Operation is ``UserLoggedIn`` / ``UserLoginFailed``
(docs/data-dictionary.md). ``BODY`` is the query ADX runs over ``AuditIngest`` (AuditRecord's
columns) as the update policy of the staging table (``function_app.lake.derived_tables``). It
computes what ``function_app.records.derived.build_sign_in`` computes from a record and its
AuditRecord row (the local lake's definition), and tests/unit/records/test_derive_sign_in.py holds
the two in lock-step, running the body through duckdb-kql 1.1.2 (so it must run on both engines).

How the body reads a row:

* The row's own columns (TimeGenerated, Id, TenantId, Operation, UserPrincipal, ClientIP,
  ClientIPKind, AppId, ResultStatus, SessionId) are flatten's normalised values, taken as they are.
* The name/value arrays come from ``Properties`` (flatten turned them into maps, parsed their
  JSON-in-strings, their stringified and cmdlet-string forms, and read them case-insensitively),
  so ``Properties.ExtendedProperties.UserAgent`` is the builder's ``extended.get("UserAgent")``.
  Each map is extracted once (``_x``, ``_d``); a map that is not a map (a list of plain strings,
  a value of an unexpected shape) yields null for every name, as the builder's ``{}`` does.
* ErrorCode, LoginStatus, ErrorNumber, LogonError and ApplicationId are read from the record
  itself (``AuditData``), as the builder does.

Where the KQL needs care, and why:

* Filter first: RecordType/Operation on typed columns, before any JSON is read, so the other
  records of a batch cost one comparison.
* A record that was never an object gives no row (the builder returns ``[]`` for it). Such a row
  has RecordType -2147483648 and Operation "" and is filtered out already, except an element the
  reader could not parse (``record:unreadable:*``): its RecordType and Operation are read from its
  text, and its AuditData is that text, a string. Only rows whose Quality text names that flag pay
  for the test that AuditData is an object; a record whose AuditData the sink had to store as text
  keeps its row (the builder saw the object; the row keeps what Properties and the columns say).
* Null: duckdb-kql's ``isnull`` and ``coalesce`` do not see a JSON ``null`` inside a dynamic as
  null (``isnull(dynamic({"a":null}).a)`` is false there, true in ADX), and the builder tells a
  value set to null from one set to ``""`` (DeviceProperties[TrustType]). ``tostring(pack_array(x))
  == "[null]"`` answers the same in both engines; ``gettype(x) == "null"`` does too, but duckdb-kql
  writes it as 3 kB of SQL, and binding the SQL is most of this body's cost in DuckDB.
* ``tostring`` of a dynamic is ``""`` for null and missing values, the string itself for a string,
  and compact JSON text for anything else: the builder's ``_text`` (``json.dumps`` with compact
  separators and ``ensure_ascii=False``) for strings, integers, booleans, objects and arrays.
  ``isempty(tostring(x))`` is therefore the builder's ``x is None or x == ""`` fallbacks
  (ErrorCode, else LoginStatus, else ErrorNumber; LogonError, else ExtendedProperties[LoginError])
  and its ``_text(x) or row[...]`` ones (ApplicationId, SessionId).
* DeviceTrustType is DeviceProperties[TrustType] unless that is null; then DeviceProperties
  [DeviceTrustType] *if the map has that key*, even with a null value (``dict.get(key, default)``),
  else ExtendedProperties[DeviceTrustType]. Neither engine has a key test both run (duckdb-kql
  lacks ``bag_has_key`` and ``bag_keys``), so a null under that key is found in the map's compact
  JSON text: ``"DeviceTrustType":null`` can only be a key and its null there (a quote inside a
  string is escaped).
* Keys in another case (Quality ``keys:case-mismatch``, converted data): the builder then looks a
  field up case-insensitively when its exact key is missing or null, taking the last key that
  matches. KQL property access is case-sensitive and duckdb-kql cannot index a dynamic by a
  computed key, so for flagged rows only, the record's JSON text is rewritten: the last key
  spelling ``ErrorCode`` in any case (``[Ee][Rr]...``: ASCII classes, exactly what Python's
  ``str.lower`` folds onto these names) becomes ``~ErrorCode`` and so on, and the text is parsed
  once (``_ci``). The greedy ``^(.*)`` makes it the last occurrence in the text. ``_ci`` is read
  when the exact key gives ``""`` (null, missing or empty: the builder's test is null only, but an
  exact null test per field would double the SQL for a case that needs two spellings of one key).
  Unflagged rows never serialise or parse the record again.
* The final ``project`` gives exactly SignIn's columns, each converted to its type (for the
  columns AuditIngest already types so, the conversion is a no-op kept for the rule).

Known differences from the builder (all on shapes no service record has; see the tests):

* Floats written in exponent form by either side: ``json.dumps`` writes ``1e+16`` and ``1e-07``,
  DuckDB ``10000000000000000.0`` and ``1e-7`` (ADX writes reals its own way again).
* Control characters inside an object or array value (written as JSON text): DuckDB escapes
  U+001F as ``\\u001F``, ``json.dumps`` as ``\\u001f`` (the nine whose escape has a hex letter).
* Case-insensitive lookup (flagged records only): when the last key spelling in the text belongs
  to a nested object that follows the record's own key, the record's own value is missed; an
  exact key holding ``""`` gives way to another spelling (the builder keeps the ``""``); a record
  that has a key ``~ErrorCode`` (etc.) of its own may be read under it.
* DeviceTrustType: a nested object inside DeviceProperties holding ``"DeviceTrustType":null``
  reads as if the map had that key.
* A record the sink had to store as text (``AuditData:unserialisable:*``) has lost the fields
  read from ``AuditData``: ApplicationId falls back to AppId, ErrorCode and LogonError to what
  Properties hold.
"""

from __future__ import annotations

from function_app.lake.kql_case import case_folded

TABLE = "SignIn"

# The top-level fields read from the record itself; a flagged record's last key spelling of each
# (in any case) is renamed to "~<Field>" so the case-insensitive lookup is one parse.
_CASE_FOLDED_FIELDS = ("ErrorCode", "LoginStatus", "ErrorNumber", "LogonError", "ApplicationId")


def _field(name: str) -> str:
    """The record's *name* as the builder's getter reads it: the exact key unless it is null (or "")."""
    return f"iff(_f and isempty(tostring(AuditData.{name})), tostring(_ci['~{name}']), tostring(AuditData.{name}))"


def _is_null(value: str) -> str:
    """*value* (a dynamic) is null or missing, in both engines (see the module docstring)."""
    return f'tostring(pack_array({value})) == "[null]"'


BODY = "\n".join((
    "AuditIngest",
    "| where isnotempty(Id)",
    '| where RecordType in (9, 15) or Operation in ("UserLoggedIn", "UserLoginFailed")',
    "| where not(tostring(Quality) contains '\"record:unreadable:')"
    ' or tostring(pack_array(AuditData)) startswith "[{"',
    '| extend _x = Properties.ExtendedProperties, _d = Properties.DeviceProperties,'
    ' _f = set_has_element(Quality, "keys:case-mismatch")',
    f"| extend _ci = iff(_f, {case_folded('AuditData', _CASE_FOLDED_FIELDS)}, dynamic(null))",
    f"| extend _ec = {_field('ErrorCode')}, _ls = {_field('LoginStatus')}, _en = {_field('ErrorNumber')},"
    f" _le = {_field('LogonError')}, _app = {_field('ApplicationId')}, _ds = tostring(_d.SessionId)",
    f"| extend _tt = iff(not({_is_null('_d.TrustType')}), tostring(_d.TrustType),"
    " iff(gettype(_d) == \"dictionary\" and tostring(_d) contains '\"DeviceTrustType\":null', \"\","
    f" iff(not({_is_null('_d.DeviceTrustType')}), tostring(_d.DeviceTrustType), tostring(_x.DeviceTrustType))))",
    "| project TimeGenerated = todatetime(TimeGenerated), RecordId = tostring(Id), TenantId = tostring(TenantId),"
    " Operation = tostring(Operation), UserPrincipal = tostring(UserPrincipal), ClientIP = tostring(ClientIP),"
    " ClientIPKind = tostring(ClientIPKind), ApplicationId = iff(isempty(_app), tostring(AppId), _app),"
    " ResultStatus = tostring(ResultStatus), ResultStatusDetail = tostring(_x.ResultStatusDetail),"
    " ErrorCode = iff(isnotempty(_ec), _ec, iff(isnotempty(_ls), _ls, _en)),"
    " LogonError = iff(isnotempty(_le), _le, tostring(_x.LoginError)), UserAgent = tostring(_x.UserAgent),"
    " RequestType = tostring(_x.RequestType), AuthMethod = tostring(_x.UserAuthenticationMethod),"
    " DeviceTrustType = _tt, DeviceOS = tostring(_d.OS), BrowserType = tostring(_d.BrowserType),"
    " SessionId = iff(isempty(_ds), tostring(SessionId), _ds)",
))
"""SignIn's rows of the AuditRecord rows in ``AuditIngest`` (ADX KQL that duckdb-kql 1.1.2 runs too)."""
