"""Reply slots for ``ask`` and the one timer task that expires them.

An ask parks its task with ``trio.lowlevel.wait_task_rescheduled`` and the
actor wakes it directly with the reply, so a round trip costs two scheduler
passes and no cancel scope. Deadlines are not cancel scopes either: every
pending ask sits in a per-timeout FIFO, and :class:`AskTimer`, one task per
system, wakes at the earliest deadline and fails the asks that are due.
Because every ask with the same timeout is appended in time order, each FIFO
stays sorted and the common case costs an append.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import outcome
import trio

from runtime.errors import AskTimeout

__all__ = ["Ask", "AskTimer"]


class Ask:
    """One pending ask: the message, its waiting task and its outcome.

    Exactly one of reply, fail, timeout or cancellation settles it; later
    attempts are ignored, so a reply that loses the race with a timeout is
    dropped.
    """

    __slots__ = ("_result", "deadline", "done", "message", "parked", "target", "task", "timeout")

    def __init__(self, message: Any, target: str, timeout: float | None) -> None:
        self.message = message
        self.target = target
        self.timeout = timeout
        self.deadline = math.inf
        self.task = trio.lowlevel.current_task()
        self.done = False
        self.parked = False
        self._result: outcome.Outcome[Any] | None = None

    def reply(self, value: Any) -> None:
        self._settle(outcome.Value(value))

    def fail(self, error: BaseException) -> None:
        self._settle(outcome.Error(error))

    def _settle(self, result: outcome.Outcome[Any]) -> None:
        if self.done:
            return
        self.done = True
        if self.parked:
            trio.lowlevel.reschedule(self.task, result)
        else:
            self._result = result

    def timeout_error(self) -> AskTimeout:
        return AskTimeout(
            f"ask to {self.target!r} with {type(self.message).__name__} "
            f"got no reply within {self.timeout:g}s"
        )

    async def wait(self) -> Any:
        """Return the reply, or raise what the ask failed with.

        Cancellation abandons the ask: a reply that arrives later is dropped.
        """
        if self._result is not None:
            result, self._result = self._result, None
            await trio.lowlevel.checkpoint()
            return result.unwrap()
        self.parked = True

        def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
            self.done = True
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)


class AskTimer:
    """Fails every ask that outlives its deadline; one per system.

    :meth:`run` is the timer task. It sleeps on a cancel scope whose deadline
    is the earliest pending deadline, so it costs nothing while asks are
    answered in time.
    """

    def __init__(self) -> None:
        self._queues: dict[float, deque[Ask]] = {}
        self._scope: trio.CancelScope | None = None

    def add(self, ask: Ask, delay: float) -> None:
        """Fail ``ask`` with :class:`AskTimeout` if still pending ``delay`` seconds from now."""
        ask.deadline = deadline = trio.current_time() + delay
        # Keyed by delay, each queue receives deadlines in increasing order.
        queue = self._queues.get(delay)
        if queue is None:
            queue = self._queues[delay] = deque()
        queue.append(ask)
        scope = self._scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled."""
        task_status.started()
        while True:
            with trio.CancelScope(deadline=self._expire_due()) as scope:
                self._scope = scope
                await trio.sleep_forever()
            self._scope = None

    def _expire_due(self) -> float:
        """Fail the due asks, drop settled ones from the fronts, return the next deadline."""
        now = trio.current_time()
        earliest = math.inf
        for timeout, queue in list(self._queues.items()):
            while queue and (queue[0].done or queue[0].deadline <= now):
                ask = queue.popleft()
                if not ask.done:
                    ask.fail(ask.timeout_error())
            if queue:
                earliest = min(earliest, queue[0].deadline)
            else:
                del self._queues[timeout]
        return earliest
