"""The collector's policy during a collection: off, with full collections spaced by their cost."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from function_app.gc_tuning import MAX_COLLECT_SHARE, next_collection_in, periodic_collection


@pytest.mark.parametrize(("took", "expected"), [(0.0, 15.0), (0.1, 15.0), (0.15, 15.0), (0.4, 40.0), (2.0, 200.0)])
def test_a_costly_collection_puts_the_next_one_further_off(took: float, expected: float) -> None:
    assert next_collection_in(15.0, took) == pytest.approx(expected)
    assert took / next_collection_in(15.0, took) <= MAX_COLLECT_SHARE


def test_collections_run_with_automatic_collection_off_and_its_state_comes_back() -> None:
    seen: list[bool] = []

    def slow_collector() -> int:
        seen.append(gc.isenabled())
        time.sleep(0.002)  # 0.2 s to the next at a 1 % share: one collection in the window below
        return 0

    async def window() -> None:
        async with periodic_collection(0.01, collector=slow_collector):
            assert not gc.isenabled()
            await asyncio.sleep(0.15)

    assert gc.isenabled()
    asyncio.run(window())
    assert gc.isenabled()
    assert seen == [False]
