"""The KQL function library finds the demo's scripted incident through `auditlake query`, and nothing else.

One demo lake is built per module (`auditlake demo --days 2`); the incident's facts come from the
emulator's tenant for the same seed. Each function runs through the CLI (`main(["query", ...])`,
JSON output), the path a user takes. The demo starts from `now`, so times are compared within a
few minutes: the facts are regenerated a little after the demo ran.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from auditlake.cli import DEMO_TENANT, main
from auditlake.emulator.incident import Incident
from auditlake.emulator.tenant import SyntheticTenant
from tests.flows.conftest import AUDITLAKE, REPO

pytestmark = pytest.mark.slow

DAYS = 2
CONTENT_TYPES = {"Audit.AzureActiveDirectory", "Audit.Exchange", "Audit.SharePoint", "Audit.General", "DLP.All"}
SIGNUP_APP_ID = "ead24062-d380-4260-9d1b-3891efe04ccc"


@dataclass(frozen=True)
class Demo:
    lake: Path
    incident: Incident


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    lake = tmp_path_factory.mktemp("investigations") / "demo.duckdb"
    proc = subprocess.run([AUDITLAKE, "demo", "--lake", str(lake), "--days", str(DAYS)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    incident = SyntheticTenant.generate(DEMO_TENANT, seed=7, now=datetime.now(UTC), days=DAYS).incident
    assert incident is not None
    return Demo(lake, incident)


@pytest.fixture
def lake_copy(demo: Demo, tmp_path: Path) -> Iterator[Path]:
    """A copy of the demo lake a test may change."""
    path = tmp_path / "copy.duckdb"
    shutil.copyfile(demo.lake, path)
    yield path


def query(lake: Path, kql: str) -> list[dict[str, Any]]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["query", "--lake", str(lake), "--format", "json", kql])
    assert code == 0, f"{kql}\n{err.getvalue()}"
    rows: list[dict[str, Any]] = orjson.loads(out.getvalue())
    return rows


def sql(lake: Path, statement: str, params: list[Any] | None = None) -> None:
    con = duckdb.connect(str(lake))
    try:
        con.execute("SET TimeZone='UTC'")
        con.execute(statement, params or [])
    finally:
        con.close()


def at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def near(value: str, expected: datetime, minutes: float = 3) -> bool:
    return abs(at(value) - expected) <= timedelta(minutes=minutes)


def kql_time(dt: datetime) -> str:
    return f"datetime({dt.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S')})"


# -- the incident ----------------------------------------------------------------------------


def test_officeactivity_shows_the_spray_and_the_one_sign_in_it_won(demo: Demo) -> None:
    inc = demo.incident
    failed = query(demo.lake, f"""OfficeActivity
| where Operation == "UserLoginFailed" and ClientIP == "{inc.attacker_ip}"
| join kind=inner (SignIn | project OfficeId = RecordId, ErrorCode) on OfficeId
| project TimeGenerated, UserId, ErrorCode, RecordType, OfficeWorkload""")
    assert {r["UserId"].lower() for r in failed} == set(inc.sprayed_upns)
    assert len(failed) > len(inc.sprayed_upns)  # some accounts were tried twice
    assert {r["ErrorCode"] for r in failed} == {inc.spray_error_code}
    assert {(r["RecordType"], r["OfficeWorkload"]) for r in failed} == {
        ("AzureActiveDirectoryStsLogon", "AzureActiveDirectory")}
    assert all(near(r["TimeGenerated"], inc.spray_start, 20) for r in failed)
    won = query(demo.lake, f"""OfficeActivity
