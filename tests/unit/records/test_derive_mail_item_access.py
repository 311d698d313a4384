"""MailItemAccess's KQL body (function_app.lake.derived_mail_item_access) in lock-step with
build_mail_item_access: samples, the literal records of the builder's tests, hostile shapes."""

from __future__ import annotations

from typing import Any

import pytest

from function_app.lake.derived_mail_item_access import BODY, TABLE
from function_app.records.derived import build_mail_item_access

from ._derive_harness import comparable, kql_rows, python_rows
from ._samples import all_records, load, require_samples
from .test_records_derived import mail

require_samples()


def same(records: list[Any]) -> None:
    kql = comparable(TABLE, kql_rows(TABLE, BODY, records))
    py = comparable(TABLE, python_rows(build_mail_item_access, records))
    assert kql == py


def test_every_sample_record() -> None:
    records = [r for _, r in all_records()]
    assert python_rows(build_mail_item_access, records)  # the corpus has mail rows to compare
    same(records)


def _folder(items: Any, path: Any = "\\Inbox") -> dict[str, Any]:
    return {"Path": path, "FolderItems": items}


LITERALS = [
    [r for r in load("elastic-integrations/test-exchange-access-event.json")],
    [mail(Folders=[{"Id": "f1", "Path": "\\Inbox"}, {"Id": "f2", "Path": "\\Archive"}])],
    [mail(OperationProperties=[{"Name": "MailAccessType", "Value": "Bind"}, {"Name": "IsThrottled", "Value": "True"}])],
    [mail(Folders=[_folder([
        {"Id": "A1", "ImmutableId": "I1", "InternetMessageId": "<m1@x>", "SizeInBytes": "20"},
        {"Id": "A1", "ImmutableId": "I1", "InternetMessageId": "<m1@x>", "SizeInBytes": 20},
        {"Id": "A2", "ImmutableId": "I2"}, {"Id": "A3", "SizeInBytes": 2**63 - 1}, "not an item"])])],
    [mail(Folders='[{"Path": "\\\\Inbox", "FolderItems": [{"InternetMessageId": "<a@b>"}]}]',
          Messages=[{"Path": "Messages", "MessageItems": [{"Id": "M1", "SizeInBytes": 5}]}])],
]


@pytest.mark.parametrize("records", LITERALS)
def test_the_builder_tests_records(records: list[Any]) -> None:
    same(records)


def _sized(size: Any) -> dict[str, Any]:
    return mail(Folders=[_folder([{"Id": "A", "SizeInBytes": size}])])


