"""The :class:`StoreKeeper` actor: opens the configured store first and answers health pings.

It is the first child of the service, so the store is open (and migrated)
before the registry and the notifier start, and a readiness probe can ask it
whether the store still answers. A store that does not is an answer, not a
crash: a probe every few seconds of a store that is down must not take the
service down. The keeper logs the store's reason when it stops answering (at
start too) and when it answers again, once each, however often it is asked.
"""

from __future__ import annotations

from typing import Any

import structlog

from actors.dependencies import ServiceDependencies
from actors.messages import Ping
from actors.stores import StoreError
from runtime import Actor

__all__ = ["StoreKeeper"]

log = structlog.get_logger("troupe.store")


class StoreKeeper(Actor):
    def __init__(self, deps: ServiceDependencies) -> None:
        self._deps = deps
        # Whether the last check found the store answering.
        self._answering = True

    async def on_start(self) -> None:
        self._store = await self._deps.stores.get()
        await self._check()

    async def handle(self, message: Any) -> Any:
        if isinstance(message, Ping):
            return await self._check()
        self.unhandled(message)

    async def _check(self) -> bool:
        """Ping the store; True if it answers. Logs a change of answer."""
        try:
            await self._store.ping()
        except StoreError as error:
            if self._answering:
                log.error("the store does not answer; new jobs are refused", error=str(error))
            self._answering = False
            return False
        if not self._answering:
            log.info("the store answers again")
        self._answering = True
        return True
