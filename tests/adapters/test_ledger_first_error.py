"""Both ledgers keep what a blob first failed with (``model.first_error``) through every later mark:
Table Storage against real Azurite, the local lake on a real DuckDB file, the same steps and the same rows."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from auditlake.lake.duckdb_lake import LocalLake
from function_app.core.model import BlobStatus, ContentBlob
from function_app.core.ports import StateStore
from function_app.state.table import TableStateStore, encode_key, partition_key
from tests.azurite import Azurite

TENANT = "11111111-2222-3333-4444-555555555555"
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)

# A transient failure left queued, a failure, a replay's requeue, another failure, then ingestion.
STEPS: list[tuple[BlobStatus, str | None]] = [
    (BlobStatus.QUEUED, "TransientApiError: 503; the queue retries"),
    (BlobStatus.FAILED, "MalformedContentError: cut off"),
    (BlobStatus.QUEUED, "replay: re-enqueued (previous error: MalformedContentError: cut off)"),
    (BlobStatus.FAILED, "PermanentApiError: 401"),
    (BlobStatus.INGESTED, None),
]
EXPECTED = [
    ("queued", 1, "TransientApiError: 503; the queue retries", None),
    ("failed", 2, "MalformedContentError: cut off", "MalformedContentError: cut off"),
    ("queued", 3, "replay: re-enqueued (previous error: MalformedContentError: cut off)",
     "MalformedContentError: cut off"),
    ("failed", 4, "PermanentApiError: 401", "MalformedContentError: cut off"),
    ("ingested", 5, None, "MalformedContentError: cut off"),
]


def _blob(cid: str) -> ContentBlob:
    return ContentBlob(TENANT, "Audit.Exchange", cid,
                       f"https://manage.office.com/api/v1.0/{TENANT}/activity/feed/audit/{cid}",
                       NOW - timedelta(hours=1), NOW + timedelta(days=6))


def _shape(row: Mapping[str, Any] | None) -> tuple[Any, ...]:
    assert row is not None
    return row["Status"], row["Attempts"], row.get("Error"), row.get("FirstError")


async def _steps(state: StateStore, blob: ContentBlob) -> list[tuple[Any, ...]]:
    await state.register_listed([blob], NOW)
    return [_shape(await state.mark(blob, status, at=NOW + timedelta(minutes=i), error=error))
            for i, (status, error) in enumerate(STEPS)]


def _table_store(azurite: Azurite) -> TableStateStore:
    suffix = uuid.uuid4().hex[:10]
    return TableStateStore.from_connection_string(
        azurite.connection_string, checkpoints_table=f"Cp{suffix}", ledger_table=f"Led{suffix}",
        runs_table=f"Run{suffix}", clock=lambda: NOW)


def test_table_storage_keeps_the_first_error_in_the_row_it_writes_and_stores(azurite: Azurite) -> None:
    async def run() -> tuple[list[tuple[Any, ...]], tuple[Any, ...]]:
        async with _table_store(azurite) as store:
            blob = _blob("a")
            written = await _steps(store, blob)
            return written, _shape(await store.ledger_row(blob))

    written, stored = asyncio.run(run())
    assert written == EXPECTED
    assert stored == EXPECTED[-1]


def test_the_local_lake_writes_the_same_rows(tmp_path: Path) -> None:
    async def run() -> list[tuple[Any, ...]]:
        lake = LocalLake(tmp_path / "lake.duckdb")
        try:
            return await _steps(lake.state_store(), _blob("a"))
        finally:
            lake.close()

    assert asyncio.run(run()) == EXPECTED


def test_a_table_row_failed_before_first_error_existed_keeps_its_error_when_replayed(azurite: Azurite) -> None:
    async def run() -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        async with _table_store(azurite) as store:
            blob = _blob("old")
            await store.register_listed([blob], NOW)
            # As an earlier version left it: failed, with an Error and no FirstError property.
            ledger = await store._ledger()
            entity = await ledger.get_entity(partition_key(TENANT, blob.content_type), encode_key(blob.content_id))
            entity.update(Status="failed", Attempts=1, Error="MalformedContentError: cut off")
            await ledger.upsert_entity(entity)
            requeued = _shape(await store.mark(blob, BlobStatus.QUEUED, at=NOW, error="replay: re-enqueued"))
            ingested = _shape(await store.mark(blob, BlobStatus.INGESTED, at=NOW))
            return requeued, ingested

    requeued, ingested = asyncio.run(run())
    assert requeued == ("queued", 2, "replay: re-enqueued", "MalformedContentError: cut off")
    assert ingested == ("ingested", 3, None, "MalformedContentError: cut off")
