"""Jobs through the Service facade: start, poll with offsets, list, abort, stored deltas, keys."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import structlog
import trio
from trio.testing import MockClock

from actors import JobStatus, Owner, Service, ServiceConfig, UserKeyNotAllowed, open_service
from actors.messages import StreamFailed, StreamFinished
from actors.model import NotificationType, Usage
from actors.upstream import OpenAICompatibleUpstream, SimulatedUpstream
from tests.fake_upstream import FakeUpstream, Script
from tests.service.kit import ALICE, BOB, chat, config, wait_finished, wait_until

SERVER_KEY = "sk-or-server-secret-7f3a9c"
USER_KEY = "sk-or-user-secret-2b8e41"
# Real seconds: the tests on the fake upstream talk HTTP over real sockets.
FAKE_WAIT = 5.0


@asynccontextmanager
async def open_on_fake(fake: FakeUpstream, settings: ServiceConfig) -> AsyncIterator[Service]:
    """A service whose upstream is the OpenAI-compatible client talking to ``fake``."""
    async with (
        OpenAICompatibleUpstream(fake.base_url, "sk-test", idle_timeout=30.0) as upstream,
        open_service(settings, upstream=upstream) as service,
    ):
        yield service


# -- polling -----------------------------------------------------------------------


async def test_content_grows_and_offset_returns_only_the_new_part(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    async with open_service(config(tmp_path), upstream=SimulatedUpstream(10)) as service:
        job = await service.start_job(ALICE, chat())
        assert job.status in (JobStatus.QUEUED, JobStatus.STREAMING)

        await trio.sleep(1.05)
        first = await service.get_job(ALICE, job.id)
        assert first is not None
        assert first.status is JobStatus.STREAMING
        assert first.offset == 0
        assert first.content != ""
        assert first.content_length == len(first.content)

        await trio.sleep(1.0)
        second = await service.get_job(ALICE, job.id, offset=first.content_length)
        assert second is not None
        assert second.offset == first.content_length
        assert second.content != ""
        assert second.content_length == first.content_length + len(second.content)

        final = await wait_finished(service, job.id)
        assert final.status is JobStatus.COMPLETE
        assert final.content.startswith(first.content + second.content)
        assert final.content_length == len(final.content)

        tail = await service.get_job(ALICE, job.id, offset=second.content_length)
        assert tail is not None
        assert tail.content == final.content[second.content_length :]
        past_the_end = await service.get_job(ALICE, job.id, offset=final.content_length + 100)
        assert past_the_end is not None
        assert past_the_end.content == ""
        assert past_the_end.offset == final.content_length


async def test_get_job_is_owner_scoped(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with open_service(config(tmp_path), upstream=SimulatedUpstream(10)) as service:
        job = await service.start_job(ALICE, chat())
        assert await service.get_job(BOB, job.id) is None
        assert await service.get_job(Owner("alice", "ws-other"), job.id) is None
        assert await service.get_job(ALICE, "no-such-job") is None
        await wait_finished(service, job.id)
        assert await service.get_job(BOB, job.id) is None


async def test_list_jobs_filters_by_status_newest_first(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    async with open_service(config(tmp_path), upstream=SimulatedUpstream(10)) as service:
        done = await service.start_job(ALICE, chat(message_id="a"))
        await wait_finished(service, done.id)
        aborted = await service.start_job(ALICE, chat(message_id="b"))
        await trio.sleep(0.5)
        assert await service.abort_job(ALICE, aborted.id)
        await trio.sleep(0.5)
        running = await service.start_job(ALICE, chat(message_id="c"))
        await trio.sleep(0.5)
        others = await service.start_job(BOB, chat(message_id="d"))

        everything = await service.list_jobs(ALICE)
        assert [v.id for v in everything] == [running.id, aborted.id, done.id]
        assert all(v.content == "" and v.content_length > 0 for v in everything)
        for view in everything:
            whole = await service.get_job(ALICE, view.id)
            assert whole is not None and view.content_length == len(whole.content)

        by_status = {
            status: [v.id for v in await service.list_jobs(ALICE, status)] for status in JobStatus
        }
        assert by_status[JobStatus.COMPLETE] == [done.id]
        assert by_status[JobStatus.ABORTED] == [aborted.id]
        assert by_status[JobStatus.STREAMING] == [running.id]
        assert by_status[JobStatus.ERROR] == []
        assert [v.id for v in await service.list_jobs(BOB)] == [others.id]


# -- abort --------------------------------------------------------------------------


async def test_abort_is_idempotent_and_owner_scoped(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    async with open_service(config(tmp_path), upstream=SimulatedUpstream(10)) as service:
        job = await service.start_job(ALICE, chat())
        await trio.sleep(0.5)

        assert await service.abort_job(BOB, job.id) is False
        view = await service.get_job(ALICE, job.id)
        assert view is not None and view.status is JobStatus.STREAMING

        assert await service.abort_job(ALICE, job.id) is True
        assert await service.abort_job(ALICE, job.id) is False
        assert await service.abort_job(ALICE, "no-such-job") is False
        view = await service.get_job(ALICE, job.id)
        assert view is not None
        assert view.status is JobStatus.ABORTED
        assert view.completed_at is not None
        assert view.error is None

        complete = await service.start_job(ALICE, chat(message_id="2"))
        await wait_finished(service, complete.id)
        assert await service.abort_job(ALICE, complete.id) is False
        view = await service.get_job(ALICE, complete.id)
        assert view is not None and view.status is JobStatus.COMPLETE


async def test_abort_closes_the_upstream_connection(fake: FakeUpstream, tmp_path: Path) -> None:
    fake.script("slow", Script.stream().content("first words ").hang())
    settings = config(tmp_path, flush_interval=0.01)
    async with open_on_fake(fake, settings) as service:
        job = await service.start_job(ALICE, chat("slow"))
        await wait_until(service, job.id, lambda v: v.content == "first words ", timeout=FAKE_WAIT)
        request = fake.requests[-1]
        assert not request.client_disconnected.is_set()

        assert await service.abort_job(ALICE, job.id)
        with trio.fail_after(5):
            await request.client_disconnected.wait()
        view = await service.get_job(ALICE, job.id)
        assert view is not None
        assert view.status is JobStatus.ABORTED
        assert view.content == "first words "
        assert await service.list_notifications(ALICE) == []


async def test_a_late_completion_after_abort_changes_nothing(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    # The finish would come right after the first token, racing the abort.
    fake.script("racy", Script.stream().content("one ").sleep(0.05).content("two").finish().done())
    settings = config(tmp_path, flush_interval=0.01)
    async with open_on_fake(fake, settings) as service:
        job = await service.start_job(ALICE, chat("racy"))
        await wait_until(service, job.id, lambda v: v.content == "one ", timeout=FAKE_WAIT)
        assert await service.abort_job(ALICE, job.id)
        aborted = await service.get_job(ALICE, job.id)
        assert aborted is not None

        # Reports a stream might still have in flight when the abort landed.
        registry = service.system.lookup("service/registry")
        assert registry is not None
        await registry.tell(StreamFinished(job.id, "stop", Usage(cost=1.0), "gen-late"))
        await registry.tell(StreamFailed(job.id, "late failure"))
        await trio.sleep(0.2)

        after = await service.get_job(ALICE, job.id)
        assert after == aborted
        assert after.status is JobStatus.ABORTED
        assert after.finish_reason is None and after.error is None and after.usage is None
        assert await service.list_notifications(ALICE) == []


# -- what gets stored ---------------------------------------------------------------------


async def test_every_delta_is_stored_with_reasoning_finish_and_usage(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    pieces = [f"w{i} " for i in range(37)]
    script = Script.stream().keepalive().reasoning("Let me ").reasoning("think.")
    for piece in pieces:
        script = script.content(piece)
    script = (
        script.finish("length")
        .usage(prompt_tokens=11, completion_tokens=39, reasoning_tokens=2, cost=0.0123)
        .done()
    )
    fake.script("full", script)
    # A batch bound smaller than the answer: the deltas arrive in several writes.
    settings = config(tmp_path, flush_interval=0.01, flush_max_deltas=5)
    async with open_on_fake(fake, settings) as service:
        job = await service.start_job(ALICE, chat("full"))
        view = await wait_finished(service, job.id)

    assert view.status is JobStatus.COMPLETE
    assert view.content == "".join(pieces)
    assert view.reasoning == "Let me think."
    assert view.chunks_received == len(pieces) + 2
    assert view.last_seq == len(pieces) + 2
    assert view.finish_reason == "length"
    assert view.usage == Usage(
        prompt_tokens=11, completion_tokens=39, total_tokens=50, reasoning_tokens=2, cost=0.0123
    )
    assert view.generation_id == "gen-fake-1"
    assert view.error is None


async def test_mid_stream_content_holds_every_delta_so_far(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    pieces = [f"t{i} " for i in range(23)]
    script = Script.stream()
    for piece in pieces:
        script = script.content(piece)
    fake.script("partial", script.hang())
    settings = config(tmp_path, flush_interval=0.01)
    async with open_on_fake(fake, settings) as service:
        job = await service.start_job(ALICE, chat("partial"))
        view = await wait_until(
            service, job.id, lambda v: v.chunks_received == len(pieces), timeout=FAKE_WAIT
        )
        assert view.status is JobStatus.STREAMING
        assert view.content == "".join(pieces)
        assert view.generation_id == "gen-fake-1"
        assert await service.abort_job(ALICE, job.id)


# -- API keys -------------------------------------------------------------------------------


async def test_user_api_key_is_refused_when_the_server_has_a_key_and_disallows_them(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    settings = config(tmp_path, upstream_api_key="sk-server", allow_user_api_keys=False)
    async with open_service(settings, upstream=SimulatedUpstream(10)) as service:
        with pytest.raises(UserKeyNotAllowed) as refused:
            await service.start_job(ALICE, chat(api_key=USER_KEY))
        assert USER_KEY not in str(refused.value)
        assert await service.list_jobs(ALICE) == []


def _everything_shown(service: Service, *values: object) -> str:
    return " ".join(repr(value) for value in (*values, service.snapshot(), service.config))


async def _collect(follower: AsyncIterator[Any]) -> list[Any]:
    return [event async for event in follower]


def _files_under(directory: Path) -> dict[str, bytes]:
    """Every file's bytes (the database, its WAL and journal files), by name."""
    return {path.name: path.read_bytes() for path in directory.rglob("*") if path.is_file()}


