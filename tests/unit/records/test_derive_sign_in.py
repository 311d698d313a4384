"""Lock-step of the SignIn KQL body (function_app.lake.derived_sign_in) with the Python builder: the
body run by duckdb-kql must give exactly the rows build_sign_in gives, and ADX must type it as SignIn.

The known differences (documented in the body's module) are each pinned by a strict xfail, so they
are visible here and a fix shows up as an unexpected pass."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from function_app.lake.derived_sign_in import BODY, TABLE
from function_app.lake.schema import TABLES_BY_NAME
from function_app.records.derived import build_sign_in
from function_app.records.reader import RecoveredRecord, parse_content

from ._derive_harness import comparable, kql_rows, python_rows
from ._samples import all_records, load, require_samples
from .test_records_derived import DEVICE_LOGON, entra, one
from .test_records_derived_properties import derived_records
from .test_records_properties import SETTINGS

require_samples()

COLUMNS = TABLES_BY_NAME[TABLE].column_names


def both(records: list[Any], body: str = BODY) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    return comparable(TABLE, kql_rows(TABLE, body, records)), comparable(TABLE, python_rows(build_sign_in, records))


def differences(kql: list[tuple[Any, ...]], python: list[tuple[Any, ...]]) -> list[str]:
    """Per RecordId, the columns whose values differ (or the side that has no row)."""
    by_id_k = {row[1]: row for row in kql}
    by_id_p = {row[1]: row for row in python}
    out = []
    for key in sorted(set(by_id_k) | set(by_id_p)):
        k, p = by_id_k.get(key), by_id_p.get(key)
        if k is None or p is None:
            out.append(f"{key}: only {'python' if k is None else 'kql'} has a row")
        elif k != p:
            out.append(f"{key}: " + ", ".join(
                f"{c} kql={a!r} python={b!r}" for c, a, b in zip(COLUMNS, k, p, strict=True) if a != b))
    return out


def assert_lock_step(records: list[Any]) -> int:
    """The body's rows are the builder's; returns how many there are."""
    kql, python = both(records)
    assert kql == python, "\n".join(differences(kql, python))
    return len(python)


def logon(record_id: Any, **fields: Any) -> dict[str, Any]:
    """An STS logon record; a field given as ``...`` is left out."""
    record: dict[str, Any] = {
        "Id": record_id, "RecordType": 15, "Operation": "UserLoginFailed", "CreationTime": "2026-11-20T10:00:00",
        "UserId": "Bob@Contoso.com", "ClientIP": "20.1.2.3", "ApplicationId": "app-1", "ErrorCode": 50126,
        "LogonError": "InvalidUserNameOrPassword",
        "ExtendedProperties": [{"Name": "UserAgent", "Value": "curl/8"},
                               {"Name": "RequestType", "Value": "Login:login"},
                               {"Name": "ResultStatusDetail", "Value": "UserError"}],
        "DeviceProperties": [{"Name": "OS", "Value": "Windows"}, {"Name": "BrowserType", "Value": "Edge"},
                             {"Name": "TrustType", "Value": "1"}, {"Name": "SessionId", "Value": "sess-9"}],
    }
    record.update(fields)
    return {k: v for k, v in record.items() if v is not ...}


def lowered(record: dict[str, Any]) -> dict[str, Any]:
    """*record* with its top-level keys lower-cased, as converted exports deliver it."""
    return {k.lower(): v for k, v in record.items()}


# ---------------------------------------------------------------------------------------------
# the body's shape (the rules every derived body follows)


def test_the_body_is_one_step_a_line_and_projects_exactly_the_tables_columns() -> None:
    lines = BODY.split("\n")
    assert lines[:2] == ["AuditIngest", "| where isnotempty(Id)"]
    assert all(line.startswith("| ") and line.strip() for line in lines[1:]), "a blank or non-step line"
    assert lines[-1].startswith("| project ")
    projected = [item.split("=", 1)[0].strip() for item in _top_level_items(lines[-1][len("| project "):])]
    assert projected == list(COLUMNS)


def _top_level_items(text: str) -> list[str]:
    items, depth, start, quote = [], 0, 0, ""
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    return [*items, text[start:]]


# ---------------------------------------------------------------------------------------------
# (a) the sample corpus, (b) the literals of the builder's own tests


def test_every_sample_record_gives_the_builders_rows() -> None:
    assert assert_lock_step([r for _, r in all_records()]) >= 10


def test_the_builders_test_records_give_its_rows() -> None:
    records = [
        *load("elastic-beats/15-azuread-sts-logon.selected-lines.log"),
        one("panther/panther_microsoft365_test_logs.jsonl", "UserLoginFailed"),
        next(r for r in load("msdocs/msdocs_example_records.jsonl") if r.get("ResultStatus") == "failed"),
        DEVICE_LOGON,
        entra([]),  # not a logon: no row
    ]
    assert assert_lock_step(records) == 7


# Control characters that JSON text escapes as \u00XX with a hex letter in XX: json.dumps writes
# the letter in lower case, DuckDB in upper case (\b, \f, \n, \r, \t have short escapes in both).
_ESCAPED_WITH_A_LETTER = frozenset(map(chr, (0x0B, 0x0E, 0x0F, 0x1A, 0x1B, 0x1C, 0x1D, 0x1E, 0x1F)))


def _known_difference(value: Any, nested: bool = False) -> bool:
    """*value* holds what the known differences are about: a float that json.dumps writes in
    exponent form or past 1e16, or, inside an object or array (written as JSON text), a control
    character escaped with a hex letter. See test_floats_in_exponent_form_are_written_differently
    and test_control_characters_inside_json_text_are_escaped_differently."""
    if type(value) is float:
        return math.isfinite(value) and ("e" in repr(value) or abs(value) >= 1e16)
    if type(value) is str:
        return nested and not _ESCAPED_WITH_A_LETTER.isdisjoint(value)
    if type(value) is list:
        return any(_known_difference(v, True) for v in value)
    if type(value) is dict:
        return any(_known_difference(k, True) or _known_difference(v, True) for k, v in value.items())
    return False


def _avoiding_known_differences(value: Any, nested: bool = False) -> Any:
    """*value* with what _known_difference finds replaced: such a float by 1.5, such a character
    by "?" (so the property test keeps its examples instead of discarding most of them)."""
    if _known_difference(value, nested):
        if type(value) is float:
            return 1.5
        if type(value) is str:
            return "".join("?" if c in _ESCAPED_WITH_A_LETTER else c for c in value)
    if type(value) is list:
        return [_avoiding_known_differences(v, True) for v in value]
    if type(value) is dict:
        return {_avoiding_known_differences(k, True): _avoiding_known_differences(v, True) for k, v in value.items()}
    return value


@settings(SETTINGS, max_examples=30, suppress_health_check=[*SETTINGS.suppress_health_check,
                                                            HealthCheck.data_too_large])
@given(st.lists(derived_records, min_size=1, max_size=4))
def test_the_builders_property_records_give_its_rows(batch: list[Any]) -> None:
    """test_records_derived_properties' records (every RecordType/Operation mix and json_values in
    each field the builder reads), a batch at a time, with the known differences' values replaced."""
    batch = [_avoiding_known_differences(record) for record in batch]
    assert not any(_known_difference(record) for record in batch)
    assert_lock_step(batch)


