"""ask: replies, crashes, timeouts, cancellation and stopped targets."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing

from runtime import (
    ActorCrashed,
    ActorState,
    ActorStopped,
    AskTimeout,
    ChildSpec,
    Restart,
    SupervisorSpec,
    open_system,
)
from tests.runtime.kit import Boom, Hold, Quit, Worker, node_at, ref_at


@attrs.frozen
class Add:
    a: int
    b: int


@attrs.frozen
class Slow:
    """Handled by sleeping ``seconds``, then answering ``label``."""

    seconds: float
    label: str = "slow"


@attrs.frozen
class Handled:
    """Ask: the labels of the Slow messages handled by this instance."""


class Calculator(Worker):
    """A Worker that also adds (Add) and takes its time (Slow)."""

    def __init__(self, gate: trio.Semaphore | None = None) -> None:
        super().__init__(gate)
        self.handled: list[str] = []

    async def handle(self, message: Any) -> Any:
        if isinstance(message, Add):
            return message.a + message.b
        if isinstance(message, Slow):
            await trio.sleep(message.seconds)
            self.handled.append(message.label)
            return message.label
        if isinstance(message, Handled):
            return list(self.handled)
        return await super().handle(message)


async def test_ask_returns_the_handlers_return_value(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        ref = await system.spawn(Calculator, name="calc")
        assert await ref.ask(Add(2, 3)) == 5
        assert await ref.ask(Add(-1, 1), timeout=None) == 0


async def test_a_raising_handler_fails_the_ask_at_once_and_the_actor_restarts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        ref = await system.spawn(Calculator, name="calc")
        started = trio.current_time()
        with pytest.raises(ActorCrashed) as caught:
            await ref.ask(Boom(), timeout=30)
        # Answered at once, not left waiting for the 30 s timeout.
        assert trio.current_time() == started
        assert isinstance(caught.value.__cause__, ValueError)
        assert str(caught.value.__cause__) == "boom"
        assert "calc" in str(caught.value)
        assert "Boom" in str(caught.value)
        # The supervisor restarted it; the same ref reaches the new instance.
        assert await ref.ask(Add(1, 1)) == 2
        node = node_at(system, "calc")
        assert node.restarts == 1
        assert node.last_failure == "ValueError: boom"


async def test_ask_to_a_stopped_actor_raises_actor_stopped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        ref = await system.spawn(Calculator, name="calc")
        await system.stop(ref)
        with pytest.raises(ActorStopped, match="calc"):
            await ref.ask(Add(1, 2))


async def test_an_ask_that_outlives_its_timeout_raises_ask_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        ref = await system.spawn(Calculator, name="calc")
        started = trio.current_time()
        with pytest.raises(AskTimeout) as caught:
            await ref.ask(Slow(10), timeout=0.5)
        assert trio.current_time() - started == pytest.approx(0.5)
        message = str(caught.value)
        assert "calc" in message
        assert "Slow" in message
        assert "0.5s" in message
        assert isinstance(caught.value, TimeoutError)
        # The actor finished the message later; its late reply went nowhere.
        assert await ref.ask(Handled(), timeout=None) == ["slow"]


async def test_asks_with_different_timeouts_each_expire_on_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        refs = [await system.spawn(Calculator, name=f"calc{i}") for i in range(3)]
        expired: dict[float, float] = {}
        started = trio.current_time()

        async def ask_with(ref: Any, timeout: float) -> None:
            with pytest.raises(AskTimeout):
                await ref.ask(Slow(100), timeout=timeout)
            expired[timeout] = trio.current_time() - started

        async with trio.open_nursery() as nursery:
            for ref, timeout in zip(refs, (3.0, 1.0, 2.0), strict=True):
                nursery.start_soon(ask_with, ref, timeout)
        assert expired == {1.0: pytest.approx(1.0), 2.0: pytest.approx(2.0), 3.0: 3.0}


async def test_ask_with_timeout_none_waits_for_the_reply(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        ref = await system.spawn(Calculator, name="calc")
        started = trio.current_time()
        assert await ref.ask(Slow(3600), timeout=None) == "slow"
        assert trio.current_time() - started == pytest.approx(3600)


async def test_an_ask_cancelled_by_its_caller_leaves_the_actor_working(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        ref = await system.spawn(Calculator, name="calc")
        with trio.move_on_after(1) as scope:
            await ref.ask(Slow(5, "abandoned"), timeout=None)
        assert scope.cancelled_caught
        # The next ask from the same task gets its own reply, not the late one.
        assert await ref.ask(Slow(0, "next"), timeout=None) == "next"
        assert await ref.ask(Handled()) == ["abandoned", "next"]
        node = node_at(system, "calc")
        assert (node.state, node.restarts) == (ActorState.RUNNING, 0)


async def test_an_ask_cancelled_while_queued_is_never_handled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        ref = await system.spawn(Calculator, name="calc")
        await ref.tell(Slow(5, "busy"))
        with trio.move_on_after(1):
            await ref.ask(Slow(0, "given up"), timeout=None)
        assert await ref.ask(Handled(), timeout=None) == ["busy"]


async def test_asks_queued_when_the_actor_stops_for_good_get_actor_stopped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = trio.Semaphore(0)
    async with open_system() as system:
        ref = await system.spawn(Calculator, name="calc", args=(gate,), restart=Restart.TEMPORARY)
        await ref.tell(Hold())
        await ref.tell(Quit())
        outcomes: list[str] = []

        async def asker(i: int) -> None:
            try:
                await ref.ask(Add(i, i), timeout=None)
            except ActorStopped:
                outcomes.append("stopped")

        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(asker, i)
            await trio.sleep(1)
            gate.release()
        assert outcomes == ["stopped"] * 3
        assert not ref.is_alive


async def test_the_ask_being_handled_when_the_actor_is_killed_gets_actor_stopped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        sup = await system.spawn_supervisor(
            SupervisorSpec(children=[ChildSpec("calc", Calculator, shutdown=2)]), name="sup"
        )
        ref = ref_at(system, "sup/calc")
        outcome: list[BaseException] = []

        async def asker() -> None:
            try:
                await ref.ask(Slow(3600), timeout=7200)
            except ActorStopped as error:
                outcome.append(error)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(asker)
            await trio.sleep(1)
            started = trio.current_time()
            assert await sup.stop_child("calc")
            assert trio.current_time() - started == pytest.approx(2)
        assert len(outcome) == 1
        assert "sup/calc" in str(outcome[0])


async def test_an_ask_waiting_for_mailbox_room_respects_its_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = trio.Semaphore(0)
    async with open_system() as system:
        ref = await system.spawn(Calculator, name="calc", args=(gate,), mailbox_size=1)
        await ref.tell(Hold())
        await trio.sleep(1)  # the actor holds the gate; its mailbox is empty
        await ref.tell(Slow(0, "queued"))  # now the mailbox is full
        started = trio.current_time()
        with pytest.raises(AskTimeout, match="calc"):
            await ref.ask(Slow(0, "never sent"), timeout=2)
        assert trio.current_time() - started == pytest.approx(2)
        gate.release()
        assert await ref.ask(Handled(), timeout=None) == ["queued"]


async def test_time_spent_waiting_for_room_counts_toward_the_ask_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = trio.Semaphore(0)
    async with open_system() as system:
        ref = await system.spawn(Calculator, name="calc", args=(gate,), mailbox_size=1)
        await ref.tell(Hold())
        await trio.sleep(1)
        await ref.tell(Hold())  # the mailbox is full, and the next message also holds

        async def release_later() -> None:
            await trio.sleep(1)
            gate.release()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(release_later)
            started = trio.current_time()
            with pytest.raises(AskTimeout):
                # One second waiting for room, then one more waiting for the reply.
                await ref.ask(Add(1, 1), timeout=2)
            assert trio.current_time() - started == pytest.approx(2)
        gate.release()
        gate.release()
        assert await ref.ask(Add(2, 2)) == 4
