"""Listing-window planning: the rules that decide which content the collector asks for.

The API answers ``startTime <= contentCreated < endTime`` for windows of at most 24 h that
start no more than 7 days back. Blobs can be listed after their window has passed, so each
run re-lists from the checkpoint minus an overlap, and a daily sweep re-lists the last 24 h;
the ledger de-duplicates both by contentId.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from function_app.core.model import Window, utc

MAX_WINDOW = timedelta(hours=24)
MAX_AGE = timedelta(days=7)
# The 7-day bound is checked by the service against its own clock, after our request
# has travelled; starting a few minutes inside it avoids AF20030 at the boundary.
AGE_MARGIN = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class PlanningRules:
    """Knobs of window planning; defaults are the design's."""

    overlap: timedelta = timedelta(hours=1)
    safety_lag: timedelta = timedelta(seconds=30)
    max_window: timedelta = MAX_WINDOW
    sweep_span: timedelta = timedelta(hours=24)
    sweep_every: timedelta = timedelta(hours=24)

    def __post_init__(self) -> None:
        if not timedelta(0) < self.max_window <= MAX_WINDOW:
            raise ValueError(f"max_window must be within (0, 24h], got {self.max_window}")
        if self.overlap < timedelta(0) or self.safety_lag < timedelta(0):
            raise ValueError("overlap and safety_lag must not be negative")
        if not timedelta(0) < self.sweep_span <= MAX_AGE - AGE_MARGIN:
            raise ValueError(f"sweep_span must be within (0, 7d), got {self.sweep_span}")


def _floor_second(dt: datetime) -> datetime:
    return utc(dt).replace(microsecond=0)


def earliest_start(now: datetime) -> datetime:
    """The oldest startTime the API accepts at *now*, with a margin."""
    return _floor_second(now - MAX_AGE + AGE_MARGIN)


def split(start: datetime, end: datetime, max_window: timedelta = MAX_WINDOW) -> list[Window]:
    """Cut ``[start, end)`` into consecutive windows of at most *max_window*."""
    windows: list[Window] = []
    cursor = start
    while cursor < end:
        stop = min(cursor + max_window, end)
        windows.append(Window(cursor, stop))
        cursor = stop
    return windows


def plan_windows(
    checkpoint: datetime | None,
    now: datetime,
    rules: PlanningRules,
    since: datetime | None = None,
) -> list[Window]:
    """Windows to list now, oldest first.

    From ``checkpoint - overlap`` (or *since*, or 7 days back when there is no checkpoint),
    clamped to what the API accepts, up to *now*. A checkpoint later than ``now - safety_lag``
    (a clock that went backwards, or state written by a skewed host) plans nothing rather
    than listing content that cannot exist yet.
    """
    now = _floor_second(now)
    floor = earliest_start(now)
    if checkpoint is not None:
        checkpoint = utc(checkpoint)
        if checkpoint > now - rules.safety_lag:
            return []
        start = checkpoint - rules.overlap
    else:
        start = utc(since) if since is not None else floor
    start = max(_floor_second(start), floor)
    return split(start, now, rules.max_window)


def sweep_windows(now: datetime, rules: PlanningRules, *, since: datetime | None = None) -> list[Window]:
    """The daily sweep: the last ``sweep_span`` re-listed, so late-listed blobs are found.

    Never before *since*: a collection asked to start 10 minutes ago must not backfill a day
    through its sweep.
    """
    now = _floor_second(now)
    start = max(now - rules.sweep_span, earliest_start(now))
    if since is not None:
        start = max(start, utc(since))
    return split(start, now, rules.max_window)


def sweep_due(last_sweep: datetime | None, now: datetime, rules: PlanningRules) -> bool:
    return last_sweep is None or utc(now) - utc(last_sweep) >= rules.sweep_every


def next_position(window: Window, now: datetime, rules: PlanningRules) -> datetime:
    """Where the checkpoint may move once every blob of *window* is handed on.

    Never past ``now - safety_lag``: a blob may still appear with a contentCreated just
    before now, and the overlap only reaches back so far.
    """
    return min(window.end, _floor_second(now) - rules.safety_lag)
