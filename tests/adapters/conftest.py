"""Adapter tests run against real emulators: the session's Azurite comes from tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.adapters.fake_adx import FakeAdx
from tests.azurite import Azurite


@pytest.fixture(scope="module")
def fake(azurite: Azurite) -> Iterator[FakeAdx]:
    """The fake ADX of a test module, over the session's Azurite."""
    adx = FakeAdx(azurite).start()
    yield adx
    adx.stop()
