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
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import cast

from function_app.azure.ingest_failures import FailureReports, StatusQueueReports
from function_app.azure.mirror import AdxMirroredState
from function_app.compose import EntraRouter, SearchRouter, open_parts
from function_app.config import app_settings
from function_app.core.delivery import Runtime
from function_app.core.ports import ClaimingStateStore
from function_app.lake.adx import AdxSink
from function_app.o365.retry import is_transient
from function_app.purview.backfill import SliceLedger

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Built:
    runtime: Runtime
    stack: AsyncExitStack
    failure_reports: FailureReports | None = None
    search: SearchRouter | None = None
    entra: EntraRouter | None = None


@dataclass(frozen=True, slots=True)
class SearchParts:
    """What the search timer uses: the Runtime (state, sink, rows, clock), the Purview audit search
    clients of its tenants, and the slice ledger (the Runtime's own state store)."""

    runtime: Runtime
    search: SearchRouter
    ledger: SliceLedger


_built: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[_Built]] = weakref.WeakKeyDictionary()


def instance_name() -> str:
    """A short name of this instance for claim owners and logs (no secrets in it)."""
    instance = os.environ.get("WEBSITE_INSTANCE_ID", "")[:12] or socket.gethostname()
    return f"{instance}:{os.getpid()}"


async def _build() -> _Built:
    cfg = app_settings()
    stack = AsyncExitStack()
    try:
        # The parts come from the one composition root, as they do for collect, replay and demo.
        # With the search clients: they share the feed's HTTP session and cost nothing until the
        # search timer calls them (a tenant without the API is told so then, not at start-up).
        # And the Entra ID log clients, which likewise cost nothing until the entra timer polls.
        parts = await stack.enter_async_context(open_parts(cfg.core, azure=cfg.azure, search=True, entra=True))
        assert parts.queue is not None and parts.deadletter is not None
        runtime = Runtime(settings=cfg.core, azure=cfg.azure, state=cast(ClaimingStateStore, parts.state),
                          queue=parts.queue, deadletter=parts.deadletter, sink=parts.sink, api=parts.api,
                          build_rows=parts.build_rows, clock=parts.clock, instance=instance_name(),
                          rules=parts.rules, transient=is_transient)
        reports: StatusQueueReports | None = None
        if isinstance(runtime.sink, AdxSink):
            # The status queues of the sink's own data-management service (SAS URLs it hands out);
            # closed before the sink (the stack unwinds last in, first out).
            reports = StatusQueueReports(runtime.sink.failure_queue_urls)
            stack.push_async_callback(reports.close)
    except BaseException:
        await stack.aclose()
        raise
    log.info("runtime built instance=%s tenants=%d queue=%s adx_database=%s streaming=%s", runtime.instance,
             len(parts.feeds), cfg.azure.content_queue, cfg.azure.adx_database, cfg.azure.adx_streaming)
    return _Built(runtime, stack, reports, parts.search, parts.entra)


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


async def search_parts() -> SearchParts:
    """The search timer's parts for the running loop's Runtime (built on first use, as ``runtime``)."""
    built = await _built_for_loop()
    state = built.runtime.state
    # The Table Storage ledger, mirrored to ADX like every other ledger change (azure.mirror).
    if built.search is None or not isinstance(state, AdxMirroredState):  # pragma: no cover - _build makes both
        raise RuntimeError("the Runtime has no Purview audit search or no mirrored Table Storage ledger")
    return SearchParts(built.runtime, built.search, state)


async def entra_parts() -> tuple[Runtime, EntraRouter]:
    """The entra timer's parts: the Runtime (its Table Storage ledger and checkpoints, mirrored to
    ADX, and the ADX sink) and the Entra ID log clients of its tenants."""
    built = await _built_for_loop()
    if built.entra is None:  # pragma: no cover - _build makes it
        raise RuntimeError("the Runtime has no Entra ID log clients")
    return built.runtime, built.entra


async def close_runtime() -> None:
    """Release the running loop's Runtime (tests; the worker keeps it for the process's life)."""
    loop = asyncio.get_running_loop()
    task = _built.pop(loop, None)
    if task is None:
        return
    built = await task
    try:
        await built.stack.aclose()
    except Exception:
        log.exception("closing a client failed")
