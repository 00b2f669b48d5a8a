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

While the store fails (a shared store's server is down), the streams go on
into memory and the persister tries again, backing off up to ``_MAX_DELAY``.
If it still fails ``store_outage_grace`` seconds after the first failure, the
persister has the registry end every running job "store unavailable": their
followers learn it at once, and each end is stored once the store answers.
Followers never pass the watermark, so no delta any of them was sent is lost.
"""

from __future__ import annotations

from typing import Any

import structlog
import trio

from actors.dependencies import REGISTRY, STREAMS, ServiceDependencies
from actors.jobs.log import JobLog
from actors.messages import GetLog, InterruptAll, TrackLog
from actors.model import Delta
from actors.stores import StoreError
from runtime import Actor, ActorCrashed, ActorStopped, AskTimeout, ExitReason, SupervisorRef

__all__ = ["Persister"]

log = structlog.get_logger("troupe.persister")

# The longest wait between two writes while the store fails.
_MAX_DELAY = 1.0
# How a job ends when the store failed for longer than ``store_outage_grace``.
_STORE_UNAVAILABLE = "store unavailable"


class Persister(Actor):
    """One per service; see the module docstring."""

    def __init__(self, deps: ServiceDependencies) -> None:
        self._deps = deps
        self._interval = deps.config.flush_interval
        self._per_job = deps.config.flush_max_deltas
        self._logs: dict[str, JobLog] = {}
        self._delay = self._interval
        # When writes began to fail, on trio's clock; None while they succeed.
        self._failing_since: float | None = None

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
            await trio.sleep(self._delay)
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
        except BaseException as failure:
            # Cancelled, the write may still have been committed: storing the
            # same seqs again is harmless, the store skips them.
            for job_id, deltas in batches.items():
                self._logs[job_id].give_back(deltas)
            if not isinstance(failure, StoreError):
                raise
            await self._failed(failure)
            return
        if self._failing_since is not None:
            log.info("the store answers again", down_for=trio.current_time() - self._failing_since)
            self._failing_since = None
            self._delay = self._interval
        for job_id, deltas in batches.items():
            self._logs[job_id].mark_persisted(deltas)

    async def _failed(self, failure: StoreError) -> None:
        """Back off after a failed write; past the grace, end the running jobs.

        Called with no write in flight, so the registry takes every delta that is
        not stored yet with the jobs it ends.
        """
        now = trio.current_time()
        if self._failing_since is None:
            self._failing_since = now
            log.warning(
                "the store fails; running jobs keep their output in memory", error=str(failure)
            )
        self._delay = min(2 * self._delay, _MAX_DELAY)
        if now - self._failing_since < self._deps.config.store_outage_grace:
            return
        registry = self.context.system.lookup(REGISTRY)
        if registry is None:
            return
        try:
            ended = await registry.ask(
                InterruptAll(_STORE_UNAVAILABLE, store_down=True), timeout=30.0
            )
        except (ActorStopped, ActorCrashed, AskTimeout) as error:
            log.warning("the registry did not end the jobs", error=str(error))
            return
        log.error("the store failed for too long; running jobs ended", jobs=ended)
        self._failing_since = None
        self._delay = self._interval
