"""Derived tables: MailItemAccess, DirectoryChange and SignIn rows from sample and literal records."""

from __future__ import annotations

from typing import Any

import pytest

from function_app.lake.schema import DIRECTORY_CHANGE, MAIL_ITEM_ACCESS, SIGN_IN, TABLES_BY_NAME
from function_app.records.derived import (
    BUILDERS,
    build_directory_change,
    build_mail_item_access,
    build_sign_in,
)
from function_app.records.flatten import flatten_record

from ._samples import all_records, blob_context, load, require_samples

require_samples()

CTX = blob_context()


def rows_of(builder: Any, record: Any) -> list[dict[str, Any]]:
    """The builder's rows for *record*, checked against the table's columns and key."""
    table = {build_mail_item_access: MAIL_ITEM_ACCESS, build_directory_change: DIRECTORY_CHANGE,
             build_sign_in: SIGN_IN}[builder]
    rows = builder(record, flatten_record(record, CTX))
    for row in rows:
        assert tuple(row) == table.column_names
        assert all(row[k] is not None for k in table.key), row
    keys = [tuple(row[k] for k in table.key) for row in rows]
    assert len(keys) == len(set(keys)), "a record gave two rows with one key"
    return rows


def one(name: str, operation: str) -> dict[str, Any]:
    (record,) = [r for r in load(name) if r.get("Operation") == operation][:1]
    return record


# ---------------------------------------------------------------------------------------------
# MailItemAccess


def test_mail_items_accessed_bind_gives_one_row_per_message() -> None:
    record = one("elastic-integrations/test-exchange-access-event.json", "MailItemsAccessed")
    rows = rows_of(build_mail_item_access, record)
    assert len(rows) == 6
    first = rows[0]
    assert first["RecordId"] == "aaaaaaaa-bbbb-cccc-dddd-123456789012"
    assert first["FolderPath"] == "\\Sent Items"
    assert first["ItemKey"] == first["InternetMessageId"] == \
        "<AB8MB22NO1234B96EBDB1C9B62A14E87BF81EA@AB8MB22NO1234.example.prod.outlook.com>"
    assert first["ImmutableId"] == "CCCCCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDDDDDDEEEEEEEEEEEAAAgO3wRAAAJ"
    assert first["SizeInBytes"] == 14593
    assert first["MailAccessType"] == "Bind" and first["IsThrottled"] is None
    assert first["UserPrincipal"] == first["MailboxOwnerUPN"] == "user@example.com"
    # ClientIPAddress stands in for the missing ClientIP; the session comes from AppAccessContext.
    assert (first["ClientIP"], first["ClientIPKind"]) == ("203.0.113.145", "public")
    assert first["SessionId"] == "dddddddd-aaaa-eeee-dddd-123456789012"
    assert first["AppId"] == "7777777-6666-aaaa-bbbb-123456789012"
    assert first["LogonType"] == 0
    assert first["ClientInfoString"].startswith("Client=WebServices;")
    # A size delivered as 1352491.0 is the integer it denotes.
    assert rows[-1]["SizeInBytes"] == 1352491 and type(rows[-1]["SizeInBytes"]) is int


def test_other_mailbox_operations_give_no_mail_rows() -> None:
    record = one("elastic-integrations/test-exchange-access-event.json", "AttachmentAccess")
    assert rows_of(build_mail_item_access, record) == []


def mail(**fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "Id": "m-1", "RecordType": 50, "Operation": "MailItemsAccessed", "CreationTime": "2026-11-20T10:00:00",
        "UserId": "Mallory@Contoso.com", "MailboxOwnerUPN": "Alice@Contoso.com", "ClientIP": "[::ffff:20.1.2.3]:4431",
        "SessionId": "s-1", "Workload": "Exchange",
        "OperationProperties": [{"Name": "MailAccessType", "Value": "Sync"}, {"Name": "IsThrottled", "Value": "False"}],
    }
    record.update(fields)
    return record


def test_a_sync_folder_without_items_gets_one_folder_row() -> None:
    folders = [{"Id": "f1", "Path": "\\Inbox"}, {"Id": "f2", "Path": "\\Archive"}]
    rows = rows_of(build_mail_item_access, mail(Folders=folders))
    assert [(r["FolderPath"], r["ItemKey"]) for r in rows] == [("\\Inbox", ""), ("\\Archive", "")]
    assert all(r["MailAccessType"] == "Sync" and r["IsThrottled"] is False for r in rows)
    assert rows[0]["UserPrincipal"] == "mallory@contoso.com" and rows[0]["MailboxOwnerUPN"] == "alice@contoso.com"
    assert rows[0]["ClientIP"] == "20.1.2.3"


