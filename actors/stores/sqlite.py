"""The SQLite store: jobs, deltas, notifications and the webhook outbox in one
WAL-mode database file.

Writes go to the single writer thread (:mod:`actors.stores.sqlite_writer`),
which commits them in groups. Reads run in trio's worker threads on a separate
read-only connection; WAL mode lets them read the last committed state while the
writer writes. A write has been committed by the time its call returns, so a
task always reads its own writes.

A running job's row keeps only the output it was created with; the rest is its
deltas, joined when the job is read, and written into the row once, by the
``update_job`` that makes the job terminal. Appending a batch therefore writes
delta rows and a job's counters, never its growing text. The output's lengths
are counters in the row, so listing jobs reads no output at all.

Datetimes are stored as ISO 8601 text in UTC with microseconds, a fixed-width
form whose text order is time order; usage, a job's tool calls and images, and
notification actions as JSON.

When the database cannot take writes (a full disk, the ``max_bytes`` cap, a
read-only file, I/O errors), writes fail with :class:`StoreError` naming SQLite's
reason, and nothing of a failed write is kept. From then until a write succeeds,
every write first proves there is room (:func:`_check_room`), so that a small
write that would still fit in a page cannot make the store look whole while the
others fail, and :meth:`SqliteStore.ping` fails. After SQLite said the file is
read-only, the next write opens both connections again: one that opened a
read-only file stays read-only after the file is made writable.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson
import trio

from actors import codec
from actors.model import (
    TERMINAL_STATUSES,
    Delta,
    Job,
    JobStatus,
    Notification,
    NotificationAction,
    NotificationType,
    Owner,
    Usage,
    WebhookEvent,
)
from actors.stores.migrations import migrate
from actors.stores.protocol import (
    JobSummary,
    OutboxSummary,
    StoreError,
    as_utc,
    check_batches,
    check_limit,
    new_deltas_in_order,
)
from actors.stores.sqlite_writer import SqliteWriter

__all__ = ["SqliteJobStore", "SqliteStore"]

T = TypeVar("T")

_Actions = tuple[NotificationAction, ...]

_NOTIFICATION_COLUMNS = (
    "id, user_id, workspace_id, thread_id, job_id, type, title, body, created_at, actions, read_at"
)
_WEBHOOK_COLUMNS = "id, type, created_at, body, next_attempt_at, attempts"
_ENQUEUE_WEBHOOK = (
    f"INSERT OR IGNORE INTO webhook_outbox ({_WEBHOOK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
)


def _sql_list(statuses: Collection[JobStatus]) -> str:
    # Inlined into SQL text: the values are our own enum's, never user input.
    return "(" + ", ".join(f"'{s.value}'" for s in sorted(statuses, key=lambda s: s.value)) + ")"


_TERMINAL = _sql_list(TERMINAL_STATUSES)
_ACTIVE = _sql_list(set(JobStatus) - TERMINAL_STATUSES)


def _job_columns(content: str, reasoning: str) -> str:
    """The columns :func:`_row_to_job` reads, with ``content`` and ``reasoning``
    standing for the output columns."""
    return (
        "jobs.id, jobs.user_id, jobs.workspace_id, jobs.thread_id, jobs.message_id, "
        f"jobs.model, jobs.status, jobs.started_at, {content}, {reasoning}, "
        "jobs.chunks_received, jobs.last_seq, jobs.completed_at, jobs.error, "
        "jobs.finish_reason, jobs.usage, jobs.generation_id, jobs.tool_calls, jobs.images, "
        "jobs.foreground"
    )


def _joined_deltas(column: str) -> str:
    """SQL for the job's deltas' ``column`` joined in seq order ('' if none).

    The order comes from the window: group_concat as a plain aggregate joins
    in an arbitrary order (before SQLite 3.44, which can say ORDER BY there).
    SQLite's text functions stop at a NUL character; group_concat and || do
    not, so a delta holding one is joined whole.
    """
    return (
        f"coalesce((SELECT group_concat(deltas.{column}, '') OVER ("
        "ORDER BY deltas.seq ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) "
        "FROM deltas WHERE deltas.job_id = jobs.id), '')"
    )


def _output(column: str) -> str:
    """SQL for a job's whole ``column`` output: the row's, then for a running job its deltas'."""
    return (
        f"CASE WHEN jobs.status IN {_TERMINAL} THEN jobs.{column} "
        f"ELSE jobs.{column} || {_joined_deltas(column)} END"
    )


