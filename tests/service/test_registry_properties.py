"""Property test of the job registry's protocol against a plain-Python model.

Each example opens a fresh service on the memory store and on
:class:`HangingUpstream`, whose streams never produce anything by themselves.
The test then plays the stream's side itself: it appends deltas to the job's
log (and waits until the persister stored them), and it reports ``StreamOpened``,
``StreamFinished`` and ``StreamFailed``, then stops the job's stream actor as
a finished stream stops itself. The owners' side goes through the
:class:`Service` facade. A step may also crash the registry (its supervisor
restarts it, and it must pick up the running jobs from the store). After every
step the live service is compared with the model: statuses, content (the
concatenated deltas), owner scoping, the caps, one stream actor per running
job, and exactly one notification per job that ended complete or error.

Time: every example is its own ``trio.run`` on the module's
``autojump_clock`` (pytest-trio wraps hypothesis' inner test, and the test
asserts that the clock is the mock one). The fixture is function scoped, so
hypothesis hands every example the same clock and virtual time goes on from
where the previous example left it; only differences of times matter here.
The periodic sweep is pushed out of reach (``sweep_interval`` far beyond any
example), so sweeps happen exactly when a step asks for one. The model reads
"now" from the service's own wall clock, at the same virtual instant as the
registry, so it decides timeouts and expiry with the very same arithmetic.
"""

from __future__ import annotations

import collections
import contextlib
from datetime import datetime, timedelta

import attrs
import trio
import trio.testing
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from actors.api import JobView
from actors.errors import ServerBusy, TooManyJobs
from actors.messages import GetLog, StreamFailed, StreamFinished, StreamOpened
from actors.model import Delta, JobStatus, NotificationType, Owner, Usage
from actors.service import Service, open_service
from runtime import SupervisorRef
from tests.service.kit import HangingUpstream, MemoryConfig, chat

USERS = ("ann", "ben", "cat")
WORKSPACES = ("w1", "w2")
OWNERS = tuple(Owner(user, workspace) for user in USERS for workspace in WORKSPACES)

JOB_TIMEOUT = 50.0
RETENTION = 100.0
MAX_JOBS_PER_USER = 2
MIN_STEPS = 12
MAX_STEPS = 25
# The registry's supervisor allows 10 restarts a minute; stay well below.
MAX_CRASHES = 2

# Around the timeout and the retention, and past both.
DURATIONS = (160.0, 101.0, 100.0, 99.0, 75.0, 51.0, 50.0, 49.0, 25.0, 10.0, 1.0, 0.5)

# Weighted by repetition; sleeps and sweeps are frequent enough that jobs
# time out and expire in most runs.
STEP_KINDS = (
    *("create",) * 4,
    "open",
    *("append",) * 3,
    "complete",
    "fail",
    *("abort",) * 2,
    "get",
    "list",
    *("sweep",) * 2,
    *("sleep",) * 3,
    *("sleep+sweep",) * 2,
    "crash",
)

REGISTRY = "service/registry"
STREAMS = "service/streams"


@attrs.define
class ModelJob:
    id: str
    owner: Owner
    started_at: datetime
    status: JobStatus = JobStatus.QUEUED
    pieces: list[str] = attrs.field(factory=list)
    completed_at: datetime | None = None
    error: str | None = None
    finish_reason: str | None = None
    # The seq the (emulated) stream gives its next delta; it goes on counting
    # after the job ended, as a late stream would.
    next_seq: int = 1

    @property
    def running(self) -> bool:
        return not self.status.is_terminal

    @property
    def content(self) -> str:
        return "".join(self.pieces)