| where Operation == "UserLoggedIn" and ClientIP == "{inc.attacker_ip}"
| project TimeGenerated, UserId, UserAgent""")
    assert len(won) == 1
    assert won[0]["UserId"].lower() == inc.victim_upn
    assert near(won[0]["TimeGenerated"], inc.victim_login_time)
    assert "Chrome/122" in won[0]["UserAgent"]


def test_messages_read_from_the_attacker_address_are_exactly_the_scripted_ones(demo: Demo) -> None:
    inc = demo.incident
    rows = query(demo.lake, f'MessagesRead("{inc.attacker_ip}")')
    assert {r["InternetMessageId"] for r in rows if r["InternetMessageId"]} == set(inc.accessed_message_ids)
    assert {(r["ClientIP"], r["SessionId"], r["MailboxOwnerUPN"], r["UserId"]) for r in rows} == {
        (inc.attacker_ip, inc.session_id, inc.victim_upn, inc.victim_upn)}
    # The folder synchronised after the binds lists no message, and is not hidden for that.
    sync = [r for r in rows if r["AccessType"] == "Sync"]
    assert len(sync) == 1 and sync[0]["InternetMessageId"] == "" and sync[0]["FolderPath"]
    assert len(rows) == len(inc.accessed_message_ids) + 1
    # The session finds the same reads; the time window narrows them.
    by_session = query(demo.lake, f'MessagesRead("", "{inc.session_id}")')
    assert sorted(r["RecordId"] + r["InternetMessageId"] for r in by_session) == sorted(
        r["RecordId"] + r["InternetMessageId"] for r in rows)
    window = query(demo.lake, f'MessagesRead("{inc.attacker_ip}", "", "", '
                              f'{kql_time(inc.start + timedelta(minutes=28.5))}, '
                              f'{kql_time(inc.start + timedelta(minutes=40))})')
    # Binds at +26 (two messages), +31 (three), +37 (four): the window holds the last seven.
    assert {r["InternetMessageId"] for r in window} == set(inc.accessed_message_ids[2:])


def test_messages_read_by_user_include_what_the_app_read_from_their_mailbox(demo: Demo) -> None:
    inc = demo.incident
    owner = inc.sp_accessed_mailboxes[0]
    rows = query(demo.lake, f'MessagesRead("", "", "{owner.upper()}") | where ClientIP == "{inc.sp_ip}"')
    assert rows and {(r["MailboxOwnerUPN"], r["AppId"], r["AccessType"]) for r in rows} == {
        (owner, inc.sp_app_id, "Bind")}


def test_officeactivity_parameters_name_the_forwarding_address_as_sentinel_queries_expect(demo: Demo) -> None:
    inc = demo.incident
    # A hunting query written for Sentinel, unchanged: Parameters is JSON text of name/value pairs.
    rows = query(demo.lake, """OfficeActivity
| where Operation =~ "New-InboxRule"
| extend Events = todynamic(Parameters)
| mv-expand Events
| where tostring(Events.Name) in~ ("ForwardTo", "ForwardAsAttachmentTo", "RedirectTo")
| project TimeGenerated, UserId, ClientIP, Forward = tostring(Events.Value), Type""")
    assert len(rows) == 1
    assert rows[0]["UserId"].lower() == inc.victim_upn
    assert rows[0]["ClientIP"] == inc.attacker_ip
    assert rows[0]["Forward"] == inc.forward_to
    assert rows[0]["Type"] == "OfficeActivity"
    assert near(rows[0]["TimeGenerated"], inc.inbox_rule_time)
    benign = query(demo.lake, 'OfficeActivity | where Operation == "New-InboxRule" | count')
    assert benign[0]["Count"] > 1, "the tenant's own inbox rules make the filter meaningful"


# Sentinel's OfficeActivity table as the contract test holds it (names, types, order, with sources).
_COLUMNS_FILE = Path(__file__).resolve().parents[1] / "contract" / "sentinel_officeactivity_columns.json"
SENTINEL_OFFICEACTIVITY = {
    c["name"]: c["type"] for c in json.loads(_COLUMNS_FILE.read_text(encoding="utf-8"))["columns"]}


def test_officeactivity_has_sentinels_columns_and_types(demo: Demo) -> None:
    schema = query(demo.lake, "OfficeActivity | getschema")
    assert {r["ColumnName"]: r["ColumnType"] for r in schema} == SENTINEL_OFFICEACTIVITY
    rows = query(demo.lake, """OfficeActivity