_INSERT_COLUMNS = (
    "id, user_id, workspace_id, thread_id, message_id, model, status, started_at, content, "
    "reasoning, chunks_received, last_seq, completed_at, error, finish_reason, usage, "
    "generation_id, tool_calls, images, foreground, content_length, reasoning_length"
)
_SELECT_JOB = f"SELECT {_job_columns(_output('content'), _output('reasoning'))} FROM jobs"
_NO_OUTPUT = "''"
_SELECT_SUMMARY = (
    f"SELECT {_job_columns(_NO_OUTPUT, _NO_OUTPUT)}, jobs.content_length, jobs.reasoning_length "
    "FROM jobs"
)
_UPDATE_JOB = (
    "UPDATE jobs SET status = ?, error = ?, completed_at = ?, finish_reason = ?, "
    "usage = ?, generation_id = ?, model = ?, tool_calls = ?, images = ?"
)
# Reached once per job: the SET expressions see the row before the update, when
# the job still runs and its output is the row's followed by its deltas'.
_UPDATE_JOB_TO_TERMINAL = (
    f"{_UPDATE_JOB}, content = content || {_joined_deltas('content')}, "
    f"reasoning = reasoning || {_joined_deltas('reasoning')}"
)
_WHERE_RUNNING = f" WHERE id = ? AND status NOT IN {_TERMINAL}"

_MOST_ROWS_PER_STATEMENT = 512
"""The most deltas one append statement carries; also bounded by the
connection's limit on parameters."""

_CANNOT_WRITE = frozenset(
    {
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_NOTADB,
    }
)
"""SQLite's primary result codes that say the database takes no writes at all (a
full disk, a read-only file, I/O errors, a lock held elsewhere past the timeout),
unlike a write's own fault, such as a constraint it breaks."""


