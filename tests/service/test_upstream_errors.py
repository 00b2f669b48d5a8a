"""Upstream failures end the job as ``error`` with an error notification (fake upstream, HTTP)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from actors import JobStatus, JobView, Service, open_service
from actors.model import Notification, NotificationType
from actors.upstream import OpenAICompatibleUpstream
from tests.fake_upstream import FakeUpstream, Script
from tests.service.kit import ALICE, chat, config, run_job

IDLE_TIMEOUT = 0.3


@pytest.fixture
async def service(fake: FakeUpstream, tmp_path: Path) -> AsyncIterator[Service]:
    async with (
        OpenAICompatibleUpstream(
            fake.base_url,
            "sk-test",
            idle_timeout=IDLE_TIMEOUT,
            backoff_initial=0.01,
            backoff_max=0.02,
        ) as upstream,
        open_service(config(tmp_path, flush_interval=0.01), upstream=upstream) as running,
    ):
        yield running


async def only_notification(service: Service) -> Notification:
    # A notification is created right after the terminal status is recorded.
    with trio.fail_after(5):
        while True:
            notes = await service.list_notifications(ALICE)
            if notes:
                break
            await trio.sleep(0.01)
    assert len(notes) == 1
    return notes[0]


async def assert_error_notified(service: Service, view: JobView) -> None:
    assert view.status is JobStatus.ERROR
    assert view.completed_at is not None
    note = await only_notification(service)
    assert note.job_id == view.id
    assert note.type is NotificationType.ERROR
    assert note.title == "Background response failed"
    assert note.body == f"Failed: {view.error}"


async def test_non_2xx_answer_fails_the_job_with_the_upstream_message(
    fake: FakeUpstream, service: Service
) -> None:
    fake.script("m", Script.status(401, message="No auth credentials found"))
    view = await run_job(service, chat("m"))

    assert view.error is not None
    assert "No auth credentials found" in view.error
    assert view.content == ""
    await assert_error_notified(service, view)
    assert len(fake.requests) == 1  # 401 is never retried


async def test_429_with_retry_after_then_success_completes(
    fake: FakeUpstream, service: Service
) -> None:
    fake.script(
        "m",
        Script.status(429, message="rate limited", retry_after=0.05),
        Script.text("Hello after waiting"),
    )
    view = await run_job(service, chat("m"))

    assert view.status is JobStatus.COMPLETE
    assert view.error is None
    assert view.content == "Hello after waiting"
    assert view.generation_id == "gen-fake-2"
    assert len(fake.requests) == 2
    note = await only_notification(service)
    assert note.type is NotificationType.COMPLETE


async def test_mid_stream_error_object_is_an_error_never_complete(
    fake: FakeUpstream, service: Service
) -> None:
    fake.script(
        "m",
        Script.stream().content("The answer ").content("is ").error(502, "provider down").done(),
    )
    view = await run_job(service, chat("m"))

    assert view.error is not None
    assert "provider down" in view.error
    assert view.content == "The answer is "
    assert view.finish_reason is None
    await assert_error_notified(service, view)
    assert len(fake.requests) == 1  # text already went out: no retry


async def test_truncated_stream_is_an_error_and_keeps_the_partial_content(
    fake: FakeUpstream, service: Service
) -> None:
    fake.script("m", Script.stream().content("Half an ").content("answ"))
    view = await run_job(service, chat("m"))

    assert view.error is not None
    assert "truncated" in view.error
    assert view.content == "Half an answ"
    assert view.chunks_received == 2
    await assert_error_notified(service, view)


async def test_idle_upstream_times_out_as_an_error_and_is_disconnected(
    fake: FakeUpstream, service: Service
) -> None:
    fake.script("m", Script.stream().content("Then ").hang())
    started = trio.current_time()
    view = await run_job(service, chat("m"))

    assert trio.current_time() - started >= IDLE_TIMEOUT
    assert view.error is not None
    assert "idle_timeout" in view.error
    assert view.content == "Then "
    await assert_error_notified(service, view)
    with trio.fail_after(5):
        await fake.requests[-1].client_disconnected.wait()


async def test_upstream_that_never_answers_times_out_as_an_error(
    fake: FakeUpstream, service: Service
) -> None:
    fake.script("m", Script.stream().hang())
    view = await run_job(service, chat("m"))

    assert view.error is not None
    assert "idle_timeout" in view.error
    assert view.content == ""
    await assert_error_notified(service, view)


async def test_server_errors_are_retried_then_fail_with_a_notification(
    fake: FakeUpstream, service: Service
) -> None:
    fake.script("m", Script.status(502, message="bad gateway upstream"))
    view = await run_job(service, chat("m"))

    assert view.error is not None
    assert "bad gateway upstream" in view.error
    await assert_error_notified(service, view)
    assert len(fake.requests) == 4  # the upstream client's default attempts


async def test_a_stream_cut_before_any_output_is_retried_without_duplicates(
    fake: FakeUpstream, service: Service
) -> None:
    fake.script("m", Script.stream(), Script.text("Only once please"))
    view = await run_job(service, chat("m"))

    assert view.status is JobStatus.COMPLETE
    assert view.content == "Only once please"
    assert view.chunks_received == 3
    assert view.generation_id == "gen-fake-2"
    assert len(fake.requests) == 2


async def test_keepalives_prove_liveness_past_the_idle_timeout(
    fake: FakeUpstream, service: Service
) -> None:
    script = Script.stream().content("Thinking... ")
    for _ in range(5):  # 0.5 s in all, past the 0.3 s idle timeout
        script = script.sleep(0.1).keepalive()
    fake.script("m", script.content("done").finish().usage().done())
    view = await run_job(service, chat("m"))

    assert view.status is JobStatus.COMPLETE
    assert view.content == "Thinking... done"
    assert view.usage is not None and view.usage.cost == 0.00042
