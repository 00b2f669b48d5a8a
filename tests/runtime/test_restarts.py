"""Restarts: a fresh instance, the same ref, the queued messages kept, lifecycle hooks."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing

from runtime import ActorCrashed, ActorState, open_system
from tests.runtime.kit import Boom, Hold, Member, Quit, node_at


@attrs.frozen
class Inc:
    pass


@attrs.frozen
class Get:
    """Ask: the count of this instance."""


class Counter(Member):
    """A Member named "counter" that counts Inc messages and waits for its gate on Hold."""

    def __init__(self, log: list[str], gate: trio.Semaphore | None = None) -> None:
        super().__init__("counter", log)
        self.gate = gate
        self.count = 0

    async def handle(self, message: Any) -> Any:
        if isinstance(message, Inc):
            self.count += 1
            return None
        if isinstance(message, Get):
            return self.count
        if isinstance(message, Hold):
            assert self.gate is not None
            await self.gate.acquire()
            return None
        return await super().handle(message)


async def test_a_restart_builds_a_fresh_instance_from_the_factory(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system() as system:
        ref = await system.spawn(Counter, name="counter", args=(log,))
        for _ in range(3):
            await ref.tell(Inc())
        assert await ref.ask(Get()) == 3
        await ref.tell(Boom())
        assert await ref.ask(Get()) == 0  # state reset: a new instance answers
        assert log.count("init:counter") == 2


async def test_the_ref_stays_valid_across_restarts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system(max_restarts=3) as system:
        ref = await system.spawn(Counter, name="counter", args=(log,))
        for _ in range(3):
            with pytest.raises(ActorCrashed):
                await ref.ask(Boom())
            assert ref.is_alive
            await ref.tell(Inc())
            assert await ref.ask(Get()) == 1
        assert system.lookup("counter") == ref
        assert log.count("init:counter") == 4


async def test_messages_queued_before_a_crash_survive_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    gate = trio.Semaphore(0)
    async with open_system() as system:
        ref = await system.spawn(Counter, name="counter", args=(log, gate))
        await ref.tell(Hold())
        await ref.tell(Boom())
        for _ in range(4):
            await ref.tell(Inc())
        assert node_at(system, "counter").mailbox_size == 5
        gate.release()
        # Only Boom was lost; the new instance counted every Inc queued behind it.
        assert await ref.ask(Get()) == 4
        assert log.count("init:counter") == 2


async def test_on_start_and_on_stop_run_for_every_start_and_every_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system(max_restarts=3) as system:
        ref = await system.spawn(Counter, name="counter", args=(log,))
        await ref.tell(Boom())
        await ref.tell(Quit())  # PERMANENT: restarted after a normal stop too
        assert await ref.ask(Get()) == 0
    assert log == [
        "init:counter",
        "start:counter",
        "stop:counter:crashed",
        "init:counter",
        "start:counter",
        "stop:counter:normal",
        "init:counter",
        "start:counter",
        "stop:counter:shutdown",
    ]


class FailsToRestartOnce(Member):
    """A Member whose second on_start, its first restart, raises."""

    async def on_start(self) -> None:
        await super().on_start()
        if self.log.count(f"start:{self.name}") == 2:
            raise RuntimeError("not yet")


async def test_a_restart_whose_on_start_raises_is_tried_again_as_another_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system(max_restarts=2) as system:
        ref = await system.spawn(FailsToRestartOnce, name="flaky", args=("flaky", log))
        await ref.tell(Boom())
        assert await ref.ask("ping") == "flaky"
        node = node_at(system, "flaky")
        assert node.restarts == 2
        assert node.last_failure == "RuntimeError: not yet"
    assert log == [
        "init:flaky",
        "start:flaky",
        "stop:flaky:crashed",
        "init:flaky",
        "start:flaky",
        "stop:flaky:crashed",
        "init:flaky",
        "start:flaky",
        "stop:flaky:shutdown",
    ]


async def test_snapshot_counts_processed_messages_restarts_and_the_last_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system() as system:
        ref = await system.spawn(Counter, name="counter", args=(log,))
        node = node_at(system, "counter")
        assert (node.processed, node.restarts, node.last_failure) == (0, 0, None)
        for _ in range(3):
            await ref.tell(Inc())
        await ref.tell(Boom())
        await ref.tell(Inc())
        assert await ref.ask(Get()) == 1
        node = node_at(system, "counter")
        # 4 Inc and one Get; the message that crashed is not counted as processed.
        assert node.processed == 5
        assert node.restarts == 1
        assert node.last_failure == "ValueError: counter exploded"
        assert node.state == ActorState.RUNNING