HOSTILE: dict[str, dict[str, Any]] = {
    "no folders": mail(),
    "folders null": mail(Folders=None),
    "folders a number": mail(Folders=7),
    "folders an object": mail(Folders={"Path": "x", "FolderItems": [{"Id": "a"}]}),
    "folders text not json": mail(Folders="Inbox"),
    "folders json text with blanks": mail(Folders='  [{"Path": "p", "FolderItems": "[{\\"Id\\": \\"a\\"}]"}]'),
    "folders empty": mail(Folders=[]),
    "folders without objects": mail(Folders=[1, "x", None, []]),
    "folders mixed": mail(Folders=[1, {"Path": "\\A"}, "x", {"Path": "\\B", "FolderItems": [2, {"Id": "b"}]}]),
    "items not a list": mail(Folders=[_folder(5), _folder({"Id": "x"}, "\\B"), _folder(None, "\\C")]),
    "items without objects": mail(Folders=[_folder([1, "a", None])]),
    "folder row and keyless item": mail(Folders=[_folder([]), _folder([{"SizeInBytes": 3}])]),
    "keyless item then folder row": mail(Folders=[_folder([{"SizeInBytes": 3}]), _folder([])]),
    "path not a string": mail(Folders=[_folder([{"Id": "a"}], 5), _folder([{"Id": "b"}], None),
                                       _folder([{"Id": "c"}], ["x"]), {"FolderItems": [{"Id": "d"}]}]),
    "ids not strings": mail(Folders=[_folder([{"Id": 5, "ImmutableId": True, "InternetMessageId": None},
                                              {"Id": "", "ImmutableId": "", "InternetMessageId": ""},
                                              {"Id": ["x"], "InternetMessageId": {"a": 1}}])]),
    "messages and folders keys swapped": mail(Folders=[{"Path": "a", "MessageItems": [{"Id": "x"}]}],
                                              Messages=[{"Path": "b", "FolderItems": [{"Id": "y"}]}]),
    "same key in two containers": mail(Folders=[_folder([{"Id": "a", "SizeInBytes": 1}])],
                                       Messages=[_folder([{"Id": "a", "SizeInBytes": 2}])]),
    "unicode": mail(Folders=[_folder([{"Id": "é😀\u202e", "InternetMessageId": "<ü@ß>"}], "\\Posteingang ✉")],
                    MailboxOwnerUPN="ÄLICE@Contoso.com", ClientInfoString="Client=Ω"),
    "owner placeholder": mail(MailboxOwnerUPN=" N/A "),
    "owner blanks": mail(MailboxOwnerUPN="\u3000Bob@X.com\xa0"),
    "owner not a string": mail(MailboxOwnerUPN=["a@b"]),
    "owner null": mail(MailboxOwnerUPN=None),
    "client info not a string": mail(ClientInfoString={"a": [1, "é"]}, LogonType="  2 "),
    "logon type float": mail(LogonType=1.0),
    "logon type too big": mail(LogonType=2**31),
    "logon type text float": mail(LogonType="3.5"),
    "logon type bool": mail(LogonType=True),
    "logon type min": mail(LogonType="-2147483648"),
    "throttled bool": mail(OperationProperties=[{"Name": "IsThrottled", "Value": True}]),
    "throttled text": mail(OperationProperties=[{"Name": "IsThrottled", "Value": " TRUE "}]),
    "throttled other": mail(OperationProperties=[{"Name": "IsThrottled", "Value": "yes"}]),
    "throttled number": mail(OperationProperties=[{"Name": "IsThrottled", "Value": 1}]),
    "operation properties text": mail(OperationProperties='[{"Name": "MailAccessType", "Value": "Bind"}]'),
    "operation properties cmdlet": mail(OperationProperties='-MailAccessType "Bind" -IsThrottled "True"'),
    "operation properties duplicated": mail(OperationProperties=[{"Name": "MailAccessType", "Value": "Bind"},
                                                                 {"Name": "MailAccessType", "Value": "Sync"}]),
    "operation properties plain list": mail(OperationProperties=["MailAccessType"]),
    "size text": _sized(" 20 "),
    "size exponent text": _sized("1e3"),
    "size plus": _sized("+7"),
    "size hex": _sized("0x10"),
    "size underscore": _sized("1_000"),
    "size arabic digit": _sized("\u0663"),
    "size fraction": _sized(1.5),
    "size integral float": _sized(1352491.0),
    "size bool": _sized(False),
    "size long max": _sized(2**63 - 1),
    "size long min": _sized(-(2**63)),
    "size past long": _sized(2**63),
    "size past long text": _sized("9223372036854775808"),
    "size long max text": _sized("9223372036854775807"),
    "size long min text": _sized("-9223372036854775808"),
    "size past double precision": _sized(2**53 + 1),
    "size past double precision text": _sized("9007199254740993"),
    "size exponent past long": _sized("1e19"),
    "size long text 33": _sized("0" * 32 + "5"),
    "size long text 32": _sized("0" * 31 + "5"),
    "size inf": _sized("inf"),
    "size huge": _sized(2**70),
}


@pytest.mark.parametrize("record", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_shapes(record: dict[str, Any]) -> None:
    same([record])


def test_keys_in_another_case() -> None:
    lowered = {k.lower(): v for k, v in mail(Folders=[_folder([{"Id": "a"}])], LogonType=2).items()}
    upper = {**mail(Id="m-2"), "FOLDERS": [_folder([{"Id": "b"}])], "MailboxOwnerUPN": None, "mailboxOwnerUpn": "X@Y",
             "CreationTime": None, "creationtime": "2026-11-20T10:00:00"}
    same([lowered, upper])


def test_other_operations_give_no_rows() -> None:
    record = {**mail(Folders=[_folder([{"Id": "a"}])]), "Operation": "mailitemsaccessed"}
    assert kql_rows(TABLE, BODY, [record]) == []


def test_the_body_is_one_step_a_line_from_the_staging_table() -> None:
    # ADX scripts are cut into commands at blank lines; the policy reads the staging rows with an Id.
    # (tests/contract/test_kql_parse.py type-checks the rendered policy against MailItemAccess's columns.)
    assert "\n\n" not in BODY and BODY.splitlines()[:2] == ["AuditIngest", "| where isnotempty(Id)"]
