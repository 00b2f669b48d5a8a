"""The per-job log on its own, and the persister's one write a tick, with a failing store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import trio
import trio.testing

from actors import JobStatus, open_service
from actors.api import DeltaEvent, StatusEvent
from actors.jobs.log import JobLog
from actors.model import Delta
from actors.stores import MemoryStore, StoreError
from actors.upstream import SimulatedUpstream
from tests.service.kit import ALICE, chat, config, simulated_answer, wait_finished


def stored(job_log: JobLog, limit: int | None = None) -> list[Delta]:
    """Take the log's pending deltas and record them as stored, as the persister does."""
    taken = job_log.take_pending(limit)
    job_log.mark_persisted(taken)
    return taken


def test_appends_number_the_deltas_and_wait_for_the_persister() -> None:
    job_log = JobLog("j", persisted_seq=3)
    assert [job_log.append_nowait(t).seq for t in ("a", "b", "c")] == [4, 5, 6]
    # Nothing is readable before it is stored.
    assert job_log.read_after(3, 10) == []
    assert [d.seq for d in stored(job_log, limit=2)] == [4, 5]
    assert job_log.read_after(3, 10) == [DeltaEvent(4, "a"), DeltaEvent(5, "b")]
    assert job_log.read_after(4, 1) == [DeltaEvent(5, "b")]
    assert job_log.has_pending
    stored(job_log)
    assert job_log.persisted_seq == 6 and not job_log.has_pending


def test_a_reader_behind_the_tail_is_sent_to_the_store() -> None:
    job_log = JobLog("j", tail_size=2)
    for text in "abcd":
        job_log.append_nowait(text)
    stored(job_log)
    assert job_log.read_after(2, 10) == [DeltaEvent(3, "c"), DeltaEvent(4, "d")]
    assert job_log.read_after(1, 10) is None


def test_deltas_given_back_come_first_and_close_drops_what_was_never_stored() -> None:
    job_log = JobLog("j")
    job_log.append_nowait("a")
    taken = job_log.take_pending()
    job_log.append_nowait("b")
    job_log.give_back(taken)
    assert [d.content for d in job_log.take_pending()] == ["a", "b"]
    job_log.append_nowait("c")
    job_log.close(StatusEvent(JobStatus.ABORTED, None, None, None, 0))
    assert not job_log.has_pending
    # The watermark stays where the close put it, and appends are refused.
    job_log.mark_persisted([Delta("j", 3, "c")])
    assert job_log.persisted_seq == 0
    with pytest.raises(trio.ClosedResourceError):
        job_log.append_nowait("d")


async def test_a_waiting_reader_wakes_when_its_delta_is_stored_or_the_job_ends() -> None:
    job_log = JobLog("j")
    woken: list[int] = []

    async def reader() -> None:
        await job_log.wait_for(0)
        woken.append(job_log.persisted_seq)
        await job_log.wait_for(1)
        woken.append(-1 if job_log.final is not None else job_log.persisted_seq)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        job_log.append_nowait("a")
        await trio.testing.wait_all_tasks_blocked()
        assert woken == []
        stored(job_log)
        await trio.testing.wait_all_tasks_blocked()
        assert woken == [1]
        job_log.close(StatusEvent(JobStatus.COMPLETE, None, "stop", None, 1))
    assert woken == [1, -1]


async def test_flushed_waits_for_every_appended_delta_to_be_stored() -> None:
    job_log = JobLog("j")
    with trio.testing.assert_checkpoints():
        await job_log.flushed()
    job_log.append_nowait("a")
    with trio.move_on_after(0.01) as waited:
        await job_log.flushed()
    assert waited.cancelled_caught
    stored(job_log)
    with trio.fail_after(1):
        await job_log.flushed()


async def test_an_ending_job_takes_its_last_deltas_after_the_write_in_flight() -> None:
    """Sealed, the log takes no more appends; settled waits for the persister's write,
    so the rest is written after it (a store skips seqs below what it holds)."""
    job_log = JobLog("j")
    job_log.append_nowait("a")
    in_flight = job_log.take_pending()
    job_log.append_nowait("b")
    job_log.seal()
    with pytest.raises(trio.ClosedResourceError):
        job_log.append_nowait("c")
    with trio.move_on_after(0.01) as waited:
        await job_log.settled()
    assert waited.cancelled_caught
    job_log.give_back(in_flight)  # the write failed
    with trio.testing.assert_checkpoints(), trio.fail_after(1):
        await job_log.settled()
    assert [d.content for d in job_log.take_pending()] == ["a", "b"]


async def test_a_failed_store_write_loses_nothing(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed write puts the deltas back in their logs, and the persister stores them
    on a later try, without a crash: the answer is whole."""
    real_append_many = MemoryStore.append_many
    failures = 2

    async def flaky(self: MemoryStore, batches: Mapping[str, Sequence[Delta]]) -> None:
        nonlocal failures
        if failures and any(batches.values()):
            failures -= 1
            raise StoreError("disk hiccup")
        await real_append_many(self, batches)

    monkeypatch.setattr(MemoryStore, "append_many", flaky)
    async with open_service(config(tmp_path), upstream=SimulatedUpstream(50)) as service:
        job = await service.start_job(ALICE, chat())
        view = await wait_finished(service, job.id, timeout=60)
        node = service.snapshot().find("service/persister")
        assert node is not None and node.restarts == 0
    assert failures == 0
    assert view.status is JobStatus.COMPLETE
    assert view.content == await simulated_answer()
    assert view.last_seq == view.chunks_received