# ---------------------------------------------------------------------------------------------
# (c) hostile shapes

# Values a field can hold: missing/null/empty, every JSON type, integers at the 64-bit edges,
# JSON that a string column must carry as text, and unicode that must survive unescaped.
VALUES: list[Any] = [
    ..., None, "", "  ", "x", 0, -1, True, False, [], {}, [1, "é"], {"b": 1, "a": [None, 1.5, "\"\\\n\t\u0001"]},
    1.5, 0.1, -0.0, 123456789.0, 2**63 - 1, -(2**63), 2**63, 2**64 - 1,
    "😀 日本 עברית \u2028 \u0000 \x7f", '{"not": "parsed"}', "[1, 2...",
]
TOP_FIELDS = ("ErrorCode", "LoginStatus", "ErrorNumber", "LogonError", "ApplicationId")
EXTENDED = ("UserAgent", "RequestType", "ResultStatusDetail", "UserAuthenticationMethod", "LoginError",
            "DeviceTrustType")
DEVICE = ("OS", "BrowserType", "SessionId", "TrustType", "DeviceTrustType")


def entries(names: tuple[str, ...], value: Any, key: str = "Value", **other: Any) -> list[dict[str, Any]]:
    """Name/value entries of *names*, each holding *value* (no *key* at all for ``...``)."""
    return [{"Name": n, **other, **({} if value is ... else {key: value})} for n in names]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_each_field_read_holds_any_value(value: Any) -> None:
    records = []
    for field in TOP_FIELDS:
        records.append(logon(f"{field}", **{field: value}))
        # With the fields before it in the fallback chains missing, so this one is what is read.
        records.append(logon(f"{field}-alone", **{field: value, "ErrorCode": ..., "LogonError": ...}))
    records.append(logon("extended", LogonError=..., ExtendedProperties=entries(EXTENDED, value)))
    records.append(logon("extended-entry", LogonError=..., ExtendedProperties=entries(
        EXTENDED, value, "NewValue", OldValue="old")))
    records.append(logon("device", DeviceProperties=entries(DEVICE, value)))
    records.append(logon("device-trust-fallback", DeviceProperties=entries(("DeviceTrustType",), value),
                         ExtendedProperties=entries(("DeviceTrustType",), "extended")))
    records.append(logon("trust-type", DeviceProperties=[*entries(("TrustType",), value),
                                                         *entries(("DeviceTrustType",), "device")],
                         ExtendedProperties=entries(("DeviceTrustType",), "extended")))
    records.append(logon("arrays", DeviceProperties=value, ExtendedProperties=value))
    assert assert_lock_step(records) == len(records)


