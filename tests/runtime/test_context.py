"""ActorContext: self, system, spawn, watch, start_task and stop."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing

from runtime import (
    ActorCrashed,
    ActorRef,
    ActorStopped,
    ExitReason,
    Restart,
    Terminated,
    open_system,
)
from runtime.testing import Probe
from tests.runtime.kit import (
    Boom,
    Member,
    Quit,
    Watcher,
    Worker,
    crash,
    node_at,
    spawn_watched,
)


@attrs.frozen
class WhoAmI:
    """Ask: the actor's own ref, its system and its path, from its context."""


@attrs.frozen
class TheContext:
    """Ask: the actor's context object itself."""


class Introspective(Worker):
    async def handle(self, message: Any) -> Any:
        if isinstance(message, WhoAmI):
            return self.context.self, self.context.system, self.context.path
        if isinstance(message, TheContext):
            return self.context
        return await super().handle(message)


class Parent(Member):
    """A Member named "parent" that spawns Members "c1" and "c2" in on_start.

    ``"children"`` asks for their refs.
    """

    def __init__(self, log: list[str]) -> None:
        super().__init__("parent", log)
        self.children: list[ActorRef] = []

    async def on_start(self) -> None:
        await super().on_start()
        for name in ("c1", "c2"):
            ref = await self.context.spawn(Member, name=name, args=(name, self.log))
            self.children.append(ref)

    async def handle(self, message: Any) -> Any:
        if message == "children":
            return list(self.children)
        return await super().handle(message)


