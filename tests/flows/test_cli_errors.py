"""Everyday mistakes with the CLI: each one is one line naming what was wrong, with the documented
exit code (1 failure, 2 usage, 130 interrupted), and never a traceback unless -v asks for it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from auditlake.cli import DEMO_TENANT
from auditlake.lake.duckdb_lake import LocalLake
from tests.flows.conftest import AUDITLAKE, REPO, RunningEmulator, collect_env, start_emulator


def run(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AUDITLAKE, *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                          env=env if env is not None else collect_env(), stdin=subprocess.DEVNULL)


def assert_one_line(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    prefix = "auditlake: usage: " if code == 2 else "auditlake: error: "
    assert line.startswith(prefix), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty lake: every table exists, so query mistakes are the query's."""
    path = tmp_path_factory.mktemp("errors") / "lake.duckdb"
    LocalLake(path).close()
    return path


# -- queries ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("kql", "needles"), [
    ("NoSuchTable | count", ("no table or function named NoSuchTable", "AuditRecord")),
    ("AuditRecord | where NoSuchColumn == 1", ("NoSuchColumn",)),
    ("print Stamp = now() == 'yesterday'", ("Conversion", "yesterday")),
    ("print Sum = toint('1') + now()", ("argument types", "explicit")),
    ("AuditRecord | summarize by", ("KQL",)),
])
def test_a_query_mistake_is_one_line(lake: Path, kql: str, needles: tuple[str, ...]) -> None:
    assert_one_line(run("query", "--lake", str(lake), kql), 1, *needles)


def test_with_v_the_traceback_comes_with_the_line(lake: Path) -> None:
    proc = run("query", "-v", "--lake", str(lake), "NoSuchTable | count")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "CatalogException" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("auditlake: error: query: no table")


def test_a_file_that_is_not_a_lake(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a lake\n")
    assert_one_line(run("query", "--lake", str(text), "AuditRecord | count"), 1, "not a DuckDB database", "--lake")


def test_a_folder_as_the_lake(tmp_path: Path) -> None:
    assert_one_line(run("query", "--lake", str(tmp_path), "AuditRecord | count"), 1, "is a folder", "lake.duckdb")
    assert_one_line(run("export", "--lake", str(tmp_path), "--out", str(tmp_path / "x")), 1, "is a folder")


def test_a_lake_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "none.duckdb"
    assert_one_line(run("query", "--lake", str(missing), "AuditRecord | count"), 1, "no lake at")
    assert_one_line(run("replay", "--lake", str(missing)), 1, "no lake at")
    assert not missing.exists(), "reading commands never create a lake"


def test_a_closed_pipe_ends_quietly(lake: Path) -> None:
    # `auditlake query ... | head -1`: the reader leaves early, which is not an error of ours.
    shell = f"{AUDITLAKE} query --lake {lake} --format csv 'range x from 1 to 200000 step 1' | head -1"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True, timeout=120,
                          env=collect_env())
    assert proc.stdout == "x\n"
    assert proc.stderr == "", proc.stderr


# -- flatten ---------------------------------------------------------------------------------


def test_flatten_input_missing_or_a_folder(tmp_path: Path) -> None:
    assert_one_line(run("flatten", "--input", str(tmp_path / "none.json")), 1, "--input", "no such file")
    assert_one_line(run("flatten", "--input", str(tmp_path)), 1, "--input", "is a folder")


# -- collect, demo, emulator: arguments ------------------------------------------------------