| summarize Records = count(), Workloads = dcount(OfficeWorkload), Types = make_set(Type),
    Sources = make_set(SourceSystem)""")
    records = query(demo.lake, "AuditRecord | count")[0]["Count"]
    assert rows == [{"Records": records, "Workloads": rows[0]["Workloads"], "Types": ["OfficeActivity"],
                     "Sources": ["OfficeActivityManager"]}]
    assert rows[0]["Workloads"] >= 6


def test_audit_tampering_is_exactly_the_victims_mailbox_audit_switched_off(demo: Demo) -> None:
    inc = demo.incident
    rows = query(demo.lake, "AuditTampering")
    assert len(rows) == 1, rows
    row = rows[0]
    assert (row["UserPrincipal"], row["Operation"], row["Target"], row["ClientIP"]) == (
        inc.victim_upn, "Set-Mailbox", inc.victim_upn, inc.attacker_ip)
    assert row["Detail"] == "mailbox auditing disabled"
    assert near(row["TimeGenerated"], inc.audit_disabled_time)
    # The tenant runs Set-Mailbox all day (the service setting AuditEnabled True, holds): none of it counts.
    benign = query(demo.lake, 'AuditRecord | where Operation == "Set-Mailbox" | count')[0]["Count"]
    assert benign > 10
    assert query(demo.lake, f"AuditTampering({kql_time(inc.audit_disabled_time + timedelta(minutes=5))})") == []


def test_license_changes_show_both_paths_and_nothing_else(demo: Demo) -> None:
    inc = demo.incident
    rows = query(demo.lake, "LicenseChanges")
    signup = [r for r in rows if r["TargetUser"] == inc.license_signup_target_upn
              and near(r["TimeGenerated"], inc.license_signup_time)]
    assert {r["Operation"] for r in signup} == {"Change user license.", "Update user."}
    for r in signup:
        assert r["Source"] == "Self-service sign-up (auto-claim)"
        assert "FLOW_FREE" in r["AddedSkus"] and r["RemovedSkus"] == []
        assert r["HasLicenseDetail"] is True and r["ActorType"] == "ServicePrincipal"
        assert SIGNUP_APP_ID in r["Detail"]
    admin = [r for r in rows if r["TargetUser"] == inc.license_admin_target_upn
             and near(r["TimeGenerated"], inc.license_admin_time)]
    assert len(admin) == 1
    assert admin[0]["Actor"] == inc.license_admin_upn and admin[0]["Source"] == "Direct assignment"
    assert admin[0]["HasLicenseDetail"] is False and "no license detail" in admin[0]["Detail"]
    assert admin[0]["AddedSkus"] is None and admin[0]["Operation"] == "Change user license."
    # Only the Signup principal's changes are auto-claims.
    assert {r["Source"] for r in rows if r["Actor"] != "Signup"} <= {"Direct assignment"}
    assert len([r for r in rows if r["Source"].startswith("Self-service")]) == 2
    # Every Change user license. record is listed, and an Update user. only when it touches a licence.
    changes = query(demo.lake, 'AuditRecord | where Operation == "Change user license." | count')[0]["Count"]
    assert len([r for r in rows if r["Operation"] == "Change user license."]) == changes
    licensed = query(demo.lake, """DirectoryChange
