"""Slicing a backfill into queries small enough to finish (pure).

A query over a long range times out, and one over a busy range stops at its record-count limit,
so ``[since, until)`` is cut into UTC days (each day × service when services are named), and a
slice that exceeds its limit, fails or never finishes is cut in two halves of time, down to
``min_span``; a slice that still cannot finish there fails, with the reason.

Time is only ever halved, never split by service, unless services were asked for: Graph has no
"every other service" filter, so a split by a list of services would silently drop the records
of a service not on the list.

Every cut is deterministic (UTC midnights, exact halves), so a restart plans the same slice ids
and finds each in the ledger.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from function_app.core.model import utc

DAY = timedelta(days=1)
ALL_SERVICES = "all"


def iso_second(value: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` (with ``.ffffff`` only when the value has microseconds)."""
    value = utc(value)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{value.microsecond:06d}Z" if value.microsecond else f"{text}Z"


def day_floor(value: datetime) -> datetime:
    """The UTC midnight at or before *value*."""
    value = utc(value)
    return datetime(value.year, value.month, value.day, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Slice:
    """One query's worth: ``start <= createdDateTime < end``, for one service or all of them."""

    start: datetime
    end: datetime
    service: str | None = None

    @property
    def slice_id(self) -> str:
        """The ledger's ContentId: ``<start>/<end>/<service or all>``."""
        return f"{iso_second(self.start)}/{iso_second(self.end)}/{self.service or ALL_SERVICES}"

    @property
    def span(self) -> timedelta:
        return self.end - self.start

    @property
    def day(self) -> datetime:
        """The UTC day the slice lies in (a slice never crosses midnight)."""
        return day_floor(self.start)

    @property
    def whole_day(self) -> bool:
        return self.start == self.day and self.end == self.day + DAY

    def halves(self) -> tuple[Slice, Slice]:
        # Whole seconds: Graph takes the filter times to the second.
        half = timedelta(seconds=int(self.span.total_seconds() // 2))
        middle = self.start + half
        return Slice(self.start, middle, self.service), Slice(middle, self.end, self.service)


def plan_slices(since: datetime, until: datetime, services: Sequence[str] = ()) -> list[Slice]:
    """``[since, until)`` as UTC-day slices (× *services* when given), oldest first.

    The first and last day are cut at *since* and *until* (callers floor *since* to a midnight
    to make the first day whole)."""
    since, until = utc(since), utc(until)
    if until <= since:
        return []
    out: list[Slice] = []
    day = day_floor(since)
    while day < until:
        start, end = max(day, since), min(day + DAY, until)
        if start < end:
            out.extend(Slice(start, end, s) for s in (services or (None,)))
        day += DAY
    return out


class Trouble(StrEnum):
    """Why a query could not deliver its slice."""

    LIMIT_EXCEEDED = "record-count limit exceeded"
    FAILED = "query failed"
    STUCK = "query never finished"


@dataclass(frozen=True, slots=True)
class SlicingRules:
    """When to ask again, when to cut, when to give up."""

    query_attempts: int = 2
    """Queries per slice for a failed or stuck query before it is cut (a limit exceeded cuts at once)."""
    min_span: timedelta = timedelta(minutes=15)
    """No slice is cut shorter than this; one that still fails there fails for good."""

    def __post_init__(self) -> None:
        if self.query_attempts < 1:
            raise ValueError("query_attempts must be at least 1")
        if self.min_span < timedelta(seconds=2):
            raise ValueError("min_span must be at least 2 seconds")


class Next(StrEnum):
    RETRY = "retry"
    SPLIT = "split"
    FAIL = "fail"


def decide(piece: Slice, trouble: Trouble, attempts: int, rules: SlicingRules) -> Next:
    """What to do with *piece* after its query number *attempts* (1-based) had *trouble*.

    A limit exceeded is not helped by asking again; failures and stuck queries may be (Purview
    is known to fail a query that succeeds the next time), so they are retried first."""
    if trouble is not Trouble.LIMIT_EXCEEDED and attempts < rules.query_attempts:
        return Next.RETRY
    if piece.span / 2 >= rules.min_span:
        return Next.SPLIT
    return Next.FAIL
