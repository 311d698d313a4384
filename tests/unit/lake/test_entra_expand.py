"""Entra envelopes into the local lake through the KQL expansion ADX runs (entra_expand).

The envelopes are written here after the documented shapes: the diagnostic-settings record
(Entra's Azure Monitor sign-in log schema: top-level time/category/callerIpAddress/..., the
sign-in under ``properties``) and Graph ``signIn`` (beta) / ``directoryAudit`` resources wrapped
into the same envelope by the poller.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from auditlake.lake.duckdb_lake import LocalLake
from auditlake.lake.entra_expand import write_envelopes
from function_app.lake.entra_schema import ENTRA_TABLE_NAMES
from function_app.records.normalise import normalise_ip

TENANT = "72f988bf-0000-4000-8000-000000000001"


def envelope(category: str, properties: Any, **top: Any) -> dict[str, Any]:
    return {"time": "2026-11-20T08:00:01.1234567Z", "resourceId": f"/tenants/{TENANT}/providers/Microsoft.aadiam",
            "operationName": "Sign-in activity", "operationVersion": "1.0", "category": category,
            "tenantId": TENANT, "resultType": "0", "resultSignature": "None", "durationMs": 0, "Level": 4,
            "location": "NL", "properties": properties, **top}


# Diagnostic-settings interactive sign-in: callerIpAddress on top, the sign-in under properties.
INTERACTIVE = envelope("SignInLogs", {
    "id": "0c1c7a2e-1111-4c3b-9a55-000000000001", "createdDateTime": "2026-11-20T08:00:01.1234567+00:00",
    "userDisplayName": "Ana Diaz", "userPrincipalName": "Ana.Diaz@Contoso.example", "userId": "u-1",
    "appId": "c44b4083-3bb0-49c1-b47d-974e53cbdf3c", "appDisplayName": "Azure Portal", "ipAddress": "203.0.113.9",
    "status": {"errorCode": 50140, "failureReason": "Keep me signed in interrupt"}, "clientAppUsed": "Browser",
    "deviceDetail": {"operatingSystem": "Windows 10", "browser": "Edge 130"},
    "location": {"city": "Utrecht", "state": "Utrecht", "countryOrRegion": "NL",
                 "geoCoordinates": {"latitude": 52.09, "longitude": 5.12}},
    "appliedConditionalAccessPolicies": [{"id": "p-1", "displayName": "MFA", "result": "notApplied"}],
    "conditionalAccessStatus": "notApplied", "isInteractive": True, "riskEventTypes_v2": [],
    "processingTimeInMilliseconds": 87, "autonomousSystemNumber": 64500, "userType": "Member",
}, callerIpAddress="203.0.113.9", correlationId="corr-1", identity="Ana Diaz", resultType="50140")

# Graph beta signIn of a non-interactive user sign-in, wrapped by the poller (no callerIpAddress).
NON_INTERACTIVE = envelope("NonInteractiveUserSignInLogs", {
    "id": "0c1c7a2e-2222-4c3b-9a55-000000000002", "createdDateTime": "2026-11-20T08:05:00Z",
    "userPrincipalName": "bob@contoso.example", "ipAddress": "[2001:DB8::7]:443", "isInteractive": False,
    "signInEventTypes": ["nonInteractiveUser"], "status": {"errorCode": 0},
    "location": {"city": "Oslo", "countryOrRegion": "NO"}, "deviceDetail": {"operatingSystem": "iOS"},
    "mfaDetail": {"authMethod": "PhoneAppNotification"}, "appliedConditionalAccessPolicies": [],
    "correlationId": "corr-2",
}, time="2026-11-20T08:05:00Z", location=None, correlationId=None)

SERVICE_PRINCIPAL = envelope("ServicePrincipalSignInLogs", {
    "id": "0c1c7a2e-3333-4c3b-9a55-000000000003", "createdDateTime": "2026-11-20T08:06:00Z",
    "appId": "a-3", "servicePrincipalId": "8C907101-5831-45A1-B703-8A59F190E639",
    "servicePrincipalName": "deploy-bot", "servicePrincipalCredentialKeyId": "5d4f4b8a-cred-key",
    "servicePrincipalCredentialThumbprint": "", "ipAddress": "::ffff:198.51.100.4",
    "resourceDisplayName": "Microsoft Graph", "resourceId": "00000003-0000-0000-c000-000000000000",
    "location": {"city": "Dublin", "countryOrRegion": "IE"}, "status": {"errorCode": 0},
    "signInEventTypes": ["servicePrincipal"],
})

MANAGED_IDENTITY = envelope("ManagedIdentitySignInLogs", {
    "id": "0c1c7a2e-4444-4c3b-9a55-000000000004", "createdDateTime": "2026-11-20T08:07:00Z",
    "appId": "a-4", "servicePrincipalId": "0D5B8C3A-0000-4000-8000-0000000000AA", "servicePrincipalName": "vm-01",
    "managedServiceIdentity": {"msiType": "systemAssigned",
                               "associatedResourceId": "/subscriptions/s/resourceGroups/rg/providers/"
                                                       "Microsoft.Compute/virtualMachines/vm-01"},
    "resourceDisplayName": "Azure Key Vault", "status": {"errorCode": 0}, "signInEventTypes": ["managedIdentity"],
})

# Graph directoryAudit initiated by an app (no user), wrapped by the poller.
AUDIT_BY_APP = envelope("AuditLogs", {
    "id": "Directory_e5bbd943-0000-4000-8000-000000000005", "category": "ApplicationManagement",
    "correlationId": "corr-5", "result": "success", "resultReason": "", "activityDisplayName": "Add service principal",
    "activityDateTime": "2026-11-20T08:08:00Z", "loggedByService": "Core Directory", "operationType": "Add",
    "initiatedBy": {"user": None, "app": {"appId": "a-3", "displayName": "deploy-bot",
                                          "servicePrincipalId": "8C907101-5831-45A1-B703-8A59F190E639",
                                          "servicePrincipalName": "deploy-bot"}},
    "targetResources": [{"id": "t-1", "displayName": "new-sp", "type": "ServicePrincipal", "modifiedProperties": []}],
    "additionalDetails": [{"key": "User-Agent", "value": "python-requests"}],
}, operationName="Add service principal", time=None, callerIpAddress="192.0.2.10")

ALL = [INTERACTIVE, NON_INTERACTIVE, SERVICE_PRINCIPAL, MANAGED_IDENTITY, AUDIT_BY_APP]


@pytest.fixture
def lake(tmp_path: Path) -> LocalLake:
    return LocalLake(tmp_path / "l.duckdb")


def rows(lake: LocalLake, table: str) -> list[dict[str, Any]]:
    with lake.locked() as con:
        cursor = con.execute(f'SELECT * FROM "{table}" ORDER BY "Id"')
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]


def write(lake: LocalLake, envelopes: list[dict[str, Any]]) -> dict[str, int]:
    with lake.locked() as con:
        return write_envelopes(con, envelopes)


def test_each_kind_lands_in_its_table_with_sentinels_values(lake: LocalLake) -> None:
    assert write(lake, ALL) == dict.fromkeys(ENTRA_TABLE_NAMES, 1)

    [signin] = rows(lake, "SigninLogs")
    assert signin["Id"] == INTERACTIVE["properties"]["id"] and signin["AuditLakeFlag"] == ""
    assert signin["TimeGenerated"].isoformat() == "2026-11-20T08:00:01.123456"
    assert json.loads(signin["LocationDetails"])["city"] == "Utrecht"       # dynamic: a JSON object
    assert json.loads(signin["Status"]) == {"errorCode": 50140, "failureReason": "Keep me signed in interrupt"}
    assert json.loads(signin["ConditionalAccessPolicies"])[0]["displayName"] == "MFA"
    assert (signin["ResultType"], signin["IsInteractive"], signin["Level"]) == ("50140", True, "4")
    assert (signin["UserPrincipal"], signin["ClientIP"], signin["IPAddress"]) == \
        ("ana.diaz@contoso.example", "203.0.113.9", "203.0.113.9")
    assert (signin["ProcessingTimeInMilliseconds"], signin["AutonomousSystemNumber"]) == ("87", "64500")
    assert (signin["Resource"], signin["Type"], signin["AADTenantId"]) == ("Microsoft.aadiam", "SigninLogs", TENANT)
    assert json.loads(signin["RawRecord"]) == INTERACTIVE

    [quiet] = rows(lake, "AADNonInteractiveUserSignInLogs")
    # The same attribute is a string column here, as Sentinel types it: the object as JSON text.
    assert isinstance(quiet["LocationDetails"], str) and json.loads(quiet["LocationDetails"])["city"] == "Oslo"
    assert json.loads(quiet["DeviceDetail"]) == {"operatingSystem": "iOS"}
    assert (quiet["ClientIP"], quiet["IPAddress"]) == ("2001:db8::7", "[2001:DB8::7]:443")
    assert json.loads(quiet["SignInEventTypes"]) == ["nonInteractiveUser"]
    # Graph wraps carry no top-level location or correlation id: taken from the resource.
    assert (quiet["Location"], quiet["CorrelationId"], quiet["ResultType"]) == ("NO", "corr-2", "0")

    [sp] = rows(lake, "AADServicePrincipalSignInLogs")
    assert sp["ServicePrincipalCredentialKeyId"] == "5d4f4b8a-cred-key"
    assert (sp["PrincipalId"], sp["ClientIP"]) == ("8c907101-5831-45a1-b703-8a59f190e639", "198.51.100.4")
    assert sp["ResourceIdentity"] == "00000003-0000-0000-c000-000000000000"
    assert json.loads(sp["LocationDetails"])["city"] == "Dublin"

    [mi] = rows(lake, "AADManagedIdentitySignInLogs")
    assert (mi["PrincipalId"], mi["ServicePrincipalName"]) == ("0d5b8c3a-0000-4000-8000-0000000000aa", "vm-01")
    assert json.loads(mi["RawRecord"])["properties"]["managedServiceIdentity"]["msiType"] == "systemAssigned"

    [audit] = rows(lake, "AuditLogs")
    assert (audit["Category"], audit["ActivityDisplayName"], audit["AADOperationType"], audit["Result"]) == \
        ("ApplicationManagement", "Add service principal", "Add", "success")
    assert (audit["UserPrincipal"], audit["PrincipalId"]) == ("", "8c907101-5831-45a1-b703-8a59f190e639")
    assert json.loads(audit["InitiatedBy"])["app"]["displayName"] == "deploy-bot"
    assert json.loads(audit["TargetResources"])[0]["type"] == "ServicePrincipal"
    # No envelope time: the activity's own time; the caller address from the envelope.
    assert audit["TimeGenerated"].isoformat() == "2026-11-20T08:08:00" and audit["AuditLakeFlag"] == ""
    assert audit["ClientIP"] == "192.0.2.10"


def test_a_redelivery_inserts_nothing(lake: LocalLake) -> None:
    write(lake, ALL)
    before = {t: rows(lake, t) for t in ENTRA_TABLE_NAMES}
    assert write(lake, [*ALL, INTERACTIVE]) == dict.fromkeys(ENTRA_TABLE_NAMES, 0)
    assert {t: rows(lake, t) for t in ENTRA_TABLE_NAMES} == before


def test_a_malformed_record_is_kept_and_flagged(lake: LocalLake) -> None:
    broken = {"category": "ServicePrincipalSignInLogs", "properties": "not an object", "time": "yesterday",
              "callerIpAddress": "localhost:8080"}
    assert write(lake, [broken])["AADServicePrincipalSignInLogs"] == 1
    [row] = rows(lake, "AADServicePrincipalSignInLogs")
    assert row["AuditLakeFlag"] == "no id; properties is not an object; no time"
    assert row["Id"].startswith("x-") and len(row["Id"]) == 42
    assert (row["TimeGenerated"], row["ClientIP"], row["IPAddress"]) == (None, "", "localhost:8080")
    assert json.loads(row["RawRecord"]) == broken
    # Its surrogate id is stable, so it too is written once.
    assert write(lake, [broken])["AADServicePrincipalSignInLogs"] == 0
    other = {**broken, "callerIpAddress": "localhost:8081"}
    assert write(lake, [other])["AADServicePrincipalSignInLogs"] == 1


def test_an_envelope_that_cannot_be_routed_refuses_the_batch(lake: LocalLake) -> None:
    with pytest.raises(ValueError, match=r"^envelope 1: category 'ProvisioningLogs' is none of SignInLogs, "):
        write(lake, [INTERACTIVE, {**INTERACTIVE, "category": "ProvisioningLogs"}])
    with pytest.raises(ValueError, match=r"^envelope 0: a list, not a JSON object$"):
        write(lake, [[INTERACTIVE]])  # type: ignore[list-item]
    assert all(not rows(lake, t) for t in ENTRA_TABLE_NAMES)


ADDRESSES = ["203.0.113.9", "203.0.113.9:8080", "[203.0.113.9]:80", "[::ffff:10.0.0.1]:443", "::FFFF:8.8.8.8",
             "ffff:10.11.0.229", "2001:DB8::1", "[2001:db8::2]:443", "[fe80::1]", " 5.6.7.8 ", "localhost:80",
             "", "999.1.1.1", "01.2.3.4", "not an address", "1.2.3.4:99999"]


def test_client_ip_is_normalised_as_the_audit_records_is(lake: LocalLake) -> None:
    envelopes = [envelope("SignInLogs", {"id": f"ip-{i:02d}", "ipAddress": raw}) for i, raw in enumerate(ADDRESSES)]
    write(lake, envelopes)
    got = {r["Id"]: r["ClientIP"] for r in rows(lake, "SigninLogs")}
    assert got == {f"ip-{i:02d}": normalise_ip(raw).address for i, raw in enumerate(ADDRESSES)}
