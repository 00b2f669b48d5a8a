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
import functools
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
import structlog
import trio

from runtime.actor import Actor, ActorContext
from runtime.control import StartChild
from runtime.errors import ActorCrashed, ActorStopped
from runtime.messages import Terminated
from runtime.ref import ActorRef
from runtime.reply import Ask
from runtime.snapshot import ActorSnapshot
from runtime.spec import ChildSpec, Restart, SupervisorSpec

if TYPE_CHECKING:
    from runtime.supervisor import SupervisorCell
    from runtime.system import ActorSystem

__all__ = ["ActorCell", "Cell", "Exit", "describe_failure"]

log = structlog.get_logger("runtime")

# Messages handled back to back before the loop yields to other tasks.
_BATCH = 512


@attrs.frozen
class Exit:
    """How one run ended: ``normal``, ``shutdown``, ``crashed`` or ``killed``."""

    reason: str
    error: BaseException | None = None

    @property
    def abnormal(self) -> bool:
        return self.reason in ("crashed", "killed")


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

    def __init__(self, system: ActorSystem, path: str, spec: ChildSpec, capacity: float) -> None:
        self.system = system
        self.path = path
        self.spec = spec
        self.capacity = capacity
        self.send, self.recv = trio.open_memory_channel[Any](capacity)
        self.ref = self.ref_class(self)
        self.state = "starting"
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
        self._watchers: dict[int, ActorRef] = {}
        self._stop_reason: str | None = None
        self._stop_deadline = math.inf
        self._idle = False
        self._idle_scope: trio.CancelScope | None = None
        self._kill_scope = trio.CancelScope()

    # -- lifecycle, driven by the parent supervisor ------------------------

    async def run_once(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> Exit:
        """Run one incarnation and return how it ended; never raises but for cancellation.

        ``task_status.started()`` is called once it is up, or once it failed
        to start (the failure is then in the returned exit).
        """
        self._begin_run()
        started = _Started(task_status)
        try:
            exit = await self._run(started)
            self.last_exit = exit
        finally:
            started()
            self.run_done.set()
        if exit.error is not None:
            self.last_failure = describe_failure(exit.error)
        return exit

    @abc.abstractmethod
    async def _run(self, started: Callable[[], None]) -> Exit:
        """One incarnation; call ``started()`` once it is up."""

    def _begin_run(self) -> None:
        self.run_id += 1
        self.run_done = trio.Event()
        self.last_exit = None
        self.stopped_by_parent = False
        self._stop_reason = None
        self._stop_deadline = math.inf
        self._kill_scope = trio.CancelScope()
        self.state = "starting"

    def request_stop(self, *, normal: bool = False, grace: float | None = None) -> None:
        """Ask the current run to end after its current message.

        With ``grace``, the run is cancelled that many seconds from now if it
        has not ended. Never blocks.
        """
        if self._stop_reason is None:
            self._stop_reason = "normal" if normal else "shutdown"
        if grace is not None:
            self._stop_deadline = min(self._stop_deadline, trio.current_time() + grace)
            self._kill_scope.deadline = self._stop_deadline
        if self.state in ("starting", "running"):
            self.state = "stopping"
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
        self.state = "stopped"
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
            exit = self.last_exit or Exit("shutdown")
            self.system.deliver(watcher, Terminated(self.ref, exit.reason, exit.error))
        else:
            self._watchers[id(watcher._cell)] = watcher

    def remove_watcher(self, watcher: ActorRef) -> None:
        self._watchers.pop(id(watcher._cell), None)

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
        exit = Exit("normal")
        try:
            with self._kill_scope:
                try:
                    async with trio.open_nursery() as tasks:
                        self._tasks = tasks
                        instance = self._factory()
                        instance._context = self._context
                        await instance.on_start()
                        if self.state == "starting":
                            self.state = "running"
                        started()
                        exit = await self._message_loop(instance)
                        await self._stop_children()
                        tasks.cancel_scope.cancel()
                except Exception as error:
                    exit = Exit("crashed", collapse(error))
                finally:
                    self._tasks = None
            if self._kill_scope.cancelled_caught:
                exit = Exit("killed", exit.error)
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
                    return Exit("crashed", error)
                self._handling = None
                item.reply(result)
            else:
                try:
                    await handle(item)
                except Exception as error:
                    return Exit("crashed", error)
            self.processed += 1
        return Exit(self._stop_reason or "normal")

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
        if exit.reason == "crashed" and exit.error is not None:
            ask.fail(self._crashed_error(ask, exit.error))
        else:
            ask.fail(
                ActorStopped(f"{self.path!r} stopped while handling {type(ask.message).__name__}")
            )

    async def _run_on_stop(self, instance: Actor, exit: Exit) -> Exit:
        with self.on_stop_scope():
            try:
                await instance.on_stop(exit.reason)
            except Exception as error:
                log.warning("on_stop raised", path=self.path, error=describe_failure(error))
                if not exit.abnormal:
                    return Exit("crashed", error)
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

            children = SupervisorCell(
                self.system, self.path, ChildSpec("children", SupervisorSpec()), registered=False
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
        ref: ActorRef = await self._children.ref.ask(StartChild(spec), timeout=None)
        return ref

    async def _supervise_children(
        self, children: SupervisorCell, *, task_status: trio.TaskStatus[None]
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
    """``task_status.started()`` that may be called more than once."""

    __slots__ = ("_task_status",)

    def __init__(self, task_status: trio.TaskStatus[None]) -> None:
        self._task_status: trio.TaskStatus[None] | None = task_status

    def __call__(self) -> None:
        if self._task_status is not None:
            self._task_status.started()
            self._task_status = None
