import itertools
from datetime import UTC, datetime, timedelta

import pytest

from function_app.core.model import Window
from function_app.core.windows import (
    PlanningRules,
    earliest_start,
    next_position,
    plan_windows,
    sweep_due,
    sweep_windows,
)

NOW = datetime(2026, 11, 21, 12, 0, 0, 500000, tzinfo=UTC)
RULES = PlanningRules()


def assert_contiguous(windows: list[Window]) -> None:
    for a, b in itertools.pairwise(windows):
        assert a.end == b.start
    for w in windows:
        assert timedelta(0) < w.end - w.start <= timedelta(hours=24)


def test_first_run_backfills_seven_days_in_windows_of_at_most_a_day() -> None:
    windows = plan_windows(None, NOW, RULES)
    assert windows[0].start == earliest_start(NOW)
    assert windows[0].start >= NOW - timedelta(days=7)
    assert windows[-1].end == NOW.replace(microsecond=0)
    assert len(windows) == 7
    assert_contiguous(windows)


def test_resume_lists_from_checkpoint_minus_overlap() -> None:
    cp = NOW - timedelta(hours=3)
    windows = plan_windows(cp, NOW, RULES)
    assert windows == [Window((cp - timedelta(hours=1)).replace(microsecond=0), NOW.replace(microsecond=0))]


def test_checkpoint_in_the_future_plans_nothing() -> None:
    assert plan_windows(NOW + timedelta(minutes=5), NOW, RULES) == []
    assert plan_windows(NOW - timedelta(seconds=5), NOW, RULES) == []


def test_checkpoint_older_than_seven_days_is_clamped_to_what_the_api_accepts() -> None:
    windows = plan_windows(NOW - timedelta(days=30), NOW, RULES)
    assert windows[0].start == earliest_start(NOW)
    assert_contiguous(windows)


def test_since_is_honoured_and_clamped() -> None:
    assert plan_windows(None, NOW, RULES, since=NOW - timedelta(hours=2))[0].start == \
        (NOW - timedelta(hours=2)).replace(microsecond=0)
    assert plan_windows(None, NOW, RULES, since=NOW - timedelta(days=9))[0].start == earliest_start(NOW)


def test_checkpoint_never_passes_now_minus_safety_lag() -> None:
    window = Window(NOW - timedelta(hours=1), NOW)
    assert next_position(window, NOW, RULES) == NOW.replace(microsecond=0) - RULES.safety_lag
    early = Window(NOW - timedelta(hours=5), NOW - timedelta(hours=4))
    assert next_position(early, NOW, RULES) == early.end


def test_sweep_covers_the_last_day() -> None:
    windows = sweep_windows(NOW, RULES)
    assert windows[0].start == NOW.replace(microsecond=0) - timedelta(hours=24)
    assert windows[-1].end == NOW.replace(microsecond=0)
    assert sweep_due(None, NOW, RULES)
    assert not sweep_due(NOW - timedelta(hours=1), NOW, RULES)
    assert sweep_due(NOW - timedelta(hours=25), NOW, RULES)


def test_the_sweep_never_reaches_before_where_the_collection_was_asked_to_start() -> None:
    since = NOW - timedelta(minutes=10)
    windows = sweep_windows(NOW, RULES, since=since)
    assert windows[0].start == since and windows[-1].end == NOW.replace(microsecond=0)
    assert sweep_windows(NOW, RULES, since=NOW + timedelta(minutes=1)) == []
    assert sweep_windows(NOW, RULES, since=NOW - timedelta(days=3))[0].start == NOW.replace(microsecond=0) \
        - timedelta(hours=24)


@pytest.mark.parametrize("kwargs", [
    {"max_window": timedelta(hours=25)}, {"max_window": timedelta(0)}, {"overlap": timedelta(minutes=-1)},
    {"sweep_span": timedelta(days=8)},
])
def test_rules_refuse_what_the_api_would_refuse(kwargs: dict[str, timedelta]) -> None:
    with pytest.raises(ValueError):
        PlanningRules(**kwargs)