@pytest.mark.parametrize(("args", "needles"), [
    (("collect", "--tenant-id", DEMO_TENANT, "--api-root", "not-a-url", "--once"), ("--api-root", "not-a-url")),
    (("collect", "--tenant-id", DEMO_TENANT, "--content-type", "Audit.Nope", "--once"), ("Audit.Nope", "valid")),
    (("collect", "--tenant-id", "not-a-guid"), ("tenant GUID",)),
    (("collect", "--tenant-id", DEMO_TENANT, "--interval", "0"), ("--interval",)),
    (("collect", "--tenant-id", DEMO_TENANT, "--serve-port", "70000"), ("--serve-port", "0-65535")),
    (("demo", "--days", "0"), ("--days", "more than 0")),
    (("emulator", "--port", "99999"), ("--port", "0-65535")),
    (("emulator", "--scenario", "nope"), ("--scenario", "nope")),
    (("query",), ("kql",)),
    (("frobnicate",), ("frobnicate",)),
])
def test_usage_mistakes_are_one_line_and_exit_2(tmp_path: Path, args: tuple[str, ...],
                                                needles: tuple[str, ...]) -> None:
    assert_one_line(run(*args, "--lake", str(tmp_path / "l.duckdb")) if args[0] in ("collect", "demo")
                    else run(*args), 2, *needles)
    assert not (tmp_path / "l.duckdb").exists(), "a usage mistake changes nothing"


def test_an_unwritable_lake_place(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = assert_one_line(run("collect", "--tenant-id", DEMO_TENANT, "--api-root", "http://127.0.0.1:9/api/v1.0",
                               "--once", "--lake", str(blocker / "lake.duckdb")), 1, "cannot create the folder")
    assert "AUDITLAKE_LAKE" in line
    if os.geteuid() != 0:  # root writes anywhere: the permission case needs an ordinary user
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert_one_line(run("demo", "--lake", str(locked / "lake.duckdb")), 1, "not writable")


def test_the_lake_setting_pins_the_default_path(tmp_path: Path) -> None:
    pinned = tmp_path / "pinned" / "lake.duckdb"
    LocalLake(pinned).close()
    env = collect_env(AUDITLAKE_LAKE=str(pinned))
    proc = run("query", "--format", "csv", "ContentLedger | count", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["Count", "0"]
    assert not (tmp_path / ".auditlake").exists()


def test_a_secret_without_its_client_id(tmp_path: Path) -> None:
    env = collect_env(AZURE_CLIENT_SECRET="s3cret-value")
    env.pop("AUDITLAKE_API_TOKEN", None)
    env.pop("AZURE_CLIENT_ID", None)
    line = assert_one_line(run("collect", "--tenant-id", DEMO_TENANT, "--api-root", "http://127.0.0.1:9/api/v1.0",
                               "--once", "--lake", str(tmp_path / "l.duckdb"), env=env), 1,
                           "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET")
    assert "s3cret-value" not in line


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_an_emulator_port_in_use(busy_port: int) -> None:
    assert_one_line(run("emulator", "--port", str(busy_port)), 1, f"--port {busy_port}", "in use")


# -- interruption ----------------------------------------------------------------------------


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    emu = start_emulator("--days", "1", "--records-per-day", "300")
    try:
        yield emu
    finally:
        emu.process.terminate()
        emu.process.wait(timeout=30)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupt_prints_what_was_collected_and_exits_130(
        emulator: RunningEmulator, tmp_path: Path, stop: signal.Signals) -> None:
    # SIGTERM is what kill, service managers and container runtimes send: the same clean stop as Ctrl-C.
    proc = subprocess.Popen(
        [AUDITLAKE, "collect", "--tenant-id", DEMO_TENANT, "--api-root", emulator.api_root, "--since", "1d",
         "--interval", "30", "--no-serve", "--lake", str(tmp_path / "lake.duckdb")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=collect_env(), cwd=tmp_path,
    )
    assert proc.stderr is not None
    # The first pass ends with its status line; the collector then waits for the next pass.
    deadline = time.monotonic() + 120
    first = ""
    while time.monotonic() < deadline and " pass: " not in first:
        first = proc.stderr.readline()
        assert first or proc.poll() is None, "the collector ended before its first pass did"
    assert " pass: " in first and "blob(s) settled" in first, first
    # Passes start 30 s apart: what is left of the interval once this one is done.
    left = re.search(r"next pass in (\d+(?:\.\d+)?)s", first)
    assert left is not None and 0 < float(left.group(1)) <= 30, first
    proc.send_signal(stop)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert "collected (this run)" in out and "Audit.Exchange" in out
    assert err.strip().splitlines()[-1].startswith("auditlake: interrupted")
