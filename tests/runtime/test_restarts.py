"""Restarts: a fresh instance, the same ref, the queued messages kept, lifecycle hooks."""

from __future__ import annotations

import functools
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from runtime import Actor, ActorCrashed, open_system


@attrs.frozen
class Inc:
    pass


@attrs.frozen
class Get:
    pass


@attrs.frozen
class Boom:
    pass


@attrs.frozen
class Hold:
    pass


@attrs.frozen
class Quit:
    pass


class Counter(Actor):
    """Counts Inc messages; logs its lifecycle into a list shared across instances."""

    def __init__(self, log: list[str], gate: trio.Semaphore | None = None) -> None:
        self.log = log
        self.gate = gate
        self.count = 0
        log.append("init")

    async def on_start(self) -> None:
        self.log.append("start")

    async def on_stop(self, reason: str) -> None:
        self.log.append(f"stop:{reason}")

    async def handle(self, message: Any) -> Any:
        if isinstance(message, Inc):
            self.count += 1
        elif isinstance(message, Get):
            return self.count
        elif isinstance(message, Boom):
            raise ValueError("boom")
        elif isinstance(message, Hold):
            assert self.gate is not None
            await self.gate.acquire()
        elif isinstance(message, Quit):
            self.context.stop()
        return None


async def test_a_restart_builds_a_fresh_instance_from_the_factory(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system() as system:
        ref = await system.spawn(functools.partial(Counter, log), name="counter")
        for _ in range(3):
            await ref.tell(Inc())
        assert await ref.ask(Get()) == 3
        await ref.tell(Boom())
        assert await ref.ask(Get()) == 0  # state reset: a new instance answers
        assert log.count("init") == 2


async def test_the_ref_stays_valid_across_restarts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system() as system:
        ref = await system.spawn(functools.partial(Counter, log), name="counter")
        for _ in range(3):
            with pytest.raises(ActorCrashed):
                await ref.ask(Boom())
            assert ref.is_alive
            await ref.tell(Inc())
            assert await ref.ask(Get()) == 1
        assert system.lookup("counter") == ref
        assert log.count("init") == 4


async def test_messages_queued_before_a_crash_survive_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    gate = trio.Semaphore(0)
    async with open_system() as system:
        ref = await system.spawn(functools.partial(Counter, log, gate), name="counter")
        await ref.tell(Hold())
        await ref.tell(Boom())
        for _ in range(4):
            await ref.tell(Inc())
        node = system.snapshot().find("counter")
        assert node is not None
        assert node.mailbox_size == 5
        gate.release()
        # Only Boom was lost; the new instance counted every Inc queued behind it.
        assert await ref.ask(Get()) == 4
        assert log.count("init") == 2


async def test_on_start_and_on_stop_run_for_every_start_and_every_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system() as system:
        ref = await system.spawn(functools.partial(Counter, log), name="counter")
        await ref.tell(Boom())
        await ref.tell(Quit())  # PERMANENT: restarted after a normal stop too
        assert await ref.ask(Get()) == 0
    assert log == [
        "init",
        "start",
        "stop:crashed",
        "init",
        "start",
        "stop:normal",
        "init",
        "start",
        "stop:shutdown",
    ]


class FailsToStartOnce(Actor):
    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def on_start(self) -> None:
        self.log.append("start")
        if self.log.count("start") == 1:
            raise RuntimeError("not yet")

    async def on_stop(self, reason: str) -> None:
        self.log.append(f"stop:{reason}")

    async def handle(self, message: Any) -> Any:
        return "up"


async def test_raising_in_on_start_is_a_crash_and_the_actor_is_restarted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system() as system:
        ref = await system.spawn(functools.partial(FailsToStartOnce, log), name="flaky")
        assert await ref.ask("ping") == "up"
        node = system.snapshot().find("flaky")
        assert node is not None
        assert node.restarts == 1
        assert node.last_failure == "RuntimeError: not yet"
    assert log == ["start", "stop:crashed", "start", "stop:shutdown"]


async def test_snapshot_counts_processed_messages_restarts_and_the_last_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system() as system:
        ref = await system.spawn(functools.partial(Counter, log), name="counter")
        node = system.snapshot().find("counter")
        assert node is not None
        assert (node.processed, node.restarts, node.last_failure) == (0, 0, None)
        for _ in range(3):
            await ref.tell(Inc())
        await ref.tell(Boom())
        await ref.tell(Inc())
        assert await ref.ask(Get()) == 1
        node = system.snapshot().find("counter")
        assert node is not None
        # 4 Inc and one Get; the message that crashed is not counted as processed.
        assert node.processed == 5
        assert node.restarts == 1
        assert node.last_failure == "ValueError: boom"
        assert node.state == "running"
