"""`collect` without `--once` starts a pass every `--interval` seconds, whatever a pass takes."""

from __future__ import annotations

import asyncio
import itertools
import statistics
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from auditlake.emulator.server import EmulatorServer
from auditlake.lake.duckdb_lake import LocalLake
from auditlake.localrun import PASS_PHASE_SECONDS, Progress, collect, next_pass_wait
from function_app.config import Settings
from function_app.o365.auth import StaticTokenProvider

TENANT = "5c4b3a29-1807-4f6e-9d5c-4b3a29180706"
INTERVAL = 1.5


def test_passes_start_one_interval_apart_when_a_pass_takes_a_while(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path / "lake.duckdb")
    ends: list[tuple[float, float | None]] = []

    async def go() -> None:
        loop = asyncio.get_running_loop()
        progress = Progress(passed=lambda report, next_in: ends.append((loop.time(), next_in)))
        # Every answer held back 0.4 s: a pass takes at least that long.
        async with EmulatorServer(tenant_ids=[TENANT], seed=3, days=0.2, records_per_day=200, scenario="quiet",
                                  faults="slow=1:0.4") as emu:
            settings = Settings(api_root=emu.api_root, retry_base=0.01, retry_max=0.05)
            stop = asyncio.Event()
            running = asyncio.create_task(collect(settings, lake, [TENANT], ["Audit.General"], once=False,
                                                  interval=INTERVAL, stop=stop, progress=progress,
                                                  tokens=StaticTokenProvider("t")))
            while len(ends) < 5:
                await asyncio.sleep(0.1)
            stop.set()
            await asyncio.wait_for(running, timeout=60)

    asyncio.run(go())
    lake.close()
    steady = ends[1:]  # the first pass catches up and takes longest
    # Each pass takes at least one held-back answer, and the wait makes up the rest of the interval.
    assert all(next_in is not None and next_in <= INTERVAL - 0.3 for _, next_in in steady), ends
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(steady)]
    # Passes end (and start) one interval apart, not an interval plus the pass's own time.
    assert statistics.median(gaps) < INTERVAL + 0.2, gaps


@pytest.mark.parametrize("elapsed", [0.0, 0.4, 2.75, 29.9, 31.0])
@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.02, 0.03, 0.5, 0.99])
def test_a_whole_second_interval_starts_the_next_pass_just_after_a_whole_second_never_later(
        elapsed: float, fraction: float) -> None:
    # The listing's end is cut to a whole second: a pass that starts late in a second would leave
    # the blobs created in the rest of it to the pass after.
    now = datetime(2026, 12, 5, 3, 30, tzinfo=UTC) + timedelta(seconds=7 + fraction)
    wait = next_pass_wait(30, elapsed, now)
    planned = max(0.0, 30 - elapsed)
    assert planned - 1 < wait <= planned
    if wait > 0:  # a pass that ran over its interval starts at once instead
        landed = (now.timestamp() + wait) % 1.0
        assert PASS_PHASE_SECONDS - 1e-6 <= landed <= 2 * PASS_PHASE_SECONDS + 1e-6


def test_passes_already_just_after_a_whole_second_stay_one_interval_apart() -> None:
    now = datetime(2026, 12, 5, 3, 30, tzinfo=UTC) + timedelta(seconds=4.025)
    assert next_pass_wait(30, 4.0, now) == pytest.approx(26.0)
    # An interval with a fraction, as tests use, is kept exactly.
    assert next_pass_wait(1.5, 0.4, now + timedelta(seconds=0.3)) == pytest.approx(1.1)
