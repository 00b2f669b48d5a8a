"""Reply slots for ``ask`` and the one timer task that expires them.

An ask parks its task with ``trio.lowlevel.wait_task_rescheduled`` and the
actor wakes it directly with the reply, so a round trip costs two scheduler
passes and no cancel scope. Deadlines are not cancel scopes either: every
pending ask sits in a per-timeout FIFO, and :class:`AskTimer`, one task per
system, wakes at the earliest deadline and fails the asks that are due.
Because every ask with the same timeout is appended in time order, each FIFO
stays sorted and the common case costs an append; the few asks whose deadline
would unsort it (they waited for mailbox room) go to a heap instead.

Memory follows the number of *pending* asks, not the number asked within the
last timeout: a settled ask lets go of its task, an answered one of its
message too, and a queue drops its settled asks once they outnumber its
pending ones (see :class:`AskTimer` for the bound).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from typing import Any, TypeAlias

import attrs
import outcome
import trio

from runtime.errors import AskTimeout

__all__ = ["SETTLED_SLACK", "Ask", "AskTimer", "AskTimerStatistics"]

# A queue keeps up to this many settled asks among pending ones before it
# compacts, so that one long-pending ask among quick ones does not make every
# other reply pay for a compaction.
SETTLED_SLACK = 64


class Ask:
    """One ask: the message, its waiting task and its outcome.

    Exactly one of reply, fail, timeout or cancellation settles it; later
    attempts are ignored, so a reply that loses the race with a timeout is
    dropped.

    Once settled, it no longer holds its task. Once answered (:meth:`reply`
    or :meth:`fail`, whether or not it was still pending) it no longer holds
    its message either: ``message`` is then None. A timeout or the caller's
    cancellation keeps the message, because the actor may still take it from
    its mailbox and handle it.
    """

    __slots__ = (
        "_message_type",
        "_queue",
        "_result",
        "deadline",
        "done",
        "message",
        "parked",
        "target",
        "task",
        "timeout",
    )

    def __init__(self, message: Any, target: str, timeout: float | None) -> None:
        self.message = message
        self.target = target
        self.timeout = timeout
        self.deadline = math.inf
        self.task: trio.lowlevel.Task | None = trio.lowlevel.current_task()
        self.done = False
        self.parked = False
        self._result: outcome.Outcome[Any] | None = None
        # What timeout_error() names once the message is gone.
        self._message_type = type(message)
        # The timer queue that holds this ask, until the ask is settled (or
        # the timer takes it out); a settlement is counted there once.
        self._queue: _Queue | None = None

    def reply(self, value: Any) -> None:
        """Answer with ``value``, unless already settled; drops the message either way."""
        self.message = None
        if not self.done:
            self._settle(outcome.Value(value))

    def fail(self, error: BaseException) -> None:
        """Answer with ``error``, unless already settled; drops the message either way."""
        self.message = None
        if not self.done:
            self._settle(outcome.Error(error))

    def _settle(self, result: outcome.Outcome[Any] | None) -> None:
        """Mark the ask settled, hand ``result`` to its task, and count it in its queue.

        None means the task was cancelled and wants no outcome.
        """
        self.done = True
        task, self.task = self.task, None
        if result is not None:
            if self.parked:
                assert task is not None
                trio.lowlevel.reschedule(task, result)
            else:
                self._result = result
        queue = self._queue
        if queue is not None:
            self._queue = None
            queue.settled += 1
            if 2 * queue.settled > len(queue):
                queue.tidy()

    def timeout_error(self) -> AskTimeout:
        return AskTimeout(
            f"ask to {self.target!r} with {self._message_type.__name__} "
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
            self._settle(None)
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)


class _Fifo(deque[Ask]):
    """Asks of one timeout in deadline order, and how many of them are settled."""

    __slots__ = ("owner", "settled")

    def __init__(self, owner: AskTimer) -> None:
        super().__init__()
        self.settled = 0
        self.owner = owner

    def front(self) -> Ask | None:
        return self[0] if self else None

    def pop_front(self) -> Ask:
        return self.popleft()

    def tidy(self) -> None:
        """Called when settled asks outnumber pending ones: drop them if worth it.

        All settled: clear. Otherwise compact only past :data:`SETTLED_SLACK`;
        the work is then at most twice the number of asks dropped.
        """
        if self.settled == len(self):
            self.clear()
        elif self.settled >= SETTLED_SLACK:
            # Filtering keeps the order, so the FIFO stays sorted by deadline.
            pending = [ask for ask in self if not ask.done]
            self.clear()
            self.extend(pending)
            self.owner.compactions += 1
        else:
            return
        self.settled = 0


class _Heap(list[tuple[float, int, Ask]]):
    """Asks that arrived out of deadline order, as a heap of (deadline, seq, ask).

    An ask lands here when it waited for mailbox room: its deadline counts
    from when the ask began, so it can be earlier than that of an ask with
    the same timeout queued meanwhile.
    """

    __slots__ = ("owner", "seq", "settled")

    def __init__(self, owner: AskTimer) -> None:
        super().__init__()
        self.settled = 0
        self.seq = itertools.count()
        self.owner = owner

    def push(self, ask: Ask) -> None:
        heapq.heappush(self, (ask.deadline, next(self.seq), ask))

    def front(self) -> Ask | None:
        return self[0][2] if self else None

    def pop_front(self) -> Ask:
        return heapq.heappop(self)[2]

    def tidy(self) -> None:
        """As :meth:`_Fifo.tidy`; a compaction re-heapifies what is left."""
        if self.settled == len(self):
            self.clear()
        elif self.settled >= SETTLED_SLACK:
            self[:] = [entry for entry in self if not entry[2].done]
            heapq.heapify(self)
            self.owner.compactions += 1
        else:
            return
        self.settled = 0


_Queue: TypeAlias = _Fifo | _Heap


@attrs.frozen
class AskTimerStatistics:
    """What :meth:`AskTimer.statistics` reports.

    ``queued`` counts the asks the timer holds, settled or not; ``pending``
    those still waiting for an outcome; ``compactions`` how many times a queue
    dropped its settled asks while some were pending.
    """

    queued: int
    pending: int
    compactions: int


class AskTimer:
    """Fails every ask that outlives its deadline; one per system.

    :meth:`run` is the timer task. It sleeps on a cancel scope whose deadline
    is never later than the earliest pending deadline, so it costs nothing
    while asks are answered in time.

    Asks are queued by timeout: one FIFO per timeout value, plus one heap for
    the asks whose deadline came out of order (they waited for mailbox room).
    Bound: a queue with ``p`` pending asks holds at most ``max(p,
    SETTLED_SLACK - 1)`` settled ones, and none once ``p`` is 0 — so the timer
    holds at most ``2 * P + SETTLED_SLACK * (T + 1)`` asks, for ``P`` pending
    asks and ``T`` timeout values in use. A settled ask holds neither its task
    nor, once answered, its message. Dropping settled asks is amortized O(1)
    per ask; it only removes asks, so the earliest pending deadline, and with
    it the cancel scope's deadline, stays valid.
    """

    def __init__(self) -> None:
        self._queues: dict[float, _Fifo] = {}
        self._late = _Heap(self)
        self._scope: trio.CancelScope | None = None
        # Bumped by the queues, for statistics().
        self.compactions = 0

    def add(self, ask: Ask, delay: float) -> None:
        """Fail ``ask`` with :class:`AskTimeout` if still pending ``delay`` seconds from now.

        A settled ``ask`` is not queued.
        """
        ask.deadline = deadline = trio.current_time() + delay
        if ask.done:
            return
        key = delay if ask.timeout is None else ask.timeout
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Fifo(self)
        if queue and deadline < queue[-1].deadline:
            # Appending would unsort the FIFO.
            self._late.push(ask)
            ask._queue = self._late
        else:
            queue.append(ask)
            ask._queue = queue
        scope = self._scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

    def statistics(self) -> AskTimerStatistics:
        """How many asks the timer holds, how many are pending, how many compactions ran."""
        queues: list[_Queue] = [*self._queues.values(), self._late]
        return AskTimerStatistics(
            queued=sum(len(queue) for queue in queues),
            pending=sum(1 for queue in queues for ask in _asks(queue) if not ask.done),
            compactions=self.compactions,
        )

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
        earliest = _expire_front(self._late, now)
        for timeout, queue in list(self._queues.items()):
            earliest = min(earliest, _expire_front(queue, now))
            if not queue:
                del self._queues[timeout]
        return earliest


def _expire_front(queue: _Queue, now: float) -> float:
    """Take settled and due asks off the front of ``queue``, failing the due ones.

    Returns the deadline of the new front, or infinity if ``queue`` is empty.
    """
    while (ask := queue.front()) is not None and (ask.done or ask.deadline <= now):
        queue.pop_front()
        if ask._queue is None:
            # Its settlement was counted here.
            queue.settled -= 1
        else:
            ask._queue = None
            if not ask.done:
                ask._settle(outcome.Error(ask.timeout_error()))
    if queue and 2 * queue.settled > len(queue):
        queue.tidy()
    front = queue.front()
    return math.inf if front is None else front.deadline


def _asks(queue: _Queue) -> list[Ask]:
    return list(queue) if isinstance(queue, _Fifo) else [entry[2] for entry in queue]