class SqliteStore:
    """Implements :class:`~actors.stores.protocol.Store` in a SQLite file.

    Construction opens (or creates) the database at ``path``, turns on WAL,
    applies pending schema migrations and starts the writer thread. It blocks
    on disk I/O, so from trio construct it in ``trio.to_thread.run_sync``. The
    parent directory must exist. Raises :class:`StoreError` if the file cannot
    be opened or its schema is newer than this code.

    ``max_batch`` bounds how many writes share one commit. ``max_bytes``, if set,
    caps the file's size (SQLite's ``max_page_count``, on the write connection):
    a write that needs more room fails "database or disk is full", like a full
    disk, until deleted rows make room. The cap is never below the file's size
    when it is opened, nor below what another connection made it.
    """

    def __init__(self, path: Path, *, max_batch: int = 1000, max_bytes: int | None = None) -> None:
        self.path = path
        self._max_bytes = max_bytes
        write_conn: sqlite3.Connection | None = None
        read_conn: sqlite3.Connection | None = None
        try:
            write_conn = self._open_writer()
            mode = write_conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"cannot put SQLite store at {path} in WAL mode (got {mode!r})")
            migrate(write_conn)
            read_conn = self._open_reader()
            self._page_size = int(write_conn.execute("PRAGMA page_size").fetchone()[0])
        except (sqlite3.Error, StoreError) as exc:
            for conn in (read_conn, write_conn):
                if conn is not None:
                    conn.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot open SQLite store at {path}: {exc}") from exc
        self._append_rows = _rows_per_statement(write_conn)
        self._read_conn = read_conn
        # One read connection, used by one worker thread at a time.
        self._read_lock = trio.Lock()
        self._writer = SqliteWriter(write_conn, max_batch=max_batch, name=f"sqlite-writer:{path}")
        self._closed = False
        self._close_done: trio.Event | None = None
        # The last write's failure, while the database takes no writes; None once
        # a write succeeds.
        self._write_failure: StoreError | None = None
        # SQLite said the file is read-only: open both connections again first.
        self._reopen_due = False

    def _open_writer(self) -> sqlite3.Connection:
        conn = _connect(self.path)
        if self._max_bytes is not None:
            try:
                page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
                # PRAGMA takes no parameters; the count is an int we computed.
                conn.execute(f"PRAGMA max_page_count = {max(1, self._max_bytes // page_size)}")
            except sqlite3.Error:
                conn.close()
                raise
        return conn

    def _open_reader(self) -> sqlite3.Connection:
        conn = _connect(self.path)
        try:
            conn.execute("PRAGMA query_only = ON")
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    def __repr__(self) -> str:
        return f"<SqliteStore {str(self.path)!r}{' closed' if self._closed else ''}>"

    @property
    def commit_count(self) -> int:
        """How many write transactions have been committed since opening."""
        return self._writer.commits

    @property
    def write_count(self) -> int:
        """How many write operations have been run since opening."""
        return self._writer.operations

    # -- plumbing -----------------------------------------------------------

    async def _write(
        self, operation: Callable[[sqlite3.Connection], T], *, check_room: bool = False
    ) -> T:
        """Run ``operation`` on the writer, after :func:`_check_room` if ``check_room``
        or while writes fail. Raises StoreError."""
        if self._closed:
            raise StoreError("store is closed")
        if self._reopen_due:
            await self._reopen()
        if check_room or self._write_failure is not None:
            operation = _room_checked(operation, self._page_size)
        try:
            result = await self._writer.submit(operation)
        except StoreError as error:
            code = _primary_code(error)
            if code in _CANNOT_WRITE:
                self._write_failure = error
                self._reopen_due = self._reopen_due or code == sqlite3.SQLITE_READONLY
            raise
        self._write_failure = None
        return result

    async def _reopen(self) -> None:
        """Close both connections, then open them again. Raises StoreError if that
        fails; the next write tries again.

        Both, and both closed before either opens: the connections of a process to
        one file share its ``-shm`` index, read-only if it was opened so.
        """
        async with self._read_lock:
            if not self._reopen_due or self._closed:
                return
            await trio.to_thread.run_sync(self._read_conn.close)
            try:
                await self._writer.reconnect(self._open_writer)
            finally:
                try:
                    self._read_conn = await trio.to_thread.run_sync(self._open_reader)
                except sqlite3.Error as exc:
                    # Reads fail on the closed connection until a reopen succeeds.
                    raise StoreError(f"cannot open SQLite store at {self.path}: {exc}") from exc
            self._reopen_due = False

    async def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreError("store is closed")
        async with self._read_lock:
            if self._closed:
                raise StoreError("store is closed")
            try:
                return await trio.to_thread.run_sync(query, self._read_conn)
            except sqlite3.Error as exc:
                raise StoreError(f"read failed: {exc}") from exc

    # -- jobs ---------------------------------------------------------------

    async def create_job(self, job: Job) -> None:
        """See :meth:`JobStore.create_job`."""
        row = _job_to_row(job)

        def insert(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    f"INSERT INTO jobs ({_INSERT_COLUMNS}) VALUES ({_placeholders(len(row))})",
                    row,
                )
            except sqlite3.IntegrityError as exc:
                raise StoreError(f"job {job.id!r} already exists") from exc

        await self._write(insert)

    async def get_job(self, job_id: str, owner: Owner | None = None) -> Job | None:
        """See :meth:`JobStore.get_job`."""
        where, params = " WHERE jobs.id = ?", [job_id]
        if owner is not None:
            where += " AND jobs.user_id = ? AND jobs.workspace_id = ?"
            params += [owner.user_id, owner.workspace_id]

        def select(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute(_SELECT_JOB + where, params).fetchone()
            return None if row is None else _row_to_job(row)

        return await self._read(select)

    async def list_jobs(self, owner: Owner, status: JobStatus | None = None) -> list[Job]:
        """See :meth:`JobStore.list_jobs`."""
        where, params = _owned(owner, status)

        def select(conn: sqlite3.Connection) -> list[Job]:
            return [_row_to_job(row) for row in conn.execute(_SELECT_JOB + where, params)]

        return await self._read(select)

    async def list_job_summaries(
        self, owner: Owner, status: JobStatus | None = None
    ) -> list[JobSummary]:
        """See :meth:`JobStore.list_job_summaries`."""
        where, params = _owned(owner, status)

        def select(conn: sqlite3.Connection) -> list[JobSummary]:
            return [
                JobSummary(_row_to_job(row[:-2]), row[-2], row[-1])
                for row in conn.execute(_SELECT_SUMMARY + where, params)
            ]

        return await self._read(select)

    async def append_many(self, batches: Mapping[str, Sequence[Delta]]) -> None:
        """See :meth:`JobStore.append_many`.

        One writer submission, however many jobs: a few statements with many
        rows each (see :func:`_append_statements`), not a statement per delta.
        """
        check_batches(batches)
        # Repeats go here; what the job already has is left out by the SQL.
        deltas = [d for batch in batches.values() for d in new_deltas_in_order(batch, 0)]
        if not deltas:
            if self._closed:
                raise StoreError("store is closed")
            await trio.lowlevel.checkpoint()
            return
        statements = _append_statements(deltas, self._append_rows)

        def append(conn: sqlite3.Connection) -> None:
            for sql, params in statements:
                conn.execute(sql, params)

        await self._write(append)

    async def append_deltas(self, job_id: str, deltas: Sequence[Delta]) -> None:
        """See :meth:`JobStore.append_deltas`."""
        await self.append_many({job_id: deltas})

    async def update_job(self, job: Job) -> bool:
        """See :meth:`JobStore.update_job`."""
        sql = (_UPDATE_JOB_TO_TERMINAL if job.status.is_terminal else _UPDATE_JOB) + _WHERE_RUNNING
        params = (
            job.status.value,
            job.error,
            _optional_time_to_text(job.completed_at, "completed_at"),
            job.finish_reason,
            _usage_to_text(job.usage),
            job.generation_id,
            job.model,
            _json_list_to_text(job.tool_calls),
            _json_list_to_text(job.images),
            job.id,
        )

        def update(conn: sqlite3.Connection) -> bool:
            return conn.execute(sql, params).rowcount == 1

        return await self._write(update)

    async def get_deltas(
        self, job_id: str, after_seq: int = 0, limit: int | None = None
    ) -> list[Delta]:
        """See :meth:`JobStore.get_deltas`."""
        check_limit(limit)

        def select(conn: sqlite3.Connection) -> list[Delta]:
            # LIMIT -1 is no limit.
            rows = conn.execute(
                "SELECT seq, content, reasoning FROM deltas WHERE job_id = ? AND seq > ? "
                "ORDER BY seq LIMIT ?",
                (job_id, after_seq, -1 if limit is None else limit),
            )
            return [Delta(job_id, seq, content, reasoning) for seq, content, reasoning in rows]

        return await self._read(select)

    async def list_jobs_by_status(self, statuses: Collection[JobStatus]) -> list[Job]:
        """See :meth:`JobStore.list_jobs_by_status`."""
        values = sorted({s.value for s in statuses})
        sql = (
            f"{_SELECT_JOB} WHERE jobs.status IN ({_placeholders(len(values))}) "
            "ORDER BY jobs.started_at, jobs.id"
        )

        def select(conn: sqlite3.Connection) -> list[Job]:
            return [_row_to_job(row) for row in conn.execute(sql, values)]

        return await self._read(select)

    async def delete_finished_before(self, cutoff: datetime) -> list[str]:
        """See :meth:`JobStore.delete_finished_before`."""
        cutoff_text = _time_to_text(cutoff, "cutoff")

        def delete(conn: sqlite3.Connection) -> list[str]:
            # Deltas go with their job through ON DELETE CASCADE.
            rows = conn.execute(
                f"DELETE FROM jobs WHERE status IN {_TERMINAL} "
                "AND completed_at IS NOT NULL AND completed_at < ? RETURNING id, completed_at",
                (cutoff_text,),
            ).fetchall()
            return [job_id for job_id, _ in sorted(rows, key=lambda r: (r[1], r[0]))]

        return await self._write(delete)

    async def count_active(self) -> int:
        """See :meth:`JobStore.count_active`."""

        def count(conn: sqlite3.Connection) -> int:
            row = conn.execute(f"SELECT count(*) FROM jobs WHERE status IN {_ACTIVE}").fetchone()
            return int(row[0])

        return await self._read(count)

    # -- notifications ------------------------------------------------------

    async def add_notification(
        self, n: Notification, webhooks: Sequence[WebhookEvent] = ()
    ) -> bool:
        """See :meth:`NotificationStore.add_notification`."""
        row = _notification_to_row(n)
        event_rows = [_webhook_to_row(event) for event in webhooks]

        def insert(conn: sqlite3.Connection) -> bool:
            # Checked first, so re-adding the very same notification (same id,
            # same job) is the quiet False the notifier relies on after a restart.
            taken = conn.execute(
                "SELECT 1 FROM notifications WHERE job_id = ?", (n.job_id,)
            ).fetchone()
            if taken is not None:
                return False
            try:
                conn.execute(
                    f"INSERT INTO notifications ({_NOTIFICATION_COLUMNS}) "
                    f"VALUES ({_placeholders(len(row))})",
                    row,
                )
            except sqlite3.IntegrityError as exc:
                raise StoreError(f"notification {n.id!r} already exists") from exc
            conn.executemany(_ENQUEUE_WEBHOOK, event_rows)
            return True

        return await self._write(insert)

    async def list_notifications(
        self, owner: Owner, *, unread_only: bool = False, limit: int = 50
    ) -> list[Notification]:
        """See :meth:`NotificationStore.list_notifications`."""
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        sql = (
            f"SELECT {_NOTIFICATION_COLUMNS} FROM notifications "
            "WHERE user_id = ? AND workspace_id = ?"
        )
        if unread_only:
            sql += " AND read_at IS NULL"
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        params = (owner.user_id, owner.workspace_id, limit)

        def select(conn: sqlite3.Connection) -> list[Notification]:
            return [_row_to_notification(row) for row in conn.execute(sql, params)]

        return await self._read(select)

    async def get_notification(self, owner: Owner, notification_id: str) -> Notification | None:
        """See :meth:`NotificationStore.get_notification`."""

        def select(conn: sqlite3.Connection) -> Notification | None:
            row = conn.execute(
                f"SELECT {_NOTIFICATION_COLUMNS} FROM notifications "
                "WHERE id = ? AND user_id = ? AND workspace_id = ?",
                (notification_id, owner.user_id, owner.workspace_id),
            ).fetchone()
            return None if row is None else _row_to_notification(row)

        return await self._read(select)

    async def mark_read(self, owner: Owner, notification_id: str, at: datetime) -> bool:
        """See :meth:`NotificationStore.mark_read`."""
        at_text = _time_to_text(at, "at")

        def update(conn: sqlite3.Connection) -> bool:
            # COALESCE keeps the first read_at, so marking twice is harmless.
            cursor = conn.execute(
                "UPDATE notifications SET read_at = COALESCE(read_at, ?) "
                "WHERE id = ? AND user_id = ? AND workspace_id = ?",
                (at_text, notification_id, owner.user_id, owner.workspace_id),
            )
            return cursor.rowcount == 1

        return await self._write(update)

    async def mark_all_read(self, owner: Owner, at: datetime) -> int:
        """See :meth:`NotificationStore.mark_all_read`."""
        at_text = _time_to_text(at, "at")

        def update(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "UPDATE notifications SET read_at = ? "
                "WHERE user_id = ? AND workspace_id = ? AND read_at IS NULL",
                (at_text, owner.user_id, owner.workspace_id),
            )
            return cursor.rowcount

        return await self._write(update)

    async def delete_notification(self, owner: Owner, notification_id: str) -> bool:
        """See :meth:`NotificationStore.delete_notification`."""

        def delete(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "DELETE FROM notifications WHERE id = ? AND user_id = ? AND workspace_id = ?",
                (notification_id, owner.user_id, owner.workspace_id),
            )
            return cursor.rowcount == 1

        return await self._write(delete)

    async def set_thread_muted(self, owner: Owner, thread_id: str, muted: bool) -> None:
        """See :meth:`NotificationStore.set_thread_muted`."""
        key = (owner.user_id, owner.workspace_id, thread_id)
        sql = (
            "INSERT OR IGNORE INTO muted_threads (user_id, workspace_id, thread_id) "
            "VALUES (?, ?, ?)"
            if muted
            else "DELETE FROM muted_threads "
            "WHERE user_id = ? AND workspace_id = ? AND thread_id = ?"
        )

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(sql, key)

        await self._write(write)

    async def is_thread_muted(self, owner: Owner, thread_id: str) -> bool:
        """See :meth:`NotificationStore.is_thread_muted`."""

        def select(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT 1 FROM muted_threads WHERE user_id = ? AND workspace_id = ? "
                "AND thread_id = ?",
                (owner.user_id, owner.workspace_id, thread_id),
            ).fetchone()
            return row is not None

        return await self._read(select)

    # -- webhook outbox -----------------------------------------------------

    async def enqueue_webhooks(self, events: Sequence[WebhookEvent]) -> None:
        """See :meth:`WebhookOutbox.enqueue_webhooks`."""
        rows = [_webhook_to_row(event) for event in events]

        def insert(conn: sqlite3.Connection) -> None:
            conn.executemany(_ENQUEUE_WEBHOOK, rows)

        await self._write(insert)

    async def take_due_webhooks(
        self, now: datetime, limit: int, lease_until: datetime
    ) -> list[WebhookEvent]:
        """See :meth:`WebhookOutbox.take_due_webhooks`."""
        now_text = _time_to_text(now, "now")
        lease_text = _time_to_text(lease_until, "lease_until")
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")

        def take(conn: sqlite3.Connection) -> list[WebhookEvent]:
            taken = [
                _row_to_webhook(row)
                for row in conn.execute(
                    f"SELECT {_WEBHOOK_COLUMNS} FROM webhook_outbox WHERE next_attempt_at <= ? "
                    "ORDER BY next_attempt_at, created_at, id LIMIT ?",
                    (now_text, limit),
                )
            ]
            conn.executemany(
                "UPDATE webhook_outbox SET next_attempt_at = ? WHERE id = ?",
                [(lease_text, event.id) for event in taken],
            )
            return taken

        return await self._write(take)

    async def reschedule_webhook(
        self, event_id: str, attempts: int, next_attempt_at: datetime
    ) -> bool:
        """See :meth:`WebhookOutbox.reschedule_webhook`."""
        params = (attempts, _time_to_text(next_attempt_at, "next_attempt_at"), event_id)

        def update(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE webhook_outbox SET attempts = ?, next_attempt_at = ? WHERE id = ?", params
            )
            return cursor.rowcount == 1

        return await self._write(update)

    async def remove_webhook(self, event_id: str) -> bool:
        """See :meth:`WebhookOutbox.remove_webhook`."""

        def delete(conn: sqlite3.Connection) -> bool:
            return (
                conn.execute("DELETE FROM webhook_outbox WHERE id = ?", (event_id,)).rowcount == 1
            )

        return await self._write(delete)

    async def delete_webhooks_created_before(self, cutoff: datetime) -> list[str]:
        """See :meth:`WebhookOutbox.delete_webhooks_created_before`."""
        cutoff_text = _time_to_text(cutoff, "cutoff")

        def delete(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "DELETE FROM webhook_outbox WHERE created_at < ? RETURNING id, created_at",
                (cutoff_text,),
            ).fetchall()
            return [event_id for event_id, _ in sorted(rows, key=lambda r: (r[1], r[0]))]

        return await self._write(delete)

    async def webhook_outbox_summary(self) -> OutboxSummary:
        """See :meth:`WebhookOutbox.webhook_outbox_summary`."""

        def select(conn: sqlite3.Connection) -> OutboxSummary:
            depth, next_attempt_at, oldest = conn.execute(
                "SELECT count(*), min(next_attempt_at), min(created_at) FROM webhook_outbox"
            ).fetchone()
            return OutboxSummary(depth, _text_to_time(next_attempt_at), _text_to_time(oldest))

        return await self._read(select)

    async def disable_webhook_endpoint(self, url: str, at: datetime) -> None:
        """See :meth:`WebhookOutbox.disable_webhook_endpoint`."""
        params = (url, _time_to_text(at, "at"))

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR IGNORE INTO webhook_endpoints (url, disabled_at) VALUES (?, ?)", params
            )

        await self._write(insert)

    async def webhook_endpoint_disabled_at(self, url: str) -> datetime | None:
        """See :meth:`WebhookOutbox.webhook_endpoint_disabled_at`."""

        def select(conn: sqlite3.Connection) -> datetime | None:
            row = conn.execute(
                "SELECT disabled_at FROM webhook_endpoints WHERE url = ?", (url,)
            ).fetchone()
            return None if row is None else _text_to_time(row[0])

        return await self._read(select)

    # -- lifecycle ----------------------------------------------------------

    async def ping(self) -> None:
        """Return if the writer thread is running, the database answers a query and
        takes a write that needs a new page (:func:`_check_room`, committed, which
        leaves no row); raise :class:`StoreError` otherwise (also once closed),
        naming SQLite's reason."""
        if not self._closed and not self._writer.is_running:
            raise StoreError(f"SQLite store at {self.path}: writer thread has stopped")

        def select_one(conn: sqlite3.Connection) -> None:
            conn.execute("SELECT 1").fetchone()

        await self._read(select_one)
        try:
            await self._write(_nothing, check_room=True)
        except StoreError as error:
            raise StoreError(f"SQLite store at {self.path} takes no writes: {error}") from error

    async def aclose(self) -> None:
        """Commit every write already submitted, stop the writer thread and
        close both connections. Idempotent; a concurrent second call waits for
        the first to finish. Blocks until the writer has drained; shielded from
        cancellation, since a half-done close would leave the thread running."""
        if self._close_done is not None:
            await self._close_done.wait()
            return
        self._close_done = trio.Event()
        self._closed = True
        with trio.CancelScope(shield=True):
            try:
                await self._writer.aclose()
                # Wait out any read in flight before closing its connection.
                async with self._read_lock:
                    self._read_conn.close()
            finally:
                self._close_done.set()


