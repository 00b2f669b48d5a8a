"""Test kit for actors: a :class:`Probe` to receive messages, and a pattern
for property tests.

A probe is an actor whose messages land in the test::

    async with open_system() as system:
        probe = await Probe.spawn(system)
        await worker.tell(Work(reply_to=probe.ref))
        done = await probe.expect(Done, timeout=1.0)
        await probe.expect_nothing(0.5)
        await system.stop(worker)
        await expect_terminated(probe, worker)

Property-testing an actor protocol
----------------------------------
pytest-trio runs a ``@given`` ``async def`` test under trio, one ``trio.run``
per example, so the actors are live and each example starts from nothing.
Draw commands one at a time with ``st.data()``, apply each to the live actors
and to a plain-Python model, and compare after every step::

    @settings(max_examples=50, deadline=None)
    @given(data=st.data())
    async def test_counter_matches_model(data: st.DataObject) -> None:
        async with open_system() as system:
            ref = await system.spawn(Counter)
            model = 0
            for _ in range(data.draw(st.integers(0, 30))):
                n = data.draw(st.integers(-5, 5))
                await ref.tell(Add(n))
                model += n
                assert await ref.ask(Get()) == model

Drawing step by step (instead of one list up front) lets a step depend on
the state so far, and hypothesis still shrinks a failure to a short run.
Time-dependent protocols use ``trio.testing.MockClock(autojump_threshold=0)``
through pytest-trio's ``autojump_clock`` fixture, so timeouts take no time.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import attrs
import trio

from runtime.actor import Actor
from runtime.messages import Terminated
from runtime.ref import ActorRef
from runtime.system import ActorSystem

__all__ = ["Probe", "expect_terminated"]

T = TypeVar("T")


@attrs.frozen
class _Watch:
    ref: ActorRef


class _ProbeActor(Actor):
    def __init__(self, inbox: trio.MemorySendChannel[Any]) -> None:
        self._inbox = inbox

    async def handle(self, message: Any) -> None:
        if isinstance(message, _Watch):
            self.context.watch(message.ref)
        else:
            self._inbox.send_nowait(message)


class Probe:
    """An actor that hands every message it receives to the test."""

    def __init__(self, ref: ActorRef, inbox: trio.MemoryReceiveChannel[Any]) -> None:
        self.ref = ref
        self._inbox = inbox

    @classmethod
    async def spawn(cls, system: ActorSystem, name: str | None = None) -> Probe:
        """Start a probe under ``system``'s root supervisor."""
        send, receive = trio.open_memory_channel[Any](math.inf)
        ref = await system.spawn(_ProbeActor, name=name, args=(send,))
        return cls(ref, receive)

    async def expect(self, message_type: type[T] = object, timeout: float = 1.0) -> T:  # type: ignore[assignment]
        """Return the next message, asserting it is a ``message_type``.

        Raises :class:`AssertionError` if another type comes first or nothing
        comes within ``timeout`` seconds of trio's clock.
        """
        with trio.move_on_after(timeout):
            message = await self._inbox.receive()
            if not isinstance(message, message_type):
                raise AssertionError(
                    f"expected a {message_type.__name__}, got {type(message).__name__}: {message!r}"
                )
            return message
        raise AssertionError(f"no {message_type.__name__} within {timeout:g}s")

    async def expect_nothing(self, duration: float = 0.1) -> None:
        """Assert that no message arrives within ``duration`` seconds of trio's clock."""
        with trio.move_on_after(duration):
            message = await self._inbox.receive()
            raise AssertionError(f"expected nothing, got {type(message).__name__}: {message!r}")

    async def watch(self, ref: ActorRef) -> None:
        """Have the probe watch ``ref``, so its :class:`Terminated` comes here."""
        await self.ref.ask(_Watch(ref))


async def expect_terminated(probe: Probe, ref: ActorRef, timeout: float = 1.0) -> Terminated:
    """Watch ``ref`` from ``probe`` and return its :class:`Terminated`.

    Raises :class:`AssertionError` if another message comes first or nothing
    comes within ``timeout``.
    """
    await probe.watch(ref)
    terminated = await probe.expect(Terminated, timeout)
    if terminated.ref != ref:
        raise AssertionError(f"expected Terminated of {ref!r}, got {terminated!r}")
    return terminated
