"""Reads the public sample records in ../shared/samples (never copied into this repo)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "samples"


def sample_files() -> list[Path]:
    """Every record-bearing sample file (JSON lines, or Elastic's pipeline-test envelopes)."""
    files = [p for p in sorted(SAMPLES.rglob("*")) if p.is_file()
             and p.suffix in {".log", ".jsonl", ".json"}]
    assert files, f"no samples under {SAMPLES}"
    return files


def records_of(path: Path) -> list[Any]:
    """The raw records of one sample file, exactly as delivered."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        out = []
        for event in json.loads(text)["events"]:
            original = (event.get("event") or {}).get("original")
            out.append(json.loads(original) if original is not None else event["o365audit"])
        return out
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def all_records() -> Iterator[tuple[Path, Any]]:
    for path in sample_files():
        for record in records_of(path):
            yield path, record
