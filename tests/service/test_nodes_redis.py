"""Two services (nodes) in one trio run on one real Redis: any node serves any job.

The same contract as ``test_nodes.py`` checks on the in-process fake, here on the
Redis store and trio's real clock: following across nodes (and how soon a delta gets
there), an abort that closes the owner's upstream connection, an abort racing
completion, exact caps, a dead node's job, watching and notifications.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from actors import JobStatus, Notification, Service, ServiceConfig, open_service
from actors.errors import ServerBusy, TooManyJobs
from actors.jobs.following import NotificationFollower
from actors.model import NotificationType
from actors.upstream import (
    EventHandler,
    SimulatedUpstream,
    StreamOpened,
    StreamResult,
    TextDelta,
    Upstream,
    UpstreamRequest,
)
from tests.fake_upstream import FakeUpstream, Script
from tests.redis_server import RedisServer, fresh_prefix
from tests.service.kit import ALICE, BOB, HangingUpstream, chat, reached_seq, wait_until
from tests.service.test_follow import collect, split
from tests.service.test_nodes import stop_leases

LEASE = 1.0
WAIT = 20.0


def node_config(
    redis: RedisServer, prefix: str, tmp_path: Path, node_id: str, **overrides: Any
) -> ServiceConfig:
    settings: dict[str, Any] = {
        "store": "redis",
        "redis_url": redis.url,
        "redis_prefix": prefix,
        "node_id": node_id,
        "lease_period": LEASE,
        "drain_timeout": 0.0,
        "data_dir": tmp_path / node_id,
        **overrides,
    }
    return ServiceConfig(**settings)


@asynccontextmanager
async def open_nodes(
    redis: RedisServer, tmp_path: Path, *upstreams: Upstream | None, **overrides: Any
) -> AsyncIterator[list[Service]]:
    """Nodes ``a``, ``b``, ... on one fresh prefix; a None upstream is the configured one."""
    prefix = fresh_prefix()
    async with AsyncExitStack() as stack:
        nodes = []
        for node_id, upstream in zip("abc", upstreams, strict=False):
            config = node_config(redis, prefix, tmp_path, node_id, **overrides)
            nodes.append(await stack.enter_async_context(open_service(config, upstream=upstream)))
        yield nodes


class TimedUpstream:
    """``count`` one-word deltas at ``per_second``, noting when each one was sent."""

    def __init__(self, count: int, per_second: float) -> None:
        self.count = count
        self.per_second = per_second
        self.sent_at: list[float] = []

    async def stream(self, request: UpstreamRequest, on_event: EventHandler) -> StreamResult:
        await on_event(StreamOpened("gen-timed"))
        for n in range(self.count):
            await trio.sleep(1 / self.per_second)
            self.sent_at.append(trio.current_time())
            await on_event(TextDelta(content=f"w{n} "))
        return StreamResult("stop", None, "gen-timed")

    async def aclose(self) -> None:
        """Nothing to release."""


async def test_a_delta_reaches_a_follower_on_another_node_within_100_ms_at_p99(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    upstream = TimedUpstream(count=100, per_second=50)
    async with open_nodes(redis_server, tmp_path, upstream, SimulatedUpstream(10)) as (a, b):
        job = await a.start_job(ALICE, chat())
        arrived: dict[int, float] = {}
        events = []
        async with b.follow(ALICE, job.id) as follower:
            while batch := await follower.next_batch():
                now = trio.current_time()
                events += batch
                arrived.update((event.seq, now) for event in batch if hasattr(event, "seq"))
        resumed = await collect(b.follow(ALICE, job.id, after_seq=80))
        final = await b.get_job(ALICE, job.id)

    followed = split(events)
    assert final is not None and final.status is JobStatus.COMPLETE
    assert followed.seqs == list(range(1, 101))
    assert followed.text == final.content
    assert resumed.seqs == list(range(81, 101))
    lags = sorted(arrived[seq] - upstream.sent_at[seq - 1] for seq in arrived)
    p99 = lags[math.ceil(0.99 * len(lags)) - 1]
    print(
        f"cross-node delta lag: p50 {lags[len(lags) // 2] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"
    )
    assert p99 <= 0.1


async def test_an_abort_from_another_node_closes_the_upstream_connection_of_the_owner(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with FakeUpstream.serve() as fake:
        fake.script("hang", Script.stream().content("so far").hang())
        owner_settings = {
            "upstream": "openai",
            "upstream_base_url": fake.base_url,
            "upstream_api_key": "sk-test",
        }
        prefix = fresh_prefix()
        a_config = node_config(redis_server, prefix, tmp_path, "a", **owner_settings)
        b_config = node_config(redis_server, prefix, tmp_path, "b")
        async with (
            open_service(a_config) as a,
            open_service(b_config, upstream=SimulatedUpstream(10)) as b,
        ):
            job = await a.start_job(ALICE, chat("hang"))
            await wait_until(b, job.id, lambda v: v.content == "so far", timeout=WAIT)
            on_b = b.follow(ALICE, job.id)
            assert await b.abort_job(ALICE, job.id) is True
            with trio.fail_after(5):
                await fake.requests[0].client_disconnected.wait()
                followed = await collect(on_b)
            again = [await node.abort_job(ALICE, job.id) for node in (a, b)]
            stored = await a.get_job(ALICE, job.id)
            notes = await a.list_notifications(ALICE)

    assert followed.text == "so far"
    assert followed.status.status is JobStatus.ABORTED
    assert again == [False, False]
    assert stored is not None and stored.status is JobStatus.ABORTED
    assert stored.content == "so far"
    assert notes == []


async def test_aborts_racing_completion_end_each_job_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Twelve jobs on A finish about 0.5 s after they start; B aborts each at another
    moment around then. Each ends one way, and only a completed one notifies."""
    async with open_nodes(
        redis_server, tmp_path, SimulatedUpstream(94), SimulatedUpstream(94), max_jobs_per_user=20
    ) as (a, b):
        jobs = [await a.start_job(ALICE, chat(message_id=f"m{n}")) for n in range(12)]
        aborted: dict[str, bool] = {}

        async def abort_later(job_id: str, delay: float) -> None:
            await trio.sleep(delay)
            aborted[job_id] = await b.abort_job(ALICE, job_id)

        async with trio.open_nursery() as nursery:
            for n, job in enumerate(jobs):
                nursery.start_soon(abort_later, job.id, 0.4 + 0.02 * n)
        for job in jobs:
            await wait_until(b, job.id, lambda v: v.status.is_terminal, timeout=WAIT)
        await trio.sleep(0.5)
        views = [await a.get_job(ALICE, job.id) for job in jobs]
        notes = await b.list_notifications(ALICE, limit=100)

    statuses = {view.id: view.status for view in views if view is not None}
    assert statuses == {
        job_id: JobStatus.ABORTED if won else JobStatus.COMPLETE for job_id, won in aborted.items()
    }
    completed = {job_id for job_id, status in statuses.items() if status is JobStatus.COMPLETE}
    assert sorted(n.job_id for n in notes) == sorted(completed)


