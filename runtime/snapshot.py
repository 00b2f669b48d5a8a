"""A picture of the live actor tree, for operators and tests."""

from __future__ import annotations

import enum
from collections.abc import Iterator

import attrs

__all__ = ["ActorSnapshot", "ActorState"]


class ActorState(enum.Enum):
    """Where an actor or supervisor is in its lifecycle."""

    STARTING = "starting"
    """Running ``on_start`` (a supervisor: starting its children)."""
    RUNNING = "running"
    RESTARTING = "restarting"
    """Down, about to be started again by its supervisor."""
    STOPPING = "stopping"
    """A stop was requested; it finishes its current message, then ``on_stop``."""
    STOPPED = "stopped"
    """Stopped for good."""


@attrs.frozen
class ActorSnapshot:
    """One node of :meth:`ActorSystem.snapshot`.

    ``kind`` is ``"actor"`` or ``"supervisor"``. ``mailbox_capacity`` is
    ``None`` for an unbounded mailbox (a supervisor's). ``restarts`` counts
    restarts of this path within its supervisor's current run, failed
    attempts included; it is counted before the restarted actor handles its
    next message. A child down for a restart shows as ``restarting``.
    """

    path: str
    kind: str
    state: ActorState
    mailbox_size: int
    mailbox_capacity: int | None
    processed: int
    restarts: int
    last_failure: str | None
    children: tuple[ActorSnapshot, ...] = ()

    def walk(self) -> Iterator[ActorSnapshot]:
        """This node and every node below it, depth first, in start order."""
        yield self
        for child in self.children:
            yield from child.walk()

    def find(self, path: str) -> ActorSnapshot | None:
        """The node at ``path`` in this subtree, or None."""
        return next((node for node in self.walk() if node.path == path), None)
