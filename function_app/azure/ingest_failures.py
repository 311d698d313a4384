"""ADX ingestion failures that happen after an ingestion was accepted, read back into the ledger.

Queued ingestion is asynchronous: ``ingest_from_stream`` returning means the data-management
service accepted the blob, and the ledger says ``ingested``. The service can still fail it
later (a mapping or schema error, a corrupt blob, exhausted retries). The sink asks for
failure reports (report level FailuresOnly, report method Queue), so each such failure is
posted, as base64 JSON, to the service's failed-ingestions status queue (one queue per
cluster, shared by every database and client of it). Its fields: OperationId, Database,
Table, FailedOn, IngestionSourceId, IngestionSourcePath, Details, ErrorCode, FailureStatus
(Permanent, Transient, Exhausted), RootActivityId, OriginatesFromUpdatePolicy, ShouldRetry.

``watch_ingestion_failures`` pops those reports and applies each to every blob its
IngestionSourcePath names (see ``lake.adx.batch_stream_name``: an ingestion holds the blobs one
instance wrote at once):

* a permanent failure of a table of records settles the blob ``failed`` with the reason, so
  it is counted (Table Storage and, through the mirror, ADX's ContentLedger) and replayable;
  but a permanent failure of an ingestion of several blobs cannot be pinned on one of them (one
  blob's rows may have failed it; the others would be failed wrongly): each is re-enqueued, its
  ledger row saying ``INGEST_ALONE``, and the ledger mirror has the sink give its next attempt an
  ingestion of its own (``AdxSink.expect``), whose failure then settles it;
* a failure a retry may fix (Transient, Exhausted, RetryAttemptsExceeded) marks the blob
  ``queued`` with the reason and re-enqueues it, unless it is already waiting for another
  attempt, the API's copy has expired, or the row counts ``REQUEUE_MAX_ATTEMPTS`` attempts
  (then it is settled ``failed`` like a permanent one); the whole blob is processed again and
  the views de-duplicate the tables that had succeeded;
* a failure of a bookkeeping table (ContentLedger, CollectorRun) leaves the blob alone: its
  records are in; a retryable ContentLedger failure re-sends the ledger row.

A blob's records arrive in one ingestion into the staging table ``AuditIngest``, which ADX's
transactional update policies fan out (``lake.staging``): its failure, reported for the staging
table or, from an update policy, for a target table with the staging ingestion's source id, is
a failure of the records of each blob it held, whatever the target (the bookkeeping rows it
carried are lost with it; the mirror says so in its docstring). A report naming some blobs the
ledger does not know is applied to the others and kept in the dead-letter container.

Nothing read is lost: a report that cannot be decoded, or names no blob of this app, is kept
in the dead-letter container with one error line, then deleted; a report for another
database is left in the queue for its owner; a report whose handling failed (Storage down)
stays in the queue and is read again after the visibility timeout.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from azure.storage.queue.aio import QueueClient

from function_app.azure.mirror import ledger_row
from function_app.core.delivery import Runtime
from function_app.core.model import BlobStatus, ContentBlob, utc
from function_app.lake.adx import INGEST_ALONE, BlobKey, blob_keys, ingestion_source_id
from function_app.lake.schema import COLLECTOR_RUN, CONTENT_LEDGER, TABLES_BY_NAME
from function_app.lake.staging import STAGING_TABLE
from function_app.logredact import redact

log = logging.getLogger(__name__)

# Reports handled per run; the rest wait for the next run.
REPORTS_PER_RUN = 256
# How long a received report stays invisible to other readers: longer than a run takes.
VISIBILITY_TIMEOUT_SECONDS = 600
# A report whose handling keeps failing is kept in the dead-letter container after this
# many reads, so one bad report cannot come back forever.
MAX_REPORT_READS = 10
# A retryable failure is not re-enqueued once the ledger row counts this many attempts
# (every settle and re-enqueue counts one): the blob is settled failed instead.
REQUEUE_MAX_ATTEMPTS = 10
# Details can be long (activity stacks); the ledger keeps the start.
_MAX_DETAILS = 2000

BOOKKEEPING_TABLES = frozenset({CONTENT_LEDGER.name, COLLECTOR_RUN.name})
_RETRYABLE = frozenset({"transient", "exhausted", "retryattemptsexceeded"})
# FailureStatus is an enum in the service; serialised by name, but accept its number too.
_STATUS_NAMES = {0: "Unknown", 1: "Permanent", 2: "Transient", 3: "Exhausted"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class UndecodableReportError(ValueError):
    """A status-queue message that is not a failure report this module can read."""


@dataclass(frozen=True, slots=True)
class IngestionFailure:
    """One failure report of the failed-ingestions status queue."""

    database: str
    table: str
    source_path: str
    source_id: str | None
    operation_id: str | None
    failed_on: str | None
    error_code: str
    details: str
    status: str
    should_retry: bool | None
    from_update_policy: bool

    @property
    def retryable(self) -> bool:
        """Whether another attempt may succeed (ADX: Transient, or retries exhausted)."""
        if self.status.lower() in _RETRYABLE or self.error_code == "General_RetryAttemptsExceeded":
            return True
        if self.status.lower() == "permanent":
            return False
        return self.should_retry is True

    @property
    def reason(self) -> str:
        """What the ledger row says: table, error code, details, status, and where to look."""
        text = (f"ADX ingestion into {self.table} failed after it was accepted: "
                f"{self.error_code} {self.details} ({self.status})")
        if self.from_update_policy:
            text += " in an update policy"
        if self.operation_id:
            text += f"; operation {self.operation_id}"
        if self.failed_on:
            text += f" failed on {self.failed_on}"
        return text


def _text(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


def _required(data: dict[str, Any], name: str) -> str:
    value = _text(data, name)
    if value is None:
        raise UndecodableReportError(f"{name} is missing")
    return value


def _flag(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def parse_failure(text: str) -> IngestionFailure:
    """The failure report in a status-queue message (base64 of JSON, as the SDK's status
    queues read it; plain JSON is accepted too). Raises UndecodableReportError."""
    raw = text.strip()
    if not raw.startswith("{"):
        try:
            raw = base64.b64decode(raw, validate=True).decode("utf-8")
        except (binascii.Error, ValueError) as exc:
            raise UndecodableReportError(f"not base64 JSON: {exc}") from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UndecodableReportError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UndecodableReportError(f"not a JSON object but {type(data).__name__}")
    status = data.get("FailureStatus")
    if isinstance(status, int) and not isinstance(status, bool):
        status = _STATUS_NAMES.get(status, str(status))
    details = redact(_text(data, "Details") or "no details")
    if len(details) > _MAX_DETAILS:
        details = details[:_MAX_DETAILS] + " ...[truncated]"
    return IngestionFailure(
        database=_required(data, "Database"),
        table=_required(data, "Table"),
        source_path=_required(data, "IngestionSourcePath"),
        source_id=_text(data, "IngestionSourceId"),
        operation_id=_text(data, "OperationId"),
        failed_on=_text(data, "FailedOn"),
        error_code=_text(data, "ErrorCode") or "UnknownError",
        details=details,
        status=str(status) if status not in (None, "") else "Unknown",
        should_retry=_flag(data.get("ShouldRetry")),
        from_update_policy=_flag(data.get("OriginatesFromUpdatePolicy")) is True,
    )


# -- the status queues --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Report:
    """One message read from a failure queue; ``handle`` is what deleting it needs."""

    id: str
    text: str
    reads: int
    handle: Any


class FailureReports(Protocol):
    """The failed-ingestions status queue(s), read with a visibility timeout."""

    async def receive(self, limit: int) -> list[Report]:
        """Up to *limit* messages, hidden from other readers until deleted or released."""
        ...

    async def delete(self, report: Report) -> None:
        """Remove a message that was dealt with."""
        ...

    async def release(self, report: Report) -> None:
        """Make a message visible again at once (it belongs to another reader)."""
        ...


class StatusQueueReports:
    """FailureReports over the data-management service's failed-ingestions queues, whose SAS
    URLs *urls* returns (``AdxSink.failure_queue_urls``, blocking; it runs in a thread).

    The SDK's own ``KustoIngestStatusQueues.failure.pop`` is not used to read: it deletes a
    message before the caller has dealt with it, and its base64 decode policy fails the whole
    read on one malformed message. Messages are read as text and decoded here, per message.
    """

    def __init__(self, urls: Callable[[], list[str]], *,
                 visibility_timeout: int = VISIBILITY_TIMEOUT_SECONDS) -> None:
        self._urls = urls
        self._visibility = visibility_timeout
        self._clients: dict[str, QueueClient] = {}

    async def _queues(self) -> list[QueueClient]:
        urls = await asyncio.to_thread(self._urls)
        # The SAS in the URLs is renewed by the service: drop clients of URLs no longer given.
        for url in [u for u in self._clients if u not in urls]:
            await self._clients.pop(url).close()
        for url in urls:
            if url not in self._clients:
                self._clients[url] = QueueClient.from_queue_url(url)
        return [self._clients[u] for u in urls]

    async def receive(self, limit: int) -> list[Report]:
        found: list[Report] = []
        for client in await self._queues():
            if len(found) >= limit:
                break
            want = limit - len(found)
            pages = client.receive_messages(messages_per_page=min(32, want), max_messages=want,
                                            visibility_timeout=self._visibility)
            async for msg in pages:
                found.append(Report(str(msg.id), str(msg.content or ""), int(msg.dequeue_count or 1),
                                    (client, msg)))
        return found

    async def delete(self, report: Report) -> None:
        client, msg = report.handle
        await client.delete_message(msg)

    async def release(self, report: Report) -> None:
        client, msg = report.handle
        await client.update_message(msg, visibility_timeout=0)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


# -- the watcher -------------------------------------------------------------------------------


@dataclass(slots=True)
class WatchResult:
    """What one run did with the reports it read."""

    read: int = 0
    failed: int = 0        # ledger rows settled failed
    requeued: int = 0      # blobs re-enqueued for another attempt
    bookkeeping: int = 0   # ContentLedger / CollectorRun ingestions (blob left alone)
    unchanged: int = 0     # blob already failed, expired, or pending a retry
    kept: int = 0          # undecodable or naming no blob of this app: dead-lettered
    foreign: int = 0       # another database's: left in the queue
    errors: int = 0        # handling failed: left in the queue for the next run


def _placeholder(key: BlobKey) -> ContentBlob:
    # The ledger is keyed by tenant, content type and content id only.
    return ContentBlob(key.tenant_id, key.content_type, key.content_id, "", _EPOCH, _EPOCH)


def _blob_from_row(key: BlobKey, row: dict[str, Any]) -> ContentBlob:
    created, expiration = row.get("ContentCreated"), row.get("ContentExpiration")
    return ContentBlob(key.tenant_id, key.content_type, key.content_id, str(row.get("ContentUri") or ""),
                       utc(created) if isinstance(created, datetime) else _EPOCH,
                       utc(expiration) if isinstance(expiration, datetime) else _EPOCH)


async def _keep(rt: Runtime, report: Report, reason: str) -> str:
    location = await rt.deadletter.put_message(report.text.encode("utf-8"), reason, message_id=report.id)
    log.error("ADX failure report kept, not applied message_id=%s reason=%s kept=%s", report.id, reason, location)
    return "kept"


async def _bookkeeping(rt: Runtime, key: BlobKey, failure: IngestionFailure) -> str:
    if failure.table == CONTENT_LEDGER.name and failure.retryable:
        row = await rt.state.ledger_row(_placeholder(key))
        if row is not None:
            blob = _blob_from_row(key, row)
            await rt.sink.write_blob(blob, {CONTENT_LEDGER.name: [ledger_row(blob, row)]})
            log.warning("ADX ledger mirror row re-sent after a failed ingestion tenant_id=%s content_type=%s "
                        "content_id=%s error=%s", *key, failure.reason)
            return "bookkeeping"
    log.error("ADX bookkeeping ingestion failed; the blob's records are unaffected tenant_id=%s content_type=%s "
              "content_id=%s error=%s", *key, failure.reason)
    return "bookkeeping"


async def _apply(rt: Runtime, key: BlobKey, failure: IngestionFailure, *, shared: int = 1) -> str:
    """Apply a failure of one of *key*'s record tables to its ledger row; returns the outcome.

    *shared* is how many blobs the failed ingestion held: a permanent failure of an ingestion of
    several cannot be pinned on one of them, so each is re-enqueued to be ingested alone, and only
    a failure of that lone ingestion settles it failed."""
    row = await rt.state.ledger_row(_placeholder(key))
    if row is None:
        return "unknown"
    blob = _blob_from_row(key, row)
    status = row.get("Status")
    now = utc(rt.clock())
    reason = failure.reason
    if shared > 1:
        reason += f" (an ingestion of {shared} blobs)"
    if status in (BlobStatus.FAILED.value, BlobStatus.EXPIRED.value):
        log.warning("ADX ingestion failure for a blob already %s; left as it is tenant_id=%s content_type=%s "
                    "content_id=%s error=%s", status, *key, reason)
        return "unchanged"
    if failure.retryable or shared > 1:
        if status in (BlobStatus.LISTED.value, BlobStatus.QUEUED.value):
            # Already waiting for another attempt (another table's report, or a redelivery).
            log.info("ADX ingestion failure for a blob already pending tenant_id=%s content_type=%s "
                     "content_id=%s error=%s", *key, reason)
            return "unchanged"
        attempts = row.get("Attempts")
        if now >= blob.content_expiration:
            reason += (f"; not re-enqueued: the API's copy expired at {blob.content_expiration.isoformat()} "
                       f"(replay it from the dead-letter container if it was kept)")
        elif isinstance(attempts, int) and attempts >= REQUEUE_MAX_ATTEMPTS:
            reason += f"; not re-enqueued: {attempts} attempts already"
        else:
            again = "re-enqueued for another attempt" if failure.retryable else f"re-enqueued {INGEST_ALONE}"
            # Marked first: if the enqueue fails, the row is queued and the stale sweep of
            # the collect timer re-enqueues it; this report is read again meanwhile.
            await rt.state.mark(blob, BlobStatus.QUEUED, at=now, error=f"{reason}; {again}")
            await rt.queue.enqueue([blob])
            log.warning("ADX ingestion failed after acceptance; blob re-enqueued tenant_id=%s content_type=%s "
                        "content_id=%s table=%s error_code=%s status=%s blobs=%d", *key, failure.table,
                        failure.error_code, failure.status, shared)
            return "requeued"
    await rt.state.mark(blob, BlobStatus.FAILED, at=now, error=reason)
    log.error("ADX ingestion failed after acceptance; blob settled failed tenant_id=%s content_type=%s "
              "content_id=%s table=%s error_code=%s status=%s error=%s", *key, failure.table, failure.error_code,
              failure.status, reason)
    return "failed"


async def handle_report(rt: Runtime, report: Report) -> list[str]:
    """Deal with one status-queue message; returns the outcomes (WatchResult field names): one
    per blob the failed ingestion held, or the report's own (``kept``, ``foreign``).

    Every outcome but ``foreign`` means the message is done with. Raises only for failures
    of Storage or ADX, which a later read may not meet (applying the report again is harmless:
    a blob already re-enqueued or settled is left as it is).
    """
    try:
        failure = parse_failure(report.text)
    except UndecodableReportError as exc:
        return [await _keep(rt, report, f"undecodable ADX failure report: {exc}")]
    if failure.database != rt.azure.adx_database:
        return ["foreign"]
    keys = blob_keys(failure.source_path)
    if keys is None:
        return [await _keep(rt, report, f"ADX failure report names no blob of this app: IngestionSourcePath "
                                        f"{redact(failure.source_path)[:500]}; {failure.reason}")]
    # The staging ingestion of the blobs' records, reported for the staging table itself or, from
    # one of its update policies, for a target table with the staging ingestion's source id.
    staged = failure.table == STAGING_TABLE or (
        failure.from_update_policy and failure.source_id is not None
        and failure.source_id.lower() == str(ingestion_source_id(keys, STAGING_TABLE)))
    if failure.table not in TABLES_BY_NAME and not staged:
        return [await _keep(rt, report, f"ADX failure report for a table this app does not write: "
                                        f"{failure.reason}")]
    expected = ingestion_source_id(keys, STAGING_TABLE if staged else failure.table)
    if failure.source_id and failure.source_id.lower() != str(expected):
        return [await _keep(rt, report, f"ADX failure report whose IngestionSourceId {failure.source_id} does not "
                                        f"match its blob; {failure.reason}")]
    if failure.table in BOOKKEEPING_TABLES and not staged:
        return [await _bookkeeping(rt, key, failure) for key in keys]
    outcomes: list[str] = []
    unknown: list[BlobKey] = []
    for key in keys:
        outcome = await _apply(rt, key, failure, shared=len(keys))
        if outcome == "unknown":
            unknown.append(key)
        else:
            outcomes.append(outcome)
    if unknown:
        named = "; ".join(f"tenant {k.tenant_id}, {k.content_type}, {k.content_id}" for k in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        outcomes.append(await _keep(rt, report, f"ADX failure report for blobs the ledger does not know "
                                                f"({named}{more}); {failure.reason}"))
    return outcomes


async def watch_ingestion_failures(
    rt: Runtime, reports: FailureReports, *, limit: int = REPORTS_PER_RUN
) -> WatchResult:
    """Read up to *limit* failure reports and apply each (see the module docstring).

    A report whose handling raised stays in the queue (after ``MAX_REPORT_READS`` reads it is
    kept in the dead-letter container and deleted); the first such error is raised once all
    reports were dealt with, so the run shows as failed. Failing to reach the data-management
    service or the queues raises at once.
    """
    result = WatchResult()
    batch = await reports.receive(limit)
    result.read = len(batch)
    foreign: list[Report] = []
    first_error: BaseException | None = None
    for report in batch:
        try:
            outcomes = await handle_report(rt, report)
            if "foreign" in outcomes:
                foreign.append(report)
            else:
                await reports.delete(report)
        except Exception as exc:
            result.errors += 1
            first_error = first_error or exc
            log.error("ADX failure report not applied; it will be read again message_id=%s reads=%d error=%s: %s",
                      report.id, report.reads, type(exc).__name__, redact(str(exc)))
            if report.reads >= MAX_REPORT_READS:
                try:
                    await _keep(rt, report, f"handling failed {report.reads} times; last error: "
                                            f"{type(exc).__name__}: {redact(str(exc))}")
                    await reports.delete(report)
                except Exception:
                    log.exception("could not keep the ADX failure report message_id=%s", report.id)
            continue
        for outcome in outcomes:
            setattr(result, outcome, getattr(result, outcome) + 1)
    # Released only now, so this run does not read them again. Best effort: without the
    # queue's update permission they reappear when the visibility timeout ends.
    for report in foreign:
        try:
            await reports.release(report)
        except Exception as exc:
            log.info("report of another database left hidden until its visibility timeout message_id=%s "
                     "error=%s", report.id, type(exc).__name__)
    log.info("ADX failure reports read=%d failed=%d requeued=%d bookkeeping=%d unchanged=%d kept=%d foreign=%d "
             "errors=%d", result.read, result.failed, result.requeued, result.bookkeeping, result.unchanged,
             result.kept, result.foreign, result.errors)
    if first_error is not None:
        raise first_error
    return result
