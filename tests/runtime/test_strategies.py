"""Supervision: strategies, restart types, restart intensity and backoff."""

from __future__ import annotations

import functools
from collections import Counter
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
    Backoff,
    ChildSpec,
    Restart,
    Strategy,
    SupervisorGaveUp,
    SupervisorSpec,
    open_system,
)
from runtime.system import ActorSystem


@attrs.frozen
class Boom:
    pass


@attrs.frozen
class Quit:
    pass


@attrs.frozen
class Ping:
    pass


class Member(Actor):
    """A child that logs ``init:``/``start:``/``stop:`` lines under its name."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        log.append(f"init:{name}")

    async def on_start(self) -> None:
        self.log.append(f"start:{self.name}")

    async def on_stop(self, reason: str) -> None:
        self.log.append(f"stop:{self.name}:{reason}")

    async def handle(self, message: Any) -> Any:
        if isinstance(message, Boom):
            raise ValueError(f"{self.name} exploded")
        if isinstance(message, Quit):
            self.context.stop()
        return "pong"


def member(name: str, log: list[str], restart: Restart = Restart.PERMANENT) -> ChildSpec:
    return ChildSpec(name, functools.partial(Member, name, log), restart=restart)


def instances(log: list[str]) -> Counter[str]:
    """How many instances of each child were built."""
    return Counter(line.split(":")[1] for line in log if line.startswith("init:"))


async def start_supervisor(
    system: ActorSystem, log: list[str], names: str, **options: Any
) -> dict[str, ActorRef]:
    spec = SupervisorSpec(children=[member(name, log) for name in names], **options)
    await system.spawn_supervisor(spec, name="sup")
    refs = {name: system.lookup(f"sup/{name}") for name in names}
    assert all(ref is not None for ref in refs.values())
    log.clear()
    return {name: ref for name, ref in refs.items() if ref is not None}


async def crash(ref: ActorRef) -> None:
    with pytest.raises(ActorCrashed):
        await ref.ask(Boom())


async def settle(refs: dict[str, ActorRef]) -> None:
    """Wait until every child answers again, i.e. every restart is done."""
    for ref in refs.values():
        assert await ref.ask(Ping()) == "pong"


async def test_one_for_one_restarts_only_the_child_that_crashed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system() as system:
        refs = await start_supervisor(system, log, "abc", strategy=Strategy.ONE_FOR_ONE)
        await crash(refs["b"])
        await settle(refs)
        assert log == ["stop:b:crashed", "init:b", "start:b"]
        sup = system.snapshot().find("sup")
        assert sup is not None
        assert [(node.path, node.restarts) for node in sup.children] == [
            ("sup/a", 0),
            ("sup/b", 1),
            ("sup/c", 0),
        ]


async def test_one_for_all_stops_the_others_in_reverse_and_restarts_all_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system() as system:
        refs = await start_supervisor(system, log, "abcd", strategy=Strategy.ONE_FOR_ALL)
        await crash(refs["b"])
        await settle(refs)
        assert log == [
            "stop:b:crashed",
            "stop:d:shutdown",
            "stop:c:shutdown",
            "stop:a:shutdown",
            "init:a",
            "start:a",
            "init:b",
            "start:b",
            "init:c",
            "start:c",
            "init:d",
            "start:d",
        ]
        assert instances(log) == {"a": 1, "b": 1, "c": 1, "d": 1}
        sup = system.snapshot().find("sup")
        assert sup is not None
        assert [node.restarts for node in sup.children] == [1, 1, 1, 1]
        # The old refs reach the new instances.
        assert all(ref.is_alive for ref in refs.values())


async def test_rest_for_one_restarts_the_child_and_those_started_after_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system() as system:
        refs = await start_supervisor(system, log, "abcd", strategy=Strategy.REST_FOR_ONE)
        await crash(refs["b"])
        await settle(refs)
        assert log == [
            "stop:b:crashed",
            "stop:d:shutdown",
            "stop:c:shutdown",
            "init:b",
            "start:b",
            "init:c",
            "start:c",
            "init:d",
            "start:d",
        ]
        assert instances(log) == {"b": 1, "c": 1, "d": 1}


async def test_one_for_all_drops_temporary_siblings(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    spec = SupervisorSpec(
        strategy=Strategy.ONE_FOR_ALL,
        children=[member("a", log), member("t", log, Restart.TEMPORARY), member("c", log)],
    )
    async with open_system() as system:
        await system.spawn_supervisor(spec, name="sup")
        temporary = system.lookup("sup/t")
        crashing = system.lookup("sup/c")
        assert temporary is not None and crashing is not None
        log.clear()
        await crash(crashing)
        assert await crashing.ask(Ping()) == "pong"
        assert log == [
            "stop:c:crashed",
            "stop:t:shutdown",
            "stop:a:shutdown",
            "init:a",
            "start:a",
            "init:c",
            "start:c",
        ]
        assert not temporary.is_alive
        assert system.lookup("sup/t") is None
        sup = system.snapshot().find("sup")
        assert sup is not None
        assert [node.path for node in sup.children] == ["sup/a", "sup/c"]


async def test_permanent_children_restart_after_a_crash_and_after_a_normal_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system() as system:
        refs = await start_supervisor(system, log, "p")
        ref = refs["p"]
        await crash(ref)
        await ref.tell(Quit())
        assert await ref.ask(Ping()) == "pong"
        assert log == ["stop:p:crashed", "init:p", "start:p", "stop:p:normal", "init:p", "start:p"]
        node = system.snapshot().find("sup/p")
        assert node is not None
        assert node.restarts == 2


async def test_transient_children_restart_after_a_crash_but_not_after_a_normal_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    spec = SupervisorSpec(children=[member("t", log, Restart.TRANSIENT)])
    async with open_system() as system:
        await system.spawn_supervisor(spec, name="sup")
        ref = system.lookup("sup/t")
        assert ref is not None
        await crash(ref)
        assert await ref.ask(Ping()) == "pong"
        assert instances(log) == {"t": 2}
        await ref.tell(Quit())
        with pytest.raises(ActorStopped):
            await ref.ask(Ping())
        assert instances(log) == {"t": 2}
        assert system.lookup("sup/t") is None
        sup = system.snapshot().find("sup")
        assert sup is not None
        assert sup.children == ()


async def test_temporary_children_are_never_restarted_and_are_forgotten(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    spec = SupervisorSpec(children=[member("t", log, Restart.TEMPORARY), member("p", log)])
    async with open_system() as system:
        await system.spawn_supervisor(spec, name="sup")
        ref = system.lookup("sup/t")
        assert ref is not None
        await crash(ref)
        with pytest.raises(ActorStopped):
            await ref.ask(Ping())
        assert instances(log) == {"t": 1, "p": 1}
        assert system.lookup("sup/t") is None
        sup = system.snapshot().find("sup")
        assert sup is not None
        assert [node.path for node in sup.children] == ["sup/p"]
        assert sup.find("sup/t") is None


async def test_a_supervisor_past_its_intensity_stops_its_children_and_fails_upward(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system(max_restarts=5) as system:
        refs = await start_supervisor(system, log, "abc", max_restarts=2, within=10)
        for _ in range(2):
            await crash(refs["b"])
            assert await refs["b"].ask(Ping()) == "pong"
        log.clear()
        await crash(refs["b"])  # the third restart within 10 s is one too many
        await trio.sleep(1)
        assert log[:3] == ["stop:b:crashed", "stop:c:shutdown", "stop:a:shutdown"]
        # The root saw the supervisor crash and restarted it, children afresh.
        assert log[3:] == ["init:a", "start:a", "init:b", "start:b", "init:c", "start:c"]
        node = system.snapshot().find("sup")
        assert node is not None
        assert node.restarts == 1
        assert node.last_failure is not None
        assert node.last_failure.startswith("SupervisorGaveUp")
        assert "ValueError: b exploded" in node.last_failure


async def test_a_nested_supervisor_giving_up_is_a_crash_of_that_child_in_its_parent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    inner = SupervisorSpec(max_restarts=0, children=[member("x", log), member("y", log)])
    outer = SupervisorSpec(
        strategy=Strategy.ONE_FOR_ONE,
        max_restarts=3,
        children=[member("a", log), ChildSpec("sub", inner), member("c", log)],
    )
    async with open_system() as system:
        await system.spawn_supervisor(outer, name="top")
        x = system.lookup("top/sub/x")
        assert x is not None
        log.clear()
        await crash(x)
        await trio.sleep(1)
        assert log == [
            "stop:x:crashed",
            "stop:y:shutdown",
            "init:x",
            "start:x",
            "init:y",
            "start:y",
        ]
        top = system.snapshot().find("top")
        assert top is not None
        assert [(node.path, node.restarts) for node in top.children] == [
            ("top/a", 0),
            ("top/sub", 1),
            ("top/c", 0),
        ]
        sub = top.find("top/sub")
        assert sub is not None
        assert sub.last_failure is not None
        assert sub.last_failure.startswith("SupervisorGaveUp")
        assert top.restarts == 0


async def test_a_restarted_supervisor_starts_with_a_fresh_restart_history(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    inner = SupervisorSpec(max_restarts=1, within=60, children=[member("x", log)])
    async with open_system(max_restarts=5, within=60) as system:
        await system.spawn_supervisor(inner, name="sub")
        for _ in range(2):  # the second crash within 60 s makes "sub" give up
            x = system.lookup("sub/x")
            assert x is not None
            await crash(x)
            await trio.sleep(1)
        node = system.snapshot().find("sub")
        assert node is not None
        assert node.restarts == 1
        # One crash is within the intensity of the new run of "sub".
        x = system.lookup("sub/x")
        assert x is not None
        await crash(x)
        await trio.sleep(1)
        node = system.snapshot().find("sub")
        assert node is not None
        assert node.restarts == 1
        assert [(child.path, child.restarts) for child in node.children] == [("sub/x", 1)]


async def test_restarts_spread_out_beyond_the_window_never_give_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system(max_restarts=0) as system:
        refs = await start_supervisor(system, log, "ab", max_restarts=1, within=5)
        for _ in range(6):
            await crash(refs["b"])
            assert await refs["b"].ask(Ping()) == "pong"
            await trio.sleep(6)
        node = system.snapshot().find("sup")
        assert node is not None
        assert node.restarts == 0
        assert [(child.path, child.restarts) for child in node.children] == [
            ("sup/a", 0),
            ("sup/b", 6),
        ]


async def test_the_root_giving_up_raises_supervisor_gave_up_from_open_system(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    body_cancelled = False
    with pytest.raises(SupervisorGaveUp) as caught:
        async with open_system(max_restarts=1, within=10) as system:
            for name in "ab":
                await system.spawn(functools.partial(Member, name, log), name=name)
            ref = system.lookup("b")
            assert ref is not None
            await crash(ref)
            await crash(ref)
            try:
                await trio.sleep_forever()
            finally:
                body_cancelled = True
    assert type(caught.value) is SupervisorGaveUp
    assert caught.value.path == ""
    assert caught.value.restarts == 2
    assert caught.value.last_failure == "ValueError: b exploded"
    assert body_cancelled
    assert log[-2:] == ["stop:b:crashed", "stop:a:shutdown"]


class TimedStart(Actor):
    """Reports the trio time of every start, and counts what it is told."""

    def __init__(self, starts: trio.MemorySendChannel[float]) -> None:
        self.starts = starts
        self.told = 0

    async def on_start(self) -> None:
        self.starts.send_nowait(trio.current_time())

    async def handle(self, message: Any) -> Any:
        if isinstance(message, Boom):
            raise ValueError("boom")
        if isinstance(message, Ping):
            self.told += 1
        return self.told


async def test_backoff_delays_restarts_exponentially_up_to_the_maximum(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, starts = trio.open_memory_channel[float](10)
    spec = SupervisorSpec(
        max_restarts=10,
        within=100,
        backoff=Backoff(initial=1, maximum=4, multiplier=2),
        children=[ChildSpec("w", functools.partial(TimedStart, send))],
    )
    async with open_system() as system:
        await system.spawn_supervisor(spec, name="sup")
        ref = system.lookup("sup/w")
        assert ref is not None
        previous = await starts.receive()
        delays = []
        for _ in range(4):
            await ref.tell(Boom())
            # Told during the backoff: queued for the next instance.
            await trio.sleep(0.5)
            node = system.snapshot().find("sup/w")
            assert node is not None
            assert node.state == "restarting"
            for _ in range(3):
                await ref.tell(Ping())
            started = await starts.receive()
            delays.append(started - previous)
            previous = started
            assert await ref.ask("count", timeout=None) == 3
        assert delays == pytest.approx([1, 2, 4, 4])


async def test_a_pending_backoff_does_not_delay_shutdown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, starts = trio.open_memory_channel[float](10)
    spec = SupervisorSpec(
        backoff=Backoff(initial=100, maximum=100),
        children=[ChildSpec("w", functools.partial(TimedStart, send))],
    )
    started = trio.current_time()
    async with open_system() as system:
        await system.spawn_supervisor(spec, name="sup")
        ref = system.lookup("sup/w")
        assert ref is not None
        await ref.tell(Boom())
        await trio.sleep(1)
        node = system.snapshot().find("sup/w")
        assert node is not None
        assert node.state == "restarting"
    assert trio.current_time() - started == pytest.approx(1)
    assert not ref.is_alive
    assert starts.receive_nowait() == started
    with pytest.raises(trio.WouldBlock):
        starts.receive_nowait()
