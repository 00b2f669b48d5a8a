"""One behavioural suite that every store backend must pass."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import attrs
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.config import ServiceConfig, StoreName
from actors.model import (
    Delta,
    Job,
    JobStatus,
    Notification,
    NotificationAction,
    NotificationType,
    Owner,
    Usage,
    WebhookEvent,
)
from actors.stores import Store, StoreError, StoreFactory
from actors.stores.protocol import OutboxSummary
from tests.redis_server import fresh_prefix

BACKEND_NAMES: list[StoreName] = ["memory", "sqlite", "redis"]

# Finished jobs here end in 2025: on Redis, they must outlive the tests by far.
_CENTURY = 100 * 365 * 24 * 3600.0

ALICE = Owner("alice", "ws-1")
ALICE_OTHER_WORKSPACE = Owner("alice", "ws-2")
BOB = Owner("bob", "ws-1")

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)

_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}"


def make_job(
    owner: Owner = ALICE,
    *,
    job_id: str | None = None,
    status: JobStatus = JobStatus.STREAMING,
    started_at: datetime = T0,
    completed_at: datetime | None = None,
) -> Job:
    return Job(
        id=job_id or new_id("job"),
        user_id=owner.user_id,
        workspace_id=owner.workspace_id,
        thread_id="thread-1",
        message_id="message-1",
        model="openai/gpt-4o-mini",
        status=status,
        started_at=started_at,
        completed_at=completed_at,
    )


def make_notification(
    owner: Owner = ALICE,
    *,
    created_at: datetime = T0,
    job_id: str | None = None,
    thread_id: str = "thread-1",
) -> Notification:
    return Notification(
        id=new_id("note"),
        user_id=owner.user_id,
        workspace_id=owner.workspace_id,
        thread_id=thread_id,
        job_id=job_id or new_id("job"),
        type=NotificationType.COMPLETE,
        title="Background response completed",
        body=f"Your background AI response is ready in thread {thread_id}",
        created_at=created_at,
        actions=(NotificationAction("Open chat", "open_chat", thread_id, "message-1"),),
    )


def make_event(
    *,
    created_at: datetime = T0,
    next_attempt_at: datetime | None = None,
    event_id: str | None = None,
    body: str = '{"type": "job.completed"}',
) -> WebhookEvent:
    return WebhookEvent(
        id=event_id or new_id("msg"),
        type="job.completed",
        created_at=created_at,
        body=body,
        next_attempt_at=created_at if next_attempt_at is None else next_attempt_at,
    )


FAR = T0 + timedelta(days=365)


async def queued(store: Store) -> list[WebhookEvent]:
    """Every queued event, as it is; taken, so call it last."""
    return await store.take_due_webhooks(FAR, 1000, FAR)


def deltas(job_id: str, *items: tuple[int, str, str]) -> list[Delta]:
    return [Delta(job_id, seq, content, reasoning) for seq, content, reasoning in items]


NewConfig = Callable[[], ServiceConfig]


@pytest.fixture(params=BACKEND_NAMES)
def new_config(request: pytest.FixtureRequest, tmp_path: Path) -> NewConfig:
    """Makes configurations of the backend under test, each for a store of its own
    (in a new directory, or under a new key prefix)."""
    backend: StoreName = request.param
    settings = {}
    if backend == "redis":
        settings = {"redis_url": request.getfixturevalue("redis_server").url}

    def new() -> ServiceConfig:
        return ServiceConfig(
            store=backend,
            data_dir=tmp_path / new_id("data"),
            redis_prefix=fresh_prefix(),
            retention=_CENTURY,
            **settings,
        )

    return new


@pytest.fixture
async def store(new_config: NewConfig) -> AsyncIterator[Store]:
    factory = StoreFactory(new_config())
    built = await factory.get()
    yield built
    await factory.aclose()


# -- jobs --------------------------------------------------------------------


async def test_create_then_get_round_trips_every_field(store: Store) -> None:
    plus_two = timezone(timedelta(hours=2))
    job = Job(
        id="job-full",
        user_id="alice",
        workspace_id="ws-1",
        thread_id="thread-9",
        message_id="message-9",
        model="anthropic/claude-3.5-sonnet",
        status=JobStatus.COMPLETE,
        started_at=datetime(2025, 3, 1, 14, 0, 0, 1, tzinfo=plus_two),
        content="Hello, wörld ✓",
        reasoning="thinking…",
        chunks_received=7,
        last_seq=7,
        completed_at=datetime(2025, 3, 1, 12, 5, 0, 999999, tzinfo=UTC),
        error="none really",
        finish_reason="stop",
        usage=Usage(
            prompt_tokens=11,
            completion_tokens=22,
            total_tokens=33,
            reasoning_tokens=4,
            cost=0.000123,
        ),
        generation_id="gen-abc",
        tool_calls=[
            {
                "id": "call-1",
                "type": "function",
                "function": {"name": "lookup", "arguments": '{"q": "wörld"}'},
            }
        ],
        images=[{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}],
        foreground=True,
    )
    await store.create_job(job)

    got = await store.get_job("job-full")

    assert got == job
    assert got is not None
    assert got.started_at.utcoffset() == timedelta(0)
    assert got.started_at == datetime(2025, 3, 1, 12, 0, 0, 1, tzinfo=UTC)
    assert got.completed_at is not None and got.completed_at.utcoffset() == timedelta(0)
    assert await store.get_job("no-such-job") is None


async def test_create_keeps_missing_optionals_as_none(store: Store) -> None:
    job = make_job()
    await store.create_job(job)
    got = await store.get_job(job.id)
    assert got == job
    assert got is not None and got.usage is None and got.completed_at is None


async def test_create_with_an_existing_id_raises_and_keeps_the_first(store: Store) -> None:
    first = make_job(job_id="dup")
    await store.create_job(first)
    with pytest.raises(StoreError, match="dup"):
        await store.create_job(attrs.evolve(first, model="other"))
    assert await store.get_job("dup") == first


async def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="started_at"):
        await store.create_job(make_job(started_at=datetime(2025, 1, 1)))
    with pytest.raises(ValueError, match="cutoff"):
        await store.delete_finished_before(datetime(2025, 1, 1))


async def test_list_jobs_is_scoped_to_user_and_workspace_newest_first(store: Store) -> None:
    older = make_job(ALICE, started_at=T0)
    newer = make_job(ALICE, started_at=T0 + timedelta(seconds=5))
    await store.create_job(older)
    await store.create_job(newer)
    await store.create_job(make_job(BOB))
    await store.create_job(make_job(ALICE_OTHER_WORKSPACE))

    assert await store.list_jobs(ALICE) == [newer, older]
    assert [j.owner for j in await store.list_jobs(BOB)] == [BOB]
    assert [j.owner for j in await store.list_jobs(ALICE_OTHER_WORKSPACE)] == [
        ALICE_OTHER_WORKSPACE
    ]
    assert await store.list_jobs(Owner("carol", "ws-1")) == []


async def test_list_jobs_filters_by_status(store: Store) -> None:
    streaming = make_job(status=JobStatus.STREAMING)
    done = make_job(status=JobStatus.COMPLETE, completed_at=T0)
    await store.create_job(streaming)
    await store.create_job(done)

    assert await store.list_jobs(ALICE, JobStatus.STREAMING) == [streaming]
    assert await store.list_jobs(ALICE, JobStatus.COMPLETE) == [done]
    assert await store.list_jobs(ALICE, JobStatus.ERROR) == []


async def test_append_deltas_accumulates_in_seq_order(store: Store) -> None:
    job = make_job()
    await store.create_job(job)

    # Out of order within a batch: seq order wins.
    await store.append_deltas(job.id, deltas(job.id, (2, "lo", "b"), (1, "hel", "a")))
    await store.append_deltas(job.id, deltas(job.id, (3, " world", "")))

    got = await store.get_job(job.id)
    assert got is not None
    assert (got.content, got.reasoning) == ("hello world", "ab")
    assert (got.chunks_received, got.last_seq) == (3, 3)
    assert got.status is JobStatus.STREAMING


async def test_append_deltas_is_idempotent_for_seen_seqs(store: Store) -> None:
    job = make_job()
    await store.create_job(job)
    await store.append_deltas(job.id, deltas(job.id, (1, "a", ""), (2, "b", "")))

    await store.append_deltas(job.id, deltas(job.id, (1, "a", ""), (2, "b", "")))
    await store.append_deltas(job.id, deltas(job.id, (2, "X", ""), (3, "c", ""), (3, "Y", "")))

    got = await store.get_job(job.id)
    assert got is not None
    assert (got.content, got.chunks_received, got.last_seq) == ("abc", 3, 3)
    assert [d.content for d in await store.get_deltas(job.id)] == ["a", "b", "c"]


async def test_append_deltas_to_a_terminal_job_is_ignored(store: Store) -> None:
    job = make_job()
    await store.create_job(job)
    await store.append_deltas(job.id, deltas(job.id, (1, "a", "")))
    assert await store.update_job(
        attrs.evolve(job, status=JobStatus.COMPLETE, completed_at=T0 + timedelta(seconds=1))
    )

    await store.append_deltas(job.id, deltas(job.id, (2, "late", "")))

    got = await store.get_job(job.id)
    assert got is not None
    assert (got.content, got.chunks_received, got.last_seq) == ("a", 1, 1)
    assert [d.seq for d in await store.get_deltas(job.id)] == [1]


async def test_append_deltas_to_a_missing_job_is_ignored(store: Store) -> None:
    await store.append_deltas("ghost", deltas("ghost", (1, "a", "")))
    assert await store.get_job("ghost") is None
    assert await store.get_deltas("ghost") == []


async def test_append_deltas_refuses_a_delta_of_another_job(store: Store) -> None:
    job = make_job()
    await store.create_job(job)
    with pytest.raises(ValueError, match="other-job"):
        await store.append_deltas(job.id, [Delta(job.id, 1, "a"), Delta("other-job", 2, "b")])
    got = await store.get_job(job.id)
    assert got is not None and got.content == "" and got.last_seq == 0


async def test_get_job_for_an_owner_is_none_for_another_owner(store: Store) -> None:
    job = make_job()
    await store.create_job(job)
    await store.append_deltas(job.id, deltas(job.id, (1, "a", "")))

    assert await store.get_job(job.id, job.owner) == await store.get_job(job.id)
    assert (await store.get_job(job.id, job.owner)) is not None
    for stranger in (
        Owner("someone-else", job.owner.workspace_id),
        Owner(job.owner.user_id, "another-workspace"),
    ):
        assert await store.get_job(job.id, stranger) is None
    assert await store.get_job("no-such-job", job.owner) is None


async def test_get_deltas_after_seq(store: Store) -> None:
    job = make_job()
    await store.create_job(job)
    stored = deltas(job.id, (1, "a", "r1"), (2, "b", ""), (3, "c", "r3"))
    await store.append_deltas(job.id, stored)

    assert await store.get_deltas(job.id) == stored
    assert await store.get_deltas(job.id, after_seq=1) == stored[1:]
    assert await store.get_deltas(job.id, after_seq=3) == []
    assert await store.get_deltas("no-such-job") == []


async def test_get_deltas_pages_by_limit(store: Store) -> None:
    job = make_job()
    await store.create_job(job)
    stored = deltas(job.id, *((seq, f"c{seq}", "") for seq in range(1, 8)))
    await store.append_deltas(job.id, stored)

    assert await store.get_deltas(job.id, limit=3) == stored[:3]
    assert await store.get_deltas(job.id, after_seq=3, limit=3) == stored[3:6]
    assert await store.get_deltas(job.id, after_seq=6, limit=3) == stored[6:]
    assert await store.get_deltas(job.id, after_seq=7, limit=3) == []
    # Paging stops at the end of a finished job, whatever the store keeps after it.
    await store.update_job(
        attrs.evolve(job, status=JobStatus.COMPLETE, last_seq=7, completed_at=T0)
    )
    assert await store.get_deltas(job.id, after_seq=5, limit=5) == stored[5:]
    with pytest.raises(ValueError, match="limit"):
        await store.get_deltas(job.id, limit=0)


async def test_append_many_grows_several_jobs_in_one_call(store: Store) -> None:
    a, b, c = make_job(), make_job(BOB), make_job()
    for job in (a, b, c):
        await store.create_job(job)

    await store.append_many(
        {
            a.id: deltas(a.id, (1, "al", "x"), (2, "pha", "")),
            b.id: deltas(b.id, (1, "beta", "y")),
            c.id: [],
        }
    )

    got = {job.id: await store.get_job(job.id) for job in (a, b, c)}
    assert [(j.content, j.reasoning, j.chunks_received, j.last_seq) for j in got.values() if j] == [
        ("alpha", "x", 2, 2),
        ("beta", "y", 1, 1),
        ("", "", 0, 0),
    ]
    assert [d.content for d in await store.get_deltas(a.id)] == ["al", "pha"]
    assert await store.get_deltas(b.id) == deltas(b.id, (1, "beta", "y"))
    assert await store.get_deltas(c.id) == []


async def test_append_many_applies_the_skip_rules_to_each_job_on_its_own(store: Store) -> None:
    ahead, fresh = make_job(), make_job()
    await store.create_job(ahead)
    await store.create_job(fresh)
    await store.append_deltas(ahead.id, deltas(ahead.id, (1, "a", ""), (2, "b", "")))

    await store.append_many(
        {
            # Seen seqs, a repeat within the batch (the first one counts), out of order.
            ahead.id: deltas(ahead.id, (2, "X", ""), (4, "d", ""), (3, "c", ""), (4, "Y", "")),
            # Seq 1 and 2 are new for this job, whatever the other job has.
            fresh.id: deltas(fresh.id, (2, "2", ""), (1, "1", ""), (1, "Z", "")),
        }
    )

    got_ahead, got_fresh = await store.get_job(ahead.id), await store.get_job(fresh.id)
    assert got_ahead is not None and got_fresh is not None
    assert (got_ahead.content, got_ahead.chunks_received, got_ahead.last_seq) == ("abcd", 4, 4)
    assert (got_fresh.content, got_fresh.chunks_received, got_fresh.last_seq) == ("12", 2, 2)
    assert [d.content for d in await store.get_deltas(ahead.id)] == ["a", "b", "c", "d"]
    assert [d.content for d in await store.get_deltas(fresh.id)] == ["1", "2"]


async def test_append_many_refuses_a_misfiled_delta_and_stores_nothing(store: Store) -> None:
    a, b = make_job(), make_job()
    await store.create_job(a)
    await store.create_job(b)

    # The first job's batch is valid: it must not be stored either.
    with pytest.raises(ValueError, match=a.id):
        await store.append_many(
            {a.id: deltas(a.id, (1, "ok", "")), b.id: [Delta(b.id, 1, "b"), Delta(a.id, 2, "a")]}
        )

    assert await store.get_job(a.id) == a
    assert await store.get_job(b.id) == b
    assert await store.get_deltas(a.id) == []
    assert await store.get_deltas(b.id) == []


async def test_append_many_skips_terminal_and_missing_jobs_and_grows_the_rest(
    store: Store,
) -> None:
    done, live = make_job(), make_job()
    await store.create_job(done)
    await store.create_job(live)
    await store.append_deltas(done.id, deltas(done.id, (1, "fin", "")))
    finished = attrs.evolve(done, status=JobStatus.ERROR, error="boom", completed_at=T0)
    assert await store.update_job(finished)

    await store.append_many(
        {
            done.id: deltas(done.id, (2, "late", "")),
            "ghost": deltas("ghost", (1, "boo", "")),
            live.id: deltas(live.id, (1, "on", "")),
        }
    )

    assert await store.get_job(done.id) == attrs.evolve(
        finished, content="fin", chunks_received=1, last_seq=1
    )
    assert [d.seq for d in await store.get_deltas(done.id)] == [1]
    assert await store.get_job("ghost") is None
    assert await store.get_deltas("ghost") == []
    got_live = await store.get_job(live.id)
    assert got_live is not None and (got_live.content, got_live.last_seq) == ("on", 1)


async def test_empty_append_many_changes_nothing(store: Store) -> None:
    job = make_job()
    await store.create_job(job)
    await store.append_many({})
    await store.append_many({job.id: []})
    assert await store.get_job(job.id) == job


async def test_output_after_finishing_is_the_creation_output_and_every_delta(
    store: Store,
) -> None:
    job = attrs.evolve(make_job(), content="pre:", reasoning="r:")
    await store.create_job(job)
    await store.append_many({job.id: deltas(job.id, (1, "one ", "a"), (2, "two ", ""))})
    await store.append_many({job.id: deltas(job.id, (3, "thr\x00ee", "b"))})
    complete = attrs.evolve(job, status=JobStatus.COMPLETE, completed_at=T0, finish_reason="stop")
    assert await store.update_job(complete)

    expected = attrs.evolve(
        complete, content="pre:one two thr\x00ee", reasoning="r:ab", chunks_received=3, last_seq=3
    )
    assert await store.get_job(job.id) == expected
    assert await store.list_jobs(ALICE) == [expected]
    assert await store.list_jobs_by_status([JobStatus.COMPLETE]) == [expected]
    # The deltas stay, for followers replaying the finished job.
    assert [d.seq for d in await store.get_deltas(job.id)] == [1, 2, 3]


async def test_a_status_change_that_is_not_final_keeps_the_output_growing(store: Store) -> None:
    job = make_job(status=JobStatus.QUEUED)
    await store.create_job(job)
    await store.append_deltas(job.id, deltas(job.id, (1, "a", "")))
    streaming = attrs.evolve(job, status=JobStatus.STREAMING, generation_id="gen-1")
    assert await store.update_job(streaming)
    await store.append_deltas(job.id, deltas(job.id, (2, "b", "")))
    assert await store.update_job(attrs.evolve(streaming, status=JobStatus.ABORTED))

    got = await store.get_job(job.id)
    assert got is not None
    assert (got.status, got.content, got.last_seq, got.generation_id) == (
        JobStatus.ABORTED,
        "ab",
        2,
        "gen-1",
    )


async def test_every_read_of_a_running_job_joins_its_deltas(store: Store) -> None:
    job = attrs.evolve(make_job(), content="<", reasoning="(")
    await store.create_job(job)
    await store.append_many({job.id: deltas(job.id, (2, "b", "y"), (1, "a", "x"))})
    await store.append_many({job.id: deltas(job.id, (3, "c", ""))})

    expected = attrs.evolve(job, content="<abc", reasoning="(xy", chunks_received=3, last_seq=3)
    assert await store.get_job(job.id) == expected
    assert await store.list_jobs(ALICE) == [expected]
    assert await store.list_jobs(ALICE, JobStatus.STREAMING) == [expected]
    assert await store.list_jobs_by_status([JobStatus.STREAMING]) == [expected]


async def test_concurrent_appends_from_many_tasks_all_land(store: Store) -> None:
    jobs = [make_job() for _ in range(40)]
    async with trio.open_nursery() as nursery:
        for job in jobs:
            nursery.start_soon(store.create_job, job)

    async def stream(job: Job) -> None:
        for seq in range(1, 6):
            await store.append_deltas(job.id, deltas(job.id, (seq, str(seq), "")))

    async with trio.open_nursery() as nursery:
        for job in jobs:
            nursery.start_soon(stream, job)

    for job in jobs:
        got = await store.get_job(job.id)
        assert got is not None
        assert (got.content, got.chunks_received, got.last_seq) == ("12345", 5, 5)


async def test_job_summaries_are_the_listing_without_output_with_its_lengths(
    store: Store,
) -> None:
    running = make_job(started_at=T0 + timedelta(seconds=2))
    finished = make_job(started_at=T0 + timedelta(seconds=1))
    created_with_output = attrs.evolve(
        make_job(status=JobStatus.COMPLETE, completed_at=T0, started_at=T0),
        content="wörld✓",
        reasoning="…",
    )
    for job in (running, finished, created_with_output):
        await store.create_job(job)
    await store.create_job(make_job(BOB))
    await store.append_many(
        {
            running.id: deltas(running.id, (1, "héllo", "hm"), (2, " \x00x", "")),
            finished.id: deltas(finished.id, (1, "done", "ok")),
        }
    )
    assert await store.update_job(
        attrs.evolve(finished, status=JobStatus.COMPLETE, completed_at=T0)
    )

    summaries = await store.list_job_summaries(ALICE)

    assert [(s.job.id, s.content_length, s.reasoning_length) for s in summaries] == [
        (running.id, 8, 2),
        (finished.id, 4, 2),
        (created_with_output.id, 6, 1),
    ]
    listed = await store.list_jobs(ALICE)
    assert [s.job for s in summaries] == [
        attrs.evolve(job, content="", reasoning="") for job in listed
    ]
    assert [s.content_length for s in summaries] == [len(job.content) for job in listed]


async def test_job_summaries_are_scoped_and_filtered_like_the_listing(store: Store) -> None:
    streaming = make_job(status=JobStatus.STREAMING)
    done = make_job(status=JobStatus.COMPLETE, completed_at=T0)
    for job in (streaming, done, make_job(BOB), make_job(ALICE_OTHER_WORKSPACE)):
        await store.create_job(job)

    assert [s.job.id for s in await store.list_job_summaries(ALICE, JobStatus.STREAMING)] == [
        streaming.id
    ]
    assert [s.job.id for s in await store.list_job_summaries(ALICE, JobStatus.COMPLETE)] == [
        done.id
    ]
    assert await store.list_job_summaries(ALICE, JobStatus.ERROR) == []
    assert [s.job.owner for s in await store.list_job_summaries(BOB)] == [BOB]
    assert await store.list_job_summaries(Owner("carol", "ws-1")) == []


async def test_update_job_writes_state_but_not_accumulated_output(store: Store) -> None:
    job = make_job()
    await store.create_job(job)
    await store.append_deltas(job.id, deltas(job.id, (1, "kept", "why")))
    usage = Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3, cost=0.5)

    changed = attrs.evolve(
        job,
        status=JobStatus.COMPLETE,
        completed_at=T0 + timedelta(minutes=1),
        finish_reason="tool_calls",
        usage=usage,
        generation_id="gen-1",
        model="routed/model",
        tool_calls=[{"id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}],
        images=[{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}],
        content="ignored",
        reasoning="ignored",
        chunks_received=99,
        last_seq=99,
        foreground=True,
    )
    assert await store.update_job(changed) is True

    got = await store.get_job(job.id)
    assert got == attrs.evolve(
        changed, content="kept", reasoning="why", chunks_received=1, last_seq=1, foreground=False
    )
    [summary] = await store.list_job_summaries(ALICE)
    assert (summary.job.tool_calls, summary.job.images) == (changed.tool_calls, changed.images)


async def test_update_job_cannot_change_a_completed_job(store: Store) -> None:
    job = make_job()
    await store.create_job(job)
    complete = attrs.evolve(job, status=JobStatus.COMPLETE, completed_at=T0, finish_reason="stop")
    assert await store.update_job(complete) is True

    failed = attrs.evolve(job, status=JobStatus.ERROR, error="boom", completed_at=T0)
    assert await store.update_job(failed) is False

    assert await store.get_job(job.id) == complete


async def test_update_job_cannot_change_an_aborted_job(store: Store) -> None:
    job = make_job()
    await store.create_job(job)
    aborted = attrs.evolve(job, status=JobStatus.ABORTED, completed_at=T0)
    assert await store.update_job(aborted) is True

    assert await store.update_job(attrs.evolve(job, status=JobStatus.COMPLETE)) is False
    assert await store.update_job(attrs.evolve(job, status=JobStatus.STREAMING)) is False

    assert await store.get_job(job.id) == aborted


async def test_update_job_on_a_missing_job_returns_false(store: Store) -> None:
    assert await store.update_job(make_job(job_id="missing")) is False
    assert await store.get_job("missing") is None


async def test_delete_finished_before_removes_only_old_terminal_jobs(store: Store) -> None:
    cutoff = T0 + timedelta(hours=1)
    old = [
        make_job(status=status, completed_at=cutoff - timedelta(microseconds=1))
        for status in (JobStatus.COMPLETE, JobStatus.ERROR, JobStatus.ABORTED)
    ]
    at_cutoff = make_job(status=JobStatus.COMPLETE, completed_at=cutoff)
    recent = make_job(status=JobStatus.ERROR, completed_at=cutoff + timedelta(minutes=1))
    old_but_streaming = make_job(status=JobStatus.STREAMING, started_at=T0 - timedelta(days=1))
    old_but_queued = make_job(status=JobStatus.QUEUED, started_at=T0 - timedelta(days=1))
    kept = [at_cutoff, recent, old_but_streaming, old_but_queued]
    for job in old + kept:
        await store.create_job(
            attrs.evolve(job, status=JobStatus.STREAMING) if job.status.is_terminal else job
        )
        await store.append_deltas(job.id, deltas(job.id, (1, "x", "")))
        if job.status.is_terminal:
            assert await store.update_job(job)

    deleted = await store.delete_finished_before(cutoff)

    assert sorted(deleted) == sorted(job.id for job in old)
    for job in old:
        assert await store.get_job(job.id) is None
        assert await store.get_deltas(job.id) == []
    for job in kept:
        assert await store.get_job(job.id) is not None
        assert len(await store.get_deltas(job.id)) == 1
    assert await store.delete_finished_before(cutoff) == []


async def test_list_jobs_by_status_spans_owners(store: Store) -> None:
    queued = make_job(BOB, status=JobStatus.QUEUED, started_at=T0 + timedelta(seconds=2))
    streaming = make_job(ALICE, status=JobStatus.STREAMING, started_at=T0)
    done = make_job(ALICE, status=JobStatus.COMPLETE, completed_at=T0)
    for job in (queued, streaming, done):
        await store.create_job(job)

    assert await store.list_jobs_by_status({JobStatus.QUEUED, JobStatus.STREAMING}) == [
        streaming,
        queued,
    ]
    assert await store.list_jobs_by_status([JobStatus.COMPLETE]) == [done]
    assert await store.list_jobs_by_status([JobStatus.ABORTED]) == []
    assert await store.list_jobs_by_status([]) == []


async def test_count_active_counts_queued_and_streaming(store: Store) -> None:
    assert await store.count_active() == 0
    statuses = [JobStatus.QUEUED, JobStatus.STREAMING, JobStatus.STREAMING, JobStatus.ERROR]
    jobs = [make_job(status=s, completed_at=T0 if s.is_terminal else None) for s in statuses]
    for job in jobs:
        await store.create_job(job)
    assert await store.count_active() == 3

    await store.update_job(attrs.evolve(jobs[1], status=JobStatus.ABORTED, completed_at=T0))
    assert await store.count_active() == 2


# -- notifications -----------------------------------------------------------


async def test_notifications_round_trip_and_list_newest_first(store: Store) -> None:
    notes = [make_notification(created_at=T0 + timedelta(seconds=i)) for i in range(5)]
    for n in notes:
        assert await store.add_notification(n) is True
    await store.add_notification(make_notification(BOB))

    assert await store.list_notifications(ALICE) == notes[::-1]
    assert await store.list_notifications(ALICE, limit=2) == [notes[4], notes[3]]
    assert await store.list_notifications(ALICE, limit=0) == []
    assert await store.get_notification(ALICE, notes[0].id) == notes[0]
    with pytest.raises(ValueError, match="limit"):
        await store.list_notifications(ALICE, limit=-1)


async def test_list_notifications_unread_only(store: Store) -> None:
    read, unread = make_notification(), make_notification(created_at=T0 + timedelta(seconds=1))
    await store.add_notification(read)
    await store.add_notification(unread)
    assert await store.mark_read(ALICE, read.id, T0 + timedelta(minutes=1))

    assert await store.list_notifications(ALICE, unread_only=True) == [unread]
    assert [n.id for n in await store.list_notifications(ALICE)] == [unread.id, read.id]


async def test_only_one_notification_per_job(store: Store) -> None:
    first = make_notification(job_id="job-once")
    assert await store.add_notification(first) is True

    second = attrs.evolve(make_notification(job_id="job-once"), title="again")
    assert await store.add_notification(second) is False
    assert await store.add_notification(first) is False

    assert await store.list_notifications(ALICE) == [first]
    assert await store.get_notification(ALICE, second.id) is None


async def test_add_notification_with_an_existing_id_raises(store: Store) -> None:
    first = make_notification()
    await store.add_notification(first)
    with pytest.raises(StoreError, match=first.id):
        await store.add_notification(attrs.evolve(first, job_id="another-job"))
    assert await store.list_notifications(ALICE) == [first]


async def test_notifications_are_scoped_to_their_owner(store: Store) -> None:
    n = make_notification(ALICE)
    await store.add_notification(n)
    at = T0 + timedelta(minutes=1)

    for stranger in (BOB, ALICE_OTHER_WORKSPACE):
        assert await store.get_notification(stranger, n.id) is None
        assert await store.mark_read(stranger, n.id, at) is False
        assert await store.delete_notification(stranger, n.id) is False
        assert await store.mark_all_read(stranger, at) == 0
        assert await store.list_notifications(stranger) == []

    assert await store.get_notification(ALICE, n.id) == n


async def test_mark_read_keeps_the_first_read_at(store: Store) -> None:
    n = make_notification()
    await store.add_notification(n)
    first_read = T0 + timedelta(minutes=1)

    assert await store.mark_read(ALICE, n.id, first_read) is True
    assert await store.mark_read(ALICE, n.id, first_read + timedelta(hours=1)) is True

    got = await store.get_notification(ALICE, n.id)
    assert got is not None and got.read_at == first_read
    assert await store.mark_read(ALICE, "no-such-note", first_read) is False


async def test_mark_all_read_counts_only_unread(store: Store) -> None:
    notes = [make_notification(created_at=T0 + timedelta(seconds=i)) for i in range(4)]
    for n in notes:
        await store.add_notification(n)
    await store.add_notification(make_notification(BOB))
    early = T0 + timedelta(minutes=1)
    await store.mark_read(ALICE, notes[0].id, early)

    assert await store.mark_all_read(ALICE, early + timedelta(minutes=1)) == 3
    assert await store.mark_all_read(ALICE, early + timedelta(minutes=2)) == 0

    read_ats = {n.id: n.read_at for n in await store.list_notifications(ALICE)}
    assert read_ats[notes[0].id] == early
    assert {read_ats[n.id] for n in notes[1:]} == {early + timedelta(minutes=1)}
    assert len(await store.list_notifications(BOB, unread_only=True)) == 1


async def test_delete_notification(store: Store) -> None:
    n = make_notification()
    await store.add_notification(n)

    assert await store.delete_notification(ALICE, n.id) is True
    assert await store.get_notification(ALICE, n.id) is None
    assert await store.delete_notification(ALICE, n.id) is False


async def test_mute_and_unmute_a_thread(store: Store) -> None:
    assert await store.is_thread_muted(ALICE, "thread-1") is False

    await store.set_thread_muted(ALICE, "thread-1", True)
    await store.set_thread_muted(ALICE, "thread-1", True)
    assert await store.is_thread_muted(ALICE, "thread-1") is True
    assert await store.is_thread_muted(ALICE, "thread-2") is False
    assert await store.is_thread_muted(BOB, "thread-1") is False
    assert await store.is_thread_muted(ALICE_OTHER_WORKSPACE, "thread-1") is False

    await store.set_thread_muted(ALICE, "thread-1", False)
    await store.set_thread_muted(ALICE, "thread-1", False)
    assert await store.is_thread_muted(ALICE, "thread-1") is False


# -- webhook outbox ----------------------------------------------------------


async def test_add_notification_queues_its_webhooks_with_it_or_not_at_all(store: Store) -> None:
    note = make_notification(job_id="job-w")
    events = [make_event(), make_event(created_at=T0 + timedelta(seconds=1))]
    assert await store.add_notification(note, events) is True

    again = [make_event(created_at=T0 + timedelta(seconds=2))]
    assert await store.add_notification(make_notification(job_id="job-w"), again) is False

    assert await queued(store) == events


async def test_webhook_times_come_back_in_utc(store: Store) -> None:
    plus_two = timezone(timedelta(hours=2))
    event = make_event(
        created_at=datetime(2025, 3, 1, 14, 0, 0, 5, tzinfo=plus_two),
        next_attempt_at=datetime(2025, 3, 1, 14, 0, 1, tzinfo=plus_two),
        body='{"text": "wörld ✓"}',
    )
    await store.enqueue_webhooks([event])

    [got] = await queued(store)
    assert got == event
    assert got.created_at.utcoffset() == timedelta(0)
    assert got.next_attempt_at == datetime(2025, 3, 1, 12, 0, 1, tzinfo=UTC)


async def test_enqueue_webhooks_skips_an_id_already_queued(store: Store) -> None:
    first = make_event(event_id="msg-same", body="first")
    await store.enqueue_webhooks([first])
    new = make_event(event_id="msg-new")
    await store.enqueue_webhooks([attrs.evolve(first, body="second"), new])

    assert await queued(store) == [new, first]  # same times: by id


async def test_take_due_webhooks_takes_the_due_ones_earliest_first_and_leases_them(
    store: Store,
) -> None:
    later = make_event(event_id="e-later", next_attempt_at=T0 + timedelta(seconds=30))
    due_now = make_event(created_at=T0 - timedelta(seconds=5), next_attempt_at=T0)
    older_same_time = make_event(created_at=T0 - timedelta(seconds=9), next_attempt_at=T0)
    earliest = make_event(created_at=T0 - timedelta(minutes=1))
    not_yet = make_event(event_id="e-not-yet", next_attempt_at=T0 + timedelta(microseconds=1))
    await store.enqueue_webhooks([later, due_now, older_same_time, earliest, not_yet])
    lease = T0 + timedelta(minutes=5)

    assert await store.take_due_webhooks(T0, 2, lease) == [earliest, older_same_time]
    assert await store.take_due_webhooks(T0, 10, lease) == [due_now]  # the leased are not
    assert await store.take_due_webhooks(T0, 0, lease) == []
    assert await store.take_due_webhooks(T0 + timedelta(seconds=30), 10, lease) == [
        not_yet,
        later,
    ]
    assert await store.take_due_webhooks(lease - timedelta(microseconds=1), 10, FAR) == []
    # Due again when the lease ends, as they were but for the time.
    assert await store.take_due_webhooks(lease, 10, FAR) == [
        attrs.evolve(event, next_attempt_at=lease)
        for event in (earliest, older_same_time, due_now, later, not_yet)
    ]
    with pytest.raises(ValueError, match="limit"):
        await store.take_due_webhooks(T0, -1, lease)


async def test_reschedule_webhook_records_a_failed_attempt(store: Store) -> None:
    event = make_event()
    await store.enqueue_webhooks([event])
    retry_at = T0 + timedelta(seconds=10)

    assert await store.reschedule_webhook(event.id, 1, retry_at) is True

    assert await store.take_due_webhooks(T0 + timedelta(seconds=9), 10, FAR) == []
    assert await store.take_due_webhooks(retry_at, 10, FAR) == [
        attrs.evolve(event, attempts=1, next_attempt_at=retry_at)
    ]
    assert await store.reschedule_webhook("missing", 1, retry_at) is False
    assert (await store.webhook_outbox_summary()).depth == 1


async def test_remove_webhook_takes_it_out_once(store: Store) -> None:
    kept, removed = make_event(), make_event()
    await store.enqueue_webhooks([kept, removed])

    assert await store.remove_webhook(removed.id) is True
    assert await store.remove_webhook(removed.id) is False

    assert await queued(store) == [kept]


async def test_delete_webhooks_created_before_takes_only_older_ones(store: Store) -> None:
    cutoff = T0 + timedelta(hours=24)
    oldest = make_event(created_at=T0, next_attempt_at=T0 + timedelta(days=9))
    old = make_event(created_at=cutoff - timedelta(microseconds=1))
    at_cutoff = make_event(created_at=cutoff)
    await store.enqueue_webhooks([old, at_cutoff, oldest])

    assert await store.delete_webhooks_created_before(cutoff) == [oldest.id, old.id]
    assert await store.delete_webhooks_created_before(cutoff) == []

    assert await queued(store) == [at_cutoff]


async def test_outbox_summary_counts_and_finds_the_earliest_times(store: Store) -> None:
    assert await store.webhook_outbox_summary() == OutboxSummary(0, None, None)
    await store.enqueue_webhooks(
        [
            make_event(created_at=T0, next_attempt_at=T0 + timedelta(minutes=5)),
            make_event(created_at=T0 + timedelta(seconds=1), next_attempt_at=T0 + timedelta(2)),
            make_event(created_at=T0 + timedelta(seconds=2)),
        ]
    )

    assert await store.webhook_outbox_summary() == OutboxSummary(3, T0 + timedelta(seconds=2), T0)


async def test_a_disabled_endpoint_keeps_its_first_time(store: Store) -> None:
    url = "https://hooks.example.com/troupe"
    assert await store.webhook_endpoint_disabled_at(url) is None

    await store.disable_webhook_endpoint(url, T0)
    await store.disable_webhook_endpoint(url, T0 + timedelta(hours=1))

    assert await store.webhook_endpoint_disabled_at(url) == T0
    assert await store.webhook_endpoint_disabled_at(url + "?v=2") is None


async def test_outbox_refuses_naive_datetimes(store: Store) -> None:
    naive = datetime(2025, 3, 1, 12, 0)
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.enqueue_webhooks([make_event(created_at=naive)])
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.take_due_webhooks(naive, 10, FAR)
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.disable_webhook_endpoint("https://x.example", naive)
    assert (await store.webhook_outbox_summary()).depth == 0


# -- lifecycle ---------------------------------------------------------------


async def test_ping_answers_while_open(store: Store) -> None:
    await store.ping()


async def test_closed_store_refuses_calls_and_close_is_idempotent(store: Store) -> None:
    await store.create_job(make_job())
    await store.aclose()
    await store.aclose()

    with pytest.raises(StoreError, match="closed"):
        await store.ping()
    with pytest.raises(StoreError, match="closed"):
        await store.get_job("anything")
    with pytest.raises(StoreError, match="closed"):
        await store.create_job(make_job())
    with pytest.raises(StoreError, match="closed"):
        await store.add_notification(make_notification())
    with pytest.raises(StoreError, match="closed"):
        await store.enqueue_webhooks([make_event()])
    with pytest.raises(StoreError, match="closed"):
        await store.webhook_outbox_summary()


# -- properties --------------------------------------------------------------

_piece = st.text(max_size=6)
_batch = st.lists(st.tuples(_piece, _piece), max_size=5)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    batches=st.lists(st.tuples(_batch, st.integers(0, 3), st.randoms()), max_size=8),
)
async def test_content_is_the_concatenation_of_all_appended_batches(
    new_config: NewConfig,
    batches: list[tuple[list[tuple[str, str]], int, random.Random]],
) -> None:
    # Async fixtures are not rebuilt between hypothesis examples, so each
    # example opens its own store.
    factory = StoreFactory(new_config())
    try:
        await _check_concatenation(await factory.get(), batches)
    finally:
        await factory.aclose()


async def _check_concatenation(
    store: Store, batches: list[tuple[list[tuple[str, str]], int, random.Random]]
) -> None:
    job = make_job()
    await store.create_job(job)
    sent: list[Delta] = []
    for pieces, resend, rng in batches:
        fresh = [
            Delta(job.id, len(sent) + i, content, reasoning)
            for i, (content, reasoning) in enumerate(pieces, start=1)
        ]
        # Re-send a few already stored deltas and shuffle: neither may change the result.
        batch = sent[len(sent) - min(resend, len(sent)) :] + fresh
        rng.shuffle(batch)
        await store.append_deltas(job.id, batch)
        sent.extend(fresh)

    got = await store.get_job(job.id)
    assert got is not None
    assert got.content == "".join(d.content for d in sent)
    assert got.reasoning == "".join(d.reasoning for d in sent)
    assert (got.chunks_received, got.last_seq) == (len(sent), len(sent))
    assert await store.get_deltas(job.id) == sent


_JOBS_IN_PROPERTY = 3
# A step: per job (by index), new pieces and how many stored deltas to re-send;
# or the index of a job to finish.
_appends = st.dictionaries(
    st.integers(0, _JOBS_IN_PROPERTY - 1), st.tuples(_batch, st.integers(0, 3)), max_size=3
)
_step = st.one_of(_appends, st.integers(0, _JOBS_IN_PROPERTY - 1))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=st.lists(st.tuples(_step, st.randoms()), max_size=10))
async def test_append_many_matches_a_model_of_independent_jobs(
    new_config: NewConfig,
    steps: list[tuple[dict[int, tuple[list[tuple[str, str]], int]] | int, random.Random]],
) -> None:
    factory = StoreFactory(new_config())
    try:
        await _check_model(await factory.get(), steps)
    finally:
        await factory.aclose()


async def _check_model(
    store: Store,
    steps: list[tuple[dict[int, tuple[list[tuple[str, str]], int]] | int, random.Random]],
) -> None:
    jobs = [make_job(started_at=T0 + timedelta(seconds=i)) for i in range(_JOBS_IN_PROPERTY)]
    for job in jobs:
        await store.create_job(job)
    # The model: what each job has taken, and whether it is finished.
    taken: list[list[Delta]] = [[] for _ in jobs]
    finished = [False for _ in jobs]
    for step, rng in steps:
        if isinstance(step, int):
            done = attrs.evolve(jobs[step], status=JobStatus.COMPLETE, completed_at=T0)
            assert await store.update_job(done) is not finished[step]
            finished[step] = True
            continue
        batches: dict[str, list[Delta]] = {}
        for index, (pieces, resend) in step.items():
            job_id, sent = jobs[index].id, taken[index]
            fresh = [
                Delta(job_id, len(sent) + i, content, reasoning)
                for i, (content, reasoning) in enumerate(pieces, start=1)
            ]
            batch = sent[len(sent) - min(resend, len(sent)) :] + fresh
            rng.shuffle(batch)
            batches[job_id] = batch
            if not finished[index]:
                sent.extend(fresh)
        await store.append_many(batches)

    summaries = {s.job.id: s for s in await store.list_job_summaries(ALICE)}
    for job, sent, is_finished in zip(jobs, taken, finished, strict=True):
        content = "".join(d.content for d in sent)
        reasoning = "".join(d.reasoning for d in sent)
        got = await store.get_job(job.id)
        assert got is not None
        assert got.status is (JobStatus.COMPLETE if is_finished else JobStatus.STREAMING)
        assert (got.content, got.reasoning) == (content, reasoning)
        assert (got.chunks_received, got.last_seq) == (len(sent), len(sent))
        assert await store.get_deltas(job.id) == sent
        summary = summaries[job.id]
        assert summary.job == attrs.evolve(got, content="", reasoning="")
        assert (summary.content_length, summary.reasoning_length) == (len(content), len(reasoning))


# -- persistence -------------------------------------------------------------


async def test_sqlite_keeps_everything_across_reopen(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    job = make_job(status=JobStatus.STREAMING)
    finished = attrs.evolve(
        make_job(status=JobStatus.STREAMING),
        foreground=True,
        status=JobStatus.COMPLETE,
        completed_at=T0,
        tool_calls=[{"id": "c1", "type": "function"}],
        images=[{"type": "image_url"}],
    )
    note = make_notification(job_id=job.id)
    fresh, retried = make_event(), make_event()
    factory = StoreFactory(ServiceConfig(store="sqlite", data_dir=data_dir))
    store = await factory.get()
    await store.create_job(job)
    await store.create_job(attrs.evolve(finished, status=JobStatus.STREAMING, completed_at=None))
    await store.update_job(finished)
    await store.append_deltas(job.id, deltas(job.id, (1, "par", "r"), (2, "tial", "")))
    await store.add_notification(note, [fresh, retried])
    await store.reschedule_webhook(retried.id, 3, T0 + timedelta(minutes=1))
    await store.disable_webhook_endpoint("https://hooks.example.com/", T0)
    await store.set_thread_muted(ALICE, "thread-1", True)
    expected_job = await store.get_job(job.id)
    await factory.aclose()

    reopened = StoreFactory(ServiceConfig(store="sqlite", data_dir=data_dir))
    store = await reopened.get()
    try:
        assert await store.get_job(job.id) == expected_job
        assert expected_job is not None and expected_job.content == "partial"
        assert [d.content for d in await store.get_deltas(job.id)] == ["par", "tial"]
        assert await store.list_notifications(ALICE) == [note]
        assert await store.is_thread_muted(ALICE, "thread-1") is True
        assert await store.list_jobs_by_status([JobStatus.STREAMING]) == [expected_job]
        assert await store.get_job(finished.id) == finished
        assert await queued(store) == [
            fresh,
            attrs.evolve(retried, attempts=3, next_attempt_at=T0 + timedelta(minutes=1)),
        ]
        assert await store.webhook_endpoint_disabled_at("https://hooks.example.com/") == T0
    finally:
        await reopened.aclose()
