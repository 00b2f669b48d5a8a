"""The :class:`Actor` base class and the context an actor sees of the runtime."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn

from runtime.messages import ExitReason
from runtime.spec import Restart

if TYPE_CHECKING:
    from runtime.cell import ActorCell
    from runtime.ref import ActorRef
    from runtime.system import ActorSystem

__all__ = ["Actor", "ActorContext"]


class Actor:
    """Subclass and implement :meth:`handle`.

    One instance lives for one run of the actor: a restart builds a fresh one
    from the factory, so instance attributes are the actor's private state and
    never survive a crash. The runtime calls :meth:`handle` with one message at
    a time, in mailbox order.
    """

    _context: ActorContext | None = None

    @property
    def context(self) -> ActorContext:
        """This actor's view of the runtime; available from ``on_start`` on."""
        if self._context is None:
            raise RuntimeError("the context is set when the actor starts, not in __init__")
        return self._context

    async def on_start(self) -> None:
        """Run before the first message of every run.

        Raising here means the actor failed to start: whoever started it gets
        :class:`~runtime.errors.StartFailed` (``spawn``, ``start_child``), or,
        in a restart, its supervisor tries again as one more restart. It runs
        in the actor's own task while its supervisor waits for it, so asking
        that supervisor (or the system's root, for a top-level actor) to start
        or stop a child from here raises :class:`RuntimeError`; use
        ``self.context.spawn`` for children of this actor's own.
        """

    async def handle(self, message: Any) -> Any:
        """Handle one message; the return value is the reply to an ``ask``.

        Raising crashes the actor: an asker gets :class:`~runtime.errors.ActorCrashed`
        at once and the supervisor decides what happens next. The default
        handles nothing: it calls :meth:`unhandled`.
        """
        self.unhandled(message)

    def unhandled(self, message: Any) -> NoReturn:
        """Raise the :class:`TypeError` for a message this actor does not handle."""
        raise TypeError(f"{type(self).__name__} does not handle {type(message).__name__}")

    async def on_stop(self, reason: ExitReason) -> None:
        """Run after the last message of every run, a crash or a failed start included.

        ``reason`` is :attr:`ExitReason.NORMAL`, ``SHUTDOWN`` or ``CRASHED``.
        It runs shielded from outside cancellation for at most the child's
        shutdown grace time; past it, it is cancelled, the run ends as
        ``KILLED``, and a warning on the ``runtime`` logger names the actor.
        Raising here after a clean stop turns it into a crash.
        """


class ActorContext:
    """What a running actor may use: its ref, the system, watch, spawn and tasks."""

    __slots__ = ("_cell",)

    def __init__(self, cell: ActorCell) -> None:
        self._cell = cell

    @property
    def self(self) -> ActorRef:
        """This actor's own ref; it stays valid across restarts."""
        return self._cell.ref

    @property
    def system(self) -> ActorSystem:
        return self._cell.system

    @property
    def path(self) -> str:
        return self._cell.path

    @property
    def restarts(self) -> int:
        """How many times this actor has been restarted; 0 on its first run."""
        return self._cell.restarts

    def watch(self, ref: ActorRef) -> None:
        """Deliver :class:`~runtime.messages.Terminated` to this actor when ``ref`` stops for good.

        Watching an actor that already stopped delivers it at once. Watching
        twice is the same as once, and the watch survives this actor's restarts.
        """
        ref._cell.add_watcher(self._cell.ref)

    def unwatch(self, ref: ActorRef) -> None:
        ref._cell.remove_watcher(self._cell.ref)

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
        """Start a child of this actor, at ``<this path>/<name>``.

        Children are supervised one-for-one by this actor and stopped, in
        reverse start order, when this run of the actor ends (a restart
        included). A child that restarts too often crashes this actor.
        """
        return await self._cell.spawn_child(
            factory,
            name=name,
            args=args,
            mailbox_size=mailbox_size,
            restart=restart,
            shutdown=shutdown,
        )

    def start_task(
        self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str | None = None
    ) -> None:
        """Run ``fn(*args)`` in the background until it returns or this run ends.

        The task is cancelled when the actor stops or restarts. If it raises,
        the actor crashes with that exception.
        """
        self._cell.start_task(fn, *args, name=name)

    def stop(self) -> None:
        """Stop this actor after the current message, with reason ``"normal"``.

        A ``PERMANENT`` child is restarted even so; ``TRANSIENT`` and
        ``TEMPORARY`` ones are not.
        """
        self._cell.request_stop(normal=True)