SqliteJobStore = SqliteStore
"""The job side of :class:`SqliteStore`; the same class serves notifications."""


def _connect(path: Path) -> sqlite3.Connection:
    # Autocommit mode: transactions are begun and ended explicitly, never by the
    # sqlite3 module behind our back. check_same_thread is off because the
    # connection is opened on one thread and used on another.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _check_room(conn: sqlite3.Connection, page_size: int) -> None:
    """Write a page-sized row to ``write_probe`` and delete it again, in the open
    transaction: it needs a free page or room to grow, and a writable file.

    Raises :class:`sqlite3.Error` (``SQLITE_FULL``, ``SQLITE_READONLY``, ...) when the
    database cannot take it. Committed, it leaves a free page behind at most.
    """
    conn.execute("INSERT INTO write_probe (filler) VALUES (zeroblob(?))", (page_size,))
    conn.execute("DELETE FROM write_probe")


def _room_checked(
    operation: Callable[[sqlite3.Connection], T], page_size: int
) -> Callable[[sqlite3.Connection], T]:
    """``operation``, after :func:`_check_room`."""

    def checked(conn: sqlite3.Connection) -> T:
        _check_room(conn, page_size)
        return operation(conn)

    return checked


def _nothing(conn: sqlite3.Connection) -> None:
    """A write operation that writes nothing (what :func:`_check_room` adds aside)."""


