"""An in-process stand-in for a store several nodes share, on trio's clock.

``FakeCluster`` holds what the nodes share: one :class:`MemoryStore` and what
:class:`~actors.stores.protocol.ClusterStore` adds (admission under the caps,
leases, watch marks, live reads, channels). ``cluster.node()`` is one node's
store, to hand to ``open_service(config, store=...)``; closing it closes only
that node's view. ``cluster.down = True`` makes every call of every node raise
StoreError, and ends every subscription with it, until it is set back.

It follows the contract's docstrings, not any backend: a service that works on
it and on Redis relies on nothing but the contract.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager
from typing import Any, cast

import attrs
import trio

from actors.model import Delta, Job, JobStatus
from actors.stores import MemoryStore, StoreError
from actors.stores.protocol import Admission, ClusterStore, Limits

__all__ = ["FakeCluster"]


@attrs.define
class _Lease:
    node_id: str
    expires_at: float


class FakeCluster:
    """The shared state; see the module docstring."""

    def __init__(self) -> None:
        self.memory = MemoryStore()
        self.leases: dict[str, _Lease] = {}
        self.watched_until: dict[str, float] = {}
        self.published: list[tuple[str, bytes]] = []
        self._subscribers: defaultdict[str, set[trio.MemorySendChannel[bytes]]] = defaultdict(set)
        self._changed = trio.Event()
        self._down = False
        # Admission is atomic across nodes, as the contract asks.
        self.admission = trio.Lock()

    @property
    def down(self) -> bool:
        return self._down

    @down.setter
    def down(self, value: bool) -> None:
        self._down = value
        if value:
            # Connections drop: every subscription ends with an error.
            for channels in self._subscribers.values():
                for channel in channels:
                    channel.close()
            self._subscribers.clear()

    def node(self) -> ClusterStore:
        return cast(ClusterStore, _NodeStore(self))

    def check(self) -> None:
        if self._down:
            raise StoreError("the shared store is down")

    def wake_readers(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def changed(self, timeout: float) -> None:
        with trio.move_on_after(timeout):
            await self._changed.wait()

    def subscribe(self, channel: str) -> trio.MemoryReceiveChannel[bytes]:
        send, receive = trio.open_memory_channel[bytes](100)
        self._subscribers[channel].add(send)
        return receive

    def publish(self, channel: str, message: bytes) -> None:
        self.published.append((channel, message))
        for send in list(self._subscribers[channel]):
            try:
                send.send_nowait(message)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers[channel].discard(send)


class _NodeStore:
    """One node's view of a :class:`FakeCluster`: the memory store's methods, each
    failing while the cluster is down, and the cluster's own."""

    def __init__(self, cluster: FakeCluster) -> None:
        self._cluster = cluster
        self._memory = cluster.memory
        self._closed = False

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._memory, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            self._check()
            return await method(*args, **kwargs)

        return call

    def _check(self) -> None:
        if self._closed:
            raise StoreError("store is closed")
        self._cluster.check()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
        self._closed = True

    async def append_many(self, batches: Any) -> None:
        self._check()
        await self._memory.append_many(batches)
        self._cluster.wake_readers()

    async def append_deltas(self, job_id: str, deltas: Any) -> None:
        await self.append_many({job_id: deltas})

    async def update_job(self, job: Job) -> bool:
        self._check()
        updated = await self._memory.update_job(job)
        if updated and job.status.is_terminal:
            self._cluster.leases.pop(job.id, None)
            self._cluster.wake_readers()
        return updated

    async def admit_job(self, job: Job, limits: Limits, node_id: str, lease: float) -> Admission:
        self._check()
        async with self._cluster.admission:
            return await self._admit(job, limits, node_id, lease)

    async def _admit(self, job: Job, limits: Limits, node_id: str, lease: float) -> Admission:
        running = [
            j
            for j in await self._memory.list_jobs_by_status(_RUNNING)
            if j.foreground == job.foreground
        ]
        if job.foreground:
            if len(running) >= limits.max_foreground_streams:
                return Admission.FOREGROUND_CAP
        elif len(running) >= limits.max_concurrent_jobs:
            return Admission.GLOBAL_CAP
        elif sum(j.user_id == job.user_id for j in running) >= limits.max_jobs_per_user:
            return Admission.USER_CAP
        await self._memory.create_job(job)
        self._cluster.leases[job.id] = _Lease(node_id, trio.current_time() + lease)
        return Admission.ADMITTED

    async def renew_leases(self, node_id: str, job_ids: Collection[str], lease: float) -> set[str]:
        self._check()
        await trio.lowlevel.checkpoint()
        now, lost = trio.current_time(), set()
        for job_id in job_ids:
            held = self._cluster.leases.get(job_id)
            if held is None or held.node_id != node_id:
                lost.add(job_id)
            else:
                held.expires_at = now + lease
        return lost

    async def expired_jobs(self) -> list[str]:
        self._check()
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        expired = [(lease.expires_at, job_id) for job_id, lease in self._cluster.leases.items()]
        return [job_id for expires_at, job_id in sorted(expired) if expires_at <= now]

    async def mark_watched(self, job_id: str, duration: float) -> None:
        self._check()
        await trio.lowlevel.checkpoint()
        until = trio.current_time() + duration
        marks = self._cluster.watched_until
        marks[job_id] = max(marks.get(job_id, until), until)

    async def is_watched(self, job_id: str) -> bool:
        self._check()
        await trio.lowlevel.checkpoint()
        return self._cluster.watched_until.get(job_id, -1.0) > trio.current_time()

    async def read_live(
        self, job_id: str, after_seq: int, timeout: float, limit: int = 256
    ) -> tuple[list[Delta], bool]:
        deadline = trio.current_time() + timeout
        while True:
            self._check()
            deltas = await self._memory.get_deltas(job_id, after_seq)
            job = await self._memory.get_job(job_id)
            ended = (job is None or job.status.is_terminal) and len(deltas) <= limit
            if deltas or ended:
                return deltas[:limit], ended
            left = deadline - trio.current_time()
            if left <= 0:
                return [], False
            await self._cluster.changed(left)

    async def publish(self, channel: str, message: bytes) -> None:
        self._check()
        await trio.lowlevel.checkpoint()
        self._cluster.publish(channel, message)

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[AsyncIterator[bytes]]:
        self._check()
        receive = self._cluster.subscribe(channel)
        try:
            yield _Messages(receive.receive)
        finally:
            receive.close()


class _Messages:
    """A subscription's messages; StoreError once the cluster dropped it."""

    def __init__(self, receive: Callable[[], Awaitable[bytes]]) -> None:
        self._receive = receive

    def __aiter__(self) -> _Messages:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._receive()
        except trio.EndOfChannel:
            raise StoreError("the subscription's connection dropped") from None


_RUNNING = (JobStatus.QUEUED, JobStatus.STREAMING)