@attrs.define
class RegistryModel:
    max_concurrent_jobs: int
    jobs: dict[str, ModelJob] = attrs.field(factory=dict)
    expired: set[str] = attrs.field(factory=set)
    # job id -> the one notification type the job must have produced
    notified: dict[str, NotificationType] = attrs.field(factory=dict)
    crashes: int = 0

    def running(self) -> list[ModelJob]:
        return [job for job in self.jobs.values() if job.running]

    def refusal(self, owner: Owner) -> type[Exception] | None:
        running = self.running()
        if len(running) >= self.max_concurrent_jobs:
            return ServerBusy
        if sum(1 for job in running if job.owner.user_id == owner.user_id) >= MAX_JOBS_PER_USER:
            return TooManyJobs
        return None

    def finish(
        self,
        job: ModelJob,
        status: JobStatus,
        now: datetime,
        *,
        error: str | None = None,
        finish_reason: str | None = None,
    ) -> None:
        job.status = status
        job.completed_at = now
        job.error = error
        job.finish_reason = finish_reason
        if status is JobStatus.COMPLETE:
            self.notified[job.id] = NotificationType.COMPLETE
        elif status is JobStatus.ERROR:
            self.notified[job.id] = NotificationType.ERROR

    def sweep(self, now: datetime) -> tuple[int, int]:
        timed_out = 0
        for job in self.running():
            if (now - job.started_at).total_seconds() >= JOB_TIMEOUT:
                self.finish(job, JobStatus.ERROR, now, error="Job timed out")
                timed_out += 1
        cutoff = now - timedelta(seconds=RETENTION)
        gone = [
            job.id
            for job in self.jobs.values()
            if not job.running and job.completed_at is not None and job.completed_at < cutoff
        ]
        for job_id in gone:
            del self.jobs[job_id]
            self.expired.add(job_id)
        return timed_out, len(gone)


