"""Following a job: snapshot, ordered deltas, status; resume after a seq; slow followers."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import trio
from trio.testing import MockClock

from actors import (
    DeltaEvent,
    JobEvent,
    JobNotFound,
    JobStatus,
    JobView,
    Service,
    SnapshotEvent,
    StatusEvent,
    open_service,
)
from actors.jobs.following import JobFollower
from actors.upstream import SimulatedUpstream
from tests.service.kit import ALICE, BOB, chat, config, reached_seq, wait_finished, wait_until

# Virtual seconds on the mock clock: a wait never costs real time.
WAIT = 60.0


@attrs.frozen
class Followed:
    """What one follow produced, split by event kind."""

    snapshot: SnapshotEvent
    deltas: list[DeltaEvent]
    status: StatusEvent

    @property
    def seqs(self) -> list[int]:
        return [d.seq for d in self.deltas]

    @property
    def text(self) -> str:
        return "".join(d.content for d in self.deltas)


def split(events: list[JobEvent]) -> Followed:
    """Check the shape snapshot, deltas..., status and return it split up."""
    assert len(events) >= 2
    first, *middle, last = events
    assert isinstance(first, SnapshotEvent)
    assert isinstance(last, StatusEvent)
    assert all(isinstance(event, DeltaEvent) for event in middle)
    deltas = [event for event in middle if isinstance(event, DeltaEvent)]
    return Followed(first, deltas, last)


async def collect(follower: JobFollower) -> Followed:
    return split([event async for event in follower])


async def test_following_a_live_job_gives_snapshot_then_ordered_deltas_then_status(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    async with open_service(config(tmp_path), upstream=SimulatedUpstream(10)) as service:
        job = await service.start_job(ALICE, chat())
        followed = await collect(service.follow(ALICE, job.id))
        final = await service.get_job(ALICE, job.id)

    assert final is not None and final.status is JobStatus.COMPLETE
    assert followed.snapshot.job.id == job.id
    assert followed.snapshot.job.content == ""
    assert followed.seqs == list(range(1, final.last_seq + 1))
    assert followed.text == final.content
    assert followed.status.status is JobStatus.COMPLETE
    assert followed.status.last_seq == final.last_seq
    assert followed.status.finish_reason == "stop"
    assert followed.status.usage == final.usage


async def test_joining_mid_stream_replays_then_goes_live(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    async with open_service(config(tmp_path), upstream=SimulatedUpstream(10)) as service:
        job = await service.start_job(ALICE, chat())
        joined_at = await wait_until(service, job.id, reached_seq(12), timeout=WAIT)
        assert joined_at.status is JobStatus.STREAMING
        followed = await collect(service.follow(ALICE, job.id))
        final = await service.get_job(ALICE, job.id)

    assert final is not None
    # The snapshot carries metadata up to where it joined; every delta still comes as an event.
    assert followed.snapshot.job.last_seq >= joined_at.last_seq
    assert followed.snapshot.job.status is JobStatus.STREAMING
    assert followed.seqs == list(range(1, final.last_seq + 1))
    assert followed.text == final.content


@pytest.mark.parametrize("after_seq", [0, 1, 7, 15, 20])
async def test_resume_after_seq_mid_stream_yields_each_later_delta_once(
    autojump_clock: MockClock, tmp_path: Path, after_seq: int
) -> None:
    async with open_service(config(tmp_path), upstream=SimulatedUpstream(10)) as service:
        job = await service.start_job(ALICE, chat())
        # Resume while the job is still streaming, with deltas on both sides of after_seq.
        await wait_until(service, job.id, reached_seq(20), timeout=WAIT)
        followed = await collect(service.follow(ALICE, job.id, after_seq=after_seq))
        final = await service.get_job(ALICE, job.id)

    assert final is not None and final.status is JobStatus.COMPLETE
    assert final.last_seq > 25
    assert followed.seqs == list(range(after_seq + 1, final.last_seq + 1))
    assert followed.status.status is JobStatus.COMPLETE
    assert followed.text == _content_after(final, followed)


def _content_after(final: JobView, followed: Followed) -> str:
    """The final content minus what the deltas before the resumed ones held."""
    skipped = len(final.content) - len(followed.text)
    assert skipped >= 0
    return final.content[skipped:]


async def test_several_followers_resuming_at_once_each_see_their_own_tail(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    starts = [0, 3, 9, 14]
    results: dict[int, Followed] = {}

    async def follow_from(service: Service, job_id: str, after_seq: int) -> None:
        results[after_seq] = await collect(service.follow(ALICE, job_id, after_seq=after_seq))

    async with open_service(config(tmp_path), upstream=SimulatedUpstream(10)) as service:
        job = await service.start_job(ALICE, chat())
        await wait_until(service, job.id, reached_seq(14), timeout=WAIT)
        async with trio.open_nursery() as nursery:
            for after_seq in starts:
                nursery.start_soon(follow_from, service, job.id, after_seq)
        final = await service.get_job(ALICE, job.id)

    assert final is not None
    for after_seq in starts:
        assert results[after_seq].seqs == list(range(after_seq + 1, final.last_seq + 1))
    assert results[0].text == final.content


@pytest.mark.parametrize("after_seq", [None, 0, 5, "last"])
async def test_following_a_finished_job_replays_it(
    autojump_clock: MockClock, tmp_path: Path, after_seq: int | str | None
) -> None:
    async with open_service(config(tmp_path), upstream=SimulatedUpstream(10)) as service:
        job = await service.start_job(ALICE, chat())
        final = await wait_finished(service, job.id, timeout=WAIT)
        resume_from = final.last_seq if after_seq == "last" else after_seq
        assert resume_from is None or isinstance(resume_from, int)
        followed = await collect(service.follow(ALICE, job.id, after_seq=resume_from))

    start = resume_from or 0
    assert followed.snapshot.job.status is JobStatus.COMPLETE
    assert followed.snapshot.job.last_seq == final.last_seq
    assert followed.seqs == list(range(start + 1, final.last_seq + 1))
    if start == 0:
        assert followed.text == final.content
    assert followed.status.status is JobStatus.COMPLETE
    assert followed.status.last_seq == final.last_seq


async def test_another_owners_job_is_not_found(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with open_service(config(tmp_path), upstream=SimulatedUpstream(10)) as service:
        job = await service.start_job(ALICE, chat())
        with pytest.raises(JobNotFound):
            await collect(service.follow(BOB, job.id))
        with pytest.raises(JobNotFound):
            await collect(service.follow(ALICE, "no-such-job"))
        await wait_finished(service, job.id, timeout=WAIT)
        with pytest.raises(JobNotFound):
            await collect(service.follow(BOB, job.id, after_seq=0))


async def test_a_slow_follower_is_dropped_server_side_yet_misses_nothing(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    # One delta per flush, so each reaches the follower as its own event.
    slow_config = config(tmp_path, follower_buffer=4, flush_max_deltas=1)
    async with open_service(slow_config, upstream=SimulatedUpstream(10)) as service:
        job = await service.start_job(ALICE, chat())
        follower = service.follow(ALICE, job.id)
        first = await follower.__anext__()
        assert isinstance(first, SnapshotEvent)

        # Not reading while many more deltas than the buffer holds arrive.
        paused_at = await wait_until(service, job.id, reached_seq(20), timeout=WAIT)
        assert paused_at.status is JobStatus.STREAMING
        assert follower.catch_ups == 0

        rest = [event async for event in follower]
        final = await service.get_job(ALICE, job.id)

    assert final is not None and final.status is JobStatus.COMPLETE
    # It fell behind the log's in-memory tail and read the rest from the store.
    assert follower.catch_ups >= 1
    followed = split([first, *rest])
    assert followed.seqs == list(range(1, final.last_seq + 1))
    assert followed.text == final.content
    assert followed.status.status is JobStatus.COMPLETE


async def test_a_job_watched_at_completion_gets_no_notification(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    async with open_service(config(tmp_path), upstream=SimulatedUpstream(10)) as service:
        watched = await service.start_job(
            ALICE, chat(thread_id="thread-watched", message_id="msg-w")
        )
        unwatched = await service.start_job(
            ALICE, chat(thread_id="thread-away", message_id="msg-u")
        )
        left = await service.start_job(ALICE, chat(thread_id="thread-left", message_id="msg-l"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, service.follow(ALICE, watched.id))

            async def follow_then_leave() -> None:
                async with service.follow(ALICE, left.id) as follower:
                    async for event in follower:
                        if isinstance(event, DeltaEvent) and event.seq >= 3:
                            break

            nursery.start_soon(follow_then_leave)

        for job in (watched, unwatched, left):
            view = await wait_finished(service, job.id, timeout=WAIT)
            assert view.status is JobStatus.COMPLETE
        notified = {n.job_id for n in await service.list_notifications(ALICE)}

    assert watched.id not in notified
    assert notified == {unwatched.id, left.id}


@pytest.mark.parametrize("ending", ["abort", "timeout"])
async def test_a_follower_gets_the_last_deltas_of_a_stopped_job_before_its_status(
    autojump_clock: MockClock, tmp_path: Path, ending: str
) -> None:
    # A long flush interval leaves deltas unwritten when the stream is stopped;
    # the stream stores them as it stops, and the follower must get them too.
    timeout = 2.55 if ending == "timeout" else 300.0
    settings = config(tmp_path, job_timeout=timeout, sweep_interval=0.05, flush_interval=1.0)
    async with open_service(settings, upstream=SimulatedUpstream(10)) as service:
        job = await service.start_job(ALICE, chat())
        results: list[Followed] = []

        async def follow() -> None:
            results.append(await collect(service.follow(ALICE, job.id)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            if ending == "abort":
                await trio.sleep(2.55)
                assert await service.abort_job(ALICE, job.id)
        final = await service.get_job(ALICE, job.id)

    assert final is not None
    assert final.status is (JobStatus.ABORTED if ending == "abort" else JobStatus.ERROR)
    assert final.last_seq > 20
    followed = results[0]
    assert followed.status.status is final.status
    assert followed.status.last_seq == final.last_seq
    assert followed.seqs == list(range(1, final.last_seq + 1))
    assert followed.text == final.content


async def test_every_follower_gets_the_status_live(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    async with open_service(config(tmp_path), upstream=SimulatedUpstream(10)) as service:
        job = await service.start_job(ALICE, chat())
        followers = [service.follow(ALICE, job.id) for _ in range(3)]
        results: list[Followed] = []

        async def follow(follower: JobFollower) -> None:
            results.append(await collect(follower))

        async with trio.open_nursery() as nursery:
            for follower in followers:
                nursery.start_soon(follow, follower)
        final = await service.get_job(ALICE, job.id)

    assert final is not None
    assert [f.catch_ups for f in followers] == [0, 0, 0]
    for followed in results:
        assert followed.status.status is JobStatus.COMPLETE
        assert followed.text == final.content
