"""What a node does beside its registry when several share one store: the
:class:`LeaseKeeper` actor, and :func:`listen` for the store's channels.

On a :class:`~actors.stores.protocol.ClusterStore` the node that admitted a job
holds a lease on it while it streams. If the node dies, its leases run out, and
any other node ends its jobs "interrupted: node lost", keeping what they stored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import stamina
import structlog
import trio

from actors.dependencies import REGISTRY, ServiceDependencies
from actors.messages import JobsLost, LeasedJobs, ReapJobs
from actors.stores import StoreError
from actors.stores.protocol import ClusterStore
from runtime import Actor, ActorCrashed, ActorRef, ActorStopped, AskTimeout

__all__ = ["LeaseKeeper", "listen"]

log = structlog.get_logger("troupe.cluster")

# The longest wait before subscribing again to a channel whose connection dropped.
_MAX_RESUBSCRIBE_DELAY = 2.0


async def listen(
    store: ClusterStore, channel: str, on_message: Callable[[bytes], Awaitable[None]]
) -> None:
    """Call ``on_message`` with each message published on ``channel``, until cancelled.

    When the connection drops it subscribes again, backing off up to two seconds
    between tries; what was published meanwhile is missed (pub/sub delivers at
    most once). ``on_message`` runs in this task, one message at a time.
    """
    async for attempt in stamina.retry_context(
        on=StoreError,
        attempts=None,
        timeout=None,
        wait_initial=0.05,
        wait_max=_MAX_RESUBSCRIBE_DELAY,
        wait_jitter=0.05,
    ):
        with attempt:
            async with store.subscribe(channel) as messages:
                async for message in messages:
                    await on_message(message)


class LeaseKeeper(Actor):
    """One per node on a shared store: keeps this node's leases, and has the registry
    end the jobs of nodes that are gone.

    Every ``lease_period / 3`` it renews, in one call, the leases of the jobs the
    registry holds; those the store says this node lost go back to the registry
    (:class:`~actors.messages.JobsLost`). Every ``lease_period / 2`` it asks the store
    for expired leases and has the registry end their jobs
    (:class:`~actors.messages.ReapJobs`). So a dead node's jobs end within two lease
    periods.

    After a store failure it ends nothing until the store has answered for a whole
    lease period: an outage cut every node off, and the live ones renew their
    leases first.
    """

    def __init__(self, deps: ServiceDependencies) -> None:
        self._node_id = deps.node_id
        self._period = deps.config.lease_period
        self._stores = deps.stores
        # Since when the store has answered without a failure, on trio's clock.
        self._healthy_since: float | None = None

    async def on_start(self) -> None:
        store = await self._stores.get()
        registry = self.context.system.lookup(REGISTRY)
        if not isinstance(store, ClusterStore) or registry is None:
            raise RuntimeError("the lease keeper needs a shared store and the registry")
        self._store: ClusterStore = store
        self._registry: ActorRef = registry
        self.context.start_task(self._every, self._period / 3, self._renew)
        self.context.start_task(self._every, self._period / 2, self._reap)

    async def handle(self, message: Any) -> Any:
        self.unhandled(message)

    async def _every(self, interval: float, step: Callable[[], Awaitable[None]]) -> None:
        while True:
            await trio.sleep(interval)
            try:
                await step()
            except StoreError as error:
                if self._healthy_since is not None:
                    log.warning("the store fails; leases wait", error=str(error))
                self._healthy_since = None
            except (ActorStopped, ActorCrashed, AskTimeout) as error:
                log.warning("the registry did not answer", error=str(error))

    def _answered(self) -> float:
        """Note that the store answered; return for how long it has without a failure."""
        now = trio.current_time()
        if self._healthy_since is None:
            self._healthy_since = now
        return now - self._healthy_since

    async def _renew(self) -> None:
        job_ids: list[str] = await self._registry.ask(LeasedJobs(), timeout=self._period)
        if not job_ids:
            return
        lost = await self._store.renew_leases(self._node_id, job_ids, self._period)
        self._answered()
        if lost:
            log.warning("leases lost", jobs=len(lost))
            await self._registry.tell(JobsLost(frozenset(lost)))

    async def _reap(self) -> None:
        expired = await self._store.expired_jobs()
        if self._answered() < self._period or not expired:
            return
        ended: int = await self._registry.ask(ReapJobs(tuple(expired)), timeout=None)
        if ended:
            log.warning("ended the jobs of a lost node", jobs=ended)
