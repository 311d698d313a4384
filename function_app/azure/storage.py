"""Clients of the app's storage account, from a connection string or an identity.

Locally (Azurite) ``AzureWebJobsStorage`` is a connection string; in Azure the app uses
identity-based connections (``AzureWebJobsStorage__queueServiceUri`` and friends plus a
managed identity), the same settings the Functions host reads for its own triggers.

Every client gets its own ``EnvProxyTransport``: the proxy environment is read once per host,
not on every request (see the class).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.helpers import get_env_proxy_for_url
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.pipeline.transport._aiohttp import AioHttpTransport  # the package's name is lazy: Any to mypy
from azure.data.tables.aio import TableServiceClient
from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential
from azure.storage.blob.aio import ContainerClient
from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient
from yarl import URL

from function_app.config import StorageConnection

# What the Blob and Queue SDKs give the transport they build themselves (seconds); the Tables
# SDK keeps azure-core's defaults, and so do we.
_STORAGE_TIMEOUTS: dict[str, Any] = {"connection_timeout": 20, "read_timeout": 60}

def env_proxy(url: URL) -> str | None:
    """The proxy aiohttp would choose for *url* from the environment (``HTTP_PROXY``,
    ``HTTPS_PROXY``, ``NO_PROXY``; the proxy's credentials from ``.netrc`` if its URL has none),
    as a URL with the credentials in it; None for a direct connection."""
    try:
        proxy, auth = get_env_proxy_for_url(url)
    except LookupError:
        return None
    if auth is not None:
        proxy = proxy.with_user(auth.login).with_password(auth.password)
    return str(proxy)


class ProxyLookup:
    """``env_proxy`` once per scheme and host, however many requests ask at the same time.

    The lookup reads ``.netrc`` in a worker thread; the Functions host starts dozens of messages
    at once on a fresh instance, and each asked on its own before the first answer was in (~40
    lookups for one host in the bench's Azure part). A lookup that failed is forgotten, so the
    next request tries again."""

    def __init__(self) -> None:
        self._found: dict[tuple[str, str], asyncio.Future[str | None]] = {}

    async def __call__(self, url: URL) -> str | None:
        where = (url.scheme, url.host or "")
        found = self._found.get(where)
        if found is None:
            found = self._found[where] = asyncio.ensure_future(asyncio.to_thread(env_proxy, url))
            found.add_done_callback(lambda done: self._forget_failed(where, done))
        # Shielded: a request cancelled while it waits must not cancel the lookup the others wait for.
        return await asyncio.shield(found)

    def _forget_failed(self, where: tuple[str, str], done: asyncio.Future[str | None]) -> None:
        if done.cancelled() or done.exception() is not None:
            self._found.pop(where, None)


class EnvProxyTransport(AioHttpTransport):
    """azure-core's aiohttp transport, with the proxy environment read once per host.

    The default transport opens its session with ``trust_env=True``, so aiohttp re-reads
    ``.netrc`` and the proxy variables, in executor threads, on every request (~5 % of the
    Azure path's client CPU, where a blob costs a few Table and Queue calls). This session
    does not trust the environment; the proxy aiohttp would have chosen is looked up on the
    first request to a scheme and host and passed explicitly from then on. A proxy given to the
    client (``proxies=``) still wins. Nothing is lost by not sending ``.netrc`` credentials to
    the storage host itself: a Storage request carries its own Authorization header, which
    aiohttp refuses to combine with them (the request would fail).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(use_env_settings=False, **kwargs)
        self._proxy_for = ProxyLookup()

    async def send(self, request: Any, **config: Any) -> Any:
        if not config.get("proxies") and not config.get("proxy"):
            proxy = await self._proxy_for(URL(request.url))
            if proxy is not None:
                config["proxy"] = proxy
        return await super().send(request, **config)


def storage_credential(connection: StorageConnection) -> AsyncTokenCredential | None:
    """The identity for an identity-based *connection*; None for a connection string."""
    if not connection.identity_based:
        return None
    if connection.managed_identity:
        return ManagedIdentityCredential(client_id=connection.client_id)
    # Without __credential the host itself falls back to a default chain; so do we.
    return DefaultAzureCredential(managed_identity_client_id=connection.client_id)


def queue_client(connection: StorageConnection, name: str, credential: AsyncTokenCredential | None) -> QueueClient:
    """A client of queue *name* whose messages are base64 text, as the Functions queue trigger expects."""
    if connection.connection_string is not None:
        return QueueClient.from_connection_string(
            connection.connection_string, name, transport=EnvProxyTransport(**_STORAGE_TIMEOUTS),
            message_encode_policy=TextBase64EncodePolicy(), message_decode_policy=TextBase64DecodePolicy())
    assert connection.queue_service_uri is not None
    return QueueClient(connection.queue_service_uri, name, credential=credential,
                       transport=EnvProxyTransport(**_STORAGE_TIMEOUTS),
                       message_encode_policy=TextBase64EncodePolicy(), message_decode_policy=TextBase64DecodePolicy())


def container_client(
    connection: StorageConnection, name: str, credential: AsyncTokenCredential | None
) -> ContainerClient:
    """A client of blob container *name*."""
    if connection.connection_string is not None:
        return ContainerClient.from_connection_string(connection.connection_string, name,
                                                      transport=EnvProxyTransport(**_STORAGE_TIMEOUTS))
    assert connection.blob_service_uri is not None
    return ContainerClient(connection.blob_service_uri, name, credential=credential,
                           transport=EnvProxyTransport(**_STORAGE_TIMEOUTS))


def table_service(connection: StorageConnection, credential: AsyncTokenCredential | None) -> TableServiceClient:
    """A client of the account's Table service (its table clients share its transport)."""
    if connection.connection_string is not None:
        return TableServiceClient.from_connection_string(connection.connection_string, transport=EnvProxyTransport())
    assert connection.table_service_uri is not None and credential is not None
    return TableServiceClient(connection.table_service_uri, credential=credential, transport=EnvProxyTransport())
