"""The sweeper on its own: job timeouts and retention, on trio's (mock) clock."""

from __future__ import annotations

from pathlib import Path

import trio
from trio.testing import MockClock

from actors import JobStatus, open_service
from actors.model import NotificationType
from actors.upstream import SimulatedUpstream
from tests.service.kit import ALICE, HangingUpstream, chat, config, wait_finished

# Virtual seconds on the mock clock: a wait never costs real time.
WAIT = 600.0


async def test_a_job_past_its_timeout_fails_with_a_notification_and_is_cancelled_upstream(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    upstream = HangingUpstream("a beginning")
    settings = config(tmp_path, job_timeout=30.0, sweep_interval=5.0)
    async with open_service(settings, upstream=upstream) as service:
        job = await service.start_job(ALICE, chat())
        await trio.sleep(20)
        view = await service.get_job(ALICE, job.id)
        assert view is not None
        assert view.status is JobStatus.STREAMING
        assert upstream.cancelled == 0

        await trio.sleep(20)
        view = await service.get_job(ALICE, job.id)
        assert view is not None
        assert view.status is JobStatus.ERROR
        assert view.error == "Job timed out"
        assert view.content == "a beginning"
        assert upstream.cancelled == 1
        assert view.completed_at is not None
        # Swept within one interval of the deadline.
        assert 30.0 <= (view.completed_at - view.started_at).total_seconds() <= 35.0

        notes = await service.list_notifications(ALICE)
        assert [(n.job_id, n.type, n.body) for n in notes] == [
            (job.id, NotificationType.ERROR, "Failed: Job timed out")
        ]
        assert upstream.started == 1


async def test_finished_jobs_are_deleted_after_retention_and_younger_ones_kept(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    settings = config(tmp_path, retention=100.0, sweep_interval=10.0, job_timeout=1000.0)
    upstream = HangingUpstream("a beginning", others=SimulatedUpstream(10))
    async with open_service(settings, upstream=upstream) as service:
        # Older than any retention by the end, but never finished: never deleted.
        running = await service.start_job(ALICE, chat("hang", message_id="running"))
        old = await service.start_job(ALICE, chat(message_id="old"))
        old_view = await wait_finished(service, old.id, timeout=WAIT)
        await trio.sleep(60)
        young = await service.start_job(ALICE, chat(message_id="young"))
        young_view = await wait_finished(service, young.id, timeout=WAIT)
        assert old_view.completed_at is not None and young_view.completed_at is not None

        # Past the old job's retention (plus one sweep), not yet the young one's.
        await trio.sleep(100 - 60 + 15)
        assert await service.get_job(ALICE, old.id) is None
        kept = await service.get_job(ALICE, young.id)
        assert kept is not None and kept.status is JobStatus.COMPLETE
        assert kept.content == young_view.content
        assert {v.id for v in await service.list_jobs(ALICE)} == {young.id, running.id}

        await trio.sleep(60)
        assert await service.get_job(ALICE, young.id) is None
        still = await service.get_job(ALICE, running.id)
        assert still is not None and still.status is JobStatus.STREAMING
        assert still.content == "a beginning"


async def test_the_sweeper_keeps_sweeping_on_its_own(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    settings = config(tmp_path, retention=5.0, sweep_interval=10.0)
    async with open_service(settings, upstream=SimulatedUpstream(100)) as service:
        for round_number in range(3):
            job = await service.start_job(ALICE, chat(message_id=f"round-{round_number}"))
            await wait_finished(service, job.id, timeout=WAIT)
            await trio.sleep(20)
            assert await service.get_job(ALICE, job.id) is None
        sweeper = service.snapshot().find("service/sweeper")
        assert sweeper is not None
        assert sweeper.processed >= 6
        assert sweeper.restarts == 0