def _primary_code(error: StoreError) -> int | None:
    """SQLite's primary result code behind ``error``, or None if SQLite raised none."""
    cause = error.__cause__
    code = getattr(cause, "sqlite_errorcode", None) if isinstance(cause, sqlite3.Error) else None
    return None if code is None else int(code) & 0xFF


def _placeholders(count: int) -> str:
    return ", ".join("?" * count)


def _owned(owner: Owner, status: JobStatus | None) -> tuple[str, list[Any]]:
    """The WHERE and ORDER BY of a listing of ``owner``'s jobs, and its parameters."""
    where = " WHERE jobs.user_id = ? AND jobs.workspace_id = ?"
    params: list[Any] = [owner.user_id, owner.workspace_id]
    if status is not None:
        where += " AND jobs.status = ?"
        params.append(status.value)
    return where + " ORDER BY jobs.started_at DESC, jobs.id DESC", params


def _rows_per_statement(conn: sqlite3.Connection) -> int:
    """The most deltas an append statement may carry on ``conn``: a power of
    two, at most :data:`_MOST_ROWS_PER_STATEMENT`, whose four parameters a row
    fit the connection's limit."""
    limit = min(_MOST_ROWS_PER_STATEMENT, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 4)
    return 1 << (max(1, limit).bit_length() - 1)


