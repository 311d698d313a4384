"""Start the Azurite storage emulator for adapter tests; installs nothing.

Azurite comes from the repo's ``package.json`` (``npm ci``); this helper only finds
``node_modules/.bin/azurite``, starts it in memory on ports the OS picks, and hands back
the explicit development connection string the Python SDKs need
(``UseDevelopmentStorage=true`` would point them at the fixed default ports).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AZURITE_BIN = REPO / "node_modules" / ".bin" / "azurite"

# The well-known Azurite development account (public, documented, not a secret). It is
# also passed in AZURITE_ACCOUNTS so the key the SDKs sign with and the key Azurite checks
# come from this one place.
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

_LISTENING = re.compile(r"Azurite (Blob|Queue|Table) service is successfully listening at (http://\S+)")


class AzuriteUnavailable(RuntimeError):
    """Azurite is not installed (run ``npm ci`` in the repo root) or did not start."""


@dataclass
class Azurite:
    """A running Azurite process and its endpoints; ``stop()`` ends it."""

    process: subprocess.Popen[str]
    blob_endpoint: str
    queue_endpoint: str
    table_endpoint: str
    workdir: Path
    output: list[str] = field(default_factory=list)

    account_name: str = ACCOUNT_NAME
    account_key: str = ACCOUNT_KEY

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account_name};AccountKey={self.account_key};"
            f"BlobEndpoint={self.blob_endpoint};QueueEndpoint={self.queue_endpoint};"
            f"TableEndpoint={self.table_endpoint};"
        )

    def stop(self) -> None:
        """Terminate this Azurite process (and only it) and remove its working directory."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_azurite(binary: Path = AZURITE_BIN, timeout: float = 30.0) -> Azurite:
    """Start Azurite in memory on free ports and return once all three services listen.

    Raises AzuriteUnavailable if the binary is missing or the services do not come up
    within *timeout* seconds (the process is stopped then).
    """
    if not binary.exists():
        raise AzuriteUnavailable(f"{binary} not found; run `npm ci` in {REPO}")
    # Azurite writes nothing with --inMemoryPersistence, but it still resolves its
    # workspace from the working directory: keep that out of the repo.
    workdir = Path(tempfile.mkdtemp(prefix="azurite-"))
    process = subprocess.Popen(
        [str(binary), "--disableTelemetry", "--inMemoryPersistence", "--skipApiVersionCheck",
         "--blobHost", "127.0.0.1", "--blobPort", "0",
         "--queueHost", "127.0.0.1", "--queuePort", "0",
         "--tableHost", "127.0.0.1", "--tablePort", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, cwd=workdir,
        env={**os.environ, "AZURITE_ACCOUNTS": f"{ACCOUNT_NAME}:{ACCOUNT_KEY}"},
    )
    assert process.stdout is not None
    endpoints: dict[str, str] = {}
    output: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        # Keep draining the pipe for the life of the process so Azurite never blocks on a
        # full stdout buffer while tests run.
        assert process.stdout is not None
        for line in process.stdout:
            if len(output) < 200:
                output.append(line)
            m = _LISTENING.search(line)
            if m:
                endpoints[m.group(1).lower()] = f"{m.group(2).rstrip('/')}/{ACCOUNT_NAME}"
                if len(endpoints) == 3:
                    ready.set()
        ready.set()

    threading.Thread(target=pump, name="azurite-stdout", daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.05):
        if time.monotonic() > deadline:
            break
    if len(endpoints) != 3:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
        raise AzuriteUnavailable("azurite did not start: " + "".join(output))
    return Azurite(process, endpoints["blob"], endpoints["queue"], endpoints["table"], workdir, output)
