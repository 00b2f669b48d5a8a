"""Deltas reach the store in batches bounded by size and by time, none lost: one
write per flush tick carries the new deltas of every running job."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from actors import JobStatus, open_service
from actors.model import Delta
from actors.stores import MemoryStore
from actors.upstream import StreamOpened, StreamResult, TextDelta, UpstreamEvent, UpstreamRequest
from tests.service.kit import ALICE, chat, config

BURST = 10
MAX_BATCH = 4
INTERVAL = 0.05


class BurstThenPauseUpstream:
    """``BURST`` deltas at once, a one-second pause, one last delta, then the end."""

    def __init__(self) -> None:
        self.sent_at: list[float] = []

    async def stream(
        self,
        request: UpstreamRequest,
        on_event: Callable[[UpstreamEvent], Awaitable[None]],
    ) -> StreamResult:
        await on_event(StreamOpened("gen-burst"))
        for n in range(BURST):
            await on_event(TextDelta(content=f"d{n} "))
        await trio.sleep(1.0)
        self.sent_at.append(trio.current_time())
        await on_event(TextDelta(content="last"))
        return StreamResult(finish_reason="stop", usage=None, generation_id="gen-burst")

    async def aclose(self) -> None:
        pass


Writes = list[tuple[float, dict[str, list[Delta]]]]


def record_writes(monkeypatch: pytest.MonkeyPatch) -> Writes:
    """Every ``append_many`` the memory store gets, with its time, from now on."""
    real_append_many = MemoryStore.append_many
    writes: Writes = []

    async def recording(self: MemoryStore, batches: Mapping[str, Sequence[Delta]]) -> None:
        writes.append((trio.current_time(), {k: list(v) for k, v in batches.items()}))
        await real_append_many(self, batches)

    monkeypatch.setattr(MemoryStore, "append_many", recording)
    return writes


async def test_deltas_are_stored_in_batches_bounded_by_size_and_time(
    autojump_clock: MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = record_writes(monkeypatch)
    upstream = BurstThenPauseUpstream()
    settings = config(tmp_path, flush_max_deltas=MAX_BATCH, flush_interval=INTERVAL)
    async with open_service(settings, upstream=upstream) as service:
        job = await service.start_job(ALICE, chat())
        with trio.fail_after(10):
            async with service.follow(ALICE, job.id) as events:
                async for _event in events:
                    pass
        view = await service.get_job(ALICE, job.id)

    assert view is not None
    assert view.status is JobStatus.COMPLETE
    batches = [(at, batch[job.id]) for at, batch in writes if job.id in batch]
    sizes = [len(deltas) for _, deltas in batches]
    # The burst fills batches up to the size bound, one a tick; the lone last
    # delta is written on its own at the next tick, not held back.
    assert sizes == [4, 4, 2, 1]
    stored = [delta for _, deltas in batches for delta in deltas]
    assert [d.seq for d in stored] == list(range(1, BURST + 2))
    assert "".join(d.content for d in stored) == view.content
    last_written_at = batches[-1][0]
    assert 0 <= last_written_at - upstream.sent_at[0] <= INTERVAL + 1e-9


async def test_one_write_a_tick_carries_every_running_jobs_deltas(
    autojump_clock: MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = record_writes(monkeypatch)
    settings = config(tmp_path, flush_interval=INTERVAL, max_concurrent_jobs=20)
    async with open_service(settings, upstream=BurstThenPauseUpstream()) as service:
        jobs = [await service.start_job(ALICE, chat(message_id=f"m{i}")) for i in range(5)]
        with trio.fail_after(10):
            for job in jobs:
                async with service.follow(ALICE, job.id) as events:
                    async for _event in events:
                        pass
        views = [await service.get_job(ALICE, job.id) for job in jobs]

    assert all(v is not None and v.status is JobStatus.COMPLETE for v in views)
    # Every job's burst went in the first write, and every job's last delta in
    # one later write: two writes in all, not two per job.
    assert [sorted(batch) for _, batch in writes] == [sorted(j.id for j in jobs)] * 2
    for job in jobs:
        assert [len(batch[job.id]) for _, batch in writes] == [BURST, 1]
