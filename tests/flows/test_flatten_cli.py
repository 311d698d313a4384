"""`auditlake flatten` over every public sample file: one AuditRecord row per record."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from function_app.lake.schema import AUDIT_RECORD
from tests.flows.conftest import AUDITLAKE
from tests.samples import records_of, sample_files


@pytest.mark.parametrize("path", sample_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_flatten_gives_one_row_per_sample_record(path: Path, tmp_path: Path) -> None:
    records = records_of(path)
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    proc = subprocess.run([AUDITLAKE, "flatten", "--input", str(jsonl)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == len(records)
    for row, record in zip(rows, records, strict=True):
        assert set(row) == set(AUDIT_RECORD.column_names)
        assert row["AuditData"] == record
        assert row["Id"] and row["RecordType"] is not None and row["Operation"] is not None


def test_flatten_reads_a_content_blob_from_stdin() -> None:
    blob = [{"Id": "a", "RecordType": 15, "Operation": "UserLoggedIn", "CreationTime": "2026-11-20T10:00:00",
             "ClientIP": "[2001:db8::1]:443", "UserId": "Alice@Contoso.com"}]
    proc = subprocess.run([AUDITLAKE, "flatten"], input=json.dumps(blob), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    (row,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert row["TimeGenerated"] == "2026-11-20T10:00:00Z"
    assert row["UserPrincipal"] == "alice@contoso.com"
    assert row["ClientIP"] == "2001:db8::1" and row["ClientPort"] == 443


def test_flatten_rejects_garbage_with_one_clear_line() -> None:
    proc = subprocess.run([AUDITLAKE, "flatten"], input="{not json", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith("auditlake: error: input:")
    assert len(proc.stderr.strip().splitlines()) == 1
