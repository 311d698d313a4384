"""The synthetic tenant: determinism, schema, availability, re-delivery, quirks, truth, the incident."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest

from auditlake.emulator import FaultSpec, SyntheticTenant
from auditlake.emulator.faults import apply_blob_faults, cutoff_body
from auditlake.emulator.incident import record_key
from auditlake.emulator.synth import APP_SIGNUP
from function_app.core.model import CONTENT_TYPES
from tests.unit.emulator.helpers import NOW, TENANT

COMMON = ("Id", "RecordType", "CreationTime", "Operation", "OrganizationId", "UserType", "UserKey", "Workload",
          "UserId", "Version")
CREATION = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{7})?$")
RECORD_TYPES = {
    "Audit.AzureActiveDirectory": {8, 15},
    "Audit.Exchange": {1, 2, 3, 50},
    "Audit.SharePoint": {4, 6, 14},
    "Audit.General": {20, 25, 40, 261},
    "DLP.All": {11, 13},
}


@pytest.fixture(scope="module")
def tenant() -> SyntheticTenant:
    return SyntheticTenant.generate(TENANT, seed=7, now=NOW)


@pytest.fixture(scope="module")
def records(tenant: SyntheticTenant) -> list[tuple[Any, dict[str, Any]]]:
    """(blob, record) for every record the tenant serves, re-deliveries included."""
    return [(b, r) for b in tenant.blobs for r in orjson.loads(b.body)]


def parse_ct(value: str) -> datetime:
    return datetime.fromisoformat(value[:19]).replace(tzinfo=NOW.tzinfo)


def test_same_seed_same_blobs_other_seed_differs() -> None:
    a = SyntheticTenant.generate(TENANT, seed=3, now=NOW, records_per_day=300)
    b = SyntheticTenant.generate(TENANT, seed=3, now=NOW, records_per_day=300)
    c = SyntheticTenant.generate(TENANT, seed=4, now=NOW, records_per_day=300)
    assert [(x.content_id, x.content_created, x.body) for x in a.blobs] == [
        (x.content_id, x.content_created, x.body) for x in b.blobs
    ]
    assert a.incident == b.incident
    assert {x.content_id for x in a.blobs}.isdisjoint({x.content_id for x in c.blobs})


def test_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="scenario"):
        SyntheticTenant.generate(TENANT, seed=1, now=NOW, scenario="loud")
    with pytest.raises(ValueError):
        SyntheticTenant.generate("not-a-guid", seed=1, now=NOW)


def test_quiet_tenant_is_small_and_has_no_incident() -> None:
    quiet = SyntheticTenant.generate(TENANT, seed=1, now=NOW, records_per_day=100, scenario="quiet")
    assert quiet.incident is None
    assert quiet.blobs
    assert {b.content_type for b in quiet.blobs} == set(CONTENT_TYPES)


def test_blob_metadata(tenant: SyntheticTenant) -> None:
    ids = [b.content_id for b in tenant.blobs]
    assert len(ids) == len(set(ids))
    for b in tenant.blobs:
        assert b.content_id.count("$") >= 3
        assert b.content_expiration - b.content_created == timedelta(days=7)
        assert b.content_created.microsecond % 1000 == 0
        assert b.record_keys
    assert any(b.content_created > NOW for b in tenant.blobs), "blobs that become available later exist"
    assert {b.content_type for b in tenant.blobs} == set(CONTENT_TYPES)


def test_records_follow_the_common_schema(tenant: SyntheticTenant, records: list[tuple[Any, dict[str, Any]]]) -> None:
    seen_types: dict[str, set[int]] = defaultdict(set)
    for blob, rec in records:
        for key in COMMON:
            assert key in rec, (key, rec)
        assert rec["OrganizationId"] == tenant.tenant_id
        assert CREATION.match(rec["CreationTime"]), rec["CreationTime"]
        rt = int(rec["RecordType"])
        seen_types[blob.content_type].add(rt)
        assert rt in RECORD_TYPES[blob.content_type]
        created = parse_ct(rec["CreationTime"])
        assert NOW - timedelta(days=7) - timedelta(seconds=1) <= created <= NOW
    assert seen_types == RECORD_TYPES


def test_availability_latency(records: list[tuple[Any, dict[str, Any]]]) -> None:
    lags = [(b.content_created - parse_ct(r["CreationTime"])).total_seconds() / 60 for b, r in records
            if r["Operation"] != "DlpRuleUndo"]
    assert min(lags) >= 14
    usual = sum(60 <= lag <= 91 for lag in lags) / len(lags)
    assert usual > 0.75
    assert any(lag < 60 for lag in lags)
    assert any(24 * 60 <= lag <= 30 * 60 + 1 for lag in lags), "a tail of blobs 24-30 h late"


def test_records_in_a_blob_are_not_ordered(tenant: SyntheticTenant) -> None:
    unordered = 0
    for b in tenant.blobs:
        times = [r["CreationTime"] for r in orjson.loads(b.body)]
        unordered += times != sorted(times)
    assert unordered > len(tenant.blobs) // 4


def test_redelivered_records_are_equal_with_reordered_keys(
    tenant: SyntheticTenant, records: list[tuple[Any, dict[str, Any]]]
) -> None:
    copies: dict[tuple[Any, ...], list[tuple[Any, dict[str, Any]]]] = defaultdict(list)
    for blob, rec in records:
        copies[(rec["Id"], int(rec["RecordType"]), rec["Operation"])].append((blob, rec))
    repeated = {k: v for k, v in copies.items() if len(v) > 1}
    total = sum(len(b.record_keys) for b in tenant.blobs)
    assert 0.01 < len(repeated) / total < 0.04
    for entries in repeated.values():
        (b1, r1), (b2, r2) = entries[0], entries[1]
        assert b1.content_type == b2.content_type
        assert b1.content_id != b2.content_id
        assert r1 == r2
        assert list(r1) != list(r2)


def test_dlp_undo_shares_the_match_id(records: list[tuple[Any, dict[str, Any]]]) -> None:
    by_id: dict[str, set[str]] = defaultdict(set)
    for _, rec in records:
        if int(rec["RecordType"]) in (11, 13):
            by_id[rec["Id"]].add(rec["Operation"].lower())
    assert any(ops == {"dlprulematch", "dlpruleundo"} for ops in by_id.values())


def test_odd_values_are_present(records: list[tuple[Any, dict[str, Any]]]) -> None:
    ips: Counter[str] = Counter()
    for _, rec in records:
        ip = rec.get("ClientIP")
        if ip is None:
            continue
        if ip == "":
            ips["empty"] += 1
        elif ip == "::1":
            ips["loopback"] += 1
        elif ip.startswith("[::ffff:"):
            ips["mapped"] += 1
        elif ip.startswith("["):
            ips["bracketed"] += 1
        elif ip.count(":") == 1:
            ips["port"] += 1
        elif ":" in ip:
            ips["v6"] += 1
    assert set(ips) == {"empty", "loopback", "mapped", "bracketed", "port", "v6"}
    recs = [r for _, r in records]
    assert any(isinstance(r["RecordType"], str) for r in recs)
    assert any(isinstance(r["UserType"], str) for r in recs)
    assert any(len(r["CreationTime"]) == 27 for r in recs)
    assert {"Not Available", "Unknown"} <= {r["UserId"] for r in recs}
    assert any(r["UserId"].startswith("ServicePrincipal_") for r in recs)
    assert any(r["UserId"] == "NT AUTHORITY\\SYSTEM (Microsoft.Exchange.ServiceHost)" for r in recs)
    assert any(r["UserId"] != r["UserId"].lower() and "@" in r["UserId"] for r in recs)
    assert any(isinstance(r.get("Parameters"), str) for r in recs)
    cut = [p["NewValue"] for r in recs for p in r.get("ModifiedProperties", []) if p["NewValue"].endswith("...")]
    assert cut
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(cut[0])


def test_workload_shapes(records: list[tuple[Any, dict[str, Any]]]) -> None:
    recs = [r for _, r in records]
    mia = next(r for r in recs if r["Operation"] == "MailItemsAccessed" and "FolderItems" in r["Folders"][0])
    item = mia["Folders"][0]["FolderItems"][0]
    assert {"Id", "ImmutableId", "InternetMessageId", "SizeInBytes"} <= set(item)
    props = {p["Name"]: p["Value"] for p in mia["OperationProperties"]}
    assert props["MailAccessType"] in ("Bind", "Sync") and props["IsThrottled"] == "False"
    assert {"ClientIPAddress", "ClientInfoString", "SessionId", "MailboxOwnerUPN", "AppId", "LogonType"} <= set(mia)
    failed = next(r for r in recs if r["Operation"] == "UserLoginFailed")
    assert failed["ErrorCode"] != "0" and failed["LogonError"] and failed["ApplicationId"]
    assert {p["Name"] for p in failed["ExtendedProperties"]} >= {"UserAgent", "RequestType", "ResultStatusDetail"}
    assert failed["DeviceProperties"]
    change = next(r for r in recs if r["Operation"] == "Update user." and r["ModifiedProperties"])
    assert change["Actor"] and change["Target"]
    assert orjson.loads(change["ModifiedProperties"][0]["NewValue"]) is not None
    file_op = next(r for r in recs if r["Operation"] == "FileDownloaded")
    assert file_op["ObjectId"].startswith(file_op["SiteUrl"]) and file_op["SourceFileName"]
    alert = next(r for r in recs if int(r["RecordType"]) == 40)
    assert isinstance(orjson.loads(alert["Data"]), dict)
    copilot = next(r for r in recs if r["Operation"] == "CopilotInteraction")
    assert copilot["CopilotEventData"]["AppHost"]
    dlp = next(r for r in recs if int(r["RecordType"]) in (11, 13) and "Match" in r["Operation"])
    sit = dlp["PolicyDetails"][0]["Rules"][0]["ConditionsMatched"]["SensitiveInformation"]
    assert sit and isinstance(dlp["SensitiveInfoDetectionIsIncluded"], bool)


def test_truth_counts_unique_keys_of_retrievable_available_blobs(tenant: SyntheticTenant) -> None:
    start, end = NOW - timedelta(days=3), NOW - timedelta(days=2)
    selected = tenant.blobs_between("Audit.Exchange", start, end)
    assert all(start <= b.content_created < end for b in selected)
    expected = {k for b in selected for k in b.record_keys}
    assert tenant.truth("Audit.Exchange", start, end, NOW) == expected
    assert tenant.truth("Audit.Exchange", start, end, start) == set()
    everything = tenant.truth(None, NOW - timedelta(days=8), NOW + timedelta(days=2), NOW + timedelta(days=2))
    assert len(everything) < sum(len(b.record_keys) for b in tenant.blobs), "re-deliveries count once"


def test_blob_faults_are_deterministic_and_shape_truth() -> None:
    t = SyntheticTenant.generate(TENANT, seed=5, now=NOW, records_per_day=300)
    spec = FaultSpec.parse("expired=3,cutoff=2,late=0.2")
    apply_blob_faults(t, spec, 9)
    marks = [(b.content_id, b.late, b.expired, b.cutoff) for b in t.blobs]
    apply_blob_faults(t, spec, 9)
    assert marks == [(b.content_id, b.late, b.expired, b.cutoff) for b in t.blobs]
    assert sum(b.expired for b in t.blobs) == 3 and sum(b.cutoff for b in t.blobs) == 2
    assert not any(b.has_incident and (b.expired or b.cutoff) for b in t.blobs)
    bad = t.undeliverable(None, NOW - timedelta(days=8), NOW, NOW)
    assert Counter(reason for _, reason in bad) == {"expired": 3, "cutoff": 2}
    span = (NOW - timedelta(days=8), NOW)
    good = {k for b in t.blobs if b.content_created <= NOW and not (b.expired or b.cutoff) for k in b.record_keys}
    # Of a cut-off blob, the records whose text ends before the cut were served whole.
    before_cut: set[tuple[str, int, str]] = set()
    for b in t.blobs:
        if b.cutoff:
            cut, end = len(cutoff_body(b.body, b.content_id)), 0
            for rec in orjson.loads(b.body):
                end += 1 + len(orjson.dumps(rec))
                if end <= cut:
                    before_cut.add(record_key(rec))
    assert t.truth(None, *span, NOW) == good | before_cut


# ----------------------------------------------------------------- the incident


def by_op(records: list[tuple[Any, dict[str, Any]]], op: str) -> list[dict[str, Any]]:
    return [r for _, r in records if r["Operation"] == op]


def test_incident_is_placed_two_days_back(tenant: SyntheticTenant, records: list[tuple[Any, dict[str, Any]]]) -> None:
    inc = tenant.incident
    assert inc is not None
    assert abs(inc.start - (NOW - timedelta(days=2))) < timedelta(minutes=5)
    served = {(r["Id"], int(r["RecordType"]), r["Operation"]) for _, r in records}
    assert set(inc.record_keys) <= served
    assert inc.spray_start < inc.victim_login_time < inc.mail_access_time < inc.inbox_rule_time
    assert inc.inbox_rule_time < inc.audit_disabled_time < inc.sp_credential_time < inc.sp_access_time


def test_incident_spray_and_login(tenant: SyntheticTenant, records: list[tuple[Any, dict[str, Any]]]) -> None:
    inc = tenant.incident
    assert inc is not None
    spray = [r for r in by_op(records, "UserLoginFailed") if r["ClientIP"] == inc.attacker_ip]
    assert all(r["ErrorCode"] == "50126" and r["LogonError"] == "InvalidUserNameOrPassword" for r in spray)
    users = {r["UserId"].lower() for r in spray}
    assert len(users) >= 10 and users == set(inc.sprayed_upns)
    assert inc.victim_upn in users
    ok = [r for r in by_op(records, "UserLoggedIn") if r["ClientIP"] == inc.attacker_ip]
    assert {r["UserId"].lower() for r in ok} == {inc.victim_upn}
    assert parse_ct(ok[0]["CreationTime"]) > parse_ct(max(r["CreationTime"] for r in spray))


def test_incident_mailbox_activity(tenant: SyntheticTenant, records: list[tuple[Any, dict[str, Any]]]) -> None:
    inc = tenant.incident
    assert inc is not None
    reads = [r for r in by_op(records, "MailItemsAccessed") if r.get("SessionId") == inc.session_id]
    kinds = {p["Value"] for r in reads for p in r["OperationProperties"] if p["Name"] == "MailAccessType"}
    assert kinds == {"Bind", "Sync"}
    assert all(r["ClientIPAddress"] == inc.attacker_ip and r["MailboxOwnerUPN"] == inc.victim_upn for r in reads)
    seen = {i["InternetMessageId"] for r in reads for f in r["Folders"] for i in f.get("FolderItems", [])}
    assert seen == set(inc.accessed_message_ids) and len(seen) >= 5
    rule = next(r for r in by_op(records, "New-InboxRule") if inc.attacker_ip in r["ClientIP"])
    params = {p["Name"]: p["Value"] for p in rule["Parameters"]}
    assert params["ForwardTo"] == inc.forward_to and params["Name"] == inc.inbox_rule_name
    assert not inc.forward_to.endswith(tenant.domain)
    redirect = next(r for r in by_op(records, "Set-InboxRule") if inc.attacker_ip in r["ClientIP"])
    assert {p["Name"]: p["Value"] for p in redirect["Parameters"]}["RedirectTo"] == inc.forward_to
    blind = [r for r in by_op(records, "Set-Mailbox") if isinstance(r["Parameters"], list)
             and {"Name": "AuditEnabled", "Value": "False"} in r["Parameters"]]
    assert len({r["Id"] for r in blind}) == 1 and inc.attacker_ip in blind[0]["ClientIP"]


def test_incident_directory_changes(tenant: SyntheticTenant, records: list[tuple[Any, dict[str, Any]]]) -> None:
    inc = tenant.incident
    assert inc is not None
    signup = [r for _, r in records if any(a["ID"] == APP_SIGNUP for a in r.get("Actor", []))]
    assert {r["Operation"] for r in signup} == {"Change user license.", "Update user."}
    assert {r["ObjectId"] for r in signup} == {inc.license_signup_target_upn}
    names = {p["Name"] for r in signup for p in r["ModifiedProperties"]}
    assert {"AssignedLicense", "AssignedPlan"} <= names
    # The admin centre's change: no ModifiedProperties, no ObjectId; the user only in Target[] (UPN, Type 5).
    admin = [r for r in by_op(records, "Change user license.") if r["UserId"].lower() == inc.license_admin_upn
             and {"ID": inc.license_admin_target_upn, "Type": 5} in r["Target"]]
    assert len(admin) == 1 and admin[0]["ModifiedProperties"] == [] and "ObjectId" not in admin[0]
    cred = [r for r in by_op(records, "Add service principal credentials.")
            if any(t["ID"] == inc.sp_object_id for t in r["Target"])
            and r["UserId"].lower() == inc.victim_upn and r["ClientIP"] == inc.attacker_ip]
    assert len(cred) == 1
    app_reads = [r for r in by_op(records, "MailItemsAccessed") if r["AppId"] == inc.sp_app_id
                 and r["ClientIPAddress"] == inc.sp_ip]
    assert {r["MailboxOwnerUPN"] for r in app_reads} == set(inc.sp_accessed_mailboxes)
    assert min(parse_ct(r["CreationTime"]) for r in app_reads) > parse_ct(cred[0]["CreationTime"])


def test_incident_json_is_plain(tenant: SyntheticTenant) -> None:
    assert tenant.incident is not None
    facts = orjson.loads(orjson.dumps(tenant.incident.to_json()))
    assert facts["attacker_ip"] == tenant.incident.attacker_ip
    assert facts["spray_start"].endswith("Z")
    assert facts["record_keys"][0][1] == 15