@functools.cache
def _append_sql(rows: int) -> tuple[str, str]:
    """The INSERT of deltas and the UPDATE of their jobs for ``rows`` rows of
    ``(job_id, seq, x, y)``: x and y are the content and reasoning in the
    INSERT's rows, their lengths in the UPDATE's.

    Both take a row only if its job runs and its seq is above the job's
    ``last_seq`` (rows with a NULL job_id match no job), and see the job as it
    was before both, so the UPDATE counts exactly what the INSERT took. A
    job's rows must be in seq order; a job whose rows are split across
    statements is then right too, each pair seeing the last pair's last_seq.
    """
    values = ", ".join(["(?, ?, ?, ?)"] * rows)
    # CROSS JOIN keeps the VALUES as the outer loop: one primary-key lookup of
    # the job per row.
    taken = (
        f"FROM (VALUES {values}) AS v CROSS JOIN jobs AS job ON job.id = v.column1 "
        f"WHERE job.status NOT IN {_TERMINAL} AND v.column2 > job.last_seq"
    )
    insert = (
        "INSERT INTO deltas (job_id, seq, content, reasoning) "
        f"SELECT v.column1, v.column2, v.column3, v.column4 {taken}"
    )
    if rows == 1:
        # The same for one row, without the join and the grouping, which cost
        # several times the rest: one delta of one job is the usual batch of
        # a stream that stores its own.
        update = (
            "UPDATE jobs SET chunks_received = chunks_received + 1, last_seq = ?2, "
            "content_length = content_length + ?3, reasoning_length = reasoning_length + ?4 "
            f"WHERE id = ?1 AND status NOT IN {_TERMINAL} AND last_seq < ?2"
        )
        return insert, update
    update = (
        "UPDATE jobs SET chunks_received = jobs.chunks_received + t.taken, "
        "last_seq = t.top_seq, content_length = jobs.content_length + t.content_grown, "
        "reasoning_length = jobs.reasoning_length + t.reasoning_grown "
        "FROM (SELECT v.column1 AS job_id, count(*) AS taken, max(v.column2) AS top_seq, "
        "sum(v.column3) AS content_grown, sum(v.column4) AS reasoning_grown "
        f"{taken} GROUP BY v.column1) AS t "
        "WHERE jobs.id = t.job_id"
    )
    return insert, update


