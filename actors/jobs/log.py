"""The per-job log: one running job's deltas, appended by its stream, read by followers.

A :class:`JobLog` is to a job what a trio memory channel is to two tasks: a
concurrency primitive, not actor state. Exactly one writer (the job's
:class:`~actors.jobs.stream.StreamActor`) appends; the persister takes what is
new each flush tick, stores it together with every other job's, and moves the
*persisted watermark*; followers read up to that watermark and never past it.
So a follower is only ever sent deltas the store holds, and a crash of the
process can lose at most the deltas of the last flush interval, none of which
any follower has seen.

The log keeps a bounded tail in memory (``tail_size`` deltas); a follower that
is further behind reads the rest from the store, so a slow follower never
holds memory or the job back. Nothing here blocks but :meth:`wait_for` and
:meth:`wait_closed`, and no method is a checkpoint except the ``async`` ones.

A log whose stream stopped before anyone closed it is *abandoned*
(:meth:`abandon`): the job will be ended, but maybe on another log (a registry
that restarted meanwhile makes its own), so its readers learn the end from the store.
"""

from __future__ import annotations

from collections import deque

import trio

from actors.api import DeltaEvent, StatusEvent
from actors.model import Delta

__all__ = ["JobLog"]


class JobLog:
    """The deltas of one running job, in seq order.

    ``appended_seq`` is the seq of the last delta appended, ``persisted_seq``
    the watermark: the last seq known to be in the store. ``final`` is set
    once, when the job ends; the watermark then never moves again.
    """

    def __init__(self, job_id: str, *, persisted_seq: int = 0, tail_size: int = 1024) -> None:
        if tail_size < 1:
            raise ValueError("tail_size must be at least 1")
        self.job_id = job_id
        self.appended_seq = persisted_seq
        self.persisted_seq = persisted_seq
        self.final: StatusEvent | None = None
        self.watchers = 0
        self._sealed = False
        self._abandoned = False
        self._closed = trio.Event()
        self._tail: deque[DeltaEvent] = deque(maxlen=tail_size)
        self._pending: list[Delta] = []
        self._changed = trio.Event()
        self._flushed = trio.Event()
        self._flushed.set()
        # Set while no delta taken by the persister is still being written.
        self._settled = trio.Event()
        self._settled.set()

    def __repr__(self) -> str:
        return (
            f"<JobLog {self.job_id} appended={self.appended_seq} "
            f"persisted={self.persisted_seq} final={self.final is not None}>"
        )

    # -- the stream's side -----------------------------------------------------

    def append_nowait(self, content: str, reasoning: str = "") -> Delta:
        """Append the next delta and return it (with its seq). Never blocks.

        Raises :class:`trio.ClosedResourceError` once the job is ending (:meth:`seal`)
        or has ended.
        """
        if self._sealed:
            raise trio.ClosedResourceError(f"the log of job {self.job_id} is closed")
        self.appended_seq += 1
        delta = Delta(self.job_id, self.appended_seq, content, reasoning)
        self._pending.append(delta)
        if self._flushed.is_set():
            self._flushed = trio.Event()
        return delta

    async def flushed(self) -> None:
        """Wait until every appended delta is persisted (or the log is closed)."""
        await self._flushed.wait()

    # -- the persister's side --------------------------------------------------

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def take_pending(self, limit: int | None = None) -> list[Delta]:
        """Hand over the deltas appended since the last take, oldest first, at most ``limit``.

        The taker then writes them, and settles the take with :meth:`mark_persisted` or
        :meth:`give_back`; until then :meth:`settled` waits.
        """
        if limit is None or len(self._pending) <= limit:
            taken, self._pending = self._pending, []
        else:
            taken, self._pending = self._pending[:limit], self._pending[limit:]
        if taken and self._settled.is_set():
            self._settled = trio.Event()
        return taken

    def give_back(self, deltas: list[Delta]) -> None:
        """Put back deltas taken but not stored, ahead of those appended since."""
        if deltas and self.final is None:
            self._pending[:0] = deltas
        self._settled.set()

    async def settled(self) -> None:
        """Wait until no take is being written. Always a checkpoint.

        It returns with no checkpoint after the check, so a caller that takes the rest
        at once writes it after the deltas taken before: a store keeps a job's deltas
        only in seq order, so writing them out of order would lose the earlier ones.
        """
        await trio.lowlevel.checkpoint()
        while not self._settled.is_set():
            await self._settled.wait()

    def mark_persisted(self, deltas: list[Delta]) -> None:
        """Record that ``deltas`` (as taken, in order) are in the store, and wake the readers.

        After :meth:`close`, the watermark stays where the close put it.
        """
        self._settled.set()
        if not deltas or self.final is not None:
            return
        self._tail.extend(DeltaEvent(d.seq, d.content, d.reasoning) for d in deltas)
        self.persisted_seq = deltas[-1].seq
        if not self._pending:
            self._flushed.set()
        self._wake()

    # -- the registry's side ---------------------------------------------------

    def seal(self) -> None:
        """Refuse appends from now on: the job is ending. Idempotent."""
        self._sealed = True

    @property
    def abandoned(self) -> bool:
        """True once its stream stopped while it was open, until it is closed."""
        return self._abandoned and self.final is None

    def abandon(self) -> None:
        """Say that the job's stream stopped while the log is open: refuse appends from
        now on and wake the readers. Does nothing once closed; idempotent.

        The persister still stores what was appended. Whoever ends the job closes the
        log if it holds it; a registry that restarted meanwhile ends the job on a log of
        its own, so readers of this one learn the end from the store.
        """
        if self.final is None and not self._abandoned:
            self._abandoned = True
            self._sealed = True
            self._wake()

    def close(self, final: StatusEvent) -> None:
        """End the log with the job's final status; ``final.last_seq`` is the watermark.

        Deltas not persisted by then are dropped: no follower has seen them,
        and the stored job ends at ``final.last_seq``. Idempotent.
        """
        if self.final is not None:
            return
        self._sealed = True
        self.final = final
        self.persisted_seq = min(self.persisted_seq, final.last_seq)
        self._pending.clear()
        self._flushed.set()
        self._closed.set()
        self._wake()

    # -- the followers' side ---------------------------------------------------

    def read_after(self, seq: int, limit: int) -> list[DeltaEvent] | None:
        """The persisted deltas after ``seq``, at most ``limit``; None if the tail no
        longer reaches back to ``seq + 1`` (read those from the store)."""
        tail = self._tail
        if seq >= self.persisted_seq:
            return []
        if not tail or tail[0].seq > seq + 1:
            return None
        start = seq + 1 - tail[0].seq
        end = min(len(tail), start + limit)
        return [tail[i] for i in range(start, end)]

    async def wait_for(self, seq: int) -> None:
        """Wait until a delta after ``seq`` is persisted, or the log is closed or abandoned.

        Always a checkpoint, even when that is already so.
        """
        if self.persisted_seq > seq or self.final is not None or self._abandoned:
            await trio.lowlevel.checkpoint()
        while self.persisted_seq <= seq and self.final is None and not self._abandoned:
            await self._changed.wait()

    async def wait_closed(self) -> None:
        """Wait until the log is closed. Always a checkpoint."""
        await self._closed.wait()

    def _wake(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()
