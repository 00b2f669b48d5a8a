"""Where jobs, their deltas and notifications are kept: in memory or in SQLite,
behind one protocol, chosen by :class:`StoreFactory`."""

from __future__ import annotations

from actors.stores.factory import BACKENDS, StoreFactory
from actors.stores.memory import MemoryStore
from actors.stores.protocol import JobStore, JobSummary, NotificationStore, Store, StoreError
from actors.stores.sqlite import SqliteJobStore, SqliteStore

__all__ = [
    "BACKENDS",
    "JobStore",
    "JobSummary",
    "MemoryStore",
    "NotificationStore",
    "SqliteJobStore",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreFactory",
]
