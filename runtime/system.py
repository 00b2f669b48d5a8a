"""The actor system: the root supervisor, the name registry and the ask timer."""

from __future__ import annotations

import functools
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import trio

from runtime.actor import Actor
from runtime.cell import Cell, Exit, collapse
from runtime.errors import ActorStopped, MailboxFull, NameTaken
from runtime.ref import ActorRef, SupervisorRef
from runtime.reply import AskTimer
from runtime.snapshot import ActorSnapshot
from runtime.spec import Backoff, ChildSpec, Restart, Strategy, SupervisorSpec
from runtime.supervisor import SupervisorCell

__all__ = ["ActorSystem", "open_system"]


class ActorSystem:
    """A tree of actors under one root supervisor; made by :func:`open_system`."""

    def __init__(self, nursery: trio.Nursery, root_spec: SupervisorSpec) -> None:
        self._nursery = nursery
        self._cells: dict[str, Cell] = {}
        self._names = itertools.count(1)
        self.timer = AskTimer()
        self._root = SupervisorCell(self, "", ChildSpec("root", root_spec), registered=False)

    @property
    def root(self) -> SupervisorRef:
        """The root supervisor: :meth:`spawn` adds its children."""
        ref = self._root.ref
        assert isinstance(ref, SupervisorRef)
        return ref

    async def spawn(
        self,
        factory: Callable[..., Actor],
        *,
        name: str | None = None,
        args: tuple[Any, ...] = (),
        mailbox_size: int = 1000,
        restart: Restart = Restart.PERMANENT,
        shutdown: float | None = None,
    ) -> ActorRef:
        """Start an actor under the root supervisor and return its ref once ``on_start`` ran.

        ``factory(*args)`` builds each instance. Raises
        :class:`~runtime.errors.NameTaken` if ``name`` is in use, and
        :class:`~runtime.errors.StartFailed` (``__cause__`` is why) if
        ``on_start`` raised; the system is then unchanged. Called from the
        ``on_start`` of a child of the root, it raises :class:`RuntimeError`
        at once instead of waiting for itself: spawn from ``handle`` then.
        """
        spec = ChildSpec(
            name or self.unique_name(factory),
            functools.partial(factory, *args) if args else factory,
            restart=restart,
            shutdown=shutdown,
            mailbox_size=mailbox_size,
        )
        return await self.root.start_child(spec)

    async def spawn_supervisor(
        self, spec: SupervisorSpec, *, name: str, restart: Restart = Restart.PERMANENT
    ) -> SupervisorRef:
        """Start a supervisor under the root, and its static children in order; return its ref.

        If a child fails to start, the children already started are stopped
        in reverse order and :class:`~runtime.errors.StartFailed` is raised,
        naming the child in ``failed_child``; the system stays usable.
        """
        ref = await self.root.start_child(ChildSpec(name, spec, restart=restart))
        assert isinstance(ref, SupervisorRef)
        return ref

    async def stop(self, ref: ActorRef) -> bool:
        """Stop the actor behind ``ref`` for good, through its supervisor.

        Returns False if it had already stopped.
        """
        path = ref.path
        parent_path, _, name = path.rpartition("/")
        parent = self._cells.get(parent_path) if parent_path else self._root
        supervisor = None if parent is None else parent.children_supervisor()
        if not isinstance(supervisor, SupervisorRef):
            return False
        try:
            return await supervisor.stop_child(name)
        except ActorStopped:
            return False

    def lookup(self, path: str) -> ActorRef | None:
        """The ref of the live actor at ``path`` (like ``"sup/a"``), or None.

        The ref stays valid when the actor, or an ancestor, restarts.
        """
        cell = self._cells.get(path)
        return None if cell is None else cell.ref

    def snapshot(self) -> ActorSnapshot:
        """The live tree: the root node, whose children are the top-level actors."""
        return self._root.snapshot()

    # -- for the runtime's own modules ---------------------------------------

    def unique_name(self, factory: Callable[..., Any]) -> str:
        base = getattr(factory, "__name__", None) or type(factory).__name__
        return f"{base.lower()}-{next(self._names)}"

    def cell_at(self, path: str) -> Cell | None:
        return self._cells.get(path)

    def register(self, cell: Cell) -> None:
        if cell.path in self._cells:
            raise NameTaken(f"an actor is already running at {cell.path!r}")
        self._cells[cell.path] = cell

    def unregister(self, cell: Cell) -> None:
        if self._cells.get(cell.path) is cell:
            del self._cells[cell.path]

    def deliver(self, ref: ActorRef, message: Any) -> None:
        """Send a runtime message now, or from a background task if the mailbox is full."""
        try:
            ref.tell_nowait(message)
        except MailboxFull:
            self.start_task(_tell_quietly, ref, message)
        except ActorStopped:
            pass

    def start_task(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        self._nursery.start_soon(fn, *args)

    async def _run_root(self, *, task_status: trio.TaskStatus[Exit | None]) -> None:
        exit = await self._root.run_once(task_status=task_status)
        self._root.finish(exit)
        if exit.error is not None:
            raise exit.error


async def _tell_quietly(ref: ActorRef, message: Any) -> None:
    with suppress(ActorStopped):
        await ref.tell(message)


async def _run_system(
    guard: trio.CancelScope,
    root_spec: SupervisorSpec,
    *,
    task_status: trio.TaskStatus[ActorSystem],
) -> None:
    """Run the timer, the root and the runtime's own tasks until ``guard`` is cancelled.

    ``guard`` is shielded: when the embedding program cancels the ``async
    with`` block, the actors must still be stopped in order, each within its
    grace time, not all cancelled at once.
    """
    with guard:
        async with trio.open_nursery() as nursery:
            system = ActorSystem(nursery, root_spec)
            await nursery.start(system.timer.run)
            await nursery.start(system._run_root)
            task_status.started(system)


@asynccontextmanager
async def open_system(
    *,
    strategy: Strategy = Strategy.ONE_FOR_ONE,
    max_restarts: int = 1,
    within: float = 5.0,
    backoff: Backoff | None = None,
) -> AsyncIterator[ActorSystem]:
    """Run an actor system for the duration of the ``async with`` block.

    The arguments configure the root supervisor, with OTP's defaults: one
    restart within 5 seconds (see :class:`~runtime.spec.SupervisorSpec`).
    Leaving the block stops every actor in reverse start order, each within
    its shutdown grace time (an actor still running then is cancelled, and a
    warning on the ``runtime`` logger names it), so it takes at most the sum
    of those grace times, and leaves nothing running. If the root supervisor
    gives up, the block is cancelled and
    :class:`~runtime.errors.SupervisorGaveUp` is raised here. An exception
    from the block propagates unchanged after the shutdown.
    """
    root_spec = SupervisorSpec(strategy, max_restarts, within, backoff=backoff)
    guard = trio.CancelScope(shield=True)
    try:
        async with trio.open_nursery() as nursery:
            system: ActorSystem = await nursery.start(_run_system, guard, root_spec)
            try:
                yield system
            finally:
                with trio.CancelScope(shield=True):
                    system._root.request_stop()
                    await system._root.run_done.wait()
                guard.cancel()
    except BaseExceptionGroup as group:
        error = collapse(group)
        if error is group:
            raise
        # Re-raising here would chain the error to the nursery's group, and
        # ``from None`` would erase its own cause; keep what it had instead.
        context = error.__context__
        try:
            raise error
        finally:
            error.__context__ = context
