"""Slicing a backfill: UTC days, deterministic halves, when to retry, cut or give up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from function_app.purview.slices import DAY, Next, Slice, SlicingRules, Trouble, day_floor, decide, plan_slices

T0 = datetime(2026, 9, 5, tzinfo=UTC)


def test_days_are_utc_midnight_to_midnight_with_the_ends_cut() -> None:
    slices = plan_slices(T0 + timedelta(hours=5), T0 + timedelta(days=2, hours=3))
    assert [(s.start, s.end) for s in slices] == [
        (T0 + timedelta(hours=5), T0 + DAY), (T0 + DAY, T0 + 2 * DAY), (T0 + 2 * DAY, T0 + timedelta(days=2, hours=3))]
    assert [s.whole_day for s in slices] == [False, True, False]
    assert plan_slices(T0, T0) == []


def test_services_multiply_the_days() -> None:
    slices = plan_slices(T0, T0 + 2 * DAY, ["Exchange", "SharePoint"])
    assert [s.slice_id for s in slices] == [
        "2026-09-05T00:00:00Z/2026-09-06T00:00:00Z/Exchange", "2026-09-05T00:00:00Z/2026-09-06T00:00:00Z/SharePoint",
        "2026-09-06T00:00:00Z/2026-09-07T00:00:00Z/Exchange", "2026-09-06T00:00:00Z/2026-09-07T00:00:00Z/SharePoint"]


def test_slice_ids_are_stable_and_halves_are_exact() -> None:
    whole = Slice(T0, T0 + DAY)
    assert whole.slice_id == "2026-09-05T00:00:00Z/2026-09-06T00:00:00Z/all"
    first, second = whole.halves()
    assert (first.end, second.start) == (T0 + timedelta(hours=12),) * 2
    assert first.day == second.day == day_floor(T0 + timedelta(hours=23)) == T0
    # Planned again after a restart: the same ids.
    assert [h.slice_id for h in whole.halves()] == [first.slice_id, second.slice_id]
    odd = Slice(T0, T0 + timedelta(seconds=3)).halves()
    assert odd[0].span == timedelta(seconds=1) and odd[1].end == T0 + timedelta(seconds=3)


@pytest.mark.parametrize(("trouble", "attempts", "span", "expected"), [
    (Trouble.FAILED, 1, DAY, Next.RETRY),
    (Trouble.STUCK, 1, DAY, Next.RETRY),
    (Trouble.FAILED, 2, DAY, Next.SPLIT),
    (Trouble.STUCK, 2, DAY, Next.SPLIT),
    (Trouble.LIMIT_EXCEEDED, 1, DAY, Next.SPLIT),
    (Trouble.LIMIT_EXCEEDED, 1, timedelta(minutes=20), Next.FAIL),
    (Trouble.FAILED, 2, timedelta(minutes=20), Next.FAIL),
    (Trouble.FAILED, 1, timedelta(minutes=20), Next.RETRY),
])
def test_decide(trouble: Trouble, attempts: int, span: timedelta, expected: Next) -> None:
    rules = SlicingRules(query_attempts=2, min_span=timedelta(minutes=15))
    assert decide(Slice(T0, T0 + span), trouble, attempts, rules) is expected


def test_rules_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        SlicingRules(query_attempts=0)
    with pytest.raises(ValueError):
        SlicingRules(min_span=timedelta(0))
