"""Polling counts as watching: a job that ends while its owner polls it notifies nobody."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from actors import JobStatus, Owner, open_service
from actors.upstream import (
    EventHandler,
    StreamOpened,
    StreamResult,
    TextDelta,
    UpstreamRequest,
)
from tests.service.kit import ALICE, BOB, chat, config

# The job streams for this long, on the mock clock.
RUNS_FOR = 10.0


class SteadyUpstream:
    """Every stream sends one delta, then ends properly ``RUNS_FOR`` seconds after it began."""

    async def stream(self, request: UpstreamRequest, on_event: EventHandler) -> StreamResult:
        await on_event(StreamOpened("gen-steady"))
        await on_event(TextDelta(content="partial"))
        await trio.sleep(RUNS_FOR)
        return StreamResult("stop", None, "gen-steady")

    async def aclose(self) -> None:
        """Nothing to release."""


@pytest.mark.parametrize(
    ("window", "poller", "watching", "before_end", "notified"),
    [
        pytest.param(3.0, ALICE, True, 2.0, False, id="owner-polled-2s-before-the-end"),
        pytest.param(3.0, ALICE, True, 4.0, True, id="owner-polled-4s-before-the-end"),
        pytest.param(3.0, BOB, True, 2.0, True, id="a-stranger-polled"),
        pytest.param(3.0, ALICE, False, 2.0, True, id="owner-read-without-watching"),
        pytest.param(0.0, ALICE, True, 0.5, True, id="a-window-of-0-counts-no-poll"),
    ],
)
async def test_a_poll_counts_as_watching_for_the_watch_window(
    autojump_clock: MockClock,
    tmp_path: Path,
    window: float,
    poller: Owner,
    watching: bool,
    before_end: float,
    notified: bool,
) -> None:
    settings = config(tmp_path, watch_window=window, drain_timeout=0.0)
    async with open_service(settings, upstream=SteadyUpstream()) as service:
        started = trio.current_time()
        job = await service.start_job(ALICE, chat())
        await trio.sleep_until(started + RUNS_FOR - before_end)
        seen = await service.get_job(poller, job.id, watching=watching)
        assert (seen is not None) == (poller == ALICE)
        assert seen is None or seen.status is JobStatus.STREAMING

        await trio.sleep_until(started + RUNS_FOR + 1.0)
        view = await service.get_job(ALICE, job.id)
        assert view is not None and view.status is JobStatus.COMPLETE
        notes = await service.list_notifications(ALICE)

    assert [note.job_id for note in notes] == ([job.id] if notified else [])
