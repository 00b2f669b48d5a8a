"""Deltas reach the store in batches bounded by size and by time, none lost."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
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


async def test_deltas_are_stored_in_batches_bounded_by_size_and_time(
    autojump_clock: MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_append = MemoryStore.append_deltas
    batches: list[tuple[float, list[Delta]]] = []

    async def recording_append(self: MemoryStore, job_id: str, deltas: Sequence[Delta]) -> None:
        batches.append((trio.current_time(), list(deltas)))
        await real_append(self, job_id, deltas)

    monkeypatch.setattr(MemoryStore, "append_deltas", recording_append)
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
    sizes = [len(deltas) for _, deltas in batches]
    # The burst fills batches up to the size bound; the lone last delta is
    # written on its own once the time bound runs out, not held back.
    assert sizes == [4, 4, 2, 1]
    stored = [delta for _, deltas in batches for delta in deltas]
    assert [d.seq for d in stored] == list(range(1, BURST + 2))
    assert "".join(d.content for d in stored) == view.content
    last_written_at = batches[-1][0]
    assert 0 <= last_written_at - upstream.sent_at[0] <= INTERVAL + 1e-9
