"""Shutdown: reverse start order, grace times, nothing left running, errors unchanged."""

from __future__ import annotations

import functools
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from runtime import (
    Actor,
    ActorStopped,
    ChildSpec,
    ExitReason,
    SupervisorSpec,
    Terminated,
    open_system,
)
from tests.runtime.kit import Member, spawn_watched


@attrs.frozen
class Hang:
    """Handled by sleeping forever."""


class Logged(Member):
    """A Member whose on_stop takes ``stop_time`` seconds (``inf``: forever),
    then logs ``stopped:<name>@<trio time>``, even when cut off.
    """

    def __init__(self, name: str, log: list[str], stop_time: float = 0) -> None:
        super().__init__(name, log)
        self.stop_time = stop_time

    async def on_stop(self, reason: ExitReason) -> None:
        await super().on_stop(reason)
        try:
            await trio.sleep(self.stop_time)
        finally:
            self.log.append(f"stopped:{self.name}@{trio.current_time():g}")

    async def handle(self, message: Any) -> Any:
        if isinstance(message, Hang):
            await trio.sleep_forever()
        return await super().handle(message)


def logged(name: str, log: list[str], stop_time: float = 0, **options: Any) -> ChildSpec:
    return ChildSpec(name, functools.partial(Logged, name, log, stop_time), **options)


def stops(log: list[str]) -> list[str]:
    """The ``stop:`` lines of ``log``, in order."""
    return [line for line in log if line.startswith("stop:")]


async def test_leaving_open_system_stops_every_actor_in_reverse_start_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system() as system:
        await system.spawn(functools.partial(Logged, "a", log), name="a")
        await system.spawn_supervisor(
            SupervisorSpec(children=[logged("x", log), logged("y", log)]), name="sup"
        )
        await system.spawn(functools.partial(Logged, "z", log), name="z")
        assert stops(log) == []
    assert stops(log) == [
        "stop:z:shutdown",
        "stop:y:shutdown",
        "stop:x:shutdown",
        "stop:a:shutdown",
    ]


async def test_stop_child_stops_a_nested_supervisors_children_in_reverse_start_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system() as system:
        await system.spawn_supervisor(
            SupervisorSpec(children=[logged(name, log) for name in "xyz"]), name="sup"
        )
        refs = [system.lookup(f"sup/{name}") for name in "xyz"]
        assert await system.root.stop_child("sup")
        assert stops(log) == ["stop:z:shutdown", "stop:y:shutdown", "stop:x:shutdown"]
        assert all(ref is not None and not ref.is_alive for ref in refs)
        assert system.lookup("sup") is None
        assert system.snapshot().children == ()
        assert not await system.root.stop_child("sup")