def test_a_throttled_record_without_folders_still_gets_a_row() -> None:
    record = mail(OperationProperties=[{"Name": "MailAccessType", "Value": "Bind"},
                                       {"Name": "IsThrottled", "Value": "True"}])
    (row,) = rows_of(build_mail_item_access, record)
    assert (row["FolderPath"], row["ItemKey"], row["IsThrottled"]) == ("", "", True)


def test_item_keys_fall_back_and_repeats_are_kept_once() -> None:
    items = [
        {"Id": "A1", "ImmutableId": "I1", "InternetMessageId": "<m1@x>", "SizeInBytes": "20"},
        {"Id": "A1", "ImmutableId": "I1", "InternetMessageId": "<m1@x>", "SizeInBytes": 20},
        {"Id": "A2", "ImmutableId": "I2"},
        {"Id": "A3", "SizeInBytes": 2**70},
        "not an item",
    ]
    rows = rows_of(build_mail_item_access, mail(Folders=[{"Path": "\\Inbox", "FolderItems": items}]))
    assert [r["ItemKey"] for r in rows] == ["<m1@x>", "I2", "A3"]
    assert rows[0]["SizeInBytes"] == 20
    assert rows[2]["SizeInBytes"] is None  # beyond a long: not a size


def test_messages_and_stringified_folders_are_read_too() -> None:
    record = mail(Folders='[{"Path": "\\\\Inbox", "FolderItems": [{"InternetMessageId": "<a@b>"}]}]',
                  Messages=[{"Path": "Messages", "MessageItems": [{"Id": "M1", "SizeInBytes": 5}]}])
    rows = rows_of(build_mail_item_access, record)
    assert [(r["FolderPath"], r["ItemKey"], r["SizeInBytes"]) for r in rows] == [
        ("\\Inbox", "<a@b>", None), ("Messages", "M1", 5)]


# ---------------------------------------------------------------------------------------------
# DirectoryChange


def test_update_application_entry_with_parsed_values_and_identities() -> None:
    (record,) = load("elastic-beats/08-azuread.line1.log")
    (row,) = rows_of(build_directory_change, record)  # the pseudo-entry is not a row
    assert row["Operation"] == "Update application."
    assert row["Property"] == "RequiredResourceAccess"
    assert isinstance(row["OldValue"], list) and isinstance(row["NewValue"], list)
    assert row["OldValue"][0]["ResourceAppId"] == "00000003-0000-0000-c000-000000000000"
    assert (row["Actor"], row["ActorType"], row["ActorId"]) == (
        "asr@testsiem.onmicrosoft.com", "User", "755e500a-6c03-46b0-b53b-282f23374e3b")
    assert (row["TargetId"], row["TargetName"], row["TargetType"]) == (
        "08d8bb01-c269-4a92-9929-a1a89b729512", "siem", "Application")
    # Same two resources in another order: nothing added, one permission set changed.
    assert len(row["OldItems"]) == len(row["NewItems"]) == 2
    assert len(row["AddedValues"]) == len(row["RemovedValues"]) == 1


def test_add_service_principal_lists_every_entry_but_the_summary() -> None:
    (record,) = load("elastic-beats/08-azuread-users.line1.log")
    rows = rows_of(build_directory_change, record)
    assert [r["Property"] for r in rows] == [
        "AccountEnabled", "AppAddress", "AppPrincipalId", "DisplayName", "ServicePrincipalName", "Credential",
        "TargetId.ServicePrincipalNames"]
    by = {r["Property"]: r for r in rows}
    assert by["AccountEnabled"]["OldValue"] == [] and by["AccountEnabled"]["NewValue"] == [True]
    assert by["AccountEnabled"]["AddedValues"] == ["true"]
    assert by["DisplayName"]["AddedValues"] == ["Microsoft Azure AD Identity Protection"]
    assert by["TargetId.ServicePrincipalNames"]["OldValue"] == ""
    assert by["TargetId.ServicePrincipalNames"]["AddedValues"] is None  # not lists
    first = rows[0]
    assert (first["Actor"], first["ActorType"]) == ("Microsoft Azure AD Internal - Jit Provisioning", "Other")
    assert (first["TargetId"], first["TargetName"], first["TargetType"]) == (
        "9d47c163-bf1f-45c5-9b7e-b7b5e88cf451", "Microsoft Azure AD Identity Protection", "ServicePrincipal")


