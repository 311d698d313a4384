"""The ledger decisions of queued delivery, over the ports: plan and enqueue, claim and process
one message, requeue what stalled, reject what is untrusted, settle what was poisoned.

Pure core (the Azure triggers, through ``azure.deps``, supply the adapters): the triggers only
decode their binding and call one of ``collect_feeds``, ``handle_message`` or ``handle_poison``
with the cached ``Runtime``. Delivery is at-least-once everywhere, so:

* a message is untrusted until ``decode_message`` and ``check_content_uri`` accept it;
* a blob is processed only under a ledger claim, and a settled blob is never processed
  again, so a message delivered twice (or listed twice) writes once;
* a failure that a retry may fix (throttling that outlived the client's retries, a body cut
  off in transit, ADX or Storage errors) leaves the row ``queued`` with the error and raises,
  so the queue redelivers; after ``maxDequeueCount`` the host moves the message to the
  poison queue, whose trigger settles the row ``failed`` with the reason;
* a message that fails validation (malformed, a foreign ``contentUri``) is dead-lettered and
  changes no ledger row: a message is anyone's to write, and the blob it names is re-enqueued
  by the stale-row sweep if it is genuine;
* a blob a retry cannot fix (not a JSON array, a body that never closes, a permanent API
  error) is settled ``failed`` at once and not retried.

Unusable raw content is kept in the dead-letter container either way, so it can be replayed
after the API's copy expires.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from function_app.config import AzureSettings, Settings
from function_app.core.collector import Planner, PlanRequest
from function_app.core.errors import CheckpointConflictError, MalformedContentError, UntrustedMessageError
from function_app.core.messages import check_content_uri, decode_message, message_identity
from function_app.core.model import TERMINAL_STATUSES, BlobStatus, ContentBlob, FetchedContent, RunStats, utc
from function_app.core.ports import ActivityApi, ClaimingStateStore, ContentQueue, DeadLetterStore, Sink
from function_app.core.process import RowBuilder, process_blob
from function_app.core.windows import PlanningRules

log = logging.getLogger(__name__)

# Re-enqueued per feed and timer run at most: a backlog is drained over a few runs rather
# than flooding the queue with duplicates of messages that may merely be waiting.
REQUEUE_LIMIT = 500


@dataclass(frozen=True, slots=True)
class TenantApi:
    """The Management API client that serves one tenant, and its API root."""

    api: ActivityApi
    api_root: str


class TenantApis(Protocol):
    """The clients of the monitored tenants (``compose.TenantRouter``)."""

    def api_for(self, tenant_id: str) -> TenantApi:
        """The client of a configured tenant; UntrustedMessageError for any other tenant."""
        ...


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything the handlers use; built once per process (see ``deps.runtime``)."""

    settings: Settings
    azure: AzureSettings
    state: ClaimingStateStore
    queue: ContentQueue
    deadletter: DeadLetterStore
    sink: Sink
    api: TenantApis
    build_rows: RowBuilder
    clock: Callable[[], datetime]
    instance: str
    rules: PlanningRules
    # Whether a failure is worth another attempt (the API adapter's classification: o365.retry).
    transient: Callable[[BaseException], bool]

    def api_for(self, tenant_id: str) -> TenantApi:
        """The client of a configured tenant; UntrustedMessageError for any other tenant."""
        return self.api.api_for(tenant_id)


# -- timer: plan and enqueue ------------------------------------------------------------------


@dataclass(slots=True)
class FeedResult:
    """What one timer run did for one tenant and content type."""

    tenant_id: str
    content_type: str
    run: RunStats | None = None
    requeued: int = 0
    conflict: bool = False
    error: str | None = None


async def requeue_stale(rt: Runtime, tenant_id: str, content_type: str) -> int:
    """Re-enqueue blobs left ``listed`` or ``queued`` without progress for ``requeue_after``
    (their message was lost, or expired in the queue); returns how many were re-enqueued.

    Progress is the latest of ListedAt, FetchedAt (every attempt) and a claim's end; a blob
    under a live claim is being processed and is left alone. Each re-enqueue is written to
    the row (FetchedAt, Error), so the same blob is re-enqueued at most once per period.
    """
    now = utc(rt.clock())
    stale: list[tuple[ContentBlob, str | None, datetime]] = []
    for blob in await rt.state.pending(tenant_id, content_type):
        row = await rt.state.ledger_row(blob)
        if row is None:
            continue
        claim_until = row.get("ClaimUntil")
        if isinstance(claim_until, datetime) and utc(claim_until) > now:
            continue
        moments = [utc(v) for k in ("ListedAt", "FetchedAt", "ClaimUntil") if isinstance(v := row.get(k), datetime)]
        last = max(moments) if moments else now
        if now - last >= rt.azure.requeue_after:
            error = row.get("Error")
            stale.append((blob, error if isinstance(error, str) else None, last))
        if len(stale) >= REQUEUE_LIMIT:
            break
    if not stale:
        return 0
    await rt.queue.enqueue([b for b, _, _ in stale])
    for blob, error, last in stale:
        note = f"re-enqueued by the timer: no progress since {last.isoformat()}"
        if error and not error.startswith("re-enqueued"):
            note += f"; last error: {error}"
        await rt.state.mark(blob, BlobStatus.QUEUED, at=now, error=note)
    log.warning("re-enqueued stale blobs tenant_id=%s content_type=%s blobs=%d", tenant_id, content_type, len(stale))
    return len(stale)


