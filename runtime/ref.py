"""Handles to actors: :class:`ActorRef` and :class:`SupervisorRef`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, cast

import trio

from runtime.control import StartChild, StopChild, WhichChildren
from runtime.errors import ActorStopped, MailboxFull
from runtime.reply import Ask

if TYPE_CHECKING:
    from runtime.cell import Cell
    from runtime.spec import ChildSpec
    from runtime.supervisor import SupervisorCell

__all__ = ["ActorRef", "SupervisorRef"]


# A loop of tells that always finds room yields to the scheduler once per
# this many calls: often enough that no producer starves other tasks (a yield
# every few hundred microseconds), rarely enough that receivers still take
# their messages in batches. Measured: a yield every 64 tells made the fan-out
# benchmark 4x slower than one every 1,024.
_TELLS_PER_YIELD = 1024
_tell_budget = _TELLS_PER_YIELD


class ActorRef:
    """The address of an actor: its path in one system.

    A ref stays valid across restarts of its actor, and messages queued in the
    mailbox survive them. It also stays valid when an ancestor supervisor
    restarts and the restart creates an actor at the same path again: the
    ref then reaches the new actor. It raises :class:`ActorStopped` only while
    no actor holds its path, or once the path is gone for good. Refs are cheap
    to copy, equal when they name the same path in the same system, and say
    nothing about the actor's state: use them to send messages.
    """

    __slots__ = ("_cell", "_path", "_system")

    def __init__(self, cell: Cell) -> None:
        self._cell = cell
        self._path = cell.path
        # Only a registered cell can be replaced by another at its path.
        self._system = cell.system if cell.registered else None

    def _live(self) -> Cell:
        """The cell that holds this path now: the known one, or its successor."""
        cell = self._cell
        if cell.finished and self._system is not None:
            successor = self._system.cell_at(self._path)
            if successor is not None and isinstance(successor.ref, type(self)):
                self._cell = cell = successor
        return cell

    @property
    def path(self) -> str:
        """The unique, hierarchical name, like ``"sup/a"``."""
        return self._path

    @property
    def is_alive(self) -> bool:
        """False while no actor holds this path (for good, or until an ancestor
        restarts it)."""
        return not self._live().finished

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._path!r}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ActorRef):
            return NotImplemented
        if self._system is None or other._system is None:
            return other._cell is self._cell
        return other._system is self._system and other._path == self._path

    def __hash__(self) -> int:
        return hash(self._path)

    async def tell(self, message: Any) -> None:
        """Put ``message`` in the mailbox, waiting for room if it is full.

        It checks for cancellation on every call: under a cancelled scope it
        raises :class:`trio.Cancelled` and sends nothing. Once sent, the
        message is not taken back. When there is room it yields to the
        scheduler once every 1,024 calls, not on each, so a sender can fill a
        mailbox quickly without starving other tasks; use :meth:`tell_nowait`
        for a form that never yields. Raises :class:`ActorStopped` if no actor
        holds the path, including while waiting for room.
        """
        global _tell_budget
        cell = self._cell
        if cell.finished:
            cell = self._live()
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            cell.send.send_nowait(message)
        except trio.WouldBlock:
            try:
                await cell.send.send(message)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                raise ActorStopped(f"{cell.path!r} has stopped") from None
            return
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ActorStopped(f"{cell.path!r} has stopped") from None
        _tell_budget -= 1
        if _tell_budget <= 0:
            _tell_budget = _TELLS_PER_YIELD
            await trio.lowlevel.cancel_shielded_checkpoint()

    def tell_nowait(self, message: Any) -> None:
        """Put ``message`` in the mailbox now, or raise :class:`MailboxFull`.

        Never blocks and is not a checkpoint: it neither yields nor checks for
        cancellation. Raises :class:`ActorStopped` if no actor holds the path.
        """
        cell = self._cell
        if cell.finished:
            cell = self._live()
        try:
            cell.send.send_nowait(message)
        except trio.WouldBlock:
            raise MailboxFull(
                f"mailbox of {cell.path!r} is full ({cell.capacity} messages)"
            ) from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ActorStopped(f"{cell.path!r} has stopped") from None

    async def ask(self, message: Any, timeout: float | None = 5.0) -> Any:
        """Send ``message`` and return the handler's return value.

        Raises :class:`AskTimeout` when no reply comes within ``timeout``
        seconds of trio's clock (``None``: wait forever), counting any wait for
        mailbox room; :class:`ActorCrashed`, with the handler's exception as
        ``__cause__``, as soon as the handler raises; :class:`ActorStopped` if
        the actor stopped before answering. Under an already cancelled scope
        it raises :class:`trio.Cancelled` and sends nothing; cancelling it
        later abandons the ask: the actor skips it if it has not started on
        it, and a reply that comes anyway is dropped.
        """
        cell = self._cell
        if cell.finished:
            cell = self._live()
        await trio.lowlevel.checkpoint_if_cancelled()
        ask = Ask(message, cell.path, timeout)
        try:
            cell.send.send_nowait(ask)
        except trio.WouldBlock:
            await self._send_ask_waiting(cell, ask)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ActorStopped(f"{cell.path!r} has stopped") from None
        else:
            if timeout is not None:
                cell.system.timer.add(ask, timeout)
        return await ask.wait()

    async def _send_ask_waiting(self, cell: Cell, ask: Ask) -> None:
        """The slow path of :meth:`ask`: wait for mailbox room within the timeout."""
        timeout = ask.timeout
        started = trio.current_time()
        with trio.move_on_after(math.inf if timeout is None else timeout):
            try:
                await cell.send.send(ask)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                raise ActorStopped(f"{cell.path!r} has stopped") from None
            if timeout is not None:
                cell.system.timer.add(ask, max(0.0, started + timeout - trio.current_time()))
            return
        ask.done = True
        raise ask.timeout_error()


class SupervisorRef(ActorRef):
    """The address of a supervisor; it also manages the supervisor's children."""

    __slots__ = ()

    def _supervisor(self) -> SupervisorCell:
        # A SupervisorRef is only ever made by, and resolved to, a SupervisorCell.
        return cast("SupervisorCell", self._live())

    async def start_child(self, spec: ChildSpec, timeout: float | None = None) -> ActorRef:
        """Start a *dynamic* child from ``spec``; return its ref once its ``on_start`` ran.

        Raises :class:`~runtime.errors.NameTaken` if the supervisor keeps a
        spec of that name, running or not, and changes nothing. Raises
        :class:`~runtime.errors.StartFailed`, with the cause chained, if the
        child's ``on_start`` raised (or, for a supervisor spec, one of its
        static children failed to start): the spec is then not kept, and
        nothing is retried or counted as a restart. Raises
        :class:`RuntimeError` at once when called from a hook of an actor that
        this supervisor is busy starting or stopping, which could never be
        answered. A non-temporary child's spec is kept, and restarted with its
        group during this run of the supervisor; it is not re-created when
        the supervisor itself is restarted by its parent, which starts the
        static children of its :class:`~runtime.spec.SupervisorSpec` only.
        """
        self._supervisor().refuse_reentry("start a child")
        ref: ActorRef = await self.ask(StartChild(spec), timeout=timeout)
        return ref

    async def stop_child(self, name: str, timeout: float | None = None) -> bool:
        """Stop the child ``name`` for good (its grace time applies) and forget its spec.

        Returns False if it was not running, like a transient child that
        stopped normally (its spec, if kept, is dropped anyway). Raises
        :class:`RuntimeError` at once when the caller would wait for itself:
        an actor stopping itself or an ancestor from its own task, or calling
        from a hook while this supervisor starts or stops it.
        """
        self._supervisor().refuse_reentry(f"stop {name!r}", name)
        stopped: bool = await self.ask(StopChild(name), timeout=timeout)
        return stopped

    async def children(self, timeout: float | None = None) -> list[ActorRef]:
        """The refs of the live children, in start order."""
        refs: list[ActorRef] = await self.ask(WhichChildren(), timeout=timeout)
        return refs
