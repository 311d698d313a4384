"""What a collection run did, read back from the lake itself (so it can be re-checked with KQL)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb

from auditlake.lake.duckdb_lake import naive_utc
from function_app.entra.streams import STREAMS


@dataclass(frozen=True, slots=True)
class ContentTypeSummary:
    content_type: str
    blobs_ingested: int
    blobs_failed: int
    blobs_expired: int
    records: int
    rows: int
    duplicates: int
    # Seconds from the event (CreationTime) to availability at Microsoft (ContentCreated)
    # and from availability to queryable here (IngestedAt): p50, p95, max.
    event_to_available: tuple[float | None, float | None, float | None]
    available_to_ingested: tuple[float | None, float | None, float | None]


_SUMMARY_SQL = """
WITH ledger AS (
    SELECT "ContentType",
           count(*) FILTER (WHERE "Status" = 'ingested') AS ingested,
           count(*) FILTER (WHERE "Status" = 'failed') AS failed,
           count(*) FILTER (WHERE "Status" = 'expired') AS expired,
           coalesce(sum("Records") FILTER (WHERE "Status" = 'ingested'), 0) AS records
    FROM "ContentLedger"
    WHERE coalesce("IngestedAt", "FetchedAt", "ListedAt") >= ?
    GROUP BY 1
), rows AS (
    SELECT "ContentType", count(*) AS n,
           quantile_cont(epoch("ContentCreated") - epoch("TimeGenerated"), 0.5) AS a50,
           quantile_cont(epoch("ContentCreated") - epoch("TimeGenerated"), 0.95) AS a95,
           max(epoch("ContentCreated") - epoch("TimeGenerated")) AS amax,
           quantile_cont(epoch("IngestedAt") - epoch("ContentCreated"), 0.5) AS i50,
           quantile_cont(epoch("IngestedAt") - epoch("ContentCreated"), 0.95) AS i95,
           max(epoch("IngestedAt") - epoch("ContentCreated")) AS imax
    FROM "AuditRecord" WHERE "IngestedAt" >= ?
    GROUP BY 1
    {entra}
)
SELECT l."ContentType", l.ingested, l.failed, l.expired, l.records, coalesce(r.n, 0),
       r.a50, r.a95, r.amax, r.i50, r.i95, r.imax
FROM ledger l LEFT JOIN rows r USING ("ContentType")
ORDER BY 1
"""

# The Entra ID logs' windows are ledger rows too; their rows are in the five Sentinel tables, which
# have no time of availability at Microsoft, so no latency is shown for them here.
_ENTRA_ROWS = "".join(
    f"""UNION ALL SELECT '{s.name}', count(*), NULL, NULL, NULL, NULL, NULL, NULL
    FROM "{s.table}" WHERE "IngestedAt" >= ?
    """ for s in STREAMS)
_SUMMARY_SQL = _SUMMARY_SQL.replace("{entra}", _ENTRA_ROWS)


def summarise(con: duckdb.DuckDBPyConnection, since: datetime) -> list[ContentTypeSummary]:
    """Per content type: blobs by outcome, records delivered, rows kept, and latency."""
    at = naive_utc(since)
    out = []
    for row in con.execute(_SUMMARY_SQL, [at, at] + [at] * len(STREAMS)).fetchall():
        ctype, ingested, failed, expired, records, rows = row[:6]
        lat = [None if v is None else float(v) for v in row[6:]]
        out.append(ContentTypeSummary(
            content_type=str(ctype), blobs_ingested=int(ingested), blobs_failed=int(failed),
            blobs_expired=int(expired), records=int(records), rows=int(rows),
            duplicates=int(records) - int(rows),
            event_to_available=(lat[0], lat[1], lat[2]),
            available_to_ingested=(lat[3], lat[4], lat[5]),
        ))
    return out


def problem_blobs(con: duckdb.DuckDBPyConnection, since: datetime) -> list[tuple[str, str, str, str]]:
    """(content type, content id, status, error) of blobs that did not end ingested."""
    rows = con.execute(
        'SELECT "ContentType", "ContentId", "Status", coalesce("Error", \'\') FROM "ContentLedger" '
        'WHERE "Status" IN (\'failed\', \'expired\') AND coalesce("IngestedAt", "FetchedAt", "ListedAt") >= ? '
        "ORDER BY 1, 2",
        [naive_utc(since)],
    ).fetchall()
    return [(str(a), str(b), str(c), str(d)) for a, b, c, d in rows]