async def test_caps_are_exact_across_nodes(redis_server: RedisServer, tmp_path: Path) -> None:
    upstream = HangingUpstream("x")
    async with open_nodes(
        redis_server, tmp_path, upstream, upstream, max_concurrent_jobs=3, max_jobs_per_user=2
    ) as (a, b):
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
        alice, bob = await a.list_jobs(ALICE), await b.list_jobs(BOB)

    assert outcomes.count("started") == 3
    assert len(alice) <= 2 and len(bob) <= 2 and len(alice) + len(bob) == 3


async def test_a_dead_nodes_job_ends_node_lost_with_one_notification(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with open_nodes(
        redis_server,
        tmp_path,
        HangingUpstream("half"),
        SimulatedUpstream(10),
        SimulatedUpstream(10),
    ) as (a, b, c):
        job = await a.start_job(ALICE, chat("hang"))
        await wait_until(b, job.id, reached_seq(1), timeout=WAIT)
        on_b = b.follow(ALICE, job.id)
        snapshot = await on_b.next_batch()
        await stop_leases(a)
        died_at = trio.current_time()
        followed = split([*snapshot, *[event async for event in on_b]])
        noticed_after = trio.current_time() - died_at
        await trio.sleep(LEASE)
        stored = await c.get_job(ALICE, job.id)
        notes = await c.list_notifications(ALICE)

    assert noticed_after <= 2 * LEASE + 0.5
    assert followed.status.status is JobStatus.ERROR
    assert followed.status.error == "interrupted: node lost"
    assert followed.text == "half"
    assert stored is not None and stored.content == "half"
    assert stored.error == "interrupted: node lost"
    assert [(n.job_id, n.type) for n in notes] == [(job.id, NotificationType.ERROR)]


async def test_watching_on_one_node_and_notifications_on_every_node(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """B polls one of A's jobs and follows another: neither notifies. A third, watched
    by nobody, notifies once, and B's notification follower gets it live."""
    fast = SimulatedUpstream(100)
    async with open_nodes(redis_server, tmp_path, fast, fast) as (a, b):
        got: list[Notification] = []

        async def receive(follower: NotificationFollower) -> None:
            async with follower:
                async for notification in follower:
                    got.append(notification)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive, b.follow_notifications(ALICE))
            polled = await a.start_job(ALICE, chat(message_id="polled"))
            followed = await a.start_job(ALICE, chat(message_id="followed"))
            unwatched = await a.start_job(ALICE, chat(message_id="unwatched"))
            nursery.start_soon(collect, b.follow(ALICE, followed.id))
            with trio.fail_after(WAIT):
                while True:
                    view = await b.get_job(ALICE, polled.id, watching=True)
                    assert view is not None
                    if view.status.is_terminal:
                        break
                    await trio.sleep(0.2)
            for job in (followed, unwatched):
                await wait_until(b, job.id, lambda v: v.status.is_terminal, timeout=WAIT)
            # On a shared store the notification follows the job's end by a moment.
            await trio.sleep(0.5)
            nursery.cancel_scope.cancel()
        notes = await a.list_notifications(ALICE)

    assert [n.job_id for n in notes] == [unwatched.id]
    assert [n.job_id for n in got] == [unwatched.id]