PROPERTY = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Harness:
    """The live service, the model, and the steps that drive both."""

    def __init__(self, service: Service, model: RegistryModel, data: st.DataObject) -> None:
        self.service = service
        self.model = model
        self.data = data
        registry = service.system.lookup(REGISTRY)
        streams = service.system.lookup(STREAMS)
        assert registry is not None and isinstance(streams, SupervisorRef)
        self.registry = registry
        self.streams = streams
        # A StreamActor writes to the very store the service opened.
        self.store = service._store
        self.ids: list[str] = []
        self.owners: dict[str, Owner] = {}  # every job ever created, expired ones too
        self.requests = 0

    def now(self) -> datetime:
        # The registry stamps jobs with this clock; no virtual time passes
        # between this call and the registry handling the step.
        return self.service._deps.clock.now()

    def draw_owner(self) -> Owner:
        return self.data.draw(st.sampled_from(OWNERS), label="owner")

    def draw_job_id(self) -> str:
        """A job the test has seen (running, finished or expired), or an unknown id."""
        return self.data.draw(st.sampled_from([*self.ids, "no-such-job"]), label="job")

    def draw_caller(self, job_id: str) -> Owner:
        """Often the job's owner, else anyone (another owner must be refused)."""
        owner = self.owners.get(job_id)
        if owner is not None and self.data.draw(st.booleans(), label="by the owner"):
            return owner
        return self.draw_owner()

    async def step(self, kind: str) -> None:
        match kind:
            case "create":
                await self.create()
            case "open":
                await self.opened()
            case "append":
                await self.append()
            case "complete":
                await self.complete()
            case "fail":
                await self.fail()
            case "abort":
                await self.abort()
            case "get":
                await self.get()
            case "list":
                await self.list_filtered()
            case "sweep":
                await self.sweep()
            case "sleep":
                await trio.sleep(self.data.draw(st.sampled_from(DURATIONS), label="sleep"))
            case "sleep+sweep":
                # What the periodic sweeper does, at moments the test chooses.
                await trio.sleep(self.data.draw(st.sampled_from(DURATIONS), label="sleep"))
                await self.sweep()
            case "crash":
                await self.crash()
            case _:
                raise AssertionError(kind)

    # -- the owners' side ------------------------------------------------------

    async def create(self) -> None:
        owner = self.draw_owner()
        self.requests += 1
        request = chat(
            "test/model",
            thread_id=f"thread-{self.requests}",
            message_id=f"message-{self.requests}",
        )
        expected = self.model.refusal(owner)
        try:
            job = await self.service.start_job(owner, request)
        except (ServerBusy, TooManyJobs) as refused:
            assert type(refused) is expected, f"refused with {refused!r}, model: {expected}"
            event(f"create refused: {type(refused).__name__}")
            return
        assert expected is None, f"admitted, but the model expected {expected.__name__}"
        assert job.owner == owner
        assert job.status is JobStatus.QUEUED
        assert job.started_at == self.now()
        assert (job.thread_id, job.message_id) == (request.thread_id, request.message_id)
        assert job.id not in self.ids
        self.ids.append(job.id)
        self.owners[job.id] = owner
        self.model.jobs[job.id] = ModelJob(job.id, owner, job.started_at)

    async def abort(self) -> None:
        job_id = self.draw_job_id()
        owner = self.draw_caller(job_id)
        job = self.model.jobs.get(job_id)
        expected = job is not None and job.running and job.owner == owner
        assert await self.service.abort_job(owner, job_id) is expected
        event(f"abort -> {expected}")
        if expected:
            assert job is not None
            self.model.finish(job, JobStatus.ABORTED, self.now())

    async def get(self) -> None:
        job_id = self.draw_job_id()
        owner = self.draw_caller(job_id)
        job = self.model.jobs.get(job_id)
        length = len(job.content) if job is not None else 0
        offset = self.data.draw(st.integers(-3, length + 3), label="offset")
        view = await self.service.get_job(owner, job_id, offset)
        if job is None or job.owner != owner:
            assert view is None
        else:
            assert view is not None
            check_view(view, job, offset)

    async def list_filtered(self) -> None:
        owner = self.draw_owner()
        status = self.data.draw(st.sampled_from(JobStatus), label="status")
        views = await self.service.list_jobs(owner, status)
        expected = {
            job.id
            for job in self.model.jobs.values()
            if job.owner == owner and job.status is status
        }
        assert {view.id for view in views} == expected
        assert len(views) == len(expected)

    async def sweep(self) -> None:
        expected = self.model.sweep(self.now())
        result = await self.service.sweep()
        assert (result.timed_out, result.deleted) == expected
        if result.timed_out:
            event("sweep timed jobs out")
        if result.deleted:
            event("sweep deleted expired jobs")

    # -- the stream's side -------------------------------------------------------

    async def opened(self) -> None:
        job_id = self.draw_job_id()
        await self.registry.tell(StreamOpened(job_id, f"gen-{job_id}"))
        job = self.model.jobs.get(job_id)
        if job is not None and job.running:
            job.status = JobStatus.STREAMING

    async def append(self) -> None:
        job_id = self.draw_job_id()
        pieces = self.data.draw(
            st.lists(st.text("abcxyz ", min_size=1, max_size=4), min_size=1, max_size=3),
            label="pieces",
        )
        job = self.model.jobs.get(job_id)
        first = job.next_seq if job is not None else 1
        stream = self.service.system.lookup(f"{STREAMS}/{job_id}")
        if stream is not None:
            # As a StreamActor does: append to the job's log; the persister stores it.
            job_log = await stream.ask(GetLog())
            # A finished job's log is closed (its stream may not have stopped yet).
            with contextlib.suppress(trio.ClosedResourceError):
                for piece in pieces:
                    job_log.append_nowait(piece)
            await job_log.flushed()
        else:
            # No stream: a late append straight to the store must change nothing.
            deltas = tuple(Delta(job_id, first + i, piece) for i, piece in enumerate(pieces))
            await self.store.append_deltas(job_id, deltas)
        event(f"deltas stored, job running: {job is not None and job.running}")
        if job is not None:
            job.next_seq += len(pieces)
            if job.running:
                job.pieces.extend(pieces)

    async def complete(self) -> None:
        job_id = self.draw_job_id()
        usage = Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3)
        await self.registry.tell(StreamFinished(job_id, "stop", usage, f"gen-{job_id}"))
        await self.stream_ends(job_id)
        job = self.model.jobs.get(job_id)
        event(f"complete reported, job running: {job is not None and job.running}")
        if job is not None and job.running:
            self.model.finish(job, JobStatus.COMPLETE, self.now(), finish_reason="stop")

    async def fail(self) -> None:
        job_id = self.draw_job_id()
        message = self.data.draw(st.sampled_from(["upstream 502", "stream_error: boom"]))
        await self.registry.tell(StreamFailed(job_id, message))
        await self.stream_ends(job_id)
        job = self.model.jobs.get(job_id)
        if job is not None and job.running:
            self.model.finish(job, JobStatus.ERROR, self.now(), error=message)

    async def stream_ends(self, job_id: str) -> None:
        """A stream stops itself right after its last report; do the same for ours."""
        if self.service.system.lookup(f"{STREAMS}/{job_id}") is not None:
            assert await self.streams.stop_child(job_id)

    async def crash(self) -> None:
        if self.model.crashes >= MAX_CRASHES:
            return
        # The registry does not handle this: its handler raises, it crashes,
        # and its supervisor restarts it from the store.
        await self.registry.tell(object())
        self.model.crashes += 1
        event("registry crashed and restarted")

    # -- after every step ----------------------------------------------------------

    async def check(self) -> None:
        model = self.model
        running = model.running()
        assert len(running) <= model.max_concurrent_jobs
        per_user = collections.Counter(job.owner.user_id for job in running)
        assert all(count <= MAX_JOBS_PER_USER for count in per_user.values())

        live_running = 0
        for owner in OWNERS:
            views = await self.service.list_jobs(owner)
            mine = {job.id: job for job in model.jobs.values() if job.owner == owner}
            assert [view.id for view in views if view.id in mine] == [view.id for view in views]
            assert {view.id for view in views} == set(mine)
            starts = [view.started_at for view in views]
            assert starts == sorted(starts, reverse=True), "newest first"
            for view in views:
                check_view(view, mine[view.id], len(mine[view.id].content))
                live_running += not view.status.is_terminal
        assert live_running == len(running)

        for job in model.jobs.values():
            fetched = await self.service.get_job(job.owner, job.id)
            assert fetched is not None
            check_view(fetched, job, 0)
            stored = await self.store.get_deltas(job.id)
            assert [d.seq for d in stored] == list(range(1, len(job.pieces) + 1))
            assert [d.content for d in stored] == job.pieces
            for stranger in strangers(job.owner):
                assert await self.service.get_job(stranger, job.id) is None
        for job_id in model.expired:
            assert await self.service.get_job(self.owners[job_id], job_id) is None

        # Every running job has its stream; a finished one has none.
        streams = self.service.snapshot().find(STREAMS)
        assert streams is not None
        assert sorted(child.path.rpartition("/")[2] for child in streams.children) == sorted(
            job.id for job in running
        )

        registry = self.service.snapshot().find(REGISTRY)
        assert registry is not None and registry.restarts == model.crashes

        for owner in OWNERS:
            notifications = await self.service.list_notifications(owner, limit=10_000)
            seen = collections.Counter(n.job_id for n in notifications)
            assert all(count == 1 for count in seen.values()), "one notification per job"
            expected = {
                job_id: kind
                for job_id, kind in model.notified.items()
                if self.owners[job_id] == owner
            }
            assert {n.job_id: n.type for n in notifications} == expected
            for n in notifications:
                assert (n.user_id, n.workspace_id) == (owner.user_id, owner.workspace_id)
                notified_job = model.jobs.get(n.job_id)
                if notified_job is not None and n.type is NotificationType.ERROR:
                    assert n.body == f"Failed: {notified_job.error}"


