"""Planning: list content window by window and hand every new blob on before the checkpoint moves.

At-least-once by construction: a window's blobs are recorded in the ledger and handed on
(enqueued in Azure, queued to local workers) before the checkpoint passes the window, so a
crash at any point re-lists rather than skips. The ledger de-duplicates re-listed blobs.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from function_app.core.errors import ApiError, SubscriptionMissingError
from function_app.core.model import PLANNING_RUN, Checkpoint, ContentBlob, RunStats, Window, utc
from function_app.core.ports import ActivityApi, StateStore
from function_app.core.windows import (
    PlanningRules,
    earliest_start,
    next_position,
    plan_windows,
    sweep_due,
    sweep_windows,
)

log = logging.getLogger(__name__)

HandOff = Callable[[Sequence[ContentBlob]], Awaitable[None]]
Clock = Callable[[], datetime]


@dataclass(frozen=True, slots=True)
class PlanRequest:
    tenant_id: str
    content_type: str
    since: datetime | None = None
    force_sweep: bool = False


class Planner:
    """Lists content for one tenant and content type per call; the framework owns the loop."""

    def __init__(
        self,
        api: ActivityApi,
        state: StateStore,
        hand_off: HandOff,
        clock: Clock,
        rules: PlanningRules,
    ) -> None:
        self._api = api
        self._state = state
        self._hand_off = hand_off
        self._clock = clock
        self._rules = rules

    async def run(self, request: PlanRequest, run_id: str | None = None) -> RunStats:
        """Catch up from the checkpoint (and sweep when due); never raises for API errors.

        Errors end the pass early with the checkpoint left at the last fully handed-on
        window, and are recorded in the returned RunStats and the CollectorRun table.
        """
        now = utc(self._clock())
        stats = RunStats(
            run_id=run_id or uuid.uuid4().hex,
            tenant_id=request.tenant_id,
            content_type=request.content_type,
            started_at=now,
        )
        checkpoint = await self._state.get_checkpoint(request.tenant_id, request.content_type)
        # Throttled answers to this run's own calls are counted on it (o365.retry), not the client's total.
        planning = PLANNING_RUN.set(stats)
        try:
            if checkpoint is not None and checkpoint.position < earliest_start(now):
                # An outage longer than the API keeps content: say what is gone, loudly.
                gap = f"gap: content before {earliest_start(now).isoformat()} is no longer listable; " \
                      f"checkpoint was {checkpoint.position.isoformat()}"
                log.error("collector gap tenant_id=%s content_type=%s %s",
                          request.tenant_id, request.content_type, gap)
                stats.errors.append(gap)
            windows = plan_windows(
                checkpoint.position if checkpoint else None, now, self._rules, since=request.since
            )
            checkpoint = await self._catch_up(request, windows, checkpoint, stats)
            last_sweep = checkpoint.last_sweep if checkpoint else None
            if request.force_sweep or sweep_due(last_sweep, now, self._rules):
                await self._list_windows(request, sweep_windows(now, self._rules, since=request.since), stats)
                if checkpoint is not None:
                    checkpoint = await self._state.save_checkpoint(
                        Checkpoint(checkpoint.tenant_id, checkpoint.content_type, checkpoint.position,
                                   last_sweep=now, etag=checkpoint.etag)
                    )
        except ApiError as exc:
            log.error("listing failed tenant_id=%s content_type=%s error=%s",
                      request.tenant_id, request.content_type, exc)
            stats.errors.append(str(exc))
        finally:
            PLANNING_RUN.reset(planning)
            stats.finished_at = utc(self._clock())
            await self._state.record_run(stats)
        return stats

    async def _catch_up(
        self,
        request: PlanRequest,
        windows: list[Window],
        checkpoint: Checkpoint | None,
        stats: RunStats,
    ) -> Checkpoint | None:
        for window in windows:
            await self._list_windows(request, [window], stats)
            position = next_position(window, self._clock(), self._rules)
            if checkpoint is None or position > checkpoint.position:
                checkpoint = await self._state.save_checkpoint(
                    Checkpoint(request.tenant_id, request.content_type, position,
                               last_sweep=checkpoint.last_sweep if checkpoint else None,
                               etag=checkpoint.etag if checkpoint else None)
                )
        return checkpoint

    async def _list_windows(self, request: PlanRequest, windows: list[Window], stats: RunStats) -> None:
        for window in windows:
            stats.window_start = min(stats.window_start or window.start, window.start)
            stats.window_end = max(stats.window_end or window.end, window.end)
            blobs = await self._list_window(request, window, stats)
            stats.blobs_listed += len(blobs)
            new = await self._state.register_listed(blobs, utc(self._clock()))
            if new:
                # Ledger first, then hand-off, then "queued": a crash between any two steps
                # leaves the blob "listed", and the next listing hands it on again.
                await self._hand_off(new)
                await self._state.mark_queued(new)
            stats.blobs_new += len(new)
            log.info("listed tenant_id=%s content_type=%s start=%s end=%s blobs=%d new=%d",
                     request.tenant_id, request.content_type, window.start.isoformat(),
                     window.end.isoformat(), len(blobs), len(new))

    async def _list_window(self, request: PlanRequest, window: Window, stats: RunStats) -> list[ContentBlob]:
        """Every blob of *window*, all pages; starts the subscription once if it is missing."""
        for attempt in (1, 2):
            blobs: dict[str, ContentBlob] = {}
            pages = 0
            try:
                async for page in self._api.list_content(
                    request.tenant_id, request.content_type, window.start, window.end
                ):
                    pages += 1
                    for blob in page:
                        blobs.setdefault(blob.content_id, blob)
            except SubscriptionMissingError:
                if attempt == 2:
                    raise
                log.warning("subscription missing, starting it tenant_id=%s content_type=%s",
                            request.tenant_id, request.content_type)
                await self._api.start_subscription(request.tenant_id, request.content_type)
                continue
            stats.pages += pages
            return list(blobs.values())
        raise AssertionError("unreachable")  # pragma: no cover
