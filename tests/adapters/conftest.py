"""Adapter tests run against real emulators: one Azurite for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.azurite import Azurite, AzuriteUnavailable, start_azurite


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """A running in-memory Azurite; stopped when the session ends."""
    try:
        emulator = start_azurite()
    except AzuriteUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield emulator
    finally:
        emulator.stop()
