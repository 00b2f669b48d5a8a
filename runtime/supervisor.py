"""Supervisors: restart children the way Erlang/OTP does.

A supervisor is a cell whose mailbox carries :mod:`runtime.control` messages:
requests from its ref and exit reports from its children's tasks. Its
mailbox is unbounded so that a child's exit report never waits.

Semantics follow OTP's supervisor design principles:

* An exit is acted on only if the child's restart type asks for it:
  ``PERMANENT`` always, ``TRANSIENT`` after a crash, ``TEMPORARY`` never (the
  child is then forgotten).
* Each restart decision counts once toward the intensity; more than
  ``max_restarts`` within ``within`` seconds and the supervisor stops every
  child in reverse start order and fails with :class:`SupervisorGaveUp`.
* ``ONE_FOR_ALL`` and ``REST_FOR_ONE`` stop the affected siblings in reverse
  start order, forget the temporary ones, and start the rest again in start
  order.

Unlike OTP, a restarted child keeps its ref and its queued messages.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from runtime.cell import STOP, ActorCell, Cell, Exit, collapse
from runtime.control import ChildExited, StartChild, StopChild, WhichChildren
from runtime.errors import NameTaken, SupervisorGaveUp
from runtime.ref import ActorRef, SupervisorRef
from runtime.reply import Ask
from runtime.snapshot import ActorSnapshot
from runtime.spec import ChildSpec, Restart, Strategy, SupervisorSpec

if TYPE_CHECKING:
    from runtime.system import ActorSystem

__all__ = ["SupervisorCell"]


class SupervisorCell(Cell):
    """Runs a :class:`SupervisorSpec`; each run starts the children afresh."""

    kind = "supervisor"
    ref_class = SupervisorRef

    def __init__(
        self, system: ActorSystem, path: str, spec: ChildSpec, *, registered: bool = True
    ) -> None:
        super().__init__(system, path, spec, math.inf)
        sup_spec = spec.factory
        assert isinstance(sup_spec, SupervisorSpec)
        self.sup_spec = sup_spec
        self.registered = registered
        # The specs to start on every run: the initial ones plus those added
        # since, less the temporary children that have exited.
        self._specs: list[ChildSpec] = list(sup_spec.children)
        self._children: dict[str, Cell] = {}
        self._restart_times: collections.deque[float] = collections.deque()
        self._nursery: trio.Nursery | None = None

    # -- one run ------------------------------------------------------------

    async def _run(self, started: Callable[[], None]) -> Exit:
        # As in OTP, a restarted supervisor is a new process: the restarts
        # that made its previous run give up no longer count against it.
        self._restart_times.clear()
        try:
            with self._kill_scope:
                try:
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        try:
                            for spec in list(self._specs):
                                await self._start_new(spec)
                            if self.state == "starting":
                                self.state = "running"
                            started()
                            await self._control_loop()
                        finally:
                            with trio.CancelScope(shield=True):
                                await self._stop_children(list(self._children.values()))
                except Exception as error:
                    return Exit("crashed", collapse(error))
        finally:
            self._nursery = None
            self._children.clear()
        if self._kill_scope.cancelled_caught:
            return Exit("killed")
        return Exit(self._stop_reason or "normal")

    async def _control_loop(self) -> None:
        while self._stop_reason is None:
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
                ask.reply(await self._start_new(request.spec))
            elif isinstance(request, StopChild):
                ask.reply(await self._stop_for_good(request.name))
            elif isinstance(request, WhichChildren):
                ask.reply([cell.ref for cell in self._children.values()])
            else:
                ask.fail(TypeError(f"a supervisor does not handle {type(request).__name__}"))
        except Exception as error:
            ask.fail(error)

    # -- starting and stopping children ---------------------------------------

    def _child_path(self, name: str) -> str:
        return f"{self.path}/{name}" if self.path else name

    async def _start_new(self, spec: ChildSpec) -> ActorRef:
        if spec.name in self._children:
            raise NameTaken(f"{self._child_path(spec.name)!r} is already running")
        cell: Cell
        path = self._child_path(spec.name)
        if isinstance(spec.factory, SupervisorSpec):
            cell = SupervisorCell(self.system, path, spec)
        else:
            cell = ActorCell(self.system, path, spec)
        self.system.register(cell)
        if spec not in self._specs:
            self._specs.append(spec)
        self._children[spec.name] = cell
        await self._start(cell)
        return cell.ref

    async def _start(self, cell: Cell) -> None:
        assert self._nursery is not None
        await self._nursery.start(self._run_child, cell)

    async def _run_child(self, cell: Cell, *, task_status: trio.TaskStatus[None]) -> None:
        exit = await cell.run_once(task_status=task_status)
        if not cell.stopped_by_parent:
            self.send.send_nowait(ChildExited(cell, cell.run_id, exit))

    async def _stop(self, cell: Cell) -> Exit:
        """Stop the current run of ``cell`` within its grace time and wait for it.

        Returns the exit to report if the child is now forgotten: ``killed``
        if it outlived its grace time, else ``shutdown``.
        """
        cell.stopped_by_parent = True
        cell.request_stop(grace=cell.spec.grace)
        await cell.run_done.wait()
        killed = cell.last_exit is not None and cell.last_exit.reason == "killed"
        return Exit("killed") if killed else Exit("shutdown")

    async def _stop_children(self, cells: list[Cell]) -> None:
        """Stop ``cells`` in reverse start order, for good."""
        for cell in reversed(cells):
            self._forget(cell, await self._stop(cell))

    async def _stop_for_good(self, name: str) -> bool:
        cell = self._children.get(name)
        if cell is None:
            return False
        self._forget(cell, await self._stop(cell))
        if cell.spec in self._specs:
            self._specs.remove(cell.spec)
        return True

    def _forget(self, cell: Cell, exit: Exit) -> None:
        self._children.pop(cell.spec.name, None)
        if cell.spec.restart is Restart.TEMPORARY and cell.spec in self._specs:
            self._specs.remove(cell.spec)
        cell.finish(exit)

    # -- restarts -------------------------------------------------------------

    async def _on_child_exit(self, report: ChildExited) -> None:
        cell, exit = report.cell, report.exit
        if self._children.get(cell.spec.name) is not cell or cell.run_id != report.run_id:
            return  # a run we stopped or replaced already
        if not _restarts(cell.spec.restart, exit):
            self._forget(cell, exit)
            return
        self._count_restart()
        if len(self._restart_times) > self.sup_spec.max_restarts:
            await self._give_up()
        group = self._restart_group(cell)
        cell.state = "restarting"
        for sibling in reversed(group):
            if sibling is not cell:
                stopped = await self._stop(sibling)
                sibling.state = "restarting"
                if sibling.spec.restart is Restart.TEMPORARY:
                    self._forget(sibling, stopped)
        group = [c for c in group if c.spec.name in self._children]
        if not await self._back_off():
            return
        for member in group:
            member.restarts += 1
        for member in group:
            await self._start(member)

    def _count_restart(self) -> None:
        now = trio.current_time()
        times = self._restart_times
        times.append(now)
        # As OTP: a restart exactly ``within`` seconds old still counts.
        while times and times[0] < now - self.sup_spec.within:
            times.popleft()

    def _restart_group(self, cell: Cell) -> list[Cell]:
        cells = list(self._children.values())
        strategy = self.sup_spec.strategy
        if strategy is Strategy.ONE_FOR_ONE:
            return [cell]
        if strategy is Strategy.ONE_FOR_ALL:
            return cells
        return cells[cells.index(cell) :]

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
        failures = [c.last_failure for c in self._children.values() if c.last_failure]
        await self._stop_children(list(self._children.values()))
        raise SupervisorGaveUp(
            self.path,
            len(self._restart_times),
            self.sup_spec.within,
            failures[-1] if failures else None,
        )

    # -- introspection --------------------------------------------------------

    def child_snapshots(self) -> tuple[ActorSnapshot, ...]:
        return tuple(cell.snapshot() for cell in self._children.values())

    def children_supervisor(self) -> ActorRef | None:
        return self.ref


def _restarts(restart: Restart, exit: Exit) -> bool:
    if restart is Restart.PERMANENT:
        return True
    if restart is Restart.TRANSIENT:
        return exit.abnormal
    return False
