"""The fault suite: one scenario per way the Management Activity API (or the host running the
collector) goes wrong, each against `auditlake emulator` in its own process and
`auditlake collect --once` over real HTTP.

Every scenario asserts the same things against the emulator's ground truth
(``/_emulator/truth``): no record the emulator served in range is missing from the lake (the
records before the cut of a cut-off blob and the readable neighbours of a corrupt record
included), no record is in the lake twice, every row flagged ``record:unreadable`` or
``record:recovered`` is one the truth counts as ``damaged`` (and every other row a record the
emulator served whole), and the ledger holds exactly the blobs the emulator can never deliver
whole, ``failed`` or ``expired`` with the reason, every other blob ``ingested`` once.

``SCENARIOS`` is also the table of docs/fault-suite.md: ``test_readme_lists_the_scenarios``
keeps the two equal (``python -m tests.flows.test_fault_suite`` prints the table).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from auditlake.emulator.faults import HUGE_STRING_CHARS
from tests.flows.conftest import AUDITLAKE, REPO, RunningEmulator, collect_env

TENANT = "6d5c4b3a-2f1e-4d0c-9b8a-7f6e5d4c3b2a"
FAULT_SUITE_DOC = REPO / "docs" / "fault-suite.md"
# What every scenario asserts, and what the table of docs/fault-suite.md says.
LOST = 0
DUPLICATED = 0
# A row a collector keeps for a record it could read only leniently, or not at all.
DAMAGED_FLAGS = ("record:unreadable:", "record:recovered:")
_DAMAGED_SQL = " OR ".join(f"CAST(\"Quality\" AS VARCHAR) LIKE '%{flag}%'" for flag in DAMAGED_FLAGS)


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
    # Rows flagged record:unreadable / record:recovered the truth must count; None: it depends
    # on where the faults fall (the lake must still hold exactly the truth's count).
    damaged: int | None = 0
    # Substrings of Quality flags that some row of the lake must carry.
    flags: tuple[str, ...] = ()
    # Rows of the failed blobs are in the lake: what was read before they broke off.
    salvaged: bool = False
    # The record of the hugestring fault is in the lake with its whole string.
    huge: bool = False
    # Size of a tmpfs the first run's lake lives on; the rerun has the lake moved to a big disk.
    disk: str = ""

    @property
    def settings(self) -> str:
        parts = [f"`--faults {self.faults}`"] if self.faults else []
        parts += [f"`{k}={v}`" for k, v in self.env.items()]
        if self.disk:
            parts.append(f"`--lake` on a tmpfs of size={self.disk}, then moved")
        return ", ".join(parts) or "none"

    @property
    def damaged_rows(self) -> str:
        return "one per blob cut inside a record" if self.damaged is None else str(self.damaged)

    @property
    def ledger(self) -> str:
        outcome = [f"{n} {status}" for n, status in ((self.failed, "failed"), (self.expired, "expired")) if n]
        if not outcome:
            return "all ingested"
        return f"{' and '.join(outcome)}: " + ", ".join(f"`{r}`" for r in self.reason)


_LIMIT = 1024 * 1024
_CUT = "not valid JSON (cut off or corrupt)"
_SALVAGED = "before the cut"

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
        "2 blobs always cut short: re-fetched, then given up on; the records before the cut are kept",
        "cutoff=2", failed=2, reason=(_CUT, _SALVAGED), evidence=("cutoff",), damaged=None, salvaged=True),
    Scenario(
        "malformed blobs",
        "2 blobs whose body is whole but never valid JSON (a key followed by =, a byte that is not UTF-8, "
        "junk after the array): the rest of each blob is kept, the damage as one flagged row per blob",
        "malformed=2", evidence=("malformed",), damaged=2),
    Scenario(
        "hostile records",
        "2 blobs also hold records an attacker shaped: an inbox rule named 300 [ then 300 ], a record 300 levels "
        "deep, a lone surrogate escape, NaN, Infinity, 1e400, a byte that is not UTF-8",
        "hostile=2", evidence=("hostile",), damaged=10,
        flags=("too-deep:Parameters.Name", "AuditData:unserialisable:", "record:recovered:")),
    Scenario(
        "50 MB string",
        "a blob also holds a record whose automatic-reply message is a 50 MB string; it is kept whole",
        "hugestring=1", evidence=("hugestring",), huge=True),
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
        # Every answer held back 0.3 s: the kill lands while the window's blobs are still being
        # fetched, not after a fast collector has already committed them all.
        "slow=1:0.3", kills=(Kill(r"listed tenant_id=.* new=[1-9]", unsettled=("queued",)),)),
    Scenario(
        "killed mid-ingest",
        "SIGKILL after 40 blobs were ingested, the rest still queued; then run again",
        # Two blobs at a time, committed 20 records at a time: the 40th blob is settled long before the last.
        "", env={"AUDITLAKE_COMMIT_RECORDS": "20", "AUDITLAKE_CONCURRENCY": "2"},
        kills=(Kill("blob ingested", count=40, unsettled=("queued",)),)),
    Scenario(
        "disk full",
        "the lake's disk fills up: collect stops at once, exit 1, one line saying the lake cannot be written; "
        "the lake file moved to a bigger disk, the rerun finishes the job",
        "", disk="1M"),
)


def render_table() -> str:
    """The markdown table of SCENARIOS, as docs/fault-suite.md carries it."""
    lines = [
        "| scenario | what happened | emulator faults, collector settings | lost | duplicated "
        "| damaged rows kept, flagged | failed / expired in ContentLedger (reason contains) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {s.name} | {s.happens} | {s.settings} | {LOST} | {DUPLICATED} | {s.damaged_rows} | {s.ledger} |"
              for s in SCENARIOS]
    return "\n".join(lines)


def _readme_table() -> str:
    """The one markdown table of docs/fault-suite.md (the README links to it)."""
    text = FAULT_SUITE_DOC.read_text(encoding="utf-8")
    assert text.startswith("# Fault suite\n"), "docs/fault-suite.md should start with '# Fault suite'"
    return "\n".join(line for line in text.splitlines() if line.startswith("|"))


def test_scenario_names_are_unique() -> None:
    assert len({s.name for s in SCENARIOS}) == len(SCENARIOS)


def test_readme_lists_the_scenarios() -> None:
    got = _readme_table()
    rows = [line.split(" | ")[:2] for line in got.splitlines()[2:]]
    assert rows == [[f"| {s.name}", s.happens] for s in SCENARIOS], "docs/fault-suite.md scenario/what-happened columns"
    assert got == render_table(), f"docs/fault-suite.md's table should be:\n{render_table()}"


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


@contextmanager
def _small_disk(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of *size* mounted at *where* for the block; fails the test where mounting is not allowed."""
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        # CI runs as root on this kind of machine: a scenario that cannot run is a failure, not a skip.
        pytest.fail(f"cannot mount a tmpfs for the disk-full scenario: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill_the_disk(emu: RunningEmulator, scenario: Scenario, env: dict[str, str], lake: Path) -> None:
    """Run collect with the lake on a small disk until the disk is full, then move the lake to *lake*."""
    with _small_disk(lake.parent / "small", scenario.disk) as small:
        small_lake = small / lake.name
        proc = subprocess.run(_collect_cmd(emu, small_lake), env=env, cwd=REPO, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 1, f"the disk did not fill up: {proc.stderr[-3000:]}"
        said = [line for line in proc.stderr.splitlines() if "cannot be written" in line]
        assert len(said) == 1, proc.stderr[-3000:]
        assert proc.stderr.strip().splitlines()[-1] == said[0]
        assert said[0].startswith(f"auditlake: error: the lake at {small_lake} cannot be written: "), said[0]
        for part in small.glob(f"{lake.name}*"):
            shutil.copy2(part, lake.parent / part.name)


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name.replace(" ", "-") for s in SCENARIOS])
def test_fault_scenario(scenario: Scenario, emulator_factory: Any, tmp_path: Path) -> None:
    emu: RunningEmulator = emulator_factory(
        "--tenant-id", TENANT, "--scenario", "quiet", "--days", str(scenario.days), "--records-per-day", "600",
        "--seed", str(scenario.seed), "--faults", scenario.faults)
    lake = tmp_path / "lake.duckdb"
    env = collect_env(**scenario.env)
    started = datetime.now(UTC)

    if scenario.disk:
        _fill_the_disk(emu, scenario, env, lake)
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
    whole = _get(f"{emu.base_url}/_emulator/truth?tenantId={TENANT}")
    served = {(r[0], int(r[1]), r[2]) for r in whole["records"]}
    rows = _query(lake, f'SELECT "Id", "RecordType", "Operation", ({_DAMAGED_SQL}) FROM "AuditRecord"')
    keys = [(str(a), int(b), str(c)) for a, b, c, _ in rows]
    kept_whole = {(str(a), int(b), str(c)) for a, b, c, damaged in rows if not damaged}
    damaged_rows = sum(1 for *_, damaged in rows if damaged)
    assert len(expected) > 300

    lost = expected - set(keys)
    assert len(lost) == LOST, f"{len(lost)} records lost, e.g. {sorted(lost)[:3]}"
    assert len(keys) - len(set(keys)) == DUPLICATED, "a record is in the lake twice"
    assert kept_whole <= served, "the lake holds records the emulator never served whole, unflagged"
    # Every fault blob was available before the run began: the whole truth's damage is in range.
    assert in_range["damaged"] == whole["damaged"]
    assert damaged_rows == in_range["damaged"], (
        f"{damaged_rows} rows flagged {' / '.join(DAMAGED_FLAGS)}, the emulator damaged {in_range['damaged']}")
    if scenario.damaged is not None:
        assert in_range["damaged"] == scenario.damaged
    for flag in scenario.flags:
        flagged = _query(lake, f"""SELECT count(*) FROM "AuditRecord"
                                   WHERE CAST("Quality" AS VARCHAR) LIKE '%{flag}%'""")
        assert flagged[0][0], f"no row flagged {flag}"

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
    if scenario.salvaged:
        failed = ", ".join(f"'{cid}'" for cid in settled_badly)
        kept = _query(lake, f'SELECT count(*) FROM "AuditRecord" WHERE "ContentId" IN ({failed})')[0][0]
        assert 0 < kept == sum(row[2] for row in settled_badly.values()), (
            f"{kept} rows of the failed blobs in the lake; the ledger says they were read")
    if scenario.huge:
        huge = [tuple(k) for k in in_range["added"]["hugestring"]]
        assert len(huge) == 1
        (length,) = _query(lake, f"""SELECT length(json_extract_string("AuditData", '$.Parameters[2].Value'))
                                    FROM "AuditRecord" WHERE "Id" = '{huge[0][0]}'""")[0]
        assert length == HUGE_STRING_CHARS, f"the 50 MB string is {length} characters in the lake"
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
