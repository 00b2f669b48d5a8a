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
to decide before the retries move to a task. On a store of this node alone, a
job's end is stored only with the notifier's decision: a crash in between
leaves the job running in the store, for the next registry to end and notify.

On a store several nodes share (:class:`~actors.stores.protocol.ClusterStore`)
each node's registry runs its own jobs, and the store decides what must hold
across nodes: it admits a job under the caps, and the first terminal update of
a job wins (only its writer notifies). An abort of a job another node runs is
written here and published on the control channel; the node running it stops
its stream. A job whose node died is ended here when the
:class:`~actors.jobs.cluster.LeaseKeeper` finds its lease expired. On start the
registry leaves the running jobs it finds to their nodes.

When the store fails, the registry answers StoreUnavailable instead of
crashing, and a job that ends meanwhile ends at once for its followers here;
its end is stored (and notified) once the store answers again.
"""

from __future__ import annotations

import contextlib
import functools
from datetime import timedelta
from typing import Any

import attrs
import stamina
import structlog
import trio

from actors.api import ChatRequest, StatusEvent
from actors.dependencies import NOTIFIER, PERSISTER, STREAMS, ServiceDependencies
from actors.errors import ForegroundBusy, ServerBusy, ServiceError, StoreUnavailable, TooManyJobs
from actors.jobs.cluster import listen
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
    JobsLost,
    LeasedJobs,
    ReapJobs,
    StreamFailed,
    StreamFinished,
    StreamOpened,
    Subscription,
    Sweep,
    SweepResult,
    TrackLog,
)
from actors.model import Delta, Job, JobStatus, Owner, Usage
from actors.stores import Store, StoreError
from actors.stores.protocol import Admission, ClusterStore, Limits
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
# The longest wait between two tries to store the end of a job while the store fails;
# well under a lease period, so that the end is stored before the lease runs out.
_MAX_RECORD_DELAY = 1.0

# The channel an abort written on one node reaches the node running the job by.
CONTROL_CHANNEL = "control"
NODE_LOST = "interrupted: node lost"


class _NotifierSilent(Exception):
    """The notifier did not decide on a job's end in time; the end is not stored."""


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
        # Ended here, their end not stored yet (the store failed): still leased.
        self._unrecorded: set[str] = set()
        self._draining = False

    async def on_start(self) -> None:
        self._store: Store = await self._deps.stores.get()
        self._cluster = self._store if isinstance(self._store, ClusterStore) else None
        if self._cluster is None:
            await self._recover()
        else:
            await self._adopt_streams()
            self.context.start_task(listen, self._cluster, CONTROL_CHANNEL, self._on_control)

    async def _recover(self) -> None:
        """Take over the running jobs in the store: those whose stream runs (this actor
        restarted), and end the others, left by a previous process."""
        orphans = []
        for job in await self._store.list_jobs_by_status([JobStatus.QUEUED, JobStatus.STREAMING]):
            stream = self.context.system.lookup(f"{STREAMS}/{job.id}")
            job_log = None if stream is None else await self._log_of(stream)
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

    async def _adopt_streams(self) -> None:
        """On a shared store, after a restart: take over the jobs whose stream runs here.

        The store's other running jobs are other nodes'; one of ours whose stream is
        gone loses its lease, and a reaper ends it.
        """
        streams = self.context.system.lookup(STREAMS)
        if not isinstance(streams, SupervisorRef):
            return
        for stream in await streams.children(timeout=5.0):
            job_log = await self._log_of(stream)
            if job_log is None:
                continue
            job = await self._store.get_job(job_log.job_id)
            if job is None or job.status.is_terminal:
                self.context.start_task(self._stop_stream, job_log.job_id)
                continue
            self._running[job.id] = _Running(job, job_log, stream)
            self.context.watch(stream)

    async def _log_of(self, stream: ActorRef) -> JobLog | None:
        try:
            job_log: JobLog = await stream.ask(GetLog(), timeout=5.0)
        except (ActorStopped, AskTimeout, ActorCrashed):
            return None
        return job_log

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
            case InterruptAll(reason, store_down):
                return await self._interrupt_all(reason, store_down)
            case LeasedJobs():
                return [*self._running, *self._unrecorded]
            case JobsLost(job_ids):
                await self._on_lost(job_ids)
            case ReapJobs(job_ids):
                return await self._reap(job_ids)
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
        try:
            admission = await self._admit(job)
        except StoreError as error:
            log.warning("the store failed; job refused", error=str(error))
            return StoreUnavailable("the store does not answer; try again later")
        if admission is not Admission.ADMITTED:
            return self._refusal(admission)
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

    async def _admit(self, job: Job) -> Admission:
        """Store ``job`` unless that passes a cap: on a shared store, the store decides
        across every node; else this registry, from the jobs it runs. Raises StoreError."""
        if self._cluster is not None:
            limits = Limits(
                self._config.max_concurrent_jobs,
                self._config.max_jobs_per_user,
                self._config.max_foreground_streams,
            )
            return await self._cluster.admit_job(
                job, limits, self._deps.node_id, self._config.lease_period
            )
        admission = self._local_admission(job)
        if admission is Admission.ADMITTED:
            await self._store.create_job(job)
        return admission

    def _local_admission(self, job: Job) -> Admission:
        """Whether ``job`` passes the caps given the jobs running here: a foreground job
        counts against the foreground cap only, a background job against the others only."""
        jobs = [r.job for r in self._running.values() if r.job.foreground == job.foreground]
        if job.foreground:
            if len(jobs) >= self._config.max_foreground_streams:
                return Admission.FOREGROUND_CAP
            return Admission.ADMITTED
        if len(jobs) >= self._config.max_concurrent_jobs:
            return Admission.GLOBAL_CAP
        # Per user, across workspaces: switching workspace does not lift the cap.
        if sum(1 for j in jobs if j.user_id == job.user_id) >= self._config.max_jobs_per_user:
            return Admission.USER_CAP
        return Admission.ADMITTED

    def _refusal(self, admission: Admission) -> ServiceError:
        config = self._config
        match admission:
            case Admission.FOREGROUND_CAP:
                return ForegroundBusy(
                    f"{config.max_foreground_streams} foreground streams are open, "
                    "the most this server serves"
                )
            case Admission.USER_CAP:
                return TooManyJobs(
                    f"you already run {config.max_jobs_per_user} jobs, the most allowed per "
                    "user; wait for one to finish or abort one"
                )
            case _:
                return ServerBusy(
                    f"{config.max_concurrent_jobs} jobs are running, the most this server runs"
                )

    async def _abort(self, owner: Owner, job_id: str) -> bool | ServiceError:
        running = self._running.get(job_id)
        if running is not None:
            if running.job.owner != owner:
                return False
            await self._finish(running, JobStatus.ABORTED)
            return True
        if self._cluster is None:
            return False
        # Another node runs it, if anyone: the first terminal update wins, so an
        # abort racing the job's end ends it once, either way.
        try:
            job = await self._store.get_job(job_id, owner)
            if job is None or job.status.is_terminal:
                return False
            aborted = attrs.evolve(
                job, status=JobStatus.ABORTED, completed_at=self._deps.clock.now()
            )
            won, _ = await self._record_end(aborted, [], watched=True)
        except StoreError as error:
            log.warning("the store failed; abort refused", job_id=job_id, error=str(error))
            return StoreUnavailable("the store does not answer; try again later")
        if won:
            try:
                await self._cluster.publish(CONTROL_CHANNEL, job_id.encode())
            except StoreError as error:
                # Its node finds out at its next lease renewal.
                log.warning("could not publish an abort", job_id=job_id, error=str(error))
        return won

    async def _follow(self, owner: Owner, job_id: str) -> Subscription | ServiceError | None:
        running = self._running.get(job_id)
        if running is not None and running.job.owner != owner:
            return None
        try:
            job = await self._store.get_job(job_id, owner)
        except StoreError:
            return StoreUnavailable("the store does not answer; try again later")
        if job is None:
            return None
        # Without a log here, the job is terminal, or running on another node.
        return Subscription(job, None if running is None else running.log)

    def _on_polled(self, job_id: str) -> None:
        running = self._running.get(job_id)
        if running is not None:
            running.polled_at = trio.current_time()

    def _watched(self, running: _Running) -> bool:
        """Whether someone here watches the job: a live follower, or its owner's poll
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
        try:
            updated = await self._store.update_job(job)
        except StoreError as error:
            # Its end, stored once the store answers, says the rest.
            log.warning("the store failed; status not stored", job_id=job_id, error=str(error))
            return
        if not updated and self._cluster is not None:
            await self._on_lost(frozenset({job_id}))

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

    # -- from other nodes, through the store ----------------------------------------

    async def _on_control(self, message: bytes) -> None:
        """An abort was written on another node: stop the job, if it runs here."""
        job_id = message.decode()
        if job_id in self._running:
            await self.context.self.tell(JobsLost(frozenset({job_id})))

    async def _on_lost(self, job_ids: frozenset[str]) -> None:
        for job_id in job_ids:
            running = self._running.get(job_id)
            if running is None:
                continue
            try:
                stored = await self._store.get_job(job_id)
            except StoreError as error:
                # The next renewal reports it again.
                log.warning("the store failed; lost job goes on", job_id=job_id, error=str(error))
                continue
            if stored is not None and stored.status.is_terminal:
                self._end_as_stored(running, stored)
            else:
                # Its lease ran out, and no reaper ended it yet: end it as one would.
                await self._finish(running, JobStatus.ERROR, error=NODE_LOST)

    def _end_as_stored(self, running: _Running, stored: Job) -> None:
        """Stop a job another node ended: its output, status and notification are stored."""
        del self._running[stored.id]
        self._stop_stream_soon(running)
        self._deps.metrics.jobs_finished.labels(stored.status.value).inc()
        self._deps.metrics.jobs_running.set(len(self._running))
        running.log.close(StatusEvent.of(stored))
        log.info("job ended on another node", job_id=stored.id, status=stored.status.value)

    async def _reap(self, job_ids: tuple[str, ...]) -> int:
        ended = 0
        for job_id in job_ids:
            if job_id in self._running or job_id in self._unrecorded:
                continue  # ours: the next renewal tells us if its lease is lost
            try:
                job = await self._store.get_job(job_id)
                if job is None or job.status.is_terminal:
                    continue
                lost = attrs.evolve(
                    job,
                    status=JobStatus.ERROR,
                    error=NODE_LOST,
                    completed_at=self._deps.clock.now(),
                )
                # Notified even if watched: whoever watched may have watched through
                # the node that died, and lost the connection with it.
                won, _ = await self._record_end(lost, [], False, watched_elsewhere=False)
            except StoreError as error:
                log.warning("the store failed; reaping waits", error=str(error))
                break
            if won:
                ended += 1
                self._deps.metrics.jobs_finished.labels(JobStatus.ERROR.value).inc()
                log.info("job of a lost node ended", job_id=job_id)
        return ended

    # -- from the sweeper and the service --------------------------------------

    async def _sweep(self) -> SweepResult:
        now = self._deps.clock.now()
        timed_out = 0
        for running in list(self._running.values()):
            age = (now - running.job.started_at).total_seconds()
            if age >= self._config.job_timeout:
                await self._finish(running, JobStatus.ERROR, error="Job timed out")
                timed_out += 1
        deleted: list[str] = []
        # A shared store expires finished jobs by itself.
        if self._cluster is None:
            cutoff = now - timedelta(seconds=self._config.retention)
            try:
                deleted = await self._store.delete_finished_before(cutoff)
            except StoreError as error:
                log.warning("the store failed; retention waits", error=str(error))
        if timed_out or deleted:
            log.info("swept", timed_out=timed_out, deleted=len(deleted))
        return SweepResult(timed_out, len(deleted))

    async def _check_orphans(self) -> None:
        for running in [r for r in self._running.values() if r.stream is None]:
            await self._finish(running, JobStatus.ERROR, error="interrupted: stream lost")

    async def _interrupt_all(self, reason: str, store_down: bool) -> int:
        running_jobs = list(self._running.values())
        for running in running_jobs:
            await self._finish(running, JobStatus.ERROR, error=reason, store_down=store_down)
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
        store_down: bool = False,
    ) -> None:
        """End a job running here: store its end (see :meth:`_record_end`), then end
        its log with the status the store has.

        The stored job ends with every delta its log received by then; the log
        closes at the stored seq, so no follower ever sees a delta the store
        does not keep, and every follower gets all of them. ``tool_calls`` and
        ``images`` come with the stream's own report: a job ended otherwise
        (aborted, timed out, interrupted) loses what its stream had of them.
        A foreground job counts as watched (its caller saw it end), so it gets
        no notification, only its webhook job event.

        If the store fails (or ``store_down`` says it does), the log ends at once
        at the persisted seq, all its followers were sent, and a task stores the
        end, with the deltas that were not stored yet, once the store answers.
        If the notifier does not answer, a task stores the end once it has decided
        on it, and only then ends the log: should this registry stop first, the job
        is still running in the store, and the next registry ends it (and notifies).
        Meanwhile the log is abandoned, so its followers read the end from the store,
        whichever registry stores it.
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
        # A stopped stream may leave deltas the persister has not taken yet: they
        # are stored with the end, after any the persister is writing.
        running.log.seal()
        await running.log.settled()
        pending = running.log.take_pending()
        # A foreground job's caller saw it end on its own stream.
        watched = job.foreground or self._watched(running)
        final: StatusEvent | None = None
        # The log for the task to close once it has stored the end, if not now.
        later: JobLog | None = None
        if not store_down:
            try:
                _, final = await self._record_end(job, pending, watched)
            except StoreError as failure:
                log.warning(
                    "the store failed; the end is stored later", job_id=job.id, error=str(failure)
                )
            except _NotifierSilent:
                log.warning("the notifier is silent; the end is stored later", job_id=job.id)
                later = running.log
                later.abandon()
        if final is None:
            self._unrecorded.add(job.id)
            self.context.start_task(self._record_end_later, job, pending, watched, later)
            final = StatusEvent(status, error, finish_reason, usage, running.log.persisted_seq)
        self._deps.metrics.jobs_finished.labels(final.status.value).inc()
        self._deps.metrics.jobs_running.set(len(self._running))
        if later is None:
            running.log.close(final)
        # The usage counts are what an operator reads the log for (and bills by).
        log.info(
            "job finished",
            job_id=job.id,
            status=final.status.value,
            watched=watched,
            prompt_tokens=None if usage is None else usage.prompt_tokens,
            completion_tokens=None if usage is None else usage.completion_tokens,
        )

    async def _record_end(
        self, job: Job, pending: list[Delta], watched: bool, *, watched_elsewhere: bool = True
    ) -> tuple[bool, StatusEvent]:
        """Store the terminal ``job`` after its ``pending`` deltas, and have the notifier
        decide on it (``watched``: someone here watched it end).

        Returns whether this call's end is the job's, and the job's final status as
        stored. On a shared store another node may have ended the job first: that end
        stays, and this one notifies nobody; a job watched on another node counts as
        watched, unless ``watched_elsewhere`` is False. Raises StoreError if the store
        fails and, on a store of this node alone, :class:`_NotifierSilent` if the notifier
        does not answer within ``_NOTIFY_WAIT`` (the end is not stored then); calling
        again is harmless.
        """
        if pending:
            await self._store.append_deltas(job.id, pending)
        if self._cluster is None:
            # Before the status is stored: whoever sees the job ended finds its
            # notification too. And not without it: a retry left to a task would die
            # with this actor, while a job still running in the store is ended (and
            # notified) by the next registry.
            if not await self._ask_notifier(job, watched, _NOTIFY_WAIT):
                raise _NotifierSilent(job.id)
            won = await self._store.update_job(job)
            stored = await self._store.get_job(job.id)
        else:
            # Only the writer of the first terminal update notifies; an earlier try of
            # this same end (its answer lost) wrote it if the stored end is this one's.
            won = await self._store.update_job(job)
            stored = await self._store.get_job(job.id)
            won = won or (stored is not None and stored.completed_at == job.completed_at)
            if won:
                if not watched and watched_elsewhere:
                    watched = await self._cluster.is_watched(job.id)
                await self._notify_soon(job, watched)
        return won, StatusEvent.of(stored or job)

    async def _record_end_later(
        self, job: Job, pending: list[Delta], watched: bool, job_log: JobLog | None
    ) -> None:
        """:meth:`_record_end` until the store and the notifier answer, backing off; then
        the job's lease (held meanwhile) is let go, and ``job_log`` (if given) is ended
        with the stored status."""
        async for attempt in stamina.retry_context(
            on=(StoreError, _NotifierSilent),
            attempts=None,
            timeout=None,
            wait_initial=0.05,
            wait_max=_MAX_RECORD_DELAY,
            wait_jitter=0.05,
        ):
            with attempt:
                _, final = await self._record_end(job, pending, watched)
        if job_log is not None:
            job_log.close(final)
        self._unrecorded.discard(job.id)
        log.info("stored the end of a job", job_id=job.id, status=job.status.value)

    async def _notify_soon(self, job: Job, watched: bool) -> None:
        """Have the notifier decide now, waiting at most ``_NOTIFY_WAIT`` seconds;
        if it cannot answer by then, go on trying in a task of this actor.

        Raises StoreError if the notifier could not read or write the store.
        """
        if not await self._ask_notifier(job, watched, _NOTIFY_WAIT):
            self.context.start_task(self._notify, job, watched)

    async def _notify(self, job: Job, watched: bool) -> None:
        # The notifier stores at most one notification per job, so a retry
        # after its crash cannot notify twice.
        for _attempt in range(_NOTIFY_ATTEMPTS):
            with contextlib.suppress(StoreError):
                if await self._ask_notifier(job, watched, 30.0):
                    return
        log.error("job finished without a notification", job_id=job.id)

    async def _ask_notifier(self, job: Job, watched: bool, timeout: float) -> bool:
        """Tell the notifier the job ended; True once it answered, False if it
        crashed on it, did not answer within ``timeout``, or is not running.
        Raises StoreError if it answered that the store failed."""
        notifier = self.context.system.lookup(NOTIFIER)
        if notifier is None:
            return False
        try:
            reply = await notifier.ask(JobFinished(job, watched), timeout=timeout)
        except (ActorCrashed, AskTimeout, ActorStopped) as failure:
            log.warning("notifier did not answer", job_id=job.id, error=str(failure))
            return False
        if isinstance(reply, StoreUnavailable):
            raise StoreError(str(reply))
        return True
