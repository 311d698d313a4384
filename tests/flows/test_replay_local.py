"""``auditlake replay`` of a local emulator run: the blob is re-driven against the root it was collected
from, the ledger keeps what it first failed with beside the latest attempt, and a content URI on any
other host is refused without a request reaching it.

The emulator serves over HTTP in this process (so a test can fix the blob at the source between runs),
and ``auditlake`` runs as the user runs it, as a subprocess.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from aiohttp import web

from auditlake.emulator.server import EmulatorServer
from auditlake.emulator.tenant import EmulatedBlob
from auditlake.lake.duckdb_lake import LocalLake
from auditlake.state.local import _apply_marks
from function_app.core.model import BlobStatus, ContentBlob, first_error
from function_app.lake.schema import CONTENT_LEDGER, Table, duckdb_add_missing, duckdb_ddl
from tests.flows.conftest import AUDITLAKE, REPO, collect_env

TENANT = "5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d"
CUT_OFF = "not valid JSON (cut off or corrupt)"


async def _auditlake(*args: str) -> subprocess.CompletedProcess[str]:
    # In a thread: the emulator answering the subprocess runs on this event loop.
    return await asyncio.to_thread(subprocess.run, [AUDITLAKE, *args], env=collect_env(), cwd=REPO,
                                   capture_output=True, text=True, timeout=300)


def _row(lake: Path, content_id: str) -> dict[str, Any]:
    con = duckdb.connect(str(lake), read_only=True)
    try:
        cur = con.execute('SELECT * FROM "ContentLedger" WHERE "ContentId" = ?', [content_id])
        names = [d[0] for d in cur.description or ()]
        rows = cur.fetchall()
    finally:
        con.close()
    assert len(rows) == 1, rows
    return dict(zip(names, rows[0], strict=True))


def _record_keys(lake: Path, content_id: str) -> set[tuple[Any, ...]]:
    """The keys of the blob's AuditRecord rows read whole (not flagged as cut off)."""
    con = duckdb.connect(str(lake), read_only=True)
    try:
        return set(con.execute(
            'SELECT "Id", "RecordType", "Operation" FROM "AuditRecord" WHERE "ContentId" = ? '
            "AND NOT contains(CAST(\"Quality\" AS VARCHAR), 'cut-off')", [content_id]).fetchall())
    finally:
        con.close()


