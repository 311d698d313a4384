"""Local collection into a DuckDB lake: the CLI's ``collect`` and ``demo`` share this."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from function_app.config import Settings
from function_app.core.model import BlobStatus
from function_app.core.pipeline import CollectReport, Pipeline
from function_app.core.process import BlobOutcome
from function_app.core.windows import PlanningRules
from function_app.lake.duckdb_lake import LocalLake
from function_app.o365.auth import TokenProvider
from function_app.state.local import LocalStateStore
from function_app.wiring import build_rows, management_client, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Progress:
    """Callbacks a front end can use to draw progress; all optional."""

    listed: Callable[[int], None] = lambda n: None
    settled: Callable[[BlobOutcome], None] = lambda o: None


def rules_from(settings: Settings) -> PlanningRules:
    return PlanningRules(overlap=settings.overlap, safety_lag=settings.safety_lag,
                         sweep_every=settings.sweep_every)


async def collect(
    settings: Settings,
    lake: LocalLake,
    tenant_ids: Sequence[str],
    content_types: Sequence[str],
    *,
    since: datetime | None = None,
    once: bool = True,
    interval: float = 120.0,
    tokens: TokenProvider | None = None,
    env: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    clock: Callable[[], datetime] = utcnow,
    stop: asyncio.Event | None = None,
) -> CollectReport:
    """Collect into *lake*. With *once*, catch up, sweep and return; otherwise repeat every
    *interval* seconds until *stop* is set, returning the last pass's report.

    Raises LakeUnavailableError as soon as the lake itself fails (disk full, out of memory, a
    damaged file): the pass stops without fetching further blobs, and every blob not settled is
    left pending in the ledger, so running again after the cause is fixed loses nothing."""
    progress = progress or Progress()
    state = LocalStateStore(lake)
    async with management_client(settings, tenant_ids, tokens=tokens, env=env) as client:
        pipeline = Pipeline(
            api=client, state=state, sink=lake, build_rows=build_rows, clock=clock,
            rules=rules_from(settings), concurrency=settings.concurrency,
            on_listed=progress.listed, on_outcome=progress.settled,
        )
        while True:
            report = await pipeline.collect_once(tenant_ids, content_types, since=since, sweep=once)
            if report.stopped is not None:
                log.info("collect stopped blobs_settled=%d blobs_left_pending=%d",
                         len(report.outcomes), report.unsettled)
                raise report.stopped
            if once or (stop is not None and stop.is_set()):
                return report
            failed = report.count(BlobStatus.FAILED) + report.count(BlobStatus.EXPIRED)
            log.info("pass done blobs=%d failed_or_expired=%d", len(report.outcomes), failed)
            try:
                if stop is None:
                    await asyncio.sleep(interval)
                else:
                    await asyncio.wait_for(stop.wait(), timeout=interval)
                    return report
            except TimeoutError:
                pass
