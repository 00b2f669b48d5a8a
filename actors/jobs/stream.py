"""The :class:`StreamActor`: runs one job's upstream stream and stores its deltas.

Each delta gets the next ``seq`` and goes through a bounded channel to a
writer task, which stores deltas in batches bounded by ``flush_interval`` and
``flush_max_deltas`` and then tells the registry. Deltas reach the store
before the registry hears of them, so a follower that replays the store up to
the registry's ``last_seq`` and then listens live sees each delta exactly once.

Stopping the actor (abort, timeout, shutdown) cancels the upstream call, which
closes the HTTP response, and ``on_stop`` stores the deltas not yet written.
"""

from __future__ import annotations

import contextlib

import structlog
import trio

from actors.dependencies import ServiceDependencies
from actors.messages import DeltasStored, StreamFailed, StreamFinished, StreamOpened
from actors.model import Delta
from actors.upstream import (
    StreamOpened as UpstreamOpened,
)
from actors.upstream import (
    TextDelta,
    UpstreamError,
    UpstreamEvent,
    UpstreamRequest,
)
from runtime import Actor, ActorCrashed, ActorRef, ActorStopped, ExitReason, MailboxFull

__all__ = ["StreamActor"]

log = structlog.get_logger("troupe.stream")

_REPORT_ATTEMPTS = 3


class StreamActor(Actor):
    def __init__(
        self,
        deps: ServiceDependencies,
        job_id: str,
        request: UpstreamRequest,
        registry: ActorRef,
    ) -> None:
        self._deps = deps
        self._job_id = job_id
        self._request = request
        self._registry = registry
        self._seq = 0
        self._generation_id: str | None = None
        # Deltas taken from the channel but not yet confirmed stored.
        self._unflushed: list[Delta] = []
        self._deltas_in, self._deltas_out = trio.open_memory_channel[Delta](
            deps.config.flush_max_deltas * 4
        )
        self._written = trio.Event()
        self._requested_at = 0.0

    async def on_start(self) -> None:
        self._store = await self._deps.stores.get()
        self.context.start_task(self._write_deltas)
        self.context.start_task(self._stream)

    async def on_stop(self, reason: ExitReason) -> None:
        while True:
            try:
                self._unflushed.append(self._deltas_out.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        if self._unflushed:
            deltas = tuple(self._unflushed)
            await self._store.append_deltas(self._job_id, deltas)
            self._unflushed.clear()
            # If the registry cannot take it now, it reads the store when it needs to.
            with contextlib.suppress(MailboxFull, ActorStopped):
                self._registry.tell_nowait(DeltasStored(self._job_id, deltas))

    async def _stream(self) -> None:
        final: StreamFinished | StreamFailed
        self._requested_at = trio.current_time()
        try:
            result = await self._deps.upstream.stream(self._request, self._on_event)
        except UpstreamError as error:
            log.info("upstream failed", job_id=self._job_id, code=error.code)
            self._deps.metrics.upstream_errors.labels(error.code).inc()
            final = StreamFailed(self._job_id, str(error))
        else:
            final = StreamFinished(
                self._job_id,
                result.finish_reason,
                result.usage,
                result.generation_id or self._generation_id,
            )
        self._deltas_in.close()
        await self._written.wait()
        await self._report(final)
        self.context.stop()

    async def _report(self, final: StreamFinished | StreamFailed) -> None:
        """Hand the outcome to the registry, again if the registry crashed on it.

        After its restart the registry has the job from the store, still
        running; a report for a job that is no longer running changes nothing.
        """
        for _attempt in range(_REPORT_ATTEMPTS):
            try:
                await self._registry.ask(final, timeout=None)
                return
            except ActorCrashed:
                log.warning("the registry crashed on a final report", job_id=self._job_id)
            except ActorStopped:
                return
        log.error("the registry never took the final report", job_id=self._job_id)

    async def _on_event(self, event: UpstreamEvent) -> None:
        if isinstance(event, TextDelta):
            if event.content or event.reasoning:
                if self._seq == 0:
                    self._deps.metrics.upstream_first_token.observe(
                        trio.current_time() - self._requested_at
                    )
                self._seq += 1
                await self._deltas_in.send(
                    Delta(self._job_id, self._seq, event.content, event.reasoning)
                )
        elif isinstance(event, UpstreamOpened):
            if self._generation_id is None or event.generation_id:
                self._generation_id = event.generation_id
            await self._registry.tell(StreamOpened(self._job_id, event.generation_id))

    async def _write_deltas(self) -> None:
        config = self._deps.config
        while True:
            try:
                self._unflushed.append(await self._deltas_out.receive())
            except trio.EndOfChannel:
                break
            with trio.move_on_after(config.flush_interval):
                while len(self._unflushed) < config.flush_max_deltas:
                    try:
                        self._unflushed.append(await self._deltas_out.receive())
                    except trio.EndOfChannel:
                        break
            await self._flush()
        self._written.set()

    async def _flush(self) -> None:
        deltas = tuple(self._unflushed)
        await self._store.append_deltas(self._job_id, deltas)
        self._unflushed.clear()
        await self._registry.tell(DeltasStored(self._job_id, deltas))
