"""OfficeActivity's values are what Sentinel shows, so Sentinel's rules give the same answers here.

A demo lake (`auditlake demo --days 2`, one per module) and a lake of the public sample records
(../shared/samples, written through the collector's own flatten and lake code) are queried through
`auditlake query`, the path a user takes. Each value is checked against the raw record in AuditData.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from auditlake.cli import main
from auditlake.lake.duckdb_lake import LocalLake
from function_app.records.enums import RECORD_TYPE_NAMES, USER_TYPE_NAMES
from function_app.records.flatten import BlobContext
from function_app.records.tables import flatten_tables
from tests.flows.conftest import AUDITLAKE, REPO
from tests.samples import all_records

pytestmark = pytest.mark.slow

# Sentinel's UserType names: the Azure Monitor reference lists Admin, Application, DcAdmin, Regular,
# Reserved, ServicePrincipal and System; codes 7-10 came later and keep the schema's names.
SENTINEL_USER_TYPES = {"Regular", "Reserved", "Admin", "DcAdmin", "System", "Application", "ServicePrincipal",
                       "CustomPolicy", "SystemPolicy", "PartnerTechnician", "Guest"}
LOGON_TYPES = {0: "Owner", 1: "Admin", 2: "Delegated", 3: "Transport", 4: "SystemService", 5: "BestAccess",
               6: "DelegatedAdmin"}
# Sentinel's hunting query "Non-owner mailbox login activity", as it is written for Sentinel.
MISSING = -2147483648  # AuditRecord.RecordType when the record has none
NON_OWNER_LOGINS = """OfficeActivity
| where Operation == "MailboxLogin" and Logon_Type != "Owner"
| project OfficeId, UserId, MailboxOwnerUPN, Logon_Type"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake = tmp_path_factory.mktemp("officeactivity") / "demo.duckdb"
    proc = subprocess.run([AUDITLAKE, "demo", "--lake", str(lake), "--days", "2"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return lake


@pytest.fixture
def demo_copy(demo: Path, tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "copy.duckdb"
    shutil.copyfile(demo, path)
    yield path


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("officeactivity") / "samples.duckdb"
    records = [record for _, record in all_records()]
    lake = LocalLake(path)
    try:
        ctx = BlobContext("sample-tenant", "Audit.General", "samples", None, datetime(2026, 1, 1, tzinfo=UTC))
        lake.write_tables(flatten_tables(records, ctx))
    finally:
        lake.close()
    return path


def query(lake: Path, kql: str) -> list[dict[str, Any]]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["query", "--lake", str(lake), "--format", "json", kql])
    assert code == 0, f"{kql}\n{err.getvalue()}"
    rows: list[dict[str, Any]] = orjson.loads(out.getvalue())
    return rows


def raw(row: dict[str, Any], field: str) -> Any:
    data = row["AuditData"]
    return (orjson.loads(data) if isinstance(data, str) else data).get(field)


# -- Logon_Type ------------------------------------------------------------------------------


def test_non_owner_mailbox_login_rule_finds_only_the_logins_by_someone_else(demo: Path, demo_copy: Path) -> None:
    # The demo's mailbox logins are all the owners' own: the rule must find none of them.
    owners = query(demo, 'AuditRecord | where Operation == "MailboxLogin" | count')[0]["Count"]
    assert owners > 20
    assert query(demo, NON_OWNER_LOGINS) == []
    # An admin, a delegate and a delegated admin log in to mailboxes that are not theirs.
    con = duckdb.connect(str(demo_copy))
    try:
        picked = con.execute("""SELECT "Id" FROM "AuditRecord" WHERE "Operation" = 'MailboxLogin'
            ORDER BY "Id" LIMIT 3""").fetchall()
        for (record_id,), code in zip(picked, (1, 2, 6), strict=True):
            con.execute("""UPDATE "AuditRecord" SET "AuditData" = json_merge_patch("AuditData", ?)
                WHERE "Id" = ?""", [orjson.dumps({"LogonType": code}).decode(), record_id])
    finally:
        con.close()
    found = query(demo_copy, NON_OWNER_LOGINS)
    truth = query(demo_copy, """AuditRecord | where Operation == "MailboxLogin"
| where toint(AuditData["LogonType"]) != 0 | project Id, Code = toint(AuditData["LogonType"])""")
    assert {r["OfficeId"]: r["Logon_Type"] for r in found} == {r["Id"]: LOGON_TYPES[r["Code"]] for r in truth}
    assert {r["Logon_Type"] for r in found} == {"Admin", "Delegated", "DelegatedAdmin"}


def test_logon_type_is_the_name_of_the_records_code_on_every_exchange_record(samples: Path, demo: Path) -> None:
    for lake in (samples, demo):
        rows = query(lake, """OfficeActivity
| join kind=inner (AuditRecord | project OfficeId = Id, Operation, AuditData) on OfficeId, Operation
| where isnotempty(tostring(AuditData["LogonType"])) | project Logon_Type, AuditData""")
        assert rows
        for row in rows:
            assert row["Logon_Type"] == LOGON_TYPES[int(raw(row, "LogonType"))]
    # The public samples carry an admin's access (LogonType 1), delivered as a number.
    assert "Admin" in {r["Logon_Type"] for r in query(samples, "OfficeActivity | distinct Logon_Type")}


# -- UserType, RecordType, ExternalAccess -------------------------------------------------------


def test_user_type_uses_sentinels_names_and_dcadmin_is_spelled_dcadmin(demo: Path, samples: Path) -> None:
    for lake in (demo, samples):
        rows = query(lake, """OfficeActivity
| join kind=inner (AuditRecord | project OfficeId = Id, Operation, Code = UserType) on OfficeId, Operation
| summarize count() by UserType, Code""")
        assert {r["UserType"] for r in rows} - {""} <= SENTINEL_USER_TYPES
        for r in rows:
            expected = USER_TYPE_NAMES.get(r["Code"], "") if r["Code"] is not None else ""
            assert r["UserType"] == ("DcAdmin" if expected == "DCAdmin" else expected), r
    demo_types = {r["UserType"] for r in query(demo, "OfficeActivity | distinct UserType")}
    assert "DcAdmin" in demo_types and "DCAdmin" not in demo_types
    # AuditRecord itself keeps the Management Activity schema's spelling.
    assert query(demo, 'AuditRecord | where UserTypeName == "DCAdmin" | count')[0]["Count"] > 0


def test_the_admin_rules_filters_find_the_exchange_admin_records(demo: Path) -> None:
    # "New Admin account activity" and "Exchange AuditLog disabled" filter on these values.
    rows = query(demo, """OfficeActivity | where RecordType == "ExchangeAdmin" and UserType in ("Admin", "DcAdmin")
| count""")
    admin = query(demo, "AuditRecord | where RecordType == 1 and UserType in (2, 3) | count")
    assert rows[0]["Count"] == admin[0]["Count"] > 0


def test_record_type_and_external_access_follow_the_raw_record(samples: Path) -> None:
    rows = query(samples, """OfficeActivity
| join kind=inner (AuditRecord | project OfficeId = Id, Operation, Code = RecordType, AuditData) on OfficeId, Operation
| project RecordType, Code, ExternalAccess, OfficeWorkload, Operation, ResultStatus, AuditData""")
    assert rows
    for row in rows:
        # AuditRecord.RecordType is the record's code as delivered (numbers as text included).
        code = row["Code"]
        assert row["RecordType"] == ("" if code is None or code == MISSING else RECORD_TYPE_NAMES.get(code, str(code)))
        external = raw(row, "ExternalAccess")
        if isinstance(external, bool):
            assert row["ExternalAccess"] == ("True" if external else "False")
        # Workload, Operation and ResultStatus are shown as delivered (some sample records spell
        # the keys in another case; AuditLake reads those too, so only exact keys are compared).
        for column, field in (("Operation", "Operation"), ("OfficeWorkload", "Workload"),
                              ("ResultStatus", "ResultStatus")):
            if isinstance(raw(row, field), str):
                assert row[column] == raw(row, field), (column, row[column])
    assert {"True", "False"} <= {r["ExternalAccess"] for r in rows}


def test_exchange_workbook_filter_on_external_access_matches_the_records(demo: Path) -> None:
    rows = query(demo, 'OfficeActivity | where OfficeWorkload == "Exchange" and ExternalAccess == "True" | count')
    raw_true = query(demo, """AuditRecord | where Workload == "Exchange" and tobool(AuditData["ExternalAccess"]) == true
| count""")
    assert rows[0]["Count"] == raw_true[0]["Count"] > 0


# -- a handful of rows of each workload ----------------------------------------------------------


def test_a_few_rows_of_every_workload_map_as_their_raw_records_say(demo: Path) -> None:
    workloads = [r["Workload"] for r in query(demo, "AuditRecord | where isnotempty(Workload) | distinct Workload")]
    assert len(workloads) >= 6
    for workload in workloads:
        rows = query(demo, f"""OfficeActivity | where OfficeWorkload == "{workload}" | take 5
| join kind=inner (AuditRecord | project OfficeId = Id, Operation, AuditData) on OfficeId, Operation""")
        assert rows, workload
        for row in rows:
            assert row["OfficeId"] == raw(row, "Id") == row["SourceRecordId"]
            assert row["Operation"] == raw(row, "Operation") and row["UserId"] == raw(row, "UserId")
            assert row["OfficeObjectId"] == (raw(row, "ObjectId") or "")
            assert row["Type"] == "OfficeActivity" and row["SourceSystem"] == "OfficeActivityManager"
            assert row["_ResourceId"] == "" and row["_SubscriptionId"] == ""
            assert row["Start_Time"] == row["TimeGenerated"]
            for column, field in (("Site_Url", "SiteUrl"), ("SourceFileName", "SourceFileName"),
                                  ("MailboxOwnerUPN", "MailboxOwnerUPN"), ("TeamName", "TeamName"),
                                  ("ClientInfoString", "ClientInfoString"), ("ListItemUniqueId", "ListItemUniqueId"),
                                  ("AzureActiveDirectory_EventType", "AzureActiveDirectoryEventType")):
                value = raw(row, field)
                assert row[column] == ("" if value is None else str(value)), (workload, column)


def test_sharepoint_columns_sentinel_added_carry_the_records_fields(samples: Path) -> None:
    rows = query(samples, """OfficeActivity
| where isnotempty(SensitivityLabelId) or isnotempty(UniqueSharingId) or isnotnull(AppAccessContext)
| join kind=inner (AuditRecord | project OfficeId = Id, Operation, AuditData) on OfficeId, Operation""")
    # The samples carry SensitivityLabelId only inside nested objects, never at the top level where
    # the SharePoint schema puts it, so the column stays empty for them.
    assert not any(r["SensitivityLabelId"] for r in rows)
    assert any(r["UniqueSharingId"] for r in rows) and any(r["AppAccessContext"] for r in rows)
    for row in rows:
        assert row["SensitivityLabelId"] == (raw(row, "SensitivityLabelId") or "")
        assert row["UniqueSharingId"] == (raw(row, "UniqueSharingId") or "")
        context = row["AppAccessContext"]
        assert (orjson.loads(context) if isinstance(context, str) else context) == raw(row, "AppAccessContext")


# -- the KQL Sentinel content depends on ----------------------------------------------------------
# The survey of Sentinel's OfficeActivity-only rules and hunting queries (bench/sentinel_survey.py,
# docs/office-activity.md) lists the constructs, columns and values they depend on. Each query here is
# our own and exercises one of them; each must run on the demo lake and type-check for ADX.

def _strings(rows: list[dict[str, Any]], column: str) -> bool:
    return bool(rows) and all(isinstance(r[column], str) for r in rows)


CONTENT: dict[str, tuple[str, Any]] = {
    "legacy makeset/makelist": (
        """OfficeActivity | where OfficeWorkload == "Exchange"
| summarize Ops = makeset(Operation), Recent = makelist(Operation, 5) by UserId""",
        lambda rows: rows and all(len(set(r["Ops"])) == len(r["Ops"]) and len(r["Recent"]) <= 5 for r in rows)),
    "mv-apply summarize make_bag, bag_unpack, column_ifexists": (
        """OfficeActivity | where Operation == "New-InboxRule"
| mv-apply P = todynamic(Parameters) on (summarize Params = make_bag(pack(tostring(P.Name), P.Value)))
| evaluate bag_unpack(Params, "p_")
| extend Forward = strcat(tostring(column_ifexists("p_ForwardTo", "")),
    tostring(column_ifexists("p_ForwardAsAttachmentTo", "")), tostring(column_ifexists("p_RedirectTo", ""))),
    Rule = tostring(column_ifexists("p_Name", ""))
| project UserId, Rule, Forward""",
        lambda rows: rows and all(r["Rule"] for r in rows) and any(r["Forward"] for r in rows)),
    "hash with a modulus": (
        """OfficeActivity | distinct UserId | extend Bucket = hash(UserId, 10)
| summarize Users = count(), InRange = countif(Bucket >= 0 and Bucket < 10), Buckets = dcount(Bucket)""",
        lambda rows: rows[0]["Users"] == rows[0]["InRange"] and rows[0]["Buckets"] > 1),
    "extractjson with typeof": (
        """OfficeActivity | where Operation == "Set-Mailbox" and Parameters startswith "["
| extend FirstParameter = extractjson("$[0].Name", Parameters, typeof(string)) | project FirstParameter""",
        lambda rows: _strings(rows, "FirstParameter") and all(r["FirstParameter"] for r in rows)),
    "project-reorder": (
        """OfficeActivity | take 3 | project-reorder UserId, Operation""",
        lambda rows: rows and list(rows[0])[:2] == ["UserId", "Operation"]),
    "tabular let function": (
        """let byUser = (T:(Operation:string, UserId:string), op:string) {
    T | where Operation == op | summarize Logins = count() by UserId };
byUser(OfficeActivity, "MailboxLogin")""",
        lambda rows: rows and all(r["Logins"] > 0 for r in rows)),
    "parenthesised source": (
        """(OfficeActivity | where OfficeWorkload == "SharePoint") | summarize Events = count()""",
        lambda rows: rows[0]["Events"] > 0),
    "mv-expand of an unnamed expression": (
        """OfficeActivity | where Operation == "New-InboxRule" | mv-expand todynamic(Parameters)
| project Parameters""",
        lambda rows: rows and all(isinstance(r["Parameters"], (dict, str)) for r in rows)),
    "bag_keys": (
        """OfficeActivity | where Operation == "New-InboxRule"
| extend Keys = bag_keys(todynamic(Parameters)[0]) | project Keys""",
        lambda rows: rows and all(sorted(r["Keys"]) == ["Name", "Value"] for r in rows)),
    "extract_all with group names": (
        """OfficeActivity | where Client_IPAddress matches regex @"^[0-9.]+:[0-9]+$"
| extend Parts = extract_all(@"(?P<ip>[0-9.]+):(?P<port>[0-9]+)", dynamic(["port", "ip"]), Client_IPAddress)
| project Client_IPAddress, Parts""",
        lambda rows: all(r["Parts"][0] == list(reversed(r["Client_IPAddress"].split(":"))) for r in rows)),
    "iff of a dynamic and a string": (
        """OfficeActivity | where OfficeWorkload == "MicrosoftTeams" and Operation == "MemberAdded"
| extend Who = iff(isempty(TeamName), Members[0].UPN, TeamName) | project Who""",
        lambda rows: _strings(rows, "Who")),
    "values: Logon_Type, UserType, RecordType, OfficeWorkload, ResultStatus, EventSource": (
        """OfficeActivity
| summarize Owners = countif(Logon_Type == "Owner"), Admins = countif(UserType in ("Admin", "DcAdmin")),
    FileOps = countif(RecordType == "SharePointFileOperation"), Teams = countif(OfficeWorkload =~ "MicrosoftTeams"),
    Succeeded = countif(ResultStatus =~ "Succeeded"), SharePoint = countif(EventSource == "SharePoint")""",
        lambda rows: all(v > 0 for v in rows[0].values())),
}


@pytest.mark.parametrize("name", list(CONTENT))
def test_the_kql_sentinel_content_uses_runs_on_the_demo_lake(demo: Path, name: str) -> None:
    text, holds = CONTENT[name]
    rows = query(demo, text)
    assert holds(rows), (name, rows[:3])


def test_what_cannot_run_locally_is_one_line_pointing_to_adx(demo: Path) -> None:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["query", "--lake", str(demo), "OfficeActivity | make-series Events = count() default = 0 "
                                                    "on TimeGenerated step 1h by OfficeWorkload"])
    lines = err.getvalue().strip().splitlines()
    assert code == 1 and len(lines) == 1 and "make-series" in lines[0] and "ADX" in lines[0], lines


def test_the_content_queries_type_check_for_adx(tmp_path: Path) -> None:
    from tests.contract.test_kql_parse import FUNCTIONS, describe, run_check

    files = []
    for n, (text, _) in enumerate(CONTENT.values()):
        path = tmp_path / f"content{n:02}.kql"
        path.write_text(text, encoding="utf-8")
        files.append(path)
    report = run_check(tmp_path, sorted(FUNCTIONS.glob("*.kql")) + files)
    assert describe(report) == []
