"""Fixtures shared by the service tests (plain helpers are in :mod:`tests.service.kit`).

- ``memory_config``: builds a :class:`ServiceConfig` on the memory store,
  with overrides.
- ``open_simulated_service``: opens a service on a :class:`SimulatedUpstream`
  of a chosen pace.
- ``fake``: a running :class:`FakeUpstream` HTTP server on 127.0.0.1.

The mock clock is the suite-wide ``autojump_clock`` fixture: a test that takes
it runs on trio's mock clock. Do not combine it with real sockets.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from actors.config import ServiceConfig
from actors.service import Service, open_service
from actors.upstream import SimulatedUpstream
from tests.fake_upstream import FakeUpstream
from tests.service import kit
from tests.service.kit import MemoryConfig, OpenSimulatedService


@pytest.fixture
def memory_config(tmp_path: Path) -> MemoryConfig:
    """``memory_config(**overrides)`` is a memory-store config; ``drain_timeout`` defaults to 0
    so that leaving a service with running jobs takes no time."""

    def build(**overrides: Any) -> ServiceConfig:
        return kit.config(tmp_path, **{"drain_timeout": 0.0, **overrides})

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
async def fake() -> AsyncIterator[FakeUpstream]:
    """A scriptable fake OpenAI-compatible server, serving for the whole test."""
    async with FakeUpstream.serve() as server:
        yield server
