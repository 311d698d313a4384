"""The public sample records in ``../shared/samples`` (beside the repository), read at test time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from function_app.records.flatten import BlobContext
from function_app.records.reader import read_records

REPO_ROOT = Path(__file__).resolve().parents[3]
SHARED = REPO_ROOT.parent / "shared"
SAMPLES = SHARED / "samples"
ENUMS_JSON = SHARED / "reference" / "audit-enums.json"

# Files in the corpus that are not records: provenance notes and the raw documentation blocks
# that msdocs_example_records.jsonl was extracted from.
NOT_RECORDS = {"SOURCES.md", "msdocs/INDEX.tsv", "msdocs/msdocs_example_blocks_raw.txt"}


def require_samples() -> None:
    if not SAMPLES.is_dir():
        pytest.skip(f"sample corpus not found at {SAMPLES}", allow_module_level=True)


def sample_files() -> list[str]:
    """Every file of the corpus, relative to SAMPLES, record files and NOT_RECORDS alike."""
    if not SAMPLES.is_dir():
        return []
    return sorted(p.relative_to(SAMPLES).as_posix() for p in SAMPLES.rglob("*") if p.is_file())


def record_files() -> list[str]:
    return [f for f in sample_files() if f not in NOT_RECORDS]


def load(name: str) -> list[Any]:
    """The raw records of one sample file, each exactly as the API would have delivered it."""
    path = SAMPLES / name
    if name.startswith("elastic-integrations/") and name.endswith(".json"):
        # Elastic's pipeline-test envelope: the raw record is event.original when present.
        envelope = json.loads(path.read_text(encoding="utf-8"))
        records = []
        for event in envelope["events"]:
            original = event.get("event", {}).get("original")
            records.append(json.loads(original) if original is not None else event["o365audit"])
        return records
    return read_records(path.read_bytes())


def all_records() -> Iterator[tuple[str, Any]]:
    for name in record_files():
        for record in load(name):
            yield name, record


def blob_context(tenant_id: str = "") -> BlobContext:
    """A BlobContext for tests; tenant "" disables the OrganizationId check."""
    return BlobContext(
        tenant_id=tenant_id,
        content_type="Audit.General",
        content_id="20261120100000000000000000000000000$audit_general$Audit_General$na0034",
        content_created=datetime(2026, 11, 20, 10, 5, tzinfo=UTC),
        ingested_at=datetime(2026, 11, 20, 10, 7, tzinfo=UTC),
    )
