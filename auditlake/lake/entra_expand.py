"""Entra ID records into the local lake, through the same KQL expansion ADX runs.

ADX expands ``EntraActivityRaw`` into SigninLogs, AADNonInteractiveUserSignInLogs,
AADServicePrincipalSignInLogs, AADManagedIdentitySignInLogs and AuditLogs with the update-policy
functions ``EntraExpand_<Table>()`` (``function_app.lake.entra_schema``). Here the envelopes (the
Graph poller's, or records taken off the hub) are put into a TEMP table of that name for the
duration of the write, and each function's body is translated by duckdb-kql and inserted with
``INSERT OR IGNORE`` on ``Id``: the same text, so the two lakes cannot expand differently.

A record the expansion finds defective (no id, ``properties`` not an object, no time) is kept,
flagged in ``AuditLakeFlag``. An envelope that is not a JSON object, or whose ``category`` is not
one of the five, cannot be routed to a table: the batch is refused with one line naming it,
before anything is written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from function_app.lake.entra_schema import (
    CATEGORIES,
    ENTRA_TABLE_NAMES,
    RAW_TABLE,
    TABLE_OF_CATEGORY,
    expansion_body,
)

_SOURCE = "_entra_envelopes"

CHUNK = 250
"""Envelopes expanded per statement. The expansion's SQL reads each JSON path once per column that
needs it (a sign-in table has ~80), so DuckDB's memory grows with the batch: a Graph page of 1,000
non-interactive sign-ins at once peaked at 1.3 GB RSS, past the lake's memory limit; 250 at a time
at 0.66 GB, taking 5.3 s for the 1,000 (each statement costs ~0.9 s to plan, whatever its size)."""


@cache
def expansion_sql(table: str) -> str:
    """DuckDB SQL of ``EntraExpand_<table>()``'s body over the TEMP ``EntraActivityRaw``."""
    import duckdb_kql

    sql = duckdb_kql.to_sql(expansion_body(table), schema={RAW_TABLE: ["Records"]})
    if sql.parameters:  # the expansion reads no clock and declares no parameter
        raise RuntimeError(f"duckdb-kql translated the {table} expansion with parameters {sorted(sql.parameters)}")
    return str(sql)


def _records(envelopes: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """Each envelope as the JSON text of a one-record ``Records`` array; ValueError (one line)
    for the first that cannot be routed or written."""
    out = []
    for i, envelope in enumerate(envelopes):
        if not isinstance(envelope, Mapping):
            raise ValueError(f"envelope {i}: a {type(envelope).__name__}, not a JSON object")
        category = envelope.get("category")
        if category not in TABLE_OF_CATEGORY:
            raise ValueError(f"envelope {i}: category {category!r} is none of {', '.join(CATEGORIES.values())}")
        try:
            out.append(orjson.dumps([envelope], option=orjson.OPT_NON_STR_KEYS))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"envelope {i} (category {category}): not JSON-serialisable ({exc})") from exc
    return out


def insert_envelopes(con: duckdb.DuckDBPyConnection, envelopes: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Expand *envelopes* into the Entra tables inside the caller's transaction (as ``LocalLake.run``
    gives one); rows newly inserted per table (every Entra table named, 0 when none)."""
    records = _records(envelopes)
    counts = dict.fromkeys(ENTRA_TABLE_NAMES, 0)
    present = {TABLE_OF_CATEGORY[str(e["category"])] for e in envelopes}
    for start in range(0, len(records), CHUNK):
        con.register(_SOURCE, pa.table({"Records": pa.array(records[start:start + CHUNK], type=pa.string())}))
        con.execute(f'CREATE OR REPLACE TEMP TABLE "{RAW_TABLE}" AS SELECT CAST("Records" AS JSON) AS "Records" '
                    f"FROM {_SOURCE}")
        con.unregister(_SOURCE)
        for table in ENTRA_TABLE_NAMES:
            if table not in present:
                continue
            # The projection's columns are the table's, in order (entra_schema builds both from one list).
            inserted = con.execute(f'INSERT OR IGNORE INTO "{table}" SELECT * FROM ({expansion_sql(table)}) '
                                   'RETURNING "Id"').fetchall()
            counts[table] += len(inserted)
        con.execute(f'DROP TABLE temp."{RAW_TABLE}"')
    return counts


def write_envelopes(con: duckdb.DuckDBPyConnection, envelopes: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Expand *envelopes* (diagnostic-settings records, or Graph resources wrapped as one) into the
    Entra tables in one transaction of its own; rows newly inserted per table. A re-delivered
    record (same ``Id``) inserts nothing. Raises ValueError, writing nothing, when an envelope
    cannot be routed (see the module docstring); any failure rolls the whole batch back."""
    con.execute("BEGIN TRANSACTION")
    try:
        counts = insert_envelopes(con, envelopes)
    except BaseException:
        # The first error is the one reported, never one of the clean-up after it.
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
    return counts
