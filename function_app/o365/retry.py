"""The single retry policy every Management Activity API call goes through."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

import aiohttp

from function_app.core.errors import ApiError, RetryableError, ThrottledError
from function_app.core.model import PLANNING_RUN
from function_app.o365.errors import IncompleteContentError, retry_after_of

log = logging.getLogger(__name__)

T = TypeVar("T")

# Failures of the transport itself; an invalid URL or a bad certificate will not heal by waiting.
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, TimeoutError, ConnectionError)
_NOT_TRANSIENT: tuple[type[BaseException], ...] = (
    aiohttp.InvalidURL,
    aiohttp.ClientConnectorCertificateError,
)


@dataclass(slots=True)
class RetryStats:
    """Running counts of what the policy saw; the collector reports ``throttled`` per run."""

    attempts_failed: int = 0
    retries: int = 0
    throttled: int = 0
    gave_up: int = 0


def is_transient(exc: BaseException) -> bool:
    """True for failures worth another attempt: RetryableError (throttling included), transport
    errors, timeouts, connection resets and a blob body that may have been cut off in transit."""
    if isinstance(exc, RetryableError | IncompleteContentError):
        return True
    if isinstance(exc, _NOT_TRANSIENT):
        return False
    return isinstance(exc, _TRANSPORT_ERRORS)


def parse_retry_after(raw: str, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta seconds or an HTTP date); None if unreadable."""
    text = raw.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with full jitter that honours ``Retry-After``.

    Every API call is wrapped by ``call``; the last exception is re-raised as itself once the
    attempts run out. A blob body that did not parse is fetched at most ``malformed_attempts``
    times in all, since a body that is really corrupt stays corrupt; only those attempts count
    toward it, so throttling or a 5xx before a transient cut does not leave the body fewer fetches.
    """

    max_attempts: int = 8
    base_delay: float = 0.5
    max_delay: float = 60.0
    jitter: bool = True
    malformed_attempts: int = 3
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    now: Callable[[], datetime] = _utcnow
    rng: random.Random = field(default_factory=random.Random, compare=False)
    stats: RetryStats = field(default_factory=RetryStats, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.malformed_attempts < 1:
            raise ValueError("max_attempts and malformed_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("base_delay and max_delay must not be negative")

    def delay_for(self, attempt: int, exc: BaseException | None) -> float:
        """Seconds to wait after failed attempt number *attempt* (1-based) that raised *exc*.

        A readable ``Retry-After`` on *exc* wins (capped by ``max_delay``); otherwise the
        exponential ceiling ``base_delay * 2**(attempt-1)`` capped by ``max_delay``, drawn
        uniformly from [0, ceiling] when jitter is on.
        """
        raw = retry_after_of(exc)
        if raw is not None:
            seconds = parse_retry_after(raw, self.now())
            if seconds is not None:
                return min(seconds, self.max_delay)
        ceiling = min(self.max_delay, self.base_delay * (2 ** max(0, attempt - 1)))
        return self.rng.uniform(0.0, ceiling) if self.jitter else ceiling

    async def call(self, fn: Callable[[], Awaitable[T]], label: str = "") -> T:
        """Run *fn* until it succeeds, fails permanently, or the attempts run out.

        A loop of its own rather than tenacity's: every blob fetch comes through here, and
        tenacity's controller and its per-attempt actions cost ~100 microseconds a call, 2 % of a
        backfill's event loop, for the same policy.
        """
        attempt = 0
        incomplete = 0
        while True:
            attempt += 1
            try:
                return await fn()
            except BaseException as exc:
                if not is_transient(exc):
                    raise
                self._count(exc)
                if isinstance(exc, IncompleteContentError):
                    incomplete += 1
                if attempt >= self.max_attempts or incomplete >= self.malformed_attempts:
                    self.stats.gave_up += 1
                    log.warning("giving up %s: %s", label, _describe(exc))
                    raise
                delay = self.delay_for(attempt, exc)
                self.stats.retries += 1
                log.info("retrying %s after attempt %d in %.2fs: %s", label, attempt, delay, _describe(exc))
            # Outside the handler: the exception is not kept alive, with its traceback, while waiting.
            await self.sleep(delay)

    async def call_for_core(
        self, fn: Callable[[], Awaitable[T]], label: str = "", *, passthrough: tuple[type[BaseException], ...] = (),
    ) -> T:
        """:meth:`call`, with a transport failure that outlived the retries raised as a RetryableError:
        the core understands only core.errors, and a retryable failure is tried again later (the
        message redelivered, the slice or window left for the next pass). ApiErrors and the
        *passthrough* types go up as they are."""
        kept: tuple[type[BaseException], ...] = (ApiError, *passthrough)
        try:
            return await self.call(fn, label)
        except kept:
            raise
        except Exception as exc:
            if is_transient(exc):
                raise RetryableError(f"transport failure ({label}): {type(exc).__name__}: {exc}") from exc
            raise

    def _count(self, exc: BaseException) -> None:
        self.stats.attempts_failed += 1
        if isinstance(exc, ThrottledError):
            self.stats.throttled += 1
            run = PLANNING_RUN.get()
            if run is not None:
                run.throttled += 1


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no exception"
    return f"{type(exc).__name__}: {exc}"
