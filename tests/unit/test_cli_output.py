"""What the CLI prints: durations people read, one status line per pass, help for every option."""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import duckdb
import pytest

from auditlake.cli import build_parser, human_duration, pass_line, print_result, query_error_line
from function_app.core.model import BlobStatus, ContentBlob, RunStats
from function_app.core.pipeline import CollectReport
from function_app.core.process import BlobOutcome


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (1.5, "1.5s"), (30, "30s"), (42.25, "42.2s"), (60, "1m"), (4453.317, "1h 14m 13s"),
    (7200, "2h 0m"), (90061, "1d 1h"), (-90, "-1m 30s"),
])
def test_durations_read_as_a_person_would_say_them(seconds: float, text: str) -> None:
    assert human_duration(timedelta(seconds=seconds)) == text


def test_a_table_shows_durations_humanly_and_whole_values_unless_cut() -> None:
    long_id = "20261120100500164015567$20261120100500164015567$audit_exchange$Audit_Exchange$emea0029"
    rows = [(long_id, timedelta(seconds=4453.317))]
    out = io.StringIO()
    print_result(["ContentId", "Latency"], ["VARCHAR", "INTERVAL"], rows, "table", out)
    assert long_id in out.getvalue() and "1h 14m 13s" in out.getvalue()
    cut = io.StringIO()
    print_result(["ContentId", "Latency"], ["VARCHAR", "INTERVAL"], rows, "table", cut, width=20)
    assert long_id not in cut.getvalue() and long_id[:19] + "…" in cut.getvalue()
    as_json = io.StringIO()
    print_result(["ContentId", "Latency"], ["VARCHAR", "INTERVAL"], rows, "json", as_json, width=20)
    assert long_id in as_json.getvalue() and "4453.317" in as_json.getvalue()


def _outcome(status: BlobStatus, inserted: int) -> BlobOutcome:
    blob = ContentBlob(tenant_id="t", content_type="Audit.Exchange", content_id=f"c{inserted}",
                       content_uri="https://x/c", content_created=datetime(2026, 12, 3, tzinfo=UTC),
                       content_expiration=datetime(2026, 12, 10, tzinfo=UTC))
    return BlobOutcome(blob=blob, status=status, records=inserted, inserted=inserted)


def test_a_pass_line_says_what_settled_what_failed_and_when_the_next_pass_runs() -> None:
    run = RunStats(run_id="r", tenant_id="t", content_type="Audit.Exchange", started_at=datetime.now(UTC))
    report = CollectReport(runs=[run], outcomes=[_outcome(BlobStatus.INGESTED, 1200), _outcome(BlobStatus.FAILED, 0)])
    at = datetime(2026, 12, 3, 14, 2, 11, tzinfo=UTC)
    assert pass_line(report, 120, now=at) == (
        "14:02:11 pass: 2 blob(s) settled, 1,200 new record(s); 1 failed, 0 expired (see ContentLedger); "
        "next pass in 2m")
    run.errors.append("Audit.Exchange: token endpoint unreachable")
    line = pass_line(report, None, now=at)
    assert "1 pass error(s): Audit.Exchange: token endpoint unreachable" in line and "next pass" not in line


def test_a_refused_query_is_one_line_without_the_generated_sql() -> None:
    con = duckdb.connect()
    with pytest.raises(duckdb.Error) as refused:
        con.execute("SELECT CAST('yesterday' AS TIMESTAMP) = now()\n-- a second line of generated SQL")
    line = query_error_line(refused.value)
    assert line.startswith("query: Conversion Error") and "\n" not in line
    with pytest.raises(duckdb.Error) as overloads:
        con.execute("SELECT 1 + now()")
    line = query_error_line(overloads.value)
    assert "explicit type casts" in line and "Candidate functions" not in line and len(line) < 300


def _actions(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.Action]]:
    found = [(parser.prog, a) for a in parser._actions]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found.extend(_actions(sub))
    return found


def test_every_option_of_every_command_has_help_text() -> None:
    missing = [f"{prog} {action.dest}" for prog, action in _actions(build_parser())
               if not isinstance(action, argparse._SubParsersAction) and not (action.help or "").strip()]
    assert missing == []


def test_version_names_the_engines(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["--version"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("auditlake ") and "duckdb " in printed and "duckdb-kql " in printed


def test_the_parser_offers_the_emulator_s_scenarios() -> None:
    from auditlake.cli import EMULATOR_SCENARIOS
    from auditlake.emulator.tenant import SCENARIOS

    assert EMULATOR_SCENARIOS == SCENARIOS


class _ReprCounted:
    """A result that counts how often its repr is made."""

    made = 0

    def __repr__(self) -> str:
        type(self).made += 1
        return "<result>"


def test_a_command_s_result_comes_back_without_its_repr_being_made() -> None:
    # asyncio.run formats the main task's repr, result and all, as it restores SIGINT's handler;
    # a backfill's report of thousands of outcomes made that over half a second.
    import signal

    from auditlake.cli import run_to_end

    async def command() -> _ReprCounted:
        return _ReprCounted()

    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # else asyncio installs no handler
    _ReprCounted.made = 0
    asyncio.run(command())
    made_by_asyncio_run = _ReprCounted.made
    assert made_by_asyncio_run >= 1  # the cost run_to_end avoids is there to avoid
    result = run_to_end(command())
    assert isinstance(result, _ReprCounted)
    assert _ReprCounted.made == made_by_asyncio_run


def test_a_command_s_error_comes_out_of_run_to_end() -> None:
    from auditlake.cli import run_to_end

    async def command() -> None:
        raise LookupError("no such tenant")

    with pytest.raises(LookupError, match="no such tenant"):
        run_to_end(command())


@pytest.fixture
def sigterm_caught() -> Iterator[list[int]]:
    """SIGTERM held by a handler of the test's while it runs, so a run_to_end that failed to take
    it shows as a failed test rather than a killed test run."""
    caught: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: caught.append(signum))
    try:
        yield caught
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_stops_a_command_as_ctrl_c_does(sigterm_caught: list[int]) -> None:
    from auditlake.cli import run_to_end

    cleaned_up: list[str] = []

    async def command() -> None:
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
        try:
            await asyncio.sleep(30)
        finally:
            cleaned_up.append("the command's clean-up ran")

    began = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_to_end(command())
    assert time.monotonic() - began < 10
    assert cleaned_up == ["the command's clean-up ran"]
    assert sigterm_caught == []  # taken by run_to_end, not by the handler outside it


def test_a_second_sigterm_stops_at_once(sigterm_caught: list[int]) -> None:
    from auditlake.cli import run_to_end

    async def command() -> None:
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
        try:
            await asyncio.sleep(30)
        finally:
            # A clean-up that takes long: the second SIGTERM does not wait for it.
            asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
            await asyncio.sleep(30)

    began = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_to_end(command())
    assert time.monotonic() - began < 10
    assert sigterm_caught == []


def test_sigterm_after_a_command_is_back_to_what_it_was(sigterm_caught: list[int]) -> None:
    from auditlake.cli import run_to_end

    async def command() -> int:
        return 7

    assert run_to_end(command()) == 7
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)  # the handler runs at the next bytecode boundary of the main thread
    assert sigterm_caught == [signal.SIGTERM]
