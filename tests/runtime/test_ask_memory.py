"""Answered asks are released at once; the ask timer still fails the pending ones on time.

What is checked:

* Memory follows the pending asks: 20,000 answered asks of 10 KB messages
  with a 60 s timeout leave less than 1 MB allocated behind them (measured
  with ``tracemalloc``), where keeping each ask until its deadline would hold
  some 200 MB.
* An answered ask lets go of its message at once, even while the timer
  still holds the ask.
* The timer holds no more asks than its bound (twice the pending ones plus a
  slack), whether they were answered or abandoned by their callers.
* Pending asks queued among answered ones, with the same timeout, time out
  exactly at their own deadlines, also after their queue was compacted.
* An ask that waited for mailbox room, and so is queued out of deadline
  order, times out at its own deadline and not at a later one.
"""

from __future__ import annotations

import gc
import tracemalloc
import weakref
from typing import Any

import pytest
import trio
import trio.testing

from runtime import Actor, ActorRef, AskTimeout, open_system
from runtime.reply import SETTLED_SLACK
from tests.runtime.kit import Hold, Worker

ASKS = 20_000
MESSAGE_SIZE = 10_000
LEFT_BEHIND_LIMIT = 1_000_000
TIMEOUT = 60.0


class Echo(Actor):
    """Answers every message with the message itself."""

    async def handle(self, message: Any) -> Any:
        return message


class Payload:
    """A message that can be watched through a weak reference."""


class Sink(Actor):
    """Never answers: its first message keeps it busy for good, the next ones queue."""

    async def handle(self, message: Any) -> Any:
        await trio.sleep_forever()


async def test_answered_asks_leave_almost_nothing_allocated() -> None:
    async with open_system() as system:
        ref = await system.spawn(Echo)
        # Warm up once, so that lazily built runtime state is not counted.
        assert await ref.ask(bytes(MESSAGE_SIZE), timeout=TIMEOUT) == bytes(MESSAGE_SIZE)
        gc.collect()
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            for i in range(ASKS):
                message = i.to_bytes(4, "big") * (MESSAGE_SIZE // 4)
                reply = await ref.ask(message, timeout=TIMEOUT)
                assert reply is message
            del message, reply
            gc.collect()
            left_behind = tracemalloc.get_traced_memory()[0] - baseline
        finally:
            tracemalloc.stop()
        assert left_behind < LEFT_BEHIND_LIMIT, f"{left_behind:,} bytes still allocated"
        stats = system.timer.statistics()
    assert (stats.queued, stats.pending) == (0, 0)


async def _time_out(
    ref: ActorRef, message: Any, label: str, timeout: float, waited: dict[str, float]
) -> None:
    """Ask ``ref``, expect :class:`AskTimeout`, and record how long that took under ``label``."""
    started = trio.current_time()
    expected = f"with {type(message).__name__} got no reply within {timeout:g}s"
    with pytest.raises(AskTimeout, match=expected):
        await ref.ask(message, timeout=timeout)
    waited[label] = trio.current_time() - started


async def test_an_answered_ask_lets_go_of_its_message_while_still_queued(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        sink = await system.spawn(Sink)
        worker = await system.spawn(Worker)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_time_out, sink, "pending", "pending", TIMEOUT, {})
            await trio.sleep(1)
            messages = []
            for _ in range(SETTLED_SLACK // 2):
                payload = Payload()
                messages.append(weakref.ref(payload))
                assert await worker.ask(payload, timeout=TIMEOUT) == "ok"
            del payload
            stats = system.timer.statistics()
            # Below the slack, the answered asks are still queued behind the pending one...
            assert (stats.queued, stats.pending) == (len(messages) + 1, 1)
            # ...but not their messages.
            assert [ref for ref in messages if ref() is not None] == []


async def test_pending_asks_among_answered_ones_time_out_at_their_deadlines(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timeout = 10.0
    pending = ["p0", "p1", "p2", "p3"]
    waited: dict[str, float] = {}
    async with open_system() as system:
        echo = await system.spawn(Echo)
        sink = await system.spawn(Sink)
        async with trio.open_nursery() as nursery:
            for count, label in enumerate(pending, 1):
                nursery.start_soon(_time_out, sink, label, label, timeout, waited)
                # Lets that ask be queued before the answered ones, 1 s apart.
                await trio.sleep(1)
                for i in range(3 * SETTLED_SLACK):
                    assert await echo.ask(i, timeout=timeout) == i
                stats = system.timer.statistics()
                assert stats.pending == count
                assert stats.queued <= 2 * stats.pending + SETTLED_SLACK
            # The queue had to be compacted around the pending asks.
            assert system.timer.statistics().compactions >= len(pending)
        stats = system.timer.statistics()
    assert waited == pytest.approx(dict.fromkeys(pending, timeout), abs=1e-9)
    assert (stats.queued, stats.pending) == (0, 0)


async def test_abandoned_asks_do_not_stay_queued_until_their_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        sink = await system.spawn(Sink, mailbox_size=1000)
        for i in range(500):
            with trio.move_on_after(0.1):
                await sink.ask(i, timeout=TIMEOUT)
        stats = system.timer.statistics()
    assert (stats.queued, stats.pending) == (0, 0)


async def test_an_ask_that_waited_for_room_times_out_at_its_own_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timeout = 10.0
    gate = trio.Semaphore(0)
    waited: dict[str, float] = {}
    async with open_system() as system:
        worker = await system.spawn(Worker, args=(gate,), mailbox_size=1)
        sink = await system.spawn(Sink)

        async def hold_answered(label: str) -> None:
            assert await worker.ask(Hold(label), timeout=timeout) == "ok"

        async with trio.open_nursery() as nursery:
            # The worker handles "a", waiting for its gate; "b" fills its
            # mailbox; "late" waits for room from t=0.002.
            nursery.start_soon(hold_answered, "a")
            await trio.sleep(0.001)
            nursery.start_soon(_time_out, worker, Hold("b"), "b", timeout, waited)
            await trio.sleep(0.001)
            nursery.start_soon(_time_out, worker, Hold("late"), "late", timeout, waited)
            await trio.sleep(2)
            # t≈2: an ask with the same timeout and a later deadline (t≈12).
            nursery.start_soon(_time_out, sink, "later", "later", timeout, waited)
            await trio.sleep(1)
            # t≈3: "a" is answered, so "late" gets in; its deadline (t≈10)
            # is earlier than that of "later", queued before it.
            gate.release()
            await trio.sleep(1)
            assert system.timer.statistics().pending == 3  # b, late and later
    assert waited == pytest.approx({"b": timeout, "late": timeout, "later": timeout}, abs=1e-9)
