"""The derived tables' rows follow the ``AuditRecord`` rows kept (``FOLLOWS_AUDIT_RECORD``).

A lake made now gives MailItemAccess, SignIn and DirectoryChange no key of their own: their rows
are written only for the records whose ``AuditRecord`` row the same statement kept, once per
derived key. These tests hold that to what the keys gave: the same rows as a lake made before
(keyed tables, ``OR IGNORE``), one per key, whatever is delivered twice.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from auditlake.emulator.tenant import SyntheticTenant
from auditlake.lake.duckdb_lake import FOLLOWS_AUDIT_RECORD, LocalLake, insert_blobs
from function_app.lake.schema import TABLES_BY_NAME, duckdb_ddl
from function_app.records.flatten import BlobContext
from function_app.records.tables import flatten_tables
from tests.unit.records._samples import all_records, require_samples

TENANT = "6a1f0c3e-8d2b-4e7f-9a5c-0b1d2e3f4a5b"
T0 = datetime(2026, 12, 6, tzinfo=UTC)
DERIVED = tuple(FOLLOWS_AUDIT_RECORD)


def keyed_lake(path: Path) -> LocalLake:
    """A lake as an earlier version made it: the derived tables keyed."""
    con = duckdb.connect(str(path))
    for name in DERIVED:
        con.execute(duckdb_ddl(TABLES_BY_NAME[name]))
    con.close()
    return LocalLake(path)


def primary_keys(lake: LocalLake) -> set[str]:
    with lake.locked() as con:
        rows = con.execute("SELECT table_name FROM duckdb_constraints() WHERE constraint_type = 'PRIMARY KEY' "
                           "AND database_name = current_database()").fetchall()
    return {str(r[0]) for r in rows}


def write_groups(lake: LocalLake, groups: list[list[dict[str, Any]]]) -> None:
    for group in groups:
        with lake.locked() as con:
            con.execute("BEGIN TRANSACTION")
            insert_blobs(con, group)
            con.execute("COMMIT")


def stored(lake: LocalLake, name: str) -> list[tuple[Any, ...]]:
    with lake.locked() as con:
        return sorted(con.execute(f'SELECT * FROM "{name}"').fetchall(), key=repr)


def distinct_keys(lake: LocalLake, name: str) -> tuple[int, int]:
    key = ", ".join(f'"{k}"' for k in TABLES_BY_NAME[name].key)
    with lake.locked() as con:
        row = con.execute(f'SELECT count(*), count(DISTINCT ({key})) FROM "{name}"').fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def emulator_blobs() -> list[dict[str, Any]]:
    """A day of the emulator's tenant, blob by blob: it re-delivers records in later blobs, as the
    service does, and a DLP match and its undo share an Id."""
    tenant = SyntheticTenant.generate(TENANT, seed=5, now=T0, days=1, records_per_day=3000)
    out = []
    for blob in tenant.blobs:
        ctx = BlobContext(TENANT, blob.content_type, blob.content_id, blob.content_created, T0)
        out.append(flatten_tables(orjson.loads(blob.served_body), ctx))
    return out


def test_the_derived_rows_are_those_a_keyed_lake_keeps_one_per_key_through_every_repeat(tmp_path: Path) -> None:
    blobs = emulator_blobs()
    # Commit groups as the collector makes them, then the first groups delivered again, and a
    # group holding one blob twice beside another: repeats across commits and within one.
    groups = [blobs[i:i + 7] for i in range(0, len(blobs), 7)]
    groups += [*groups[:3], [blobs[5], blobs[6], blobs[5]]]
    new, old = LocalLake(tmp_path / "new.duckdb"), keyed_lake(tmp_path / "old.duckdb")
    write_groups(new, groups)
    write_groups(old, groups)

    assert primary_keys(new) & set(DERIVED) == set() and "AuditRecord" in primary_keys(new)
    assert set(DERIVED) <= primary_keys(old)
    assert (new.keyed_derived, old.keyed_derived) == (frozenset(), frozenset(DERIVED))
    for name in DERIVED:
        delivered = [row for tables in blobs for row in tables[name]]
        keys = {tuple(row[k] for k in TABLES_BY_NAME[name].key) for row in delivered}
        count, distinct = distinct_keys(new, name)
        assert count == distinct == len(keys) > 0, (name, count, distinct, len(keys), len(delivered))
        assert stored(new, name) == stored(old, name), name


def test_the_public_samples_keep_the_same_derived_rows_as_a_keyed_lake(tmp_path: Path) -> None:
    require_samples()
    ctx = BlobContext("", "Audit.General", "samples", T0, T0)
    tables = flatten_tables([record for _, record in all_records()], ctx)
    new, old = LocalLake(tmp_path / "new.duckdb"), keyed_lake(tmp_path / "old.duckdb")
    for lake in (new, old):
        # Through the lake's own writer (its keyed tables read when it opened), then again by blobs.
        lake.write_tables(tables)
        write_groups(lake, [[tables], [tables, tables]])
    for name in DERIVED:
        count, distinct = distinct_keys(new, name)
        assert count == distinct > 0, name
        assert stored(new, name) == stored(old, name), name


def mail_record(operation: str, *, items: int = 2) -> dict[str, Any]:
    folder_items = [{"InternetMessageId": f"<m{i}@contoso.example>", "SizeInBytes": 100 + i} for i in range(items)]
    return {"Id": "0b6e3c1d-2f4a-4b5c-8d9e-0a1b2c3d4e5f", "RecordType": 50, "Operation": operation,
            "CreationTime": "2026-12-05T10:00:00", "UserId": "a@contoso.example", "Workload": "Exchange",
            "MailboxOwnerUPN": "a@contoso.example",
            "Folders": [{"Path": "\\Inbox", "FolderItems": folder_items + folder_items[:1]}]}


def test_a_record_kept_under_another_operation_does_not_bring_a_mail_record_s_rows_again(tmp_path: Path) -> None:
    ctx = BlobContext(TENANT, "Audit.Exchange", "a", T0, T0)
    lake = LocalLake(tmp_path / "l.duckdb")
    write_groups(lake, [[flatten_tables([mail_record("MailItemsAccessed")], ctx)]])
    first = stored(lake, "MailItemAccess")
    # The mail record again, beside a new record with its Id and another operation: that one's
    # AuditRecord row is kept, and must not count as the mail record's.
    again = flatten_tables([mail_record("MailItemsAccessed"), mail_record("SoftDelete")], ctx)
    write_groups(lake, [[again]])
    with lake.locked() as con:
        audit = con.execute('SELECT count(*) FROM "AuditRecord"').fetchone()
    assert audit == (2,)
    # An item the record lists twice is one row.
    assert len(first) == 2 and stored(lake, "MailItemAccess") == first


def test_derived_rows_without_the_records_they_come_from_are_refused_by_name(tmp_path: Path) -> None:
    ctx = BlobContext(TENANT, "Audit.Exchange", "a", T0, T0)
    tables = flatten_tables([mail_record("MailItemsAccessed")], ctx)
    lake = LocalLake(tmp_path / "l.duckdb")
    with lake.locked() as con, pytest.raises(ValueError, match="MailItemAccess rows are written only with the "
                                                               "AuditRecord rows they come from"):
        insert_blobs(con, [{"MailItemAccess": tables["MailItemAccess"]}])
