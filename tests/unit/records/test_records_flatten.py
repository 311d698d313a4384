"""Flattening rules: columns, fallbacks, the key, Properties and Quality flags."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from function_app.lake.schema import AUDIT_RECORD
from function_app.records.flatten import (
    RECORD_TYPE_MISSING,
    flatten_blob,
    flatten_record,
    record_key,
)

from ._samples import blob_context, load, require_samples

require_samples()

CTX = blob_context()
TENANT = "b86ab9d4-fcf1-4b11-8a06-7a8f91b47fbd"


def flat(record: Any, ctx: Any = CTX) -> dict[str, Any]:
    row = flatten_record(record, ctx)
    assert tuple(row) == AUDIT_RECORD.column_names
    return row


def clean(**fields: Any) -> dict[str, Any]:
    """A minimal well-formed record, with ``fields`` added or replaced."""
    record: dict[str, Any] = {
        "Id": "5b3f2c1e-0000-4000-8000-000000000001",
        "RecordType": 15,
        "CreationTime": "2026-11-20T10:00:00",
        "Operation": "UserLoggedIn",
        "OrganizationId": TENANT,
        "UserType": 0,
        "UserKey": "10032000AAAAAAAA",
        "Workload": "AzureActiveDirectory",
        "ResultStatus": "Succeeded",
        "UserId": "Alice@Contoso.com",
        "ClientIP": "20.1.2.3",
        "ObjectId": "00000003-0000-0000-c000-000000000000",
    }
    record.update(fields)
    return record


# ---------------------------------------------------------------------------------------------
# Common columns


def test_clean_record() -> None:
    row = flat(clean(), blob_context(TENANT))
    assert row["Quality"] == []
    assert row["TimeGenerated"] == datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    assert row["RecordTypeName"] == "AzureActiveDirectoryStsLogon"
    assert row["UserPrincipal"] == "alice@contoso.com"
    assert row["UserId"] == "Alice@Contoso.com"
    assert row["UserTypeName"] == "Regular"
    assert (row["ClientIP"], row["ClientPort"], row["ClientIPRaw"], row["ClientIPKind"]) == (
        "20.1.2.3",
        None,
        "20.1.2.3",
        "public",
    )
    assert row["Properties"] == {}
    assert record_key(row) == ("5b3f2c1e-0000-4000-8000-000000000001", 15, "UserLoggedIn")


def test_client_ip_falls_back_to_client_ip_address_then_actor_ip_address() -> None:
    row = flat(clean(ClientIP=None, ClientIPAddress="[2603:10a6::1]:443", ActorIpAddress="9.9.9.9"))
    assert (row["ClientIP"], row["ClientPort"], row["ClientIPRaw"]) == ("2603:10a6::1", 443, "[2603:10a6::1]:443")
    row = flat(clean(ClientIP="", ActorIpAddress="9.9.9.9"))
    assert (row["ClientIP"], row["ClientIPRaw"]) == ("9.9.9.9", "9.9.9.9")
    row = flat(clean(ClientIP=""))
    assert (row["ClientIP"], row["ClientIPRaw"], row["ClientIPKind"]) == ("", "", "missing")
    row = flat({k: v for k, v in clean().items() if k != "ClientIP"})
    assert (row["ClientIPRaw"], row["ClientIPKind"]) == (None, "missing")
    assert row["Quality"] == []


def test_client_ip_quality_flags() -> None:
    assert flat(clean(ClientIP="localhost:123"))["Quality"] == ["ClientIP:invalid"]
    assert flat(clean(ClientIP=" 20.1.2.3"))["Quality"] == ["ClientIP:whitespace"]
    row = flat(clean(ClientIP=1234))
    assert row["ClientIPRaw"] == "1234"
    assert row["Quality"] == ["ClientIP:not-a-string"]


def test_bad_ips_fixture_prefers_client_ip_over_garbage_client_ip_address() -> None:
    for record in load("elastic-integrations/test-bad-ips.json"):
        row = flat(record)
        if record.get("ClientIP"):
            assert row["ClientIPRaw"] == record["ClientIP"]
            assert row["ClientIPKind"] == "public"


def test_app_id_and_session_id_fallbacks() -> None:
    context = {"ClientAppId": "app-from-context", "AADSessionId": "session-from-context"}
    row = flat(clean(AppAccessContext=context))
    assert (row["AppId"], row["SessionId"]) == ("app-from-context", "session-from-context")
    row = flat(clean(AppId="", ApplicationId="app-id", SessionId="s", AppAccessContext=context))
    assert (row["AppId"], row["SessionId"]) == ("app-id", "s")
    row = flat(clean(AppId="a", ApplicationId="b", AppAccessContext=[context]))
    assert (row["AppId"], row["SessionId"]) == ("a", "session-from-context")
    row = flat(clean(AppId="", AppAccessContext="not an object"))
    assert (row["AppId"], row["SessionId"]) == (None, None)


def test_sts_logon_application_id_from_the_corpus() -> None:
    for record in load("elastic-beats/str-params.log"):
        if record.get("ApplicationId"):
            assert flat(record)["AppId"] == record["ApplicationId"]


def test_missing_id_gets_a_deterministic_surrogate_independent_of_key_order() -> None:
    no_id = [r for r in load("elastic-integrations/test-bad-ips.json") if "Id" not in r]
    assert no_id, "corpus no longer has a record without Id"
    record = no_id[0]
    row = flat(record)
    assert row["Id"].startswith("x-") and len(row["Id"]) == 42
    assert "Id:missing" in row["Quality"]
    reordered = dict(reversed(list(record.items())))
    assert flat(reordered)["Id"] == row["Id"]
    assert flat({**record, "Operation": "Other"})["Id"] != row["Id"]


def test_key_is_never_null() -> None:
    row = flat({})
    assert row["Id"].startswith("x-")
    assert row["RecordType"] == RECORD_TYPE_MISSING
    assert row["Operation"] == ""
    assert set(row["Quality"]) >= {"Id:missing", "RecordType:missing", "Operation:missing", "CreationTime:missing"}


@pytest.mark.parametrize(
    ("raw", "value", "flags"),
    [
        ("20", 20, ["RecordType:string"]),
        (-1, -1, ["RecordType:unknown-value"]),
        ("x", RECORD_TYPE_MISSING, ["RecordType:unparseable"]),
        (True, RECORD_TYPE_MISSING, ["RecordType:unparseable"]),
        (None, RECORD_TYPE_MISSING, ["RecordType:missing"]),
    ],
)
def test_record_type_variants(raw: Any, value: int, flags: list[str]) -> None:
    row = flat(clean(RecordType=raw))
    assert row["RecordType"] == value
    assert row["Quality"] == flags


def test_numbery_fixture_record_type_and_user_type_as_strings() -> None:
    for record in load("elastic-integrations/test-numbery-json-events.extracted.jsonl"):
        row = flat(record)
        assert row["RecordType"] == 20 and row["RecordTypeName"] == "PowerBIAudit"
        assert ("RecordType:string" in row["Quality"]) == isinstance(record["RecordType"], str)
        if isinstance(record.get("UserType"), str):
            assert row["UserType"] == int(record["UserType"])
            assert "UserType:string" in row["Quality"]


def test_ip_formats_fixture_record_type_minus_one_is_kept() -> None:
    for record in load("elastic-beats/ip-formats.log"):
        row = flat(record)
        assert row["RecordType"] == -1
        assert "RecordType:unknown-value" in row["Quality"]


def test_non_string_values_in_string_columns_become_json_text() -> None:
    row = flat(clean(Id=7, Operation=["a"], Workload=5, ResultStatus=True, UserKey=None, ObjectId={"a": 1}))
    assert (row["Id"], row["Operation"], row["Workload"], row["ResultStatus"], row["ObjectId"]) == (
        "7",
        '["a"]',
        "5",
        "true",
        '{"a":1}',
    )
    assert set(row["Quality"]) == {
        "Id:not-a-string",
        "Operation:not-a-string",
        "Workload:not-a-string",
        "ResultStatus:not-a-string",
        "ObjectId:not-a-string",
    }


def test_creation_time_flags() -> None:
    assert flat(clean(CreationTime="2026-11-20 10:00:00"))["Quality"] == []
    row = flat(clean(CreationTime="tuesday"))
    assert row["TimeGenerated"] is None and row["Quality"] == ["CreationTime:unparseable"]
    assert flat(clean(CreationTime=""))["Quality"] == ["CreationTime:missing"]


def test_user_flags() -> None:
    row = flat(clean(UserId="Not Available"))
    assert (row["UserId"], row["UserPrincipal"], row["Quality"]) == ("Not Available", "", ["UserId:placeholder"])
    row = flat(clean(UserId="NT AUTHORITY\\SYSTEM (Microsoft.Exchange.ServiceHost)"))
    assert row["Quality"] == ["UserId:system-account"]
    assert row["UserPrincipal"] == "nt authority\\system (microsoft.exchange.servicehost)"


def test_organization_mismatch_is_flagged_only_when_the_tenant_is_known() -> None:
    other = clean(OrganizationId="11111111-2222-3333-4444-555555555555")
    assert flat(other, blob_context(TENANT))["Quality"] == ["OrganizationId:mismatch"]
    assert flat(other)["Quality"] == []
    upper = clean(OrganizationId=TENANT.upper())
    assert flat(upper, blob_context(TENANT))["Quality"] == []


def test_lower_cased_keys_are_read_case_insensitively() -> None:
    lowered = [r for r in load("panther/panther_microsoft365_test_logs.jsonl") if "id" in r and "Id" not in r]
    assert lowered, "corpus no longer has records with lower-cased keys"
    for record in lowered:
        row = flat(record)
        assert row["Id"] == record["id"]
        assert row["Operation"] == record["operation"]
        assert row["RecordType"] == record["recordtype"]
        assert row["TimeGenerated"] == datetime.fromisoformat(record["creationtime"]).replace(tzinfo=UTC)
        assert row["Properties"]["Parameters"] == {p["Name"]: p["Value"] for p in record["parameters"]}
        assert "keys:case-mismatch" in row["Quality"]


def test_non_object_records_still_give_a_row() -> None:
    for value in ([1, 2], "text", 3, None, 1.5, True):
        row = flat(value)
        assert row["AuditData"] is value
        assert row["Quality"] == ["record:not-an-object"]
        assert row["Id"].startswith("x-")
        assert row["RecordType"] == RECORD_TYPE_MISSING


def test_unserialisable_input_is_still_a_row() -> None:
    odd: dict[Any, Any] = {1: "int key", "Id": "a", (1, 2): object()}
    row = flat(odd)
    assert row["AuditData"] is odd
    assert row["Id"] == "a"


def test_flatten_blob_keeps_order() -> None:
    records = [clean(Id="a"), "junk", clean(Id="b")]
    assert [r["Id"] for r in flatten_blob(records, CTX)][::2] == ["a", "b"]


# ---------------------------------------------------------------------------------------------
# Properties


def test_parameters_become_a_map() -> None:
    row = flat(
        clean(
            Parameters=[
                {"Name": "Identity", "Value": "alice"},
                {"Name": "ForwardingSmtpAddress", "Value": "smtp:x@example.com"},
                {"Name": "DeliverToMailboxAndForward", "Value": "False"},
            ]
        )
    )
    assert row["Properties"] == {
        "Parameters": {
            "Identity": "alice",
            "ForwardingSmtpAddress": "smtp:x@example.com",
            "DeliverToMailboxAndForward": "False",
        }
    }
    assert row["Quality"] == []


def test_modified_properties_parse_json_values_and_list_included_properties() -> None:
    record = load("elastic-beats/08-azuread-users.line1.log")[0]
    props = flat(record)["Properties"]["ModifiedProperties"]
    entries = {e["Name"]: e for e in record["ModifiedProperties"]}
    assert props["AccountEnabled"] == {"NewValue": [True], "OldValue": []}
    assert isinstance(props["AppAddress"]["NewValue"], list)
    included = entries["Included Updated Properties"]["NewValue"]
    assert props["Included Updated Properties"] == [p.strip() for p in included.split(",")]
    assert props["TargetId.ServicePrincipalNames"]["NewValue"] == entries["TargetId.ServicePrincipalNames"]["NewValue"]


def test_extended_properties_json_values_are_parsed() -> None:
    record = load("elastic-beats/08-azuread.line1.log")[0]
    props = flat(record)["Properties"]["ExtendedProperties"]
    assert isinstance(props["additionalDetails"], dict)
    assert props["targetIncludedUpdatedProperties"] == ["RequiredResourceAccess"]
    assert props["nCloud"] == "<null>"


def test_stringified_operation_properties_from_the_corpus() -> None:
    record = load("elastic-beats/stringly-json.log")[0]
    row = flat(record)
    assert row["Properties"]["OperationProperties"] == {"SystemArtifactType": "None"}
    assert "OperationProperties:stringified" in row["Quality"]


def test_mail_items_accessed_operation_properties() -> None:
    rows = [flat(r) for r in load("elastic-integrations/test-exchange-access-event.json")]
    access_types = [r["Properties"].get("OperationProperties", {}).get("MailAccessType") for r in rows]
    assert "Bind" in access_types


def test_cmdlet_parameter_string_from_the_corpus() -> None:
    record = next(r for r in load("elastic-beats/str-params.log") if isinstance(r.get("Parameters"), str))
    row = flat(record)
    params = row["Properties"]["Parameters"]
    assert params["PageSize"] == "100"
    assert params["QuarantineTypes"] == ["Bulk", "Spam", "Phish"]
    assert "Parameters:cmdlet-string" in row["Quality"]


def test_cmdlet_parameter_string_literal() -> None:
    row = flat(clean(Parameters='-Identity "a b" -Force -Tags ("x, y", z) -Empty () -Count 5 -Identity "c"'))
    assert row["Properties"]["Parameters"] == {
        "Identity": ["a b", "c"],
        "Force": "True",
        "Tags": ["x, y", "z"],
        "Empty": [],
        "Count": "5",
    }
    assert row["Quality"] == ["Parameters:cmdlet-string", "duplicate-name:Parameters.Identity"]


def test_truncated_value_stays_a_string_and_is_flagged_with_its_path() -> None:
    cut = '[{"Default": true, "MethodType": 7}, {"Default": false, "Meth...'
    row = flat(clean(ModifiedProperties=[{"Name": "StrongAuthenticationMethod", "OldValue": "[]", "NewValue": cut}]))
    assert row["Properties"]["ModifiedProperties"]["StrongAuthenticationMethod"] == {"OldValue": [], "NewValue": cut}
    assert row["Quality"] == ["truncated:ModifiedProperties.StrongAuthenticationMethod.NewValue"]


def test_json_looking_text_that_is_not_json_is_flagged_not_json() -> None:
    row = flat(clean(ExtendedProperties=[{"Name": "Subject", "Value": "[EXTERNAL] hello"}]))
    assert row["Properties"]["ExtendedProperties"] == {"Subject": "[EXTERNAL] hello"}
    assert row["Quality"] == ["not-json:ExtendedProperties.Subject"]


def test_duplicate_names_keep_every_value() -> None:
    row = flat(
        clean(
            OperationProperties=[
                {"Name": "A", "Value": [1]},
                {"Name": "A", "Value": "2"},
                {"Name": "A", "Value": "3"},
                {"Name": "B", "Value": "b"},
            ]
        )
    )
    assert row["Properties"]["OperationProperties"] == {"A": [[1], "2", "3"], "B": "b"}
    assert row["Quality"] == ["duplicate-name:OperationProperties.A"]


def test_entries_without_a_name_are_kept() -> None:
    row = flat(clean(DeviceProperties=[{"Name": "OS", "Value": "Windows"}, {"Value": "orphan"}, "loose"]))
    assert row["Properties"]["DeviceProperties"] == {"OS": "Windows", "_unnamed": [{"Value": "orphan"}, "loose"]}
    assert row["Quality"] == ["DeviceProperties:unnamed-entry"]


def test_list_of_plain_names_stays_a_list() -> None:
    row = flat(clean(ModifiedProperties=["IsRead", "Subject"]))
    assert row["Properties"]["ModifiedProperties"] == ["IsRead", "Subject"]
    assert row["Quality"] == []


def test_unexpected_shapes_are_kept_and_flagged() -> None:
    row = flat(clean(Parameters={"Identity": "x"}, ExtendedProperties=5, OperationProperties="just text"))
    assert row["Properties"] == {
        "Parameters": {"Identity": "x"},
        "ExtendedProperties": 5,
        "OperationProperties": "just text",
    }
    assert set(row["Quality"]) == {
        "Parameters:unexpected-shape",
        "ExtendedProperties:unexpected-shape",
        "OperationProperties:unexpected-shape",
    }


def test_stringified_array_that_was_cut_off() -> None:
    row = flat(clean(OperationProperties='[{"Name":"A","Value":"1"},{"Name":"B","Va...'))
    assert row["Properties"]["OperationProperties"].endswith("...")
    assert row["Quality"] == ["truncated:OperationProperties"]


def test_entry_with_extra_keys_keeps_them() -> None:
    row = flat(clean(ExtendedProperties=[{"Name": "N", "Value": '{"a":1}', "Type": "String"}, {"Name": "Only"}]))
    assert row["Properties"]["ExtendedProperties"] == {"N": {"Value": {"a": 1}, "Type": "String"}, "Only": None}


def test_properties_never_alias_mutable_parts_it_changes() -> None:
    record = clean(Parameters=[{"Name": "A", "Value": ["x"]}, {"Name": "A", "Value": "y"}])
    flat(record)
    assert record["Parameters"][0]["Value"] == ["x"]


# ---------------------------------------------------------------------------------------------
# The Quality table


def test_every_flag_the_corpus_and_these_tests_produce_is_documented() -> None:
    from function_app.records import flatten as module

    from ._samples import all_records

    doc = module.__doc__ or ""
    crafted = [
        {},
        "junk",
        clean(Id=7, Operation=1, Workload=1, ResultStatus=1, UserKey=1, ObjectId=1, AppId=1, SessionId=2),
        clean(RecordType="x", UserType="1.0", CreationTime="?", UserId=" S-1-5-21-1-2 ", ClientIP=" ffff:1.2.3.4"),
        clean(RecordType=2.0, UserType=77, UserId="N/A", ClientIP="192.0.2.1"),
        clean(UserId="/o=ExchangeLabs/cn=x", ClientIP=[1]),
        {"id": "a", "creationtime": "2026-11-20", "recordtype": 1},
        clean(
            Parameters='-A "1" -A "2"',
            ExtendedProperties='[{"Name": "x", "Value": "[cut..."}]',
            ModifiedProperties=[{"Value": 1}],
            OperationProperties={"x": 1},
            DeviceProperties=[{"Name": "d", "Value": "{nope"}],
        ),
    ]
    flags = {f for _, r in all_records() for f in flat(r, blob_context(TENANT))["Quality"]}
    flags |= {f for r in crafted for f in flat(r, blob_context(TENANT))["Quality"]}
    enum_conditions = {"missing", "unparseable", "string", "float", "unknown-value"}
    for flag in flags:
        head, _, tail = flag.partition(":")
        documented = (
            flag in doc
            or (head in {"truncated", "not-json", "duplicate-name"} and f"{head}:<" in doc)
            or f"<Array>:{tail}" in doc
            or (head == "UserType" and tail in enum_conditions)
            or (tail == "not-a-string" and head in doc.rsplit("<Field>:not-a-string", 1)[1][:200])
        )
        assert documented, flag
    assert len(flags) >= 30
