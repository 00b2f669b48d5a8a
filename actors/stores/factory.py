"""Builds the configured store once and hands out the same instance after.

Backends are looked up by name in :data:`BACKENDS`. Adding one (a shared Redis
store for several nodes, say) means writing its store class and adding an
entry there; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import trio

from actors.stores.memory import MemoryStore
from actors.stores.protocol import Store, StoreError
from actors.stores.sqlite import SqliteStore

__all__ = ["BACKENDS", "SQLITE_FILE_NAME", "StoreBuilder", "StoreFactory"]

SQLITE_FILE_NAME = "troupe.db"

StoreBuilder = Callable[[Path], Awaitable[Store]]
"""Opens a backend's store, given the data directory; raises StoreError if it cannot."""


async def _build_memory(data_dir: Path) -> Store:
    await trio.lowlevel.checkpoint()
    return MemoryStore()


async def _build_sqlite(data_dir: Path) -> Store:
    def open_store() -> SqliteStore:
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create data directory {data_dir}: {exc}") from exc
        return SqliteStore(data_dir / SQLITE_FILE_NAME)

    # Not abandoned on cancel: the open finishes, so no writer thread is leaked
    # half-built; the caller's cancellation lands at its next checkpoint.
    return await trio.to_thread.run_sync(open_store)


BACKENDS: Mapping[str, StoreBuilder] = {
    "memory": _build_memory,
    "sqlite": _build_sqlite,
}
"""Every backend the factory knows, by the name configuration uses for it."""


class StoreFactory:
    """Gives out one cached store of the configured ``backend``.

    ``data_dir`` is where persistent backends keep their files (the SQLite
    backend uses ``data_dir / "troupe.db"`` and creates the directory).
    """

    def __init__(self, backend: str, data_dir: Path) -> None:
        self.backend = backend
        self.data_dir = data_dir
        self._lock = trio.Lock()
        self._store: Store | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<StoreFactory backend={self.backend!r} data_dir={str(self.data_dir)!r}>"

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
                self._store = await build(self.data_dir)
            return self._store

    async def aclose(self) -> None:
        """Close the cached store, if one was built. Idempotent; afterwards
        :meth:`get` raises :class:`StoreError`."""
        async with self._lock:
            self._closed = True
            store, self._store = self._store, None
            if store is not None:
                await store.aclose()
