"""The caps on running jobs are exact under concurrency.

Many ``start_job`` calls race (one trio task each, with random extra
checkpoints so they reach the registry in varied orders). The global cap
(``max_concurrent_jobs``) and the per-user cap (``max_jobs_per_user``, counted
per user across workspaces) must admit exactly as many as they allow and
refuse the rest with :class:`ServerBusy` / :class:`TooManyJobs`; a refusal is
an answer, not a crash of the registry. A job that ends frees its slot, and a
draining service refuses everything.

Every test runs on the mock clock (``autojump_clock``), so job lifetimes of
minutes take no real time.
"""

from __future__ import annotations

import collections
import itertools

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.api import ChatRequest
from actors.errors import ServerBusy, TooManyJobs
from actors.model import Job, JobStatus, Owner
from actors.service import Service, open_service
from tests.service.kit import HangingUpstream, MemoryConfig, OpenSimulatedService, chat, restarts

_requests = itertools.count(1)

Outcome = Job | ServerBusy | TooManyJobs


def chat_request() -> ChatRequest:
    """A request in a thread of its own."""
    n = next(_requests)
    return chat("test/model", thread_id=f"thread-{n}", message_id=f"message-{n}")


async def start_all(
    service: Service, callers: list[Owner], shuffle: list[int] | None = None
) -> list[tuple[Owner, Outcome]]:
    """Start one job per caller, all at once; return each caller's job or refusal.

    ``shuffle[i]`` extra checkpoints delay caller ``i``, to vary the order in
    which the calls reach the registry.
    """
    outcomes: list[tuple[Owner, Outcome]] = []

    async def start(owner: Owner, delay: int) -> None:
        for _ in range(delay):
            await trio.lowlevel.checkpoint()
        try:
            outcome: Outcome = await service.start_job(owner, chat_request())
        except (ServerBusy, TooManyJobs) as refused:
            outcome = refused
        outcomes.append((owner, outcome))

    async with trio.open_nursery() as nursery:
        for i, owner in enumerate(callers):
            nursery.start_soon(start, owner, shuffle[i] if shuffle else 0)
    return outcomes


def admitted(outcomes: list[tuple[Owner, Outcome]]) -> list[Job]:
    return [outcome for _, outcome in outcomes if isinstance(outcome, Job)]


def refused(outcomes: list[tuple[Owner, Outcome]], kind: type[Exception]) -> int:
    return sum(1 for _, outcome in outcomes if type(outcome) is kind)


async def running_jobs(service: Service, owners: set[Owner]) -> int:
    count = 0
    for owner in owners:
        count += len(await service.list_jobs(owner, JobStatus.QUEUED))
        count += len(await service.list_jobs(owner, JobStatus.STREAMING))
    return count


def stream_count(service: Service) -> int:
    streams = service.snapshot().find("service/streams")
    assert streams is not None
    return len(streams.children)


async def test_global_cap_admits_exactly_k_of_many_concurrent_starts(
    autojump_clock: trio.testing.MockClock, memory_config: MemoryConfig
) -> None:
    owners = [Owner(f"user-{i}", "w1") for i in range(4)]
    callers = [owners[i % 4] for i in range(16)]
    config = memory_config(max_concurrent_jobs=5, max_jobs_per_user=16)
    async with open_service(config, upstream=HangingUpstream()) as service:
        outcomes = await start_all(service, callers)

        assert len(admitted(outcomes)) == 5
        assert refused(outcomes, ServerBusy) == 11
        assert await running_jobs(service, set(owners)) == 5
        assert stream_count(service) == 5
        assert restarts(service, "service/registry") == 0, "a refusal must not crash the registry"


async def test_per_user_cap_is_exact_and_spans_workspaces(
    autojump_clock: trio.testing.MockClock, memory_config: MemoryConfig
) -> None:
    ann_w1, ann_w2, ben = Owner("ann", "w1"), Owner("ann", "w2"), Owner("ben", "w1")
    config = memory_config(max_concurrent_jobs=20, max_jobs_per_user=2)
    async with open_service(config, upstream=HangingUpstream()) as service:
        outcomes = await start_all(service, [ann_w1] * 4 + [ann_w2] * 4 + [ben] * 3)

        by_user = collections.Counter(job.user_id for job in admitted(outcomes))
        assert by_user == {"ann": 2, "ben": 2}
        assert refused(outcomes, TooManyJobs) == 7
        assert refused(outcomes, ServerBusy) == 0
        assert restarts(service, "service/registry") == 0

        # Another workspace does not lift the cap: ann is at it in both.
        for owner in (ann_w1, ann_w2):
            with pytest.raises(TooManyJobs):
                await service.start_job(owner, chat_request())
        # A third user is not held back by the others.
        job = await service.start_job(Owner("cat", "w1"), chat_request())
        assert job.status is JobStatus.QUEUED


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
async def test_caps_are_exact_under_any_arrival_order(
    data: st.DataObject,
    autojump_clock: trio.testing.MockClock,
    memory_config: MemoryConfig,
) -> None:
    cap = data.draw(st.integers(1, 6), label="max_concurrent_jobs")
    per_user = data.draw(st.integers(1, 4), label="max_jobs_per_user")
    owners = [
        Owner(user, workspace) for user in ("ann", "ben", "cat") for workspace in ("w1", "w2")
    ]
    callers = data.draw(st.lists(st.sampled_from(owners), min_size=1, max_size=14), label="calls")
    shuffle = data.draw(
        st.lists(st.integers(0, 5), min_size=len(callers), max_size=len(callers)),
        label="delays",
    )
    config = memory_config(max_concurrent_jobs=cap, max_jobs_per_user=per_user)
    async with open_service(config, upstream=HangingUpstream()) as service:
        outcomes = await start_all(service, callers, shuffle)

        calls_per_user = collections.Counter(owner.user_id for owner in callers)
        allowed = sum(min(calls, per_user) for calls in calls_per_user.values())
        jobs = admitted(outcomes)
        # Whatever the order, the registry admits until one cap or the other says no.
        assert len(jobs) == min(cap, allowed)
        admitted_per_user = collections.Counter(job.user_id for job in jobs)
        assert all(count <= per_user for count in admitted_per_user.values())
        assert refused(outcomes, ServerBusy) + refused(outcomes, TooManyJobs) + len(jobs) == len(
            callers
        )
        if len(jobs) < cap:
            assert refused(outcomes, ServerBusy) == 0
        for owner, outcome in outcomes:
            if isinstance(outcome, TooManyJobs):
                assert admitted_per_user[owner.user_id] == per_user
            if isinstance(outcome, Job):
                assert outcome.owner == owner
        assert await running_jobs(service, set(owners)) == len(jobs)
        assert stream_count(service) == len(jobs)
        assert restarts(service, "service/registry") == 0


