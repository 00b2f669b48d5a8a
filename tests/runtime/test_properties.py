"""Property tests of the actor runtime: supervision against an OTP model, and
mailboxes that keep their messages across restarts.

Every example runs in its own ``trio.run`` (pytest-trio wraps hypothesis'
inner test) on the module's ``autojump_clock``. That fixture is function
scoped, so hypothesis hands the same :class:`~trio.testing.MockClock` to every
example of a test: virtual time then starts where the previous example left
it, which is harmless because the runtime only ever compares times with each
other. :func:`test_each_example_is_a_fresh_trio_run_on_the_mock_clock` checks
that arrangement.
"""

from __future__ import annotations

import collections
import functools
from typing import Any

import attrs
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import (
    Actor,
    ActorCrashed,
    ActorRef,
    ActorState,
    ActorSystem,
    ChildSpec,
    ExitReason,
    Restart,
    Strategy,
    SupervisorGaveUp,
    SupervisorRef,
    SupervisorSpec,
    Terminated,
    open_system,
)
from runtime.testing import Probe
from tests.runtime.otp_model import ModelChild, SupervisorModel

# The clock fixture is function scoped on purpose (see the module docstring).
PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Far beyond any run of these tests, so a timeout means an ask hung.
ASK_TIMEOUT = 3600.0

SUT = "sut"


# -- the harness itself ------------------------------------------------------

_root_tasks_seen: list[trio.lowlevel.Task] = []


@settings(PROPERTY, max_examples=5)
@given(n=st.integers())
async def test_each_example_is_a_fresh_trio_run_on_the_mock_clock(
    n: int, autojump_clock: trio.testing.MockClock
) -> None:
    assert trio.lowlevel.current_clock() is autojump_clock
    root = trio.lowlevel.current_root_task()
    assert root is not None
    assert root not in _root_tasks_seen
    _root_tasks_seen.append(root)
    before = trio.current_time()
    await trio.sleep(1000.0)
    assert trio.current_time() == before + 1000.0


# -- supervision against the model -------------------------------------------


@attrs.frozen
class Crash:
    """The handler raises on it."""


@attrs.frozen
class StopSelf:
    """The handler stops its actor normally."""


class Boom(Exception):
    pass


class Worker(Actor):
    """Records each of its starts in a list shared by the whole tree."""

    def __init__(self, name: str, starts: list[str], fail_next_start: set[str]) -> None:
        self._name = name
        self._starts = starts
        self._fail_next_start = fail_next_start

    async def on_start(self) -> None:
        self._starts.append(self._name)
        if self._name in self._fail_next_start:
            self._fail_next_start.discard(self._name)
            raise Boom(f"{self._name} failed to start")

    async def handle(self, message: Any) -> None:
        if isinstance(message, Crash):
            raise Boom(self._name)
        if isinstance(message, StopSelf):
            self.context.stop()
            return
        raise TypeError(f"unexpected {message!r}")


def assert_tree_matches(
    system: ActorSystem,
    supervisor: SupervisorRef,
    refs: dict[str, ActorRef],
    starts: list[str],
    model: SupervisorModel,
) -> None:
    node = system.snapshot().find(SUT)
    assert supervisor.is_alive == (not model.gave_up)
    assert (node is None) == model.gave_up
    children = () if node is None else node.children
    assert [child.path for child in children] == [f"{SUT}/{name}" for name in model.running]
    for child in children:
        name = child.path.rpartition("/")[2]
        assert child.state == ActorState.RUNNING
        assert child.restarts == model.restarts(name)
    assert collections.Counter(starts) == model.starts
    for name, ref in refs.items():
        running = name in model.running
        assert ref.is_alive == running
        # A ref names a path: it reaches whichever actor runs there now.
        assert system.lookup(f"{SUT}/{name}") == (ref if running else None)


