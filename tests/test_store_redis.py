"""What the Redis store does beyond the conformance suite: its layout on the server,
the cluster's own operations across two stores (two nodes), and losing the server."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import coredis
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.model import Delta, Job, JobStatus, Owner
from actors.stores import RedisStore, StoreError
from actors.stores.protocol import Admission, Limits
from actors.stores.redis import RedisStoreStatistics
from tests.redis_server import RedisServer, fresh_prefix

RETENTION = 3600.0
ALICE = Owner("alice", "ws-1")
USERS = ["alice", "bob", "carol"]


def make_job(job_id: str, *, user: str = "alice", foreground: bool = False) -> Job:
    return Job(
        id=job_id,
        user_id=user,
        workspace_id="ws-1",
        thread_id="thread-1",
        message_id="message-1",
        model="openai/gpt-4o-mini",
        status=JobStatus.STREAMING,
        started_at=datetime.now(UTC),
        foreground=foreground,
    )


def deltas(job_id: str, *pieces: str, first: int = 1) -> list[Delta]:
    return [Delta(job_id, seq, text) for seq, text in enumerate(pieces, start=first)]


def finished(job: Job, status: JobStatus = JobStatus.COMPLETE, **changes: Any) -> Job:
    return attrs.evolve(job, status=status, completed_at=datetime.now(UTC), **changes)


@asynccontextmanager
async def open_store(url: str, prefix: str, **options: Any) -> AsyncIterator[RedisStore]:
    store = await RedisStore.open(url, prefix=prefix, **{"retention": RETENTION, **options})
    try:
        yield store
    finally:
        await store.aclose()


@asynccontextmanager
async def raw(server: RedisServer) -> AsyncIterator[coredis.Redis[str]]:
    """A plain client, to look at what the store wrote."""
    async with coredis.Redis.from_url(server.url, decode_responses=True) as client:
        yield client


@pytest.fixture
def prefix() -> str:
    return fresh_prefix()


@pytest.fixture
async def store(redis_server: RedisServer, prefix: str) -> AsyncIterator[RedisStore]:
    async with open_store(redis_server.url, prefix) as opened:
        yield opened


@pytest.fixture
async def other_node(redis_server: RedisServer, prefix: str) -> AsyncIterator[RedisStore]:
    """A second store on the same server and prefix: another process of the cluster."""
    async with open_store(redis_server.url, prefix) as opened:
        yield opened


# -- the layout ----------------------------------------------------------------


async def test_deltas_are_stream_entries_whose_ids_are_their_seqs(
    store: RedisStore, redis_server: RedisServer, prefix: str
) -> None:
    job = make_job("job-ids")
    await store.create_job(job)
    await store.append_deltas(job.id, [Delta(job.id, 1, "a", "x"), *deltas(job.id, "b", first=2)])

    async with raw(redis_server) as client:
        entries = await client.xrange(f"{prefix}deltas:{job.id}", "-", "+")
    assert [(e.identifier, dict(e.field_values)) for e in entries] == [
        ("1-0", {"c": "a", "r": "x"}),
        ("2-0", {"c": "b", "r": ""}),
    ]


async def test_the_terminal_update_ends_the_stream_and_schedules_the_expiry(
    store: RedisStore, redis_server: RedisServer, prefix: str
) -> None:
    job = make_job("job-end")
    assert await store.admit_job(job, Limits(5, 5, 5), "node-a", 30.0) is Admission.ADMITTED
    await store.append_deltas(job.id, deltas(job.id, "he", "llo"))
    done = finished(job, finish_reason="stop")
    assert await store.update_job(done)

    assert done.completed_at is not None
    # To the millisecond, the resolution of Redis expiry times.
    expire_at = done.completed_at + timedelta(seconds=RETENTION)
    expire_at -= timedelta(microseconds=expire_at.microsecond % 1000)
    async with raw(redis_server) as client:
        job_key, stream_key = f"{prefix}job:{job.id}", f"{prefix}deltas:{job.id}"
        last = (await client.xrange(stream_key, "-", "+"))[-1]
        assert (last.identifier, dict(last.field_values)) == ("2-1", {"end": "complete"})
        assert await client.pexpiretime(job_key) == expire_at
        assert await client.pexpiretime(stream_key) == expire_at
        assert await client.hget(job_key, "content") == "hello"
        assert await client.exists([f"{prefix}lease:{job.id}"]) == 0
        assert await client.smembers(f"{prefix}running:bg") == set()
        assert await client.smembers(f"{prefix}running-user:alice") == set()
    assert await store.count_active() == 0


async def test_an_expired_job_leaves_no_index_entry_behind(
    redis_server: RedisServer, prefix: str
) -> None:
    async with (
        open_store(redis_server.url, prefix, retention=0.3) as store,
        raw(redis_server) as client,
    ):
        old = make_job("job-old")
        await store.create_job(old)
        assert await store.update_job(finished(old))
        await trio.sleep(0.5)
        assert await store.get_job(old.id) is None  # Expired: Redis dropped it.
        assert await client.zscore(f"{prefix}finished", old.id) is not None

        # The next job to finish drops the expired one's entries.
        new = make_job("job-new")
        await store.create_job(new)
        assert await store.update_job(finished(new))

        assert await client.zscore(f"{prefix}finished", old.id) is None
        assert await client.hget(f"{prefix}finished-index", old.id) is None
        assert await client.zscore(f"{prefix}status:complete", old.id) is None
        assert await client.zscore(f"{prefix}owner-jobs:5:alice:ws-1", old.id) is None
        assert [job.id for job in await store.list_jobs(ALICE)] == [new.id]


async def test_a_listing_drops_the_entry_of_a_job_that_expired(
    store: RedisStore, redis_server: RedisServer, prefix: str
) -> None:
    job = make_job("job-listed")
    await store.create_job(job)
    async with raw(redis_server) as client:
        await client.delete([f"{prefix}job:{job.id}"])  # As an expiry would.
        assert await store.list_jobs(ALICE) == []
        assert await client.zcard(f"{prefix}owner-jobs:5:alice:ws-1") == 0


# -- the cluster's own ---------------------------------------------------------


_job_specs = st.lists(st.tuples(st.sampled_from(USERS), st.booleans()), max_size=24)


@settings(max_examples=25, deadline=None)
@given(
    caps=st.tuples(st.integers(1, 6), st.integers(1, 3), st.integers(1, 3)),
    specs=_job_specs,
    rng=st.randoms(),
)
async def test_caps_hold_exactly_under_concurrent_admissions_on_two_nodes(
    redis_server: RedisServer,
    caps: tuple[int, int, int],
    specs: list[tuple[str, bool]],
    rng: random.Random,
) -> None:
    limits = Limits(*caps)
    prefix = fresh_prefix()
    decisions: dict[str, Admission] = {}
    async with (
        open_store(redis_server.url, prefix) as node_a,
        open_store(redis_server.url, prefix) as node_b,
    ):

        async def admit(job: Job, node: RedisStore, delay: int) -> None:
            for _ in range(delay):
                await trio.lowlevel.checkpoint()
            decisions[job.id] = await node.admit_job(job, limits, "node", 30.0)

        jobs = [
            make_job(f"job-{i}", user=user, foreground=fg) for i, (user, fg) in enumerate(specs)
        ]
        async with trio.open_nursery() as nursery:
            for job in jobs:
                node = rng.choice([node_a, node_b])
                nursery.start_soon(admit, job, node, rng.randrange(4))

        admitted = [job for job in jobs if decisions[job.id] is Admission.ADMITTED]
        background = [job for job in admitted if not job.foreground]
        per_user = Counter(job.user_id for job in background)
        foreground = len(admitted) - len(background)
        refused = {decision for decision in decisions.values()}
        assert len(background) <= limits.max_concurrent_jobs
        assert all(count <= limits.max_jobs_per_user for count in per_user.values())
        assert foreground <= limits.max_foreground_streams
        # A refusal means that cap was full: nothing ends here, so it still is.
        if Admission.GLOBAL_CAP in refused:
            assert len(background) == limits.max_concurrent_jobs
        if Admission.FOREGROUND_CAP in refused:
            assert foreground == limits.max_foreground_streams
        for job in jobs:
            if decisions[job.id] is Admission.USER_CAP:
                assert per_user[job.user_id] == limits.max_jobs_per_user
            stored = await node_b.get_job(job.id)
            assert (stored is not None) is (decisions[job.id] is Admission.ADMITTED)
        assert await node_a.count_active() == len(admitted)


async def test_a_finished_job_frees_its_place_under_the_caps(
    store: RedisStore, other_node: RedisStore
) -> None:
    limits = Limits(max_concurrent_jobs=5, max_jobs_per_user=1, max_foreground_streams=1)
    first = make_job("job-first")
    assert await store.admit_job(first, limits, "a", 30.0) is Admission.ADMITTED
    assert await other_node.admit_job(make_job("job-2"), limits, "b", 30.0) is Admission.USER_CAP
    assert await other_node.admit_job(make_job("job-fg", foreground=True), limits, "b", 30.0) is (
        Admission.ADMITTED
    )
    with pytest.raises(StoreError, match="job-first"):
        await other_node.admit_job(first, limits, "b", 30.0)

    assert await other_node.update_job(finished(first, JobStatus.ABORTED))

    assert await store.admit_job(make_job("job-3"), limits, "a", 30.0) is Admission.ADMITTED


async def test_leases_are_renewed_by_their_node_and_expire_without_it(
    store: RedisStore, other_node: RedisStore
) -> None:
    limits = Limits(10, 10, 10)
    older, newer = make_job("job-older"), make_job("job-newer")
    for job in (older, newer):
        assert await store.admit_job(job, limits, "node-a", 0.4) is Admission.ADMITTED

    assert await store.renew_leases("node-a", [older.id], 0.4) == set()
    assert await other_node.renew_leases("node-b", [older.id], 5.0) == {older.id}
    assert await other_node.expired_jobs() == []
    await trio.sleep(0.3)
    assert await store.renew_leases("node-a", [older.id], 0.4) == set()
    await trio.sleep(0.3)
    # The renewal held the older job's lease; the newer one's ran out.
    assert await other_node.expired_jobs() == [newer.id]
    await trio.sleep(0.3)
    assert await other_node.expired_jobs() == [older.id, newer.id]

    # A node that is alive takes its lease again while the job runs...
    assert await store.renew_leases("node-a", [older.id], 5.0) == set()
    assert await other_node.expired_jobs() == [newer.id]
    # ...but not once another node has ended it.
    assert await other_node.update_job(finished(newer, JobStatus.ERROR, error="node lost"))
    assert await store.renew_leases("node-a", [newer.id, older.id], 5.0) == {newer.id}
    assert await other_node.expired_jobs() == []


async def test_a_watch_lasts_its_longest_mark(store: RedisStore, other_node: RedisStore) -> None:
    assert await store.is_watched("job-w") is False
    await store.mark_watched("job-w", 0.5)
    await other_node.mark_watched("job-w", 0.05)  # Shorter: the first mark stands.
    await trio.sleep(0.25)
    assert await other_node.is_watched("job-w") is True
    await trio.sleep(0.45)
    assert await other_node.is_watched("job-w") is False


async def test_read_live_wakes_on_a_delta_and_on_the_end(
    store: RedisStore, other_node: RedisStore
) -> None:
    job = make_job("job-live")
    await store.create_job(job)
    await store.append_deltas(job.id, deltas(job.id, "a"))
    got: list[tuple[list[Delta], bool]] = []

    async def read(after: int) -> None:
        got.append(await other_node.read_live(job.id, after, timeout=10.0))

    with trio.fail_after(2):
        assert await other_node.read_live(job.id, 0, timeout=10.0) == (deltas(job.id, "a"), False)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, 1)
            await trio.sleep(0.1)
            await store.append_deltas(job.id, deltas(job.id, "b", first=2))
        assert got.pop() == (deltas(job.id, "b", first=2), False)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, 2)
            await trio.sleep(0.1)
            assert await store.update_job(finished(job))
        assert got.pop() == ([], True)


async def test_read_live_pages_by_limit_and_says_when_the_job_has_ended(
    store: RedisStore,
) -> None:
    job = make_job("job-pages")
    await store.create_job(job)
    stored = deltas(job.id, "a", "b", "c", "d", "e")
    await store.append_deltas(job.id, stored)
    assert await store.read_live(job.id, 0, 1.0, limit=2) == (stored[:2], False)
    assert await store.update_job(finished(job))

    assert await store.read_live(job.id, 2, 1.0, limit=2) == (stored[2:4], False)
    assert await store.read_live(job.id, 3, 1.0, limit=2) == (stored[3:], True)
    assert await store.read_live(job.id, 5, 1.0) == ([], True)
    assert await store.read_live(job.id, 9, 1.0) == ([], True)
    assert await store.read_live("no-such-job", 0, 1.0) == ([], True)
    with pytest.raises(ValueError, match="limit"):
        await store.read_live(job.id, 0, 1.0, limit=0)


async def test_read_live_times_out_with_nothing(store: RedisStore) -> None:
    job = make_job("job-quiet")
    await store.create_job(job)
    started = trio.current_time()
    assert await store.read_live(job.id, 0, 0.2) == ([], False)
    assert 0.15 <= trio.current_time() - started < 1.0
    assert await store.read_live(job.id, 0, 0) == ([], False)


async def test_cancelled_waiting_reads_leave_the_live_reader_serving(store: RedisStore) -> None:
    job = make_job("job-cancelled")
    await store.create_job(job)

    with trio.fail_after(1.0):
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(store.read_live, job.id, 0, 0.5)
            await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    assert store.statistics().live_waiters == 0

    # Two readers wake on one delta.
    got: list[tuple[list[Delta], bool]] = []

    async def read() -> None:
        got.append(await store.read_live(job.id, 0, 3.0))

    with trio.fail_after(3.0):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            nursery.start_soon(read)
            await trio.sleep(0.2)
            await store.append_deltas(job.id, deltas(job.id, "x"))
    assert got == [(deltas(job.id, "x"), False)] * 2
    await store.ping()


async def test_a_subscriber_gets_what_is_published_on_its_channel_from_then_on(
    store: RedisStore, other_node: RedisStore, redis_server: RedisServer
) -> None:
    await other_node.publish("control", b"before")
    async with (
        open_store(redis_server.url, fresh_prefix()) as elsewhere,
        store.subscribe("control") as messages,
    ):
        await elsewhere.publish("control", b"another deployment's")
        await other_node.publish("other-channel", b"not this one")
        await other_node.publish("control", b"abort job-1")
        await other_node.publish("control", b"\x00\xff")
        with trio.fail_after(2):
            assert [await anext(messages), await anext(messages)] == [b"abort job-1", b"\x00\xff"]


async def test_a_subscriber_that_falls_behind_loses_its_subscription(
    redis_server: RedisServer, prefix: str
) -> None:
    async with (
        open_store(redis_server.url, prefix, subscription_buffer=2) as store,
        store.subscribe("busy") as messages,
    ):
        for n in range(4):
            await store.publish("busy", b"%d" % n)
        await trio.sleep(0.2)  # All four reach the subscription before it is read.
        with trio.fail_after(2):
            assert [await anext(messages), await anext(messages)] == [b"0", b"1"]
            with pytest.raises(StoreError, match="behind"):
                await anext(messages)


# -- following jobs live -------------------------------------------------------


async def command_calls(client: coredis.Redis[str], *commands: str) -> int:
    """How many times the server has run ``commands`` (its ``INFO commandstats``)."""
    stats: dict[str, Any] = await client.info("commandstats")
    return sum(stats.get(f"cmdstat_{command}", {}).get("calls", 0) for command in commands)


async def follow(node: RedisStore, job_id: str, after: int = 0) -> list[Delta]:
    """Read the job live, as a follower does, until its end; every delta read."""
    got: list[Delta] = []
    while True:
        found, ended = await node.read_live(job_id, after, 1.0)
        got += found
        after = got[-1].seq if got else after
        if ended:
            return got


async def until(condition: Callable[[], bool]) -> None:
    """Return once ``condition()`` holds, looking every 10 ms: nothing signals a change
    of the store's statistics."""
    while True:
        if condition():
            return
        await trio.sleep(0.01)