def strangers(owner: Owner) -> list[Owner]:
    """The same user in another workspace, and another user in the same one."""
    other_workspace = next(w for w in WORKSPACES if w != owner.workspace_id)
    other_user = next(u for u in USERS if u != owner.user_id)
    return [Owner(owner.user_id, other_workspace), Owner(other_user, owner.workspace_id)]


def check_view(view: JobView, job: ModelJob, offset: int) -> None:
    content = job.content
    start = max(0, min(offset, len(content)))
    assert view.id == job.id
    assert view.status is job.status
    assert view.offset == start
    assert view.content_length == len(content)
    assert view.content == content[start:]
    assert view.chunks_received == len(job.pieces)
    assert view.last_seq == len(job.pieces)
    assert view.started_at == job.started_at
    assert view.completed_at == job.completed_at
    assert view.error == job.error
    assert view.finish_reason == job.finish_reason


@PROPERTY
@given(data=st.data())
async def test_registry_matches_model(
    data: st.DataObject,
    autojump_clock: trio.testing.MockClock,
    memory_config: MemoryConfig,
) -> None:
    assert trio.lowlevel.current_clock() is autojump_clock
    cap = data.draw(st.sampled_from([3, 4]), label="max_concurrent_jobs")
    config = memory_config(
        max_concurrent_jobs=cap,
        max_jobs_per_user=MAX_JOBS_PER_USER,
        job_timeout=JOB_TIMEOUT,
        retention=RETENTION,
        sweep_interval=1e9,
    )
    async with open_service(config, upstream=HangingUpstream()) as service:
        harness = Harness(service, RegistryModel(cap), data)
        for _ in range(data.draw(st.integers(MIN_STEPS, MAX_STEPS), label="steps")):
            await harness.step(data.draw(st.sampled_from(STEP_KINDS), label="step"))
            # Reads go straight to the store: let the actors act on the step first.
            await trio.testing.wait_all_tasks_blocked()
            await harness.check()
