"""Builds the configured store once and hands out the same instance after.

Backends are looked up by name in :data:`BACKENDS`. Adding one means writing its
store class and adding an entry there; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import trio

from actors.config import ServiceConfig
from actors.stores.memory import MemoryStore
from actors.stores.protocol import Store, StoreError
from actors.stores.sqlite import SqliteStore

__all__ = ["BACKENDS", "SQLITE_FILE_NAME", "StoreBuilder", "StoreFactory"]

SQLITE_FILE_NAME = "troupe.db"

StoreBuilder = Callable[[ServiceConfig], Awaitable[Store]]
"""Opens a backend's store as ``config`` sets it up; raises StoreError if it cannot."""


async def _build_memory(config: ServiceConfig) -> Store:
    await trio.lowlevel.checkpoint()
    return MemoryStore()


async def _build_sqlite(config: ServiceConfig) -> Store:
    data_dir = config.data_dir

    def open_store() -> SqliteStore:
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create data directory {data_dir}: {exc}") from exc
        return SqliteStore(data_dir / SQLITE_FILE_NAME, max_bytes=config.sqlite_max_bytes or None)

    # Not abandoned on cancel: the open finishes, so no writer thread is leaked
    # half-built; the caller's cancellation lands at its next checkpoint.
    return await trio.to_thread.run_sync(open_store)


async def _build_redis(config: ServiceConfig) -> Store:
    # Here: coredis takes a while to load, and no other backend needs it.
    from actors.stores.redis import RedisStore

    return await RedisStore.open(
        config.redis_url,
        prefix=config.redis_prefix,
        retention=config.retention,
        connect_timeout=config.redis_connect_timeout,
        command_timeout=config.redis_command_timeout,
        max_live_jobs=config.redis_max_live_jobs,
    )


BACKENDS: Mapping[str, StoreBuilder] = {
    "memory": _build_memory,
    "sqlite": _build_sqlite,
    "redis": _build_redis,
}
"""Every backend the factory knows, by the name configuration uses for it."""


class StoreFactory:
    """Gives out one cached store of the backend ``config.store`` names.

    The SQLite backend keeps its file in ``config.data_dir / "troupe.db"`` (and
    creates the directory), capped at ``config.sqlite_max_bytes``; the Redis backend
    reads the ``redis_*`` settings and ``retention``.
    """

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self._lock = trio.Lock()
        self._store: Store | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<StoreFactory backend={self.backend!r}>"

    @property
    def backend(self) -> str:
        """The configured backend's name."""
        return self.config.store

    async def get(self) -> Store:
        """Return the store, building it on the first call.

        Concurrent first calls build it once; the others wait for it. Raises
        :class:`StoreError` for an unknown backend, a backend that cannot be
        opened (nothing is cached then, so a later call tries again), or after
        :meth:`aclose`.
        """
        async with self._lock:
            if self._closed:
                raise StoreError("store factory is closed")
            if self._store is None:
                build = BACKENDS.get(self.backend)
                if build is None:
                    raise StoreError(
                        f"unknown store backend {self.backend!r}: "
                        f"expected one of {', '.join(BACKENDS)}"
                    )
                self._store = await build(self.config)
            return self._store

    async def aclose(self) -> None:
        """Close the cached store, if one was built. Idempotent; afterwards
        :meth:`get` raises :class:`StoreError`."""
        async with self._lock:
            self._closed = True
            store, self._store = self._store, None
            if store is not None:
                await store.aclose()
