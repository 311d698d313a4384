"""The Functions app's dependencies, built once per process from the cached settings.

Async clients (aiohttp, the Storage SDKs) belong to the event loop they were created on. The
Python worker runs every async function on one loop, so in Azure this is built once per
process; tests that run several loops get one Runtime per loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from azure.core.credentials import TokenCredential
from azure.identity import ManagedIdentityCredential

from function_app.azure.deadletter import BlobDeadLetterStore
from function_app.azure.handlers import Runtime, TenantApi
from function_app.azure.ingest_failures import FailureReports, StatusQueueReports
from function_app.azure.mirror import AdxMirroredState
from function_app.azure.queue import StorageContentQueue
from function_app.azure.storage import container_client, queue_client, storage_credential, table_service
from function_app.config import AppSettings, app_settings
from function_app.core.budget import MemoryBudget
from function_app.lake.adx import AdxSink
from function_app.o365.auth import TokenProvider, token_provider_from_env
from function_app.o365.client import ManagementApiClient
from function_app.o365.clouds import Cloud
from function_app.o365.retry import RetryPolicy
from function_app.state.table import TableStateStore
from function_app.wiring import build_rows, utcnow

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Built:
    runtime: Runtime
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    failure_reports: FailureReports | None = None


_built: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[_Built]] = weakref.WeakKeyDictionary()


def instance_name() -> str:
    """A short name of this instance for claim owners and logs (no secrets in it)."""
    instance = os.environ.get("WEBSITE_INSTANCE_ID", "")[:12] or socket.gethostname()
    return f"{instance}:{os.getpid()}"


def _adx_credential(cfg: AppSettings) -> TokenCredential | None:
    client_id = cfg.azure.adx_client_id or cfg.azure.storage.client_id
    if cfg.azure.adx_ingest_uri.startswith("http://"):
        return None  # a local fake: no token
    # A user-assigned identity must be named; None lets AdxSink use DefaultAzureCredential.
    return ManagedIdentityCredential(client_id=client_id) if client_id else None


async def build_runtime(cfg: AppSettings) -> tuple[Runtime, list[Callable[[], Awaitable[None]]]]:
    """Every client the handlers need, and the closers that release them (in order)."""
    closers: list[Callable[[], Awaitable[None]]] = []
    core, az = cfg.core, cfg.azure
    credential = storage_credential(az.storage)
    state = TableStateStore(table_service(az.storage, credential), checkpoints_table=az.checkpoints_table,
                            ledger_table=az.ledger_table, runs_table=az.runs_table, clock=utcnow)
    closers.append(state.close)
    queue = StorageContentQueue(queue_client(az.storage, az.content_queue, credential))
    closers.append(queue.close)
    deadletter = BlobDeadLetterStore(container_client(az.storage, az.deadletter_container, credential), clock=utcnow)
    closers.append(deadletter.close)
    if credential is not None:
        closers.append(credential.close)
    sink = AdxSink.create(az.adx_ingest_uri, az.adx_database, _adx_credential(cfg),
                          engine_uri=az.adx_engine_uri, streaming=az.adx_streaming)

    async def close_sink() -> None:
        await asyncio.to_thread(sink.close)

    closers.append(close_sink)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max(16, core.concurrency * 2)))
    closers.append(session.close)
    publisher = core.publisher_id or core.tenants[0].tenant_id
    clients: dict[str, ManagementApiClient] = {}
    # One budget for the whole instance: every message the host runs at once draws from it.
    memory = MemoryBudget(core.memory_budget_mb * 1024 * 1024)
    apis: dict[str, TenantApi] = {}
    for tenant in core.tenants:
        cloud = Cloud.parse(tenant.cloud)
        root = (core.api_root or cloud.api_root).rstrip("/")
        client = clients.get(root)
        if client is None:
            tokens: TokenProvider = token_provider_from_env(os.environ, cloud)
            close_tokens = getattr(tokens, "close", None)
            if close_tokens is not None:
                closers.append(close_tokens)
            client = ManagementApiClient(
                session, api_root=root, publisher_id=publisher, tokens=tokens,
                retry=RetryPolicy(max_attempts=core.retry_attempts, base_delay=core.retry_base,
                                  max_delay=core.retry_max),
                timeout=core.http_timeout, max_blob_bytes=core.max_blob_bytes,
                # The exact bytes, for the dead letter of a blob whose write fails after the fetch.
                keep_body=True, memory=memory,
            )
            clients[root] = client
        apis[tenant.tenant_id] = TenantApi(client, client.api_root)
    # Settled ledger rows and runs are also ingested into ADX, so they are countable with KQL.
    mirrored = AdxMirroredState(state, sink)
    runtime = Runtime(settings=core, azure=az, state=mirrored, queue=queue, deadletter=deadletter, sink=sink,
                      apis=apis, build_rows=build_rows, clock=utcnow, instance=instance_name())
    log.info("runtime built instance=%s tenants=%d queue=%s adx_database=%s streaming=%s", runtime.instance,
             len(apis), az.content_queue, az.adx_database, az.adx_streaming)
    return runtime, closers


async def _build() -> _Built:
    runtime, closers = await build_runtime(app_settings())
    reports: StatusQueueReports | None = None
    if isinstance(runtime.sink, AdxSink):
        # The status queues of the sink's own data-management service (SAS URLs it hands out).
        reports = StatusQueueReports(runtime.sink.failure_queue_urls)
        # Before the sink's closer: the report clients are plain Storage clients.
        closers.insert(0, reports.close)
    return _Built(runtime, closers, reports)


async def _built_for_loop() -> _Built:
    app_settings()  # validate first: the error names the setting, not a client
    loop = asyncio.get_running_loop()
    task = _built.get(loop)
    if task is None:
        task = loop.create_task(_build())
        _built[loop] = task
    try:
        # Shielded: one invocation being cancelled must not cancel the build the others await.
        return await asyncio.shield(task)
    except BaseException:
        if _built.get(loop) is task and task.done():
            del _built[loop]
        raise


async def runtime() -> Runtime:
    """The Runtime of the running event loop, built on first use from ``app_settings()``.

    Raises SettingsError (naming the setting) while the configuration is bad; a failed build
    is not cached, so a fixed setting takes effect without restarting the process.
    """
    return (await _built_for_loop()).runtime


async def failure_reports() -> FailureReports:
    """The ADX failed-ingestions status queues of the running loop's Runtime (built on first
    use, as ``runtime``)."""
    reports = (await _built_for_loop()).failure_reports
    if reports is None:  # pragma: no cover - build_runtime always makes an AdxSink
        raise RuntimeError("the Runtime's sink is not ADX: there are no ingestion failure reports to read")
    return reports


async def close_runtime() -> None:
    """Release the running loop's Runtime (tests; the worker keeps it for the process's life)."""
    loop = asyncio.get_running_loop()
    task = _built.pop(loop, None)
    if task is None:
        return
    built = await task
    for close in built.closers:
        try:
            await close()
        except Exception:
            log.exception("closing a client failed")
