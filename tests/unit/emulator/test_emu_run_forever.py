"""``run_forever``: the blocking entry the CLI uses prints one ready line and stops on SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request

import pytest

from tests.unit.emulator.helpers import TENANT

SCRIPT = (
    "from auditlake.emulator.server import run_forever; "
    f"run_forever('127.0.0.1', 0, ['{TENANT}'], 3, 2, 50, 'quiet', 'shuffle', None)"
)


@pytest.mark.slow
def test_run_forever_announces_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        m = re.fullmatch(r"emulator listening on (http://127\.0\.0\.1:(\d+)/api/v1\.0) tenants=(\S+)", line)
        assert m, line
        assert m.group(3) == TENANT
        base = m.group(1).removesuffix("/api/v1.0")
        with urllib.request.urlopen(f"{base}/_emulator/stats", timeout=10) as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