_PADDING = (None, 0, "", "")


def _append_statements(deltas: Sequence[Delta], most_rows: int) -> list[tuple[str, list[Any]]]:
    """The statements that append ``deltas`` (each job's in seq order), with
    their parameters: an INSERT and an UPDATE per ``most_rows`` deltas.

    Why so few statements: the sqlite3 module lets go of the GIL for every
    step of a statement, once per row under ``executemany``, and when the trio
    thread is busy each time costs the writer a wait of up to the interpreter's
    switch interval (5 ms) to get it back. A statement of many rows is one
    step. Each chunk is padded up to a power of two with rows that match no
    job, so a handful of statement texts, each compiled once and cached by the
    connection, serve every batch size.
    """
    statements: list[tuple[str, list[Any]]] = []
    for start in range(0, len(deltas), most_rows):
        chunk = deltas[start : start + most_rows]
        rows = 1 << (len(chunk) - 1).bit_length()
        padding = rows - len(chunk)
        insert, update = _append_sql(rows)
        inserted: list[Any] = []
        counted: list[Any] = []
        for d in chunk:
            inserted += (d.job_id, d.seq, d.content, d.reasoning)
            counted += (d.job_id, d.seq, len(d.content), len(d.reasoning))
        inserted += _PADDING * padding
        counted += _PADDING * padding
        statements.append((insert, inserted))
        statements.append((update, counted))
    return statements


