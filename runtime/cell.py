"""The running side of an actor: mailbox, lifecycle and message loop.

A *cell* outlives the actor instances it runs. It owns the mailbox, the ref,
the counters and the watchers; each *run* builds a fresh instance, runs its
``on_start``, its message loop and its ``on_stop``, and returns an
:class:`Exit`. The parent supervisor decides whether another run follows.
When none does, :meth:`Cell.finish` closes the mailbox, fails the asks still in
it and tells the watchers.
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
import functools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from runtime.actor import Actor, ActorContext
from runtime.errors import ActorCrashed, ActorStopped
from runtime.messages import ExitReason, Terminated
from runtime.ref import ActorRef, SupervisorRef
from runtime.reply import Ask
from runtime.snapshot import ActorSnapshot, ActorState
from runtime.spec import ChildSpec, Restart, SupervisorSpec

if TYPE_CHECKING:
    from runtime.supervisor import SupervisorCell
    from runtime.system import ActorSystem

__all__ = ["ActorCell", "Cell", "Exit", "current_cell", "describe_failure"]

log = logging.getLogger("runtime")

# The cell whose run task (or one of whose tasks) is running; set per task.
_current_cell: contextvars.ContextVar[Cell | None] = contextvars.ContextVar(
    "troupe_current_cell", default=None
)

# Messages handled back to back before the loop yields to other tasks.
_BATCH = 512


@attrs.frozen
class Exit:
    """How one run ended, and the exception that ended it, if any."""

    reason: ExitReason
    error: BaseException | None = None

    @property
    def abnormal(self) -> bool:
        return self.reason.abnormal


def current_cell() -> Cell | None:
    """The cell whose run the calling task belongs to, or None outside any actor."""
    return _current_cell.get()


def describe_failure(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def collapse(error: BaseException) -> BaseException:
    """The only exception inside nested single-member groups, else the group itself."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


class _StopSignal:
    """Put in an idle actor's mailbox to wake it for a stop; returned by
    :meth:`Cell.next_message` when a stop is requested."""


STOP = _StopSignal()


