"""Session fixtures shared by the test directories that need real emulators."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.azurite import Azurite, AzuriteUnavailable, start_azurite


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """A running in-memory Azurite, one per test session (adapters and azure tests share it)."""
    try:
        emulator = start_azurite()
    except AzuriteUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield emulator
    finally:
        emulator.stop()
