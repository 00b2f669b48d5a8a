"""Fixtures shared by the whole suite."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
import trio
from hypothesis import settings
from trio.testing import MockClock

from tests.redis_server import redis_server  # noqa: F401 (a fixture for the whole suite)

# Every trio test (every example, for a property test) runs under a deadline.
# On the real clock that is a minute; under the mock clock it is a month of
# virtual time, which a deadlocked test reaches at once, since autojump skips
# to the next deadline when every task waits. pytest-timeout (pyproject.toml)
# stays as the backstop for the rest. `make soak` runs the reliability tests at
# their large sizes, for which a minute is too short.
REAL_TIME_LIMIT = 60.0 if os.environ.get("TROUPE_SOAK", "") != "1" else 1800.0
VIRTUAL_TIME_LIMIT = 30 * 24 * 3600.0

AsyncTest = Callable[..., Coroutine[Any, Any, Any]]


def _time_limited(test: AsyncTest) -> AsyncTest:
    if getattr(test, "_troupe_time_limited", False):
        return test

    @functools.wraps(test)
    async def limited(*args: Any, **kwargs: Any) -> Any:
        mock = isinstance(trio.lowlevel.current_clock(), MockClock)
        with trio.fail_after(VIRTUAL_TIME_LIMIT if mock else REAL_TIME_LIMIT):
            return await test(*args, **kwargs)

    limited._troupe_time_limited = True  # type: ignore[attr-defined]
    return limited


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Put a deadline around each trio test before pytest-trio runs it."""
    test = getattr(item, "obj", None)
    inner = getattr(test, "hypothesis", None)
    if inner is not None and inspect.iscoroutinefunction(inner.inner_test):
        inner.inner_test = _time_limited(inner.inner_test)
    elif inspect.iscoroutinefunction(test):
        item.obj = _time_limited(test)  # type: ignore[attr-defined]
    yield


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
