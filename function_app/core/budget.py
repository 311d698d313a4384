"""A memory budget for the blobs in flight: admission by bytes, not by count.

The Functions host runs up to ``batchSize + newBatchThreshold`` messages at once and the local
collector ``concurrency`` blobs; a count says nothing about memory, since one blob may be
1 KB and the next 200 MB. Each fetch reserves what its blob will cost (its size times
``BLOB_MEMORY_FACTOR``, measured by ``make bench``) before the body is read, and releases it
once the blob's rows are written. Many small blobs run together; a large one waits until it
fits and then runs with fewer neighbours. Waiters are served in arrival order, so a large
blob is not starved by a stream of small ones.
"""

from __future__ import annotations

import asyncio
from collections import deque

BLOB_MEMORY_FACTOR = 6
"""Peak memory of one blob in flight over its body size on the way to ADX: body, parsed records,
rows, compressed output. ``make bench`` measures it (blob200mb); keep this at or above what it prints."""

LAKE_BLOB_MEMORY_FACTOR = 20
"""The same on the way into the local DuckDB lake, whose write path holds more (Arrow columns, the
JSON text of every dynamic cell, DuckDB's own buffers): ``make bench`` measures it (blob50mb)."""


AZURE_MEMORY_WAIT_SECONDS = 300.0
"""Longest a blob of a content message waits for memory before the message is handed back
(``core.errors.MemoryWaitError``): half of host.json's ``functionTimeout``, so an invocation queued
behind many blobs near the size cap gives its message back instead of running out of time
(``tests/azure/test_indexing.py`` checks the two against each other). The local collector has no
timeout and waits as long as it takes."""


class Reservation:
    """Bytes held from a ``MemoryBudget``; ``release`` is idempotent."""

    __slots__ = ("_budget", "amount")

    def __init__(self, budget: MemoryBudget | None, amount: int) -> None:
        self._budget = budget
        self.amount = amount

    def release(self) -> None:
        budget, self._budget = self._budget, None
        if budget is not None:
            budget._give_back(self.amount)


NO_RESERVATION = Reservation(None, 0)


class MemoryBudget:
    """``limit`` bytes shared by the blobs of one process (one event loop)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a memory budget must be at least one byte")
        self.limit = limit
        self.in_use = 0
        self.peak = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def try_reserve(self, amount: int) -> Reservation | None:
        """Hold *amount* (cut to the limit) if it fits now and nobody waits before it, else None."""
        amount = max(0, min(amount, self.limit))
        if not self._waiters and self.in_use + amount <= self.limit:
            self._take(amount)
            return Reservation(self, amount)
        return None

    async def reserve(self, amount: int) -> Reservation:
        """Wait until *amount* bytes fit beside what is held, then hold them.

        An amount over the whole limit is cut to the limit (it then runs alone): the caller's
        size cap, not this budget, decides which blobs are refused.
        """
        granted = self.try_reserve(amount)
        if granted is not None:
            return granted
        amount = max(0, min(amount, self.limit))
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((amount, waiter))
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._give_back(amount)  # granted just as we were cancelled
            else:
                self._waiters = deque(w for w in self._waiters if w[1] is not waiter)
                self._wake()
            raise
        return Reservation(self, amount)

    def _take(self, amount: int) -> None:
        self.in_use += amount
        self.peak = max(self.peak, self.in_use)

    def _give_back(self, amount: int) -> None:
        self.in_use -= amount
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            amount, waiter = self._waiters[0]
            if waiter.cancelled():
                self._waiters.popleft()
                continue
            if self.in_use + amount > self.limit:
                return
            self._waiters.popleft()
            self._take(amount)
            waiter.set_result(None)
