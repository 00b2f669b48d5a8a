"""Fixtures shared by the whole suite."""

from __future__ import annotations

import pytest
from hypothesis import settings
from trio.testing import MockClock

# Examples run live actors and servers; their wall time depends on the
# machine's load, so a per-example deadline would only make the suite flaky.
settings.register_profile("troupe", deadline=None)
settings.load_profile("troupe")


@pytest.fixture
def autojump_clock() -> MockClock:
    """Trio's mock clock, jumping ahead whenever every task waits.

    pytest-trio runs a test on it when the test takes this fixture as an
    argument; timeouts and intervals then take no real time.
    """
    return MockClock(autojump_threshold=0)
