"""A token endpoint that cannot be reached is retried by the API client's own retry policy, then
reported as a retryable error in one line; a refusal is not retried. The API is the scripted fake
of fake_api.py; only the credential is a stand-in, except in the last tests, where a real
ClientSecretCredential goes through a proxy that is down."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from azure.core.credentials import AccessToken
from azure.core.exceptions import (
    ClientAuthenticationError,
    ServiceRequestError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)

from function_app.core.errors import PermanentApiError, RetryableError
from function_app.o365.auth import AzureIdentityTokenProvider, TokenUnavailableError
from function_app.o365.client import ManagementApiClient
from function_app.o365.clouds import Cloud
from function_app.o365.retry import RetryPolicy
from tests.unit.o365.fake_api import PUBLISHER, TENANT, FakeApi, json_reply

APP = "33333333-3333-3333-3333-333333333333"
SECRET = "Xy8Q~not-a-real-secret-but-long-enough-0123"
TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOi.entra-issued.signature"
ENDPOINT = f"https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token"
SUBSCRIPTIONS = [{"contentType": "Audit.Exchange", "status": "enabled", "webhook": None}]


class FlakyCredential:
    """Raises the scripted errors in turn, then hands out a token."""

    def __init__(self, errors: list[BaseException], *, forever: BaseException | None = None) -> None:
        self.errors = deque(errors)
        self.forever = forever
        self.calls = 0

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        if self.errors:
            raise self.errors.popleft()
        if self.forever is not None:
            raise self.forever
        return AccessToken(TOKEN, int(time.time()) + 3600)

    async def close(self) -> None:
        return None


@dataclass
class TokenResponse:
    """What azure-core attaches to the error of a token request answered with an error status."""

    status_code: int
    headers: dict[str, str]
    reason: str = "error"
    request: Any = None

    def text(self, encoding: str | None = None) -> str:
        return '{"error": "temporarily_unavailable"}'


def answered(status: int, retry_after: str | None = None) -> ClientAuthenticationError:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return ClientAuthenticationError(
        message=f"Microsoft Entra ID error '(temporarily_unavailable) AADSTS50196: HTTP {status}'",
        response=TokenResponse(status, headers),
    )


@dataclass
class Rig:
    api: FakeApi
    client: ManagementApiClient
    credential: FlakyCredential
    sleeps: list[float]


@asynccontextmanager
async def rig(credential: FlakyCredential, *, attempts: int, replies: int = 1) -> AsyncIterator[Rig]:
    api = FakeApi([json_reply(SUBSCRIPTIONS) for _ in range(replies)])
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", api.handle)
    sleeps: list[float] = []

    async def tiny_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await asyncio.sleep(seconds)

    provider = AzureIdentityTokenProvider(Cloud.ENTERPRISE, APP, client_secret=SECRET)
    provider._credentials[TENANT] = credential  # type: ignore[assignment]
    retry = RetryPolicy(max_attempts=attempts, base_delay=0.001, max_delay=0.01, sleep=tiny_sleep)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        client = ManagementApiClient(session, api_root=str(server.make_url("/api/v1.0")), publisher_id=PUBLISHER,
                                     tokens=provider, retry=retry, timeout=10)
        yield Rig(api, client, credential, sleeps)


def assert_one_clean_line(text: str) -> None:
    assert "\n" not in text and "\r" not in text
    assert SECRET not in text and TOKEN not in text


@pytest.mark.parametrize("error", [
    ServiceRequestError("Cannot connect to host login.microsoftonline.com:443 ssl:default [Connection refused]"),
    ServiceRequestError("Cannot connect to host login.microsoftonline.com:443 ssl:default "
                        "[Temporary failure in name resolution]"),
    ServiceResponseTimeoutError("Timeout on reading data from socket"),
    ServiceResponseError("Server disconnected"),
    answered(503),
    answered(429),
])
def test_a_token_outage_is_retried_by_the_api_policy_and_the_call_succeeds(error: Exception) -> None:
    async def scenario() -> None:
        async with rig(FlakyCredential([error, error, error]), attempts=5) as r:
            subscriptions = await r.client.list_subscriptions(TENANT)
            assert [s.content_type for s in subscriptions] == ["Audit.Exchange"]
            assert r.credential.calls == 4
            assert r.client.stats.retries == 3
            # The API is not called while there is no token, then once with the one issued.
            assert len(r.api.seen) == 1
            assert r.api.seen[0].headers["Authorization"] == f"Bearer {TOKEN}"

    asyncio.run(scenario())


def test_an_outage_outlasting_the_attempts_is_one_retryable_line_naming_endpoint_and_cause() -> None:
    cause = ServiceRequestError("Cannot connect to host login.microsoftonline.com:443 ssl:default "
                                "[Connect call failed ('40.126.0.1', 443)]")

    async def scenario() -> None:
        async with rig(FlakyCredential([], forever=cause), attempts=3) as r:
            with pytest.raises(TokenUnavailableError) as caught:
                await r.client.list_subscriptions(TENANT)
            assert r.credential.calls == 3
            assert r.api.seen == []
            assert r.client.stats.gave_up == 1
            assert len(r.sleeps) == 2 and all(s <= 0.01 for s in r.sleeps)
        text = str(caught.value)
        assert isinstance(caught.value, RetryableError)
        assert_one_clean_line(text)
        assert ENDPOINT in text and TENANT in text and "client_secret" in text
        assert "unreachable: ServiceRequestError: Cannot connect to host login.microsoftonline.com:443" in text

    asyncio.run(scenario())


def test_a_throttled_token_endpoint_is_waited_for_as_it_asks() -> None:
    async def scenario() -> None:
        async with rig(FlakyCredential([answered(429, retry_after="0.004")]), attempts=3) as r:
            await r.client.list_subscriptions(TENANT)
            assert r.sleeps == [0.004]

    asyncio.run(scenario())


def test_a_5xx_outlasting_the_attempts_keeps_its_status() -> None:
    async def scenario() -> None:
        async with rig(FlakyCredential([], forever=answered(503)), attempts=2) as r:
            with pytest.raises(TokenUnavailableError) as caught:
                await r.client.list_subscriptions(TENANT)
        assert caught.value.status == 503
        assert str(caught.value).startswith(f"HTTP 503: no token for tenant {TENANT} (client_secret): {ENDPOINT}")

    asyncio.run(scenario())


@pytest.mark.parametrize("status", [400, 401, None])
def test_a_refusal_is_permanent_at_once_in_one_line_without_the_secret(status: int | None) -> None:
    # Entra ID's description spans lines (trace and correlation ids); here it even echoes the secret.
    message = (f"Microsoft Entra ID error '(invalid_client) AADSTS7000215: Invalid client secret provided "
               f"({SECRET}).\r\nTrace ID: 0f1e\r\nCorrelation ID: 9a8b\r\nTimestamp: 2024-05-01 10:00:00Z'")
    response = TokenResponse(status, {}) if status is not None else None
    refusal = ClientAuthenticationError(message=message, response=response)

    async def scenario() -> None:
        async with rig(FlakyCredential([], forever=refusal), attempts=8) as r:
            with pytest.raises(PermanentApiError) as caught:
                await r.client.list_subscriptions(TENANT)
            assert r.credential.calls == 1
            assert r.sleeps == [] and r.client.stats.retries == 0
        text = str(caught.value)
        assert not isinstance(caught.value, RetryableError)
        assert_one_clean_line(text)
        assert "AADSTS7000215" in text and "Trace ID: 0f1e Correlation ID: 9a8b" in text
        assert f"no token for tenant {TENANT} (client_secret), not retried" in text

    asyncio.run(scenario())


def test_a_token_endpoint_certificate_that_does_not_verify_is_not_retried() -> None:
    bad = ServiceRequestError("certificate verify failed",
                              error=ssl.SSLCertVerificationError(1, "certificate verify failed"))

    async def scenario() -> None:
        async with rig(FlakyCredential([], forever=bad), attempts=5) as r:
            with pytest.raises(PermanentApiError, match="certificate that does not verify"):
                await r.client.list_subscriptions(TENANT)
            assert r.credential.calls == 1

    asyncio.run(scenario())


# -- the real credential ----------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _through_proxy(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    # azure-core's transport honours HTTPS_PROXY: the only way to make login.microsoftonline.com
    # unreachable without touching the network or the credential.
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    for name in ("NO_PROXY", "no_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_a_real_credential_with_its_endpoint_refusing_connections_raises_a_retryable_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _through_proxy(monkeypatch, _closed_port())

    async def scenario() -> None:
        provider = AzureIdentityTokenProvider(Cloud.ENTERPRISE, APP, client_secret=SECRET)
        try:
            with pytest.raises(TokenUnavailableError) as caught:
                await provider.token(TENANT)
        finally:
            await provider.close()
        text = str(caught.value)
        assert_one_clean_line(text)
        assert f"{ENDPOINT} unreachable: ServiceRequestError: Cannot connect to host" in text

    asyncio.run(scenario())


def test_a_real_credential_makes_one_connection_per_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    """azure-core's own retry would make four connections, seconds apart, per token request."""

    async def scenario() -> None:
        connections = 0

        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            writer.close()

        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        _through_proxy(monkeypatch, server.sockets[0].getsockname()[1])
        provider = AzureIdentityTokenProvider(Cloud.ENTERPRISE, APP, client_secret=SECRET)
        try:
            for attempt in (1, 2):
                started = time.monotonic()
                with pytest.raises(TokenUnavailableError, match=ENDPOINT):
                    await provider.token(TENANT)
                assert connections == attempt
                assert time.monotonic() - started < 1.0
        finally:
            await provider.close()
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
