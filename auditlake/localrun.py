"""Local collection into a DuckDB lake: the CLI's ``collect`` and ``demo`` share this."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from auditlake.lake.duckdb_lake import LocalLake
from function_app.compose import AdxTarget, feeds_of, open_parts, utcnow
from function_app.config import Settings
from function_app.core.model import BlobStatus
from function_app.core.pipeline import CollectReport, Pipeline
from function_app.core.process import BlobOutcome
from function_app.o365.auth import TokenProvider

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Progress:
    """Callbacks a front end can use to draw progress; all optional."""

    listed: Callable[[int], None] = lambda n: None
    settled: Callable[[BlobOutcome], None] = lambda o: None
    passed: Callable[[CollectReport, float | None], None] = lambda report, next_in: None
    """After each pass of a long run: its report, and the seconds until the next pass (None: none follows)."""


async def collect(
    settings: Settings,
    lake: LocalLake,
    tenant_ids: Sequence[str] = (),
    content_types: Sequence[str] | None = None,
    *,
    adx: AdxTarget | None = None,
    since: datetime | None = None,
    once: bool = True,
    interval: float = 120.0,
    tokens: TokenProvider | None = None,
    env: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    clock: Callable[[], datetime] = utcnow,
    stop: asyncio.Event | None = None,
) -> CollectReport:
    """Collect into *lake*, or with *adx* into ADX (the lake then holds the ledger and checkpoints,
    and ADX gets the ledger mirrored). With *once*, catch up, sweep and return; otherwise repeat
    every *interval* seconds until *stop* is set, returning the last pass's report.

    The tenants are ``feeds_of(settings, tenant_ids, content_types)``: each configured tenant
    keeps its own cloud and content types unless *content_types* replaces them.

    Raises LakeUnavailableError as soon as the lake itself fails (disk full, out of memory, a
    damaged file): the pass stops without fetching further blobs, and every blob not settled is
    left pending in the ledger, so running again after the cause is fixed loses nothing."""
    progress = progress or Progress()
    feeds = feeds_of(settings, tenant_ids, content_types)
    async with open_parts(settings, feeds=feeds, lake=lake, adx=adx, tokens=tokens, env=env, clock=clock) as parts:
        pipeline = Pipeline(
            api=parts.api, state=parts.state, sink=parts.sink, build_rows=parts.build_rows, clock=parts.clock,
            rules=parts.rules, concurrency=settings.concurrency,
            on_listed=progress.listed, on_outcome=progress.settled,
        )
        pairs = [(t.tenant_id, ct) for t in feeds for ct in t.content_types]
        while True:
            report = await pipeline.collect_once(pairs, since=since, sweep=once)
            if report.stopped is not None:
                log.info("collect stopped blobs_settled=%d blobs_left_pending=%d",
                         len(report.outcomes), report.unsettled)
                raise report.stopped
            if once or (stop is not None and stop.is_set()):
                return report
            failed = report.count(BlobStatus.FAILED) + report.count(BlobStatus.EXPIRED)
            log.info("pass done blobs=%d failed_or_expired=%d", len(report.outcomes), failed)
            progress.passed(report, interval)
            try:
                if stop is None:
                    await asyncio.sleep(interval)
                else:
                    await asyncio.wait_for(stop.wait(), timeout=interval)
                    return report
            except TimeoutError:
                pass
