"""The test kit: Probe.expect, expect_nothing and expect_terminated."""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing

from runtime import ExitReason, Terminated, open_system
from runtime.testing import Probe, expect_terminated
from tests.runtime.kit import Worker


@attrs.frozen
class Hello:
    text: str


async def test_expect_returns_the_next_message_of_the_expected_type(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        probe = await Probe.spawn(system, name="probe")
        assert probe.ref.path == "probe"
        await probe.ref.tell(Hello("first"))
        await probe.ref.tell("second")
        assert await probe.expect(Hello) == Hello("first")
        assert await probe.expect() == "second"


async def test_expect_raises_assertion_error_on_a_message_of_another_type(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        probe = await Probe.spawn(system)
        await probe.ref.tell("not a greeting")
        with pytest.raises(AssertionError, match="expected a Hello, got str"):
            await probe.expect(Hello)


async def test_expect_raises_assertion_error_when_nothing_comes_in_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        probe = await Probe.spawn(system)
        started = trio.current_time()
        with pytest.raises(AssertionError, match=r"no Hello within 2\.5s"):
            await probe.expect(Hello, timeout=2.5)
        assert trio.current_time() - started == pytest.approx(2.5)


async def test_expect_waits_for_a_message_that_comes_within_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        probe = await Probe.spawn(system)

        async def greet_later() -> None:
            await trio.sleep(3)
            await probe.ref.tell(Hello("late"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(greet_later)
            assert await probe.expect(Hello, timeout=5) == Hello("late")
        assert trio.current_time() == pytest.approx(3)


async def test_expect_nothing_passes_when_quiet_and_fails_on_a_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        probe = await Probe.spawn(system)
        started = trio.current_time()
        await probe.expect_nothing(4)
        assert trio.current_time() - started == pytest.approx(4)

        async def greet_later() -> None:
            await trio.sleep(1)
            await probe.ref.tell(Hello("surprise"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(greet_later)
            with pytest.raises(AssertionError, match="expected nothing, got Hello"):
                await probe.expect_nothing(4)


async def test_expect_terminated_returns_the_terminated_of_that_ref(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        probe = await Probe.spawn(system)
        ref = await system.spawn(Worker, name="idle")

        async def stop_later() -> None:
            await trio.sleep(1)
            await system.stop(ref)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_later)
            terminated = await expect_terminated(probe, ref, timeout=5)
        assert terminated == Terminated(ref, ExitReason.SHUTDOWN)


async def test_expect_terminated_fails_while_the_actor_lives_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        probe = await Probe.spawn(system)
        ref = await system.spawn(Worker, name="idle")
        with pytest.raises(AssertionError, match="no Terminated within 1s"):
            await expect_terminated(probe, ref, timeout=1)
        assert ref.is_alive


async def test_expect_terminated_fails_on_the_terminated_of_another_actor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        probe = await Probe.spawn(system)
        other = await system.spawn(Worker, name="other")
        ref = await system.spawn(Worker, name="idle")
        await probe.watch(other)
        await system.stop(other)
        with pytest.raises(AssertionError, match="expected Terminated of <ActorRef 'idle'>"):
            await expect_terminated(probe, ref)