async def collect_feed(rt: Runtime, tenant_id: str, content_type: str) -> FeedResult:
    """Re-enqueue stale blobs, then list from the checkpoint and enqueue one message per new blob.

    A checkpoint moved by another instance meanwhile is not an error: that instance owns
    this pass, and the blobs this one enqueued are de-duplicated by the ledger.
    """
    result = FeedResult(tenant_id, content_type)
    result.requeued = await requeue_stale(rt, tenant_id, content_type)
    tenant = rt.api_for(tenant_id)
    planner = Planner(tenant.api, rt.state, rt.queue.enqueue, rt.clock, rt.rules)
    try:
        result.run = await planner.run(PlanRequest(tenant_id, content_type))
    except CheckpointConflictError:
        log.info("checkpoint moved by another instance; skipping this pass tenant_id=%s content_type=%s",
                 tenant_id, content_type)
        result.conflict = True
    return result


async def collect_feeds(rt: Runtime) -> list[FeedResult]:
    """One timer run: ``collect_feed`` for every configured tenant and content type, concurrently.

    API errors end up in each feed's CollectorRun row (the planner never raises for them); an
    unexpected failure of one feed (Storage unreachable) does not stop the others, and is
    raised once all have finished so the run shows as failed.
    """
    feeds = [(t.tenant_id, ct) for t in rt.settings.tenants for ct in t.content_types]
    outcomes = await asyncio.gather(*(collect_feed(rt, t, ct) for t, ct in feeds), return_exceptions=True)
    results: list[FeedResult] = []
    first_error: BaseException | None = None
    for (tenant_id, content_type), outcome in zip(feeds, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            log.error("feed failed tenant_id=%s content_type=%s error=%s: %s", tenant_id, content_type,
                      type(outcome).__name__, outcome, exc_info=outcome)
            results.append(FeedResult(tenant_id, content_type, error=f"{type(outcome).__name__}: {outcome}"))
            first_error = first_error or outcome
        else:
            results.append(outcome)
    new = sum(r.run.blobs_new for r in results if r.run)
    log.info("timer run done feeds=%d new_blobs=%d requeued=%d conflicts=%d failed=%d", len(results), new,
             sum(r.requeued for r in results), sum(r.conflict for r in results), sum(bool(r.error) for r in results))
    if first_error is not None:
        raise first_error
    return results


# -- queue: one message, one blob ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageOutcome:
    """What became of one delivery: ``processed`` (with the blob's status), ``skipped``
    (settled already, or claimed by another instance), or ``rejected`` (untrusted)."""

    action: str
    blob: ContentBlob | None = None
    status: BlobStatus | None = None
    reason: str | None = None


class RetryLaterError(Exception):
    """A delivery failed in a way a later attempt may fix; raised so the queue redelivers."""


class _TransientFetchError(Exception):
    # Deliberately not an ApiError or MalformedContentError: process_blob would settle those
    # as failed, and these should go back to the queue instead.
    def __init__(self, cause: BaseException, body: bytes | bytearray | None) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.body = body


class _Attempt:
    """The ActivityApi for one delivery: remembers what the fetch returned or why it failed,
    and turns transient failures into ``_TransientFetchError``."""

    def __init__(self, api: ActivityApi, transient: Callable[[BaseException], bool]) -> None:
        self._api = api
        self._transient = transient
        self.fetched: FetchedContent | None = None
        self.bad_body: bytes | bytearray | None = None

    async def start_subscription(self, tenant_id: str, content_type: str) -> None:
        await self._api.start_subscription(tenant_id, content_type)

    def list_content(
        self, tenant_id: str, content_type: str, start: datetime, end: datetime
    ) -> AsyncIterator[list[ContentBlob]]:
        return self._api.list_content(tenant_id, content_type, start, end)

    async def fetch_content(self, tenant_id: str, content_uri: str) -> FetchedContent:
        try:
            self.fetched = await self._api.fetch_content(tenant_id, content_uri)
        except MalformedContentError as exc:
            self.bad_body = exc.body
            if self._transient(exc):
                raise _TransientFetchError(exc, exc.body) from exc
            raise
        except Exception as exc:
            if self._transient(exc):
                raise _TransientFetchError(exc, None) from exc
            raise
        return self.fetched


def _ctx(blob: ContentBlob) -> tuple[str, str, str]:
    return blob.tenant_id, blob.content_type, blob.content_id


def _trusted(rt: Runtime, blob: ContentBlob) -> None:
    """Raise UntrustedMessageError unless *blob* is of a monitored tenant and content type and
    its URI is that tenant's feed on the configured API host."""
    tenant = rt.api_for(blob.tenant_id)
    configured = next((t for t in rt.settings.tenants if t.tenant_id == blob.tenant_id), None)
    if configured is not None and blob.content_type not in configured.content_types:
        raise UntrustedMessageError("contentType: not collected for this tenant", field="contentType")
    try:
        check_content_uri(blob.content_uri, tenant.api_root, blob.tenant_id)
    except UntrustedMessageError as exc:
        text = str(exc)
        if not text.startswith("contentUri"):
            text = f"contentUri: {text}"
        raise UntrustedMessageError(text, field="contentUri") from None


async def _reject(rt: Runtime, body: bytes, exc: UntrustedMessageError, *, message_id: str | None) -> MessageOutcome:
    """Keep a rejected message in the dead letter and log it; the blob it names is left alone.

    A message is anyone's to write, so a bad one says nothing about the blob: settling that
    blob would let a forged message erase a genuine one. A genuine blob whose own message was
    bad is still ``listed``/``queued`` in the ledger and is re-enqueued by the timer."""
    reason = f"UntrustedMessageError: {exc}"
    location = await rt.deadletter.put_message(body, reason, message_id=message_id)
    identity = message_identity(body)
    if identity is None:
        log.error("message rejected message_id=%s reason=%s kept=%s (it names no blob)", message_id, exc, location)
    else:
        log.error("message rejected tenant_id=%s content_type=%s content_id=%s message_id=%s reason=%s kept=%s "
                  "(the blob it names is left as the ledger has it)", *identity, message_id, exc, location)
    return MessageOutcome("rejected", None, None, reason)


def _as_listed(blob: ContentBlob, row: Mapping[str, Any] | None) -> ContentBlob:
    """*blob* with the URI and times the ledger recorded when the blob was listed: what the API
    said wins over what a message says."""
    if row is None:
        return blob
    uri, created, expiration = row.get("ContentUri"), row.get("ContentCreated"), row.get("ContentExpiration")
    return replace(
        blob,
        content_uri=uri if isinstance(uri, str) and uri else blob.content_uri,
        content_created=utc(created) if isinstance(created, datetime) else blob.content_created,
        content_expiration=utc(expiration) if isinstance(expiration, datetime) else blob.content_expiration,
    )


async def handle_message(
    rt: Runtime, body: bytes, *, dequeue_count: int, message_id: str | None = None
) -> MessageOutcome:
    """Process the blob one content-queue message names, at most once per blob.

    Returns normally when the message is done with (processed, skipped, or rejected: a
    malformed message is never retried, since retrying cannot fix it). Raises
    RetryLaterError, with the error recorded on the ledger row (status ``queued``), when a
    later delivery may succeed; any Storage failure propagates as it is, for the same reason.
    """
    try:
        blob = decode_message(body)
        _trusted(rt, blob)
    except UntrustedMessageError as exc:
        return await _reject(rt, body, exc, message_id=message_id)

    owner = f"{rt.instance}/{message_id or uuid.uuid4().hex}"
    claimed = await rt.state.claim(blob, owner, rt.azure.claim_lease, utc(rt.clock()))
    if claimed is None:
        log.info("message skipped: blob settled or claimed elsewhere tenant_id=%s content_type=%s content_id=%s "
                 "dequeue_count=%d", *_ctx(blob), dequeue_count)
        return MessageOutcome("skipped", blob)
    listed = _as_listed(blob, claimed)
    if listed != blob:
        log.warning("message disagrees with the ledger; the listed values are used tenant_id=%s content_type=%s "
                    "content_id=%s message_id=%s", *_ctx(blob), message_id)
        blob = listed

    attempt = _Attempt(rt.api_for(blob.tenant_id).api, rt.transient)
    try:
        outcome = await process_blob(blob, api=attempt, sink=rt.sink, state=rt.state,
                                     build_rows=rt.build_rows, clock=rt.clock)
    except Exception as exc:
        await _retry_later(rt, blob, owner, attempt, exc, dequeue_count)
        raise RetryLaterError(
            f"content {blob.content_id} of tenant {blob.tenant_id} ({blob.content_type}) will be retried: "
            f"{type(exc).__name__}: {exc}") from exc
    if outcome.status is BlobStatus.FAILED and attempt.bad_body is not None:
        await rt.deadletter.put_content(blob, attempt.bad_body, outcome.error or "failed")
    return MessageOutcome("processed", blob, outcome.status, outcome.error)


async def _retry_later(rt: Runtime, blob: ContentBlob, owner: str, attempt: _Attempt, exc: Exception,
                       dequeue_count: int) -> None:
    """Record a failed delivery on the ledger row (still ``queued``), keep the content exactly as
    fetched, and drop the claim so the redelivery (on any instance) need not wait for the lease.

    Nothing here may fail in turn: each step is attempted whatever became of the others, so the
    error is recorded, the raw bytes kept and the claim released as far as Storage allows; the
    queue redelivers the message and the stale-row sweep covers a row these writes missed.
    """
    error = f"delivery {dequeue_count}: {type(exc).__name__}: {_describe(exc)}"
    log.error("delivery failed, will be retried tenant_id=%s content_type=%s content_id=%s error=%s",
              *_ctx(blob), error)
    if isinstance(exc, _TransientFetchError):
        raw = exc.body
    elif attempt.fetched is not None and attempt.fetched.body is not None:
        # Fetched fine but not written (ADX or Storage failed): the bytes as the API sent them,
        # never re-serialised (a record the serialiser refuses would lose the copy too).
        raw = attempt.fetched.body
    else:
        raw = attempt.bad_body
    if raw:
        try:
            location = await rt.deadletter.put_content(blob, raw, error)
            error += f" (raw content kept at {location})"
        except Exception:
            log.exception("could not keep the raw content tenant_id=%s content_type=%s content_id=%s", *_ctx(blob))
    try:
        await rt.state.mark(blob, BlobStatus.QUEUED, at=utc(rt.clock()), error=error)
    except Exception:
        log.exception("could not record the failed delivery tenant_id=%s content_type=%s content_id=%s",
                      *_ctx(blob))
    try:
        await rt.state.release(blob, owner)
    except Exception:
        log.exception("could not release the claim tenant_id=%s content_type=%s content_id=%s", *_ctx(blob))


def _describe(exc: BaseException) -> str:
    try:
        return str(exc)[:2000]
    except Exception:  # an exception whose message cannot be made must not stop the bookkeeping
        return "(no message)"


# -- poison queue: the dead letter ---------------------------------------------------------------


async def handle_poison(
    rt: Runtime, body: bytes, *, dequeue_count: int, message_id: str | None = None
) -> MessageOutcome:
    """Record a message the content queue gave up on: keep it in the dead-letter container and
    settle its blob ``failed`` with the reason, the last error and where the raw message (and
    raw content, when kept) are. A blob settled meanwhile (a duplicate message succeeded) is
    left as it is. Nothing is fetched or written to ADX here.
    """
    try:
        blob = decode_message(body)
        _trusted(rt, blob)
    except UntrustedMessageError as exc:
        return await _reject(rt, body, exc, message_id=message_id)
    row = await rt.state.ledger_row(blob)
    status = row.get("Status") if row else None
    if status in TERMINAL_STATUSES:  # a StrEnum set: the stored text matches its member
        location = await rt.deadletter.put_message(body, f"poison; blob already {status}", message_id=message_id)
        log.info("dead letter for a settled blob tenant_id=%s content_type=%s content_id=%s status=%s kept=%s",
                 *_ctx(blob), status, location)
        return MessageOutcome("skipped", blob, BlobStatus(str(status)))
    last_error = row.get("Error") if row else None
    attempts = row.get("Attempts") if row else None
    content_location = await rt.deadletter.content_location(blob)
    reason = (f"dead-lettered: the content queue gave up after its maxDequeueCount deliveries "
              f"(poison dequeue count {dequeue_count}, attempts recorded {attempts or 0}); "
              f"last error: {last_error or 'none recorded'}")
    location = await rt.deadletter.put_message(body, reason[:1000], message_id=message_id)
    reason += f"; raw message kept at {location}"
    if content_location:
        reason += f"; raw content kept at {content_location}"
    await rt.state.mark(blob, BlobStatus.FAILED, at=utc(rt.clock()), error=reason)
    log.error("dead letter recorded tenant_id=%s content_type=%s content_id=%s dequeue_count=%d reason=%s",
              *_ctx(blob), dequeue_count, reason)
    return MessageOutcome("processed", blob, BlobStatus.FAILED, reason)
