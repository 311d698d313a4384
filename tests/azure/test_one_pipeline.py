"""One pipeline: every entry point builds its run in function_app/compose.py, so they agree.

* ``auditlake collect --adx-ingest-uri`` writes the same records into ADX (here the fake ADX with
  the real ingest client) that the local lake would hold, once each by key, with the ledger kept in
  the local file and mirrored into ADX;
* ``auditlake replay --azure --from-deadletter`` leaves ADX's ledger saying what the Table ledger
  says (before the root, ADX kept the ``failed`` row);
* each tenant's own content types (``AUDITLAKE_TENANTS``) and cloud are honoured by ``collect``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from auditlake.emulator.server import EmulatorServer
from auditlake.lake.duckdb_lake import LocalLake
from auditlake.localrun import collect
from auditlake.replay import replay
from function_app.azure.deps import close_runtime
from function_app.compose import feeds_of, open_parts
from function_app.config import Settings
from function_app.o365.auth import StaticTokenProvider
from function_app.o365.clouds import Cloud
from tests.adapters.fake_adx import FakeAdx, Ingestion
from tests.azure.conftest import DATABASE, FunctionsHost, Harness
from tests.flows.conftest import AUDITLAKE, REPO, RunningEmulator, start_emulator

TENANT = "3c2b1a09-8f7e-4d6c-9b5a-4e3d2c1b0a98"
OTHER = "7a6b5c4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d"


def _key(row: dict[str, Any]) -> tuple[str, int, str]:
    return str(row["Id"]), int(row["RecordType"]), str(row["Operation"])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.loads(answer.read())


def _latest_ledger(ingestions: list[Ingestion]) -> dict[str, dict[str, Any]]:
    """ADX's current ledger: the latest ContentLedger row per blob, as the documented KQL
    (``arg_max(coalesce(IngestedAt, FetchedAt, ListedAt), *) by ContentId``) reads it."""
    latest: dict[str, tuple[str, dict[str, Any]]] = {}
    for ingestion in ingestions:
        if ingestion.table != "ContentLedger":
            continue
        for row in ingestion.rows:
            when = row.get("IngestedAt") or row.get("FetchedAt") or row.get("ListedAt") or ""
            cid = str(row["ContentId"])
            if cid not in latest or when >= latest[cid][0]:
                latest[cid] = (when, row)
    return {cid: row for cid, (_, row) in latest.items()}


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    emu = start_emulator("--tenant-id", TENANT, "--scenario", "quiet", "--days", "0.5",
                         "--records-per-day", "300", "--seed", "23")
    try:
        yield emu
    finally:
        emu.process.terminate()
        emu.process.wait(timeout=20)


def test_collect_into_adx_writes_every_record_once_and_mirrors_the_ledger(
    emulator: RunningEmulator, fake_adx: FakeAdx, tmp_path: Path
) -> None:
    fake_adx.read_ingestions()  # what earlier tests left behind
    state = tmp_path / "state.duckdb"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUDITLAKE_", "ADX_", "AzureWebJobs"))}
    env.update(AUDITLAKE_API_TOKEN="test-token", ADX_ALLOW_INSECURE_HTTP="true",
               AUDITLAKE_SAFETY_LAG_SECONDS="0")
    proc = subprocess.run(
        [AUDITLAKE, "collect", "--once", "--quiet", "--tenant-id", TENANT, "--api-root", emulator.api_root,
         "--since", "1d", "--lake", str(state), "--adx-ingest-uri", fake_adx.uri, "--adx-database", DATABASE],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    ingestions = fake_adx.read_ingestions()
    assert {i.database for i in ingestions} == {DATABASE}
    rows = [r for i in ingestions if i.table == "AuditRecord" for r in i.rows]
    truth = {(r[0], int(r[1]), r[2]) for r in _get(f"{emulator.base_url}/_emulator/truth?tenantId={TENANT}")["records"]}
    assert len(truth) > 100
    # Through the dedup view (take_any by key): every record of the emulator, nothing else.
    assert {_key(r) for r in rows} == truth

    # The ledger and checkpoints stay in the local file, with no records in it ...
    con = duckdb.connect(str(state), read_only=True)
    try:
        local = dict(con.execute('SELECT "ContentId", "Status" FROM "ContentLedger"').fetchall())
        assert con.execute('SELECT count(*) FROM "AuditRecord"').fetchone() == (0,)
        runs = con.execute('SELECT count(*) FROM "CollectorRun"').fetchone()
    finally:
        con.close()
    assert local and set(local.values()) == {"ingested"}
    # ... and ADX holds the same ledger and the planning passes.
    assert {cid: str(r["Status"]) for cid, r in _latest_ledger(ingestions).items()} == local
    assert runs is not None and sum(len(i.rows) for i in ingestions if i.table == "CollectorRun") == runs[0]


def test_collect_into_adx_refuses_plain_http_without_the_opt_in(fake_adx: FakeAdx, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ADX_ALLOW_INSECURE_HTTP"}
    proc = subprocess.run(
        [AUDITLAKE, "collect", "--once", "--tenant-id", TENANT, "--lake", str(tmp_path / "s.duckdb"),
         "--adx-ingest-uri", fake_adx.uri, "--adx-database", DATABASE],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"auditlake: usage: --adx-ingest-uri {fake_adx.uri} is plain http: no authentication, for a local test "
        "endpoint only; set ADX_ALLOW_INSECURE_HTTP=true to allow it"]
    proc = subprocess.run([AUDITLAKE, "collect", "--once", "--tenant-id", TENANT, "--adx-database", DATABASE],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "auditlake: usage: --adx-ingest-uri and --adx-database go together")


def test_replay_from_the_dead_letter_copy_leaves_adx_ledger_agreeing(harness: Harness) -> None:
    async def run() -> None:
        async with EmulatorServer([TENANT], seed=12, days=0.3, records_per_day=120, scenario="quiet",
                                  faults="cutoff=1") as emu:
            harness.configure(AUDITLAKE_TENANTS=TENANT, AUDITLAKE_API_ROOT=emu.api_root, AUDITLAKE_RETRY_ATTEMPTS="3")
            host = FunctionsHost(harness)
            try:
                await host.timer()
                await host.drain()
            finally:
                await close_runtime()
            [bad] = [b for b in emu.state.tenants[TENANT].blobs if b.cutoff]
            before = _latest_ledger(harness.adx.read_ingestions())
            assert str(before[bad.content_id]["Status"]) == "failed"

            # The API keeps serving it cut off; an operator repairs the kept copy and replays it.
            container = harness.container_client()
            container.upload_blob(f"content/{TENANT}/{bad.content_type}/{bad.content_id}.json", bad.body,
                                  overwrite=True)
            container.close()
            summary = await replay(azure=True, from_deadletter=True)
            assert summary.counts() == {"reingested": 1}, summary
            assert harness.ledger()[bad.content_id]["Status"] == "ingested"
            after = harness.adx.read_ingestions()
            # ADX's latest ledger row for the blob says what the Table ledger says.
            assert str(_latest_ledger(after)[bad.content_id]["Status"]) == "ingested"
            replayed = {_key(r) for i in after if i.table == "AuditRecord" for r in i.rows
                        if r["ContentId"] == bad.content_id}
            assert set(bad.record_keys) <= replayed

    asyncio.run(run())


def test_collect_honours_each_tenants_content_types(tmp_path: Path) -> None:
    tenants = [{"tenantId": TENANT, "contentTypes": ["Audit.Exchange"]},
               {"tenantId": OTHER, "contentTypes": ["Audit.SharePoint", "Audit.General"]}]

    async def run(api_root: str) -> None:
        settings = Settings.from_env({"AUDITLAKE_TENANTS": json.dumps(tenants), "AUDITLAKE_API_ROOT": api_root,
                                      "AUDITLAKE_SAFETY_LAG_SECONDS": "0"})
        lake = LocalLake(tmp_path / "lake.duckdb")
        try:
            # The emulator's half day, whatever the hour (from midnight, a run just after 00:00 UTC had
            # minutes of content and one tenant none).
            report = await collect(settings, lake, tokens=StaticTokenProvider("t"),
                                   since=datetime.now(UTC) - timedelta(hours=12))
            assert report.ok, report
            planned = set(lake.connection.execute(
                'SELECT DISTINCT "TenantId", "ContentType" FROM "CollectorRun"').fetchall())
            stored = set(lake.connection.execute(
                'SELECT DISTINCT "TenantId", "ContentType" FROM "AuditRecord"').fetchall())
        finally:
            lake.close()
        wanted = {(TENANT, "Audit.Exchange"), (OTHER, "Audit.SharePoint"), (OTHER, "Audit.General")}
        assert planned == wanted
        assert stored <= wanted and {t for t, _ in stored} == {TENANT, OTHER}

    async def with_emulator() -> None:
        async with EmulatorServer([TENANT, OTHER], seed=5, days=0.5, records_per_day=200,
                                  scenario="quiet") as emu:
            await run(emu.api_root)

    asyncio.run(with_emulator())


def test_each_tenant_is_collected_from_its_own_clouds_api(tmp_path: Path) -> None:
    tenants = [{"tenantId": TENANT, "cloud": "Enterprise"}, {"tenantId": OTHER, "cloud": "GCCHigh"}]
    settings = Settings.from_env({"AUDITLAKE_TENANTS": json.dumps(tenants)})

    async def run() -> dict[str, str]:
        lake = LocalLake(tmp_path / "lake.duckdb")
        try:
            async with open_parts(settings, lake=lake, tokens=StaticTokenProvider("t")) as parts:
                return {t.tenant_id: parts.api.api_for(t.tenant_id).api_root for t in parts.feeds}
        finally:
            lake.close()

    roots = asyncio.run(run())
    assert roots == {TENANT: Cloud.parse("Enterprise").api_root.rstrip("/"),
                     OTHER: Cloud.parse("GCCHigh").api_root.rstrip("/")}
    assert roots[TENANT] != roots[OTHER]
    # --tenant-id narrows to configured tenants with their own settings, and adds others with defaults.
    narrowed = feeds_of(settings, [OTHER.upper()])
    assert [(t.tenant_id, t.cloud) for t in narrowed] == [(OTHER, "GCCHigh")]
    assert feeds_of(settings, [OTHER], ["Audit.General"])[0].content_types == ("Audit.General",)
