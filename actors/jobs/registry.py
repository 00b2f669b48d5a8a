"""The :class:`JobRegistry` actor: the one authority on job lifecycle.

It decides: creation and the caps, status changes, abort, timeouts, the end
of a job, and whether to notify. It writes every status change to the store
before it answers. It does not relay tokens: each running job has a
:class:`~actors.jobs.log.JobLog`, appended by its
:class:`~actors.jobs.stream.StreamActor` (a temporary child of
``service/streams``), stored by the persister and read by followers directly.
Because one actor decides, the caps are exact and a terminal status is final:
a late completion after an abort finds no running job and changes nothing.

Its handlers never wait on another actor's slow path: stopping a stream (and
its grace time) runs in a task of its own, and the notifier gets one second
to decide before the retries move to a task.
"""

from __future__ import annotations

import contextlib
import functools
from datetime import timedelta
from typing import Any

import attrs
import structlog
import trio

from actors.api import ChatRequest, StatusEvent
from actors.dependencies import NOTIFIER, PERSISTER, STREAMS, ServiceDependencies
from actors.errors import ForegroundBusy, ServerBusy, ServiceError, TooManyJobs
from actors.jobs.log import JobLog
from actors.jobs.passthrough import Passthrough
from actors.jobs.stream import StreamActor
from actors.messages import (
    AbortJob,
    BeginDrain,
    CreateJob,
    FollowJob,
    ForegroundStarted,
    GetLog,
    InterruptAll,
    JobFinished,
    JobPolled,
    StreamFailed,
    StreamFinished,
    StreamOpened,
    Subscription,
    Sweep,
    SweepResult,
    TrackLog,
)
from actors.model import Job, JobStatus, Owner, Usage
from actors.stores import Store
from actors.upstream import UpstreamRequest
from runtime import (
    Actor,
    ActorCrashed,
    ActorRef,
    ActorStopped,
    AskTimeout,
    ChildSpec,
    ExitReason,
    Restart,
    SupervisorRef,
    Terminated,
)

__all__ = ["JobRegistry"]

log = structlog.get_logger("troupe.registry")

_NOTIFY_ATTEMPTS = 3
# How long a handler waits for the notifier before handing the retries to a task.
_NOTIFY_WAIT = 1.0


@attrs.frozen
class _CheckOrphans:
    """To itself, after a restart: fail the running jobs whose stream is gone."""


@attrs.define
class _Running:
    """A running job as the registry tracks it (private to the registry).

    ``job`` has every field up to date but the content and the delta counts,
    which live in ``log`` and the store.
    """

    job: Job
    log: JobLog
    stream: ActorRef | None = None
    # When its owner last polled it, on trio's clock.
    polled_at: float | None = None


