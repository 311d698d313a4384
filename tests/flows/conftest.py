"""Fixtures that start real processes: the emulator as `auditlake emulator`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
AUDITLAKE = str(BIN / "auditlake")


@dataclass
class RunningEmulator:
    process: subprocess.Popen[str]
    api_root: str

    @property
    def base_url(self) -> str:
        return self.api_root.rsplit("/api/", 1)[0]


def start_emulator(*args: str) -> RunningEmulator:
    proc = subprocess.Popen(
        [AUDITLAKE, "emulator", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"listening on (http://\S+/api/v1\.0)", line)
        if m:
            return RunningEmulator(proc, m.group(1))
    proc.kill()
    raise AssertionError(f"emulator did not start: {''.join(lines)}")


@pytest.fixture
def emulator_factory() -> Iterator[object]:
    started: list[RunningEmulator] = []

    def factory(*args: str) -> RunningEmulator:
        emu = start_emulator(*args)
        started.append(emu)
        return emu

    yield factory
    for emu in started:
        emu.process.terminate()
        try:
            emu.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            emu.process.kill()


def collect_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "AUDITLAKE_API_TOKEN": "test-token",
        "AUDITLAKE_RETRY_BASE_SECONDS": "0.02",
        "AUDITLAKE_RETRY_MAX_SECONDS": "0.5",
        "AUDITLAKE_RETRY_ATTEMPTS": "10",
    })
    env.update(extra)
    return env