class Cell(abc.ABC):
    """What actors and supervisors share: mailbox, ref, counters, watchers."""

    kind = "actor"
    ref_class: type[ActorRef] = ActorRef

    def __init__(
        self,
        system: ActorSystem,
        path: str,
        spec: ChildSpec,
        capacity: float,
        *,
        registered: bool = True,
    ) -> None:
        self.system = system
        self.path = path
        self.spec = spec
        self.capacity = capacity
        # A registered cell is found by its path, so refs to that path follow
        # it; an unregistered one (the root, an actor's own children's
        # supervisor) is reached only through its own ref.
        self.registered = registered
        self.send, self.recv = trio.open_memory_channel[Any](capacity)
        self.ref = self.ref_class(self)
        self.state = ActorState.STARTING
        self.processed = 0
        self.restarts = 0
        self.last_failure: str | None = None
        self.finished = False
        self.stopped_by_parent = False
        self.run_id = 0
        self.run_done = trio.Event()
        self.run_done.set()
        # How the latest run ended; once finished, the exit the watchers saw.
        self.last_exit: Exit | None = None
        self.run_task: trio.lowlevel.Task | None = None
        # True when the latest run ended before it was up (its on_start raised).
        self.start_failed = False
        self._watchers: dict[ActorRef, ActorRef] = {}
        self._stop_reason: ExitReason | None = None
        self._stop_deadline = math.inf
        self._idle = False
        self._idle_scope: trio.CancelScope | None = None
        self._kill_scope = trio.CancelScope()

    # -- lifecycle, driven by the parent supervisor ------------------------

    async def run_once(
        self, *, task_status: trio.TaskStatus[Exit | None] = trio.TASK_STATUS_IGNORED
    ) -> Exit:
        """Run one incarnation and return how it ended; never raises but for cancellation.

        ``task_status.started(None)`` is called once it is up. A run that ends
        before that failed to start: ``task_status.started(exit)`` then hands
        its exit to the starter, and :attr:`start_failed` is True.
        """
        self._begin_run()
        _current_cell.set(self)
        self.run_task = trio.lowlevel.current_task()
        started = _Started(task_status)
        exit = Exit(ExitReason.KILLED)
        try:
            exit = await self._run(started)
        finally:
            self.last_exit = exit
            if exit.error is not None:
                self.last_failure = describe_failure(exit.error)
            self.start_failed = not started.called
            started.fail(exit)
            self.run_task = None
            self.run_done.set()
        return exit

    @abc.abstractmethod
    async def _run(self, started: Callable[[], None]) -> Exit:
        """One incarnation; call ``started()`` once it is up."""

    def _begin_run(self) -> None:
        self.run_id += 1
        self.run_done = trio.Event()
        self.last_exit = None
        self.start_failed = False
        self.stopped_by_parent = False
        self._stop_reason = None
        self._stop_deadline = math.inf
        self._kill_scope = trio.CancelScope()
        self.state = ActorState.STARTING

    @property
    def is_running(self) -> bool:
        """True while a run is in progress (starting, running or stopping)."""
        return not self.run_done.is_set()

    def request_stop(self, *, normal: bool = False, grace: float | None = None) -> None:
        """Ask the current run to end after its current message.

        With ``grace``, the run is cancelled that many seconds from now if it
        has not ended. Never blocks.
        """
        if self._stop_reason is None:
            self._stop_reason = ExitReason.NORMAL if normal else ExitReason.SHUTDOWN
        if grace is not None:
            self._stop_deadline = min(self._stop_deadline, trio.current_time() + grace)
            self._kill_scope.deadline = self._stop_deadline
        if self.state in (ActorState.STARTING, ActorState.RUNNING):
            self.state = ActorState.STOPPING
        if self._idle:
            # An idle actor waits on an empty mailbox: wake it with STOP. No
            # cancel scope per wait keeps the idle path (every ask) cheap.
            with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
                self.send.send_nowait(STOP)
        if self._idle_scope is not None:
            self._idle_scope.cancel()

    @property
    def stop_requested(self) -> bool:
        return self._stop_reason is not None

    async def next_message(self) -> Any:
        """Wait for the next mailbox item, or return :data:`STOP` if a stop is requested.

        A STOP left in the mailbox by an earlier run is skipped.
        """
        while self._stop_reason is None:
            self._idle = True
            try:
                item = await self.recv.receive()
            finally:
                self._idle = False
            if item is not STOP:
                return item
        return STOP

    def on_stop_scope(self) -> trio.CancelScope:
        """A shielded scope bounded by the stop deadline, or by the grace time from now."""
        deadline = self._stop_deadline
        if deadline == math.inf:
            deadline = trio.current_time() + self.spec.grace
        return trio.CancelScope(shield=True, deadline=deadline)

    def finish(self, exit: Exit) -> None:
        """Stop for good: close the mailbox, fail queued asks, tell the watchers."""
        if self.finished:
            return
        self.finished = True
        self.last_exit = exit
        self.state = ActorState.STOPPED
        self.send.close()
        while True:
            try:
                item = self.recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            if isinstance(item, Ask):
                item.fail(ActorStopped(f"{self.path!r} stopped before handling the message"))
        self.recv.close()
        self.system.unregister(self)
        message = Terminated(self.ref, exit.reason, exit.error)
        for watcher in self._watchers.values():
            self.system.deliver(watcher, message)
        self._watchers.clear()

    # -- death watch -------------------------------------------------------

    def add_watcher(self, watcher: ActorRef) -> None:
        if self.finished:
            exit = self.last_exit or Exit(ExitReason.SHUTDOWN)
            self.system.deliver(watcher, Terminated(self.ref, exit.reason, exit.error))
        else:
            self._watchers[watcher] = watcher

    def remove_watcher(self, watcher: ActorRef) -> None:
        self._watchers.pop(watcher, None)

    # -- introspection -----------------------------------------------------

    def snapshot(self) -> ActorSnapshot:
        stats = self.recv.statistics()
        return ActorSnapshot(
            path=self.path,
            kind=self.kind,
            state=self.state,
            mailbox_size=stats.current_buffer_used,
            mailbox_capacity=None if self.capacity == math.inf else int(self.capacity),
            processed=self.processed,
            restarts=self.restarts,
            last_failure=self.last_failure,
            children=self.child_snapshots(),
        )

    def child_snapshots(self) -> tuple[ActorSnapshot, ...]:
        return ()

    def children_supervisor(self) -> ActorRef | None:
        """The ref that starts and stops this cell's children, if it has any."""
        return None