class JobRegistry(Actor):
    def __init__(self, deps: ServiceDependencies) -> None:
        self._deps = deps
        self._config = deps.config
        self._running: dict[str, _Running] = {}
        self._draining = False

    async def on_start(self) -> None:
        self._store: Store = await self._deps.stores.get()
        orphans = []
        for job in await self._store.list_jobs_by_status([JobStatus.QUEUED, JobStatus.STREAMING]):
            stream = self.context.system.lookup(f"{STREAMS}/{job.id}")
            job_log: JobLog | None = None
            if stream is not None:
                try:
                    job_log = await stream.ask(GetLog(), timeout=5.0)
                except (ActorStopped, AskTimeout, ActorCrashed):
                    job_log = None
            if stream is not None and job_log is not None:
                self._running[job.id] = _Running(job, job_log, stream)
                self.context.watch(stream)
            else:
                running = self._running[job.id] = _Running(job, self._new_log(job))
                orphans.append(running)
        if self.context.restarts == 0:
            # A previous process left these running: their streams are gone.
            for running in orphans:
                await self._finish(running, JobStatus.ERROR, error="interrupted: server restarted")
            if orphans:
                log.warning("recovered interrupted jobs", count=len(orphans))
        elif orphans:
            # This actor crashed; a stream that ended meanwhile left its last
            # report in our mailbox, ahead of this check.
            self.context.start_task(self.context.self.tell, _CheckOrphans())

    def _new_log(self, job: Job) -> JobLog:
        return JobLog(job.id, persisted_seq=job.last_seq, tail_size=self._config.follower_buffer)

    async def handle(self, message: Any) -> Any:
        match message:
            case StreamOpened(job_id, generation_id):
                await self._on_opened(job_id, generation_id)
            case StreamFinished(job_id, finish_reason, usage, generation_id, tool_calls, images):
                running = self._running.get(job_id)
                if running is not None:
                    self._release_stream(running)
                    await self._finish(
                        running,
                        JobStatus.COMPLETE,
                        finish_reason=finish_reason,
                        usage=usage,
                        generation_id=generation_id,
                        tool_calls=tool_calls,
                        images=images,
                    )
            case StreamFailed(job_id, error, tool_calls, images):
                running = self._running.get(job_id)
                if running is not None:
                    self._release_stream(running)
                    await self._finish(
                        running, JobStatus.ERROR, error=error, tool_calls=tool_calls, images=images
                    )
            case Terminated(ref, reason, error):
                await self._on_stream_stopped(ref, reason, error)
            case CreateJob(owner, request, passthrough):
                return await self._create(owner, request, passthrough)
            case AbortJob(owner, job_id):
                return await self._abort(owner, job_id)
            case FollowJob(owner, job_id):
                return await self._follow(owner, job_id)
            case JobPolled(job_id):
                self._on_polled(job_id)
            case Sweep():
                return await self._sweep()
            case _CheckOrphans():
                await self._check_orphans()
            case BeginDrain():
                self._draining = True
                return len(self._running)
            case InterruptAll(reason):
                return await self._interrupt_all(reason)
            case _:
                self.unhandled(message)
        return None

    # -- the owner's requests ----------------------------------------------------

    async def _create(
        self, owner: Owner, request: ChatRequest, passthrough: Passthrough | None
    ) -> Job | ForegroundStarted | ServiceError:
        foreground = passthrough is not None
        # A refusal is returned as the reply, never raised: a handler that
        # raises crashes this actor, and the caller would get ActorCrashed.
        if self._draining:
            return ServerBusy("the service is shutting down")
        refusal = self._at_cap(owner, foreground)
        if refusal is not None:
            return refusal
        job = Job(
            id=self._deps.new_id(),
            user_id=owner.user_id,
            workspace_id=owner.workspace_id,
            thread_id=request.thread_id,
            message_id=request.message_id,
            model=request.model,
            status=JobStatus.QUEUED,
            started_at=self._deps.clock.now(),
            foreground=foreground,
        )
        await self._store.create_job(job)
        job_log = self._new_log(job)
        running = self._running[job.id] = _Running(job, job_log)
        self._deps.metrics.jobs_started.inc()
        self._deps.metrics.jobs_running.set(len(self._running))
        upstream_request = UpstreamRequest(
            model=request.model,
            messages=request.messages,
            params=request.params,
            api_key=request.api_key,
            passthrough=foreground,
        )
        spec = ChildSpec(
            job.id,
            functools.partial(
                StreamActor, self._deps, job_log, upstream_request, self.context.self, passthrough
            ),
            restart=Restart.TEMPORARY,
        )
        persister = self.context.system.lookup(PERSISTER)
        if persister is None:
            await self._finish(running, JobStatus.ERROR, error="could not start: no persister")
            return ServerBusy("the service is restarting; try again")
        # Tracked first: the stream's first delta must find the persister ready.
        persister.tell_nowait(TrackLog(job_log))
        try:
            running.stream = await self._streams().start_child(spec)
        except Exception as error:
            await self._finish(running, JobStatus.ERROR, error=f"could not start: {error}")
            raise
        self.context.watch(running.stream)
        return job if passthrough is None else ForegroundStarted(job, passthrough)

    def _at_cap(self, owner: Owner, foreground: bool) -> ServiceError | None:
        """The refusal of a new job at its caps, or None: a foreground job counts
        against the foreground cap only, a background job against the others only."""
        jobs = [r.job for r in self._running.values() if r.job.foreground == foreground]
        if foreground:
            if len(jobs) >= self._config.max_foreground_streams:
                return ForegroundBusy(
                    f"{self._config.max_foreground_streams} foreground streams are open, "
                    "the most this server serves"
                )
            return None
        if len(jobs) >= self._config.max_concurrent_jobs:
            return ServerBusy(
                f"{self._config.max_concurrent_jobs} jobs are running, the most this server runs"
            )
        # Per user, across workspaces: switching workspace does not lift the cap.
        mine = sum(1 for job in jobs if job.user_id == owner.user_id)
        if mine >= self._config.max_jobs_per_user:
            return TooManyJobs(
                f"you already run {mine} jobs, the most allowed per user; "
                "wait for one to finish or abort one"
            )
        return None

    async def _abort(self, owner: Owner, job_id: str) -> bool:
        running = self._running.get(job_id)
        if running is None or running.job.owner != owner:
            return False
        await self._finish(running, JobStatus.ABORTED)
        return True

    async def _follow(self, owner: Owner, job_id: str) -> Subscription | None:
        running = self._running.get(job_id)
        if running is None:
            job = await self._store.get_job(job_id)
            if job is None or job.owner != owner:
                return None
            return Subscription(job, None)
        if running.job.owner != owner:
            return None
        job = await self._store.get_job(job_id)
        if job is None:
            return None
        return Subscription(job, running.log)

    def _on_polled(self, job_id: str) -> None:
        running = self._running.get(job_id)
        if running is not None:
            running.polled_at = trio.current_time()

    def _watched(self, running: _Running) -> bool:
        """Whether someone watches the job: a live follower, or its owner's poll
        less than ``watch_window`` seconds ago."""
        if running.log.watchers > 0:
            return True
        polled_at = running.polled_at
        return polled_at is not None and trio.current_time() - polled_at < self._config.watch_window

    # -- reports from the streams ----------------------------------------------

    async def _on_opened(self, job_id: str, generation_id: str | None) -> None:
        running = self._running.get(job_id)
        if running is None:
            return
        job = attrs.evolve(
            running.job,
            status=JobStatus.STREAMING,
            generation_id=generation_id or running.job.generation_id,
        )
        running.job = job
        await self._store.update_job(job)

    async def _on_stream_stopped(
        self, ref: ActorRef, reason: ExitReason, error: BaseException | None
    ) -> None:
        job_id = ref.path.rpartition("/")[2]
        running = self._running.get(job_id)
        if running is None or running.stream != ref:
            return
        running.stream = None
        detail = f": {type(error).__name__}: {error}" if error is not None else ""
        await self._finish(
            running, JobStatus.ERROR, error=f"stream stopped ({reason.value}){detail}"
        )

    # -- from the sweeper and the service --------------------------------------

    async def _sweep(self) -> SweepResult:
        now = self._deps.clock.now()
        timed_out = 0
        for running in list(self._running.values()):
            age = (now - running.job.started_at).total_seconds()
            if age >= self._config.job_timeout:
                await self._finish(running, JobStatus.ERROR, error="Job timed out")
                timed_out += 1
        cutoff = now - timedelta(seconds=self._config.retention)
        deleted = await self._store.delete_finished_before(cutoff)
        if timed_out or deleted:
            log.info("swept", timed_out=timed_out, deleted=len(deleted))
        return SweepResult(timed_out, len(deleted))

    async def _check_orphans(self) -> None:
        for running in [r for r in self._running.values() if r.stream is None]:
            await self._finish(running, JobStatus.ERROR, error="interrupted: stream lost")

    async def _interrupt_all(self, reason: str) -> int:
        running_jobs = list(self._running.values())
        for running in running_jobs:
            await self._finish(running, JobStatus.ERROR, error=reason)
        return len(running_jobs)

    # -- shared steps -------------------------------------------------------------

    def _streams(self) -> SupervisorRef:
        ref = self.context.system.lookup(STREAMS)
        if not isinstance(ref, SupervisorRef):
            raise ServerBusy("the stream supervisor is not running")
        return ref

    def _stop_stream_soon(self, running: _Running) -> None:
        """Stop the job's stream in a task: that cancels the upstream call, which
        closes the HTTP response; its grace time is not this handler's to wait."""
        if self._release_stream(running) is not None:
            self.context.start_task(self._stop_stream, running.job.id)

    async def _stop_stream(self, job_id: str) -> None:
        with contextlib.suppress(ActorStopped, ServerBusy):
            await self._streams().stop_child(job_id)

    def _release_stream(self, running: _Running) -> ActorRef | None:
        """Stop watching the job's stream and forget it; return it, if there was one.

        On its own, for a stream that reported its outcome and stops by itself.
        """
        stream, running.stream = running.stream, None
        if stream is not None:
            self.context.unwatch(stream)
        return stream

    async def _finish(
        self,
        running: _Running,
        status: JobStatus,
        *,
        error: str | None = None,
        finish_reason: str | None = None,
        usage: Usage | None = None,
        generation_id: str | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
        images: list[dict[str, Any]] | None = None,
    ) -> None:
        """Record a terminal status, have the notifier decide, and end the log.

        The stored job ends with every delta its log received by then; the log
        closes at the stored seq, so no follower ever sees a delta the store
        does not keep, and every follower gets all of them. ``tool_calls`` and
        ``images`` come with the stream's own report: a job ended otherwise
        (aborted, timed out, interrupted) loses what its stream had of them.
        A foreground job counts as watched (its caller saw it end), so it gets
        no notification, only its webhook job event.
        """
        del self._running[running.job.id]
        self._stop_stream_soon(running)
        job = attrs.evolve(
            running.job,
            status=status,
            error=error,
            completed_at=self._deps.clock.now(),
            finish_reason=finish_reason,
            usage=usage,
            generation_id=generation_id or running.job.generation_id,
            tool_calls=tool_calls or [],
            images=images or [],
        )
        # A stopped stream may leave deltas the persister has not taken yet:
        # store them now, after whatever it has in flight, so the job keeps
        # everything it received.
        pending = running.log.take_pending()
        if pending:
            await self._store.append_deltas(job.id, pending)
        # A foreground job's caller saw it end on its own stream.
        watched = job.foreground or self._watched(running)
        # Every terminal status: the notifier decides on a notification and
        # webhooks. Before the status is stored: whoever sees the job ended
        # finds its notification too.
        await self._notify_soon(job, watched)
        await self._store.update_job(job)
        stored = await self._store.get_job(job.id)
        last_seq = stored.last_seq if stored is not None else running.log.persisted_seq
        self._deps.metrics.jobs_finished.labels(status.value).inc()
        self._deps.metrics.jobs_running.set(len(self._running))
        running.log.close(StatusEvent(status, error, finish_reason, usage, last_seq))
        log.info("job finished", job_id=job.id, status=status.value, watched=watched)

    async def _notify_soon(self, job: Job, watched: bool) -> None:
        """Have the notifier decide now, waiting at most ``_NOTIFY_WAIT`` seconds;
        if it cannot answer by then, go on trying in a task of this actor."""
        if not await self._ask_notifier(job, watched, _NOTIFY_WAIT):
            self.context.start_task(self._notify, job, watched)

    async def _notify(self, job: Job, watched: bool) -> None:
        # The notifier stores at most one notification per job, so a retry
        # after its crash cannot notify twice.
        for _attempt in range(_NOTIFY_ATTEMPTS):
            if await self._ask_notifier(job, watched, 30.0):
                return
        log.error("job finished without a notification", job_id=job.id)

    async def _ask_notifier(self, job: Job, watched: bool, timeout: float) -> bool:
        """Tell the notifier the job ended; True once it answered, False if it
        crashed on it, did not answer within ``timeout``, or is not running."""
        notifier = self.context.system.lookup(NOTIFIER)
        if notifier is None:
            return False
        try:
            await notifier.ask(JobFinished(job, watched), timeout=timeout)
        except (ActorCrashed, AskTimeout, ActorStopped) as failure:
            log.warning("notifier did not answer", job_id=job.id, error=str(failure))
            return False
        return True
