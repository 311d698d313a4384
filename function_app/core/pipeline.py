"""The collection loop: planners list and hand blobs to a bounded pool of blob workers.

Memory is bounded by the blobs in flight, never by a window or a backfill: the queue between
planner and workers holds blob descriptors only. ``concurrency`` blobs are fetched and built at
once; where the state store keeps the rows (the local lake), a blob whose rows are handed over
frees its fetch slot while its commit gathers other blobs, and up to ``AWAITING_COMMIT_FACTOR``
times ``concurrency`` blobs may wait for their commit, so a commit carries thousands of records
instead of the few blobs the fetch slots hold.

When the sink or the state store itself fails (StoreUnavailableError: a full disk, a broken
lake) the pass stops at once: no listing and no blob fetch starts after it, and the blobs
handed on but not settled stay ``listed`` or ``queued`` in the ledger for the next run. A blob's
rows are committed together before its ledger row says ``ingested``, so a stop between the two
leaves the blob pending, and the next run writes its rows again as duplicates, which are skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from function_app.core.collector import Clock, Planner, PlanRequest
from function_app.core.errors import StoreUnavailableError
from function_app.core.model import BlobStatus, ContentBlob, RunStats
from function_app.core.ports import ActivityApi, Sink, StateStore, rows_kept_by
from function_app.core.process import BlobOutcome, RowBuilder, process_blob
from function_app.core.windows import PlanningRules

log = logging.getLogger(__name__)

AWAITING_COMMIT_FACTOR = 16
"""Blobs handed over and waiting for their commit, per fetch slot: a commit gathers up to 20,000
records (``AUDITLAKE_COMMIT_RECORDS``), ~435 blobs of ~46 records (the synthetic tenant's mean); the
default 32 slots × 16 = 512 blobs let the next group fill while one commits. The memory they hold
stays bounded by the blob budget (``core.budget``): a blob keeps its reservation until committed."""


@dataclass(slots=True)
class CollectReport:
    runs: list[RunStats] = field(default_factory=list)
    outcomes: list[BlobOutcome] = field(default_factory=list)
    worker_errors: list[str] = field(default_factory=list)
    # Set when the pass stopped because a store failed; the blobs it left are pending in the ledger.
    stopped: StoreUnavailableError | None = None
    handed_on: int = 0

    def count(self, status: BlobStatus) -> int:
        return sum(1 for o in self.outcomes if o.status is status)

    @property
    def unsettled(self) -> int:
        """Blobs handed on in this pass but not settled (left ``listed``/``queued``)."""
        return max(0, self.handed_on - len(self.outcomes))

    @property
    def ok(self) -> bool:
        """True when every blob was ingested and no pass or worker hit an error."""
        return (
            self.stopped is None
            and not self.worker_errors
            and all(o.status is BlobStatus.INGESTED for o in self.outcomes)
            and not any(r.errors for r in self.runs)
        )


class _InHand:
    """How many blobs the workers have taken off the queue and not yet handed over. When the last
    one's rows are handed over and the queue is empty, *idle* runs: with the local lake, its
    commit then goes at once instead of lingering for blobs that are not coming (the end of a
    pass, or a poll that found a few fresh blobs)."""

    __slots__ = ("_count", "_idle", "_queue")

    def __init__(self, queue: asyncio.Queue[ContentBlob], idle: Callable[[], None] | None) -> None:
        self._queue = queue
        self._idle = idle
        self._count = 0

    def take(self) -> None:
        """A worker took a blob off the queue."""
        self._count += 1

    def give_back(self) -> None:
        self._count -= 1
        if self._count == 0 and self._idle is not None and self._queue.empty():
            self._idle()


class _Slot:
    """A fetch slot held by one blob, given back once (when its rows are handed over, or at the end)."""

    __slots__ = ("_hands", "_held", "_semaphore")

    def __init__(self, semaphore: asyncio.Semaphore, hands: _InHand) -> None:
        self._semaphore = semaphore
        self._hands = hands
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._semaphore.release()
            self._hands.give_back()


class Pipeline:
    """Wires a Planner to blob workers over an in-process queue (the local twin of Azure's)."""

    def __init__(
        self,
        *,
        api: ActivityApi,
        state: StateStore,
        sink: Sink,
        build_rows: RowBuilder,
        clock: Clock,
        rules: PlanningRules,
        concurrency: int = 8,
        on_listed: Callable[[int], None] | None = None,
        on_outcome: Callable[[BlobOutcome], None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._api, self._state, self._sink = api, state, sink
        self._build_rows, self._clock, self._rules = build_rows, clock, rules
        self._concurrency = concurrency
        self._on_listed = on_listed or (lambda n: None)
        self._on_outcome = on_outcome or (lambda o: None)

    async def collect_once(
        self,
        feeds: Sequence[tuple[str, str]],
        *,
        since: datetime | None = None,
        sweep: bool = True,
    ) -> CollectReport:
        """Re-drive blobs a previous run left ``listed``, catch up every feed (tenant id, content
        type) from its checkpoint, sweep, and return when every handed-on blob is settled.

        If a store fails (StoreUnavailableError) the pass stops promptly instead: planners and
        workers are cancelled, and the report's ``stopped`` holds the error."""
        report = CollectReport()
        queue: asyncio.Queue[ContentBlob] = asyncio.Queue()
        halted = asyncio.Event()

        def halt(exc: StoreUnavailableError) -> None:
            if report.stopped is None:
                report.stopped = exc
                log.info("stopping the pass: %s", exc)
            halted.set()

        fetching = asyncio.Semaphore(self._concurrency)
        keeper = rows_kept_by(self._state, self._sink)
        hands = _InHand(queue, keeper.commit_soon if keeper is not None else None)
        workers = [asyncio.create_task(self._worker(queue, report, halt, fetching, hands))
                   for _ in range(self._concurrency * AWAITING_COMMIT_FACTOR)]

        async def hand_off(blobs: Sequence[ContentBlob]) -> None:
            self._on_listed(len(blobs))
            report.handed_on += len(blobs)
            for blob in blobs:
                queue.put_nowait(blob)

        planner = Planner(self._api, self._state, hand_off, self._clock, self._rules)

        async def plan(request: PlanRequest) -> RunStats | None:
            try:
                return await planner.run(request)
            except StoreUnavailableError as exc:
                halt(exc)
                return None

        planners: list[asyncio.Task[RunStats | None]] = []

        async def catch_up() -> None:
            try:
                for tenant, ctype in feeds:
                    left_behind = await self._state.pending(tenant, ctype)
                    if left_behind:
                        log.info("re-driving %d blobs left listed tenant_id=%s content_type=%s",
                                 len(left_behind), tenant, ctype)
                        await hand_off(left_behind)
                        # Mark them handed on before the planners re-list their windows, or the
                        # ledger still says `listed` and the same blobs are handed on twice.
                        await self._state.mark_queued(left_behind)
            except StoreUnavailableError as exc:
                halt(exc)
                return
            # Feeds list concurrently: each has its own checkpoint.
            planners.extend(asyncio.create_task(plan(PlanRequest(tenant, ctype, since=since, force_sweep=sweep)))
                            for tenant, ctype in feeds)
            runs = await asyncio.gather(*planners)
            report.runs.extend(r for r in runs if r is not None)
            await queue.join()

        passing = asyncio.create_task(catch_up())
        stopping = asyncio.create_task(halted.wait())
        try:
            await asyncio.wait((passing, stopping), return_when=asyncio.FIRST_COMPLETED)
            if passing.done():
                passing.result()  # a defect, not a store failure: raise it as before
        finally:
            # On a stop: no listing, no fetch and no write starts after this; what is not
            # settled stays pending in the ledger.
            tasks = [passing, stopping, *planners, *workers]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if report.stopped is not None:
            log.info("pass stopped handed_on=%d settled=%d left_pending=%d",
                     report.handed_on, len(report.outcomes), report.unsettled)
        return report

    async def _worker(
        self,
        queue: asyncio.Queue[ContentBlob],
        report: CollectReport,
        halt: Callable[[StoreUnavailableError], None],
        fetching: asyncio.Semaphore,
        hands: _InHand,
    ) -> None:
        while True:
            blob = await queue.get()
            hands.take()
            if report.stopped is not None:
                # The pass is stopping: the blob stays pending in the ledger.
                hands.give_back()
                queue.task_done()
                return
            await fetching.acquire()
            slot = _Slot(fetching, hands)
            try:
                if report.stopped is not None:
                    return
                outcome = await process_blob(
                    blob, api=self._api, sink=self._sink, state=self._state,
                    build_rows=self._build_rows, clock=self._clock, handed_over=slot.release,
                )
                report.outcomes.append(outcome)
                self._on_outcome(outcome)
            except StoreUnavailableError as exc:
                # The store said what failed; the blob stays pending, and the pass stops.
                halt(exc)
                return
            except Exception as exc:  # the sink or state failed: the blob stays listed
                log.exception("worker error tenant_id=%s content_type=%s content_id=%s",
                              blob.tenant_id, blob.content_type, blob.content_id)
                report.worker_errors.append(f"{blob.content_id}: {type(exc).__name__}: {exc}")
            finally:
                slot.release()
                queue.task_done()