ARRAY_SHAPES: dict[str, Any] = {
    "json-in-a-string": '[{"Name": "UserAgent", "Value": "a"}, {"Name": "TrustType", "Value": "2"}]',
    "cmdlet-string": '-UserAgent "x y" -RequestType z -OS ("a","b")',
    "object-in-a-string": '{"UserAgent": "x", "RequestType": 5, "OS": {"k": "v"}}',
    "an-object": {"UserAgent": "x", "OS": "y"},
    "plain-strings": ["UserAgent", "OS"],
    "repeated-name": [{"Name": "UserAgent", "Value": "a"}, {"Name": "UserAgent", "Value": "b"},
                      {"Name": "OS", "Value": "w"}, {"Name": "OS", "Value": None}],
    "embedded-json": [{"Name": "UserAgent", "Value": '{"a": [1, {"b": "é"}]}'}, {"Name": "OS", "Value": "[1, 2..."},
                      {"Name": "RequestType", "Value": " [true]"}],
    "unnamed-entries": [{"Value": "x"}, {"Name": 5, "Value": "y"}, "z", {"Name": "UserAgent"}],
    "cut-json": '[{"Name": "UserAgent", "Value": "a"',
    "nested-lists": [[{"Name": "UserAgent", "Value": "a"}]],
}


@pytest.mark.parametrize("shape", ARRAY_SHAPES, ids=str)
def test_name_value_arrays_of_any_shape(shape: str) -> None:
    value = ARRAY_SHAPES[shape]
    records = [logon("both", ExtendedProperties=value, DeviceProperties=value),
               logon("extended", ExtendedProperties=value), logon("device", DeviceProperties=value)]
    assert assert_lock_step(records) == 3


def test_device_trust_type_follows_the_builders_precedence() -> None:
    extended = [{"Name": "DeviceTrustType", "Value": "extended"}]
    records = [
        logon("absent", DeviceProperties=[{"Name": "OS", "Value": "w"}], ExtendedProperties=extended),
        logon("key-without-value", DeviceProperties=[{"Name": "DeviceTrustType"}], ExtendedProperties=extended),
        logon("null-value", DeviceProperties=[{"Name": "DeviceTrustType", "Value": None}], ExtendedProperties=extended),
        logon("trust-null", DeviceProperties=[{"Name": "TrustType", "Value": None}], ExtendedProperties=extended),
        logon("trust-empty", DeviceProperties=[{"Name": "TrustType", "Value": ""},
                                               {"Name": "DeviceTrustType", "Value": "d"}], ExtendedProperties=extended),
        logon("not-a-map", DeviceProperties='x"DeviceTrustType":null', ExtendedProperties=extended),
        logon("plain-strings", DeviceProperties=["DeviceTrustType"], ExtendedProperties=extended),
        logon("json-text-in-value", DeviceProperties=[{"Name": "OS", "Value": '"DeviceTrustType":null'}],
              ExtendedProperties=extended),
    ]
    kql, _ = both(records)
    assert [row[COLUMNS.index("DeviceTrustType")] for row in sorted(kql, key=lambda r: r[1])] == [
        "extended", "extended", "", "extended", "", "extended", "", "extended"]
    assert assert_lock_step(records) == len(records)


