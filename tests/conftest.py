"""Fixtures shared by the whole suite."""

from __future__ import annotations

import pytest
from trio.testing import MockClock


@pytest.fixture
def autojump_clock() -> MockClock:
    """Trio's mock clock, jumping ahead whenever every task waits.

    pytest-trio runs a test on it when the test takes this fixture as an
    argument; timeouts and intervals then take no real time.
    """
    return MockClock(autojump_threshold=0)