async def test_followers_of_many_jobs_share_one_reader_and_get_every_delta_once(
    store: RedisStore, other_node: RedisStore, redis_server: RedisServer
) -> None:
    jobs = [make_job(f"job-many-{i}") for i in range(20)]
    for job in jobs:
        await store.create_job(job)
    # Every script this uses once, so that none is loaded (one more command) below.
    warm = make_job("job-warm")
    await store.create_job(warm)
    await store.append_deltas(warm.id, deltas(warm.id, "a"))
    await other_node.read_live(warm.id, 0, 0)
    await store.update_job(finished(warm))
    followers, ticks = 2 * len(jobs), 50
    got: dict[tuple[str, int], list[Delta]] = {}

    async def follower(job_id: str, n: int) -> None:
        got[job_id, n] = await follow(other_node, job_id)

    async with raw(redis_server) as client:
        before = await command_calls(client, "xread", "evalsha")
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for job in jobs:
                    for n in range(2):
                        nursery.start_soon(follower, job.id, n)
                await until(lambda: other_node.statistics().live_waiters == followers)
                assert other_node.statistics().live_streams == len(jobs)
                for seq in range(1, ticks + 1):
                    await store.append_many(
                        {job.id: [Delta(job.id, seq, f"{seq}")] for job in jobs}
                    )
                    await trio.sleep(0.02)
                for job in jobs:
                    assert await store.update_job(finished(job))
        spent = await command_calls(client, "xread", "evalsha") - before

    def every_delta(job_id: str) -> list[Delta]:
        return [Delta(job_id, seq, f"{seq}") for seq in range(1, ticks + 1)]

    assert got == {(job.id, n): every_delta(job.id) for job in jobs for n in range(2)}
    # The writer wrote once a tick and once per job's end, a script each. The rest is
    # a script per follower to start, then an XREAD or two per write for them all
    # (a blocked XREAD returns the one stream that woke it; the next, the others):
    # not two commands per follower and tick (4,000).
    writes = ticks + len(jobs)
    assert spent - writes <= followers + 3 * writes


