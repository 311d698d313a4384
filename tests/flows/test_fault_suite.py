"""The fault suite: one scenario per way the Management Activity API (or the host running the
collector) goes wrong, each against `auditlake emulator` in its own process and
`auditlake collect --once` over real HTTP.

Every scenario asserts the same things against the emulator's ground truth
(``/_emulator/truth``): no record the emulator served in range is missing from the lake, no
record is in the lake twice, and the ledger holds exactly the blobs the emulator can never
deliver, ``failed`` or ``expired`` with the reason, every other blob ``ingested`` once.

``SCENARIOS`` is also the README's "Fault suite" table: ``test_readme_lists_the_scenarios``
keeps the two equal (``python -m tests.flows.test_fault_suite`` prints the table).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tests.flows.conftest import AUDITLAKE, REPO, RunningEmulator, collect_env

TENANT = "6d5c4b3a-2f1e-4d0c-9b8a-7f6e5d4c3b2a"
README = REPO / "README.md"
# What every scenario asserts, and what the README's table says.
LOST = 0
DUPLICATED = 0
@dataclass(frozen=True)
class Kill:
    """SIGKILL the collector once *pattern* (a regex) has matched *count* lines of its log."""

    pattern: str
    count: int = 1
    verbosity: str = "-v"
    # Ledger statuses at least one row must be in right after the kill: proof it landed there.
    unsettled: tuple[str, ...] = ()


@dataclass(frozen=True)
class Scenario:
    name: str
    happens: str
    faults: str
    env: Mapping[str, str] = field(default_factory=dict)
    failed: int = 0
    expired: int = 0
    # Every failed or expired ledger row's Error contains each of these.
    reason: tuple[str, ...] = ()
    # Counters of /_emulator/stats "faults" that must be non-zero: the fault really happened.
    evidence: tuple[str, ...] = ()
    kills: tuple[Kill, ...] = ()
    days: float = 1.0
    seed: int = 41

    @property
    def settings(self) -> str:
        parts = [f"`--faults {self.faults}`"] if self.faults else []
        parts += [f"`{k}={v}`" for k, v in self.env.items()]
        return ", ".join(parts) or "none"

    @property
    def ledger(self) -> str:
        outcome = [f"{n} {status}" for n, status in ((self.failed, "failed"), (self.expired, "expired")) if n]
        if not outcome:
            return "all ingested"
        return f"{' and '.join(outcome)}: " + ", ".join(f"`{r}`" for r in self.reason)


_LIMIT = 1024 * 1024
_CUT = "not valid JSON (cut off or corrupt)"

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "throttle burst (403)",
        "runs of 3 consecutive HTTP 403 + AF429 answers (a spent quota), on listings and blob GETs",
        "throttle=0.06,burst=3,pagesize=5", evidence=("throttle", "burst")),
    Scenario(
        "throttle burst (429)",
        "runs of 3 consecutive HTTP 429 + AF429 with Retry-After: 1, which the collector waits out",
        "throttle429=0.06,burst=3,pagesize=5", env={"AUDITLAKE_RETRY_MAX_SECONDS": "1"},
        evidence=("throttle429", "burst")),
    Scenario(
        "5xx and AF50000",
        "HTTP 500/503 with AF50000 in the JSON error body, and 502/504 HTML pages from a gateway, in runs of 2",
        "5xx=0.05,gateway=0.04,burst=2", evidence=("5xx", "gateway")),
    Scenario(
        "timeouts",
        "5% of answers held back 3 s, past the collector's 1 s timeout",
        "slow=0.05:3", env={"AUDITLAKE_HTTP_TIMEOUT_SECONDS": "1"}, evidence=("slow",)),
    Scenario(
        "connection resets",
        "the server hangs up before answering, or halfway through the body (Content-Length not met)",
        "reset=0.06", evidence=("reset",)),
    Scenario(
        "truncated bodies",
        "blob bodies cut short once (HTTP 200, invalid JSON), whole when fetched again",
        "truncate=0.05", evidence=("truncate",)),
    Scenario(
        "cut-off blobs",
        "2 blobs always cut short: re-fetched, then given up on",
        "cutoff=2", failed=2, reason=(_CUT,), evidence=("cutoff",)),
    Scenario(
        "malformed blobs",
        "2 blobs whose body is whole but never valid JSON",
        "malformed=2", failed=2, reason=(_CUT, "line 1 column"), evidence=("malformed",)),
    Scenario(
        "oversize blobs",
        "2 blobs of 2 MiB against a 1 MiB limit",
        "oversize=2", env={"AUDITLAKE_MAX_BLOB_BYTES": str(_LIMIT)}, failed=2,
        reason=(f"exceeds the limit of {_LIMIT} bytes",), evidence=("oversize",)),
    Scenario(
        "expired content",
        "2 blobs answer AF20051 (content expired) when fetched",
        "expired=2", expired=2, reason=("AF20051",), evidence=("expired",)),
    Scenario(
        "late listing",
        "30% of fresh blobs missing from the first listing that covers them; the sweep lists them",
        "late=0.3", evidence=("late",)),
    Scenario(
        "duplicated blobs and records",
        "30% of blobs listed twice in a listing (same or later page) and again in the next window; "
        "records re-delivered in later blobs",
        "dupblobs=0.3,pagesize=5", evidence=("dupblobs", "dupblobs_window"), days=1.5),
    Scenario(
        "shuffled pages",
        "listings in random order across pages of 5",
        "shuffle,pagesize=5", evidence=("shuffle",)),
    Scenario(
        "header case",
        "the paging header as nextpageuri / NEXTPAGEURI / NextPageUri, endTime rewritten endtime",
        "headercase,pagesize=5", evidence=("headercase",)),
    Scenario(
        "killed after listing",
        "SIGKILL once a listing page came back, before its blobs were in the ledger; then run again",
        "pagesize=5",
        kills=(Kill(r"listed page tenant_id=\S+ content_type=\S+ page=\d+ items=[1-9]", verbosity="-vv"),)),
    Scenario(
        "killed after enqueuing",
        "SIGKILL right after a window's blobs were recorded and queued (ledger status queued); then run again",
        "", kills=(Kill(r"listed tenant_id=.* new=[1-9]", unsettled=("queued",)),)),
    Scenario(
        "killed mid-ingest",
        "SIGKILL after 40 blobs were ingested, the rest still queued; then run again",
        "", kills=(Kill("blob ingested", count=40, unsettled=("queued",)),)),
)


def render_table() -> str:
    """The markdown table of SCENARIOS, as the README carries it."""
    lines = [
        "| scenario | what happened | emulator faults, collector settings | lost | duplicated "
        "| failed / expired in ContentLedger (reason contains) |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {s.name} | {s.happens} | {s.settings} | {LOST} | {DUPLICATED} | {s.ledger} |" for s in SCENARIOS]
    return "\n".join(lines)


def _readme_table() -> str:
    text = README.read_text(encoding="utf-8")
    assert "\n## Fault suite\n" in text, "README.md has no '## Fault suite' section"
    start = text.index("\n## Fault suite\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    return "\n".join(line for line in section.splitlines() if line.startswith("|"))


def test_scenario_names_are_unique() -> None:
    assert len({s.name for s in SCENARIOS}) == len(SCENARIOS)


def test_readme_lists_the_scenarios() -> None:
    got = _readme_table()
    rows = [line.split(" | ")[:2] for line in got.splitlines()[2:]]
    assert rows == [[f"| {s.name}", s.happens] for s in SCENARIOS], "README scenario/what-happened columns"
    assert got == render_table(), f"README's Fault suite table should be:\n{render_table()}"


# ---------------------------------------------------------------------------------------------


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _collect_cmd(emu: RunningEmulator, lake: Path, *extra: str) -> list[str]:
    return [AUDITLAKE, *extra, "collect", "--once", "--quiet", "--tenant-id", TENANT,
            "--api-root", emu.api_root, "--lake", str(lake)]


def _query(lake: Path, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(lake), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _run_until_killed(cmd: list[str], env: dict[str, str], kill: Kill) -> None:
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    pattern = re.compile(kill.pattern)
    seen = 0
    deadline = time.monotonic() + 300
    for line in proc.stderr:
        if pattern.search(line):
            seen += 1
            if seen >= kill.count:
                proc.send_signal(signal.SIGKILL)
                break
        if time.monotonic() > deadline:
            break
    proc.stderr.close()
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before {kill.pattern!r} matched {kill.count} times"


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name.replace(" ", "-") for s in SCENARIOS])
def test_fault_scenario(scenario: Scenario, emulator_factory: Any, tmp_path: Path) -> None:
    emu: RunningEmulator = emulator_factory(
        "--tenant-id", TENANT, "--scenario", "quiet", "--days", str(scenario.days), "--records-per-day", "600",
        "--seed", str(scenario.seed), "--faults", scenario.faults)
    lake = tmp_path / "lake.duckdb"
    env = collect_env(**scenario.env)
    started = datetime.now(UTC)

    for kill in scenario.kills:
        _run_until_killed(_collect_cmd(emu, lake, kill.verbosity), env, kill)
        if kill.unsettled:
            statuses = {str(s) for (s,) in _query(lake, 'SELECT DISTINCT "Status" FROM "ContentLedger"')}
            assert set(kill.unsettled) <= statuses, f"killed too late: ledger statuses {statuses}"

    proc = subprocess.run(_collect_cmd(emu, lake), env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    if scenario.failed or scenario.expired:
        assert proc.returncode == 1, proc.stderr[-3000:]
        assert proc.stderr.strip().splitlines()[-1] == (
            f"auditlake: error: {scenario.failed} blob(s) failed and {scenario.expired} expired (see ContentLedger)")
    else:
        assert proc.returncode == 0, proc.stderr[-3000:]

    # Everything available when the run started, from as far back as it was certain to list.
    in_range = _get(f"{emu.base_url}/_emulator/truth?tenantId={TENANT}"
                    f"&start={_iso(started - timedelta(days=7, minutes=-6))}&end={_iso(started)}")
    expected = {(r[0], int(r[1]), r[2]) for r in in_range["records"]}
    served = {(r[0], int(r[1]), r[2]) for r in _get(f"{emu.base_url}/_emulator/truth?tenantId={TENANT}")["records"]}
    rows = _query(lake, 'SELECT "Id", "RecordType", "Operation" FROM "AuditRecord"')
    keys = [(str(a), int(b), str(c)) for a, b, c in rows]
    assert len(expected) > 300

    lost = expected - set(keys)
    assert len(lost) == LOST, f"{len(lost)} records lost, e.g. {sorted(lost)[:3]}"
    assert len(keys) - len(set(keys)) == DUPLICATED, "a record is in the lake twice"
    assert set(keys) <= served, "the lake holds records the emulator never served whole"

    ledger = {str(cid): (str(status), str(error or ""), int(records or 0), int(attempts))
              for cid, status, error, records, attempts in _query(
                  lake, 'SELECT "ContentId", "Status", "Error", "Records", "Attempts" FROM "ContentLedger"')}
    undeliverable = {u["contentId"]: u["reason"] for u in in_range["undeliverable"]}
    settled_badly = {cid: row for cid, row in ledger.items() if row[0] != "ingested"}
    assert set(settled_badly) == set(undeliverable), f"not ingested: {settled_badly}; undeliverable: {undeliverable}"
    for cid, (status, error, _, _) in settled_badly.items():
        assert status == ("expired" if undeliverable[cid] == "expired" else "failed"), (cid, status, error)
        assert all(part in error for part in scenario.reason), (cid, error)
    outcomes = [row[0] for row in settled_badly.values()]
    assert (outcomes.count("failed"), outcomes.count("expired")) == (scenario.failed, scenario.expired)
    stats = _get(f"{emu.base_url}/_emulator/stats")
    missing = [kind for kind in scenario.evidence if not stats["faults"].get(kind)]
    assert not missing, f"faults never injected: {missing} (injected: {stats['faults']})"
    assert stats["missing_publisher_identifier"] == 0 and stats["window_rejected"] == 0
    assert stats["retry_after_ignored"] == 0, "a request was repeated before the Retry-After it was given"

    twice = sorted(cid for cid, row in ledger.items() if row[3] != 1)
    # The service delivers some records again in later blobs: they arrived, and were kept once.
    delivered = sum(row[2] for row in ledger.values() if row[0] == "ingested")
    assert delivered > len(set(keys)), "no re-delivered record reached the collector"
    assert not twice, f"{len(twice)} blob(s) fetched and settled more than once, e.g. {twice[:3]}"


if __name__ == "__main__":
    print(render_table())