def test_keys_in_another_case_are_read_as_the_builder_reads_them() -> None:
    base = logon("", CreationTime=..., ErrorCode=..., LogonError=..., ApplicationId=...)
    time = {"creationtime": "2026-11-20T10:00:00"}
    records = [
        lowered(logon("all-lower")),
        lowered(logon("lower-login-status", ErrorCode=..., LoginStatus="ls", ErrorNumber=7)),
        {**lowered(logon("two-spellings")), "ERRORCODE": "the last one"},
        {**base, **time, "Id": "exact-null", "ErrorCode": None, "errorcode": "low", "LogonError": None,
         "LOGONERROR": "le", "ApplicationId": None, "applicationID": "app"},
        {**base, **time, "Id": "exact-wins", "ErrorCode": 1, "errorcode": 2, "ApplicationId": "a",
         "APPLICATIONID": "b"},
        {**base, **time, "Id": "nested-only", "Actor": [{"errorcode": "nested"}], "LoginStatus": 3},
        {**base, **time, "Id": "nested-before", "Actor": [{"errorcode": "nested"}], "ErrorCode": None,
         "ERRORCODE": "top"},
        {**base, **time, "Id": "in-a-string", "UserAgent": '"errorcode":"fake"', "loginstatus": 4},
        {**base, **time, "Id": "object-value", "errorCode": {"x": [1, "é"]}, "LogonError": "", "logonerror": None},
        {**base, **time, "Id": "spaced", "Error Code": "no", "error_code": "no", "errorcodes": "no"},
        # Without the flag (Id, CreationTime and RecordType exact) other spellings are not read.
        {**base, "Id": "not-flagged", "CreationTime": "2026-11-20T10:00:00", "errorcode": "x", "logonerror": "y",
         "applicationid": "z"},
    ]
    assert assert_lock_step(records) == len(records)
    kql, _ = both(records)
    by_id = {row[1]: row for row in kql}
    assert by_id["two-spellings"][COLUMNS.index("ErrorCode")] == "the last one"
    assert by_id["exact-null"][COLUMNS.index("ApplicationId")] == "app"
    assert by_id["not-flagged"][COLUMNS.index("ErrorCode")] == ""


def test_which_records_are_logons() -> None:
    records = [
        logon("rt-15"), logon("rt-9", RecordType=9, Operation="PasswordLogonInitialAuthUsingPassword"),
        logon("rt-string", RecordType="15"), logon("rt-float", RecordType=9.0),
        logon("op-only", RecordType=50, Operation="UserLoggedIn"), logon("neither", RecordType=50, Operation="Other"),
        logon("directory", RecordType=8, Operation="Update user."),
        logon("op-not-a-string", RecordType=50, Operation=5),
        # A logon Operation alone, and surrogate and non-string Ids, still make logons.
        logon("rt-missing", RecordType=...), logon(...), logon(""), logon(5),
        ["a list"], "a string", 15, None,
    ]
    assert assert_lock_step(records) == 9


def test_recovered_and_unreadable_records() -> None:
    body = (b'[{"Id":"nan","RecordType":15,"Operation":"UserLoggedIn","CreationTime":"2026-11-20T10:00:00",'
            b'"ErrorCode":NaN,"LogonError":"\\ud800x"},'
            b'{"Id":"inf","RecordType":15,"Operation":"UserLoggedIn","ErrorCode":1e400},'
            b'{"Id":"bytes","RecordType":15,"Operation":"UserLoggedIn","ErrorCode":"\xff\xfe"},'
            b'{"Id":"broken","RecordType":15,"Operation":"UserLoggedIn",,"x"}]')
    records = parse_content(body).records
    assert [type(r) for r in records] == [RecoveredRecord] * 4 and not records[3].readable
    # The unreadable one is read from its text as a logon (RecordType 15) but has no record: no row.
    assert assert_lock_step(records) == 3


