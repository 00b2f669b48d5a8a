"""Supervisors: restart children the way Erlang/OTP does.

A supervisor is a cell whose mailbox carries :mod:`runtime.control` messages:
requests from its ref and exit reports from its children's tasks. Its
mailbox is unbounded so that a child's exit report never waits.

Semantics follow OTP's ``supervisor`` module and its test suite:

* It keeps a list of child specs, in start order, with unique names: the
  static children of its :class:`SupervisorSpec`, then those added with
  ``start_child``. A run of the supervisor starts the static ones only.
* Starting stops at the first child that fails to start. At the
  supervisor's own start, the children already started are stopped in
  reverse order and the start fails with :class:`StartFailed`; in
  ``start_child`` the supervisor is left as it was.
* An exit is acted on only if the child's restart type asks for it:
  ``PERMANENT`` always, ``TRANSIENT`` after a crash or kill, ``TEMPORARY``
  never (its spec is then dropped).
* Each restart counts once toward the intensity. ``ONE_FOR_ALL`` and
  ``REST_FOR_ONE`` stop the running members of the group in reverse start
  order, drop the temporary ones, and start every kept spec of the group in
  start order, running before or not. If one fails to start, the start stops
  there and the supervisor tries again from that child, as another restart.
* More than ``max_restarts`` restarts within ``within`` seconds and the
  supervisor gives up: it stops every child in reverse start order and exits
  with reason ``shutdown``, carrying :class:`SupervisorGaveUp`.

Unlike OTP, a child restarted within one run of its supervisor keeps its cell:
its mailbox, with the messages queued in it, survives.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from runtime.cell import STOP, ActorCell, Cell, Exit, collapse, current_cell, describe_failure
from runtime.control import ChildExited, StartChild, StopChild, WhichChildren
from runtime.errors import NameTaken, StartFailed, SupervisorGaveUp
from runtime.messages import ExitReason
from runtime.ref import ActorRef, SupervisorRef
from runtime.reply import Ask
from runtime.snapshot import ActorSnapshot, ActorState
from runtime.spec import ChildSpec, Restart, Strategy, SupervisorSpec

if TYPE_CHECKING:
    from runtime.system import ActorSystem

__all__ = ["SupervisorCell"]


class SupervisorCell(Cell):
    """Runs a :class:`SupervisorSpec`; each run starts the static children afresh."""

    kind = "supervisor"
    ref_class = SupervisorRef

    def __init__(
        self, system: ActorSystem, path: str, spec: ChildSpec, *, registered: bool = True
    ) -> None:
        super().__init__(system, path, spec, math.inf, registered=registered)
        sup_spec = spec.factory
        assert isinstance(sup_spec, SupervisorSpec)
        self.sup_spec = sup_spec
        # The kept specs, by name, in start order.
        self._specs: dict[str, ChildSpec] = {}
        # The cells of kept specs; a cell is missing while its child is not
        # running between restarts (a transient child that stopped normally).
        self._children: dict[str, Cell] = {}
        self._restart_times: collections.deque[float] = collections.deque()
        # Restarts per kept spec in this run; a spec's cell may be replaced.
        self._restart_counts: dict[str, int] = {}
        self._nursery: trio.Nursery | None = None
        # The child this supervisor is starting or stopping right now, if any.
        self._busy_with: Cell | None = None
        self._gave_up: SupervisorGaveUp | None = None

    # -- one run ------------------------------------------------------------

    async def _run(self, started: Callable[[], None]) -> Exit:
        # As in OTP, a restarted supervisor is a new process: the restarts
        # that made its previous run give up no longer count against it, and
        # only the static children come back.
        self._restart_times.clear()
        self._restart_counts.clear()
        self._specs = {spec.name: spec for spec in self.sup_spec.children}
        self._gave_up = None
        failed: StartFailed | None = None
        try:
            with self._kill_scope:
                try:
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        try:
                            failed = await self._start_static_children()
                            if failed is None:
                                if self.state is ActorState.STARTING:
                                    self.state = ActorState.RUNNING
                                started()
                                await self._control_loop()
                        finally:
                            with trio.CancelScope(shield=True):
                                await self._stop_children()
                except Exception as error:
                    return Exit(ExitReason.CRASHED, collapse(error))
        finally:
            self._nursery = None
            self._children.clear()
        if self._kill_scope.cancelled_caught:
            return Exit(ExitReason.KILLED)
        if failed is not None:
            return Exit(ExitReason.CRASHED, failed)
        if self._gave_up is not None:
            return Exit(ExitReason.SHUTDOWN, self._gave_up)
        return Exit(self._stop_reason or ExitReason.NORMAL)

    async def _start_static_children(self) -> StartFailed | None:
        """Start the static children in order; on the first failure return it."""
        for spec in list(self._specs.values()):
            if self._stop_reason is not None:
                return None
            exit = await self._start(self._new_cell(spec))
            if exit is not None:
                return self._start_failed(spec.name, exit)
        return None

    async def _control_loop(self) -> None:
        while self._stop_reason is None and self._gave_up is None:
            try:
                item = self.recv.receive_nowait()
            except trio.WouldBlock:
                item = await self.next_message()
                if item is STOP:
                    return
            if item is STOP:
                continue
            self.processed += 1
            if isinstance(item, ChildExited):
                await self._on_child_exit(item)
            elif isinstance(item, Ask):
                await self._answer(item)

    async def _answer(self, ask: Ask) -> None:
        request = ask.message
        try:
            if isinstance(request, StartChild):
                ask.reply(await self._start_child(request.spec))
            elif isinstance(request, StopChild):
                ask.reply(await self._stop_for_good(request.name))
            elif isinstance(request, WhichChildren):
                ask.reply([cell.ref for cell in self._running()])
            else:
                ask.fail(TypeError(f"a supervisor does not handle {type(request).__name__}"))
        except Exception as error:
            ask.fail(error)

    # -- starting and stopping children ---------------------------------------

    def _child_path(self, name: str) -> str:
        return f"{self.path}/{name}" if self.path else name

    def _new_cell(self, spec: ChildSpec) -> Cell:
        """A new cell for ``spec``, registered under its path and kept as its child."""
        path = self._child_path(spec.name)
        cell: Cell
        if isinstance(spec.factory, SupervisorSpec):
            cell = SupervisorCell(self.system, path, spec)
        else:
            cell = ActorCell(self.system, path, spec)
        self.system.register(cell)
        self._children[spec.name] = cell
        return cell

    def _running(self) -> list[Cell]:
        """The cells of running children, in start order."""
        return [
            cell
            for name in self._specs
            if (cell := self._children.get(name)) is not None and cell.is_running
        ]

    async def _start_child(self, spec: ChildSpec) -> ActorRef:
        """``start_child``: a new kept spec, started now; the supervisor is
        left untouched if it fails to start."""
        if spec.name in self._specs:
            running = spec.name in self._children
            raise NameTaken(
                f"{self._child_path(spec.name)!r} is "
                + ("already running" if running else "already a kept child spec")
            )
        cell = self._new_cell(spec)
        self._specs[spec.name] = spec
        self._restart_counts.pop(spec.name, None)
        exit = await self._start(cell)
        if exit is not None:
            del self._specs[spec.name]
            del self._children[spec.name]
            cell.finish(exit)
            raise self._start_failed(spec.name, exit)
        return cell.ref

    def _start_failed(self, name: str, exit: Exit) -> StartFailed:
        """The error for a child that failed to start with ``exit``."""
        cause = exit.error
        if isinstance(cause, StartFailed):
            # A supervisor child whose own child failed: OTP's
            # {shutdown, {failed_to_start_child, Id, Reason}}.
            error = StartFailed(self._child_path(name), cause.path.rpartition("/")[2])
        else:
            reason = describe_failure(cause) if cause is not None else exit.reason.value
            error = StartFailed(self._child_path(name), reason=reason)
        error.__cause__ = cause
        return error

    async def _start(self, cell: Cell) -> Exit | None:
        """Start a run of ``cell``; None once it is up, or the exit of a failed start."""
        assert self._nursery is not None
        self._busy_with = cell
        try:
            result: Exit | None = await self._nursery.start(self._run_child, cell)
        finally:
            self._busy_with = None
        return result

    async def _run_child(self, cell: Cell, *, task_status: trio.TaskStatus[Exit | None]) -> None:
        exit = await cell.run_once(task_status=task_status)
        # A failed start is the starter's to handle; a stop we asked for is
        # handled where we asked for it.
        if not cell.start_failed and not cell.stopped_by_parent:
            self.send.send_nowait(ChildExited(cell, cell.run_id, exit))

    async def _stop(self, cell: Cell) -> Exit:
        """Stop the current run of ``cell`` within its grace time and wait for it.

        Returns how that run really ended: ``shutdown`` if this stop ended it,
        ``killed`` if it outlived its grace time, or the reason it had already
        ended with by itself (OTP's ``sup_stop_race``).
        """
        cell.stopped_by_parent = True
        if cell.is_running:
            cell.request_stop(grace=cell.spec.grace)
            self._busy_with = cell
            try:
                await cell.run_done.wait()
            finally:
                self._busy_with = None
        return cell.last_exit or Exit(ExitReason.SHUTDOWN)

    async def _stop_children(self) -> None:
        """Stop every child in reverse start order, for good."""
        for name in reversed(list(self._specs)):
            cell = self._children.get(name)
            if cell is not None:
                self._forget(cell, await self._stop(cell))

    async def _stop_for_good(self, name: str) -> bool:
        """Stop the child ``name`` and drop its spec.

        True if it had a live cell: running, or just ended and not yet seen
        (its exit report may still be queued behind this request).
        """
        self._specs.pop(name, None)
        cell = self._children.get(name)
        if cell is None:
            return False
        self._forget(cell, await self._stop(cell))
        return True

    def _forget(self, cell: Cell, exit: Exit) -> None:
        """Drop the cell for good; a temporary child's spec goes with it."""
        if self._children.get(cell.spec.name) is cell:
            del self._children[cell.spec.name]
        if cell.spec.restart is Restart.TEMPORARY:
            self._specs.pop(cell.spec.name, None)
        cell.finish(exit)

    # -- restarts -------------------------------------------------------------

    async def _on_child_exit(self, report: ChildExited) -> None:
        cell, exit = report.cell, report.exit
        if self._children.get(cell.spec.name) is not cell or cell.run_id != report.run_id:
            return  # a run we stopped or replaced already
        if not _restarts(cell.spec.restart, exit):
            self._forget(cell, exit)
            return
        cell.state = ActorState.RESTARTING
        await self._restart(cell.spec.name)

    async def _restart(self, name: str) -> None:
        """Restart the group of the child ``name``, whose run has ended.

        A child of the group that fails to start stops the start there, and
        the restart is tried again from it, counting as one more restart,
        until it works, the supervisor gives up, or it is asked to stop.
        """
        while self._stop_reason is None:
            self._count_restart()
            if len(self._restart_times) > self.sup_spec.max_restarts:
                await self._give_up()
                return
            group = self._restart_group(name)
            for member in reversed(group):
                cell = self._children.get(member)
                if cell is None or member == name:
                    continue
                stopped = await self._stop(cell)
                if cell.spec.restart is Restart.TEMPORARY:
                    self._forget(cell, stopped)
                else:
                    cell.state = ActorState.RESTARTING
            if not await self._back_off():
                return
            failed = await self._start_group([m for m in group if m in self._specs])
            if failed is None:
                return
            name = failed

    async def _start_group(self, names: list[str]) -> str | None:
        """Start ``names`` in order; the name of the first that fails to start, or None."""
        for name in names:
            if self._stop_reason is not None:
                return None
            cell = self._children.get(name)
            if cell is None:
                cell = self._new_cell(self._specs[name])
            cell.restarts = self._restart_counts[name] = self._restart_counts.get(name, 0) + 1
            if await self._start(cell) is not None:
                cell.state = ActorState.RESTARTING
                return name
        return None

    def _count_restart(self) -> None:
        now = trio.current_time()
        times = self._restart_times
        times.append(now)
        # As OTP: a restart exactly ``within`` seconds old still counts.
        while times and times[0] < now - self.sup_spec.within:
            times.popleft()

    def _restart_group(self, name: str) -> list[str]:
        """The kept specs to restart with ``name``, in start order."""
        names = list(self._specs)
        strategy = self.sup_spec.strategy
        if strategy is Strategy.ONE_FOR_ONE:
            return [name]
        if strategy is Strategy.ONE_FOR_ALL:
            return names
        return names[names.index(name) :]

    async def _back_off(self) -> bool:
        """Sleep the backoff delay; False if a stop was requested meanwhile."""
        backoff = self.sup_spec.backoff
        if backoff is not None:
            with trio.CancelScope() as scope:
                self._idle_scope = scope
                if self._stop_reason is None:
                    await trio.sleep(backoff.delay(len(self._restart_times)))
            self._idle_scope = None
        return self._stop_reason is None

    async def _give_up(self) -> None:
        """Stop every child and end this run with reason ``shutdown``."""
        failures = [c.last_failure for c in self._children.values() if c.last_failure]
        await self._stop_children()
        self._gave_up = SupervisorGaveUp(
            self.path,
            len(self._restart_times),
            self.sup_spec.within,
            failures[-1] if failures else None,
        )

    # -- re-entry from a child's own hooks -------------------------------------

    def refuse_reentry(self, action: str, name: str | None = None) -> None:
        """Raise :class:`RuntimeError` now if the calling actor's request to this
        supervisor could only be answered after the caller's own hook returns.

        That is the case when the caller runs its ``on_start`` or ``on_stop``
        (or handles a message) in its own task while this supervisor is
        starting or stopping it or one of its ancestors, and when it asks to
        stop itself or an ancestor from its own task.
        """
        caller = current_cell()
        if caller is None or caller.run_task is not trio.lowlevel.current_task():
            return
        busy = self._busy_with
        if busy is not None and _within(caller, busy) and caller.state is not ActorState.RUNNING:
            raise RuntimeError(
                f"{caller.path!r} asked supervisor {self.path or '<root>'!r} to {action} "
                f"from its own on_start or on_stop while that supervisor waits for "
                f"{busy.path!r} to start or stop: it would wait forever. Do it from "
                "handle(), or use self.context.spawn() for a child of the actor's own."
            )
        target = self._children.get(name) if name is not None else None
        if target is not None and _within(caller, target):
            raise RuntimeError(
                f"{caller.path!r} asked to stop {target.path!r} from its own task, which "
                "would wait for itself; use self.context.stop() instead"
            )

    # -- introspection --------------------------------------------------------

    def child_snapshots(self) -> tuple[ActorSnapshot, ...]:
        # Children down for a restart are shown too, as ``restarting``.
        cells = (self._children.get(name) for name in self._specs)
        return tuple(cell.snapshot() for cell in cells if cell is not None)

    def children_supervisor(self) -> ActorRef | None:
        return self.ref


def _within(cell: Cell, ancestor: Cell) -> bool:
    """True if ``cell`` is ``ancestor`` or below it in the tree."""
    if cell is ancestor:
        return True
    prefix = ancestor.path + "/" if ancestor.path else ""
    return cell.system is ancestor.system and cell.path.startswith(prefix)


def _restarts(restart: Restart, exit: Exit) -> bool:
    if restart is Restart.PERMANENT:
        return True
    if restart is Restart.TRANSIENT:
        return exit.abnormal
    return False
