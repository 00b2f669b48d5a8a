"""The :class:`StreamActor`: runs one job's upstream stream into the job's log.

Each delta the upstream yields is appended to the job's
:class:`~actors.jobs.log.JobLog`, which gives it the next ``seq``; the
persister stores it with every other job's deltas and then wakes the
followers. Nothing on this path waits for another actor or for the store: a
token costs an append. When the upstream is done the actor waits until its log
is stored, then reports the outcome to the registry.

Stopping the actor (abort, timeout, shutdown) cancels the upstream call, which
closes the HTTP response.

A foreground job's stream also hands the upstream's answer, its head and its
body's bytes, to the job's :class:`~actors.jobs.passthrough.Passthrough`,
waiting for room there: the caller's reading paces the upstream read. Tool
calls and images are kept beside the log and reported with the outcome.

An answer is bounded by ``max_answer_chars``: the delta that runs past it is
cut at the limit, the call is cancelled (closing the upstream response), and
the job fails "answer_too_large" with its text up to the limit.
"""

from __future__ import annotations

from typing import Any

import orjson
import structlog
import trio

from actors.dependencies import ServiceDependencies
from actors.jobs.log import JobLog
from actors.jobs.passthrough import Passthrough
from actors.messages import GetLog, StreamFailed, StreamFinished, StreamOpened
from actors.upstream import (
    ExtrasDelta,
    RawBytes,
    TextDelta,
    UpstreamError,
    UpstreamEvent,
    UpstreamRequest,
    merge_tool_calls,
)
from actors.upstream import (
    StreamOpened as UpstreamOpened,
)
from runtime import Actor, ActorCrashed, ActorRef, ActorStopped, ExitReason

__all__ = ["StreamActor"]

log = structlog.get_logger("troupe.stream")

_REPORT_ATTEMPTS = 3


class _AnswerTooLarge(Exception):
    """The answer ran past ``max_answer_chars``; raised out of the upstream call."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"answer_too_large: the answer ran past the limit of {limit:,} characters"
            " and was cut there"
        )


class StreamActor(Actor):
    """Streams one job; with a ``passthrough``, the job is a foreground one (see the
    module docs). The passthrough ends however the actor stops."""

    def __init__(
        self,
        deps: ServiceDependencies,
        job_log: JobLog,
        request: UpstreamRequest,
        registry: ActorRef,
        passthrough: Passthrough | None = None,
    ) -> None:
        self._deps = deps
        self._log = job_log
        self._job_id = job_log.job_id
        self._request = request
        self._registry = registry
        self._passthrough = passthrough
        self._generation_id: str | None = None
        # When the upstream call began, until its first token came.
        self._requested_at: float | None = None
        # Merged once, for the report: a fragment costs an append until then.
        self._tool_fragments: list[dict[str, Any]] = []
        self._images: list[dict[str, Any]] = []
        # What the answer holds so far, against the cap.
        self._answer_chars = 0
        self._max_answer_chars = deps.config.max_answer_chars

    async def on_start(self) -> None:
        self.context.start_task(self._stream)

    async def on_stop(self, reason: ExitReason) -> None:
        # Followers wait on the log; if nobody closed it, whoever ends the job may do
        # so on another log (a registry that restarted meanwhile).
        self._log.abandon()
        if self._passthrough is not None:
            self._passthrough.close()

    async def handle(self, message: Any) -> Any:
        if isinstance(message, GetLog):
            return self._log
        self.unhandled(message)

    async def _stream(self) -> None:
        final: StreamFinished | StreamFailed
        failure: UpstreamError | None = None
        self._requested_at = trio.current_time()
        try:
            result = await self._deps.upstream.stream(self._request, self._on_event)
        except UpstreamError as error:
            log.info("upstream failed", job_id=self._job_id, code=error.code)
            self._deps.metrics.upstream_errors.labels(error.code).inc()
            failure = error
            final = StreamFailed(
                self._job_id, str(error), merge_tool_calls(self._tool_fragments), self._images
            )
        except _AnswerTooLarge as error:
            log.warning(
                "answer cut at its limit", job_id=self._job_id, limit=self._max_answer_chars
            )
            self._deps.metrics.upstream_errors.labels("answer_too_large").inc()
            final = StreamFailed(
                self._job_id, str(error), merge_tool_calls(self._tool_fragments), self._images
            )
        else:
            final = StreamFinished(
                self._job_id,
                result.finish_reason,
                result.usage,
                result.generation_id or self._generation_id,
                merge_tool_calls(self._tool_fragments),
                self._images,
            )
        if self._passthrough is not None:
            # The caller's answer ends with the upstream's, not after our bookkeeping.
            self._passthrough.close(failure)
        # The outcome counts once the text it ends is stored.
        await self._log.flushed()
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
            content, reasoning = event.content, event.reasoning
            if content or reasoning:
                if self._requested_at is not None:
                    self._deps.metrics.upstream_first_token.observe(
                        trio.current_time() - self._requested_at
                    )
                    self._requested_at = None  # the first token is counted once
                self._answer_chars += len(content) + len(reasoning)
                over = self._answer_chars - self._max_answer_chars
                if over > 0:
                    content, reasoning = _fit(content, reasoning, over)
                try:
                    if content or reasoning:
                        self._log.append_nowait(content, reasoning)
                except trio.ClosedResourceError:
                    # The job ended (aborted, timed out): stop reading.
                    self.context.stop()
                    await trio.sleep_forever()
                if over > 0:
                    raise _AnswerTooLarge(self._max_answer_chars)
        elif isinstance(event, RawBytes):
            if self._passthrough is not None:
                await self._passthrough.send(event.data)
        elif isinstance(event, ExtrasDelta):
            # Not cut: a piece of JSON would not parse. Rare, so measured exactly.
            for extras in (event.tool_calls, event.images):
                if extras:
                    self._answer_chars += len(orjson.dumps(extras))
            if self._answer_chars > self._max_answer_chars:
                raise _AnswerTooLarge(self._max_answer_chars)
            self._tool_fragments += event.tool_calls
            self._images += event.images
        elif isinstance(event, UpstreamOpened):
            if self._generation_id is None or event.generation_id:
                self._generation_id = event.generation_id
            if self._passthrough is not None:
                self._passthrough.open()
            await self._registry.tell(StreamOpened(self._job_id, event.generation_id))


def _fit(content: str, reasoning: str, over: int) -> tuple[str, str]:
    """The delta's text less ``over`` characters, taken from its reasoning first, then
    from the end of its content."""
    keep = len(content) + len(reasoning) - over
    return content[:keep], reasoning[: max(0, keep - len(content))]