async def test_the_context_gives_the_actor_its_own_ref_system_and_path(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        ref = await system.spawn(Introspective, name="leaf")
        me, its_system, path = await ref.ask(WhoAmI())
        assert me == ref
        assert its_system is system
        assert path == "leaf"


async def test_the_context_is_not_available_before_the_actor_starts() -> None:
    with pytest.raises(RuntimeError, match="context"):
        _ = Worker().context


async def test_spawned_children_live_under_the_parents_path(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system() as system:
        parent = await system.spawn(Parent, name="p", args=(log,))
        c1, c2 = await parent.ask("children")
        assert (c1.path, c2.path) == ("p/c1", "p/c2")
        assert system.lookup("p/c1") == c1
        assert await c2.ask("name?") == "c2"
        assert [child.path for child in node_at(system, "p").children] == ["p/c1", "p/c2"]


async def test_spawned_children_stop_in_reverse_order_when_the_parent_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system() as system:
        probe = await Probe.spawn(system)
        parent = await system.spawn(Parent, name="p", args=(log,), restart=Restart.TEMPORARY)
        c1, c2 = await parent.ask("children")
        await probe.watch(c1)
        await probe.watch(parent)
        log.clear()
        await parent.tell(Quit())
        terminated = await probe.expect(Terminated)
        assert (terminated.ref, terminated.reason) == (c1, ExitReason.SHUTDOWN)
        terminated = await probe.expect(Terminated)
        assert (terminated.ref, terminated.reason) == (parent, ExitReason.NORMAL)
        assert log == ["stop:c2:shutdown", "stop:c1:shutdown", "stop:parent:normal"]
        assert not c1.is_alive and not c2.is_alive
        assert system.lookup("p/c1") is None


async def test_spawned_children_are_stopped_and_started_again_when_the_parent_restarts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system() as system:
        parent = await system.spawn(Parent, name="p", args=(log,))
        old = await parent.ask("children")
        log.clear()
        await crash(parent)
        new = await parent.ask("children")
        assert log == [
            "stop:c2:shutdown",
            "stop:c1:shutdown",
            "stop:parent:crashed",
            "init:parent",
            "start:parent",
            "init:c1",
            "start:c1",
            "init:c2",
            "start:c2",
        ]
        # The old refs name the same paths, so they reach the new children.
        assert old == new
        assert all(ref.is_alive for ref in old)
        assert [ref.path for ref in new] == ["p/c1", "p/c2"]
        assert await old[1].ask("name?") == "c2"
        assert await new[0].ask("name?") == "c1"


async def test_a_crashing_spawned_child_is_restarted_without_its_parent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system() as system:
        parent = await system.spawn(Parent, name="p", args=(log,))
        c1, _ = await parent.ask("children")
        log.clear()
        await crash(c1)
        assert await c1.ask("name?") == "c1"
        assert log == ["stop:c1:crashed", "init:c1", "start:c1"]
        assert node_at(system, "p/c1").restarts == 1
        assert node_at(system, "p").restarts == 0


class Ticker(Worker):
    """Runs a background task that ticks every second into a shared list.

    ``"ticks?"`` asks how many ticks there are.
    """

    def __init__(self, ticks: list[int], ended: list[str]) -> None:
        super().__init__()
        self.ticks = ticks
        self.ended = ended

    async def on_start(self) -> None:
        self.context.start_task(self.tick, name="ticker")

    async def tick(self) -> None:
        try:
            while True:
                await trio.sleep(1)
                self.ticks.append(self.context.system.snapshot().restarts)
        finally:
            self.ended.append("task ended")

    async def handle(self, message: Any) -> Any:
        if message == "ticks?":
            return len(self.ticks)
        return await super().handle(message)


async def test_a_background_task_ends_when_its_actor_stops_or_restarts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ticks: list[int] = []
    ended: list[str] = []
    async with open_system() as system:
        ref = await system.spawn(Ticker, name="t", args=(ticks, ended), restart=Restart.TRANSIENT)
        await trio.sleep(3.5)
        assert await ref.ask("ticks?") == 3
        await ref.tell(Boom())
        await trio.sleep(0.1)
        assert ended == ["task ended"]  # the restart cancelled the old instance's task
        await trio.sleep(2)
        assert await ref.ask("ticks?") == 5  # the new instance's task is ticking
        await ref.tell(Quit())
        await trio.sleep(0.1)
        assert ended == ["task ended", "task ended"]
        await trio.sleep(10)
        assert len(ticks) == 5


class FailingTask(Member):
    """``"fail soon"`` starts a task that raises a second later; a number
    makes the handler sleep that many seconds.
    """

    async def fail_after(self, seconds: float) -> None:
        await trio.sleep(seconds)
        raise RuntimeError("background failure")

    async def handle(self, message: Any) -> Any:
        if message == "fail soon":
            self.context.start_task(self.fail_after, 1)
            return "started"
        await trio.sleep(message)
        return "slept"


async def test_a_raising_background_task_crashes_its_actor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system() as system:
        ref = await system.spawn(FailingTask, name="f", args=("f", log))
        assert await ref.ask("fail soon") == "started"
        # The ask being handled when the task fails is answered with the crash.
        with pytest.raises(ActorCrashed) as caught:
            await ref.ask(60, timeout=120)
        assert isinstance(caught.value.__cause__, RuntimeError)
        assert trio.current_time() == pytest.approx(1)
        assert await ref.ask(0) == "slept"
        assert log == ["init:f", "start:f", "stop:f:crashed", "init:f", "start:f"]
        node = node_at(system, "f")
        assert node.restarts == 1
        assert node.last_failure == "RuntimeError: background failure"


async def test_start_task_and_spawn_after_the_actor_stopped_raise(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        ref = await system.spawn(Introspective, name="leaf")
        context = await ref.ask(TheContext())
        await system.stop(ref)
        with pytest.raises(RuntimeError, match="not running"):
            context.start_task(trio.sleep, 1)
        with pytest.raises(RuntimeError, match="not running"):
            await context.spawn(Worker)


async def test_stop_ends_the_actor_after_the_current_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        probe, ref = await spawn_watched(system, Worker, "s", restart=Restart.TEMPORARY)
        # The message that stops the actor still gets its reply.
        assert await ref.ask(Quit()) == "bye"
        terminated = await probe.expect(Terminated)
        assert terminated.reason == ExitReason.NORMAL
        with pytest.raises(ActorStopped):
            await ref.ask("anyone?")


async def test_a_watch_survives_the_watchers_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        probe = await Probe.spawn(system)
        target = await system.spawn(Worker, name="target")
        # Watcher watches on its first start only, so only the original watch can fire.
        watcher = await system.spawn(Watcher, name="watcher", args=(probe.ref, target))
        await watcher.tell(Boom())
        await watcher.tell("after the restart")
        assert await probe.expect(str) == "after the restart"
        await system.stop(target)
        terminated = await probe.expect(Terminated)
        assert terminated.ref == target


async def test_system_stop_stops_a_spawned_child_through_its_parent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system() as system:
        parent = await system.spawn(Parent, name="p", args=(log,))
        c1, c2 = await parent.ask("children")
        assert await system.stop(c1) is True
        assert not c1.is_alive
        assert system.lookup("p/c1") is None
        assert await c2.ask("name?") == "c2"
        assert await system.stop(c1) is False