# Enough examples to land restarts on the intensity window's edge.
@settings(PROPERTY, max_examples=300)
@given(data=st.data())
async def test_supervisor_matches_otp_model(
    data: st.DataObject, autojump_clock: trio.testing.MockClock
) -> None:
    strategy = data.draw(st.sampled_from(Strategy), label="strategy")
    max_restarts = data.draw(st.integers(0, 3), label="max_restarts")
    # Windows and sleeps are exact binary fractions and sleeps are fractions
    # of the window, so restarts often land exactly on the window's edge.
    within = data.draw(st.sampled_from([0.5, 1.0, 2.0, 5.0]), label="within")
    restart_types = data.draw(
        st.lists(st.sampled_from(Restart), min_size=1, max_size=5), label="restart types"
    )
    names = [f"c{i}" for i in range(len(restart_types))]
    starts: list[str] = []
    fail_next_start: set[str] = set()
    model = SupervisorModel(
        strategy,
        max_restarts,
        within,
        tuple(
            ModelChild(name, restart) for name, restart in zip(names, restart_types, strict=True)
        ),
    )
    spec = SupervisorSpec(
        strategy,
        max_restarts,
        within,
        children=[
            ChildSpec(
                name, functools.partial(Worker, name, starts, fail_next_start), restart=restart
            )
            for name, restart in zip(names, restart_types, strict=True)
        ],
    )
    # Only the supervisor under test may give up; as a temporary child it is
    # then dropped by the root instead of restarted.
    async with open_system(max_restarts=1_000_000, within=1.0) as system:
        supervisor = await system.spawn_supervisor(spec, name=SUT, restart=Restart.TEMPORARY)
        probe = await Probe.spawn(system)
        await probe.watch(supervisor)
        refs: dict[str, ActorRef] = {}
        for name in names:
            ref = system.lookup(f"{SUT}/{name}")
            assert ref is not None
            refs[name] = ref
        assert_tree_matches(system, supervisor, refs, starts, model)

        for _ in range(data.draw(st.integers(1, 15), label="steps")):
            if model.gave_up:
                break
            kinds = ["crash", "stop", "sleep", "fail next start"] if model.running else ["sleep"]
            kind = data.draw(st.sampled_from(kinds), label="event")
            if kind == "fail next start":
                name = data.draw(st.sampled_from(model.kept), label="child")
                fail_next_start.add(name)
                model.fail_next_start.add(name)
            elif kind == "sleep":
                fraction = data.draw(st.sampled_from([0.25, 0.5, 1.0, 2.0]), label="dt/within")
                await trio.sleep(fraction * within)
            else:
                name = data.draw(st.sampled_from(model.running), label="child")
                await refs[name].tell(Crash() if kind == "crash" else StopSelf())
                # The supervisor reads the clock when it handles the exit; no
                # time passes until everything is blocked again.
                now = trio.current_time()
                await trio.testing.wait_all_tasks_blocked()
                assert trio.current_time() == now
                model.child_exited(name, crashed=kind == "crash", now=now)
            assert_tree_matches(system, supervisor, refs, starts, model)
        if model.gave_up:
            # Giving up is a shutdown exit that carries the reason.
            terminated = await probe.expect(Terminated)
            assert terminated.reason is ExitReason.SHUTDOWN
            assert isinstance(terminated.error, SupervisorGaveUp)
        else:
            await probe.expect_nothing(0.0)


# -- mailboxes across restarts ---------------------------------------------------


@attrs.frozen
class Item:
    seq: int
    poison: bool


@attrs.frozen
class Sync:
    """Answered with the number of items handled so far."""


class Poisoned(Exception):
    pass


class Recorder(Actor):
    """Appends each item it handles to a list that outlives its restarts."""

    def __init__(self, handled: list[int]) -> None:
        self._handled = handled

    async def handle(self, message: Any) -> int:
        if isinstance(message, Sync):
            return len(self._handled)
        assert isinstance(message, Item)
        if message.poison:
            raise Poisoned(message.seq)
        self._handled.append(message.seq)
        return message.seq


async def ask_into(
    ref: ActorRef,
    item: Item,
    results: dict[int, Any],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    # started() first: ask() queues its message before its first checkpoint,
    # so the caller resumes only once the ask holds its place in the mailbox.
    task_status.started()
    try:
        results[item.seq] = await ref.ask(item, timeout=ASK_TIMEOUT)
    except ActorCrashed as crash:
        results[item.seq] = crash


@settings(PROPERTY, max_examples=150)
@given(data=st.data())
async def test_queued_messages_survive_restarts_in_order(
    data: st.DataObject, autojump_clock: trio.testing.MockClock
) -> None:
    mailbox_size = data.draw(st.integers(1, 8), label="mailbox size")
    plan = data.draw(
        st.lists(st.tuples(st.booleans(), st.booleans()), max_size=40),
        label="(poison, ask) per message",
    )
    items = [Item(seq, poison) for seq, (poison, _) in enumerate(plan)]
    asked = {seq for seq, (_, ask) in enumerate(plan) if ask}
    handled: list[int] = []
    spec = SupervisorSpec(
        Strategy.ONE_FOR_ONE,
        max_restarts=1000,
        within=1.0,
        children=[
            ChildSpec("recorder", functools.partial(Recorder, handled), mailbox_size=mailbox_size)
        ],
    )
    async with open_system() as system:
        await system.spawn_supervisor(spec, name=SUT)
        ref = system.lookup(f"{SUT}/recorder")
        assert ref is not None
        results: dict[int, Any] = {}
        async with trio.open_nursery() as nursery:
            for item in items:
                if item.seq in asked:
                    await nursery.start(ask_into, ref, item, results)
                else:
                    await ref.tell(item)
        expected = [item.seq for item in items if not item.poison]
        assert await ref.ask(Sync(), timeout=ASK_TIMEOUT) == len(expected)
        assert handled == expected
        assert set(results) == asked
        for seq in asked:
            if items[seq].poison:
                assert isinstance(results[seq], ActorCrashed)
                assert isinstance(results[seq].__cause__, Poisoned)
                assert results[seq].__cause__.args == (seq,)
            else:
                assert results[seq] == seq
        snapshot = system.snapshot().find(f"{SUT}/recorder")
        assert snapshot is not None
        assert snapshot.restarts == sum(item.poison for item in items)