async def test_stop_child_stops_only_that_child_for_good(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system() as system:
        sup = await system.spawn_supervisor(
            SupervisorSpec(children=[logged(name, log) for name in "xyz"]), name="sup"
        )
        assert await sup.stop_child("y")
        assert stops(log) == ["stop:y:shutdown"]
        assert [ref.path for ref in await sup.children()] == ["sup/x", "sup/z"]
        assert not await sup.stop_child("y")
        log.clear()
    # Stopped for good: it is not started again, nor stopped twice.
    assert stops(log) == ["stop:z:shutdown", "stop:x:shutdown"]


async def test_each_child_gets_its_grace_time_for_on_stop_and_no_more(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system() as system:
        sup = await system.spawn_supervisor(
            SupervisorSpec(
                children=[
                    logged("quick", log, stop_time=1, shutdown=3),
                    logged("stuck", log, stop_time=float("inf"), shutdown=2),
                ]
            ),
            name="sup",
        )
        log.clear()
        started = trio.current_time()
        assert await sup.stop_child("stuck")
        # The endless on_stop was cut off at the 2 s grace time.
        assert trio.current_time() - started == pytest.approx(2)
        assert log == ["stop:stuck:shutdown", f"stopped:stuck@{started + 2:g}"]
        log.clear()
        started = trio.current_time()
        assert await sup.stop_child("quick")
        # An on_stop that ends within its grace time runs to the end.
        assert trio.current_time() - started == pytest.approx(1)
        assert log == ["stop:quick:shutdown", f"stopped:quick@{started + 1:g}"]


async def test_shutdown_grace_applies_to_each_child_in_turn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    started = trio.current_time()
    async with open_system() as system:
        for name in "abc":
            await system.spawn(
                functools.partial(Logged, name, log, float("inf")), name=name, shutdown=1.5
            )
        log.clear()
    assert trio.current_time() - started == pytest.approx(4.5)
    assert log == [
        "stop:c:shutdown",
        f"stopped:c@{started + 1.5:g}",
        "stop:b:shutdown",
        f"stopped:b@{started + 3:g}",
        "stop:a:shutdown",
        f"stopped:a@{started + 4.5:g}",
    ]


async def test_a_handler_that_outlives_the_grace_time_is_cancelled_and_reported_killed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    async with open_system() as system:
        probe, ref = await spawn_watched(
            system, functools.partial(Logged, "h", log), "h", shutdown=2
        )
        await ref.tell(Hang())
        await trio.sleep(1)
        started = trio.current_time()
        assert await system.stop(ref)
        assert trio.current_time() - started == pytest.approx(2)
        terminated = await probe.expect(Terminated)
        assert (terminated.ref, terminated.reason) == (ref, ExitReason.KILLED)
        with pytest.raises(ActorStopped):
            await ref.tell("too late")


class Background(Actor):
    def __init__(self, flags: dict[str, bool]) -> None:
        self.flags = flags

    async def on_start(self) -> None:
        self.context.start_task(self.forever)

    async def forever(self) -> None:
        self.flags["running"] = True
        try:
            await trio.sleep_forever()
        finally:
            self.flags["running"] = False
            self.flags["cancelled"] = True

    async def handle(self, message: Any) -> Any:
        return self.flags.get("running", False)


async def test_nothing_is_left_running_after_the_system_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flags: dict[str, bool] = {}
    this_task = trio.lowlevel.current_task()
    nurseries_before = list(this_task.child_nurseries)
    async with open_system() as system:
        ref = await system.spawn(functools.partial(Background, flags), name="bg")
        assert await ref.ask("running?") is True
        assert len(this_task.child_nurseries) == len(nurseries_before) + 1
    assert flags == {"running": False, "cancelled": True}
    # The system's nursery, and every task under it, is gone.
    assert this_task.child_nurseries == nurseries_before
    assert not ref.is_alive


class BodyError(Exception):
    pass


async def test_an_exception_from_the_body_propagates_unchanged_after_shutdown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    original = BodyError("from the body")
    cause = KeyError("the cause")
    with pytest.raises(BodyError) as caught:
        async with open_system() as system:
            await system.spawn(functools.partial(Logged, "a", log), name="a")
            raise original from cause
    assert caught.value is original
    assert caught.value.__cause__ is cause
    assert stops(log) == ["stop:a:shutdown"]


async def test_an_exception_handled_in_the_body_keeps_its_context(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with pytest.raises(BodyError) as caught:
        async with open_system():
            try:
                raise LookupError("first")
            except LookupError:
                raise BodyError("second")  # noqa: B904 -- the implicit context is the point
    assert isinstance(caught.value.__context__, LookupError)
    assert caught.value.__cause__ is None
    assert not caught.value.__suppress_context__


async def test_cancelling_the_block_still_stops_every_actor_in_order_within_its_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    started = trio.current_time()
    with trio.move_on_after(10) as scope:
        async with open_system() as system:
            for name in "abc":
                await system.spawn(functools.partial(Logged, name, log, 1), name=name)
            await trio.sleep_forever()
    assert scope.cancelled_caught
    # Cancelled at 10 s; then each on_stop took its 1 s, one after the other.
    assert trio.current_time() - started == pytest.approx(13)
    assert stops(log) == ["stop:c:shutdown", "stop:b:shutdown", "stop:a:shutdown"]
