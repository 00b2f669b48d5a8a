"""Notifications: one per finished job, none when aborted or muted, owner-scoped management."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from actors import JobStatus, JobView, Notification, Owner, Service, open_service
from actors.model import NotificationAction, NotificationType
from actors.upstream import SimulatedUpstream
from actors.upstream.simulated import SIMULATE_ERROR_PARAM
from tests.service.kit import ALICE, BOB, chat, config, run_job

ALICE_ELSEWHERE = Owner("alice", "ws-2")
# Virtual seconds on the mock clock: a wait never costs real time.
WAIT = 60.0


async def run_job_in(
    service: Service,
    thread_id: str,
    message_id: str,
    *,
    fail_with: str | None = None,
    owner: Owner = ALICE,
) -> JobView:
    """Run a job for message ``message_id`` of ``thread_id`` and return its finished view.

    With ``fail_with``, the simulated model fails halfway with that message.
    """
    params = {} if fail_with is None else {SIMULATE_ERROR_PARAM: fail_with}
    request = chat(thread_id=thread_id, message_id=message_id, params=params)
    return await run_job(service, request, owner=owner, timeout=WAIT)


async def test_a_completed_job_gets_exactly_one_notification(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    async with open_service(config(tmp_path), upstream=SimulatedUpstream(10)) as service:
        view = await run_job_in(service, "thread-42", "msg-42")
        assert view.status is JobStatus.COMPLETE
        await trio.sleep(5)  # nothing more arrives later
        notes = await service.list_notifications(ALICE)

    assert len(notes) == 1
    note = notes[0]
    assert note.job_id == view.id
    assert (note.user_id, note.workspace_id, note.thread_id) == ("alice", "ws-1", "thread-42")
    assert note.type is NotificationType.COMPLETE
    assert note.type.value == "ai.background.complete"
    assert note.title == "Background response completed"
    assert note.body == "Your background AI response is ready in thread thread-42"
    assert note.actions == (NotificationAction("Open chat", "open_chat", "thread-42", "msg-42"),)
    assert note.read_at is None
    assert view.completed_at is not None
    assert note.created_at >= view.completed_at


async def test_a_failed_job_gets_exactly_one_error_notification(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    async with open_service(config(tmp_path), upstream=SimulatedUpstream(10)) as service:
        view = await run_job_in(service, "thread-7", "msg-7", fail_with="model overloaded")
        await trio.sleep(5)
        notes = await service.list_notifications(ALICE)

    assert view.status is JobStatus.ERROR
    assert view.error is not None and "model overloaded" in view.error
    assert view.content != ""  # the half streamed before the failure is kept
    assert len(notes) == 1
    note = notes[0]
    assert note.job_id == view.id
    assert note.type is NotificationType.ERROR
    assert note.type.value == "ai.background.error"
    assert note.title == "Background response failed"
    assert note.body == f"Failed: {view.error}"
    assert note.actions == (NotificationAction("Open chat", "open_chat", "thread-7", "msg-7"),)


async def test_an_aborted_job_gets_no_notification(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    async with open_service(config(tmp_path), upstream=SimulatedUpstream(10)) as service:
        job = await service.start_job(ALICE, chat())
        await trio.sleep(1)
        assert await service.abort_job(ALICE, job.id)
        await trio.sleep(10)
        view = await service.get_job(ALICE, job.id)
        assert view is not None and view.status is JobStatus.ABORTED
        assert await service.list_notifications(ALICE) == []


async def test_muted_threads_get_no_notifications_until_unmuted(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    async with open_service(config(tmp_path), upstream=SimulatedUpstream(10)) as service:
        await service.mute_thread(ALICE, "quiet")
        muted_ok = await run_job_in(service, "quiet", "m1")
        muted_error = await run_job_in(service, "quiet", "m2", fail_with="x")
        loud = await run_job_in(service, "loud", "m3")
        # Muting is per owner: another user's thread of the same name still notifies.
        bobs = await run_job_in(service, "quiet", "m4", owner=BOB)

        await service.mute_thread(ALICE, "quiet", muted=False)
        after_unmute = await run_job_in(service, "quiet", "m5")

        alice_notified = {n.job_id for n in await service.list_notifications(ALICE)}
        bob_notified = {n.job_id for n in await service.list_notifications(BOB)}

    assert muted_ok.status is JobStatus.COMPLETE and muted_error.status is JobStatus.ERROR
    assert alice_notified == {loud.id, after_unmute.id}
    assert bob_notified == {bobs.id}


async def _three_notifications(service: Service) -> list[Notification]:
    for number in range(3):
        await run_job_in(service, f"thread-{number}", f"msg-{number}")
        await trio.sleep(1)  # distinct creation times, so "newest first" is well defined
    notes = await service.list_notifications(ALICE)
    assert len(notes) == 3
    return notes


async def test_listing_is_newest_first_with_limit_and_unread_filter(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    async with open_service(config(tmp_path), upstream=SimulatedUpstream(10)) as service:
        notes = await _three_notifications(service)
        assert [n.thread_id for n in notes] == ["thread-2", "thread-1", "thread-0"]
        assert await service.list_notifications(ALICE, limit=2) == notes[:2]

        assert await service.mark_read(ALICE, notes[0].id) is True
        unread = await service.list_notifications(ALICE, unread_only=True)
        assert [n.id for n in unread] == [notes[1].id, notes[2].id]
        assert await service.list_notifications(ALICE, unread_only=True, limit=1) == unread[:1]

        everything = await service.list_notifications(ALICE)
        assert everything[0].read_at is not None
        assert all(n.read_at is None for n in everything[1:])


async def test_mark_read_mark_all_read_and_delete(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    async with open_service(config(tmp_path), upstream=SimulatedUpstream(10)) as service:
        notes = await _three_notifications(service)

        assert await service.mark_read(ALICE, notes[1].id) is True
        first_read = await service.list_notifications(ALICE)
        read_at = first_read[1].read_at
        assert read_at is not None
        await trio.sleep(1)
        assert await service.mark_read(ALICE, notes[1].id) is True  # again: unchanged
        assert (await service.list_notifications(ALICE))[1].read_at == read_at
        assert await service.mark_read(ALICE, "no-such-id") is False

        assert await service.mark_all_read(ALICE) == 2
        assert await service.mark_all_read(ALICE) == 0
        assert await service.list_notifications(ALICE, unread_only=True) == []

        assert await service.delete_notification(ALICE, notes[0].id) is True
        assert await service.delete_notification(ALICE, notes[0].id) is False
        assert [n.id for n in await service.list_notifications(ALICE)] == [
            notes[1].id,
            notes[2].id,
        ]


@pytest.mark.parametrize("stranger", [BOB, ALICE_ELSEWHERE])
async def test_notifications_are_owner_scoped(
    autojump_clock: MockClock, tmp_path: Path, stranger: Owner
) -> None:
    async with open_service(config(tmp_path), upstream=SimulatedUpstream(10)) as service:
        notes = await _three_notifications(service)

        assert await service.list_notifications(stranger) == []
        assert await service.mark_read(stranger, notes[0].id) is False
        assert await service.mark_all_read(stranger) == 0
        assert await service.delete_notification(stranger, notes[1].id) is False

        assert await service.list_notifications(ALICE) == notes
        assert all(n.read_at is None for n in notes)


async def test_follow_notifications_receives_new_ones_live(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    received: list[Notification] = []
    bob_received: list[Notification] = []
    both_received = trio.Event()

    async def listen_as_alice(service: Service) -> None:
        async with service.follow_notifications(ALICE) as follower:
            async for note in follower:
                received.append(note)
                if len(received) == 2:
                    both_received.set()
                    return

    async def listen_as_bob(service: Service) -> None:
        async with service.follow_notifications(BOB) as follower:
            async for note in follower:
                bob_received.append(note)

    async with open_service(config(tmp_path), upstream=SimulatedUpstream(10)) as service:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listen_as_alice, service)
            nursery.start_soon(listen_as_bob, service)
            await trio.sleep(0.01)  # both listeners subscribed
            first = await run_job_in(service, "t-a", "m-a")
            second = await run_job_in(service, "t-b", "m-b", fail_with="x")
            with trio.fail_after(5):
                await both_received.wait()
            await trio.sleep(5)
            # Bob has no notification of his own.
            assert bob_received == []
            nursery.cancel_scope.cancel()
        listed = await service.list_notifications(ALICE)

    assert [n.job_id for n in received] == [first.id, second.id]
    assert [n.type for n in received] == [NotificationType.COMPLETE, NotificationType.ERROR]
    assert sorted(n.id for n in received) == sorted(n.id for n in listed)
