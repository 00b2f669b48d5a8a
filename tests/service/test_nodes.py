"""Two nodes on one shared store (the in-process fake, on the mock clock): caps, following,
abort, leases, watching, notifications and outages across nodes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from actors import JobStatus, Notification, Service, ServiceConfig, open_service
from actors.errors import ServerBusy, StoreUnavailable, TooManyJobs
from actors.jobs.following import NotificationFollower
from actors.model import NotificationType
from actors.upstream import SimulatedUpstream, Upstream
from runtime import SupervisorRef
from tests.service.cluster_fake import FakeCluster
from tests.service.kit import (
    ALICE,
    BOB,
    HangingUpstream,
    chat,
    config,
    reached_seq,
    restarts,
    wait_until,
)
from tests.service.test_follow import collect, split

WAIT = 60.0
LEASE = 3.0


def node_config(tmp_path: Path, node_id: str, **overrides: Any) -> ServiceConfig:
    settings: dict[str, Any] = {
        "node_id": node_id,
        "lease_period": LEASE,
        "drain_timeout": 0.0,
        **overrides,
    }
    return config(tmp_path / node_id, **settings)


@asynccontextmanager
async def open_node(
    cluster: FakeCluster, tmp_path: Path, node_id: str, upstream: Upstream, **overrides: Any
) -> AsyncIterator[Service]:
    store = cluster.node()
    try:
        async with open_service(
            node_config(tmp_path, node_id, **overrides), upstream=upstream, store=store
        ) as service:
            yield service
    finally:
        await store.aclose()


async def stop_leases(service: Service) -> None:
    """Make a node look dead to the others: it renews no lease from now on."""
    supervisor = service.system.lookup("service")
    assert isinstance(supervisor, SupervisorRef)
    await supervisor.stop_child("leases")


async def test_a_job_started_on_one_node_is_followed_and_resumed_on_another(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    cluster = FakeCluster()
    async with (
        open_node(cluster, tmp_path, "a", SimulatedUpstream(10)) as a,
        open_node(cluster, tmp_path, "b", SimulatedUpstream(10)) as b,
    ):
        job = await a.start_job(ALICE, chat())
        await wait_until(b, job.id, reached_seq(5), timeout=WAIT)
        async with trio.open_nursery() as nursery:
            results = {}

            async def follow(after: int) -> None:
                results[after] = await collect(b.follow(ALICE, job.id, after_seq=after))

            for after in (0, 3):
                nursery.start_soon(follow, after)
        final = await b.get_job(ALICE, job.id)
        notes = await a.list_notifications(ALICE)

    assert final is not None and final.status is JobStatus.COMPLETE
    whole, resumed = results[0], results[3]
    assert whole.seqs == list(range(1, final.last_seq + 1))
    assert whole.text == final.content
    assert resumed.seqs == list(range(4, final.last_seq + 1))
    assert whole.status.status is resumed.status.status is JobStatus.COMPLETE
    assert whole.status.last_seq == final.last_seq
    # B's followers watched it to the end: nobody is notified.
    assert notes == []


async def test_caps_hold_across_nodes(autojump_clock: MockClock, tmp_path: Path) -> None:
    cluster = FakeCluster()
    caps = {"max_concurrent_jobs": 3, "max_jobs_per_user": 2}
    upstream = HangingUpstream("x")
    async with (
        open_node(cluster, tmp_path, "a", upstream, **caps) as a,
        open_node(cluster, tmp_path, "b", upstream, **caps) as b,
    ):
        outcomes: list[str] = []

        async def start(node: Service, owner: Any) -> None:
            try:
                await node.start_job(owner, chat("hang"))
            except TooManyJobs:
                outcomes.append("user cap")
            except ServerBusy:
                outcomes.append("global cap")
            else:
                outcomes.append("started")

        async with trio.open_nursery() as nursery:
            for owner in (ALICE, ALICE, ALICE, BOB, BOB, BOB):
                for node in (a, b):
                    nursery.start_soon(start, node, owner)
        running = await cluster.memory.count_active()

    assert outcomes.count("started") == running == 3
    assert outcomes.count("user cap") + outcomes.count("global cap") == 9


async def test_an_abort_from_another_node_closes_the_upstream_on_the_owning_node(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    cluster = FakeCluster()
    upstream = HangingUpstream("partial")
    async with (
        open_node(cluster, tmp_path, "a", upstream) as a,
        open_node(cluster, tmp_path, "b", SimulatedUpstream(10)) as b,
    ):
        job = await a.start_job(ALICE, chat("hang"))
        await wait_until(b, job.id, reached_seq(1), timeout=WAIT)
        with trio.fail_after(WAIT):
            followed_on_a = a.follow(ALICE, job.id)
            assert await b.abort_job(ALICE, job.id) is True
            aborted_at = trio.current_time()
            assert await b.abort_job(ALICE, job.id) is False  # idempotent
            assert await a.abort_job(ALICE, job.id) is False
            events = await collect(followed_on_a)
            # Through the control channel, not A's next lease renewal.
            assert trio.current_time() - aborted_at < LEASE / 6
        await trio.sleep(1)  # the stream stops in a task of A's registry
        stored = await a.get_job(ALICE, job.id)
        notes = await b.list_notifications(ALICE)

    assert stored is not None and stored.status is JobStatus.ABORTED
    assert stored.content == "partial"
    assert events.text == "partial"
    assert events.status.status is JobStatus.ABORTED
    assert upstream.cancelled == 1
    assert notes == []


@pytest.mark.parametrize("abort_at", [0.5, 0.9, 1.0, 1.05, 1.1, 1.5])
async def test_an_abort_racing_completion_ends_the_job_once(
    autojump_clock: MockClock, tmp_path: Path, abort_at: float
) -> None:
    cluster = FakeCluster()
    # 47 tokens at 47 per second: the job ends about a second after it starts.
    async with (
        open_node(cluster, tmp_path, "a", SimulatedUpstream(47)) as a,
        open_node(cluster, tmp_path, "b", SimulatedUpstream(47)) as b,
    ):
        job = await a.start_job(ALICE, chat())
        await trio.sleep(abort_at)
        aborted = await b.abort_job(ALICE, job.id)
        followed = await collect(a.follow(ALICE, job.id))
        await trio.sleep(5)
        stored = await b.get_job(ALICE, job.id)
        notes = await a.list_notifications(ALICE)

    assert stored is not None
    assert stored.status is (JobStatus.ABORTED if aborted else JobStatus.COMPLETE)
    assert followed.status.status is stored.status
    assert len(notes) == (0 if aborted else 1)


async def test_a_dead_nodes_job_is_ended_by_another_node_with_one_notification(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    cluster = FakeCluster()
    async with (
        open_node(cluster, tmp_path, "a", HangingUpstream("half an answer")) as a,
        open_node(cluster, tmp_path, "b", SimulatedUpstream(10)) as b,
        open_node(cluster, tmp_path, "c", SimulatedUpstream(10)) as c,
    ):
        job = await a.start_job(ALICE, chat("hang"))
        await wait_until(b, job.id, reached_seq(1), timeout=WAIT)
        follower = b.follow(ALICE, job.id)
        snapshot = await follower.next_batch()
        await stop_leases(a)
        died_at = trio.current_time()
        followed = split([*snapshot, *[event async for event in follower]])
        ended_after = trio.current_time() - died_at
        await trio.sleep(LEASE)
        stored = await c.get_job(ALICE, job.id)
        notes = await c.list_notifications(ALICE)

    assert stored is not None and stored.status is JobStatus.ERROR
    assert stored.error == "interrupted: node lost"
    assert stored.content == "half an answer"
    assert ended_after <= 2 * LEASE
    assert followed.status.status is JobStatus.ERROR
    assert followed.text == "half an answer"
    assert [(n.job_id, n.type) for n in notes] == [(job.id, NotificationType.ERROR)]


async def test_polls_on_another_node_count_as_watching(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    cluster = FakeCluster()
    async with (
        open_node(cluster, tmp_path, "a", SimulatedUpstream(10)) as a,
        open_node(cluster, tmp_path, "b", SimulatedUpstream(10)) as b,
    ):
        watched = await a.start_job(ALICE, chat(message_id="watched"))
        unwatched = await a.start_job(ALICE, chat(message_id="unwatched"))
        with trio.fail_after(WAIT):
            while True:
                view = await b.get_job(ALICE, watched.id, watching=True)
                assert view is not None
                if view.status.is_terminal:
                    break
                await trio.sleep(1.0)
        await wait_until(b, unwatched.id, lambda v: v.status.is_terminal, timeout=WAIT)
        await trio.sleep(1)
        notes = await b.list_notifications(ALICE)

    assert [n.job_id for n in notes] == [unwatched.id]


async def test_a_notification_created_on_one_node_reaches_followers_on_the_others(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    cluster = FakeCluster()
    async with (
        open_node(cluster, tmp_path, "a", SimulatedUpstream(10)) as a,
        open_node(cluster, tmp_path, "b", SimulatedUpstream(10)) as b,
    ):
        got: dict[str, list[Notification]] = {"a": [], "b": []}

        async def receive(node_id: str, follower: NotificationFollower) -> None:
            async with follower:
                async for notification in follower:
                    got[node_id].append(notification)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive, "a", a.follow_notifications(ALICE))
            nursery.start_soon(receive, "b", b.follow_notifications(ALICE))
            await trio.sleep(1)
            job = await a.start_job(ALICE, chat())
            await wait_until(a, job.id, lambda v: v.status.is_terminal, timeout=WAIT)
            await trio.sleep(5)
            nursery.cancel_scope.cancel()

    # Once on each node.
    assert [n.job_id for n in got["b"]] == [job.id]
    assert got["a"] == got["b"]


async def test_a_node_starting_leaves_the_running_jobs_of_the_others_alone(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    cluster = FakeCluster()
    async with open_node(cluster, tmp_path, "a", SimulatedUpstream(10)) as a:
        job = await a.start_job(ALICE, chat())
        await wait_until(a, job.id, reached_seq(2), timeout=WAIT)
        async with open_node(cluster, tmp_path, "b", SimulatedUpstream(10)) as b:
            view = await b.get_job(ALICE, job.id)
            assert view is not None and view.status is JobStatus.STREAMING
            followed = await collect(b.follow(ALICE, job.id))

    assert followed.status.status is JobStatus.COMPLETE


async def test_an_outage_refuses_new_jobs_then_fails_running_ones_and_stores_their_end(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    cluster = FakeCluster()
    grace = {"store_outage_grace": 10.0}
    async with open_node(cluster, tmp_path, "a", SimulatedUpstream(2), **grace) as a:
        job = await a.start_job(ALICE, chat())
        unwatched = await a.start_job(ALICE, chat(message_id="unwatched"))
        await wait_until(a, job.id, reached_seq(3), timeout=WAIT)
        follower = a.follow(ALICE, job.id)
        before = []
        while follower.last_seq < 3:
            before += await follower.next_batch()
        cluster.down = True
        assert not await a.ready()
        with pytest.raises(StoreUnavailable):
            await a.start_job(ALICE, chat())
        with pytest.raises(StoreUnavailable):
            await a.get_job(ALICE, job.id)
        down_at = trio.current_time()
        followed = split([*before, *[event async for event in follower]])
        failed_after = trio.current_time() - down_at
        cluster.down = False
        assert await a.ready()
        stored = await wait_until(a, job.id, lambda v: v.status.is_terminal, timeout=WAIT)
        await wait_until(a, unwatched.id, lambda v: v.status.is_terminal, timeout=WAIT)
        notes = await a.list_notifications(ALICE)
        # Everything works again, without a restart.
        second = await a.start_job(ALICE, chat(message_id="after"))
        await wait_until(a, second.id, lambda v: v.status.is_terminal, timeout=WAIT)
        # An outage is not a crash: nothing restarted.
        crashed = {
            path: restarts(a, f"service/{path}")
            for path in ("store", "notifier", "persister", "registry", "leases")
        }

    assert followed.status.status is JobStatus.ERROR
    assert followed.status.error == "store unavailable"
    assert 10.0 <= failed_after <= 12.0
    assert stored.status is JobStatus.ERROR and stored.error == "store unavailable"
    # What the follower was sent is stored, and so is what streamed meanwhile.
    assert stored.content.startswith(followed.text)
    assert stored.last_seq > followed.status.last_seq
    assert crashed == dict.fromkeys(crashed, 0)
    # The job was watched to its end; the other one is notified once the store is back.
    assert [(n.job_id, n.body) for n in notes] == [(unwatched.id, "Failed: store unavailable")]


@pytest.mark.parametrize("past", [0.1, 0.35, 0.6, 0.85])
async def test_a_job_outlives_an_outage_shorter_than_the_grace_on_every_node(
    autojump_clock: MockClock, tmp_path: Path, past: float
) -> None:
    """Down for two lease periods, less than the grace: when the store is back, the nodes
    renew their leases before any reaps, and the job ends whole, with one notification."""
    cluster = FakeCluster()
    grace = {"store_outage_grace": 30.0}
    async with (
        open_node(cluster, tmp_path, "a", SimulatedUpstream(4), **grace) as a,
        open_node(cluster, tmp_path, "b", SimulatedUpstream(4), **grace) as b,
    ):
        job = await a.start_job(ALICE, chat())
        await wait_until(b, job.id, reached_seq(3), timeout=WAIT)
        cluster.down = True
        await trio.sleep(2 * LEASE + past)
        cluster.down = False
        final = await wait_until(b, job.id, lambda v: v.status.is_terminal, timeout=WAIT)
        await trio.sleep(1)
        notes = await b.list_notifications(ALICE)

    assert final.status is JobStatus.COMPLETE
    assert final.last_seq == final.chunks_received == 47
    assert [n.job_id for n in notes] == [job.id]
