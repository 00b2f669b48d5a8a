"""The sweeper on its own: job timeouts and retention, on trio's (mock) clock."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
from trio.testing import MockClock

from actors import ChatRequest, JobStatus, JobView, Owner, Service, ServiceConfig, open_service
from actors.model import NotificationType
from actors.upstream import (
    SimulatedUpstream,
    StreamOpened,
    StreamResult,
    TextDelta,
    UpstreamEvent,
    UpstreamRequest,
)

ALICE = Owner("alice", "ws-1")


class NeverFinishingUpstream:
    """Sends one delta, then waits forever; records the cancellation that ends it."""

    def __init__(self) -> None:
        self.started = 0
        self.cancelled = 0

    async def stream(
        self,
        request: UpstreamRequest,
        on_event: Callable[[UpstreamEvent], Awaitable[None]],
    ) -> StreamResult:
        self.started += 1
        await on_event(StreamOpened("gen-never"))
        await on_event(TextDelta(content="a beginning"))
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            self.cancelled += 1
            raise
        raise AssertionError("sleep_forever returned")

    async def aclose(self) -> None:
        pass


class ByModelUpstream:
    """Never finishes for model ``"forever"``; the simulated model for any other."""

    def __init__(self) -> None:
        self.forever = NeverFinishingUpstream()
        self.simulated = SimulatedUpstream(10)

    async def stream(
        self,
        request: UpstreamRequest,
        on_event: Callable[[UpstreamEvent], Awaitable[None]],
    ) -> StreamResult:
        chosen = self.forever if request.model == "forever" else self.simulated
        return await chosen.stream(request, on_event)

    async def aclose(self) -> None:
        pass


def chat(message_id: str = "msg-1", model: str = "m") -> ChatRequest:
    return ChatRequest(
        model=model,
        messages=[{"role": "user", "content": "sweep me"}],
        thread_id="thread-1",
        message_id=message_id,
    )


def config(tmp_path: Path, **overrides: Any) -> ServiceConfig:
    return ServiceConfig(store="memory", data_dir=tmp_path, **overrides)


async def wait_finished(service: Service, job_id: str) -> JobView:
    with trio.fail_after(600):
        while True:
            view = await service.get_job(ALICE, job_id)
            assert view is not None
            if view.status.is_terminal:
                return view
            await trio.sleep(0.01)


async def test_a_job_past_its_timeout_fails_with_a_notification_and_is_cancelled_upstream(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    upstream = NeverFinishingUpstream()
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
    async with open_service(settings, upstream=ByModelUpstream()) as service:
        # Older than any retention by the end, but never finished: never deleted.
        running = await service.start_job(ALICE, chat("running", model="forever"))
        old = await service.start_job(ALICE, chat("old"))
        old_view = await wait_finished(service, old.id)
        await trio.sleep(60)
        young = await service.start_job(ALICE, chat("young"))
        young_view = await wait_finished(service, young.id)
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
            job = await service.start_job(ALICE, chat(f"round-{round_number}"))
            await wait_finished(service, job.id)
            await trio.sleep(20)
            assert await service.get_job(ALICE, job.id) is None
        sweeper = service.snapshot().find("service/sweeper")
        assert sweeper is not None
        assert sweeper.processed >= 6
        assert sweeper.restarts == 0
