"""Where jobs, their deltas and notifications are kept: in memory, in SQLite or in
Redis (shared by several processes), behind one protocol, chosen by
:class:`StoreFactory`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from actors.stores.factory import BACKENDS, StoreFactory
from actors.stores.memory import MemoryStore
from actors.stores.protocol import (
    ClusterStore,
    JobStore,
    JobSummary,
    NotificationStore,
    Store,
    StoreError,
)
from actors.stores.sqlite import SqliteJobStore, SqliteStore

if TYPE_CHECKING:
    from actors.stores.redis import RedisStore

__all__ = [
    "BACKENDS",
    "ClusterStore",
    "JobStore",
    "JobSummary",
    "MemoryStore",
    "NotificationStore",
    "RedisStore",
    "SqliteJobStore",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreFactory",
]


def __getattr__(name: str) -> Any:
    # Handed on lazily: coredis takes a while to load, and only the Redis backend needs it.
    if name == "RedisStore":
        from actors.stores.redis import RedisStore

        return RedisStore
    raise AttributeError(f"module 'actors.stores' has no attribute {name!r}")