async def test_finished_jobs_free_their_slots(
    autojump_clock: trio.testing.MockClock,
    memory_config: MemoryConfig,
    open_simulated_service: OpenSimulatedService,
) -> None:
    owners = [Owner("ann", "w1"), Owner("ben", "w1"), Owner("cat", "w2")]
    config = memory_config(max_concurrent_jobs=3, max_jobs_per_user=1)
    async with open_simulated_service(config, tokens_per_second=10.0) as service:
        first = admitted(await start_all(service, owners))
        assert len(first) == 3
        with pytest.raises(ServerBusy):
            await service.start_job(Owner("dan", "w1"), chat_request())
        with pytest.raises(ServerBusy):
            await service.start_job(owners[0], chat_request())

        # The simulated answer is well under 100 tokens: 10 s at 10 tokens/s.
        await trio.sleep(30.0)
        for job in first:
            view = await service.get_job(job.owner, job.id)
            assert view is not None and view.status is JobStatus.COMPLETE

        again = admitted(await start_all(service, owners))
        assert len(again) == 3
        assert {job.id for job in again}.isdisjoint(job.id for job in first)


async def test_aborted_and_timed_out_jobs_free_their_slots(
    autojump_clock: trio.testing.MockClock, memory_config: MemoryConfig
) -> None:
    ann, ben = Owner("ann", "w1"), Owner("ben", "w1")
    config = memory_config(
        max_concurrent_jobs=2, max_jobs_per_user=2, job_timeout=60.0, sweep_interval=1e9
    )
    upstream = HangingUpstream()
    async with open_service(config, upstream=upstream) as service:
        first = await service.start_job(ann, chat_request())
        await service.start_job(ann, chat_request())
        with pytest.raises(ServerBusy):
            await service.start_job(ben, chat_request())

        assert await service.abort_job(ann, first.id)
        # The stream is stopped right after the reply, in a task of the registry.
        await trio.testing.wait_all_tasks_blocked()
        assert upstream.cancelled == 1, "the abort reached the upstream call"
        await service.start_job(ben, chat_request())
        with pytest.raises(ServerBusy):
            await service.start_job(ben, chat_request())

        await trio.sleep(61.0)
        result = await service.sweep()
        assert result.timed_out == 2
        await trio.testing.wait_all_tasks_blocked()
        assert upstream.cancelled == 3
        assert len(admitted(await start_all(service, [ann, ann, ben, ben]))) == 2


async def test_a_draining_service_refuses_new_jobs(
    autojump_clock: trio.testing.MockClock,
    memory_config: MemoryConfig,
    open_simulated_service: OpenSimulatedService,
) -> None:
    ann, ben = Owner("ann", "w1"), Owner("ben", "w1")
    config = memory_config(max_concurrent_jobs=10, max_jobs_per_user=5)
    # About 5 s per job: they finish while the drain waits for them.
    async with open_simulated_service(config, tokens_per_second=10.0) as service:
        jobs = [await service.start_job(ann, chat_request()) for _ in range(2)]
        interrupted: list[int] = []

        async def drain() -> None:
            interrupted.append(await service.drain(timeout=600.0))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            await trio.sleep(1.0)
            # Far below both caps, and still refused: the service is going away.
            with pytest.raises(ServerBusy, match="shutting down"):
                await service.start_job(ben, chat_request())
            outcomes = await start_all(service, [ann, ben, ben])
            assert refused(outcomes, ServerBusy) == 3

        assert interrupted == [0], "the running jobs finished within the drain"
        for job in jobs:
            view = await service.get_job(ann, job.id)
            assert view is not None and view.status is JobStatus.COMPLETE
        with pytest.raises(ServerBusy):
            await service.start_job(ben, chat_request())
        assert restarts(service, "service/registry") == 0


async def test_drain_interrupts_jobs_that_outlast_it(
    autojump_clock: trio.testing.MockClock, memory_config: MemoryConfig
) -> None:
    ann = Owner("ann", "w1")
    config = memory_config(max_concurrent_jobs=3, max_jobs_per_user=3)
    async with open_service(config, upstream=HangingUpstream()) as service:
        jobs = admitted(await start_all(service, [ann] * 3))
        assert await service.drain(timeout=5.0) == 3
        for job in jobs:
            view = await service.get_job(ann, job.id)
            assert view is not None
            assert (view.status, view.error) == (JobStatus.ERROR, "interrupted: server shut down")
        with pytest.raises(ServerBusy):
            await service.start_job(ann, chat_request())
