"""A picture of the live actor tree, for operators and tests."""

from __future__ import annotations

from collections.abc import Iterator

import attrs

__all__ = ["ActorSnapshot"]


@attrs.frozen
class ActorSnapshot:
    """One node of :meth:`ActorSystem.snapshot`.

    ``state`` is ``starting``, ``running``, ``restarting``, ``stopping`` or
    ``stopped``. ``mailbox_capacity`` is ``None`` for an unbounded mailbox (a
    supervisor's). ``restarts`` counts restarts of this node; it is counted
    before the restarted actor handles its next message.
    """

    path: str
    kind: str
    state: str
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