async def test_a_job_leaves_the_reader_when_no_one_reads_it_and_at_its_end(
    store: RedisStore, other_node: RedisStore, redis_server: RedisServer
) -> None:
    quiet, ending = make_job("job-quiet-live"), make_job("job-ending")
    await store.create_job(quiet)
    await store.create_job(ending)
    assert await other_node.read_live(quiet.id, 0, 0.1) == ([], False)
    assert other_node.statistics() == RedisStoreStatistics(1, 1, 0)
    # Three of its reads' timeouts without a read, a block of the reader, and a margin.
    await trio.sleep(0.6)
    assert other_node.statistics() == RedisStoreStatistics(0, 0, 0)

    async with raw(redis_server) as client:
        before = await command_calls(client, "xread")
        await trio.sleep(0.2)
        assert await command_calls(client, "xread") == before  # It reads nothing now.

        got: list[tuple[list[Delta], bool]] = []

        async def read(after: int) -> None:
            got.append(await other_node.read_live(ending.id, after, 5.0))

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read, 0)
                await until(lambda: other_node.statistics().live_waiters == 1)
                await store.append_deltas(ending.id, deltas(ending.id, "a", "b"))
            assert got.pop() == (deltas(ending.id, "a", "b"), False)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read, 2)
                await until(lambda: other_node.statistics().live_waiters == 1)
                assert await store.update_job(finished(ending))
            assert got.pop() == ([], True)
        # Its end read, it is no longer read, but kept for its followers' last reads,
        # which cost no command.
        assert other_node.statistics() == RedisStoreStatistics(1, 0, 0)
        before = await command_calls(client, "xread", "evalsha")
        assert await other_node.read_live(ending.id, 1, 1.0) == (
            deltas(ending.id, "b", first=2),
            True,
        )
        assert await other_node.read_live(ending.id, 0, 1.0, limit=1) == (
            deltas(ending.id, "a"),
            False,
        )
        assert await command_calls(client, "xread", "evalsha") == before