def test_normalised_columns_and_unicode_are_carried_over() -> None:
    records = [
        logon("system", UserId="NT AUTHORITY\\SYSTEM"), logon("port", ClientIP="[::1]:80"),
        logon("alternate-ip", ClientIP=..., ActorIpAddress="10.0.0.1"),
        logon("context", ApplicationId=..., AppAccessContext={"ClientAppId": "ctx-app", "AADSessionId": "ctx-sess"},
              DeviceProperties=...),
        logon("empty-application", ApplicationId="", AppId="app-id"),
        logon("unicode", UserId="Jürgen@Contoso.com",
              ExtendedProperties=[{"Name": "UserAgent", "Value": "😀 日本\u2028\u0000\x7f"}]),
        logon("no-time", CreationTime="not a time"),
    ]
    assert assert_lock_step(records) == len(records)


# ---------------------------------------------------------------------------------------------
# the lock-step can fail, and the known differences


def test_the_lock_step_sees_a_wrong_body() -> None:
    wrong = BODY.replace("UserAgent = tostring(_x.UserAgent)", "UserAgent = tostring(_x.RequestType)")
    assert wrong != BODY
    kql, python = both([logon("s-1")], wrong)
    assert differences(kql, python) == ["s-1: UserAgent kql='Login:login' python='curl/8'"]


EXPONENT_FLOATS: list[Any] = [1e16, 1e20, 1e-7, 1.2345678901234568e29, 1.7976931348623157e308, {"a": 1e16}]
CONTROL_IN_JSON: list[Any] = [{"k": "\x1f"}, {"\x0b": 1}, ["\x1b"]]


@pytest.mark.xfail(strict=True, reason="known difference: DuckDB writes floats its own way (10000000000000000.0, "
                                       "1e-7) where json.dumps writes 1e+16, 1e-07")
@pytest.mark.parametrize("value", EXPONENT_FLOATS, ids=repr)
def test_floats_in_exponent_form_are_written_differently(value: Any) -> None:
    assert_lock_step([logon("float", ErrorCode=value)])


@pytest.mark.xfail(strict=True, reason="known difference: inside JSON text, DuckDB escapes a control character as "
                                       "\\u001F where json.dumps writes \\u001f")
@pytest.mark.parametrize("value", CONTROL_IN_JSON, ids=repr)
def test_control_characters_inside_json_text_are_escaped_differently(value: Any) -> None:
    assert_lock_step([logon("control", ErrorCode=value)])


def test_the_property_test_leaves_out_the_known_differences_only() -> None:
    assert all(_known_difference(v) for v in [*EXPONENT_FLOATS, *CONTROL_IN_JSON])
    assert not any(_known_difference(v) for v in VALUES)
    assert not _known_difference("\x1f") and not _known_difference({"k": "\x01\n\x7f\u2028"})


@pytest.mark.xfail(strict=True, reason="known difference: a null under DeviceTrustType is found in the map's "
                                       "JSON text, which includes nested objects")
def test_a_nested_device_trust_type_null_reads_as_the_maps_key() -> None:
    assert_lock_step([logon("nested", DeviceProperties=[{"Name": "OS", "Value": '{"DeviceTrustType":null}'}],
                            ExtendedProperties=[{"Name": "DeviceTrustType", "Value": "extended"}])])


@pytest.mark.xfail(strict=True, reason="known difference: the last key spelling in the record's text is a nested "
                                       "object's, so the record's own other-cased key is missed")
def test_a_nested_spelling_after_the_records_own_is_taken() -> None:
    record = {**lowered(logon("nested-after", ErrorCode=...)), "errorcode": "own", "zz": {"ErrorCode": "nested"}}
    assert_lock_step([record])


@pytest.mark.xfail(strict=True, reason="known difference: an exact key holding \"\" gives way to a later other-cased "
                                       "spelling (the builder keeps the \"\")")
def test_an_empty_exact_key_gives_way_to_another_spelling() -> None:
    record = {**lowered(logon("empty-exact", ErrorCode=...)), "ErrorCode": "", "ERRORCODE": "other"}
    assert_lock_step([record])


@pytest.mark.xfail(strict=True, reason="known difference: a record the sink must store as text (here an integer "
                                       "past 64 bits) has no fields left to read in AuditData")
def test_a_record_stored_as_text_loses_the_fields_read_from_it() -> None:
    assert_lock_step([logon("huge", ErrorCode=10**30, ApplicationId="app-x")])
