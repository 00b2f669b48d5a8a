"""What every service actor is built with: read-only services, no actor state."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import attrs

from actors.clock import TrioWallClock
from actors.config import ServiceConfig
from actors.metrics import ServiceMetrics
from actors.stores import StoreFactory
from actors.upstream import Upstream

__all__ = ["ServiceDependencies", "new_id"]


def new_id() -> str:
    return uuid.uuid4().hex


@attrs.frozen
class ServiceDependencies:
    """The configuration, the store factory (which caches one store), the
    upstream client and the clock, shared by the actors of one service.

    These are services with their own concurrency safety; they hold no actor
    state, so sharing them keeps the actors independent.
    """

    config: ServiceConfig
    stores: StoreFactory
    upstream: Upstream
    clock: TrioWallClock
    new_id: Callable[[], str] = new_id
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
