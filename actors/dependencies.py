"""What every service actor is built with: read-only services, no actor state."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Protocol

import attrs

from actors.clock import TrioWallClock
from actors.config import ServiceConfig
from actors.metrics import ServiceMetrics
from actors.stores import Store
from actors.upstream import Upstream

__all__ = ["ServiceDependencies", "Stores", "new_id", "new_node_id"]


def new_id() -> str:
    return uuid.uuid4().hex


def new_node_id() -> str:
    """A name for a process that was given none: short, and unique in practice."""
    return new_id()[:12]


class Stores(Protocol):
    """Where the actors get the one store of the service (a
    :class:`~actors.stores.StoreFactory`)."""

    async def get(self) -> Store:
        """The store; raises StoreError if it cannot be opened."""
        ...


@attrs.frozen
class ServiceDependencies:
    """The configuration, the store factory (which caches one store), the
    upstream client and the clock, shared by the actors of one service, and
    ``node_id``, the name of this process among those sharing a store.

    These are services with their own concurrency safety; they hold no actor
    state, so sharing them keeps the actors independent.
    """

    config: ServiceConfig
    stores: Stores
    upstream: Upstream
    clock: TrioWallClock
    new_id: Callable[[], str] = new_id
    node_id: str = attrs.field(factory=new_node_id)
    metrics: ServiceMetrics = attrs.field(factory=ServiceMetrics)


# Paths of the service's actors in the runtime tree.
SERVICE = "service"
STORE = f"{SERVICE}/store"
REGISTRY = f"{SERVICE}/registry"
NOTIFIER = f"{SERVICE}/notifier"
PERSISTER = f"{SERVICE}/persister"
STREAMS = f"{SERVICE}/streams"
SWEEPER = f"{SERVICE}/sweeper"
WEBHOOKS = f"{SERVICE}/webhooks"
LEASES = f"{SERVICE}/leases"
