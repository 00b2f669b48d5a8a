"""Followers: async iterators over a job's events and a user's new notifications.

A :class:`JobFollower` asks the registry once for the job and its live
:class:`~actors.jobs.log.JobLog`; from then on it reads without the registry:
the stored deltas after ``after_seq`` up to what the store held when it
subscribed, then the log's, up to the log's persisted watermark, then the
terminal status. A follower further behind than the log's in-memory tail reads
from the store until it catches up, so the caller sees every delta once, and
a slow follower never holds the job back. If the job's stream stops and nobody
closes the log (the registry restarted meanwhile, and ends the job on a log of
its own), the follower reads the job's end from the store.

On a store several nodes share, a job running on another node has no log here:
its follower reads the store live (:meth:`~actors.stores.protocol.ClusterStore.read_live`),
deltas as the job's node stores them, then the status, and marks the job
watched while it follows.
"""

from __future__ import annotations

import abc
from collections import deque
from types import TracebackType
from typing import Generic, Self, TypeVar

import trio

from actors.api import DeltaEvent, JobEvent, JobView, SnapshotEvent, StatusEvent
from actors.errors import JobNotFound, ServiceError, StoreUnavailable
from actors.jobs.log import JobLog
from actors.messages import FollowJob, FollowNotifications, Subscription
from actors.model import Notification, Owner
from actors.stores import Store, StoreError
from actors.stores.protocol import ClusterStore
from runtime import ActorRef

__all__ = ["Follower", "JobFollower", "NotificationFollower"]

T = TypeVar("T")

# Most events one batch carries.
_BATCH = 256
# How long one live read of a job on another node waits for a delta; its mark of
# the job as watched lasts twice that, so it holds while the follower reads.
_LIVE_WAIT = 1.0
# How often a follower on an abandoned log looks for the job's end in the store. The
# registry ends such a job at once (or as it restarts), so this is rarely waited.
_ABANDONED_POLL = 0.1


