"""The storage clients' transport (``function_app.azure.storage.EnvProxyTransport``) against real Azurite and a
recording HTTP proxy: a proxy configured in the environment is honoured, with its ``.netrc``
credentials, and ``NO_PROXY`` hosts are reached directly, but the environment is read once per
host, not on every request."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aiohttp
import pytest
from azure.core.exceptions import HttpResponseError
from yarl import URL

from function_app.azure import storage
from function_app.azure.storage import queue_client, table_service
from function_app.azure.table_rest import LeanTableClient
from function_app.config import StorageConnection
from tests.azurite import Azurite

_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


class RecordingProxy:
    """An HTTP proxy that records each request (request line, Proxy-Authorization) and answers 418,
    which neither Azurite nor a retry policy would produce."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                proxy.seen.append((self.requestline, self.headers.get("Proxy-Authorization")))
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                self.send_response(418)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_MERGE = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RecordingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


async def answered_by_proxy(call: Awaitable[object]) -> bool:
    """Whether *call* got the recording proxy's answer."""
    try:
        await call
    except HttpResponseError as exc:
        return exc.status_code == 418
    return False


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[RecordingProxy]:
    """A recording proxy named by HTTP_PROXY, its credentials in a .netrc (NETRC), no other proxy setting."""
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login proxy-user password proxy-secret\n")
    monkeypatch.setenv("NETRC", str(netrc))
    with RecordingProxy() as recording:
        monkeypatch.setenv("HTTP_PROXY", recording.url)
        yield recording


def test_requests_go_through_the_environments_proxy_read_once_per_host(
        azurite: Azurite, proxy: RecordingProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    connection = StorageConnection(connection_string=azurite.connection_string)

    async def main() -> None:
        async with table_service(connection, None) as service:
            table = service.get_table_client("Proxied")
            assert await answered_by_proxy(table.get_entity("p", "r"))
            monkeypatch.delenv("HTTP_PROXY")  # read once: this client keeps the proxy it found
            assert await answered_by_proxy(table.get_entity("p", "r2"))
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        async with queue_client(connection, "proxied", None) as queue:
            assert await answered_by_proxy(queue.get_queue_properties())

    asyncio.run(main())
    table_url = f"{azurite.table_endpoint}/Proxied(PartitionKey='p',RowKey='r"
    assert [line.split(" ")[1].startswith(table_url) for line, _ in proxy.seen] == [True, True, False]
    assert proxy.seen[2][0].split(" ")[1].startswith(f"{azurite.queue_endpoint}/proxied")
    # "proxy-user:proxy-secret", from the .netrc entry of the proxy's host.
    assert {auth for _, auth in proxy.seen} == {"Basic cHJveHktdXNlcjpwcm94eS1zZWNyZXQ="}


def test_no_proxy_hosts_are_reached_directly(
        azurite: Azurite, proxy: RecordingProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    connection = StorageConnection(connection_string=azurite.connection_string)
    name = f"Direct{uuid.uuid4().hex[:8]}"

    async def main() -> str:
        async with table_service(connection, None) as service:
            table = await service.create_table_if_not_exists(name)
            await table.upsert_entity({"PartitionKey": "p", "RowKey": "r", "Value": "direct"})
            return str((await table.get_entity("p", "r"))["Value"])

    assert asyncio.run(main()) == "direct"
    assert proxy.seen == []


def test_a_proxy_given_to_the_client_wins_over_the_environment(
        azurite: Azurite, proxy: RecordingProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # discard: nothing may go there
    with RecordingProxy() as given:
        connection = StorageConnection(connection_string=azurite.connection_string)

        async def main() -> None:
            async with queue_client(connection, "given", None) as queue:
                assert await answered_by_proxy(queue.get_queue_properties(proxies={"http": given.url}))

        asyncio.run(main())
    assert len(given.seen) == 1 and proxy.seen == []


def test_the_ledgers_lean_calls_go_through_the_environments_proxy_too(
        azurite: Azurite, proxy: RecordingProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    # The hot calls skip the SDK's transport (function_app.azure.signed_rest, which the content
    # queue's sends share): the same proxy, its .netrc credentials, the environment read once.
    connection = StorageConnection(connection_string=azurite.connection_string)

    async def main() -> None:
        async with table_service(connection, None) as service, aiohttp.ClientSession() as session:
            table = LeanTableClient(service.get_table_client("Proxied"), lambda: session)
            assert await answered_by_proxy(table.get_entity("p", "r"))
            monkeypatch.delenv("HTTP_PROXY")
            assert await answered_by_proxy(table.upsert_entity({"PartitionKey": "p", "RowKey": "r2"}))

    asyncio.run(main())
    assert [line.split(" ")[0] for line, _ in proxy.seen] == ["GET", "MERGE"]
    assert all(line.split(" ")[1].startswith(f"{azurite.table_endpoint}/Proxied(") for line, _ in proxy.seen)
    assert {auth for _, auth in proxy.seen} == {"Basic cHJveHktdXNlcjpwcm94eS1zZWNyZXQ="}


def test_requests_that_start_together_read_the_environment_once_and_a_failed_read_is_tried_again(
        azurite: Azurite, proxy: RecordingProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    # A fresh instance starts dozens of messages at once: they share one lookup of the proxy.
    reads: list[str] = []
    read = storage.env_proxy

    def counted(url: URL) -> str | None:
        reads.append(str(url))
        if len(reads) == 1:
            raise OSError("the .netrc could not be read")
        return read(url)

    monkeypatch.setattr(storage, "env_proxy", counted)
    connection = StorageConnection(connection_string=azurite.connection_string)

    async def main() -> None:
        async with table_service(connection, None) as service, aiohttp.ClientSession() as session:
            table = LeanTableClient(service.get_table_client("Proxied"), lambda: session)
            with pytest.raises(OSError, match="netrc"):
                await table.get_entity("p", "first")
            answered = await asyncio.gather(*(answered_by_proxy(table.get_entity("p", f"r{n}")) for n in range(20)))
            assert answered == [True] * 20

    asyncio.run(main())
    assert len(reads) == 2
    assert len(proxy.seen) == 20
