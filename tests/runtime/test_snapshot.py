"""Names, lookup and the snapshot of the live tree."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing

from runtime import ActorSnapshot, ActorState, ChildSpec, NameTaken, SupervisorSpec, open_system
from tests.runtime.kit import Hold, Worker, crash, node_at


@attrs.frozen
class MyRestarts:
    """Ask: this actor's restart count, as the system snapshot shows it right now."""


class KnowsItsRestarts(Worker):
    async def handle(self, message: Any) -> Any:
        if isinstance(message, MyRestarts):
            return node_at(self.context.system, self.context.path).restarts
        return await super().handle(message)


def tree_spec() -> SupervisorSpec:
    return SupervisorSpec(
        children=[
            ChildSpec("a", Worker),
            ChildSpec("sub", SupervisorSpec(children=[ChildSpec("x", Worker, mailbox_size=7)])),
        ]
    )


async def test_paths_are_hierarchical_and_lookup_finds_live_actors(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        sup = await system.spawn_supervisor(tree_spec(), name="sup")
        top = await system.spawn(Worker, name="a")
        assert sup.path == "sup"
        assert top.path == "a"
        a, sub, x = (system.lookup(path) for path in ("sup/a", "sup/sub", "sup/sub/x"))
        assert a is not None and sub is not None and x is not None
        assert (a.path, sub.path, x.path) == ("sup/a", "sup/sub", "sup/sub/x")
        assert system.lookup("sup") == sup
        assert system.lookup("a") == top
        assert a != top
        assert await x.ask("hello") == "ok"
        assert system.lookup("sup/nope") is None
        assert system.lookup("x") is None


async def test_a_taken_name_raises_name_taken(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        sup = await system.spawn_supervisor(tree_spec(), name="sup")
        first = await system.spawn(Worker, name="one")
        with pytest.raises(NameTaken, match="one"):
            await system.spawn(Worker, name="one")
        with pytest.raises(NameTaken, match="sup"):
            await system.spawn_supervisor(SupervisorSpec(), name="sup")
        with pytest.raises(NameTaken, match="sup/a"):
            await sup.start_child(ChildSpec("a", Worker))
        assert system.lookup("one") == first
        assert await first.ask("still me") == "ok"
        # Once stopped, the name is free again, and a ref names a path: the
        # old one reaches the new actor.
        await system.stop(first)
        assert not first.is_alive
        second = await system.spawn(Worker, name="one")
        assert second == first
        assert first.is_alive


async def test_unnamed_actors_get_unique_paths(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        refs = [await system.spawn(Worker) for _ in range(5)]
        assert len({ref.path for ref in refs}) == 5
        assert all(system.lookup(ref.path) == ref for ref in refs)


async def test_snapshot_describes_every_node_of_the_live_tree(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = trio.Semaphore(0)
    async with open_system() as system:
        await system.spawn_supervisor(tree_spec(), name="sup")
        worker = await system.spawn(Worker, name="w", args=(gate,), mailbox_size=10)
        await worker.tell(Hold())
        await trio.sleep(1)  # it holds the gate; what comes next waits in its mailbox
        for _ in range(3):
            await worker.tell("queued")
        root = system.snapshot()
        assert isinstance(root, ActorSnapshot)
        assert (root.path, root.kind, root.state, root.mailbox_capacity) == (
            "",
            "supervisor",
            ActorState.RUNNING,
            None,
        )
        assert [node.path for node in root.walk()] == [
            "",
            "sup",
            "sup/a",
            "sup/sub",
            "sup/sub/x",
            "w",
        ]
        assert root.find("sup/sub/x") == ActorSnapshot(
            path="sup/sub/x",
            kind="actor",
            state=ActorState.RUNNING,
            mailbox_size=0,
            mailbox_capacity=7,
            processed=0,
            restarts=0,
            last_failure=None,
            children=(),
        )
        sub = root.find("sup/sub")
        assert sub is not None
        assert (sub.kind, sub.mailbox_capacity, [c.path for c in sub.children]) == (
            "supervisor",
            None,
            ["sup/sub/x"],
        )
        w = root.find("w")
        assert w is not None
        assert (w.mailbox_size, w.mailbox_capacity, w.processed) == (3, 10, 0)
        for _ in range(4):
            gate.release()
        assert await worker.ask("done?") == "ok"
        w = node_at(system, "w")
        assert (w.mailbox_size, w.processed) == (0, 5)
        assert root.find("nope") is None


async def test_a_restart_is_counted_before_the_restarted_actor_handles_a_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        ref = await system.spawn(KnowsItsRestarts, name="n")
        assert await ref.ask(MyRestarts()) == 0
        await crash(ref)
        assert await ref.ask(MyRestarts()) == 1
        node = node_at(system, "n")
        assert (node.restarts, node.last_failure) == (1, "ValueError: boom")


async def test_stopped_actors_leave_the_snapshot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        sup = await system.spawn_supervisor(tree_spec(), name="sup")
        assert await sup.stop_child("sub")
        root = system.snapshot()
        assert [node.path for node in root.walk()] == ["", "sup", "sup/a"]
        assert system.lookup("sup/sub/x") is None
