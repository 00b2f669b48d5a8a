"""Followers: async iterators over a job's events and a user's new notifications.

A :class:`JobFollower` subscribes to the registry, replays the stored deltas
after ``after_seq`` up to the moment it subscribed, then passes on the live
ones, and ends with the terminal status. If its live channel ends early
(it fell more than ``follower_buffer`` events behind, or the registry
restarted) the server side has already let go of it; it subscribes again and
replays from the store what it missed, so the caller sees every delta once.
"""

from __future__ import annotations

import abc
from collections import deque
from types import TracebackType
from typing import Generic, Self, TypeVar

import trio

from actors.api import DeltaEvent, JobEvent, JobView, SnapshotEvent, StatusEvent
from actors.errors import JobNotFound
from actors.messages import FollowJob, FollowNotifications, Subscription
from actors.model import Notification, Owner
from actors.stores import Store
from runtime import ActorRef

__all__ = ["Follower", "JobFollower", "NotificationFollower"]

T = TypeVar("T")


class Follower(abc.ABC, Generic[T]):
    """What both followers share: a live channel from an actor, and closing it.

    Closing drops our end of the channel; the actor lets go of its end the
    next time it has something to send.
    """

    def __init__(self) -> None:
        self._live: trio.MemoryReceiveChannel[T] | None = None
        self._closed = False

    def __aiter__(self) -> Self:
        return self

    @abc.abstractmethod
    async def __anext__(self) -> T:
        """The next item; raises StopAsyncIteration once closed or finished."""

    def close(self) -> None:
        """Stop following; iteration ends."""
        self._closed = True
        if self._live is not None:
            self._live.close()
            self._live = None

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class JobFollower(Follower[JobEvent]):
    """``async for event in follower`` yields a snapshot, deltas, then the status.

    Close it with :meth:`aclose` (or use ``async with``) when stopping early.
    Iteration raises :class:`JobNotFound` if the job is not the owner's.
    """

    def __init__(
        self,
        registry: ActorRef,
        store: Store,
        owner: Owner,
        job_id: str,
        after_seq: int | None,
    ) -> None:
        super().__init__()
        self._registry = registry
        self._store = store
        self._owner = owner
        self._job_id = job_id
        self.last_seq = after_seq or 0
        self._snapshot_sent = False
        self._replay: deque[DeltaEvent] = deque()
        self._replay_until = 0
        self._final: StatusEvent | None = None
        self.resubscriptions = 0

    async def __anext__(self) -> JobEvent:
        while not self._closed:
            if self._live is None and self._final is None:
                subscription = await self._subscribe()
                if not self._snapshot_sent:
                    self._snapshot_sent = True
                    job = subscription.job
                    return SnapshotEvent(JobView.of(job, offset=len(job.content)))
            if self._replay:
                event = self._replay.popleft()
                self.last_seq = event.seq
                return event
            if self.last_seq < self._replay_until:
                await self._load_replay()
                continue
            if self._final is not None:
                self._closed = True
                return self._final
            assert self._live is not None
            try:
                live = await self._live.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                self._live = None
                self.resubscriptions += 1
                continue
            if isinstance(live, DeltaEvent):
                if live.seq > self.last_seq:
                    self.last_seq = live.seq
                    return live
            elif isinstance(live, StatusEvent):
                self._closed = True
                return live
        raise StopAsyncIteration

    async def _subscribe(self) -> Subscription:
        subscription: Subscription | None = await self._registry.ask(
            FollowJob(self._owner, self._job_id), timeout=30.0
        )
        if subscription is None:
            raise JobNotFound(self._job_id)
        job = subscription.job
        self._replay_until = job.last_seq
        self._live = subscription.events
        if subscription.events is None:
            self._final = StatusEvent(
                job.status, job.error, job.finish_reason, job.usage, job.last_seq
            )
        return subscription

    async def _load_replay(self) -> None:
        deltas = await self._store.get_deltas(self._job_id, self.last_seq)
        self._replay.extend(
            DeltaEvent(d.seq, d.content, d.reasoning) for d in deltas if d.seq <= self._replay_until
        )
        if not self._replay:  # the store has nothing more (deleted meanwhile)
            self._replay_until = self.last_seq


class NotificationFollower(Follower[Notification]):
    """``async for notification in follower`` yields the owner's new notifications, live.

    If it falls behind or the notifier restarts it subscribes again; what it
    missed meanwhile is in the list of notifications.
    """

    def __init__(self, notifier: ActorRef, owner: Owner) -> None:
        super().__init__()
        self._notifier = notifier
        self._owner = owner

    async def __anext__(self) -> Notification:
        while not self._closed:
            if self._live is None:
                self._live = await self._notifier.ask(
                    FollowNotifications(self._owner), timeout=30.0
                )
            assert self._live is not None
            try:
                return await self._live.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                self._live = None
        raise StopAsyncIteration
