"""The :class:`Persister` actor: stores the new deltas of every running job, together.

Every ``flush_interval`` it takes what each tracked :class:`~actors.jobs.log.JobLog`
got since the last tick (at most ``flush_max_deltas`` a job) and stores it all
with one :meth:`~actors.stores.protocol.JobStore.append_many`, one transaction
on SQLite, then moves each log's watermark, which wakes its followers. No
stream waits for a store round trip, and the cost of a write is shared by
every job that had something to write.

It sits beside the token path, never in front of it: a slow store delays
followers by the time the write takes, but never the upstream reads, and a
store failure puts the deltas back for the next tick. A log leaves the
persister once it is closed. After a restart the persister asks every stream
actor for its log again.
"""

from __future__ import annotations

from typing import Any

import trio

from actors.dependencies import STREAMS, ServiceDependencies
from actors.jobs.log import JobLog
from actors.messages import GetLog, TrackLog
from actors.model import Delta
from runtime import Actor, ActorStopped, AskTimeout, ExitReason, SupervisorRef

__all__ = ["Persister"]


class Persister(Actor):
    """One per service; see the module docstring."""

    def __init__(self, deps: ServiceDependencies) -> None:
        self._deps = deps
        self._interval = deps.config.flush_interval
        self._per_job = deps.config.flush_max_deltas
        self._logs: dict[str, JobLog] = {}

    async def on_start(self) -> None:
        self._store = await self._deps.stores.get()
        if self.context.restarts:
            await self._recover_logs()
        self.context.start_task(self._tick)

    async def on_stop(self, reason: ExitReason) -> None:
        # What the streams appended last is stored before the service goes.
        await self._flush()

    async def handle(self, message: Any) -> Any:
        if isinstance(message, TrackLog):
            self._logs[message.log.job_id] = message.log
            return None
        self.unhandled(message)

    async def _recover_logs(self) -> None:
        streams = self.context.system.lookup(STREAMS)
        if not isinstance(streams, SupervisorRef):
            return
        for ref in await streams.children(timeout=5.0):
            try:
                job_log: JobLog = await ref.ask(GetLog(), timeout=5.0)
            except (ActorStopped, AskTimeout):
                continue
            self._logs[job_log.job_id] = job_log

    async def _tick(self) -> None:
        while True:
            await trio.sleep(self._interval)
            await self._flush()

    async def _flush(self) -> None:
        """Store every log's pending deltas in one write, then move the watermarks."""
        batches: dict[str, list[Delta]] = {}
        for job_id, job_log in list(self._logs.items()):
            if job_log.has_pending:
                batches[job_id] = job_log.take_pending(self._per_job)
            elif job_log.final is not None:
                del self._logs[job_id]
        if not batches:
            return
        try:
            await self._store.append_many(batches)
        except BaseException:
            # Cancelled, the write may still have been committed: storing the
            # same seqs again is harmless, the store skips them.
            for job_id, deltas in batches.items():
                self._logs[job_id].give_back(deltas)
            raise
        for job_id, deltas in batches.items():
            self._logs[job_id].mark_persisted(deltas)