async def test_a_follower_that_stops_reading_holds_no_one_back(
    store: RedisStore, other_node: RedisStore
) -> None:
    job = make_job("job-one-stops")
    await store.create_job(job)
    stored = [Delta(job.id, seq, f"{seq}") for seq in range(1, 101)]
    kept: list[Delta] = []
    first: list[Delta] = []

    async def keeps_reading() -> None:
        kept.extend(await follow(other_node, job.id))

    async def stops_reading() -> None:
        first.extend((await other_node.read_live(job.id, 0, 5.0))[0])

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keeps_reading)
            nursery.start_soon(stops_reading)
            await until(lambda: other_node.statistics().live_waiters == 2)
            for tick in range(0, len(stored), 5):  # Far more than the 64 it keeps.
                await store.append_deltas(job.id, stored[tick : tick + 5])
                await trio.sleep(0.01)
            assert await store.update_job(finished(job))
        assert kept == stored
        # Back, far behind: the rest from the store, once each.
        assert first and first == stored[: len(first)]
        assert first + await follow(other_node, job.id, first[-1].seq) == stored


async def test_a_followed_job_whose_keys_are_lost_has_ended(
    store: RedisStore, other_node: RedisStore, redis_server: RedisServer, prefix: str
) -> None:
    job = make_job("job-lost")
    await store.create_job(job)
    assert await other_node.read_live(job.id, 0, 0.05) == ([], False)
    async with raw(redis_server) as client:
        await client.delete([f"{prefix}job:{job.id}", f"{prefix}deltas:{job.id}"])
    assert other_node.statistics().live_streams == 1
    assert await other_node.read_live(job.id, 0, 0.2) == ([], True)


