"""``auditlake replay``: re-drive blobs whose last attempt failed.

Locally (a DuckDB lake) each failed blob is fetched and ingested again, in this process.
In Azure each failed blob is moved back to ``queued`` and re-enqueued, so the deployed
queue function processes it under the usual claim; a blob whose API copy has expired (or
with ``from_deadletter``) is re-ingested here from the raw content kept in the dead-letter
container instead, after an operator has fixed it there if it needed fixing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

from function_app.compose import api_root_of, build_rows_for_adx, feeds_of, open_parts, utcnow
from function_app.config import AzureSettings, Settings
from function_app.core.errors import UntrustedMessageError
from function_app.core.messages import check_content_uri
from function_app.core.model import BlobStatus, ContentBlob, utc
from function_app.core.ports import ClaimingStateStore, ContentQueue, DeadLetterStore, Sink
from function_app.core.process import RowBuilder, process_blob
from function_app.o365.auth import TokenProvider
from function_app.records.reader import parse_content

log = logging.getLogger(__name__)

# A blob this close to its contentExpiration is not worth a round trip through the queue.
EXPIRY_MARGIN = timedelta(minutes=10)
_PARALLEL = 8


@dataclass(frozen=True, slots=True)
class ReplayItem:
    """What replay did with one failed blob.

    ``action`` is one of: ``ingested`` (fetched again and written), ``reingested`` (written from
    the dead-letter copy), ``requeued`` (Azure: back on the content queue), ``failed`` (tried,
    failed again; ``detail`` says why), ``expired`` (gone from the API, no copy kept), ``skipped``
    (another instance holds it), ``refused`` (local: its content URI is not under the API root
    replay was given, so it was not fetched and its ledger row is untouched; ``detail`` names
    the root it was listed from), or ``planned`` (dry run).
    """

    tenant_id: str
    content_type: str
    content_id: str
    action: str
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"tenantId": self.tenant_id, "contentType": self.content_type, "contentId": self.content_id,
                "action": self.action, "detail": self.detail}


@dataclass(slots=True)
class ReplaySummary:
    """Every failed blob replay looked at, and what it did with each."""

    target: str
    items: list[ReplayItem] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for item in self.items:
            out[item.action] = out.get(item.action, 0) + 1
        return out

    @property
    def ok(self) -> bool:
        """True when no blob failed again, was refused, or turned out to be unrecoverable."""
        return not any(i.action in _NOT_OK for i in self.items)

    def problem(self) -> str | None:
        """One line saying what went wrong (the CLI's error line), or None when all is well."""
        if self.ok:
            return None
        counts = self.counts()
        line = f"{counts.get('failed', 0)} failed again, {counts.get('expired', 0)} expired"
        if counts.get("refused"):
            line += (f", {counts['refused']} refused: listed from another API root than this replay's "
                     "(give the root it was collected from with --api-root; see Detail)")
        return line

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "counts": self.counts(), "items": [i.to_json() for i in self.items]}


_NOT_OK = frozenset({"failed", "expired", "refused"})


def _item(blob: ContentBlob, action: str, detail: str | None = None) -> ReplayItem:
    return ReplayItem(blob.tenant_id, blob.content_type, blob.content_id, action, detail)


def _select(blobs: Sequence[ContentBlob], content_ids: Sequence[str]) -> list[ContentBlob]:
    wanted = set(content_ids)
    return [b for b in blobs if not wanted or b.content_id in wanted]


async def _bounded(
    blobs: Sequence[ContentBlob], fn: Callable[[ContentBlob], Awaitable[ReplayItem]]
) -> list[ReplayItem]:
    gate = asyncio.Semaphore(_PARALLEL)

    async def one(blob: ContentBlob) -> ReplayItem:
        async with gate:
            return await fn(blob)

    return list(await asyncio.gather(*(one(b) for b in blobs)))


# -- local ---------------------------------------------------------------------------------------


