"""Death watch: Terminated when an actor stops for good, never on a restart."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from runtime import ExitReason, Restart, Terminated, open_system
from runtime.testing import Probe, expect_terminated
from tests.runtime.kit import Boom, Quit, Watcher, Worker, crash, node_at, spawn_watched


async def test_stop_child_delivers_terminated_with_reason_shutdown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        probe, ref = await spawn_watched(system, Worker, "w")
        assert await system.root.stop_child("w")
        terminated = await probe.expect(Terminated)
        assert terminated == Terminated(ref, ExitReason.SHUTDOWN)
        assert terminated.error is None
        await probe.expect_nothing(1)


@pytest.mark.parametrize("restart", [Restart.TEMPORARY, Restart.TRANSIENT])
async def test_a_temporary_or_transient_child_stopping_itself_is_terminated_normal(
    autojump_clock: trio.testing.MockClock, restart: Restart
) -> None:
    async with open_system() as system:
        probe, ref = await spawn_watched(system, Worker, "w", restart=restart)
        await ref.tell(Quit())
        terminated = await probe.expect(Terminated)
        assert (terminated.ref, terminated.reason, terminated.error) == (
            ref,
            ExitReason.NORMAL,
            None,
        )
        assert not ref.is_alive


async def test_a_crashing_temporary_child_is_terminated_crashed_with_the_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        probe, ref = await spawn_watched(system, Worker, "w", restart=Restart.TEMPORARY)
        crashed = await crash(ref)
        terminated = await probe.expect(Terminated)
        assert (terminated.ref, terminated.reason) == (ref, ExitReason.CRASHED)
        assert terminated.error is crashed.__cause__
        assert isinstance(terminated.error, ValueError)


async def test_a_restart_delivers_no_terminated(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system(max_restarts=3) as system:
        probe, ref = await spawn_watched(system, Worker, "w")
        await ref.tell(Boom())
        await ref.tell(Quit())  # a PERMANENT child is restarted after a normal stop too
        assert await ref.ask("still there?") == "ok"
        await probe.expect_nothing(5)
        assert node_at(system, "w").restarts == 2
        await system.stop(ref)
        assert (await probe.expect(Terminated)).reason == ExitReason.SHUTDOWN


async def test_watching_an_actor_that_already_stopped_delivers_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        probe = await Probe.spawn(system)
        ref = await system.spawn(Worker, name="w")
        await system.stop(ref)
        started = trio.current_time()
        terminated = await expect_terminated(probe, ref)
        assert trio.current_time() == started
        # The late watcher learns how it actually ended.
        assert terminated.reason == ExitReason.SHUTDOWN


async def test_every_watcher_is_told_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        probes = [await Probe.spawn(system) for _ in range(3)]
        ref = await system.spawn(Worker, name="w", restart=Restart.TEMPORARY)
        for probe in probes:
            await probe.watch(ref)
            await probe.watch(ref)  # watching twice is watching once
        await ref.tell(Quit())
        for probe in probes:
            assert (await probe.expect(Terminated)).ref == ref
            await probe.expect_nothing(1)


async def test_an_actor_can_watch_and_unwatch_through_its_context(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        probe = await Probe.spawn(system)
        first = await system.spawn(Worker, name="first")
        second = await system.spawn(Worker, name="second")
        await system.spawn(Watcher, name="watcher1", args=(probe.ref, first))
        watcher2 = await system.spawn(Watcher, name="watcher2", args=(probe.ref, second))
        await system.stop(first)
        assert (await probe.expect(Terminated)).ref == first
        await watcher2.ask("unwatch")
        await system.stop(second)
        await probe.expect_nothing(1)