async def test_a_read_waits_for_room_while_the_reader_is_full(
    redis_server: RedisServer, prefix: str, store: RedisStore
) -> None:
    first, second = make_job("job-first-live"), make_job("job-second-live")
    await store.create_job(first)
    await store.create_job(second)
    async with open_store(redis_server.url, prefix, max_live_jobs=1) as node:
        got: dict[str, tuple[list[Delta], bool]] = {}

        async def read(job_id: str, after: int, timeout: float) -> None:
            got[job_id] = await node.read_live(job_id, after, timeout)

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read, first.id, 0, 5.0)
                await until(lambda: node.statistics().live_waiters == 1)
                # No room: the read looks at the stored job again at its deadline.
                started = trio.current_time()
                async with trio.open_nursery() as inner:
                    inner.start_soon(read, second.id, 0, 0.3)
                    await trio.sleep(0.1)
                    await store.append_deltas(second.id, deltas(second.id, "x"))
                assert trio.current_time() - started >= 0.3
                assert got.pop(second.id) == (deltas(second.id, "x"), False)
                assert node.statistics() == RedisStoreStatistics(1, 1, 1)

                # The first job's end makes room.
                nursery.start_soon(read, second.id, 1, 5.0)
                await trio.sleep(0.1)
                assert await store.update_job(finished(first))
                await until(lambda: first.id in got and node.statistics().live_waiters == 1)
                started = trio.current_time()
                await store.append_deltas(second.id, deltas(second.id, "y", first=2))
        assert trio.current_time() - started < 1.0
        assert got == {first.id: ([], True), second.id: (deltas(second.id, "y", first=2), False)}


