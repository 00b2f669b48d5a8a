"""Supervisors held to Erlang/OTP's own test suite, ``lib/stdlib/test/supervisor_SUITE.erl``.

Each test is named after the OTP case whose behaviour it checks (``test_<case>``),
and its docstring says what that case asserts and how troupe spells it:
``{error, Reason}`` from ``start_child`` is :class:`StartFailed`,
``already_started`` / ``already_present`` are :class:`NameTaken`, and an exit
with reason ``shutdown`` is :attr:`ExitReason.SHUTDOWN`.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing

from runtime import (
    ActorStopped,
    Backoff,
    ChildSpec,
    ExitReason,
    NameTaken,
    Restart,
    StartFailed,
    Strategy,
    SupervisorGaveUp,
    SupervisorRef,
    SupervisorSpec,
    Terminated,
    open_system,
)
from runtime.testing import Probe, expect_terminated
from tests.runtime.kit import Member, Ping, Quit, Worker, crash, member, node_at, ref_at


class FailsToStart(Member):
    """A Member whose ``on_start`` raises as many times as ``failing[name]`` says."""

    def __init__(self, name: str, log: list[str], failing: Counter[str]) -> None:
        super().__init__(name, log)
        self.failing = failing

    async def on_start(self) -> None:
        await super().on_start()
        if self.failing[self.name] > 0:
            self.failing[self.name] -= 1
            raise RuntimeError(f"{self.name} cannot start")


def flaky(
    name: str, log: list[str], failing: Counter[str], restart: Restart = Restart.PERMANENT
) -> ChildSpec:
    return ChildSpec(name, functools.partial(FailsToStart, name, log, failing), restart=restart)


def starts_and_stops(log: list[str]) -> list[str]:
    """The log without the ``init:`` lines: what started and what stopped, in order."""
    return [line for line in log if not line.startswith("init:")]


# -- start failures ---------------------------------------------------------------


async def test_sup_start_child_returns_error(autojump_clock: trio.testing.MockClock) -> None:
    """OTP: ``start_child`` of a child whose init fails returns ``{error, Reason}``, and
    the supervisor keeps no spec, restarts nothing and counts nothing."""
    log: list[str] = []
    async with open_system() as system:
        sup = await system.spawn_supervisor(SupervisorSpec(children=[member("a", log)]), name="sup")
        with pytest.raises(StartFailed) as caught:
            await sup.start_child(flaky("b", log, Counter(b=1)))
        error = caught.value
        assert (error.path, error.failed_child) == ("sup/b", None)
        assert isinstance(error.__cause__, RuntimeError)
        assert str(error.__cause__) == "b cannot start"
        # Started once, not retried, and not kept: the name is free again.
        await trio.testing.wait_all_tasks_blocked()
        assert log.count("start:b") == 1
        assert [ref.path for ref in await sup.children()] == ["sup/a"]
        assert node_at(system, "sup").restarts == 0
        assert node_at(system, "sup/a").restarts == 0
        ok = await sup.start_child(member("b", log))
        assert await ok.ask(Ping()) == "b"
        # The failed start spent none of the intensity of one restart.
        await crash(ref_at(system, "sup/a"))
        assert await ref_at(system, "sup/a").ask(Ping()) == "a"


async def test_sup_start_fail(autojump_clock: trio.testing.MockClock) -> None:
    """OTP: a static child whose start fails makes the supervisor stop the children it
    had started, in reverse, and fail with ``{shutdown, {failed_to_start_child, Id, R}}``;
    later children are never started. At the root the system stays usable."""
    log: list[str] = []
    spec = SupervisorSpec(
        children=[
            member("a", log),
            member("b", log),
            flaky("c", log, Counter(c=1)),
            member("d", log),
        ]
    )
    async with open_system() as system:
        with pytest.raises(StartFailed) as caught:
            await system.spawn_supervisor(spec, name="sup")
        error = caught.value
        assert (error.path, error.failed_child) == ("sup", "c")
        inner = error.__cause__
        assert isinstance(inner, StartFailed) and inner.path == "sup/c"
        assert isinstance(inner.__cause__, RuntimeError)
        assert starts_and_stops(log) == [
            "start:a",
            "start:b",
            "start:c",
            "stop:c:crashed",
            "stop:b:shutdown",
            "stop:a:shutdown",
        ]
        assert system.lookup("sup") is None
        assert system.lookup("sup/a") is None
        assert [node.path for node in system.snapshot().children] == []
        worker = await system.spawn(Worker, name="sup")
        assert await worker.ask(Ping()) == "ok"


async def test_sup_start_fail_of_a_nested_supervisor_names_the_deepest_child(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """OTP's ``sup_start_fail`` one level down: the reason nests one
    ``failed_to_start_child`` per supervisor."""
    log: list[str] = []
    inner = SupervisorSpec(children=[member("x", log), flaky("y", log, Counter(y=1))])
    outer = SupervisorSpec(children=[member("a", log), ChildSpec("inner", inner)])
    async with open_system() as system:
        with pytest.raises(StartFailed) as caught:
            await system.spawn_supervisor(outer, name="outer")
        chain = [caught.value]
        while isinstance(chain[-1].__cause__, StartFailed):
            chain.append(chain[-1].__cause__)
        assert [(e.path, e.failed_child) for e in chain] == [
            ("outer", "inner"),
            ("outer/inner", "y"),
            ("outer/inner/y", None),
        ]
        assert starts_and_stops(log) == [
            "start:a",
            "start:x",
            "start:y",
            "stop:y:crashed",
            "stop:x:shutdown",
            "stop:a:shutdown",
        ]


@pytest.mark.parametrize("strategy", [Strategy.ONE_FOR_ALL, Strategy.REST_FOR_ONE])
async def test_other_child_fails_restart(
    strategy: Strategy, autojump_clock: trio.testing.MockClock
) -> None:
    """OTP's ``one_for_all_other_child_fails_restart`` and
    ``rest_for_one_other_child_fails_restart``: in a group restart, starting stops at
    the first child that fails; the children after it are not started while it is
    down, and the supervisor tries again from it, as one more restart."""
    log: list[str] = []
    failing: Counter[str] = Counter()
    spec = SupervisorSpec(
        strategy,
        max_restarts=2,
        children=[flaky("a", log, failing), flaky("b", log, failing), flaky("c", log, failing)],
    )
    async with open_system() as system:
        await system.spawn_supervisor(spec, name="sup")
        log.clear()
        # a crashes, and b's first restart fails.
        failing["b"] = 1
        await crash(ref_at(system, "sup/a"))
        await trio.testing.wait_all_tasks_blocked()
        for name in "abc":
            assert await ref_at(system, f"sup/{name}").ask(Ping()) == name
        # The group's first restart: c is not started while b is down.
        first_try = [
            "stop:a:crashed",
            "stop:c:shutdown",
            "stop:b:shutdown",
            "start:a",
            "start:b",
            "stop:b:crashed",
        ]
        if strategy is Strategy.ONE_FOR_ALL:
            # The retry restarts the group of b: everyone.
            retry = ["stop:a:shutdown", "start:a", "start:b", "start:c"]
        else:
            # rest_for_one from b: a stays up.
            retry = ["start:b", "start:c"]
        assert starts_and_stops(log) == first_try + retry
        assert node_at(system, "sup/b").restarts == 2
        assert node_at(system, "sup/c").restarts == 1


async def test_a_restart_that_keeps_failing_to_start_gives_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """OTP's ``hanging_restart_loop``: failed restarts count toward the intensity,
    so a child that cannot start makes its supervisor give up instead of looping."""
    log: list[str] = []
    failing: Counter[str] = Counter()
    spec = SupervisorSpec(max_restarts=3, children=[flaky("a", log, failing)])
    async with open_system(max_restarts=0) as system:
        sup = await system.spawn_supervisor(spec, name="sup", restart=Restart.TRANSIENT)
        probe = await Probe.spawn(system)
        await probe.watch(sup)
        failing["a"] = 1_000
        await ref_at(system, "sup/a").tell(Quit())
        terminated = await probe.expect(Terminated)
        assert terminated.reason is ExitReason.SHUTDOWN
        assert isinstance(terminated.error, SupervisorGaveUp)
        # One start, then 1 + 3 failed restarts: the fourth restart passed the intensity.
        assert log.count("start:a") == 4


# -- what a restart starts -------------------------------------------------------


async def test_tree(autojump_clock: trio.testing.MockClock) -> None:
    """OTP's ``tree``: a supervisor restarted by its parent starts the static children
    of its spec only; children added with ``start_child`` do not come back."""
    log: list[str] = []
    inner = SupervisorSpec(max_restarts=0, children=[member("s", log)])
    outer = SupervisorSpec(children=[ChildSpec("inner", inner)])
    async with open_system() as system:
        await system.spawn_supervisor(outer, name="outer")
        sup = ref_at(system, "outer/inner")
        assert isinstance(sup, SupervisorRef)
        dynamic = await sup.start_child(member("d", log))
        # s crashes, inner gives up at once, and outer restarts inner.
        await crash(ref_at(system, "outer/inner/s"))
        await trio.testing.wait_all_tasks_blocked()
        assert await ref_at(system, "outer/inner/s").ask(Ping()) == "s"
        assert [ref.path for ref in await sup.children()] == ["outer/inner/s"]
        assert not dynamic.is_alive
        assert system.lookup("outer/inner/d") is None
        with pytest.raises(ActorStopped):
            await dynamic.ask(Ping())
        assert node_at(system, "outer/inner").restarts == 1
        # Its name is free again in the new run.
        again = await sup.start_child(member("d", log))
        assert again == dynamic and await dynamic.ask(Ping()) == "d"


@pytest.mark.parametrize("strategy", [Strategy.ONE_FOR_ALL, Strategy.REST_FOR_ONE])
async def test_restart_multiple_children(
    strategy: Strategy, autojump_clock: trio.testing.MockClock
) -> None:
    """OTP's ``restart_multiple_children`` (and ``transient_normal`` under a group
    strategy): a group restart starts every kept spec of the group, also a
    transient child that had stopped normally."""
    log: list[str] = []
    spec = SupervisorSpec(
        strategy,
        children=[member("p", log), member("t", log, Restart.TRANSIENT), member("q", log)],
    )
    async with open_system() as system:
        await system.spawn_supervisor(spec, name="sup")
        t = ref_at(system, "sup/t")
        await t.tell(Quit())
        await trio.testing.wait_all_tasks_blocked()
        assert not t.is_alive
        log.clear()
        await crash(ref_at(system, "sup/p"))
        await trio.testing.wait_all_tasks_blocked()
        assert await t.ask(Ping()) == "t"
        assert starts_and_stops(log) == [
            "stop:p:crashed",
            "stop:q:shutdown",
            "start:p",
            "start:t",
            "start:q",
        ]
        assert [ref.path for ref in await ref_at_sup(system).children()] == [
            "sup/p",
            "sup/t",
            "sup/q",
        ]


def ref_at_sup(system: Any) -> SupervisorRef:
    ref = ref_at(system, "sup")
    assert isinstance(ref, SupervisorRef)
    return ref


# -- giving up ---------------------------------------------------------------------


async def test_transient_shutdown(autojump_clock: trio.testing.MockClock) -> None:
    """OTP's ``transient_shutdown`` and ``one_for_one_escalation``: a supervisor that
    passes its intensity stops its children and exits with reason ``shutdown``; a
    TRANSIENT parent spec does not restart it."""
    log: list[str] = []
    inner = SupervisorSpec(max_restarts=0, children=[member("a", log), member("b", log)])
    async with open_system() as system:
        sup = await system.spawn_supervisor(inner, name="sup", restart=Restart.TRANSIENT)
        probe = await Probe.spawn(system)
        await probe.watch(sup)
        log.clear()
        await crash(ref_at(system, "sup/b"))
        terminated = await probe.expect(Terminated)
        assert (terminated.ref, terminated.reason) == (sup, ExitReason.SHUTDOWN)
        gave_up = terminated.error
        assert isinstance(gave_up, SupervisorGaveUp)
        assert gave_up.path == "sup" and gave_up.last_failure == "ValueError: b exploded"
        assert starts_and_stops(log) == ["stop:b:crashed", "stop:a:shutdown"]
        assert system.lookup("sup") is None
        assert node_at(system, "").restarts == 0


async def test_permanent_shutdown(autojump_clock: trio.testing.MockClock) -> None:
    """OTP's ``permanent_shutdown``: a PERMANENT parent spec restarts a supervisor that
    gave up, and that restart counts against the parent's own intensity."""
    log: list[str] = []
    inner = SupervisorSpec(max_restarts=0, children=[member("a", log)])
    outer = SupervisorSpec(max_restarts=1, children=[ChildSpec("inner", inner)])
    async with open_system() as system:
        sup = await system.spawn_supervisor(outer, name="outer", restart=Restart.TRANSIENT)
        probe = await Probe.spawn(system)
        await probe.watch(sup)
        a = ref_at(system, "outer/inner/a")
        await crash(a)  # inner gives up; outer restarts it: 1 restart of 1
        await trio.testing.wait_all_tasks_blocked()
        assert await a.ask(Ping()) == "a"
        assert node_at(system, "outer/inner").restarts == 1
        await probe.expect_nothing(0.1)
        await crash(a)  # again: outer passes its own intensity and gives up too
        terminated = await probe.expect(Terminated)
        assert terminated.reason is ExitReason.SHUTDOWN
        assert isinstance(terminated.error, SupervisorGaveUp)
        assert terminated.error.path == "outer"


