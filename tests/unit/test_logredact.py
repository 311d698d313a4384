"""Secrets are blanked in every log record, whatever the logger and level: real urllib3 and
azure-core requests logged at DEBUG against a local HTTP server carry no SAS signature or
bearer token in what the handlers write."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import urllib3
from azure.core import PipelineClient
from azure.core.pipeline.policies import HttpLoggingPolicy, NetworkTraceLoggingPolicy
from azure.core.rest import HttpRequest

from function_app.lake import adx
from function_app.logredact import install_log_redaction, redact

SECRET = "SECRETsignature%2Bvalue%3D"
TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwcyJ9.c2lnbmF0dXJl"
REPO = Path(__file__).resolve().parents[2]


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    host, port = httpd.server_address[:2]
    yield f"http://{host!s}:{port}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Everything every logger writes at DEBUG, through one root handler, with redaction installed."""
    factory = logging.getLogRecordFactory()
    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    handler.setLevel(logging.DEBUG)
    levels = {name: logging.getLogger(name).level for name in ("", "urllib3", "azure")}
    install_log_redaction()
    root.addHandler(handler)
    for name in levels:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        logging.setLogRecordFactory(factory)


def test_a_urllib3_request_logged_at_debug_carries_no_sas_signature(server: str, captured: io.StringIO) -> None:
    pool = urllib3.PoolManager()
    response = pool.request("GET", f"{server}/tempstorage/blob.json.gz?sv=2024-01-01&se=2030-01-01&sig={SECRET}",
                            headers={"Authorization": f"Bearer {TOKEN}"})
    pool.clear()
    assert response.status == 200
    out = captured.getvalue()
    # urllib3.connectionpool logs the request line with the query string at DEBUG.
    assert "urllib3.connectionpool DEBUG" in out and "/tempstorage/blob.json.gz?sv=2024-01-01" in out, out
    assert "sig=REDACTED" in out
    assert "SECRETsignature" not in out


def test_azure_core_http_logging_carries_no_sas_signature_nor_token(server: str, captured: io.StringIO) -> None:
    # What azure-core's policies log (URLs with their query, headers), as its loggers.
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").info(
        "Request URL: %r\nRequest headers:\n    'Authorization': %r", f"{server}/c/b?sp=r&sig={SECRET}",
        f"Bearer {TOKEN}")
    # And a real request through an azure-core pipeline with network tracing on.
    client: PipelineClient[Any, Any] = PipelineClient(
        server, policies=[HttpLoggingPolicy(), NetworkTraceLoggingPolicy(logging_enable=True)])
    with client:
        response = client.send_request(HttpRequest("GET", f"{server}/c/b?sv=1&sig={SECRET}",
                                                   headers={"Authorization": f"Bearer {TOKEN}"}))
    assert response.status_code == 200
    out = captured.getvalue()
    assert "azure.core.pipeline.policies.http_logging_policy INFO Request URL:" in out
    assert "azure.core.pipeline.policies._universal DEBUG Request URL:" in out, out
    assert "sig=REDACTED" in out and "Bearer REDACTED" in out
    assert "SECRETsignature" not in out and TOKEN not in out


def test_exceptions_and_children_of_filtered_loggers_are_redacted(captured: io.StringIO) -> None:
    log = logging.getLogger("some.library.deep.child")
    try:
        raise ConnectionError(f"Max retries exceeded with url: /c/b?sig={SECRET} (AccountKey=abc123==;)")
    except ConnectionError:
        log.exception("request to %s failed", f"https://a.blob.core.windows.net/c/b?sig={SECRET}")
    log.debug({"url": f"https://a/?sig={SECRET}"})  # a non-string message
    # A bad format string: the handler reports msg and args as they are, so both are blanked.
    bad = log.makeRecord(log.name, logging.WARNING, "f", 1, "bad format %s %s", (f"sig={SECRET}",), None)
    assert (bad.msg, bad.args) == ("bad format %s %s", ("sig=REDACTED",))
    out = captured.getvalue()
    assert "ConnectionError: Max retries exceeded with url: /c/b?sig=REDACTED (AccountKey=REDACTED;)" in out
    assert "request to https://a.blob.core.windows.net/c/b?sig=REDACTED failed" in out
    assert "SECRETsignature" not in out and "abc123" not in out


def test_installing_twice_wraps_once_and_keeps_the_previous_factory() -> None:
    original = logging.getLogRecordFactory()

    def tagging(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = original(*args, **kwargs)
        record.tagged = True
        return record

    logging.setLogRecordFactory(tagging)
    try:
        install_log_redaction()
        installed = logging.getLogRecordFactory()
        install_log_redaction()
        assert logging.getLogRecordFactory() is installed
        record = logging.getLogger("x").makeRecord("x", logging.INFO, "f", 1, "url %s", (f"?sig={SECRET}",), None)
        assert record.tagged is True
        assert record.getMessage() == "url ?sig=REDACTED"
    finally:
        logging.setLogRecordFactory(original)


def test_redact_blanks_only_the_secrets() -> None:
    assert redact("https://a/c?sv=1&sp=r&sig=abc%2B%3D&se=2030") == "https://a/c?sv=1&sp=r&sig=REDACTED&se=2030"
    assert redact("blob%3Fsv%3D1%26sig%3Dabc%26se") == "blob%3Fsv%3D1%26sig%3DREDACTED"
    assert redact("'Authorization': 'Bearer abc.def-ghi'") == "'Authorization': 'Bearer REDACTED'"
    assert redact("DefaultEndpointsProtocol=https;AccountName=a;AccountKey=k/+==;EndpointSuffix=x") == (
        "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=REDACTED;EndpointSuffix=x")
    assert redact("signature=keep skoid=keep design=keep") == "signature=keep skoid=keep design=keep"
    assert adx.redact is redact  # one definition


def test_importing_the_app_installs_redaction() -> None:
    code = ("import logging, function_app.app\n"
            "r = logging.getLogger('urllib3').makeRecord('u', 10, 'f', 1, '%s', ('?sig=x',), None)\n"
            "print(r.getMessage())\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "?sig=REDACTED"