async def test_user_api_key_is_the_bearer_and_is_never_kept_or_shown(
    fake: FakeUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.script("mine", Script.text("Hello with your own key"))
    settings = config(
        tmp_path,
        store="sqlite",
        upstream="openai",
        upstream_base_url=fake.base_url,
        upstream_api_key=SERVER_KEY,
        allow_user_api_keys=True,
        flush_interval=0.01,
    )
    with structlog.testing.capture_logs() as logs:
        async with open_service(settings) as service:
            request = chat("mine", api_key=USER_KEY)
            assert USER_KEY not in repr(request)
            job = await service.start_job(ALICE, request)
            view = await wait_finished(service, job.id)
            assert view.status is JobStatus.COMPLETE
            assert view.content == "Hello with your own key"
            assert fake.requests[-1].headers["authorization"] == f"Bearer {USER_KEY}"
            assert "api_key" not in {field.name for field in attrs.fields(type(job))}

            listed = await service.list_jobs(ALICE)
            events = await _collect(service.follow(ALICE, job.id))
            notes = await service.list_notifications(ALICE)
            shown = _everything_shown(service, job, view, listed, events, notes)
            assert USER_KEY not in shown
            assert SERVER_KEY not in shown

    assert USER_KEY not in repr(logs) and SERVER_KEY not in repr(logs)
    assert USER_KEY not in caplog.text and SERVER_KEY not in caplog.text
    for name, data in _files_under(tmp_path).items():
        assert USER_KEY.encode() not in data, name
        assert SERVER_KEY.encode() not in data, name


async def test_server_key_never_appears_in_logs_records_or_errors(
    fake: FakeUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.script("ok", Script.text("fine answer"))
    # An upstream that echoes the key back in its error message.
    fake.script("echo", Script.status(401, message=f"Invalid key {SERVER_KEY} for this account"))
    settings = config(
        tmp_path,
        upstream="openai",
        upstream_base_url=fake.base_url,
        upstream_api_key=SERVER_KEY,
        flush_interval=0.01,
    )
    with structlog.testing.capture_logs() as logs:
        async with open_service(settings) as service:
            good = await service.start_job(ALICE, chat("ok"))
            bad = await service.start_job(ALICE, chat("echo", message_id="msg-2"))
            good_view = await wait_finished(service, good.id)
            bad_view = await wait_finished(service, bad.id)
            assert fake.requests[0].headers["authorization"] == f"Bearer {SERVER_KEY}"
            assert good_view.status is JobStatus.COMPLETE
            assert bad_view.status is JobStatus.ERROR
            assert bad_view.error is not None and "Invalid key" in bad_view.error
            notes = await service.list_notifications(ALICE)
            assert {n.type for n in notes} == {
                NotificationType.COMPLETE,
                NotificationType.ERROR,
            }
            shown = _everything_shown(service, good_view, bad_view, notes)
            assert SERVER_KEY not in shown
            assert SERVER_KEY not in str(service.config)

    assert logs, "the service logged nothing, so the check below would prove nothing"
    assert SERVER_KEY not in repr(logs)
    assert SERVER_KEY not in caplog.text