def test_mfa_method_added_and_removed_by_a_service_principal() -> None:
    added, removed = [r for r in load("panther/panther_microsoft365_test_logs.jsonl")
                      if r.get("Operation") == "Update user."]
    add_row = next(r for r in rows_of(build_directory_change, added) if r["Property"] == "StrongAuthenticationMethod")
    remove_row = next(r for r in rows_of(build_directory_change, removed)
                      if r["Property"] == "StrongAuthenticationMethod")
    assert add_row["NewValue"] == [{"Default": True, "MethodType": 7}]
    assert add_row["AddedValues"] == ['{"Default":true,"MethodType":7}'] and add_row["RemovedValues"] == []
    assert remove_row["RemovedValues"] == ['{"Default":true,"MethodType":7}'] and remove_row["AddedValues"] == []
    assert (add_row["Actor"], add_row["ActorType"]) == ("Azure MFA StrongAuthenticationService", "ServicePrincipal")
    assert (add_row["TargetName"], add_row["TargetType"]) == ("sample.user@yourorg.onmicrosoft.com", "User")


def entra(props: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "Id": "d-1", "RecordType": 8, "Operation": "Update user.", "CreationTime": "2026-11-20T10:00:00",
        "UserId": "Admin@Contoso.com", "Workload": "AzureActiveDirectory",
        "Actor": [{"ID": "Admin@Contoso.com", "Type": 5}, {"ID": "User_0a0a", "Type": 2}, {"ID": "User", "Type": 2}],
        "Target": [{"ID": "User_1b1b", "Type": 2}, {"ID": "User", "Type": 2}, {"ID": "Bob@Contoso.com", "Type": 5}],
        "ModifiedProperties": props,
    }
    record.update(fields)
    return record


E3 = "[SkuName=ENTERPRISEPACK, AccountId=t1, SkuId=6fd2c87f-b296-42f0-b197-1e91e994b900, DisabledPlans=[]]"
EMS = "[SkuName=EMS, AccountId=t1, SkuId=efccb6f7-5641-4e0e-bd10-b4976e1bf68e, DisabledPlans=[]]"


def test_license_lists_are_compared_by_sku() -> None:
    old = '[\r\n  "' + E3 + '"\r\n]'
    new = '[\r\n  "' + EMS + '",\r\n  "' + E3.replace("DisabledPlans=[]", "DisabledPlans=[x]") + '"\r\n]'
    record = entra([{"Name": "AssignedLicense", "OldValue": old, "NewValue": new},
                    {"Name": "Included Updated Properties", "OldValue": "", "NewValue": "AssignedLicense"}])
    (row,) = rows_of(build_directory_change, record)
    assert row["OldValue"] == [E3]
    assert row["OldItems"] == ["ENTERPRISEPACK"] and row["NewItems"] == ["EMS", "ENTERPRISEPACK"]
    assert row["AddedValues"] == ["EMS"] and row["RemovedValues"] == []
    assert (row["Actor"], row["ActorType"], row["ActorId"]) == ("admin@contoso.com", "User", "0a0a")
    assert (row["TargetName"], row["TargetType"], row["TargetId"]) == ("bob@contoso.com", "User", "1b1b")


def test_license_objects_and_a_removed_license() -> None:
    record = entra([{"Name": "AssignedLicense",
                     "OldValue": '[{"SkuId": "6fd2c87f-b296-42f0-b197-1e91e994b900", "DisabledPlans": []}]',
                     "NewValue": "[]"}])
    (row,) = rows_of(build_directory_change, record)
    assert row["RemovedValues"] == ["6fd2c87f-b296-42f0-b197-1e91e994b900"] and row["AddedValues"] == []


def test_a_value_cut_off_by_the_service_is_kept_and_not_compared() -> None:
    record = entra([{"Name": "AssignedLicense", "OldValue": "[]", "NewValue": '[\r\n  "' + E3[:40] + "..."}])
    (row,) = rows_of(build_directory_change, record)
    assert row["NewValue"].endswith("...")
    assert row["OldItems"] == [] and row["NewItems"] is None and row["AddedValues"] is None


def test_a_property_named_only_in_the_summary_is_still_listed() -> None:
    record = entra([{"Name": "Department", "OldValue": '["Sales"]', "NewValue": '["Legal"]'},
                    {"Name": "Included Updated Properties", "OldValue": "",
                     "NewValue": "Department, AssignedLicense, AssignedLicense"}])
    rows = rows_of(build_directory_change, record)
    assert [(r["Property"], r["OldValue"], r["NewValue"]) for r in rows] == [
        ("Department", ["Sales"], ["Legal"]), ("AssignedLicense", None, None)]
    assert rows[0]["AddedValues"] == ["Legal"] and rows[0]["RemovedValues"] == ["Sales"]


