"""Actors, messages and look-ups shared by the runtime tests.

Two kinds of helper actor cover most tests: a :class:`Worker`, whose
answers are fixed, and a :class:`Member`, which logs its lifecycle under
its name into a list shared by all its instances, so a test can read
which instance started and stopped when.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio

from runtime import (
    Actor,
    ActorCrashed,
    ActorRef,
    ActorSnapshot,
    ActorSystem,
    ChildSpec,
    ExitReason,
    Restart,
)
from runtime.testing import Probe


@attrs.frozen
class Boom:
    """Makes the handler raise ``ValueError``."""


@attrs.frozen
class Quit:
    """Makes the actor stop itself after handling this message."""


@attrs.frozen
class Ping:
    """Answered, like any message without a meaning of its own to the actor."""


@attrs.frozen
class Hold:
    """Handled by waiting for one release of the actor's gate."""

    label: Any = None


class Worker(Actor):
    """Raises ``ValueError("boom")`` on Boom, stops itself on Quit (answering
    ``"bye"``), waits for its gate on Hold, and answers ``"ok"`` otherwise.
    """

    def __init__(self, gate: trio.Semaphore | None = None) -> None:
        self.gate = gate

    async def handle(self, message: Any) -> Any:
        if isinstance(message, Boom):
            raise ValueError("boom")
        if isinstance(message, Quit):
            self.context.stop()
            return "bye"
        if isinstance(message, Hold):
            assert self.gate is not None, "Hold needs a Worker built with a gate"
            await self.gate.acquire()
        return "ok"


class Member(Actor):
    """Logs ``init:<name>``, ``start:<name>`` and ``stop:<name>:<reason>``.

    Raises ``ValueError("<name> exploded")`` on Boom, stops itself on Quit,
    and answers its name otherwise.
    """

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        log.append(f"init:{name}")

    async def on_start(self) -> None:
        self.log.append(f"start:{self.name}")

    async def on_stop(self, reason: ExitReason) -> None:
        self.log.append(f"stop:{self.name}:{reason.value}")

    async def handle(self, message: Any) -> Any:
        if isinstance(message, Boom):
            raise ValueError(f"{self.name} exploded")
        if isinstance(message, Quit):
            self.context.stop()
        return self.name


def member(name: str, log: list[str], restart: Restart = Restart.PERMANENT) -> ChildSpec:
    """A child spec for a :class:`Member` named ``name`` logging into ``log``."""
    return ChildSpec(name, functools.partial(Member, name, log), restart=restart)


class Watcher(Actor):
    """Watches ``target`` and forwards every other message it gets to ``probe``.

    It watches only on its first start: a watch outlives the watcher's
    restarts, which is what a test of that relies on. ``"unwatch"`` makes it
    unwatch; Boom makes it raise ``ValueError``.
    """

    def __init__(self, probe: ActorRef, target: ActorRef) -> None:
        self.probe = probe
        self.target = target

    async def on_start(self) -> None:
        if self.context.restarts == 0:
            self.context.watch(self.target)

    async def handle(self, message: Any) -> None:
        if isinstance(message, Boom):
            raise ValueError("watcher boom")
        if message == "unwatch":
            self.context.unwatch(self.target)
            return
        await self.probe.tell(message)


async def crash(ref: ActorRef) -> ActorCrashed:
    """Ask ``ref`` to handle Boom; returns the ActorCrashed the ask raised.

    Fails the test if the ask does not raise ActorCrashed.
    """
    with pytest.raises(ActorCrashed) as caught:
        await ref.ask(Boom())
    return caught.value


async def spawn_watched(
    system: ActorSystem, factory: Callable[..., Actor], name: str, **options: Any
) -> tuple[Probe, ActorRef]:
    """Spawn ``factory`` as ``name`` (with spawn ``options``) and a probe watching it."""
    probe = await Probe.spawn(system)
    ref = await system.spawn(factory, name=name, **options)
    await probe.watch(ref)
    return probe, ref


def ref_at(system: ActorSystem, path: str) -> ActorRef:
    """The ref of the live actor at ``path``; fails the test if there is none."""
    ref = system.lookup(path)
    assert ref is not None, f"no live actor at {path!r}"
    return ref


def node_at(system: ActorSystem, path: str) -> ActorSnapshot:
    """The snapshot of the node at ``path`` right now; fails the test if there is none."""
    node = system.snapshot().find(path)
    assert node is not None, f"no node at {path!r} in the snapshot"
    return node