async def test_the_root_giving_up_still_raises_from_open_system(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """At the root there is no parent to exit to: the embedding program gets
    :class:`SupervisorGaveUp` from ``open_system``."""
    with pytest.raises(SupervisorGaveUp) as caught:
        async with open_system(max_restarts=0) as system:
            await crash(await system.spawn(Worker, name="w"))
            await trio.sleep_forever()
    assert caught.value.path == ""


async def test_sup_stop_race(autojump_clock: trio.testing.MockClock) -> None:
    """OTP's ``sup_stop_race``: children that exit by themselves while their supervisor
    shuts down keep their own reasons; only the ones it stops get ``shutdown``."""
    log: list[str] = []

    class ExitsSoon(Member):
        def __init__(self, name: str, log: list[str], how: str) -> None:
            super().__init__(name, log)
            self.how = how

        async def on_start(self) -> None:
            await super().on_start()
            self.context.start_task(self.exit_later)

        async def exit_later(self) -> None:
            await trio.sleep(0.5)
            if self.how == "crash":
                raise ValueError("gone")
            self.context.stop()

    class SlowStop(Member):
        async def on_stop(self, reason: ExitReason) -> None:
            await trio.sleep(1.0)
            await super().on_stop(reason)

    spec = SupervisorSpec(
        children=[
            ChildSpec("normal", functools.partial(ExitsSoon, "normal", log, "stop")),
            ChildSpec("crash", functools.partial(ExitsSoon, "crash", log, "crash")),
            ChildSpec("slow", functools.partial(SlowStop, "slow", log)),
        ]
    )
    async with open_system() as system:
        sup = await system.spawn_supervisor(spec, name="sup")
        probe = await Probe.spawn(system)
        refs = {name: ref_at(system, f"sup/{name}") for name in ("normal", "crash", "slow")}
        for ref in refs.values():
            await probe.watch(ref)
        # Stopping sup stops slow first, for 1 s; the others exit by themselves meanwhile.
        assert await system.stop(sup)
        reasons = {}
        for _ in refs:
            terminated = await probe.expect(Terminated)
            reasons[terminated.ref.path] = terminated.reason
        assert reasons == {
            "sup/slow": ExitReason.SHUTDOWN,
            "sup/normal": ExitReason.NORMAL,
            "sup/crash": ExitReason.CRASHED,
        }


# -- unique specs --------------------------------------------------------------------


async def test_child_adm(autojump_clock: trio.testing.MockClock) -> None:
    """OTP's ``child_adm``: ``start_child`` with the id of a running child is
    ``already_started``, with the id of a kept spec that is not running it is
    ``already_present``; both leave everything as it was."""
    log: list[str] = []
    spec = SupervisorSpec(
        Strategy.ONE_FOR_ALL,
        max_restarts=1,
        children=[member("a", log), member("t", log, Restart.TRANSIENT)],
    )
    async with open_system() as system:
        sup = await system.spawn_supervisor(spec, name="sup")
        with pytest.raises(NameTaken, match="already running"):
            await sup.start_child(ChildSpec("a", Worker))
        await ref_at(system, "sup/t").tell(Quit())
        await trio.testing.wait_all_tasks_blocked()
        # A different object under the name of a kept, stopped spec.
        with pytest.raises(NameTaken, match="already a kept child spec"):
            await sup.start_child(ChildSpec("t", Worker))
        assert [ref.path for ref in await sup.children()] == ["sup/a"]
        log.clear()
        # The group restart starts the kept spec, once, and only that one.
        await crash(ref_at(system, "sup/a"))
        await trio.testing.wait_all_tasks_blocked()
        assert await ref_at(system, "sup/t").ask(Ping()) == "t"
        assert starts_and_stops(log) == ["stop:a:crashed", "start:a", "start:t"]
        assert node_at(system, "sup").restarts == 0


async def test_child_specs(autojump_clock: trio.testing.MockClock) -> None:
    """OTP's ``child_specs`` / ``sup_start_map_faulty_specs``: bad specs are refused at
    construction, naming the field; the defaults are OTP's."""
    spec = SupervisorSpec()
    assert (spec.max_restarts, spec.within) == (1, 5.0)
    assert ChildSpec("a", Worker).grace == 5.0
    assert ChildSpec("s", SupervisorSpec()).grace == math.inf
    assert ChildSpec("s", SupervisorSpec(), shutdown=math.inf).grace == math.inf
    assert ChildSpec("a", Worker, shutdown=0).grace == 0.0
    bad: list[tuple[Any, str]] = [
        (lambda: SupervisorSpec(within=math.inf), "SupervisorSpec.within"),
        (lambda: SupervisorSpec(within=0), "SupervisorSpec.within"),
        (lambda: SupervisorSpec(within=-1.0), "SupervisorSpec.within"),
        (lambda: SupervisorSpec(within=math.nan), "SupervisorSpec.within"),
        (lambda: SupervisorSpec(max_restarts=-1), "SupervisorSpec.max_restarts"),
        (
            lambda: SupervisorSpec(children=[ChildSpec("a", Worker), ChildSpec("a", Worker)]),
            "SupervisorSpec.children",
        ),
        (lambda: ChildSpec("a", Worker, shutdown=-1), "ChildSpec.shutdown"),
        (lambda: ChildSpec("a", Worker, shutdown=math.inf), "ChildSpec.shutdown"),
        (lambda: ChildSpec("a", Worker, shutdown=math.nan), "ChildSpec.shutdown"),
        (lambda: ChildSpec("a", Worker, mailbox_size=0), "ChildSpec.mailbox_size"),
        (lambda: ChildSpec("", Worker), "ChildSpec.name"),
        (lambda: ChildSpec("a/b", Worker), "ChildSpec.name"),
        (lambda: Backoff(initial=-1.0), "Backoff.initial"),
        (lambda: Backoff(maximum=math.inf), "Backoff.maximum"),
        (lambda: Backoff(multiplier=0.5), "Backoff.multiplier"),
    ]
    for build, field in bad:
        with pytest.raises(ValueError, match=field.replace(".", r"\.")):
            build()
    with pytest.raises(TypeError, match=r"SupervisorSpec\.max_restarts"):
        SupervisorSpec(max_restarts=1.5)  # type: ignore[arg-type]
    async with open_system() as system:
        # open_system's root has the same defaults: a second crash within 5 s gives up.
        worker = await system.spawn(Worker, name="w")
        await crash(worker)
        assert await worker.ask(Ping()) == "ok"
        await trio.sleep(5.01)
        await crash(worker)
        assert await worker.ask(Ping()) == "ok"
    with pytest.raises(SupervisorGaveUp):
        async with open_system() as system:
            worker = await system.spawn(Worker, name="w")
            await crash(worker)
            await trio.sleep(4.99)
            await crash(worker)
            await trio.sleep_forever()


# -- refs across every restart ----------------------------------------------------


async def test_refs_follow_their_path_when_an_ancestor_restarts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Not an OTP case (an OTP pid dies with its process): a ref taken for a path
    keeps working when any ancestor restarts and re-creates that path, and raises
    :class:`ActorStopped` only while nothing holds the path."""
    log: list[str] = []
    mid = SupervisorSpec(max_restarts=0, children=[member("leaf", log), member("other", log)])
    top = SupervisorSpec(
        Strategy.ONE_FOR_ALL,
        max_restarts=5,
        within=60.0,
        children=[member("sibling", log), ChildSpec("mid", mid)],
    )
    async with open_system() as system:
        await system.spawn_supervisor(top, name="top")
        leaf, mid_ref = ref_at(system, "top/mid/leaf"), ref_at(system, "top/mid")
        probe = await Probe.spawn(system)
        # 1. mid gives up; top restarts it and its children.
        await crash(ref_at(system, "top/mid/other"))
        await trio.testing.wait_all_tasks_blocked()
        assert await leaf.ask(Ping()) == "leaf"
        # 2. a crash of top's other child restarts the whole group (one_for_all).
        await crash(ref_at(system, "top/sibling"))
        await trio.testing.wait_all_tasks_blocked()
        await leaf.tell(Ping())
        assert await leaf.ask(Ping()) == "leaf"
        assert node_at(system, "top/mid").restarts == 2
        # 3. the grandparent restarts: top passes its intensity, and the root restarts it.
        for _ in range(4):
            await crash(leaf)
            await trio.testing.wait_all_tasks_blocked()
        assert node_at(system, "top").restarts == 1
        assert await leaf.ask(Ping()) == "leaf"
        # A watch taken now is of the current actor at the path.
        await probe.watch(leaf)
        # Gone for good: stop mid through its parent; the refs then raise.
        assert isinstance(mid_ref, SupervisorRef)
        top_ref = ref_at(system, "top")
        assert isinstance(top_ref, SupervisorRef)
        assert await top_ref.stop_child("mid")
        assert (await probe.expect(Terminated)).ref == leaf
        assert not leaf.is_alive and not mid_ref.is_alive
        with pytest.raises(ActorStopped):
            await leaf.ask(Ping())
        with pytest.raises(ActorStopped):
            await mid_ref.children()


async def test_a_ref_raises_only_while_no_actor_holds_its_path(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_system() as system:
        sup = await system.spawn_supervisor(SupervisorSpec(), name="sup")
        ref = await sup.start_child(ChildSpec("w", Worker))
        assert await sup.stop_child("w")
        with pytest.raises(ActorStopped):
            await ref.tell(Ping())
        with pytest.raises(ActorStopped):
            ref.tell_nowait(Ping())
        terminated = await expect_terminated(await Probe.spawn(system), ref)
        assert terminated.reason is ExitReason.SHUTDOWN
        await sup.start_child(ChildSpec("w", Worker))
        assert ref.is_alive and await ref.ask(Ping()) == "ok"
