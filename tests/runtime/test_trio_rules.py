"""The runtime keeps trio's rules: awaits honour cancellation and let other tasks
run, nothing waits for itself, and shutdown is bounded."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing

from runtime import (
    Actor,
    ActorCrashed,
    ChildSpec,
    ExitReason,
    StartFailed,
    SupervisorRef,
    SupervisorSpec,
    Terminated,
    open_system,
)
from runtime.testing import Probe
from tests.runtime.kit import Ping, Worker, ref_at


class Counter(Actor):
    """Counts what it is told; answers the count to Ping."""

    def __init__(self) -> None:
        self.count = 0

    async def handle(self, message: Any) -> int:
        if isinstance(message, Ping):
            return self.count
        self.count += 1
        return self.count


# -- tell and ask --------------------------------------------------------------


async def test_tell_under_a_cancelled_scope_raises_cancelled_and_sends_nothing() -> None:
    async with open_system() as system:
        ref = await system.spawn(Counter, mailbox_size=100_000)
        sent = 0
        with trio.move_on_at(trio.current_time() - 1):  # a deadline already passed
            for _ in range(50_000):
                await ref.tell("x")
                sent += 1
        assert sent == 0
        with trio.CancelScope() as scope:
            scope.cancel()
            await ref.tell("x")
            sent += 1
        assert sent == 0
        assert await ref.ask(Ping()) == 0


async def test_ask_under_a_cancelled_scope_sends_nothing() -> None:
    async with open_system() as system:
        ref = await system.spawn(Counter)
        with trio.CancelScope() as scope:
            scope.cancel()
            await ref.ask("x")
        assert scope.cancelled_caught
        assert await ref.ask(Ping()) == 0


async def test_tell_nowait_neither_yields_nor_checks_for_cancellation() -> None:
    async with open_system() as system:
        ref = await system.spawn(Counter)
        with trio.CancelScope() as scope:  # noqa: ASYNC100 (no checkpoint is the point)
            scope.cancel()
            with trio.testing.assert_no_checkpoints():
                ref.tell_nowait("x")
        assert await ref.ask(Ping()) == 1


async def test_a_loop_of_tells_lets_other_tasks_run() -> None:
    """A producer telling a million messages to an actor that keeps up never leaves
    the others waiting for the whole loop: a ticking task makes progress all along."""
    ticks_at: list[int] = []
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with open_system() as system:
        ref = await system.spawn(Counter, mailbox_size=1_000_000)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            for i in range(1_000_000):
                await ref.tell(i)
                if i % 100_000 == 0:
                    ticks_at.append(ticks)
            ticks_at.append(ticks)
            nursery.cancel_scope.cancel()
        assert await ref.ask(Ping()) == 1_000_000
    # The ticker ran within every stretch of 100,000 tells, and often.
    gains = [b - a for a, b in itertools.pairwise(ticks_at)]
    assert len(gains) == 10
    assert min(gains) >= 100_000 // 1024 // 2, gains


# -- nothing waits for itself ------------------------------------------------------


class SpawnsFromOnStart(Actor):
    async def on_start(self) -> None:
        await self.context.system.spawn(Worker, name="inner")


class StartsASiblingFromOnStart(Actor):
    async def on_start(self) -> None:
        parent = self.context.system.lookup("sup")
        assert isinstance(parent, SupervisorRef)
        await parent.start_child(ChildSpec("sibling", Worker))


class StopsItself(Actor):
    async def handle(self, message: Any) -> Any:
        if message == "via system":
            return await self.context.system.stop(self.context.self)
        parent = self.context.system.lookup("sup")
        assert isinstance(parent, SupervisorRef)
        return await parent.stop_child("me")


class SpawnsFromHandle(Actor):
    async def handle(self, message: Any) -> Any:
        return await self.context.system.spawn(Worker, name="spawned")


async def test_spawning_at_the_root_from_on_start_raises_at_once() -> None:
    async with open_system() as system:
        with trio.fail_after(5), pytest.raises(StartFailed) as caught:
            await system.spawn(SpawnsFromOnStart, name="eager")
        cause = caught.value.__cause__
        assert isinstance(cause, RuntimeError)
        assert "'eager' asked supervisor '<root>' to start a child" in str(cause)
        assert "would wait forever" in str(cause)
        assert system.lookup("inner") is None
        # The same request from handle() is fine.
        ref = await system.spawn(SpawnsFromHandle)
        spawned = await ref.ask("go")
        assert await spawned.ask(Ping()) == "ok"


async def test_start_child_on_the_own_supervisor_from_on_start_raises_at_once() -> None:
    spec = SupervisorSpec(children=[ChildSpec("eager", StartsASiblingFromOnStart)])
    async with open_system() as system:
        with trio.fail_after(5), pytest.raises(StartFailed) as caught:
            await system.spawn_supervisor(spec, name="sup")
        assert caught.value.failed_child == "eager"
        root_cause = caught.value.__cause__
        assert root_cause is not None
        assert isinstance(root_cause.__cause__, RuntimeError)


@pytest.mark.parametrize("how", ["via system", "via stop_child"])
async def test_stopping_itself_through_its_supervisor_raises_at_once(how: str) -> None:
    async with open_system() as system:
        sup = await system.spawn_supervisor(
            SupervisorSpec(children=[ChildSpec("me", StopsItself)]), name="sup"
        )
        me = ref_at(system, "sup/me")
        with trio.fail_after(5), pytest.raises(ActorCrashed) as caught:
            await me.ask(how)
        assert isinstance(caught.value.__cause__, RuntimeError)
        assert "use self.context.stop() instead" in str(caught.value.__cause__)
        # Stopping it from outside works as ever.
        assert await sup.stop_child("me")


# -- bounded shutdown ---------------------------------------------------------------


@pytest.fixture
def runtime_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The ``runtime`` logger's warnings, wherever the service routed it."""
    runtime_log = logging.getLogger("runtime")
    runtime_log.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger="runtime")
    yield caplog
    runtime_log.removeHandler(caplog.handler)


