"""The :class:`StoreKeeper` actor: opens the configured store first and answers health pings.

It is the first child of the service, so the store is open (and migrated)
before the registry and the notifier start, and a readiness probe can ask it
whether the store still answers. A store that does not is an answer, not a
crash: a probe every few seconds of a store that is down must not take the
service down.
"""

from __future__ import annotations

from typing import Any

from actors.dependencies import ServiceDependencies
from actors.messages import Ping
from actors.stores import StoreError
from runtime import Actor

__all__ = ["StoreKeeper"]


class StoreKeeper(Actor):
    def __init__(self, deps: ServiceDependencies) -> None:
        self._deps = deps

    async def on_start(self) -> None:
        self._store = await self._deps.stores.get()

    async def handle(self, message: Any) -> Any:
        if isinstance(message, Ping):
            try:
                await self._store.ping()
            except StoreError:
                return False
            return True
        self.unhandled(message)
