"""The :class:`JobRegistry` actor: the one authority on job state.

It holds the running jobs in memory and writes every status change to the
store before it answers. Each running job has a
:class:`~actors.jobs.stream.StreamActor` (a temporary child of ``service/streams``)
that talks to the upstream and writes the job's deltas; the registry writes
everything else. Because one actor decides, the caps are exact and a terminal
status is final: a late completion after an abort finds no running job and
changes nothing.
"""

from __future__ import annotations

import contextlib
import functools
from datetime import timedelta
from typing import Any

import attrs
import structlog
import trio

from actors.api import ChatRequest, DeltaEvent, JobEvent, StatusEvent
from actors.dependencies import NOTIFIER, STREAMS, ServiceDependencies
from actors.errors import ServerBusy, ServiceError, TooManyJobs
from actors.jobs.stream import StreamActor
from actors.messages import (
    AbortJob,
    BeginDrain,
    CreateJob,
    DeltasStored,
    FollowJob,
    GetJob,
    InterruptAll,
    JobFinished,
    ListJobs,
    StreamFailed,
    StreamFinished,
    StreamOpened,
    Subscription,
    Sweep,
    SweepResult,
)
from actors.model import Delta, Job, JobStatus, Owner, Usage
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


@attrs.frozen
class _CheckOrphans:
    """To itself, after a restart: fail the running jobs whose stream is gone."""


