"""Mailboxes: bounded, one message at a time in order, per-sender FIFO, backpressure."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing

from runtime import Actor, ActorStopped, MailboxFull, Restart, open_system
from tests.runtime.kit import Hold, node_at


@attrs.frozen
class Work:
    """Handled by sleeping one second."""

    label: Any


@attrs.frozen
class Seen:
    """Ask: every label handled so far, in order."""


class Recorder(Actor):
    """Records the label of each Work and Hold it handles, in order.

    It fails a handler that starts while another one runs, which must never happen.
    """

    def __init__(self, gate: trio.Semaphore) -> None:
        self.gate = gate
        self.labels: list[Any] = []
        self.busy = False

    async def handle(self, message: Any) -> Any:
        if isinstance(message, Seen):
            return list(self.labels)
        assert not self.busy, "two messages handled at once"
        self.busy = True
        try:
            if isinstance(message, Hold):
                await self.gate.acquire()
            else:
                await trio.sleep(1)
            self.labels.append(message.label)
        finally:
            self.busy = False
        return None


async def test_messages_are_handled_one_at_a_time_in_mailbox_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        ref = await system.spawn(Recorder, name="rec", args=(trio.Semaphore(0),))
        for i in range(5):
            await ref.tell(Work(i))
        assert await ref.ask(Seen(), timeout=None) == [0, 1, 2, 3, 4]
        # Each handler sleeps 1 s; handled one after another they took 5 s in all.
        assert trio.current_time() == pytest.approx(5.0)


async def test_each_senders_messages_arrive_in_the_order_it_sent_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        ref = await system.spawn(Recorder, name="rec", args=(trio.Semaphore(0),), mailbox_size=4)

        async def sender(who: str) -> None:
            for i in range(20):
                await ref.tell(Work((who, i)))
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            for who in ("a", "b", "c"):
                nursery.start_soon(sender, who)
        labels = await ref.ask(Seen(), timeout=None)
    assert len(labels) == 60
    for who in ("a", "b", "c"):
        assert [i for sender_name, i in labels if sender_name == who] == list(range(20))
    # The senders really were interleaved, so the order is not trivially FIFO.
    assert [who for who, _ in labels[:6]] != ["a"] * 6


async def test_mailbox_is_bounded_and_tell_nowait_raises_mailbox_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = trio.Semaphore(0)
    async with open_system() as system:
        ref = await system.spawn(Recorder, name="rec", args=(gate,), mailbox_size=3)
        ref.tell_nowait(Hold("taken"))
        await trio.sleep(1)  # the actor takes it and blocks on the gate
        for i in range(3):
            ref.tell_nowait(Work(i))
        node = node_at(system, "rec")
        assert (node.mailbox_size, node.mailbox_capacity) == (3, 3)
        with pytest.raises(MailboxFull, match="rec"):
            ref.tell_nowait(Work("one too many"))
        gate.release()
        assert await ref.ask(Seen(), timeout=None) == ["taken", 0, 1, 2]


async def test_tell_waits_for_room_until_the_actor_takes_a_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = trio.Semaphore(0)
    async with open_system() as system:
        ref = await system.spawn(Recorder, name="rec", args=(gate,), mailbox_size=2)
        await ref.tell(Hold("first"))
        await trio.sleep(1)  # the actor holds "first"; the mailbox is empty again
        await ref.tell(Hold("second"))
        await ref.tell(Hold("third"))
        sent = trio.Event()

        async def blocked_sender() -> None:
            await ref.tell(Hold("fourth"))
            sent.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocked_sender)
            await trio.sleep(100)
            assert not sent.is_set(), "tell returned although the mailbox was full"
            gate.release()  # "first" ends and the actor takes "second": one free slot
            await sent.wait()
            assert node_at(system, "rec").mailbox_size == 2  # "third" and "fourth"
            gate.release()
            gate.release()
            gate.release()
        assert await ref.ask(Seen(), timeout=None) == ["first", "second", "third", "fourth"]


async def test_tell_tell_nowait_and_ask_to_a_stopped_actor_raise_actor_stopped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        ref = await system.spawn(Recorder, name="rec", args=(trio.Semaphore(0),))
        assert ref.is_alive
        assert await system.stop(ref)
        assert not ref.is_alive
        with pytest.raises(ActorStopped):
            await ref.tell(Work(1))
        with pytest.raises(ActorStopped):
            ref.tell_nowait(Work(2))
        with pytest.raises(ActorStopped):
            await ref.ask(Seen())
        assert not await system.stop(ref)


class SelfStopper(Actor):
    """Handles its one message by waiting for its gate, then stops itself.

    It takes no second message: the mailbox never gets room again.
    """

    def __init__(self, gate: trio.Semaphore) -> None:
        self.gate = gate

    async def handle(self, message: Any) -> None:
        await self.gate.acquire()
        self.context.stop()


async def test_tell_waiting_for_room_raises_actor_stopped_when_the_actor_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = trio.Semaphore(0)
    async with open_system() as system:
        ref = await system.spawn(
            SelfStopper, name="stopper", args=(gate,), mailbox_size=1, restart=Restart.TEMPORARY
        )
        await ref.tell("stop after this")
        await trio.sleep(1)
        await ref.tell("queued")
        outcome: list[str] = []

        async def blocked_sender() -> None:
            try:
                await ref.tell("never delivered")
            except ActorStopped:
                outcome.append("ActorStopped")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocked_sender)
            await trio.sleep(1)
            gate.release()
        assert outcome == ["ActorStopped"]
        assert not ref.is_alive