async def replay_local(
    settings: Settings,
    lake_path: str | Path,
    *,
    tenant_id: str | None = None,
    content_ids: Sequence[str] = (),
    dry_run: bool = False,
    tokens: TokenProvider | None = None,
    env: Mapping[str, str] | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> ReplaySummary:
    """Fetch and ingest again every failed blob of the lake at *lake_path* (which must exist).

    Expired blobs settle as ``expired`` (process_blob's rule); blobs that fail again keep
    ``failed`` with the new error (the ledger's ``FirstError`` keeps the first). A blob whose
    content URI is not under the API root of its tenant (*settings*' ``api_root``, else its
    cloud's) is ``refused`` before anything is sent, in a dry run too, and its row is left as it
    was: the ledger's URI never picks where the token goes, the operator's ``--api-root`` does.
    """
    from auditlake.lake.duckdb_lake import LocalLake

    path = Path(lake_path)
    if not path.exists():
        raise FileNotFoundError(f"no lake at {path}")
    summary = ReplaySummary(target=f"lake {path}")
    lake = LocalLake(path)
    try:
        blobs = _select(await lake.state_store().failed(tenant_id), content_ids)
        feeds = feeds_of(settings, sorted({b.tenant_id for b in blobs}))
        roots = {f.tenant_id.lower(): api_root_of(settings, f) for f in feeds}
        checked = [(b, _refusal(b, roots[b.tenant_id.lower()])) for b in blobs]
        todo = [b for b, refusal in checked if refusal is None]
        done: list[ReplayItem] = []
        if todo and not dry_run:
            async with open_parts(settings, feeds=feeds, lake=lake, tokens=tokens, env=env,
                                  clock=clock) as parts:

                async def one(blob: ContentBlob) -> ReplayItem:
                    outcome = await process_blob(blob, api=parts.api, sink=parts.sink, state=parts.state,
                                                 build_rows=parts.build_rows, clock=parts.clock)
                    return _item(blob, outcome.status.value, outcome.error)

                done = await _bounded(todo, one)
        outcomes = iter(done or [_item(b, "planned") for b in todo])
        summary.items = [refusal or next(outcomes) for _, refusal in checked]
    finally:
        lake.close()
    if not dry_run:
        log.info("replay done target=%s counts=%s", summary.target, summary.counts())
    return summary


def _refusal(blob: ContentBlob, api_root: str) -> ReplayItem | None:
    """A ``refused`` item when *blob*'s content URI is off *api_root* (the check the client makes
    before it sends a token), naming the root the blob was listed from; None when it may be fetched."""
    try:
        check_content_uri(blob.content_uri, api_root, blob.tenant_id)
    except UntrustedMessageError as exc:
        listed_from = _listed_from(blob)
        hint = (f"; it was listed from {listed_from}: if that is the API it was collected from, replay with "
                f"--api-root {listed_from}") if listed_from else ""
        log.warning("replay refused tenant_id=%s content_type=%s content_id=%s api_root=%s reason=%s",
                    blob.tenant_id, blob.content_type, blob.content_id, api_root, exc)
        return _item(blob, "refused", f"not fetched: {exc}{hint}")
    return None


def _listed_from(blob: ContentBlob) -> str | None:
    """The API root *blob*'s content URI lies under (what ``collect --api-root`` was), if it has
    the shape of one; said to the operator, never used to fetch."""
    marker = f"/{blob.tenant_id.lower()}/activity/feed/audit/"
    uri = blob.content_uri
    at = uri.lower().find(marker)
    if at <= 0 or not uri.lower().startswith(("http://", "https://")):
        return None
    return uri[:at]


# -- Azure -----------------------------------------------------------------------------------------


async def replay_failed(
    *,
    state: ClaimingStateStore,
    queue: ContentQueue,
    deadletter: DeadLetterStore,
    sink: Callable[[], Sink],
    build_rows: RowBuilder = build_rows_for_adx,
    clock: Callable[[], datetime] = utcnow,
    tenant_id: str | None = None,
    content_ids: Sequence[str] = (),
    from_deadletter: bool = False,
    dry_run: bool = False,
    lease: timedelta = timedelta(minutes=11),
) -> ReplaySummary:
    """Re-drive the ledger's failed blobs through the ports (Azure's Table, queue, container).

    A blob still retrievable from the API (and not *from_deadletter*) is moved back to
    ``queued`` and then enqueued: if the send fails the row stays ``queued`` and the timer's
    stale-row sweep re-enqueues it. Otherwise the dead-letter copy is parsed, flattened and
    written with *sink* (called only when needed) under a claim, and the row settles
    ``ingested`` or stays ``failed`` with the parse error; with no copy and the API's expired,
    the row settles ``expired`` (the records are gone; an alert is logged).
    """
    summary = ReplaySummary(target="azure")
    blobs = _select(await state.failed(tenant_id), content_ids)
    if dry_run:
        summary.items = [_item(b, "planned") for b in blobs]
        return summary
    sinks: list[Sink] = []

    def get_sink() -> Sink:
        if not sinks:
            sinks.append(sink())
        return sinks[0]

    async def one(blob: ContentBlob) -> ReplayItem:
        now = utc(clock())
        row = await state.ledger_row(blob) or {}
        previous = row.get("Error")
        retrievable = utc(blob.content_expiration) > now + EXPIRY_MARGIN
        if retrievable and not from_deadletter:
            return await _requeue(state, queue, blob, now, previous)
        raw = await deadletter.get_content(blob)
        if raw is None:
            if retrievable:
                return await _requeue(state, queue, blob, now, previous)
            reason = "content expired before replay and no raw copy was kept in the dead-letter container"
            log.critical("ALERT content lost tenant_id=%s content_type=%s content_id=%s reason=%s",
                         blob.tenant_id, blob.content_type, blob.content_id, reason)
            await state.mark(blob, BlobStatus.EXPIRED, at=now, error=reason)
            return _item(blob, "expired", reason)
        return await _reingest(state, blob, raw, get_sink, build_rows, clock, lease)

    summary.items = await _bounded(blobs, one)
    log.info("replay done target=%s counts=%s", summary.target, summary.counts())
    return summary


async def _requeue(state: ClaimingStateStore, queue: ContentQueue, blob: ContentBlob, now: datetime,
                   previous: object) -> ReplayItem:
    note = "replay: re-enqueued"
    if isinstance(previous, str) and previous:
        note += f" (previous error: {previous})"
    await state.mark(blob, BlobStatus.QUEUED, at=now, error=note)
    await queue.enqueue([blob])
    log.info("replay re-enqueued tenant_id=%s content_type=%s content_id=%s",
             blob.tenant_id, blob.content_type, blob.content_id)
    return _item(blob, "requeued")


async def _reingest(state: ClaimingStateStore, blob: ContentBlob, raw: bytes, sink: Callable[[], Sink],
                    rows_of: RowBuilder, clock: Callable[[], datetime], lease: timedelta) -> ReplayItem:
    owner = f"replay/{uuid.uuid4().hex}"
    # A failed row cannot be claimed; re-open it first, so a queue delivery racing this
    # replay and this replay cannot both write the blob.
    await state.mark(blob, BlobStatus.QUEUED, at=utc(clock()), error="replay: re-ingesting the dead-letter copy")
    if not await state.claim(blob, owner, lease, utc(clock())):
        return _item(blob, "skipped", "claimed by another instance")
    # Read as the fetch reads a body: a record with a bad token is kept flagged, not the reason
    # the whole copy fails again.
    content = parse_content(raw)
    if content.not_an_array or not content.complete:
        problem = content.not_an_array or f"it is cut off ({content.problem})"
        error = f"replay from the dead-letter copy of {len(raw)} bytes failed: {problem}"
        await state.mark(blob, BlobStatus.FAILED, at=utc(clock()), error=error)
        return _item(blob, "failed", error)
    records = content.records
    try:
        result = await sink().write_blob(blob, rows_of(records, blob, utc(clock())))
    except Exception as exc:
        error = f"replay from the dead-letter copy could not be written: {type(exc).__name__}: {exc}"
        log.error("replay failed tenant_id=%s content_type=%s content_id=%s error=%s",
                  blob.tenant_id, blob.content_type, blob.content_id, error)
        await state.mark(blob, BlobStatus.FAILED, at=utc(clock()), error=error)
        return _item(blob, "failed", error)
    await state.mark(blob, BlobStatus.INGESTED, at=utc(clock()), records=len(records), size=len(raw))
    log.info("replay re-ingested from the dead-letter copy tenant_id=%s content_type=%s content_id=%s records=%d",
             blob.tenant_id, blob.content_type, blob.content_id, len(records))
    return _item(blob, "reingested", f"{result.inserted} rows from the dead-letter copy")


async def replay_azure(
    *,
    env: Mapping[str, str] | None = None,
    tenant_id: str | None = None,
    content_ids: Sequence[str] = (),
    from_deadletter: bool = False,
    dry_run: bool = False,
    clock: Callable[[], datetime] = utcnow,
) -> ReplaySummary:
    """``replay_failed`` against the app's storage account and ADX, configured as the
    Functions app is (``AzureWebJobsStorage*``, ``CONTENT_QUEUE``, ``STATE_TABLE_PREFIX``,
    ``DEADLETTER_CONTAINER``, ``ADX_*``) from *env* (default: the process environment)."""
    az = AzureSettings.from_env(env if env is not None else os.environ)
    # The Functions app's own parts (the one composition root), so a replay into ADX also writes
    # ADX's ledger mirror exactly as the queue function would: the ledgers agree afterwards.
    settings = Settings.from_env(env if env is not None else os.environ)
    async with open_parts(settings, feeds=(), azure=az, env=env, clock=clock) as parts:
        assert parts.queue is not None and parts.deadletter is not None
        sink = parts.sink
        return await replay_failed(state=cast(ClaimingStateStore, parts.state), queue=parts.queue,
                                   deadletter=parts.deadletter, sink=lambda: sink, build_rows=parts.build_rows,
                                   clock=clock,
                                   tenant_id=tenant_id, content_ids=content_ids, from_deadletter=from_deadletter,
                                   dry_run=dry_run, lease=az.claim_lease)


async def replay(
    *,
    lake: str | Path | None = None,
    azure: bool = False,
    settings: Settings | None = None,
    tenant_id: str | None = None,
    content_ids: Sequence[str] = (),
    from_deadletter: bool = False,
    dry_run: bool = False,
    env: Mapping[str, str] | None = None,
    tokens: TokenProvider | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> ReplaySummary:
    """Re-drive failed blobs that have not expired, in the local *lake* or (``azure=True``) in
    the Azure deployment the environment describes; exactly one of the two.

    *settings* (default: from *env*) tell a local replay how to reach the API; *tenant_id*
    and *content_ids* narrow the selection; *dry_run* only lists what would be re-driven;
    *from_deadletter* (Azure) re-ingests the dead-letter copy even while the API's copy
    exists. Raises ValueError for a bad combination, SettingsError for a bad setting,
    FileNotFoundError for a missing lake.
    """
    if (lake is None) == (not azure):
        raise ValueError("replay needs exactly one target: a lake path, or azure=True")
    environ = env if env is not None else os.environ
    if azure:
        return await replay_azure(env=environ, tenant_id=tenant_id, content_ids=content_ids,
                                  from_deadletter=from_deadletter, dry_run=dry_run, clock=clock)
    if from_deadletter:
        raise ValueError("from_deadletter applies to the Azure deployment only (a lake keeps no dead letters)")
    assert lake is not None
    return await replay_local(settings or Settings.from_env(environ), lake, tenant_id=tenant_id,
                              content_ids=content_ids, dry_run=dry_run, tokens=tokens, env=environ, clock=clock)
