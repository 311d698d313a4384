"""export_lake: every table to one file per table, in each format, read back with the lake's row counts;
a refusal is one line and leaves nothing half-written behind."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from auditlake.export import ExportedTable, ExportError, export_lake
from auditlake.lake.duckdb_lake import LakeCause, LakeUnavailableError, LocalLake
from function_app.lake.schema import TABLES
from function_app.records.flatten import BlobContext
from function_app.records.tables import flatten_tables
from tests.samples import all_records

T0 = datetime(2026, 11, 20, 8, 0, 0, 123456, tzinfo=UTC)
# Objects, not columns: AuditData holds keys that differ only in case (ClientIP, ClientIp), which
# DuckDB's column detection of JSON refuses.
READERS = {"parquet": "read_parquet", "csv": "read_csv", "jsonl": "read_ndjson_objects"}


def make_lake(path: Path) -> Path:
    """A lake holding the sample records (every record table), a ledger row and the lake's own info."""
    records = [r for _, r in all_records() if isinstance(r, dict)][:300]
    assert len(records) > 20
    ctx = BlobContext("t1", "Audit.General", "blob-1", T0, T0)
    lake = LocalLake(path)
    try:
        lake.write_tables(flatten_tables(records, ctx))
        lake.write_tables({"ContentLedger": [{
            "TenantId": "t1", "ContentType": "Audit.General", "ContentId": "blob-1", "ContentUri": "https://x/1",
            "ContentCreated": T0, "ContentExpiration": T0, "ListedAt": T0, "Status": "ingested", "Attempts": 1,
        }]})
        lake.set_info("kind", "test")
    finally:
        lake.close()
    return path


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lake(tmp_path_factory.mktemp("lake") / "lake.duckdb")


def lake_counts(path: Path) -> dict[str, int]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        names = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()]
        return {n: int(con.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0]) for n in names}  # type: ignore[index]
    finally:
        con.close()


def read_back(sql: str) -> tuple[Any, ...]:
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone='UTC'")
        row = con.execute(sql).fetchone()
    finally:
        con.close()
    assert row is not None
    return row


def file_count(path: Path, fmt: str) -> int:
    return int(read_back(f"SELECT count(*) FROM {READERS[fmt]}('{path}')")[0])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_every_table_round_trips_with_its_row_count(lake: Path, tmp_path: Path, fmt: str) -> None:
    before = digest(lake)
    out = tmp_path / "out" / "nested"
    exported = export_lake(lake, out, fmt)
    counts = lake_counts(lake)
    # Every table of the lake, the schema's first in its order, then the lake's own (LakeInfo).
    assert [e.table for e in exported] == [t.name for t in TABLES] + ["LakeInfo"]
    assert set(counts) == {e.table for e in exported}
    assert counts["AuditRecord"] > 20 and counts["ContentLedger"] == 1
    for e in exported:
        assert isinstance(e, ExportedTable)
        assert e.path == out / f"{e.table}.{fmt}" and e.path.is_file()
        assert e.rows == counts[e.table], e.table
        if e.rows:  # DuckDB cannot infer the columns of an empty CSV or JSON file; the count is 0 anyway
            assert file_count(e.path, fmt) == e.rows, e.table
    assert sorted(p.name for p in out.iterdir()) == sorted(e.path.name for e in exported), "a partial file was left"
    assert digest(lake) == before, "the export changed the lake"


def test_datetimes_are_utc_in_every_format(lake: Path, tmp_path: Path) -> None:
    for fmt in ("parquet", "csv", "jsonl"):
        export_lake(lake, tmp_path, fmt, ["ContentLedger"])
    kind, value = read_back(
        f"SELECT typeof(\"ListedAt\"), \"ListedAt\" FROM read_parquet('{tmp_path / 'ContentLedger.parquet'}')")
    assert kind == "TIMESTAMP WITH TIME ZONE" and value == T0
    row = json.loads((tmp_path / "ContentLedger.jsonl").read_text().splitlines()[0])
    assert row["ListedAt"] == "2026-11-20T08:00:00.123456Z"
    assert "2026-11-20T08:00:00.123456Z" in (tmp_path / "ContentLedger.csv").read_text()


def test_json_lines_keep_dynamic_columns_as_json(lake: Path, tmp_path: Path) -> None:
    (e,) = export_lake(lake, tmp_path, "jsonl", ["AuditRecord"])
    rows = [json.loads(line) for line in e.path.read_text().splitlines()]
    assert len(rows) == e.rows
    assert all(isinstance(r["AuditData"], dict) and isinstance(r["Quality"], list) for r in rows)


def test_tables_are_named_case_insensitively_once_each_and_files_are_replaced(lake: Path, tmp_path: Path) -> None:
    (tmp_path / "CollectorRun.csv").write_text("stale\n")
    exported = export_lake(lake, tmp_path, "csv", ["contentledger", "CollectorRun", "ContentLedger"])
    assert [(e.table, e.rows) for e in exported] == [("ContentLedger", 1), ("CollectorRun", 0)]
    assert (tmp_path / "CollectorRun.csv").read_text().startswith("RunId,")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CollectorRun.csv", "ContentLedger.csv"]


def one_line_error(excinfo: pytest.ExceptionInfo[ExportError]) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


def test_unknown_format_and_table_are_refused_before_anything_is_written(lake: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ExportError) as excinfo:
        export_lake(lake, out, "xlsx")
    assert "xlsx" in one_line_error(excinfo) and "parquet, csv, jsonl" in str(excinfo.value)
    with pytest.raises(ExportError) as excinfo:
        export_lake(lake, out, "parquet", ["AuditRecord", "NoSuchTable"])
    message = one_line_error(excinfo)
    assert "NoSuchTable" in message and "ContentLedger" in message
    assert not out.exists()


def test_a_missing_lake_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError) as excinfo:
        export_lake(tmp_path / "nowhere.duckdb", tmp_path / "out")
    assert one_line_error(excinfo) == f"no lake at {tmp_path / 'nowhere.duckdb'}"
    assert not (tmp_path / "nowhere.duckdb").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_an_output_folder_that_cannot_be_made_is_refused(lake: Path, tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    out = blocker if where == "a file" else blocker / "sub"
    with pytest.raises(ExportError) as excinfo:
        export_lake(lake, out)
    assert f"cannot create the output directory {out}" in one_line_error(excinfo)


def test_an_output_folder_that_cannot_be_written_is_refused(
    lake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    if os.access(out, os.W_OK):
        # Root writes whatever the mode says: refuse the probe file as the kernel would for anyone else.
        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    try:
        with pytest.raises(ExportError) as excinfo:
            export_lake(lake, out)
        assert one_line_error(excinfo) == f"cannot write to the output directory {out}: Permission denied"
    finally:
        out.chmod(0o700)
    assert list(out.iterdir()) == []


def test_a_write_that_fails_leaves_neither_the_file_nor_its_temporary(
    lake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(ExportError) as excinfo:
        export_lake(lake, tmp_path, "parquet", ["ContentLedger"])
    assert "ContentLedger" in one_line_error(excinfo) and "No space left on device" in str(excinfo.value)
    assert list(tmp_path.iterdir()) == []


def test_a_lake_held_by_a_collector_raises_the_lakes_own_error(tmp_path: Path) -> None:
    path = make_lake(tmp_path / "held.duckdb")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from auditlake.lake.duckdb_lake import LocalLake; "
         f"lake = LocalLake({str(path)!r}); print('open', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(LakeUnavailableError) as excinfo:
            export_lake(path, tmp_path / "out")
        assert excinfo.value.cause is LakeCause.LOCKED
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert not (tmp_path / "out").exists()