| where Operation == "Update user." and Property in ("AssignedLicense", "AssignedPlan")
| distinct RecordId""")
    assert {r["RecordId"] for r in rows if r["Operation"] == "Update user."} == {r["RecordId"] for r in licensed}
    others = query(demo.lake, 'AuditRecord | where Operation == "Update user." | count')[0]["Count"]
    assert others > 2 * len(licensed), "most Update user. records change something else"


def test_service_principal_activity_flags_the_new_secret_then_mail_reads_and_no_other(demo: Demo) -> None:
    inc = demo.incident
    rows = query(demo.lake, "ServicePrincipalActivity")
    flagged = [r for r in rows if r["CredentialThenUse"]]
    assert {r["PrincipalId"] for r in flagged} == {inc.sp_app_id, inc.sp_object_id}
    assert {r["ServicePrincipalName"] for r in flagged} == {inc.sp_display_name}
    credential = [r for r in flagged if r["Activity"] == "Credential added"]
    assert len(credential) == 1
    assert (credential[0]["CredentialAddedBy"], credential[0]["CredentialAddedFromIP"]) == (
        inc.victim_upn, inc.attacker_ip)
    assert near(credential[0]["TimeGenerated"], inc.sp_credential_time)
    uses = [r for r in flagged if r["Activity"] == "Acted"]
    assert sorted(r["Target"] for r in uses) == sorted(inc.sp_accessed_mailboxes)
    for r in uses:
        assert (r["Operation"], r["ClientIP"], r["NewAddress"]) == ("MailItemsAccessed", inc.sp_ip, True)
        assert r["CredentialAddedBy"] == inc.victim_upn and 20 <= r["MinutesAfterCredential"] <= 65
    # Its sign-ins from the new address, from the Entra service-principal sign-in log, are flagged too.
    signins = [r for r in flagged if r["Activity"] == "Sign-in"]
    assert signins and {(r["Operation"], r["ClientIP"], r["PrincipalId"]) for r in signins} == {
        ("AADServicePrincipalSignInLogs", inc.sp_ip, inc.sp_object_id)}
    # The demo's other credentials and app-only reads are there, and not flagged.
    assert len([r for r in rows if r["Activity"] == "Credential added"]) > 1
    quiet = [r for r in rows if r["Activity"] == "Acted" and not r["CredentialThenUse"]]
    assert len({r["PrincipalId"] for r in quiet}) > 3
    assert any(r["PrincipalId"] == inc.sp_app_id for r in quiet), "the app's usual reads are not flagged"


# -- the identity chapter: the Entra ID sign-in and audit logs -----------------------------------


def test_service_principal_failures_name_the_principal_address_and_error(demo: Demo) -> None:
    inc = demo.incident
    rows = query(demo.lake, "ServicePrincipalSignInFailures")
    assert rows and {r["ResultType"] for r in rows} <= {"7000222", "7000215"}
    ours = [r for r in rows if r["ServicePrincipalName"] == inc.sp_display_name]
    assert {r["ResultType"] for r in ours} == {"7000222", "7000215"}
    # Before the attacker's secret, the principal's own address failed with its old secret; the
    # attacker's address never failed.
    assert inc.sp_ip not in {r["IPAddress"] for r in ours}
    assert all(r["Failures"] >= 1 and r["ServicePrincipalId"] == inc.sp_object_id for r in ours)


def test_the_new_credential_is_followed_by_sign_ins_from_a_new_address_with_that_key(demo: Demo) -> None:
    inc = demo.incident
    rows = query(demo.lake, "CredentialThenSignIns | where NewAddress and ResultType == '0'")
    assert rows and {(r["ServicePrincipalId"], r["IPAddress"], r["AddedBy"], r["UsesNewKey"]) for r in rows} == {
        (inc.sp_object_id, inc.sp_ip, inc.victim_upn, True)}
    assert all(near(r["CredentialAt"], inc.sp_credential_time) and r["MinutesAfterCredential"] > 0 for r in rows)
    assert {r["ResourceDisplayName"] for r in rows} >= {"Office 365 Exchange Online"}
    # Its usual address is not new.
    usual = query(demo.lake, f"CredentialThenSignIns | where ServicePrincipalId == '{inc.sp_object_id}' "
                             "and not(NewAddress)")
    assert inc.sp_ip not in {r["IPAddress"] for r in usual}


def test_a_service_principals_own_directory_changes_get_the_address_of_its_sign_in(demo: Demo) -> None:
    inc = demo.incident
    rows = query(demo.lake, f"ServicePrincipalChangesWithIP | where ServicePrincipalId == '{inc.sp_object_id}'")
    assert len(rows) >= 2
    for r in rows:
        assert r["IPAddress"] == inc.sp_ip and r["MatchedBy"] != "" and r["ChangeTime"] > r["SignInTime"]
    # The same join by hand, as an investigator would write it over Sentinel's two tables.
    joined = query(demo.lake, f"""AuditLogs
| where tostring(InitiatedBy.app.servicePrincipalId) == "{inc.sp_object_id}"
| project ChangeTime = TimeGenerated, ServicePrincipalId = tostring(InitiatedBy.app.servicePrincipalId), OperationName
| join kind=inner (AADServicePrincipalSignInLogs | where ResultType == "0"
    | project SignInTime = TimeGenerated, ServicePrincipalId, IPAddress) on ServicePrincipalId
