"""The memory budget admits blobs by bytes, in arrival order, and never loses a byte it lent."""

from __future__ import annotations

import asyncio

import pytest

from function_app.core.budget import MemoryBudget


def test_small_reservations_share_the_budget_and_a_large_one_waits_its_turn() -> None:
    async def run() -> list[str]:
        budget = MemoryBudget(100)
        order: list[str] = []
        a = await budget.reserve(40)
        b = await budget.reserve(40)
        assert budget.in_use == 80

        async def take(name: str, amount: int) -> None:
            r = await budget.reserve(amount)
            order.append(name)
            await asyncio.sleep(0)
            r.release()

        big = asyncio.create_task(take("big", 90))
        await asyncio.sleep(0)
        # Arrived after the big one: waits behind it although it would fit now.
        small = asyncio.create_task(take("small", 10))
        await asyncio.sleep(0)
        assert order == [] and budget.in_use == 80
        a.release()
        await asyncio.sleep(0)
        assert order == []
        b.release()
        await asyncio.gather(big, small)
        assert budget.in_use == 0 and budget.peak == 100, "both fit together once the first two left"
        return order

    assert asyncio.run(run()) == ["big", "small"]


def test_an_amount_over_the_limit_runs_alone_instead_of_waiting_forever() -> None:
    async def run() -> int:
        budget = MemoryBudget(100)
        r = await budget.reserve(10_000)
        held = budget.in_use
        r.release()
        r.release()  # idempotent
        assert budget.in_use == 0
        return held

    assert asyncio.run(run()) == 100


def test_a_cancelled_waiter_gives_its_place_to_the_next() -> None:
    async def run() -> None:
        budget = MemoryBudget(100)
        holder = await budget.reserve(100)
        first = asyncio.create_task(budget.reserve(60))
        second = asyncio.create_task(budget.reserve(30))
        await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        holder.release()
        r = await asyncio.wait_for(second, 1)
        assert budget.in_use == 30
        r.release()
        assert budget.in_use == 0

    asyncio.run(run())


def test_a_budget_must_hold_something() -> None:
    with pytest.raises(ValueError, match="at least one byte"):
        MemoryBudget(0)


def test_trying_takes_what_fits_now_and_never_jumps_the_queue() -> None:
    async def run() -> None:
        budget = MemoryBudget(100)
        first = budget.try_reserve(70)
        assert first is not None and budget.in_use == 70
        assert budget.try_reserve(40) is None and budget.in_use == 70  # does not fit: nothing held
        waiting = asyncio.create_task(budget.reserve(40))
        await asyncio.sleep(0)
        assert budget.try_reserve(10) is None, "it would fit, but a waiter came first"
        first.release()
        granted = await waiting
        assert budget.in_use == 40
        over = budget.try_reserve(1_000)  # cut to the whole limit, which does not fit beside the 40 held
        assert over is None
        granted.release()
        whole = budget.try_reserve(1_000)
        assert whole is not None and whole.amount == 100
        whole.release()
        assert budget.in_use == 0

    asyncio.run(run())
