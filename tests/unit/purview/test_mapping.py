"""An auditLogRecord becomes the feed's record: keyed on auditData.Id, never on the search's id."""

from __future__ import annotations

from datetime import UTC, datetime

from function_app.compose import build_rows
from function_app.core.model import ContentBlob
from function_app.purview.backfill import SEARCH_CONTENT_TYPE
from function_app.purview.mapping import IdCheck, record_type_number, unified_record

FEED_RECORD = {"Id": "8f1c2d3e-0000-4000-8000-000000000001", "RecordType": 1, "Operation": "Set-Mailbox",
               "CreationTime": "2026-09-05T10:00:00", "UserId": "admin@contoso.com", "Workload": "Exchange",
               "OrganizationId": "t1", "ClientIP": "203.0.113.7"}


def _item(**over: object) -> dict[str, object]:
    item: dict[str, object] = {"id": FEED_RECORD["Id"], "createdDateTime": "2026-09-05T10:00:00Z",
                               "auditLogRecordType": "exchangeAdmin", "operation": "Set-Mailbox",
                               "service": "Exchange", "userPrincipalName": "admin@contoso.com",
                               "clientIp": "203.0.113.7",
                               "auditData": {"@odata.type": "#microsoft.graph.security.defaultAuditData",
                                             **FEED_RECORD}}
    item.update(over)
    return item


def test_the_record_is_audit_data_as_the_feed_serves_it() -> None:
    check = IdCheck()
    assert unified_record(_item(), check) == FEED_RECORD
    assert (check.same, check.different) == (1, 0)


def test_a_search_id_that_differs_is_noticed_and_not_used() -> None:
    check = IdCheck()
    record = unified_record(_item(id="some-graph-id"), check)
    assert record["Id"] == FEED_RECORD["Id"]
    assert check.different == 1 and check.example == ("some-graph-id", FEED_RECORD["Id"])
    assert "differs for 1" in check.describe()


def test_without_audit_data_the_envelope_is_used() -> None:
    check = IdCheck()
    record = unified_record(_item(auditData={"@odata.type": "#x"}), check)
    assert record == {"Id": FEED_RECORD["Id"], "RecordType": 1, "CreationTime": "2026-09-05T10:00:00Z",
                      "Operation": "Set-Mailbox", "UserId": "admin@contoso.com", "ClientIP": "203.0.113.7",
                      "Workload": "Exchange"}
    assert check.envelope_only == 1


def test_record_type_names() -> None:
    assert record_type_number("ExchangeAdmin") == record_type_number("exchangeAdmin") == 1
    assert record_type_number("15") == 15 and record_type_number(8) == 8
    assert record_type_number("noSuchType") == "noSuchType"


def test_rows_carry_the_source_mark_and_the_feeds_key() -> None:
    t = datetime(2026, 9, 5, tzinfo=UTC)
    blob = ContentBlob("t1", SEARCH_CONTENT_TYPE, "2026-09-05T00:00:00Z/2026-09-06T00:00:00Z/all", "", t, t)
    search_row = build_rows([unified_record(_item())], blob, t)["AuditRecord"][0]
    feed = ContentBlob("t1", "Audit.Exchange", "blob-1", "", t, t)
    feed_row = build_rows([FEED_RECORD], feed, t)["AuditRecord"][0]
    key = ("Id", "RecordType", "Operation")
    assert [search_row[k] for k in key] == [feed_row[k] for k in key]
    assert search_row["ContentType"] == SEARCH_CONTENT_TYPE
