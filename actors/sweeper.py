"""The :class:`Sweeper` actor: asks the registry for a sweep every ``sweep_interval``.

It replaces the seed's self-referencing cleanup timer: the registry does the
work, and the sweeper only keeps time, on trio's clock.
"""

from __future__ import annotations

from typing import Any

import structlog
import trio

from actors.dependencies import REGISTRY, ServiceDependencies
from actors.messages import Sweep, SweepResult
from runtime import Actor, ActorRef

__all__ = ["Sweeper"]

log = structlog.get_logger("troupe.sweeper")


class Sweeper(Actor):
    """Starts after the registry, as a static child of the service supervisor, so
    it is there again whenever that supervisor is restarted."""

    def __init__(self, deps: ServiceDependencies) -> None:
        self._interval = deps.config.sweep_interval
        self._registry: ActorRef | None = None

    async def on_start(self) -> None:
        # A ref names a path: it stays good across the registry's restarts.
        self._registry = self.context.system.lookup(REGISTRY)
        if self._registry is None:
            raise RuntimeError(f"the sweeper needs the registry at {REGISTRY!r}")
        self.context.start_task(self._tick)

    async def handle(self, message: Any) -> Any:
        if isinstance(message, Sweep):
            return await self._sweep()
        self.unhandled(message)

    async def _tick(self) -> None:
        while True:
            await trio.sleep(self._interval)
            await self.context.self.tell(Sweep())

    async def _sweep(self) -> SweepResult:
        assert self._registry is not None
        result: SweepResult = await self._registry.ask(Sweep(), timeout=None)
        return result