class StuckInOnStop(Actor):
    async def on_stop(self, reason: ExitReason) -> None:
        await trio.sleep_forever()


class StuckInHandle(Actor):
    async def handle(self, message: Any) -> None:
        await trio.sleep(3600)


async def test_leaving_open_system_with_actors_stuck_in_on_stop_takes_the_sum_of_their_graces(
    autojump_clock: trio.testing.MockClock, runtime_warnings: pytest.LogCaptureFixture
) -> None:
    caplog = runtime_warnings
    started = trio.current_time()
    async with open_system() as system:
        probe = await Probe.spawn(system)
        for name, grace in [("two", 2.0), ("three", 3.0)]:
            ref = await system.spawn(StuckInOnStop, name=name, shutdown=grace)
            await probe.watch(ref)
        sup = await system.spawn_supervisor(
            SupervisorSpec(children=[ChildSpec("one", StuckInOnStop, shutdown=1.0)]), name="sup"
        )
        await probe.watch(ref_at(system, "sup/one"))
        await probe.watch(sup)
    assert trio.current_time() - started == pytest.approx(6.0)
    warnings = [r.getMessage() for r in caplog.records if r.name == "runtime"]
    for path, grace in [("sup/one", 1), ("three", 3), ("two", 2)]:
        assert any(
            f"on_stop of {path!r} outlived the shutdown grace time of {grace}s" in w
            for w in warnings
        ), warnings


async def test_an_actor_stuck_in_handle_is_killed_after_its_grace_and_named(
    autojump_clock: trio.testing.MockClock, runtime_warnings: pytest.LogCaptureFixture
) -> None:
    caplog = runtime_warnings
    async with open_system() as system:
        probe = await Probe.spawn(system)
        ref = await system.spawn(StuckInHandle, name="stuck", shutdown=1.5)
        await probe.watch(ref)
        await ref.tell("hang")
        await trio.testing.wait_all_tasks_blocked()
        started = trio.current_time()
        assert await system.stop(ref)
        assert trio.current_time() - started == pytest.approx(1.5)
        terminated = await probe.expect(Terminated)
        assert terminated.reason is ExitReason.KILLED
    assert any(
        "'stuck' did not stop within its shutdown grace time of 1.5s" in r.getMessage()
        for r in caplog.records
    )
