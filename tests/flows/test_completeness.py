"""Completeness and CompletenessByDay (auditlake/kql/functions) on lakes built row by row, and the
functions that must not mistake the Purview search for the feed.

The rows are written through LocalLake.write_tables, as the collector and the search source write
them, so the lake's own rules apply: the first delivery of an AuditRecord key wins, and a later
SearchCount of a key replaces the earlier one.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

import duckdb
import pytest

from auditlake.cli import run_kql
from auditlake.lake.duckdb_lake import LocalLake
from function_app.lake.schema import TABLES, duckdb_ddl

TENANT = "7d1f0c9e-3b2a-4c5d-9e8f-1a2b3c4d5e6f"
SEARCH = "Purview.Search"
NOW = datetime.now(UTC).replace(tzinfo=None)
TODAY = NOW.replace(hour=0, minute=0, second=0, microsecond=0)


def day(n: int) -> datetime:
    """Midnight (UTC) *n* days ago."""
    return TODAY - timedelta(days=n)


_ids = count()


def record(on: datetime, workload: str = "Exchange", record_type: int = 2, content_type: str = "Audit.Exchange",
           *, record_id: str | None = None, name: str = "ExchangeItem") -> dict[str, Any]:
    """An AuditRecord row (the columns Completeness reads, and the key) at 10:00 of day *on*."""
    return {
        "TimeGenerated": on + timedelta(hours=10), "Id": record_id or f"r{next(_ids)}", "TenantId": TENANT,
        "ContentType": content_type, "ContentId": f"{content_type}-blob", "ContentCreated": on + timedelta(hours=11),
        "RecordType": record_type, "RecordTypeName": name, "Operation": "Op", "Workload": workload,
        "IngestedAt": NOW,
    }


def search_count(on: datetime, workload: str, record_type: int, records: int, *, consistent: bool = True,
                 counted_at: datetime = NOW) -> dict[str, Any]:
    return {"TenantId": TENANT, "Day": on, "Workload": workload, "RecordType": record_type,
            "SearchRecords": records, "Consistent": consistent, "CountedAt": counted_at}


def ledger(content_type: str, content_id: str, created: datetime, status: str, *,
           settled: datetime | None = None, records: int = 0) -> dict[str, Any]:
    at = settled or created + timedelta(hours=1)
    return {"TenantId": TENANT, "ContentType": content_type, "ContentId": content_id, "ContentCreated": created,
            "ListedAt": at, "FetchedAt": at, "IngestedAt": at if status == "ingested" else None,
            "Records": records, "Status": status, "Attempts": 1, "Error": "" if status == "ingested" else "boom"}


@pytest.fixture
def lake(tmp_path: Path) -> Iterator[LocalLake]:
    opened = LocalLake(tmp_path / "lake.duckdb")
    yield opened
    opened.close()


def rows(lake: LocalLake, query: str) -> list[dict[str, Any]]:
    columns, _, found = run_kql(lake.connection, query)
    return [dict(zip(columns, r, strict=True)) for r in found]


def completeness(lake: LocalLake, query: str = "Completeness") -> dict[tuple[datetime, str, int], dict[str, Any]]:
    found = rows(lake, query)
    assert all(r["TenantId"] == TENANT for r in found)
    by_key = {(r["Day"], r["Workload"], r["RecordType"]): r for r in found}
    assert len(by_key) == len(found), "one row per tenant, day, workload and record type"
    return by_key


def by_day(lake: LocalLake) -> dict[datetime, dict[str, Any]]:
    return {r["Day"]: r for r in rows(lake, "CompletenessByDay")}


# -- each status from the rows that make it ---------------------------------------------------------


def test_each_status_arises_from_the_rows_that_should_produce_it(lake: LocalLake) -> None:
    lake.write_tables({
        "AuditRecord": [
            record(day(9)),                                                       # never searched
            *[record(day(8)) for _ in range(2)],                                  # Purview counts 3
            *[record(day(7), "SharePoint", 6, "Audit.SharePoint", name="SharePointFileOperation")
              for _ in range(3)],                                                 # Purview counts 2
            record(day(7), "SharePoint", 4, "Audit.SharePoint", name="SharePoint"),  # Purview counts none
            record(day(6), "AzureActiveDirectory", 15, "Audit.AzureActiveDirectory", name="AzureActiveDirectory"),
            *[record(day(5)) for _ in range(2)],                                  # Purview counts 2
        ],
        "SearchCount": [
            search_count(day(8), "Exchange", 2, 3),
            search_count(day(8), "Exchange", 50, 1),        # a record type the lake has none of
            search_count(day(7), "SharePoint", 6, 2),
            search_count(day(6), "AzureActiveDirectory", 15, 1, consistent=False),
            search_count(day(5), "Exchange", 2, 2),
        ],
    })
    found = completeness(lake)
    assert {k: r["Status"] for k, r in found.items()} == {
        (day(9), "Exchange", 2): "not-searched",
        (day(8), "Exchange", 2): "missing",
        (day(8), "Exchange", 50): "missing",
        (day(7), "SharePoint", 6): "feed-only",
        (day(7), "SharePoint", 4): "feed-only",
        (day(6), "AzureActiveDirectory", 15): "unverified",
        (day(5), "Exchange", 2): "complete",
    }
    never = found[day(9), "Exchange", 2]
    assert (never["FeedRecords"], never["LakeRecords"], never["SearchRecords"]) == (1, 1, None)
    assert never["CountedAt"] is None
    assert never["MissingRecords"] is None and never["FeedOnlyRecords"] is None
    missing = found[day(8), "Exchange", 2]
    assert (missing["LakeRecords"], missing["SearchRecords"]) == (2, 3)
    assert (missing["MissingRecords"], missing["FeedOnlyRecords"]) == (1, 0)
    only_purview = found[day(8), "Exchange", 50]
    assert (only_purview["LakeRecords"], only_purview["MissingRecords"], only_purview["RecordTypeName"]) == (0, 1, "")
    feed_only = found[day(7), "SharePoint", 6]
    assert (feed_only["FeedRecords"], feed_only["SearchRecords"], feed_only["FeedOnlyRecords"]) == (3, 2, 1)
    assert feed_only["RecordTypeName"] == "SharePointFileOperation"
    # The day and workload were searched and Purview counted no record of type 4: it has none.
    uncounted = found[day(7), "SharePoint", 4]
    assert (uncounted["SearchRecords"], uncounted["FeedOnlyRecords"], uncounted["CountedAt"]) == (0, 1, NOW)
    complete = found[day(5), "Exchange", 2]
    assert (complete["FeedRecords"], complete["SearchOnlyRecords"], complete["SearchRecords"]) == (2, 0, 2)

    days = by_day(lake)
    assert {d: r["Status"] for d, r in days.items()} == {
        day(9): "not-searched", day(8): "missing", day(7): "feed-only", day(6): "unverified", day(5): "complete"}
    assert (days[day(8)]["Pairs"], days[day(8)]["Missing"], days[day(8)]["MissingRecords"]) == (2, 2, 2)
    assert (days[day(7)]["FeedOnly"], days[day(7)]["FeedOnlyRecords"]) == (2, 2)


def test_an_inconsistent_count_leaves_the_days_uncounted_types_unverified_too(lake: LocalLake) -> None:
    lake.write_tables({
        "AuditRecord": [record(day(4), record_type=2), record(day(4), record_type=3)],
        "SearchCount": [search_count(day(4), "Exchange", 2, 1, consistent=False)],
    })
    found = completeness(lake)
    assert found[day(4), "Exchange", 3]["Status"] == "unverified"
    assert found[day(4), "Exchange", 3]["SearchRecords"] == 0


def search_slice(start: datetime, end: datetime, service: str, status: str = "ingested") -> dict[str, Any]:
    """A ContentLedger row of a search slice, as the search source writes it (ContentExpiration its end)."""
    row = ledger(SEARCH, f"{start:%Y-%m-%dT%H:%M:%SZ}/{end:%Y-%m-%dT%H:%M:%SZ}/{service}", start, status)
    return {**row, "ContentExpiration": end}


def test_an_ingested_whole_day_slice_makes_the_day_searched_even_when_it_found_nothing(lake: LocalLake) -> None:
    # Purview had none of these records, so the search wrote no count for them, only its slices.
    lake.write_tables({
        "AuditRecord": [record(d, w, t) for d in (day(3), day(4), day(5), day(6))
                        for w, t in (("Exchange", 2), ("SharePoint", 6))],
        "ContentLedger": [
            search_slice(day(3), day(2), "all"),                                   # every workload
            search_slice(day(4), day(3), "Exchange"),                              # that workload only
            search_slice(day(5) + timedelta(hours=6), day(4), "all"),              # part of the day: no count
            search_slice(day(6), day(5), "all", status="failed"),
        ],
    })
    status = {k: (r["Status"], r["SearchRecords"]) for k, r in completeness(lake).items()}
    assert status == {
        (day(3), "Exchange", 2): ("feed-only", 0), (day(3), "SharePoint", 6): ("feed-only", 0),
        (day(4), "Exchange", 2): ("feed-only", 0), (day(4), "SharePoint", 6): ("not-searched", None),
        (day(5), "Exchange", 2): ("not-searched", None), (day(5), "SharePoint", 6): ("not-searched", None),
        (day(6), "Exchange", 2): ("not-searched", None), (day(6), "SharePoint", 6): ("not-searched", None),
    }


# -- the backfill --------------------------------------------------------------------------------------


def test_after_the_backfill_the_day_reads_complete(lake: LocalLake) -> None:
    feed = [record(day(3)) for _ in range(4)]
    lake.write_tables({"AuditRecord": feed, "SearchCount": [search_count(day(3), "Exchange", 2, 6)]})
    before = completeness(lake)[day(3), "Exchange", 2]
    assert (before["Status"], before["MissingRecords"]) == ("missing", 2)
    assert by_day(lake)[day(3)]["Status"] == "missing"

    # The search delivers all six: the four the feed had keep their feed row (the first delivery of a
    # key wins), the two it never delivered arrive as Purview.Search.
    again = [{**r, "ContentType": SEARCH, "ContentId": "slice"} for r in feed]
    backfill = [record(day(3), content_type=SEARCH) for _ in range(2)]
    lake.write_tables({"AuditRecord": again + backfill})
    after = completeness(lake)[day(3), "Exchange", 2]
    assert (after["Status"], after["FeedRecords"], after["SearchOnlyRecords"], after["LakeRecords"]) == (
        "complete", 4, 2, 6)
    assert (after["MissingRecords"], after["FeedOnlyRecords"]) == (0, 0)
    assert by_day(lake)[day(3)]["Status"] == "complete"


def test_a_feed_only_record_hidden_by_a_missing_one_shows_after_the_backfill(lake: LocalLake) -> None:
    # Counts, not ids: one record only the feed has and one only Purview has cancel out until the
    # backfill brings Purview's; then the feed's one stands out.
    lake.write_tables({"AuditRecord": [record(day(2)), record(day(2))],
                       "SearchCount": [search_count(day(2), "Exchange", 2, 2)]})
    assert completeness(lake)[day(2), "Exchange", 2]["Status"] == "complete"
    lake.write_tables({"AuditRecord": [record(day(2), content_type=SEARCH)]})
    after = completeness(lake)[day(2), "Exchange", 2]
    assert (after["Status"], after["FeedOnlyRecords"], after["SearchOnlyRecords"]) == ("feed-only", 1, 1)


def test_a_record_delivered_twice_counts_once(lake: LocalLake) -> None:
    twice = record(day(2), record_id="same")
    lake.write_tables({"AuditRecord": [twice]})
    lake.write_tables({"AuditRecord": [{**twice, "ContentId": "another-blob"}]})
    lake.write_tables({"AuditRecord": [{**twice, "ContentType": SEARCH, "ContentId": "slice"}]})
    lake.write_tables({"SearchCount": [search_count(day(2), "Exchange", 2, 1)]})
    row = completeness(lake)[day(2), "Exchange", 2]
    assert (row["FeedRecords"], row["SearchOnlyRecords"], row["LakeRecords"], row["Status"]) == (1, 0, 1, "complete")


def test_the_latest_count_holds(lake: LocalLake) -> None:
    lake.write_tables({"AuditRecord": [record(day(2)) for _ in range(3)]})
    early, late = NOW - timedelta(hours=5), NOW - timedelta(hours=1)
    # Within one batch and across batches, whatever the order they are written in.
    lake.write_tables({"SearchCount": [search_count(day(2), "Exchange", 2, 5, consistent=False, counted_at=early),
                                       search_count(day(2), "Exchange", 2, 3, counted_at=late)]})
    lake.write_tables({"SearchCount": [search_count(day(2), "Exchange", 2, 9, counted_at=early)]})
    stored = lake.connection.execute('SELECT "SearchRecords", "Consistent", "CountedAt" FROM "SearchCount"').fetchall()
    assert stored == [(3, True, late)]
    row = completeness(lake)[day(2), "Exchange", 2]
    assert (row["SearchRecords"], row["Status"], row["CountedAt"]) == (3, "complete", late)
    # A recount replaces it, even one that finds fewer.
    lake.write_tables({"SearchCount": [search_count(day(2), "Exchange", 2, 2, counted_at=NOW)]})
    assert completeness(lake)[day(2), "Exchange", 2]["Status"] == "feed-only"


def test_the_function_reads_the_latest_of_several_counts_as_adx_keeps_them() -> None:
    # ADX appends every count; the local table's key forbids that, so a keyless copy stands in.
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone='UTC'")
    for table in TABLES:
        ddl = duckdb_ddl(table)
        if table.name == "SearchCount":
            ddl = ddl.replace(',\n    PRIMARY KEY ("TenantId", "Day", "Workload", "RecordType")', "")
        con.execute(ddl)
    con.executemany('INSERT INTO "SearchCount" VALUES (?, ?, ?, ?, ?, ?, ?)', [
        (TENANT, day(2), "Exchange", 2, 5, False, NOW - timedelta(hours=2)),
        (TENANT, day(2), "Exchange", 2, 1, True, NOW - timedelta(hours=1)),
    ])
    con.execute('INSERT INTO "AuditRecord" ("Id", "RecordType", "Operation", "TenantId", "ContentType", '
                '"TimeGenerated", "Workload") VALUES (\'x\', 2, \'Op\', ?, \'Audit.Exchange\', ?, \'Exchange\')',
                [TENANT, day(2) + timedelta(hours=3)])
    columns, _, found = run_kql(con, "Completeness")
    [row] = [dict(zip(columns, r, strict=True)) for r in found]
    assert (row["SearchRecords"], row["Status"]) == (1, "complete")


def test_lookback_bounds_the_days(lake: LocalLake) -> None:
    lake.write_tables({"AuditRecord": [record(day(40)), record(day(2))],
                       "SearchCount": [search_count(day(40), "Exchange", 2, 1)]})
    assert set(completeness(lake, "Completeness(30d)")) == {(day(2), "Exchange", 2)}
    assert set(completeness(lake)) == {(day(40), "Exchange", 2), (day(2), "Exchange", 2)}


def test_a_lake_made_before_the_table_gains_it_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    for table in TABLES:
        if table.name != "SearchCount":
            con.execute(duckdb_ddl(table))
    con.close()
    opened = LocalLake(path)
    try:
        opened.write_tables({"SearchCount": [search_count(day(1), "Exchange", 2, 1)]})
        assert rows(opened, "SearchCount | count") == [{"Count": 1}]
    finally:
        opened.close()


# -- the search is not the feed --------------------------------------------------------------------------


def _slice_and_blob(lake: LocalLake, content_type: str, status: str) -> None:
    """A ledger row of *content_type* that, were it a feed blob, would be in trouble: created 10 days
    ago (past the 7 days Microsoft serves a blob), not ingested, and the feed's last word 10 days ago."""
    created = day(10)
    lake.write_tables({"ContentLedger": [{**ledger(content_type, f"{created:%Y-%m-%dT%H:%M:%SZ}/x/Exchange", created,
                                                   status, settled=NOW - timedelta(hours=2)),
                                            "ContentExpiration": created + timedelta(days=1)}]})