class Follower(abc.ABC, Generic[T]):
    """What both followers share: ``async for``, ``async with`` and closing."""

    def __init__(self) -> None:
        self._closed = False

    def __aiter__(self) -> Self:
        return self

    @abc.abstractmethod
    async def __anext__(self) -> T:
        """The next item; raises StopAsyncIteration once closed or finished."""

    def close(self) -> None:
        """Stop following; iteration ends."""
        self._closed = True

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

    :meth:`next_batch` gives every event that is ready at once, for callers
    that write them together. Close it with :meth:`aclose` (or use ``async
    with``) when stopping early. Iterating raises :class:`JobNotFound` if the
    job is not the owner's, and :class:`StoreUnavailable` if the store fails
    (iterate again to go on). ``cluster`` is the store, if several nodes share it.
    """

    def __init__(
        self,
        registry: ActorRef,
        store: Store,
        owner: Owner,
        job_id: str,
        after_seq: int | None,
        cluster: ClusterStore | None = None,
    ) -> None:
        super().__init__()
        self._registry = registry
        self._store = store
        self._cluster = cluster
        # Following a job another node runs: read live from the store.
        self._remote = False
        self._marked_at = -_LIVE_WAIT
        self._owner = owner
        self._job_id = job_id
        self.last_seq = after_seq or 0
        self._subscribed = False
        self._snapshot_sent = False
        self._log: JobLog | None = None
        self._replay_until = 0
        self._final: StatusEvent | None = None
        self._done = False
        self._ready: deque[JobEvent] = deque()
        # How often it fell behind the log's in-memory tail and read the store.
        self.catch_ups = 0

    async def __anext__(self) -> JobEvent:
        if not self._ready:
            self._ready.extend(await self.next_batch())
        if not self._ready:
            raise StopAsyncIteration
        return self._ready.popleft()

    @property
    def job_id(self) -> str:
        """The id of the job it follows."""
        return self._job_id

    def close(self) -> None:
        self._leave_log()
        super().close()

    async def next_batch(self) -> list[JobEvent]:
        """Wait for the next events and return them with all that follow at once.

        At most 256 events. Returns an empty list once the status was given or
        the follower was closed. Raises :class:`JobNotFound` if the job is not
        the owner's, :class:`StoreUnavailable` if the store failed. Cancellation
        loses nothing: the next call goes on.
        """
        if self._closed or self._done:
            await trio.lowlevel.checkpoint()
            return []
        try:
            if not self._subscribed:
                snapshot = await self._subscribe()
                if snapshot is not None:
                    return [snapshot]
            if self._remote:
                return await self._read_live()
            return await self._read()
        except StoreError as error:
            raise StoreUnavailable("the store does not answer; try again later") from error

    async def _read(self) -> list[JobEvent]:
        """The next events of a job that runs here, or has ended."""
        while True:
            if self.last_seq < self._replay_until:
                replayed = await self._replay()
                if replayed:
                    return self._with_final(replayed)
                continue
            job_log = self._log
            if job_log is None:
                return self._end()
            fresh = job_log.read_after(self.last_seq, _BATCH)
            if fresh is None:
                # Behind the tail: what it no longer holds is in the store.
                self.catch_ups += 1
                self._replay_until = job_log.persisted_seq
                continue
            if fresh:
                self.last_seq = fresh[-1].seq
                return self._with_final(list[JobEvent](fresh))
            final = job_log.final
            if final is not None:
                self._final = final
                if self.last_seq < final.last_seq:
                    self._replay_until = final.last_seq
                    continue
                return self._end()
            if job_log.abandoned:
                await self._read_stored_end(job_log)
            else:
                await job_log.wait_for(self.last_seq)
            if self._closed:
                return []

    async def _read_stored_end(self, job_log: JobLog) -> None:
        """The job's stream stopped and its log is open: go on from the store.

        An ended job is replayed from the store to its stored status; the deltas the
        store has past the follower's are replayed; else this waits a moment for the
        log to close.
        """
        job = await self._store.get_job(self._job_id)
        if job is None or job.status.is_terminal:
            self._leave_log()
            self._final = None if job is None else StatusEvent.of(job)
            self._replay_until = self.last_seq if job is None else job.last_seq
        elif job.last_seq > self.last_seq:
            self._replay_until = job.last_seq
        else:
            with trio.move_on_after(_ABANDONED_POLL):
                await job_log.wait_closed()

    def _leave_log(self) -> None:
        if self._log is not None and not self._closed:
            self._log.watchers -= 1
        self._log = None

    async def _subscribe(self) -> SnapshotEvent | None:
        subscription: Subscription | ServiceError | None = await self._registry.ask(
            FollowJob(self._owner, self._job_id), timeout=30.0
        )
        if subscription is None:
            raise JobNotFound(self._job_id)
        if isinstance(subscription, ServiceError):
            raise subscription
        self._subscribed = True
        job = subscription.job
        self._replay_until = job.last_seq
        self._log = subscription.log
        if self._log is not None:
            self._log.watchers += 1
        elif self._cluster is not None and not job.status.is_terminal:
            self._remote = True
        else:
            self._final = StatusEvent.of(job)
        if self._snapshot_sent:
            return None
        self._snapshot_sent = True
        return SnapshotEvent(JobView.of(job, offset=len(job.content)))

    async def _replay(self) -> list[JobEvent]:
        """The next stored deltas up to the replay point; none if the store has no more."""
        deltas = await self._store.get_deltas(self._job_id, self.last_seq, _BATCH)
        events: list[JobEvent] = [
            DeltaEvent(d.seq, d.content, d.reasoning) for d in deltas if d.seq <= self._replay_until
        ]
        if events:
            self.last_seq = events[-1].seq  # type: ignore[union-attr]
        else:  # the store has nothing more (deleted meanwhile)
            self._replay_until = self.last_seq
        return events

    async def _read_live(self) -> list[JobEvent]:
        """The next deltas of a job another node runs, as that node stores them; with
        the status once the job has ended."""
        assert self._cluster is not None
        while not self._closed:
            now = trio.current_time()
            if now - self._marked_at >= _LIVE_WAIT:
                await self._cluster.mark_watched(self._job_id, 2 * _LIVE_WAIT)
                self._marked_at = now
            deltas, ended = await self._cluster.read_live(
                self._job_id, self.last_seq, _LIVE_WAIT, _BATCH
            )
            # Read before anything moves: a cancelled read here loses nothing.
            job = await self._store.get_job(self._job_id) if ended else None
            events: list[JobEvent] = [DeltaEvent(d.seq, d.content, d.reasoning) for d in deltas]
            if deltas:
                self.last_seq = deltas[-1].seq
            if ended:
                self._done = True
                if job is not None:
                    events.append(StatusEvent.of(job))
            if events or ended:
                return events
        return []

    def _with_final(self, events: list[JobEvent]) -> list[JobEvent]:
        """``events``, and the status after them if nothing else can follow."""
        final = self._final if self._log is None else self._log.final
        if final is not None and self.last_seq >= final.last_seq:
            self._final = final
            events.extend(self._end())
        return events

    def _end(self) -> list[JobEvent]:
        self._done = True
        final, self._final = self._final, None
        return [] if final is None else [final]


class NotificationFollower(Follower[Notification]):
    """``async for notification in follower`` yields the owner's new notifications, live.

    If it falls behind or the notifier restarts it subscribes again; what it
    missed meanwhile is in the list of notifications.
    """

    def __init__(self, notifier: ActorRef, owner: Owner) -> None:
        super().__init__()
        self._notifier = notifier
        self._owner = owner
        self._live: trio.MemoryReceiveChannel[Notification] | None = None

    def close(self) -> None:
        super().close()
        if self._live is not None:
            self._live.close()
            self._live = None

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