def _items(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = orjson.loads(proc.stdout)["items"]
    return items


def _cut_off_blob(emu: EmulatorServer) -> EmulatedBlob:
    """The one blob the ``cutoff=1`` fault cuts off."""
    (bad,) = [b for b in emu.state.tenants[TENANT].blobs if b.cutoff]
    return bad


@asynccontextmanager
async def _collected(tmp_path: Path) -> AsyncIterator[tuple[EmulatorServer, EmulatedBlob, Path]]:
    """An emulator with one blob always cut off, and a lake `collect --api-root` filled from it."""
    async with EmulatorServer([TENANT], seed=12, days=0.5, records_per_day=120, scenario="quiet",
                              faults="cutoff=1") as emu:
        bad = _cut_off_blob(emu)
        lake = tmp_path / "lake.duckdb"
        collected = await _auditlake("collect", "--once", "--quiet", "--tenant-id", TENANT, "--api-root",
                                     emu.api_root, "--lake", str(lake))
        assert collected.returncode == 1 and "1 blob(s) failed" in collected.stderr, collected.stderr
        yield emu, bad, lake


def test_a_blob_of_an_emulator_run_is_replayed_against_its_root_and_keeps_its_first_error(tmp_path: Path) -> None:
    async def run() -> None:
        async with _collected(tmp_path) as (emu, bad, lake):
            first = _row(lake, bad.content_id)
            assert first["Status"] == "failed" and first["Attempts"] == 1
            assert _record_keys(lake, bad.content_id) != {tuple(k) for k in bad.record_keys}
            assert CUT_OFF in first["Error"] and first["FirstError"] == first["Error"]

            # Without the root it was collected from, replay would send the token to the cloud's host
            # for a URI on another: refused before any request, the row as it was, the way out named.
            bare = await _auditlake("replay", "--lake", str(lake), "--tenant-id", TENANT, "--format", "json")
            assert bare.returncode == 1
            (item,) = _items(bare)
            assert item["action"] == "refused" and item["contentId"] == bad.content_id
            assert f"--api-root {emu.api_root}" in item["detail"]
            assert _row(lake, bad.content_id) == first

            # A second failure of another kind replaces Error, never FirstError.
            emu.state.token = "not-the-token-the-collector-sends"
            base = ["--lake", str(lake), "--tenant-id", TENANT, "--api-root", emu.api_root, "--format", "json"]
            again = await _auditlake("replay", *base)
            assert again.returncode == 1
            assert [i["action"] for i in _items(again)] == ["failed"]
            second = _row(lake, bad.content_id)
            assert second["Status"] == "failed" and second["Attempts"] == 2
            assert "401" in second["Error"] and CUT_OFF not in second["Error"]
            assert second["FirstError"] == first["Error"]

            # Fixed at the source: the replay ingests it, and the row still says why it first failed.
            emu.state.token = None
            bad.cutoff = False
            fixed = await _auditlake("replay", *base)
            assert fixed.returncode == 0, fixed.stderr
            assert [i["action"] for i in _items(fixed)] == ["ingested"]
            done = _row(lake, bad.content_id)
            assert done["Status"] == "ingested" and done["Attempts"] == 3 and done["Error"] is None
            assert done["FirstError"] == first["Error"]
            assert done["Records"] == len(bad.record_keys)
            assert _record_keys(lake, bad.content_id) == {tuple(k) for k in bad.record_keys}

            shown = await _auditlake("query", "--lake", str(lake), "--format", "json",
                                     "ContentLedger | where isnotempty(FirstError) "
                                     "| project ContentId, Status, Attempts, FirstError, Error")
            assert shown.returncode == 0, shown.stderr
            assert orjson.loads(shown.stdout) == [{"ContentId": bad.content_id, "Status": "ingested", "Attempts": 3,
                                                   "FirstError": first["Error"], "Error": None}]

    asyncio.run(run())


def test_a_forged_content_uri_is_refused_and_no_request_reaches_its_host(tmp_path: Path) -> None:
    """The ledger names a URI; only the operator's --api-root says where the token may go."""
    seen: list[tuple[str, str | None]] = []

    async def trap(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("Authorization")))
        return web.json_response([])

    async def run() -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", trap)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with _collected(tmp_path) as (emu, bad, lake):
                forged = f"http://127.0.0.1:{port}/api/v1.0/{TENANT}/activity/feed/audit/{bad.content_id}"
                con = duckdb.connect(str(lake))
                con.execute('UPDATE "ContentLedger" SET "ContentUri" = ? WHERE "ContentId" = ?',
                            [forged, bad.content_id])
                con.close()
                before = _row(lake, bad.content_id)
                bad.cutoff = False
                proc = await _auditlake("replay", "--lake", str(lake), "--tenant-id", TENANT, "--api-root",
                                        emu.api_root, "--format", "json")
                assert proc.returncode == 1
                (item,) = _items(proc)
                assert item["action"] == "refused"
                assert f"127.0.0.1:{port} is not the Management API host" in item["detail"]
                assert _row(lake, bad.content_id) == before
                planned = await _auditlake("replay", "--dry-run", "--lake", str(lake), "--tenant-id", TENANT,
                                           "--api-root", emu.api_root, "--format", "json")
                assert [i["action"] for i in _items(planned)] == ["refused"]
        finally:
            await runner.cleanup()
        assert seen == [], "a request (and the bearer token) went to the forged host"

    asyncio.run(run())


# -- the ledger's FirstError, without the emulator -------------------------------------------------

NOW = datetime(2026, 1, 5, 12, tzinfo=UTC)


def _blob(cid: str) -> ContentBlob:
    return ContentBlob(TENANT, "Audit.General", cid, f"https://manage.office.com/api/v1.0/{TENANT}/activity/feed/audit/"
                       f"{cid}", NOW - timedelta(hours=2), NOW + timedelta(days=6))


def test_first_error_is_the_first_failure_and_never_a_note_on_an_unsettled_row() -> None:
    f, q, i, x = BlobStatus.FAILED, BlobStatus.QUEUED, BlobStatus.INGESTED, BlobStatus.EXPIRED
    assert first_error({"Status": "queued"}, q, "throttled, retrying") is None
    assert first_error({"Status": "queued", "Error": "throttled"}, f, "cut off") == "cut off"
    assert first_error({"Status": "failed", "Error": "cut off", "FirstError": "cut off"}, f, "401") == "cut off"
    assert first_error({"Status": "failed", "Error": "cut off", "FirstError": "cut off"}, i, None) == "cut off"
    assert first_error({"Status": "ingested"}, x, "AF20051") == "AF20051"
    # A row written before FirstError existed: its Error is the earliest failure the store knows.
    assert first_error({"Status": "failed", "Error": "cut off"}, q, "replay: re-enqueued") == "cut off"
    assert first_error({"Status": "ingested", "Error": None}, i, None) is None


