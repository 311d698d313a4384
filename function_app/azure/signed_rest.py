"""Storage REST calls signed and sent over one aiohttp session, without azure-core's pipeline.

The Azure path's hot calls (the ledger's point operations and transactions, one queue message per
blob) cost most of its client CPU through the SDKs: measured against Azurite on this machine, in
one run, ~2 ms of CPU an ``update_entity`` (3.1 ms with the proxy environment read per request)
and ~9 ms a two-operation transaction, where the same requests signed and sent here cost 0.4-0.6 ms
and 0.5-0.9 ms (0.4-1.1 ms a call across two such runs).
What the pipeline gave, this keeps: the credential the SDK client holds (SharedKeyLite from an
account key, or a bearer token from the managed identity, renewed before it expires), retries
of transient failures (408, 429, 5xx, a dropped connection, a timeout) with azure-data-tables'
defaults (3 retries, back-off from 0.8 s doubling; the Queue SDK waits 15 s first, but a send that
still fails only leaves its blob ``listed`` for the next run), the SDKs' timeouts, and the proxy the
environment names (looked up once, as ``storage.EnvProxyTransport`` does).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import random
import time
from collections.abc import Callable, Mapping
from email.utils import formatdate
from typing import Any, cast

import aiohttp
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from yarl import URL

from function_app.azure.storage import ProxyLookup

STORAGE_SCOPE = "https://storage.azure.com/.default"
# What azure-data-tables' retry policy retries (3 retries, 0.8 s doubling), and the SDKs' timeouts.
_TRANSIENT = frozenset({408, 429, 500, 502, 503, 504})
RETRIES = 3
_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=20, sock_read=60)
# A cached token is renewed this long before it expires.
_TOKEN_SLACK_S = 300

# (method, URL path) of each request as it is sent, for tests that count round trips.
RequestHook = Callable[[str, str], None]
# The string a service's SharedKeyLite signs: (method, path, headers) -> the text before the path.
HeadersToSign = Callable[[str, Mapping[str, str]], str]
# The service's error code and message from an error answer's body.
ErrorText = Callable[[bytes], tuple[str | None, str]]


def account_key(credential: Any) -> tuple[str, bytes] | None:
    """(account, key) of an SDK client's shared-key credential (Tables' AzureNamedKeyCredential,
    Blob's and Queue's key policy); None for a token credential."""
    if isinstance(credential, AzureNamedKeyCredential):
        name, key = credential.named_key
        return name, base64.b64decode(key)
    if hasattr(credential, "account_key") and hasattr(credential, "account_name"):
        return str(credential.account_name), base64.b64decode(credential.account_key)
    return None


def raise_for(status: int, reason: str, code: str | None, message: str) -> None:
    """The azure-core error the SDK raises for *status*."""
    text = f"({code}) {message}" if code else f"{status} {reason}: {message}"
    kinds: dict[int, type[HttpResponseError]] = {404: ResourceNotFoundError, 409: ResourceExistsError,
                                                 412: ResourceModifiedError}
    error = kinds.get(status, HttpResponseError)(message=text)
    error.status_code = status
    error.reason = reason
    raise error


class LazySession:
    """The aiohttp session of the lean calls, opened on first use (inside the event loop) and
    shared by the clients given it. It does not trust the environment: ``SignedRest`` looks the
    proxy up once per endpoint instead of aiohttp on every request."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    def __call__(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(trust_env=False, connector=aiohttp.TCPConnector(limit=self._limit))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class SignedRest:
    """Requests to one storage service endpoint (*url*: its origin and root path), signed with
    *credential*; *headers_to_sign* is the service's SharedKeyLite text before the resource."""

    def __init__(self, url: str, credential: Any, session: Callable[[], aiohttp.ClientSession], *,
                 headers_to_sign: HeadersToSign, error_text: ErrorText, version: str,
                 request_hook: RequestHook | None = None, backoff_s: float = 0.8) -> None:
        base = URL(url)
        self.origin = f"{base.scheme}://{base.raw_authority}"
        self.root = base.raw_path.rstrip("/")  # "/devstoreaccount1" on Azurite, "" on Azure
        self._key = account_key(credential)
        self._credential = credential
        self._session = session
        self._headers_to_sign = headers_to_sign
        self._error_text = error_text
        self._version = version
        self._hook = request_hook
        self._backoff_s = backoff_s
        self._token: tuple[str, float] | None = None
        self._proxy = ProxyLookup()

    async def _authorization(self, method: str, path: str, headers: Mapping[str, str]) -> str:
        if self._key is not None:
            name, key = self._key
            text = f"{self._headers_to_sign(method, headers)}/{name}{path}"
            signed = hmac.new(key, text.encode(), hashlib.sha256).digest()
            return f"SharedKeyLite {name}:{base64.b64encode(signed).decode()}"
        token = self._token
        if token is None or token[1] - _TOKEN_SLACK_S < time.time():
            got = await cast(AsyncTokenCredential, self._credential).get_token(STORAGE_SCOPE)
            token = self._token = (got.token, float(got.expires_on))
        return f"Bearer {token[0]}"

    async def _proxy_for(self) -> str | None:
        return await self._proxy(URL(self.origin))

    async def send(self, method: str, relative: str, *, body: bytes | None = None,
                   headers: Mapping[str, str] | None = None, query: str = "",
                   ok: tuple[int, ...] = (200, 201, 204)) -> tuple[int, Mapping[str, str], bytes]:
        """*method* on the root's *relative* path (already percent-encoded), with *query* (encoded,
        without "?", not signed: SharedKeyLite signs only ``comp``, which no caller sends)."""
        path = self.root + relative
        proxy = await self._proxy_for()
        url = URL(self.origin + path + (f"?{query}" if query else ""), encoded=True)
        for attempt in range(RETRIES + 1):
            sent = {"x-ms-date": formatdate(usegmt=True), "x-ms-version": self._version, **(headers or {})}
            sent["Authorization"] = await self._authorization(method, path, sent)
            if self._hook is not None:
                self._hook(method, path)
            try:
                async with self._session().request(method, url, data=body, headers=sent, proxy=proxy,
                                                   timeout=_TIMEOUT) as response:
                    got = await response.read()
                    status, reason, answer = response.status, response.reason or "", response.headers
            except (TimeoutError, aiohttp.ClientConnectionError):
                if attempt == RETRIES:
                    raise
            else:
                if status in ok:
                    return status, answer, got
                if status not in _TRANSIENT or attempt == RETRIES:
                    raise_for(status, reason, *self._error_text(got))
            await asyncio.sleep(self._backoff_s * (2 ** attempt) * (1 + random.random() / 5))
        raise AssertionError("unreachable")  # the last attempt returns or raises