def _time_to_text(value: datetime, what: str) -> str:
    return as_utc(value, what).isoformat(timespec="microseconds")


def _optional_time_to_text(value: datetime | None, what: str) -> str | None:
    return None if value is None else _time_to_text(value, what)


def _text_to_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _usage_to_text(usage: Usage | None) -> str | None:
    return None if usage is None else codec.dumps(usage).decode()


def _json_list_to_text(items: list[dict[str, Any]]) -> str:
    return orjson.dumps(items).decode()


def _job_to_row(job: Job) -> tuple[Any, ...]:
    return (
        job.id,
        job.user_id,
        job.workspace_id,
        job.thread_id,
        job.message_id,
        job.model,
        job.status.value,
        _time_to_text(job.started_at, "started_at"),
        job.content,
        job.reasoning,
        job.chunks_received,
        job.last_seq,
        _optional_time_to_text(job.completed_at, "completed_at"),
        job.error,
        job.finish_reason,
        _usage_to_text(job.usage),
        job.generation_id,
        _json_list_to_text(job.tool_calls),
        _json_list_to_text(job.images),
        int(job.foreground),
        len(job.content),
        len(job.reasoning),
    )


def _row_to_job(row: Sequence[Any]) -> Job:
    (
        job_id,
        user_id,
        workspace_id,
        thread_id,
        message_id,
        model,
        status,
        started_at,
        content,
        reasoning,
        chunks_received,
        last_seq,
        completed_at,
        error,
        finish_reason,
        usage,
        generation_id,
        tool_calls,
        images,
        foreground,
    ) = row
    return Job(
        id=job_id,
        user_id=user_id,
        workspace_id=workspace_id,
        thread_id=thread_id,
        message_id=message_id,
        model=model,
        status=JobStatus(status),
        started_at=datetime.fromisoformat(started_at),
        content=content,
        reasoning=reasoning,
        chunks_received=chunks_received,
        last_seq=last_seq,
        completed_at=_text_to_time(completed_at),
        error=error,
        finish_reason=finish_reason,
        usage=None if usage is None else codec.loads(usage, Usage),
        generation_id=generation_id,
        tool_calls=orjson.loads(tool_calls),
        images=orjson.loads(images),
        foreground=bool(foreground),
    )


def _notification_to_row(n: Notification) -> tuple[Any, ...]:
    return (
        n.id,
        n.user_id,
        n.workspace_id,
        n.thread_id,
        n.job_id,
        n.type.value,
        n.title,
        n.body,
        _time_to_text(n.created_at, "created_at"),
        codec.dumps(n.actions, unstructure_as=_Actions).decode(),
        _optional_time_to_text(n.read_at, "read_at"),
    )


def _row_to_notification(row: Sequence[Any]) -> Notification:
    (
        notification_id,
        user_id,
        workspace_id,
        thread_id,
        job_id,
        type_,
        title,
        body,
        created_at,
        actions,
        read_at,
    ) = row
    return Notification(
        id=notification_id,
        user_id=user_id,
        workspace_id=workspace_id,
        thread_id=thread_id,
        job_id=job_id,
        type=NotificationType(type_),
        title=title,
        body=body,
        created_at=datetime.fromisoformat(created_at),
        actions=codec.loads(actions, _Actions),
        read_at=_text_to_time(read_at),
    )


def _webhook_to_row(event: WebhookEvent) -> tuple[Any, ...]:
    return (
        event.id,
        event.type,
        _time_to_text(event.created_at, "created_at"),
        event.body,
        _time_to_text(event.next_attempt_at, "next_attempt_at"),
        event.attempts,
    )


def _row_to_webhook(row: Sequence[Any]) -> WebhookEvent:
    event_id, type_, created_at, body, next_attempt_at, attempts = row
    return WebhookEvent(
        id=event_id,
        type=type_,
        created_at=datetime.fromisoformat(created_at),
        body=body,
        next_attempt_at=datetime.fromisoformat(next_attempt_at),
        attempts=attempts,
    )