| where SignInTime between ((ChangeTime - 1h) .. ChangeTime)
| distinct OperationName, IPAddress""")
    # (It also finds the principal's routine sign-ins of that hour from its usual address; the
    # function keeps the one sign-in behind each change.)
    assert inc.sp_ip in {r["IPAddress"] for r in joined}
    assert {r["OperationName"] for r in joined} == {r["OperationName"] for r in rows}


def test_managed_identity_sign_ins_by_resource(demo: Demo) -> None:
    rows = query(demo.lake, "ManagedIdentityAccess")
    assert {r["ResourceDisplayName"] for r in rows} == {"Azure Key Vault", "Azure Resource Manager"}
    for r in rows:
        assert r["ResourceIdentity"] and r["SignIns"] > 0
        assert r["ManagedIdentityResourceId"].startswith("/subscriptions/")
        assert "countryOrRegion" in r["LocationDetails"]
    # The table keeps Sentinel's type: LocationDetails is a string there, not dynamic.
    schema = {r["ColumnName"]: r["ColumnType"] for r in query(demo.lake, "AADManagedIdentitySignInLogs | getschema")}
    assert schema["LocationDetails"] == "string" and schema["ResourceIdentity"] == "string"


def test_the_attackers_address_is_a_first_seen_address_of_the_principal(demo: Demo) -> None:
    inc = demo.incident
    rows = query(demo.lake, f"ServicePrincipalNewAddresses(ago(3d)) | where ServicePrincipalId == '{inc.sp_object_id}'")
    new = [r for r in rows if r["NewForPrincipal"]]
    assert [r["IPAddress"] for r in new] == [inc.sp_ip]


# -- the pipeline's own health ---------------------------------------------------------------


def test_audit_latency_covers_every_content_type_with_ordered_percentiles(demo: Demo) -> None:
    rows = query(demo.lake, "AuditLatency")
    assert {r["ContentType"] for r in rows} == CONTENT_TYPES
    for r in rows:
        assert r["Records"] > 0 and r["TenantId"] == DEMO_TENANT
        for leg in ("EventToAvailable", "AvailableToQueryable"):
            p50, p95, p99, top = (r[f"{leg}{s}"] for s in ("P50", "P95", "P99", "Max"))
            assert 0 <= p50 <= p95 <= p99 <= top, (r["ContentType"], leg)
        # The emulator makes most records available 60-90 minutes after they happen.
        assert 3600 <= r["EventToAvailableP50"] <= 5400


def test_log_flow_gaps_finds_a_hole_and_a_silence_and_nothing_on_a_healthy_lake(demo: Demo, lake_copy: Path) -> None:
    assert query(demo.lake, "LogFlowGaps") == []
    now = datetime.now(UTC).replace(tzinfo=None)
    hole = (now - timedelta(hours=30), now - timedelta(hours=22))
    sql(lake_copy, """DELETE FROM "ContentLedger" WHERE "ContentType" = 'Audit.Exchange'
        AND "ContentCreated" BETWEEN ? AND ?""", list(hole))
    sql(lake_copy, """DELETE FROM "ContentLedger" WHERE "ContentType" = 'DLP.All' AND "ContentCreated" > ?""",
        [now - timedelta(hours=10)])
    rows = query(lake_copy, "LogFlowGaps")
    assert [(r["ContentType"], r["Ongoing"]) for r in rows] == [("Audit.Exchange", False), ("DLP.All", True)]
    exchange, dlp = rows
    assert at(exchange["GapStart"]).replace(tzinfo=None) <= hole[0]
    assert at(exchange["GapEnd"]).replace(tzinfo=None) >= hole[1]
    assert 8 <= exchange["GapHours"] <= 11 and exchange["UsualGapHours"] < 2
    assert dlp["GapHours"] >= 10 and near(dlp["GapEnd"], datetime.now(UTC), 10)
    # A feed silent for longer than the whole window is still reported, against `minimum`.
    short = query(lake_copy, "LogFlowGaps(2h, 3.0, 5h)")
    assert [(r["ContentType"], r["Ongoing"], r["BlobsInWindow"]) for r in short] == [("DLP.All", True, 0)]


def test_ledger_health_lists_failed_expired_and_expiring_blobs_only(demo: Demo, lake_copy: Path) -> None:
    problems = query(demo.lake, 'ContentLedger | where Status != "ingested" | project ContentId, Status')
    # The demo's faults leave blobs expired and cut off (failed), and it shows what it never hides.
    assert problems and {r["Status"] for r in problems} <= {"expired", "failed"}
    rows = query(demo.lake, "LedgerHealth")
    assert {(r["ContentId"], r["Status"]) for r in rows} == {(r["ContentId"], r["Status"]) for r in problems}
    assert all(r["Error"] and r["Attempts"] >= 1 for r in rows)

    sql(lake_copy, """UPDATE "ContentLedger" SET "Status" = 'ingested', "IngestedAt" = now()::TIMESTAMP
        WHERE "Status" <> 'ingested'""")
    assert query(lake_copy, "LedgerHealth") == []
    now = datetime.now(UTC).replace(tzinfo=None)
    blobs = [
        ("expiring", "queued", now - timedelta(days=7, hours=-3), None),
        ("failed-late", "failed", now - timedelta(days=8), "HTTP 500: gave up"),
        ("fresh", "listed", now - timedelta(hours=2), None),
    ]
    for content_id, status, created, error in blobs:
        sql(lake_copy, """INSERT INTO "ContentLedger" ("TenantId", "ContentType", "ContentId", "ContentCreated",
            "ContentExpiration", "ListedAt", "Status", "Attempts", "Error")
            VALUES (?, 'Audit.Exchange', ?, ?, ?, ?, ?, 1, ?)""",
            [DEMO_TENANT, content_id, created, created + timedelta(days=7), now - timedelta(hours=1), status, error])
    rows = query(lake_copy, "LedgerHealth")
    assert [(r["ContentId"], r["Problem"]) for r in rows] == [
        ("failed-late", "failed and expired: no longer served by the API"),
        ("expiring", "queued and close to expiry"),
    ]
    assert -25 < rows[0]["HoursToExpiry"] < -23 and 2 < rows[1]["HoursToExpiry"] < 4
    # A tighter notion of "close" leaves the blob with three hours to go out.
    assert [r["ContentId"] for r in query(lake_copy, "LedgerHealth(2h)")] == ["failed-late"]


def test_schema_drift_reports_new_operations_fields_types_and_fields_gone(demo: Demo, lake_copy: Path) -> None:
    before = query(demo.lake, "SchemaDrift")
    assert {r["Change"] for r in before} <= {"new operation", "new field", "new type", "field gone"}
    for r in before:
        if r["Change"] == "new field":
            assert at(r["FirstSeen"]) > at(r["OperationFirstSeen"]) + timedelta(days=1)
    now = datetime.now(UTC).replace(tzinfo=None)
    recent = now - timedelta(hours=1)
    observations = [
        ("Exchange", 1, "New-InboxRule", "Parameters[DeleteMessage]", "string"),  # a parameter never seen
        ("Exchange", 1, "Set-Brand-New", "Id", "string"),  # an operation never seen
        ("Exchange", 50, "MailItemsAccessed", "OperationCount", "string"),  # a number arriving as text
    ]
    for workload, record_type, operation, path, kind in observations:
        sql(lake_copy, 'INSERT INTO "SchemaObservation" VALUES (?, ?, ?, ?, ?, ?, ?, 1)',
            [workload, record_type, operation, path, kind, recent, recent])
    # A field the operation stopped carrying a day and more ago.
    sql(lake_copy, """UPDATE "SchemaObservation" SET "LastSeen" = "FirstSeen"
        WHERE "Operation" = 'MailItemsAccessed' AND "FieldPath" = 'ClientInfoString'""")
    after = query(lake_copy, "SchemaDrift")
    changes = {(r["Change"], r["Operation"], r["FieldPath"], r["FieldType"]) for r in after}
    assert changes - {(r["Change"], r["Operation"], r["FieldPath"], r["FieldType"]) for r in before} == {
        ("new field", "New-InboxRule", "Parameters[DeleteMessage]", "string"),
        ("new operation", "Set-Brand-New", "", ""),
        ("new type", "MailItemsAccessed", "OperationCount", "string"),
        ("field gone", "MailItemsAccessed", "ClientInfoString", "string"),
    }