@attrs.define
class _Running:
    """A running job as the registry tracks it (private to the registry).

    ``job`` has every field up to date but ``content`` and ``reasoning``:
    deltas are collected in ``_pieces`` and joined only when someone reads the
    job (:meth:`current`), so a long answer is not copied once per batch.
    """

    job: Job
    stream: ActorRef | None = None
    followers: list[trio.MemorySendChannel[JobEvent]] = attrs.field(factory=list)
    _pieces: list[Delta] = attrs.field(factory=list)

    def add(self, deltas: list[Delta]) -> None:
        self._pieces.extend(deltas)
        self.job = attrs.evolve(
            self.job,
            chunks_received=self.job.chunks_received + len(deltas),
            last_seq=deltas[-1].seq,
        )

    def current(self) -> Job:
        """The job with all its content so far."""
        if self._pieces:
            pieces, self._pieces = self._pieces, []
            self.job = attrs.evolve(
                self.job,
                content=self.job.content + "".join(d.content for d in pieces),
                reasoning=self.job.reasoning + "".join(d.reasoning for d in pieces),
            )
        return self.job


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
            running = self._running[job.id] = _Running(job)
            stream = self.context.system.lookup(f"{STREAMS}/{job.id}")
            if stream is None:
                orphans.append(running)
            else:
                running.stream = stream
                self.context.watch(stream)
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

    async def on_stop(self, reason: ExitReason) -> None:
        # Followers resubscribe on their own when their channel ends early.
        for running in self._running.values():
            for follower in running.followers:
                follower.close()

    async def handle(self, message: Any) -> Any:
        match message:
            case DeltasStored():
                self._on_deltas(message)
            case StreamOpened(job_id, generation_id):
                await self._on_opened(job_id, generation_id)
            case StreamFinished(job_id, finish_reason, usage, generation_id):
                running = self._running.get(job_id)
                if running is not None:
                    await self._finish(
                        running,
                        JobStatus.COMPLETE,
                        finish_reason=finish_reason,
                        usage=usage,
                        generation_id=generation_id,
                    )
            case StreamFailed(job_id, error):
                running = self._running.get(job_id)
                if running is not None:
                    await self._finish(running, JobStatus.ERROR, error=error)
            case Terminated(ref, reason, error):
                await self._on_stream_stopped(ref, reason, error)
            case GetJob(owner, job_id):
                return await self._get(owner, job_id)
            case CreateJob(owner, request):
                return await self._create(owner, request)
            case AbortJob(owner, job_id):
                return await self._abort(owner, job_id)
            case ListJobs(owner, status):
                return await self._store.list_jobs(owner, status)
            case FollowJob(owner, job_id):
                return await self._follow(owner, job_id)
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

    async def _create(self, owner: Owner, request: ChatRequest) -> Job | ServiceError:
        # A refusal is returned as the reply, never raised: a handler that
        # raises crashes this actor, and the caller would get ActorCrashed.
        if self._draining:
            return ServerBusy("the service is shutting down")
        if len(self._running) >= self._config.max_concurrent_jobs:
            return ServerBusy(
                f"{self._config.max_concurrent_jobs} jobs are running, the most this server runs"
            )
        # Per user, across workspaces: switching workspace does not lift the cap.
        mine = sum(1 for r in self._running.values() if r.job.user_id == owner.user_id)
        if mine >= self._config.max_jobs_per_user:
            return TooManyJobs(
                f"you already run {mine} jobs, the most allowed per user; "
                "wait for one to finish or abort one"
            )
        job = Job(
            id=self._deps.new_id(),
            user_id=owner.user_id,
            workspace_id=owner.workspace_id,
            thread_id=request.thread_id,
            message_id=request.message_id,
            model=request.model,
            status=JobStatus.QUEUED,
            started_at=self._deps.clock.now(),
        )
        await self._store.create_job(job)
        running = self._running[job.id] = _Running(job)
        self._deps.metrics.jobs_started.inc()
        self._deps.metrics.jobs_running.set(len(self._running))
        upstream_request = UpstreamRequest(
            model=request.model,
            messages=request.messages,
            params=request.params,
            api_key=request.api_key,
        )
        spec = ChildSpec(
            job.id,
            functools.partial(StreamActor, self._deps, job.id, upstream_request, self.context.self),
            restart=Restart.TEMPORARY,
        )
        try:
            running.stream = await self._streams().start_child(spec)
        except Exception as error:
            await self._finish(running, JobStatus.ERROR, error=f"could not start: {error}")
            raise
        self.context.watch(running.stream)
        return job

    async def _get(self, owner: Owner, job_id: str) -> Job | None:
        running = self._running.get(job_id)
        job = running.current() if running is not None else await self._store.get_job(job_id)
        if job is None or job.owner != owner:
            return None
        return job

    async def _abort(self, owner: Owner, job_id: str) -> bool:
        running = self._running.get(job_id)
        if running is None or running.job.owner != owner:
            return False
        await self._stop_stream(running)
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
        send, receive = trio.open_memory_channel[JobEvent](self._config.follower_buffer)
        running.followers.append(send)
        return Subscription(running.current(), receive)

    # -- reports from the streams ----------------------------------------------

    def _on_deltas(self, message: DeltasStored) -> None:
        running = self._running.get(message.job_id)
        if running is None:
            return
        job = running.job
        # After a restart of this actor the store already has some of these.
        fresh = [d for d in message.deltas if d.seq > job.last_seq]
        if not fresh:
            return
        running.add(fresh)
        if running.followers:
            events = [DeltaEvent(d.seq, d.content, d.reasoning) for d in fresh]
            running.followers = [f for f in running.followers if _offer(f, events)]

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
                await self._stop_stream(running)
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
            await self._stop_stream(running)
            await self._finish(running, JobStatus.ERROR, error=reason)
        return len(running_jobs)

    # -- shared steps -------------------------------------------------------------

    def _streams(self) -> SupervisorRef:
        ref = self.context.system.lookup(STREAMS)
        if not isinstance(ref, SupervisorRef):
            raise ServerBusy("the stream supervisor is not running")
        return ref

    async def _stop_stream(self, running: _Running) -> None:
        """Stop the job's stream, which closes the upstream response and stores its last deltas."""
        stream, running.stream = running.stream, None
        if stream is not None:
            self.context.unwatch(stream)
            with contextlib.suppress(ActorStopped, ServerBusy):
                await self._streams().stop_child(running.job.id)
            # The stream's last deltas are in the store, but their report waits
            # behind this handler and would find the job finished: take them
            # now, so followers get them before the status and last_seq is right.
            last = await self._store.get_deltas(running.job.id, running.job.last_seq)
            if last:
                self._on_deltas(DeltasStored(running.job.id, tuple(last)))

    async def _finish(
        self,
        running: _Running,
        status: JobStatus,
        *,
        error: str | None = None,
        finish_reason: str | None = None,
        usage: Usage | None = None,
        generation_id: str | None = None,
    ) -> None:
        """Record a terminal status, end the followers, and have the notifier decide."""
        job = attrs.evolve(
            running.current(),
            status=status,
            error=error,
            completed_at=self._deps.clock.now(),
            finish_reason=finish_reason,
            usage=usage,
            generation_id=generation_id or running.job.generation_id,
        )
        del self._running[job.id]
        await self._store.update_job(job)
        self._deps.metrics.jobs_finished.labels(status.value).inc()
        self._deps.metrics.jobs_running.set(len(self._running))
        final = StatusEvent(status, error, finish_reason, usage, job.last_seq)
        watched = False
        for follower in running.followers:
            # Offer to every follower: short-circuiting would leave the rest without the status.
            delivered = _offer(follower, [final])
            watched = watched or delivered
            follower.close()
        if running.stream is not None:
            self.context.unwatch(running.stream)
        log.info("job finished", job_id=job.id, status=status.value, watched=watched)
        if status in (JobStatus.COMPLETE, JobStatus.ERROR):
            await self._notify(job, watched)

    async def _notify(self, job: Job, watched: bool) -> None:
        notifier = self.context.system.lookup(NOTIFIER)
        # The notifier stores at most one notification per job, so a retry
        # after its crash cannot notify twice.
        for _attempt in range(_NOTIFY_ATTEMPTS):
            if notifier is None:
                break
            try:
                await notifier.ask(JobFinished(job, watched), timeout=30.0)
                return
            except (ActorCrashed, AskTimeout) as failure:
                log.warning("notifier failed", job_id=job.id, error=str(failure))
            except ActorStopped:
                break
        log.error("job finished without a notification", job_id=job.id)


def _offer(follower: trio.MemorySendChannel[JobEvent], events: list[Any]) -> bool:
    """Give ``events`` to a follower; False if it is gone or too far behind (then it is closed)."""
    try:
        for event in events:
            follower.send_nowait(event)
    except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
        follower.close()
        return False
    return True