class ActorCell(Cell):
    """A cell that runs :class:`Actor` instances built by ``spec.factory``."""

    def __init__(self, system: ActorSystem, path: str, spec: ChildSpec) -> None:
        super().__init__(system, path, spec, spec.mailbox_size)
        factory = spec.factory
        assert not isinstance(factory, SupervisorSpec)
        self._factory = factory
        self._context = ActorContext(self)
        self._tasks: trio.Nursery | None = None
        self._children: SupervisorCell | None = None
        # The ask whose handler is running; if cancellation cuts the run short
        # there, _run still owes its asker an answer.
        self._handling: Ask | None = None

    async def _run(self, started: Callable[[], None]) -> Exit:
        instance: Actor | None = None
        exit = Exit(ExitReason.NORMAL)
        try:
            with self._kill_scope:
                try:
                    async with trio.open_nursery() as tasks:
                        self._tasks = tasks
                        instance = self._factory()
                        instance._context = self._context
                        await instance.on_start()
                        if self.state is ActorState.STARTING:
                            self.state = ActorState.RUNNING
                        started()
                        exit = await self._message_loop(instance)
                        await self._stop_children()
                        tasks.cancel_scope.cancel()
                except Exception as error:
                    exit = Exit(ExitReason.CRASHED, collapse(error))
                finally:
                    self._tasks = None
            if self._kill_scope.cancelled_caught:
                log.warning(
                    "%r did not stop within its shutdown grace time of %gs; cancelled it",
                    self.path,
                    self.spec.grace,
                )
                exit = Exit(ExitReason.KILLED, exit.error)
            elif instance is not None and type(instance).on_stop is not Actor.on_stop:
                exit = await self._run_on_stop(instance, exit)
        finally:
            self._children = None
            self._answer_interrupted_ask(exit)
        return exit

    async def _message_loop(self, instance: Actor) -> Exit:
        recv = self.recv
        handle = instance.handle
        budget = _BATCH
        while self._stop_reason is None:
            budget -= 1
            if budget == 0:
                budget = _BATCH
                await trio.lowlevel.checkpoint()
            try:
                item = recv.receive_nowait()
            except trio.WouldBlock:
                item = await self.next_message()
                if item is STOP:
                    break
                budget = _BATCH
            if item is STOP:
                continue
            if type(item) is Ask:
                if item.done:  # its asker gave up; nobody wants the reply
                    continue
                self._handling = item
                try:
                    result = await handle(item.message)
                except Exception as error:
                    item.fail(self._crashed_error(item, error))
                    return Exit(ExitReason.CRASHED, error)
                self._handling = None
                item.reply(result)
            else:
                try:
                    await handle(item)
                except Exception as error:
                    return Exit(ExitReason.CRASHED, error)
            self.processed += 1
        return Exit(self._stop_reason or ExitReason.NORMAL)

    def _crashed_error(self, ask: Ask, error: BaseException) -> ActorCrashed:
        crash = ActorCrashed(
            f"{self.path!r} crashed handling {type(ask.message).__name__}: "
            f"{describe_failure(error)}"
        )
        crash.__cause__ = error
        return crash

    def _answer_interrupted_ask(self, exit: Exit) -> None:
        """Fail the ask whose handler was cancelled because the run ended under it."""
        ask, self._handling = self._handling, None
        if ask is None or ask.done:
            return
        if exit.reason is ExitReason.CRASHED and exit.error is not None:
            ask.fail(self._crashed_error(ask, exit.error))
        else:
            ask.fail(
                ActorStopped(f"{self.path!r} stopped while handling {type(ask.message).__name__}")
            )

    async def _run_on_stop(self, instance: Actor, exit: Exit) -> Exit:
        with self.on_stop_scope() as scope:
            try:
                await instance.on_stop(exit.reason)
            except Exception as error:
                log.warning("on_stop of %r raised %s", self.path, describe_failure(error))
                if not exit.abnormal:
                    return Exit(ExitReason.CRASHED, error)
        if scope.cancelled_caught:
            log.warning(
                "on_stop of %r outlived the shutdown grace time of %gs; cancelled it",
                self.path,
                self.spec.grace,
            )
            return Exit(ExitReason.KILLED, exit.error)
        return exit

    # -- what ActorContext offers ------------------------------------------

    def start_task(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str | None) -> None:
        if self._tasks is None:
            raise RuntimeError(f"{self.path!r} is not running; start tasks from on_start or handle")
        self._tasks.start_soon(
            fn, *args, name=name or f"{self.path}:{getattr(fn, '__name__', 'task')}"
        )

    async def spawn_child(
        self,
        factory: Callable[..., Actor],
        *,
        name: str | None,
        args: tuple[Any, ...],
        mailbox_size: int,
        restart: Restart,
        shutdown: float | None,
    ) -> ActorRef:
        if self._tasks is None:
            raise RuntimeError(f"{self.path!r} is not running; spawn from on_start or handle")
        if self._children is None:
            from runtime.supervisor import SupervisorCell

            # OTP's intensity would let one crash of a child crash this
            # actor; an actor's own children get a little more room.
            children = SupervisorCell(
                self.system,
                self.path,
                ChildSpec("children", SupervisorSpec(max_restarts=3, within=5.0)),
                registered=False,
            )
            await self._tasks.start(self._supervise_children, children)
            self._children = children
        spec = ChildSpec(
            name or self.system.unique_name(factory),
            functools.partial(factory, *args) if args else factory,
            restart=restart,
            shutdown=shutdown,
            mailbox_size=mailbox_size,
        )
        children_ref = self._children.ref
        assert isinstance(children_ref, SupervisorRef)
        return await children_ref.start_child(spec)

    async def _supervise_children(
        self, children: SupervisorCell, *, task_status: trio.TaskStatus[Exit | None]
    ) -> None:
        exit = await children.run_once(task_status=task_status)
        children.finish(exit)
        if exit.error is not None:
            raise exit.error

    async def _stop_children(self) -> None:
        children = self._children
        if children is not None:
            children.request_stop()
            await children.run_done.wait()

    def child_snapshots(self) -> tuple[ActorSnapshot, ...]:
        if self._children is None:
            return ()
        return self._children.child_snapshots()

    def children_supervisor(self) -> ActorRef | None:
        return None if self._children is None else self._children.ref


class _Started:
    """``task_status.started()`` for one run: success once, else the run's exit."""

    __slots__ = ("_task_status", "called")

    def __init__(self, task_status: trio.TaskStatus[Exit | None]) -> None:
        self._task_status: trio.TaskStatus[Exit | None] | None = task_status
        self.called = False

    def __call__(self) -> None:
        """The run is up."""
        if self._task_status is not None:
            self.called = True
            self._task_status.started(None)
            self._task_status = None

    def fail(self, exit: Exit) -> None:
        """The run ended before it was up: hand its exit to the starter."""
        if self._task_status is not None:
            self._task_status.started(exit)
            self._task_status = None
