"""Supervision: strategies, restart types, restart intensity and backoff."""

from __future__ import annotations

import functools
from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing

from runtime import (
    Actor,
    ActorRef,
    ActorState,
    ActorStopped,
    ActorSystem,
    Backoff,
    ChildSpec,
    Restart,
    Strategy,
    SupervisorGaveUp,
    SupervisorSpec,
    open_system,
)
from tests.runtime.kit import Boom, Member, Ping, Quit, crash, member, node_at, ref_at


def instances(log: list[str]) -> Counter[str]:
    """How many instances of each child were built."""
    return Counter(line.split(":")[1] for line in log if line.startswith("init:"))


async def start_supervisor(
    system: ActorSystem, log: list[str], names: str, **options: Any
) -> dict[str, ActorRef]:
    """Spawn supervisor "sup" over a Member per letter of ``names``, then clear ``log``."""
    spec = SupervisorSpec(children=[member(name, log) for name in names], **options)
    await system.spawn_supervisor(spec, name="sup")
    refs = {name: ref_at(system, f"sup/{name}") for name in names}
    log.clear()
    return refs


async def settle(refs: dict[str, ActorRef]) -> None:
    """Wait until every child answers again, i.e. every restart is done."""
    for name, ref in refs.items():
        assert await ref.ask(Ping()) == name


@pytest.mark.parametrize(
    ("strategy", "expected_log", "restarts"),
    [
        pytest.param(
            Strategy.ONE_FOR_ONE,
            ["stop:b:crashed", "init:b", "start:b"],
            [0, 1, 0, 0],
            id="one_for_one-only_the_child_that_crashed",
        ),
        pytest.param(
            Strategy.ONE_FOR_ALL,
            [
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
            ],
            [1, 1, 1, 1],
            id="one_for_all-stops_the_others_in_reverse_restarts_all_in_order",
        ),
        pytest.param(
            Strategy.REST_FOR_ONE,
            [
                "stop:b:crashed",
                "stop:d:shutdown",
                "stop:c:shutdown",
                "init:b",
                "start:b",
                "init:c",
                "start:c",
                "init:d",
                "start:d",
            ],
            [0, 1, 1, 1],
            id="rest_for_one-the_child_and_those_started_after_it",
        ),
    ],
)
async def test_a_crash_restarts_the_children_the_strategy_names(
    autojump_clock: trio.testing.MockClock,
    strategy: Strategy,
    expected_log: list[str],
    restarts: list[int],
) -> None:
    log: list[str] = []
    async with open_system() as system:
        refs = await start_supervisor(system, log, "abcd", strategy=strategy)
        await crash(refs["b"])
        await settle(refs)
        assert log == expected_log
        sup = node_at(system, "sup")
        assert [(node.path, node.restarts) for node in sup.children] == list(
            zip(["sup/a", "sup/b", "sup/c", "sup/d"], restarts, strict=True)
        )
        # The old refs reach the new instances.
        assert all(ref.is_alive for ref in refs.values())


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
        temporary = ref_at(system, "sup/t")
        crashing = ref_at(system, "sup/c")
        log.clear()
        await crash(crashing)
        assert await crashing.ask(Ping()) == "c"
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
        assert [node.path for node in node_at(system, "sup").children] == ["sup/a", "sup/c"]


async def test_permanent_children_restart_after_a_crash_and_after_a_normal_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system() as system:
        refs = await start_supervisor(system, log, "p", max_restarts=2)
        ref = refs["p"]
        await crash(ref)
        await ref.tell(Quit())
        assert await ref.ask(Ping()) == "p"
        assert log == ["stop:p:crashed", "init:p", "start:p", "stop:p:normal", "init:p", "start:p"]
        assert node_at(system, "sup/p").restarts == 2


async def test_transient_children_restart_after_a_crash_but_not_after_a_normal_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    spec = SupervisorSpec(children=[member("t", log, Restart.TRANSIENT)])
    async with open_system() as system:
        await system.spawn_supervisor(spec, name="sup")
        ref = ref_at(system, "sup/t")
        await crash(ref)
        assert await ref.ask(Ping()) == "t"
        assert instances(log) == {"t": 2}
        await ref.tell(Quit())
        with pytest.raises(ActorStopped):
            await ref.ask(Ping())
        assert instances(log) == {"t": 2}
        assert system.lookup("sup/t") is None
        assert node_at(system, "sup").children == ()


async def test_temporary_children_are_never_restarted_and_are_forgotten(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    spec = SupervisorSpec(children=[member("t", log, Restart.TEMPORARY), member("p", log)])
    async with open_system() as system:
        await system.spawn_supervisor(spec, name="sup")
        ref = ref_at(system, "sup/t")
        await crash(ref)
        with pytest.raises(ActorStopped):
            await ref.ask(Ping())
        assert instances(log) == {"t": 1, "p": 1}
        assert system.lookup("sup/t") is None
        sup = node_at(system, "sup")
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
            assert await refs["b"].ask(Ping()) == "b"
        log.clear()
        await crash(refs["b"])  # the third restart within 10 s is one too many
        await trio.sleep(1)
        assert log[:3] == ["stop:b:crashed", "stop:c:shutdown", "stop:a:shutdown"]
        # The root saw the supervisor crash and restarted it, children afresh.
        assert log[3:] == ["init:a", "start:a", "init:b", "start:b", "init:c", "start:c"]
        node = node_at(system, "sup")
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
        log.clear()
        await crash(ref_at(system, "top/sub/x"))
        await trio.sleep(1)
        assert log == [
            "stop:x:crashed",
            "stop:y:shutdown",
            "init:x",
            "start:x",
            "init:y",
            "start:y",
        ]
        top = node_at(system, "top")
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
            await crash(ref_at(system, "sub/x"))
            await trio.sleep(1)
        assert node_at(system, "sub").restarts == 1
        # One crash is within the intensity of the new run of "sub".
        await crash(ref_at(system, "sub/x"))
        await trio.sleep(1)
        node = node_at(system, "sub")
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
            assert await refs["b"].ask(Ping()) == "b"
            await trio.sleep(6)
        node = node_at(system, "sup")
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
                await system.spawn(Member, name=name, args=(name, log))
            ref = ref_at(system, "b")
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
        ref = ref_at(system, "sup/w")
        previous = await starts.receive()
        delays = []
        for _ in range(4):
            await ref.tell(Boom())
            # Told during the backoff: queued for the next instance.
            await trio.sleep(0.5)
            assert node_at(system, "sup/w").state == ActorState.RESTARTING
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
        ref = ref_at(system, "sup/w")
        await ref.tell(Boom())
        await trio.sleep(1)
        assert node_at(system, "sup/w").state == ActorState.RESTARTING
    assert trio.current_time() - started == pytest.approx(1)
    assert not ref.is_alive
    assert starts.receive_nowait() == started
    with pytest.raises(trio.WouldBlock):
        starts.receive_nowait()