@pytest.mark.parametrize("status", ["failed", "queued"])
def test_a_search_slice_is_not_a_blob_in_trouble(lake: LocalLake, status: str) -> None:
    _slice_and_blob(lake, SEARCH, status)
    assert rows(lake, "LedgerHealth") == []
    assert rows(lake, "HealthChecks") == []
    assert rows(lake, "LogFlowGaps") == []


@pytest.mark.parametrize("status", ["failed", "queued"])
def test_the_same_row_of_a_feed_is_reported(lake: LocalLake, status: str) -> None:
    # The control of the test above: only the content type differs.
    _slice_and_blob(lake, "Audit.Exchange", status)
    assert [r["ContentType"] for r in rows(lake, "LedgerHealth")] == ["Audit.Exchange"]
    checks = {r["Check"] for r in rows(lake, "HealthChecks")}
    assert checks == {"LogFlowGap", "BlobFailed" if status == "failed" else "BlobNearExpiry"}
    assert [(r["ContentType"], r["Ongoing"]) for r in rows(lake, "LogFlowGaps")] == [("Audit.Exchange", True)]


def test_backfilled_records_are_not_timed_as_latency(lake: LocalLake) -> None:
    lake.write_tables({"AuditRecord": [record(day(1)), record(day(20), content_type=SEARCH)]})
    assert [r["ContentType"] for r in rows(lake, "AuditLatency")] == ["Audit.Exchange"]
