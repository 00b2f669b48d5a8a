"""Handles to actors: :class:`ActorRef` and :class:`SupervisorRef`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import trio

from runtime.control import StartChild, StopChild, WhichChildren
from runtime.errors import ActorStopped, MailboxFull
from runtime.reply import Ask

if TYPE_CHECKING:
    from runtime.cell import Cell
    from runtime.spec import ChildSpec

__all__ = ["ActorRef", "SupervisorRef"]


class ActorRef:
    """The address of an actor.

    A ref stays valid across restarts of its actor, and messages queued in the
    mailbox survive them. It is cheap to copy and compare, and says nothing
    about the actor's state: use it to send messages.
    """

    __slots__ = ("_cell",)

    def __init__(self, cell: Cell) -> None:
        self._cell = cell

    @property
    def path(self) -> str:
        """The unique, hierarchical name, like ``"sup/a"``."""
        return self._cell.path

    @property
    def is_alive(self) -> bool:
        """False once the actor has stopped for good."""
        return not self._cell.finished

    def __repr__(self) -> str:
        return f"<ActorRef {self._cell.path!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorRef) and other._cell is self._cell

    def __hash__(self) -> int:
        return id(self._cell)

    async def tell(self, message: Any) -> None:
        """Put ``message`` in the mailbox, waiting for room if it is full.

        It does not yield when there is room, so a sender can fill a mailbox
        in one go. Raises :class:`ActorStopped` if the actor stopped for good,
        including while waiting. Cancellation while waiting sends nothing.
        """
        cell = self._cell
        try:
            cell.send.send_nowait(message)
        except trio.WouldBlock:
            try:
                await cell.send.send(message)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                raise ActorStopped(f"{cell.path!r} has stopped") from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ActorStopped(f"{cell.path!r} has stopped") from None

    def tell_nowait(self, message: Any) -> None:
        """Put ``message`` in the mailbox now, or raise :class:`MailboxFull`.

        Raises :class:`ActorStopped` if the actor stopped for good.
        """
        cell = self._cell
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
        the actor stopped for good before answering. Cancelling the caller
        abandons the ask; the reply, if it comes, is dropped.
        """
        cell = self._cell
        ask = Ask(message, cell.path, timeout)
        try:
            cell.send.send_nowait(ask)
        except trio.WouldBlock:
            await self._send_ask_waiting(ask)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ActorStopped(f"{cell.path!r} has stopped") from None
        else:
            if timeout is not None:
                cell.system.timer.add(ask, timeout)
        return await ask.wait()

    async def _send_ask_waiting(self, ask: Ask) -> None:
        """The slow path of :meth:`ask`: wait for mailbox room within the timeout."""
        cell = self._cell
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

    def __repr__(self) -> str:
        return f"<SupervisorRef {self._cell.path!r}>"

    async def start_child(self, spec: ChildSpec, timeout: float | None = None) -> ActorRef:
        """Start a child from ``spec`` and return its ref once its ``on_start`` ran.

        Raises :class:`~runtime.errors.NameTaken` if the name is in use.
        A non-temporary child is kept in the spec and restarted with the
        supervisor; a temporary one is forgotten when it exits.
        """
        ref: ActorRef = await self.ask(StartChild(spec), timeout=timeout)
        return ref

    async def stop_child(self, name: str, timeout: float | None = None) -> bool:
        """Stop the child ``name`` for good (its grace time applies) and forget its spec.

        Returns False if there is no such child.
        """
        stopped: bool = await self.ask(StopChild(name), timeout=timeout)
        return stopped

    async def children(self, timeout: float | None = None) -> list[ActorRef]:
        """The refs of the live children, in start order."""
        refs: list[ActorRef] = await self.ask(WhichChildren(), timeout=timeout)
        return refs
