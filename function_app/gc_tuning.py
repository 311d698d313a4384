"""The garbage collector's policy while records are collected in bulk.

A blob's records become tens of thousands of dicts, lists and strings, none of them in a cycle,
and they live from the fetch until their rows are committed, about a second. CPython's automatic
collection walks every live young object again and again while that happens: measured in a
7-day backfill (358,455 records, 2 cores), 294 collections took 11.5 s of 79.5 s of CPU with the
young threshold at 50,000, and the default 700 did worse. Those objects are freed by their
reference counts; only cycles need the collector, and the record path makes none (asyncio and
HTTP make a few). So while a collection runs, automatic collection is off and a full collection
runs every ``FULL_COLLECT_SECONDS`` instead: what cycles there are still go, for a bounded cost.

A full collection walks every object alive, and in a backfill those are the records in flight
(about 0.4 s a collection in the 7-day backfill), so collections are also spaced so that they
take at most ``MAX_COLLECT_SHARE`` of the time: at 15 s they took 3 % of that run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable

log = logging.getLogger(__name__)

FULL_COLLECT_SECONDS = 15.0
MAX_COLLECT_SHARE = 0.01


def next_collection_in(every: float, took: float, share: float = MAX_COLLECT_SHARE) -> float:
    """Seconds to the next full collection after one that took *took*: *every*, or longer, so
    that collections like it take at most *share* of the time."""
    return max(every, took / share)


@contextlib.asynccontextmanager
async def periodic_collection(
    every: float = FULL_COLLECT_SECONDS, *, collector: Callable[[], int] = gc.collect,
) -> AsyncIterator[None]:
    """Automatic collection off for the duration, a full collection (*collector*) every *every*
    seconds or more (``next_collection_in``), and the collector's previous state back at the end
    (nesting is harmless: the outer one restores)."""
    was_enabled = gc.isenabled()
    gc.disable()

    async def collect() -> None:
        wait = every
        while True:
            await asyncio.sleep(wait)
            started = time.perf_counter()
            found = collector()
            took = time.perf_counter() - started
            wait = next_collection_in(every, took)
            log.debug("full collection objects=%d seconds=%.3f next_in=%.1f", found, took, wait)

    task = asyncio.create_task(collect())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if was_enabled:
            gc.enable()