# -- losing the server ---------------------------------------------------------


@pytest.fixture
async def own_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A server of the test's own, to stop and start."""
    server = RedisServer(tmp_path)
    await trio.to_thread.run_sync(server.start)
    try:
        yield server
    finally:
        await trio.to_thread.run_sync(server.stop)


async def test_a_stopped_server_fails_every_call_and_a_restarted_one_serves_again(
    own_server: RedisServer, prefix: str
) -> None:
    options = {"connect_timeout": 1.0, "command_timeout": 1.0}
    async with open_store(own_server.url, prefix, **options) as store:
        job, other = make_job("job-outage"), make_job("job-outage-2")
        await store.create_job(job)
        await store.create_job(other)
        blocked: list[BaseException] = []

        async def read_blocked(job_id: str) -> None:
            try:
                await store.read_live(job_id, 0, 10.0)
            except StoreError as error:
                blocked.append(error)

        with trio.fail_after(5):
            async with store.subscribe("control") as messages, trio.open_nursery() as nursery:
                for job_id in (job.id, job.id, other.id):
                    nursery.start_soon(read_blocked, job_id)
                await trio.sleep(0.1)
                assert store.statistics().live_waiters == 3
                await trio.to_thread.run_sync(own_server.stop)
                with pytest.raises(StoreError, match=f"127.0.0.1:{own_server.port}"):
                    await anext(messages)
            assert [str(error) for error in blocked] == [str(blocked[0])] * 3
            assert f"127.0.0.1:{own_server.port}" in str(blocked[0])
            assert store.statistics().live_jobs == 0
            with pytest.raises(StoreError, match=f"127.0.0.1:{own_server.port}"):
                await store.ping()
            with pytest.raises(StoreError, match=f"127.0.0.1:{own_server.port}"):
                await store.get_job(job.id)
            with pytest.raises(StoreError, match=f"127.0.0.1:{own_server.port}"):
                await store.read_live(job.id, 0, 1.0)

        await trio.to_thread.run_sync(own_server.start)
        with trio.fail_after(5):
            await store.ping()
            again = make_job("job-after")
            await store.create_job(again)
            got: list[tuple[list[Delta], bool]] = []

            async def read() -> None:
                got.append(await store.read_live(again.id, 0, 3.0))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                await trio.sleep(0.1)
                await store.append_deltas(again.id, deltas(again.id, "back"))
            assert got == [(deltas(again.id, "back"), False)]
            async with store.subscribe("control") as messages:
                await store.publish("control", b"hello again")
                assert await anext(messages) == b"hello again"
