"""The token-endpoint outage test: the collector survives, retries, and reports.

`auditlake collect` runs as a long-lived process against the emulator with a real
ClientSecretCredential. Entra ID is reached through HTTPS_PROXY, which points at a local stand-in:
while it is "down" it hangs up on every connection; once "up" it answers CONNECT, terminates TLS
for login.microsoftonline.com with a certificate the collector trusts through SSL_CERT_FILE, and
issues a token. Nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import re
import signal
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from tests.flows.conftest import AUDITLAKE, REPO, RunningEmulator, collect_env

TENANT = "0b7f3c2e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
APP = "33333333-3333-3333-3333-333333333333"
SECRET = "Xy8Q~flow-test-secret-never-printed-0123456789"
ISSUED = "eyJ0eXAiOiJKV1QiLCJhbGciOi.flow-test-issued.signature"
AUTHORITY = "login.microsoftonline.com"
ENDPOINT = f"https://{AUTHORITY}/{TENANT}/oauth2/v2.0/token"
CONTENT_TYPES = ("Audit.Exchange", "Audit.SharePoint")
ATTEMPTS = 3

pytestmark = pytest.mark.slow


def _certificate(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, AUTHORITY)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(AUTHORITY)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "authority.pem", directory / "authority.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


class EntraStandIn:
    """An HTTPS proxy that is either down (hangs up) or is itself the Entra ID token endpoint."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(cert_file, key_file)
        self.up = threading.Event()
        self.connections = 0
        self.tokens_issued = 0
        self.bad_requests: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port: int = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if not self.up.is_set():
                return
            connect = await reader.readuntil(b"\r\n\r\n")
            if not connect.startswith(f"CONNECT {AUTHORITY}:443 ".encode()):
                self.bad_requests.append(connect.decode(errors="replace"))
                return
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await writer.start_tls(self._tls)
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            length = int(re.search(r"(?im)^content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
            form = (await reader.readexactly(length)).decode()
            if not head.startswith(f"POST /{TENANT}/oauth2/v2.0/token ") or f"client_id={APP}" not in form:
                self.bad_requests.append(head)
                return
            body = orjson.dumps({"token_type": "Bearer", "expires_in": 3599, "access_token": ISSUED})
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            self.tokens_issued += 1
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def entra(tmp_path: Path) -> Iterator[tuple[EntraStandIn, Path]]:
    cert_file, key_file = _certificate(tmp_path)
    stand_in = EntraStandIn(cert_file, key_file)
    yield stand_in, cert_file
    stand_in.close()


class Lines:
    """The collector's stderr, read as it comes."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stderr is not None
        stream = proc.stderr
        self._thread = threading.Thread(target=lambda: self.lines.extend(iter(stream.readline, "")), daemon=True)
        self._thread.start()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, what: str, ok: Callable[[list[str]], bool], proc: subprocess.Popen[str],
                  timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ok(list(self.lines)):
                return
            assert proc.poll() is None, f"collector exited ({proc.returncode}) waiting for {what}:\n{self.text[-4000:]}"
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}:\n{self.text[-4000:]}")

    def join(self) -> None:
        self._thread.join(10)


def _truth(emu: RunningEmulator, content_type: str, start: datetime, end: datetime) -> set[tuple[str, int, str]]:
    query = (f"tenantId={TENANT}&contentType={content_type}"
             f"&start={start.strftime('%Y-%m-%dT%H:%M:%SZ')}&end={end.strftime('%Y-%m-%dT%H:%M:%SZ')}")
    with urllib.request.urlopen(f"{emu.base_url}/_emulator/truth?{query}", timeout=30) as resp:
        body = orjson.loads(resp.read())
    return {(r[0], int(r[1]), r[2]) for r in body["records"]}


def _listing_failures(lines: list[str], content_type: str) -> list[str]:
    return [line for line in lines if "listing failed" in line and f"content_type={content_type} " in line]


def test_token_endpoint_outage_the_collector_survives_retries_reports_and_recovers(
    emulator_factory: Any, entra: tuple[EntraStandIn, Path], tmp_path: Path,
) -> None:
    stand_in, cert_file = entra
    emu = emulator_factory("--tenant-id", TENANT, "--days", "2", "--records-per-day", "400", "--seed", "5")
    lake = tmp_path / "lake.duckdb"
    env = collect_env(
        AZURE_CLIENT_ID=APP, AZURE_CLIENT_SECRET=SECRET,
        HTTPS_PROXY=f"http://127.0.0.1:{stand_in.port}", SSL_CERT_FILE=str(cert_file),
        AUDITLAKE_RETRY_ATTEMPTS=str(ATTEMPTS), AUDITLAKE_RETRY_BASE_SECONDS="0.01",
        AUDITLAKE_RETRY_MAX_SECONDS="0.05",
    )
    # The real credential, not the static token every other flow test uses.
    for name in ("AUDITLAKE_API_TOKEN", "AUDITLAKE_TENANTS", "NO_PROXY", "no_proxy", "https_proxy",
                 "ALL_PROXY", "all_proxy", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_CERTIFICATE_PATH",
                 "AUDITLAKE_FEDERATED_MI"):
        env.pop(name, None)
    started = datetime.now(UTC)
    cmd = [AUDITLAKE, "collect", "-v", "--tenant-id", TENANT, "--api-root", emu.api_root, "--lake", str(lake),
           "--since", "1d", "--interval", "0.3", "--no-serve", "--quiet"]
    for content_type in CONTENT_TYPES:
        cmd += ["--content-type", content_type]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = Lines(proc)
    try:
        # Down: every pass fails its listings, and the process carries on to the next pass.
        lines.wait_for("three passes failing on the token endpoint",
                       lambda ls: all(len(_listing_failures(ls, ct)) >= 3 for ct in CONTENT_TYPES), proc)
        assert proc.poll() is None
        down = lines.text
        failures = [line for ct in CONTENT_TYPES for line in _listing_failures(lines.lines, ct)]
        for line in failures:
            assert f"no token for tenant {TENANT} (client_secret): {ENDPOINT} unreachable: ServiceRequestError" \
                in line, line
        # Each listing was tried ATTEMPTS times by the API retry policy, one connection each.
        assert re.search(rf"retrying list content page 1 tenant_id={TENANT} content_type=Audit\.Exchange "
                         rf"after attempt {ATTEMPTS - 1} in [0-9.]+s: TokenUnavailableError: ", down)
        assert f"after attempt {ATTEMPTS}" not in down
        assert stand_in.connections >= 3 * ATTEMPTS * len(CONTENT_TYPES)
        assert len(re.findall(r"giving up list content page 1", down)) >= 3 * len(CONTENT_TYPES)

        # Back up: a later pass of the same process gets a token and collects.
        stand_in.up.set()
        lines.wait_for("a pass that lists blobs after the outage",
                       lambda ls: any(re.search(r"listed tenant_id=\S+ content_type=\S+ .* new=[1-9]", line)
                                      for line in ls), proc)
        lines.wait_for("blobs ingested", lambda ls: any("blob ingested" in line for line in ls), proc)
        lines.wait_for("the pass to finish", lambda ls: any("pass done blobs=" in line and "blobs=0 " not in line
                                                            for line in ls), proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"collector did not exit on SIGINT:\n{lines.text[-4000:]}") from None
        lines.join()

    err = lines.text
    assert "Traceback" not in err, err[-6000:]
    assert SECRET not in err and ISSUED not in err
    assert stand_in.bad_requests == []
    # azure-identity caches the token: the passes after the outage did not ask again (the content
    # types list concurrently, so more than one may have asked at first).
    assert 1 <= stand_in.tokens_issued <= len(CONTENT_TYPES)

    con = duckdb.connect(str(lake), read_only=True)
    try:
        runs = con.execute('SELECT "ContentType", "Errors", "BlobsListed" FROM "CollectorRun" '
                           'ORDER BY "StartedAt"').fetchall()
        keys = {(str(a), int(b), str(c)) for a, b, c in
                con.execute('SELECT "Id", "RecordType", "Operation" FROM "AuditRecord"').fetchall()}
    finally:
        con.close()
    errors = [(content_type, orjson.loads(e or "[]"), listed) for content_type, e, listed in runs]
    failed = [(ct, e, listed) for ct, e, listed in errors if e]
    # One pass error per content type and pass, the same line the log showed; nothing listed.
    assert len(failed) >= 3 * len(CONTENT_TYPES)
    assert all(len(e) == 1 and f"{ENDPOINT} unreachable" in e[0] and listed == 0 for _, e, listed in failed)
    assert {ct for ct, e, listed in errors if not e and listed > 0} == set(CONTENT_TYPES)
    # Nothing was lost to the outage: every record of the day asked for (less the planner's margin) is in the lake.
    for content_type in CONTENT_TYPES:
        expected = _truth(emu, content_type, started - timedelta(days=1) + timedelta(minutes=6), started)
        assert expected, f"the emulator served no {content_type} to compare with"
        missing = expected - keys
        assert not missing, f"{len(missing)} {content_type} records missing, e.g. {sorted(missing)[:3]}"