def test_a_repeated_property_becomes_one_row_with_each_value() -> None:
    record = entra([{"Name": "Department", "OldValue": "", "NewValue": "a"},
                    {"Name": "Department", "OldValue": "", "NewValue": "b"}])
    (row,) = rows_of(build_directory_change, record)
    assert row["OldValue"] == ["", ""] and row["NewValue"] == ["a", "b"]


def test_records_without_changes_or_of_other_types_give_no_rows() -> None:
    assert rows_of(build_directory_change, entra([])) == []
    assert rows_of(build_directory_change, entra([{"Name": "X", "NewValue": "1"}], RecordType=15)) == []
    # Exchange mailbox records carry ModifiedProperties as plain names.
    assert rows_of(build_directory_change, entra(["Subject", "Body"])) == []


# ---------------------------------------------------------------------------------------------
# SignIn


def test_sts_logons_from_the_samples() -> None:
    records = load("elastic-beats/15-azuread-sts-logon.selected-lines.log")
    rows = [row for r in records for row in rows_of(build_sign_in, r)]
    assert len(rows) == 4
    first = rows[0]
    assert first["Operation"] == "UserLoggedIn"
    assert first["UserPrincipal"] == "asr@testsiem.onmicrosoft.com"
    assert (first["ClientIP"], first["ClientIPKind"]) == ("83.57.233.151", "public")
    assert first["ApplicationId"] == "4345a7b9-9a63-4910-a426-35363201d503"
    assert first["UserAgent"].startswith("Mozilla/5.0 (Macintosh")
    assert (first["AuthMethod"], first["RequestType"], first["ResultStatusDetail"]) == (
        "9", "OAuth2:Authorize", "Success")
    assert first["ErrorCode"] is None and first["LogonError"] is None
    assert rows[1]["ResultStatusDetail"] == "Redirect"


def test_a_failed_logon_carries_its_error() -> None:
    record = one("panther/panther_microsoft365_test_logs.jsonl", "UserLoginFailed")
    (row,) = rows_of(build_sign_in, record)
    assert row["LogonError"] == "InvalidUserNameOrPassword"
    assert row["RequestType"] == "Login:login"


def test_account_logons_map_login_status_and_login_error() -> None:
    record = next(r for r in load("msdocs/msdocs_example_records.jsonl") if r.get("ResultStatus") == "failed")
    (row,) = rows_of(build_sign_in, record)
    assert row["ErrorCode"] == "-2147217390"
    assert row["LogonError"].startswith("-2147217390;PP_E_BAD_PASSWORD")


DEVICE_LOGON: dict[str, Any] = {
    "Id": "s-1", "RecordType": 15, "Operation": "UserLoginFailed", "CreationTime": "2026-11-20T10:00:00",
    "UserId": "Bob@Contoso.com", "ClientIP": "20.1.2.3", "ApplicationId": "app-1", "ErrorCode": 50126,
    "LogonError": "InvalidUserNameOrPassword",
    "ExtendedProperties": [{"Name": "UserAgent", "Value": "curl/8"},
                           {"Name": "RequestType", "Value": "Login:login"}],
    "DeviceProperties": [{"Name": "OS", "Value": "Windows"}, {"Name": "BrowserType", "Value": "Edge"},
                         {"Name": "TrustType", "Value": "1"}, {"Name": "SessionId", "Value": "sess-9"}],
}
"""A failed STS logon with device properties and a numeric error code (the SignIn KQL's lock-step uses it too)."""


def test_device_properties_and_numeric_error_codes() -> None:
    record = DEVICE_LOGON
    (row,) = rows_of(build_sign_in, record)
    assert (row["ErrorCode"], row["DeviceTrustType"], row["DeviceOS"], row["BrowserType"], row["SessionId"]) == (
        "50126", "1", "Windows", "Edge", "sess-9")


def test_other_records_give_no_sign_in_rows() -> None:
    assert rows_of(build_sign_in, entra([])) == []


# ---------------------------------------------------------------------------------------------
# every sample


@pytest.mark.parametrize(("table", "builder"), BUILDERS)
def test_every_sample_record_gives_well_formed_rows(table: str, builder: Any) -> None:
    assert table in TABLES_BY_NAME
    produced = 0
    for _, record in all_records():
        produced += len(rows_of(builder, record))
    assert produced > 0
