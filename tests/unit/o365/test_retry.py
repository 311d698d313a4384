"""The retry policy: which errors are retried, how long it waits, when it gives up."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import aiohttp
import pytest

from function_app.core.errors import (
    ContentExpiredError,
    MalformedContentError,
    PermanentApiError,
    RetryableError,
    SubscriptionMissingError,
    ThrottledError,
)
from function_app.o365.errors import IncompleteContentError, attach_retry_after, classify
from function_app.o365.retry import RetryPolicy, parse_retry_after

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


class FakeSleep:
    """Records the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(float(seconds))


def policy(sleep: FakeSleep, **overrides: object) -> RetryPolicy:
    options: dict[str, object] = {
        "max_attempts": 4,
        "base_delay": 1.0,
        "max_delay": 60.0,
        "jitter": False,
        "sleep": sleep,
        "now": lambda: NOW,
    }
    options.update(overrides)
    return RetryPolicy(**options)  # type: ignore[arg-type]


def failing(
    errors: list[BaseException], result: str = "ok"
) -> tuple[Callable[[], Awaitable[str]], list[int]]:
    """A call that raises *errors* one by one, then returns *result*."""
    calls: list[int] = []

    async def fn() -> str:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return result

    return fn, calls


def test_defaults() -> None:
    p = RetryPolicy()
    assert (p.max_attempts, p.base_delay, p.max_delay, p.jitter) == (8, 0.5, 60.0, True)


def test_exponential_backoff_capped_by_max_delay() -> None:
    sleep = FakeSleep()
    fn, calls = failing([RetryableError("x")] * 5)
    p = policy(sleep, max_attempts=6, base_delay=1.0, max_delay=5.0)
    assert asyncio.run(p.call(fn)) == "ok"
    assert sleep.delays == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert len(calls) == 6
    assert p.stats.retries == 5


def test_full_jitter_stays_under_the_ceiling() -> None:
    p = RetryPolicy(base_delay=1.0, max_delay=10.0, rng=random.Random(7))
    for attempt in range(1, 8):
        ceiling = min(10.0, 2 ** (attempt - 1))
        samples = [p.delay_for(attempt, RetryableError("x")) for _ in range(50)]
        assert all(0.0 <= s <= ceiling for s in samples)
        assert len(set(samples)) > 1


def test_bounded_attempts_reraise_the_original_error() -> None:
    sleep = FakeSleep()
    last = ThrottledError("still throttled", code="AF429", status=403)
    fn, calls = failing([ThrottledError("t1"), ThrottledError("t2"), ThrottledError("t3"), last])
    p = policy(sleep, max_attempts=4)
    with pytest.raises(ThrottledError) as caught:
        asyncio.run(p.call(fn))
    assert caught.value is last
    assert len(calls) == 4
    assert len(sleep.delays) == 3
    assert p.stats.throttled == 4
    assert p.stats.gave_up == 1


@pytest.mark.parametrize(
    "error",
    [
        PermanentApiError("AF20020"),
        SubscriptionMissingError("AF20022"),
        ContentExpiredError("AF20051"),
        MalformedContentError("not an array"),
        ValueError("a bug"),
        aiohttp.InvalidURL("nope"),
    ],
)
def test_permanent_errors_are_not_retried(error: Exception) -> None:
    sleep = FakeSleep()
    fn, calls = failing([error])
    with pytest.raises(type(error)) as caught:
        asyncio.run(policy(sleep).call(fn))
    assert caught.value is error
    assert len(calls) == 1
    assert sleep.delays == []


@pytest.mark.parametrize(
    "error",
    [
        RetryableError("AF50000"),
        ThrottledError("AF429"),
        aiohttp.ClientConnectionError("refused"),
        aiohttp.ServerDisconnectedError(),
        TimeoutError(),
        ConnectionResetError("reset by peer"),
        IncompleteContentError("cut off"),
    ],
)
def test_transient_errors_are_retried(error: Exception) -> None:
    sleep = FakeSleep()
    fn, calls = failing([error])
    assert asyncio.run(policy(sleep).call(fn)) == "ok"
    assert len(calls) == 2