def test_the_lake_keeps_the_first_error_through_requeues_failures_and_ingestion(tmp_path: Path) -> None:
    async def run() -> list[tuple[Any, ...]]:
        lake = LocalLake(tmp_path / "lake.duckdb")
        try:
            state = lake.state_store()
            blob = _blob("a")
            await state.register_listed([blob], NOW)
            steps = [(BlobStatus.QUEUED, "throttled; the queue retries"), (BlobStatus.FAILED, "cut off"),
                     (BlobStatus.QUEUED, "replay: re-enqueued"), (BlobStatus.FAILED, "401"),
                     (BlobStatus.INGESTED, None)]
            seen = []
            for status, error in steps:
                row = await state.mark(blob, status, at=NOW, error=error)
                assert row is not None
                seen.append((row["Status"], row["Attempts"], row["Error"], row["FirstError"]))
            return seen
        finally:
            lake.close()

    assert asyncio.run(run()) == [
        ("queued", 1, "throttled; the queue retries", None),
        ("failed", 2, "cut off", "cut off"),
        ("queued", 3, "replay: re-enqueued", "cut off"),
        ("failed", 4, "401", "cut off"),
        ("ingested", 5, None, "cut off"),
    ]


def test_marks_of_one_blob_in_one_commit_group_keep_the_first_failure(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path / "lake.duckdb")
    try:
        blob = _blob("b")
        asyncio.run(lake.state_store().register_listed([blob], NOW))
        con = lake.connection

        def mark(status: BlobStatus, error: str | None) -> dict[str, Any]:
            return {"TenantId": TENANT, "ContentType": blob.content_type, "ContentId": blob.content_id,
                    "Status": status.value, "Error": error, "Records": None, "Bytes": None,
                    "FetchedAt": NOW.replace(tzinfo=None), "IngestedAt": None}

        con.execute("BEGIN TRANSACTION")
        written = _apply_marks(con, [mark(BlobStatus.FAILED, "cut off"), mark(BlobStatus.INGESTED, None)])
        con.execute("COMMIT")
        row = written[-1]
        assert row is not None
        assert (row["Status"], row["Attempts"], row["Error"], row["FirstError"]) == ("ingested", 2, None, "cut off")
    finally:
        lake.close()


def _without(table: Table, column: str) -> Table:
    return Table(table.name, tuple(c for c in table.columns if c.name != column), table.key)


def test_a_lake_made_before_first_error_opens_with_its_failures_filled_in(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute(duckdb_ddl(_without(CONTENT_LEDGER, "FirstError")))
    for cid, status, error in (("f", "failed", "cut off"), ("e", "expired", "AF20051"), ("i", "ingested", None),
                               ("q", "queued", "throttled")):
        blob = _blob(cid)
        con.execute('INSERT INTO "ContentLedger" ("TenantId", "ContentType", "ContentId", "ContentUri", '
                    '"ContentCreated", "ContentExpiration", "ListedAt", "Status", "Attempts", "Error") '
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?)",
                    [TENANT, blob.content_type, cid, blob.content_uri, blob.content_created.replace(tzinfo=None),
                     blob.content_expiration.replace(tzinfo=None), NOW.replace(tzinfo=None), status, error])
    con.close()

    async def run() -> dict[str, Any]:
        lake = LocalLake(path)
        try:
            got = dict(lake.connection.execute(
                'SELECT "ContentId", "FirstError" FROM "ContentLedger" ORDER BY "ContentId"').fetchall())
            # And it takes new rows and marks as a new lake does.
            state = lake.state_store()
            assert [b.content_id for b in await state.register_listed([_blob("n")], NOW)] == ["n"]
            row = await state.mark(_blob("f"), BlobStatus.INGESTED, at=NOW)
            assert row is not None and row["FirstError"] == "cut off" and row["Error"] is None
            return got
        finally:
            lake.close()

    assert asyncio.run(run()) == {"e": "AF20051", "f": "cut off", "i": None, "q": None}
    columns = [r[0] for r in duckdb.connect(str(path), read_only=True).execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'ContentLedger' "
        "ORDER BY ordinal_position").fetchall()]
    assert tuple(columns) == CONTENT_LEDGER.column_names


def test_a_lake_whose_columns_are_not_a_prefix_of_the_schema_is_not_patched() -> None:
    names = list(CONTENT_LEDGER.column_names)
    assert duckdb_add_missing(CONTENT_LEDGER, names) == []
    with pytest.raises(ValueError, match="not the first columns"):
        duckdb_add_missing(CONTENT_LEDGER, [names[1], names[0], *names[2:-1]])
