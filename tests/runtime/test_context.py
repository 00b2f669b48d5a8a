"""ActorContext: self, system, spawn, watch, start_task and stop."""

from __future__ import annotations

import functools
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from runtime import (
    Actor,
    ActorCrashed,
    ActorRef,
    ActorStopped,
    Restart,
    Terminated,
    open_system,
)
from runtime.testing import Probe


@attrs.frozen
class Boom:
    pass


@attrs.frozen
class Quit:
    pass


@attrs.frozen
class WhoAmI:
    pass


@attrs.frozen
class TheContext:
    pass


class Leaf(Actor):
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def on_start(self) -> None:
        self.log.append(f"start:{self.name}")

    async def on_stop(self, reason: str) -> None:
        self.log.append(f"stop:{self.name}:{reason}")

    async def handle(self, message: Any) -> Any:
        if isinstance(message, Boom):
            raise ValueError("leaf boom")
        if isinstance(message, WhoAmI):
            return self.context.self, self.context.system, self.context.path
        if isinstance(message, TheContext):
            return self.context
        return self.name


class Parent(Actor):
    """Spawns two children in on_start; ``Boom`` crashes it, ``Quit`` stops it."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.children: list[ActorRef] = []

    async def on_start(self) -> None:
        self.log.append("start:parent")
        for name in ("c1", "c2"):
            ref = await self.context.spawn(Leaf, name=name, args=(name, self.log))
            self.children.append(ref)

    async def on_stop(self, reason: str) -> None:
        self.log.append(f"stop:parent:{reason}")

    async def handle(self, message: Any) -> Any:
        if isinstance(message, Boom):
            raise ValueError("parent boom")
        if isinstance(message, Quit):
            self.context.stop()
        return list(self.children)


async def test_the_context_gives_the_actor_its_own_ref_system_and_path(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        ref = await system.spawn(Leaf, name="leaf", args=("leaf", []))
        me, its_system, path = await ref.ask(WhoAmI())
        assert me == ref
        assert its_system is system
        assert path == "leaf"


async def test_the_context_is_not_available_before_the_actor_starts() -> None:
    with pytest.raises(RuntimeError, match="context"):
        _ = Leaf("early", []).context


async def test_spawned_children_live_under_the_parents_path(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system() as system:
        parent = await system.spawn(functools.partial(Parent, log), name="p")
        c1, c2 = await parent.ask("children")
        assert (c1.path, c2.path) == ("p/c1", "p/c2")
        assert system.lookup("p/c1") == c1
        assert await c2.ask("name?") == "c2"
        node = system.snapshot().find("p")
        assert node is not None
        assert [child.path for child in node.children] == ["p/c1", "p/c2"]


async def test_spawned_children_stop_in_reverse_order_when_the_parent_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system() as system:
        probe = await Probe.spawn(system)
        parent = await system.spawn(
            functools.partial(Parent, log), name="p", restart=Restart.TEMPORARY
        )
        c1, c2 = await parent.ask("children")
        await probe.watch(c1)
        await probe.watch(parent)
        log.clear()
        await parent.tell(Quit())
        terminated = await probe.expect(Terminated)
        assert (terminated.ref, terminated.reason) == (c1, "shutdown")
        terminated = await probe.expect(Terminated)
        assert (terminated.ref, terminated.reason) == (parent, "normal")
        assert log == ["stop:c2:shutdown", "stop:c1:shutdown", "stop:parent:normal"]
        assert not c1.is_alive and not c2.is_alive
        assert system.lookup("p/c1") is None


async def test_spawned_children_are_stopped_and_started_again_when_the_parent_restarts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system() as system:
        parent = await system.spawn(functools.partial(Parent, log), name="p")
        old = await parent.ask("children")
        log.clear()
        with pytest.raises(ActorCrashed):
            await parent.ask(Boom())
        new = await parent.ask("children")
        assert log == [
            "stop:c2:shutdown",
            "stop:c1:shutdown",
            "stop:parent:crashed",
            "start:parent",
            "start:c1",
            "start:c2",
        ]
        assert not any(ref.is_alive for ref in old)
        assert [ref.path for ref in new] == ["p/c1", "p/c2"]
        assert await new[0].ask("name?") == "c1"


async def test_a_crashing_spawned_child_is_restarted_without_its_parent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system() as system:
        parent = await system.spawn(functools.partial(Parent, log), name="p")
        c1, _ = await parent.ask("children")
        log.clear()
        with pytest.raises(ActorCrashed):
            await c1.ask(Boom())
        assert await c1.ask("name?") == "c1"
        assert log == ["stop:c1:crashed", "start:c1"]
        node = system.snapshot().find("p/c1")
        assert node is not None
        assert node.restarts == 1
        parent_node = system.snapshot().find("p")
        assert parent_node is not None
        assert parent_node.restarts == 0


class Ticker(Actor):
    """Runs a background task that ticks every second into a shared list."""

    def __init__(self, ticks: list[int], ended: list[str]) -> None:
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
        if isinstance(message, Boom):
            raise ValueError("boom")
        if isinstance(message, Quit):
            self.context.stop()
        return len(self.ticks)


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


class FailingTask(Actor):
    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def on_start(self) -> None:
        self.log.append("start")

    async def on_stop(self, reason: str) -> None:
        self.log.append(f"stop:{reason}")

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
        ref = await system.spawn(functools.partial(FailingTask, log), name="f")
        assert await ref.ask("fail soon") == "started"
        # The ask being handled when the task fails is answered with the crash.
        with pytest.raises(ActorCrashed) as caught:
            await ref.ask(60, timeout=120)
        assert isinstance(caught.value.__cause__, RuntimeError)
        assert trio.current_time() == pytest.approx(1)
        assert await ref.ask(0) == "slept"
        assert log == ["start", "stop:crashed", "start"]
        node = system.snapshot().find("f")
        assert node is not None
        assert node.restarts == 1
        assert node.last_failure == "RuntimeError: background failure"


async def test_start_task_and_spawn_after_the_actor_stopped_raise(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        ref = await system.spawn(Leaf, name="leaf", args=("leaf", []))
        context = await ref.ask(TheContext())
        await system.stop(ref)
        with pytest.raises(RuntimeError, match="not running"):
            context.start_task(trio.sleep, 1)
        with pytest.raises(RuntimeError, match="not running"):
            await context.spawn(Leaf, args=("late", []))


class Stopper(Actor):
    async def handle(self, message: Any) -> Any:
        if message == "quit":
            self.context.stop()
            return "stopping after this reply"
        return "ok"


async def test_stop_ends_the_actor_after_the_current_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        probe = await Probe.spawn(system)
        ref = await system.spawn(Stopper, name="s", restart=Restart.TEMPORARY)
        await probe.watch(ref)
        assert await ref.ask("quit") == "stopping after this reply"
        terminated = await probe.expect(Terminated)
        assert terminated.reason == "normal"
        with pytest.raises(ActorStopped):
            await ref.ask("anyone?")


class RestartingWatcher(Actor):
    """Watches its target on its first run only, then crashes on request."""

    def __init__(self, target: ActorRef, probe: ActorRef) -> None:
        self.target = target
        self.probe = probe

    async def on_start(self) -> None:
        if self.context.restarts == 0:
            self.context.watch(self.target)

    async def handle(self, message: Any) -> Any:
        if isinstance(message, Boom):
            raise ValueError("watcher boom")
        await self.probe.tell(message)
        return None


async def test_a_watch_survives_the_watchers_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        probe = await Probe.spawn(system)
        target = await system.spawn(Stopper, name="target")
        watcher = await system.spawn(RestartingWatcher, name="watcher", args=(target, probe.ref))
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
        parent = await system.spawn(functools.partial(Parent, log), name="p")
        c1, c2 = await parent.ask("children")
        assert await system.stop(c1) is True
        assert not c1.is_alive
        assert system.lookup("p/c1") is None
        assert await c2.ask("name?") == "c2"
        assert await system.stop(c1) is False