def test_incomplete_content_is_refetched_only_a_few_times() -> None:
    sleep = FakeSleep()
    fn, calls = failing([IncompleteContentError(f"cut {i}") for i in range(10)])
    with pytest.raises(IncompleteContentError, match="cut 2"):
        asyncio.run(policy(sleep, max_attempts=8, malformed_attempts=3).call(fn))
    assert len(calls) == 3


def test_throttling_before_a_cut_off_body_does_not_use_up_its_refetches() -> None:
    # A burst of throttling, then one transient cut: the body still gets all its re-fetches.
    sleep = FakeSleep()
    errors: list[BaseException] = [ThrottledError("AF429"), RetryableError("AF50000"),
                                   IncompleteContentError("cut once")]
    fn, calls = failing(errors)
    assert asyncio.run(policy(sleep, max_attempts=8, malformed_attempts=2).call(fn)) == "ok"
    assert len(calls) == 4


def test_only_cut_off_bodies_count_toward_the_refetch_limit() -> None:
    sleep = FakeSleep()
    errors: list[BaseException] = [IncompleteContentError("cut 0"), ThrottledError("AF429"),
                                   IncompleteContentError("cut 1"), ThrottledError("AF429"),
                                   IncompleteContentError("cut 2"), IncompleteContentError("cut 3")]
    fn, calls = failing(errors)
    with pytest.raises(IncompleteContentError, match="cut 2"):
        asyncio.run(policy(sleep, max_attempts=8, malformed_attempts=3).call(fn))
    assert len(calls) == 5


def test_retry_after_seconds_is_honoured_and_capped() -> None:
    sleep = FakeSleep()
    short = classify(429, b"", {"Retry-After": "0.25"}).error
    long = classify(403, b'{"error":{"code":"AF429","message":"slow down"}}', {"Retry-After": "3600"}).error
    fn, _ = failing([short, long])
    asyncio.run(policy(sleep, max_delay=0.5, jitter=True).call(fn))
    assert sleep.delays == [0.25, 0.5]


def test_retry_after_http_date() -> None:
    sleep = FakeSleep()
    error = RetryableError("busy", status=503)
    attach_retry_after(error, "Wed, 01 May 2024 12:00:03 GMT")
    fn, _ = failing([error])
    asyncio.run(policy(sleep).call(fn))
    assert sleep.delays == [3.0]


def test_unreadable_retry_after_falls_back_to_backoff() -> None:
    sleep = FakeSleep()
    error = RetryableError("busy", status=503)
    attach_retry_after(error, "soon")
    fn, _ = failing([error])
    asyncio.run(policy(sleep, base_delay=0.125).call(fn))
    assert sleep.delays == [0.125]


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("5", 5.0),
        (" 1.5 ", 1.5),
        ("-3", 0.0),
        ("Wed, 01 May 2024 12:01:00 GMT", 60.0),
        ("Wed, 01 May 2024 11:00:00 GMT", 0.0),
        ("", None),
        ("later", None),
    ],
)
def test_parse_retry_after(raw: str, seconds: float | None) -> None:
    assert parse_retry_after(raw, NOW) == seconds


def test_invalid_configuration_is_refused() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(base_delay=-1)


def test_concurrent_calls_do_not_share_state() -> None:
    sleep = FakeSleep()
    p = policy(sleep, max_attempts=3)

    async def main() -> list[str]:
        calls = [failing([RetryableError("a")] * 2, result=f"r{i}")[0] for i in range(5)]
        return await asyncio.gather(*(p.call(fn) for fn in calls))

    assert asyncio.run(main()) == [f"r{i}" for i in range(5)]
    assert p.stats.retries == 10
