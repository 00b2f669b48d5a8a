"""Fixtures shared by the service tests.

- ``autojump_clock``: pytest-trio runs a test that takes it on a
  :class:`~trio.testing.MockClock` that jumps whenever every task is blocked,
  so timeouts and retention of minutes take no real time. Do not combine it
  with real sockets.
- ``memory_config``: builds a :class:`ServiceConfig` on the memory store,
  with overrides.
- ``open_simulated_service``: opens a service on a :class:`SimulatedUpstream`
  of a chosen pace.
- ``silent_upstream``: an upstream that opens nothing and never answers, so a
  job runs until it is aborted, timed out or drained, and the only events of
  its stream are the ones a test sends the registry itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import pytest
import trio
import trio.testing

from actors.config import ServiceConfig
from actors.service import Service, open_service
from actors.upstream import SimulatedUpstream, StreamResult, UpstreamEvent, UpstreamRequest


class SilentUpstream:
    """An upstream whose ``stream()`` waits until cancelled and emits nothing."""

    def __init__(self) -> None:
        self.calls = 0
        self.cancelled = 0

    async def stream(
        self,
        request: UpstreamRequest,
        on_event: Callable[[UpstreamEvent], Awaitable[None]],
    ) -> StreamResult:
        """Never returns; counts the calls and the cancellations (an abort reaching it)."""
        self.calls += 1
        try:
            await trio.sleep_forever()
        finally:
            self.cancelled += 1

    async def aclose(self) -> None:
        """Nothing to release."""


class MemoryConfig(Protocol):
    def __call__(self, **overrides: Any) -> ServiceConfig: ...


class OpenSimulatedService(Protocol):
    def __call__(
        self, config: ServiceConfig, tokens_per_second: float = ...
    ) -> AbstractAsyncContextManager[Service]: ...


@pytest.fixture
def memory_config(tmp_path: Path) -> MemoryConfig:
    """``memory_config(**overrides)`` is a memory-store config; ``drain_timeout`` defaults to 0
    so that leaving a service with running jobs takes no time."""

    def build(**overrides: Any) -> ServiceConfig:
        settings: dict[str, Any] = {"drain_timeout": 0.0, **overrides}
        return ServiceConfig(store="memory", data_dir=tmp_path, **settings)

    return build


@pytest.fixture
def open_simulated_service() -> OpenSimulatedService:
    """``async with open_simulated_service(config, tokens_per_second) as service`` runs the
    service on a :class:`SimulatedUpstream` (20 tokens per second unless given)."""

    @asynccontextmanager
    async def open_it(
        config: ServiceConfig, tokens_per_second: float = 20.0
    ) -> AsyncIterator[Service]:
        upstream = SimulatedUpstream(tokens_per_second)
        async with open_service(config, upstream=upstream) as service:
            yield service

    return open_it


@pytest.fixture
def silent_upstream() -> SilentUpstream:
    return SilentUpstream()
