"""Two lifetimes of the service on one SQLite store: shutdown, drain and restart recovery."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio

from actors import JobStatus, ServerBusy, ServiceConfig, open_service
from actors.model import Delta, Job, NotificationType
from actors.stores import StoreFactory
from actors.upstream import SimulatedUpstream
from tests.service.kit import ALICE, HangingUpstream, chat, config, wait_finished, wait_until


def sqlite_config(tmp_path: Path, **overrides: Any) -> ServiceConfig:
    """The SQLite store under ``tmp_path``, flushing every 10 ms."""
    return config(tmp_path, store="sqlite", flush_interval=0.01, **overrides)


async def test_shutdown_interrupts_running_jobs_and_the_next_lifetime_has_everything(
    tmp_path: Path,
) -> None:
    upstream = HangingUpstream("partial answer", others=SimulatedUpstream(2000))
    async with open_service(sqlite_config(tmp_path, drain_timeout=0), upstream=upstream) as first:
        done = await first.start_job(ALICE, chat(message_id="done"))
        done_view = await wait_finished(first, done.id)
        assert done_view.status is JobStatus.COMPLETE
        hanging = await first.start_job(
            ALICE, chat("hang", message_id="hanging", thread_id="thread-2")
        )
        await wait_until(first, hanging.id, lambda v: v.content == "partial answer")
        notes_before = await first.list_notifications(ALICE)
        assert [n.job_id for n in notes_before] == [done.id]

    assert upstream.cancelled == 1

    async with open_service(sqlite_config(tmp_path), upstream=SimulatedUpstream(2000)) as second:
        interrupted = await second.get_job(ALICE, hanging.id)
        assert interrupted is not None
        assert interrupted.status is JobStatus.ERROR
        assert interrupted.error == "interrupted: server shut down"
        assert interrupted.content == "partial answer"
        assert interrupted.completed_at is not None

        kept = await second.get_job(ALICE, done.id)
        assert kept is not None
        assert kept.status is JobStatus.COMPLETE
        assert kept.content == done_view.content
        assert kept.usage == done_view.usage

        notes = await second.list_notifications(ALICE)
        assert len(notes) == 2
        by_job = {n.job_id: n for n in notes}
        assert by_job[done.id] == notes_before[0]
        assert by_job[hanging.id].type is NotificationType.ERROR
        assert by_job[hanging.id].body == "Failed: interrupted: server shut down"

        # The replay of a job from an earlier lifetime still works.
        events = [event async for event in second.follow(ALICE, done.id)]
        assert len(events) == done_view.last_seq + 2


def _job(job_id: str, status: JobStatus) -> Job:
    return Job(
        id=job_id,
        user_id=ALICE.user_id,
        workspace_id=ALICE.workspace_id,
        thread_id="thread-killed",
        message_id=f"msg-{job_id}",
        model="m",
        status=status,
        started_at=datetime.now(UTC),
    )


async def _write_jobs_of_a_killed_process(data_dir: Path) -> None:
    """Leave jobs the way a process killed mid-stream would: one streaming with some
    deltas stored, one still queued (its upstream had not answered yet)."""
    stores = StoreFactory(sqlite_config(data_dir))
    try:
        store = await stores.get()
        await store.create_job(_job("killed-job", JobStatus.STREAMING))
        await store.append_deltas(
            "killed-job",
            [Delta("killed-job", 1, "cut "), Delta("killed-job", 2, "short", reasoning="hmm")],
        )
        await store.create_job(_job("queued-job", JobStatus.QUEUED))
    finally:
        await stores.aclose()


async def test_a_job_left_streaming_by_a_killed_process_is_recovered_on_start(
    tmp_path: Path,
) -> None:
    async with open_service(sqlite_config(tmp_path), upstream=SimulatedUpstream(2000)) as first:
        done = await first.start_job(ALICE, chat(message_id="done"))
        done_view = await wait_finished(first, done.id)
        notes_before = await first.list_notifications(ALICE)

    await _write_jobs_of_a_killed_process(tmp_path)

    async with open_service(sqlite_config(tmp_path), upstream=SimulatedUpstream(2000)) as second:
        recovered = await second.get_job(ALICE, "killed-job")
        assert recovered is not None
        assert recovered.status is JobStatus.ERROR
        assert recovered.error == "interrupted: server restarted"
        assert recovered.content == "cut short"
        assert recovered.reasoning == "hmm"
        assert recovered.chunks_received == 2
        assert recovered.completed_at is not None

        queued = await second.get_job(ALICE, "queued-job")
        assert queued is not None
        assert queued.status is JobStatus.ERROR
        assert queued.error == "interrupted: server restarted"
        assert queued.content == ""

        kept = await second.get_job(ALICE, done.id)
        assert kept == done_view

        notes = await second.list_notifications(ALICE)
        by_job = {n.job_id: n for n in notes}
        assert set(by_job) == {done.id, "killed-job", "queued-job"}
        assert by_job[done.id] == notes_before[0]
        assert by_job["killed-job"].type is NotificationType.ERROR
        assert by_job["killed-job"].body == "Failed: interrupted: server restarted"
        assert by_job["killed-job"].thread_id == "thread-killed"

        # New work goes on as usual after a recovery.
        fresh = await second.start_job(ALICE, chat(message_id="fresh"))
        assert (await wait_finished(second, fresh.id)).status is JobStatus.COMPLETE

    # A third start recovers nothing more and notifies nobody twice.
    async with open_service(sqlite_config(tmp_path), upstream=SimulatedUpstream(2000)) as third:
        notes = await third.list_notifications(ALICE)
        expected = [done.id, "killed-job", "queued-job", fresh.id]
        assert sorted(n.job_id for n in notes) == sorted(expected)
        again = await third.get_job(ALICE, "killed-job")
        assert again == recovered


async def test_graceful_exit_lets_running_jobs_finish_within_the_drain_timeout(
    tmp_path: Path,
) -> None:
    # About 50 tokens at 200 per second: a quarter of a second, well inside the drain.
    async with open_service(
        sqlite_config(tmp_path, drain_timeout=5), upstream=SimulatedUpstream(200)
    ) as first:
        job = await first.start_job(ALICE, chat(message_id="draining"))
        view = await first.get_job(ALICE, job.id)
        assert view is not None and not view.status.is_terminal
        started = trio.current_time()
    assert trio.current_time() - started < 5

    async with open_service(sqlite_config(tmp_path), upstream=SimulatedUpstream(2000)) as second:
        finished = await second.get_job(ALICE, job.id)
        assert finished is not None
        assert finished.status is JobStatus.COMPLETE
        assert finished.error is None
        assert finished.content.endswith("Have a nice day!")
        notes = await second.list_notifications(ALICE)
        assert [(n.job_id, n.type) for n in notes] == [(job.id, NotificationType.COMPLETE)]


async def test_jobs_still_running_at_the_end_of_the_drain_are_interrupted(
    tmp_path: Path,
) -> None:
    upstream = HangingUpstream("partial answer", others=SimulatedUpstream(2000))
    async with open_service(sqlite_config(tmp_path, drain_timeout=0.2), upstream=upstream) as first:
        quick = await first.start_job(ALICE, chat(message_id="quick"))
        stuck = await first.start_job(ALICE, chat("hang", message_id="stuck"))
        await wait_until(first, stuck.id, lambda v: v.content == "partial answer")
        started = trio.current_time()
    assert trio.current_time() - started >= 0.2
    assert upstream.cancelled == 1

    async with open_service(sqlite_config(tmp_path), upstream=SimulatedUpstream(2000)) as second:
        quick_view = await second.get_job(ALICE, quick.id)
        stuck_view = await second.get_job(ALICE, stuck.id)
    assert quick_view is not None and quick_view.status is JobStatus.COMPLETE
    assert stuck_view is not None
    assert stuck_view.status is JobStatus.ERROR
    assert stuck_view.error == "interrupted: server shut down"
    assert stuck_view.content == "partial answer"


async def test_a_draining_service_refuses_new_jobs(tmp_path: Path) -> None:
    async with open_service(sqlite_config(tmp_path), upstream=SimulatedUpstream(200)) as service:
        running = await service.start_job(ALICE, chat(message_id="running"))
        assert await service.drain(timeout=5) == 0
        with pytest.raises(ServerBusy):
            await service.start_job(ALICE, chat(message_id="too-late"))
        view = await service.get_job(ALICE, running.id)
        assert view is not None and view.status is JobStatus.COMPLETE
        assert [v.id for v in await service.list_jobs(ALICE)] == [running.id]
