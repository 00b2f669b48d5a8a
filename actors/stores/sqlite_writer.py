"""The one thread that writes to a SQLite database, committing in groups.

A commit costs far more than a small write (locking, a commit frame appended
to the WAL, possibly a sync), so the writer takes everything queued since its
last commit and runs it in one transaction: one commit for the whole group. Each operation runs
inside its own SAVEPOINT, so an operation that fails is undone on its own and
fails only its own caller; the rest of the group still commits.

trio tasks submit operations through a thread-safe queue and sleep on a
:class:`trio.Event`; after the commit, the writer wakes the whole group with one
call into each trio run it came from (one hand-off per group, not per write).

:meth:`SqliteWriter.reconnect` swaps the connection between two groups: a
connection that opened a read-only file stays read-only after the file is made
writable again, so only a new one can write.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import attrs
import outcome
import trio

from actors.stores.protocol import StoreError

__all__ = ["SqliteWriter", "WriteOperation"]

T = TypeVar("T")

WriteOperation = Callable[[sqlite3.Connection], T]
"""A unit of work run on the writer thread inside an open transaction. It must
not commit or roll back; raising undoes what it did."""

_Wake = Callable[["outcome.Outcome[Any]"], None]
"""Runs in the submitting trio run: hands the result to the waiting task."""


@attrs.frozen
class _Request(Generic[T]):
    operation: WriteOperation[T]
    token: trio.lowlevel.TrioToken
    wake: _Wake


@attrs.frozen
class _Reconnect:
    """Queued by :meth:`SqliteWriter.reconnect`: the groups queued before it are
    written on the old connection, those after it on the new one."""

    connect: Callable[[], sqlite3.Connection]
    token: trio.lowlevel.TrioToken
    wake: _Wake


def _wake_all(wakes: list[tuple[_Wake, outcome.Outcome[Any]]]) -> None:
    for wake, result in wakes:
        wake(result)


def _deliver(
    requests: Sequence[_Request[Any] | _Reconnect], results: Sequence[outcome.Outcome[Any]]
) -> None:
    """Hand each result to its caller, with one call into each trio run."""
    by_run: dict[trio.lowlevel.TrioToken, list[tuple[_Wake, outcome.Outcome[Any]]]] = {}
    for request, result in zip(requests, results, strict=True):
        by_run.setdefault(request.token, []).append((request.wake, result))
    for token, wakes in by_run.items():
        # If the submitting run is over, nobody is left to tell.
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(_wake_all, wakes)


class _Stop:
    """Queued by :meth:`SqliteWriter.aclose`: what was queued before it is
    written, then the thread ends."""


_STOP = _Stop()


class SqliteWriter:
    """Owns the write connection and the thread that uses it.

    ``connection`` must be in autocommit mode (``isolation_level=None``), opened
    with ``check_same_thread=False``, and not used by anyone else afterwards:
    the writer closes it when it stops.
    """

    def __init__(
        self,
        connection: sqlite3.Connection,
        *,
        max_batch: int = 1000,
        name: str = "sqlite-writer",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._conn = connection
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Request[Any] | _Reconnect | _Stop] = queue.SimpleQueue()
        # Guards the check-then-put in submit against the thread's final drain,
        # so no request can be queued after the thread has stopped reading.
        self._accepting_lock = threading.Lock()
        self._accepting = True
        self._closing = False
        self._commits = 0
        self._operations = 0
        # A daemon thread: a process that exits without closing the store loses
        # at most the open transaction, which the WAL discards on the next open.
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def commits(self) -> int:
        """How many transactions the writer has committed."""
        return self._commits

    @property
    def operations(self) -> int:
        """How many operations the writer has run (succeeded or failed)."""
        return self._operations

    @property
    def is_running(self) -> bool:
        """Whether the writer accepts operations (not closing, thread alive)."""
        return not self._closing and self._thread.is_alive()

    async def submit(self, operation: WriteOperation[T]) -> T:
        """Run ``operation`` on the writer thread and return what it returns.

        Blocks until the group holding the operation has been committed. Raises
        what the operation raised (a :class:`sqlite3.Error` becomes a
        :class:`StoreError`), :class:`StoreError` if the commit failed, or
        :class:`StoreError` if the writer is closed. Cancellable while waiting;
        a cancelled operation may still be committed, and its result is dropped.
        """
        value: T = await self._handled(lambda token, wake: _Request(operation, token, wake))
        return value

    async def reconnect(self, connect: Callable[[], sqlite3.Connection]) -> None:
        """Close the connection and write on ``connect()``'s from now on.

        ``connect`` runs on the writer thread, after every operation submitted
        before this call has been committed (or has failed), and must return a
        connection set up as the constructor's. Blocks until it has. Raises
        :class:`StoreError` if ``connect`` raises (its exception chained) or the
        writer is closed; the old connection is closed all the same, so every
        write fails until a later call succeeds. Cancellable
        while waiting; a cancelled call may still take effect.
        """
        await self._handled(lambda token, wake: _Reconnect(connect, token, wake))

    async def _handled(
        self, item: Callable[[trio.lowlevel.TrioToken, _Wake], _Request[Any] | _Reconnect]
    ) -> Any:
        """Queue the ``item(token, wake)`` built for this trio run, and return what the
        writer thread's handling of it gave (or raise what it raised)."""
        if self._closing:
            raise StoreError("store is closed")
        done = trio.Event()
        result: list[outcome.Outcome[Any]] = []

        def wake(value: outcome.Outcome[Any]) -> None:
            result.append(value)
            done.set()

        queued = item(trio.lowlevel.current_trio_token(), wake)
        with self._accepting_lock:
            if not self._accepting:
                raise StoreError("store writer has stopped")
            self._queue.put(queued)
        await done.wait()
        return result[0].unwrap()

    async def aclose(self) -> None:
        """Write everything already submitted, commit, close the connection and
        join the thread. Idempotent: a second call waits for the same end.
        Not cancellable: it returns once the thread has ended, which takes as
        long as the writes already queued."""
        if not self._closing:
            self._closing = True
            with self._accepting_lock:
                if self._accepting:
                    self._queue.put(_STOP)
        await trio.to_thread.run_sync(self._thread.join)

    # -- the writer thread ---------------------------------------------------

    def _run(self) -> None:
        try:
            stopping = False
            while not stopping:
                first = self._queue.get()
                batch: list[_Request[Any]] = []
                # What ends the group: a stop or a reconnect, done after the group.
                held: _Reconnect | _Stop | None = None
                if isinstance(first, _Request):
                    batch.append(first)
                else:
                    held = first
                while held is None and len(batch) < self._max_batch:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(item, _Request):
                        batch.append(item)
                    else:
                        held = item
                if batch:
                    self._run_batch(batch)
                if isinstance(held, _Stop):
                    stopping = True
                elif held is not None:
                    self._reconnect(held)
        finally:
            with self._accepting_lock:
                self._accepting = False
            self._fail_leftovers()
            self._conn.close()

    def _run_batch(self, batch: list[_Request[Any]]) -> None:
        results: list[outcome.Outcome[Any]] = []
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            for request in batch:
                results.append(self._run_one(request.operation))
            self._conn.execute("COMMIT")
            self._commits += 1
        except sqlite3.Error as exc:
            # Transaction control itself failed (disk full, I/O error, lock
            # timeout, a connection closed by a failed reconnect): nothing of this
            # group is durable, so all of it fails.
            with contextlib.suppress(sqlite3.Error):
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
            # One exception per caller: each raises it in its own task, with
            # its own traceback.
            results = [
                outcome.Error(_as_store_error(exc, "write transaction failed")) for _ in batch
            ]
        _deliver(batch, results)

    def _reconnect(self, request: _Reconnect) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        opened = outcome.capture(request.connect)
        if isinstance(opened, outcome.Value):
            self._conn = opened.value
            _deliver([request], [outcome.Value(None)])
            return
        error = StoreError(f"cannot open the database again: {opened.error}")
        error.__cause__ = opened.error
        _deliver([request], [outcome.Error(error)])

    def _run_one(self, operation: WriteOperation[Any]) -> outcome.Outcome[Any]:
        """Run one operation in a savepoint. Raises sqlite3.Error when the savepoint
        machinery itself fails, or when the operation's error ended the whole
        transaction."""
        self._operations += 1
        self._conn.execute("SAVEPOINT operation")
        result: outcome.Outcome[Any] = outcome.capture(operation, self._conn)
        if isinstance(result, outcome.Error):
            if isinstance(result.error, sqlite3.Error) and not self._conn.in_transaction:
                # SQLite rolled back the whole transaction on its own (it may, on
                # SQLITE_FULL, SQLITE_IOERR, SQLITE_BUSY, SQLITE_NOMEM): the group's
                # earlier writes are gone too, and this is why.
                raise result.error
            self._conn.execute("ROLLBACK TO operation")
            if isinstance(result.error, sqlite3.Error):
                result = outcome.Error(_as_store_error(result.error, "write failed"))
        self._conn.execute("RELEASE operation")
        return result

    def _fail_leftovers(self) -> None:
        leftovers: list[_Request[Any] | _Reconnect] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if not isinstance(item, _Stop):
                leftovers.append(item)
        stopped = [outcome.Error(StoreError("store writer has stopped")) for _ in leftovers]
        _deliver(leftovers, stopped)


def _as_store_error(exc: sqlite3.Error, what: str) -> StoreError:
    error = StoreError(f"{what}: {exc}")
    error.__cause__ = exc
    return error
