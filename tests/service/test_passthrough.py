"""Passthrough: the head set once, the body bounded, in order, and ended by either side."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from actors.jobs.passthrough import PIECES_BUFFERED, Passthrough, PassthroughHead
from actors.model import JobStatus
from actors.upstream import UpstreamError
from tests.service.kit import ALICE, MemoryConfig, OpenSimulatedService, chat, wait_finished


def http_error(status: int, body: bytes) -> UpstreamError:
    return UpstreamError(
        f"http_{status}", "nope", status=status, body=body, content_type="application/json"
    )


async def test_the_first_head_stays() -> None:
    opened = Passthrough()
    opened.open()
    opened.close(http_error(500, b"late"))
    assert await opened.head() == PassthroughHead(200)

    refused = Passthrough()
    refused.close(http_error(401, b'{"error": "no"}'))
    refused.open()
    assert await refused.head() == PassthroughHead(401, b'{"error": "no"}', "application/json")


async def test_an_end_without_an_answer_is_unreached() -> None:
    ended = Passthrough()
    ended.close()
    assert await ended.head() == PassthroughHead(None)

    unreachable = Passthrough()
    unreachable.close(UpstreamError("connection_error", "refused", retryable=True))
    assert await unreachable.head() == PassthroughHead(None)


async def test_the_writer_waits_for_room_and_the_reader_gets_every_piece_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    passthrough = Passthrough()
    pieces = [f"piece {i};".encode() for i in range(PIECES_BUFFERED + 1)]
    sent: list[bytes] = []

    async def write() -> None:
        for piece in pieces:
            await passthrough.send(piece)
            sent.append(piece)
        passthrough.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        await trio.testing.wait_all_tasks_blocked()
        # The channel holds PIECES_BUFFERED; the writer waits with the last one.
        assert sent == pieces[:PIECES_BUFFERED]
        # Every piece waiting comes in one read (the writer's among them, moved
        # into the room the read made), so the route sends fewer, larger writes.
        assert await passthrough.receive_some() == b"".join(pieces)
        await trio.testing.wait_all_tasks_blocked()
        assert sent == pieces
        with pytest.raises(trio.EndOfChannel):
            await passthrough.receive_some()


async def test_once_the_reader_is_gone_pieces_are_dropped_without_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    passthrough = Passthrough()
    passthrough.close_reader()
    with trio.fail_after(1):
        for _ in range(PIECES_BUFFERED * 2):
            await passthrough.send(b"x")
    passthrough.close()
    with pytest.raises(trio.ClosedResourceError):
        await passthrough.send(b"after the end")


async def test_a_cancelled_start_leaves_no_job_waiting_for_a_reader(
    autojump_clock: trio.testing.MockClock,
    memory_config: MemoryConfig,
    open_simulated_service: OpenSimulatedService,
) -> None:
    # The simulated answer is ~47 pieces, more than PIECES_BUFFERED: a job whose
    # reader never came would wait for room until the job timeout.
    config = memory_config(max_foreground_streams=100)
    async with open_simulated_service(config, tokens_per_second=1000.0) as service:
        returned: set[str] = set()
        for checkpoints in range(12):
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:

                    async def cancel_after(n: int = checkpoints) -> None:
                        for _ in range(n):
                            await trio.lowlevel.checkpoint()
                        scope.cancel()

                    nursery.start_soon(cancel_after)
                    started = await service.start_foreground(ALICE, chat())
                    returned.add(started.job.id)
                    started.passthrough.close_reader()
        jobs = await service.list_jobs(ALICE)
        lost = [view.id for view in jobs if view.id not in returned]
        # Some calls were cut off after their job had started: those are the case.
        assert lost, "no call was cancelled between the job's start and its reply"
        with trio.fail_after(60):
            for job_id in lost:
                view = await wait_finished(service, job_id)
                assert view.status is JobStatus.COMPLETE
