"""What a store promises: the job store, the notification store, the webhook
outbox, and their error.

The job registry, the notifier and the webhook sender are the only callers.
The registry enforces the concurrency cap and terminal-state finality in memory;
a store enforces finality again on its own (defence in depth), and every method
is safe to call from several trio tasks at once.

Datetimes handed to a store must be timezone-aware (a naive one raises
ValueError); a store hands back aware UTC datetimes for the same instants. Other
caller mistakes raise ValueError too; :class:`StoreError` is for what the store
itself cannot do.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

import attrs

from actors.model import Delta, Job, JobStatus, Notification, Owner, WebhookEvent

__all__ = [
    "Admission",
    "ClusterStore",
    "JobStore",
    "JobSummary",
    "Limits",
    "NotificationStore",
    "OutboxSummary",
    "Store",
    "StoreError",
    "WebhookOutbox",
    "as_utc",
    "check_batches",
    "check_delta_job",
    "check_limit",
    "new_deltas_in_order",
]


class StoreError(Exception):
    """A store could not do what was asked: a duplicate id, a closed store, an
    unreachable or unusable backend, a database newer than this code."""


@attrs.frozen
class JobSummary:
    """A job without its output, and how long that output is.

    ``job.content`` and ``job.reasoning`` are empty; ``content_length`` and
    ``reasoning_length`` are the lengths (in code points, as ``len`` counts)
    of the content and reasoning :meth:`JobStore.get_job` would return.
    """

    job: Job
    content_length: int
    reasoning_length: int


class JobStore(Protocol):
    """Jobs and their deltas.

    A job's ``content`` and ``reasoning`` are what it was created with followed
    by its stored deltas' in seq order. A store may keep a running job's output
    only as deltas and join them when the job is read, and write the joined
    output into the job once, when :meth:`update_job` makes it terminal.
    """

    async def create_job(self, job: Job) -> None:
        """Insert ``job``, every field of it. Raises :class:`StoreError` if a job
        with its id exists."""
        ...

    async def get_job(self, job_id: str, owner: Owner | None = None) -> Job | None:
        """Return the job, or None if there is none with that id. With ``owner``, also
        None when the job is another owner's, found without reading its output, so
        that a foreign id costs what a missing one does."""
        ...

    async def list_jobs(self, owner: Owner, status: JobStatus | None = None) -> list[Job]:
        """Return ``owner``'s jobs (both user and workspace must match), newest
        ``started_at`` first, optionally only those in ``status``."""
        ...

    async def list_job_summaries(
        self, owner: Owner, status: JobStatus | None = None
    ) -> list[JobSummary]:
        """Return :meth:`list_jobs` without the output: the same jobs in the
        same order, each with empty content and reasoning and their lengths.
        Reads no job's output, so its cost does not grow with the answers'."""
        ...

    async def append_many(self, batches: Mapping[str, Sequence[Delta]]) -> None:
        """Atomically store the deltas of several jobs, ``batches[job_id]`` for
        each ``job_id``, and grow each job by its own.

        Per job: in ``seq`` order, each delta's content and reasoning are
        appended to the job's; ``chunks_received`` grows by the number of deltas
        taken and ``last_seq`` becomes the largest seq taken. Deltas with
        ``seq`` at or below the job's ``last_seq`` (or repeated within its
        batch) are skipped, so re-appending after a crash is harmless. Nothing
        happens to a job that is terminal or missing; the other jobs still grow.

        All jobs' deltas are stored in one write (one transaction, where the
        backend has them), so a crash keeps all of them or none. Raises
        ValueError, changing nothing, if a delta's ``job_id`` is not the key it
        is filed under. If the call is cancelled, the write may still be
        committed, whole; its result is dropped.
        """
        ...

    async def append_deltas(self, job_id: str, deltas: Sequence[Delta]) -> None:
        """Store ``deltas`` of one job: ``append_many({job_id: deltas})``, with
        the same rules, errors and cancellation."""
        ...

    async def update_job(self, job: Job) -> bool:
        """Write ``job``'s status, error, completed_at, finish_reason, usage,
        generation_id, model, tool_calls and images over the stored job with
        its id.

        content, reasoning, chunks_received and last_seq are left alone: they
        only grow through :meth:`append_many`; foreground is fixed at creation.
        Making the job terminal fixes its output as it is then (in the same
        write, so a reader sees the status and the whole output together);
        later deltas are ignored. Returns False, changing nothing, when the
        stored job is terminal or missing; True otherwise. If cancelled, the
        write may still be committed; its result is dropped.
        """
        ...

    async def get_deltas(
        self, job_id: str, after_seq: int = 0, limit: int | None = None
    ) -> list[Delta]:
        """Return the job's stored deltas with ``seq > after_seq``, ascending: the first
        ``limit`` of them when it is given, so that a long job is read in pages. Raises
        ValueError for a limit below 1."""
        ...

    async def list_jobs_by_status(self, statuses: Collection[JobStatus]) -> list[Job]:
        """Return every job (any owner) in one of ``statuses``, oldest
        ``started_at`` first. Used for recovery at start."""
        ...

    async def delete_finished_before(self, cutoff: datetime) -> list[str]:
        """Delete terminal jobs whose ``completed_at`` is before ``cutoff``,
        with their deltas, and return their ids. A terminal job without a
        ``completed_at`` is kept."""
        ...

    async def count_active(self) -> int:
        """Return the number of jobs that are queued or streaming."""
        ...

    async def ping(self) -> None:
        """Return if the backend answers; raise :class:`StoreError` if not."""
        ...

    async def aclose(self) -> None:
        """Flush pending writes and release resources. Idempotent; afterwards
        every other method raises :class:`StoreError`."""
        ...


class NotificationStore(Protocol):
    """Notifications and muted threads, always scoped by owner."""

    async def add_notification(
        self, n: Notification, webhooks: Sequence[WebhookEvent] = ()
    ) -> bool:
        """Store ``n`` and queue ``webhooks`` in the outbox (as
        :meth:`WebhookOutbox.enqueue_webhooks` does), in one write, and return
        True; return False, storing and queueing nothing, if a notification for
        the same ``job_id`` exists (one notification per job, across restarts).
        Raises :class:`StoreError` if its id exists. A crash keeps both the
        notification and its events or neither. If cancelled, the write may
        still be committed; its result is dropped."""
        ...

    async def list_notifications(
        self, owner: Owner, *, unread_only: bool = False, limit: int = 50
    ) -> list[Notification]:
        """Return at most ``limit`` of ``owner``'s notifications, newest
        ``created_at`` first. Raises ValueError for a negative limit."""
        ...

    async def get_notification(self, owner: Owner, notification_id: str) -> Notification | None:
        """Return the notification if it exists and is ``owner``'s, else None."""
        ...

    async def mark_read(self, owner: Owner, notification_id: str, at: datetime) -> bool:
        """Set ``read_at`` to ``at`` and return True. A notification already read
        keeps its ``read_at`` and still gives True. Returns False if it is
        missing or not ``owner``'s."""
        ...

    async def mark_all_read(self, owner: Owner, at: datetime) -> int:
        """Mark every unread notification of ``owner`` read at ``at``; return
        how many were marked."""
        ...

    async def delete_notification(self, owner: Owner, notification_id: str) -> bool:
        """Delete the notification; False if it is missing or not ``owner``'s."""
        ...

    async def set_thread_muted(self, owner: Owner, thread_id: str, muted: bool) -> None:
        """Mute or unmute ``thread_id`` for ``owner``. Idempotent."""
        ...

    async def is_thread_muted(self, owner: Owner, thread_id: str) -> bool:
        """Return whether ``owner`` has muted ``thread_id``."""
        ...

    async def ping(self) -> None:
        """Return if the backend answers; raise :class:`StoreError` if not."""
        ...

    async def aclose(self) -> None:
        """Flush pending writes and release resources. Idempotent."""
        ...


@attrs.frozen
class OutboxSummary:
    """The outbox at a glance: how many events wait, the earliest
    ``next_attempt_at`` and the earliest ``created_at`` among them (both None
    when it is empty)."""

    depth: int
    next_attempt_at: datetime | None
    oldest_created_at: datetime | None


class WebhookOutbox(Protocol):
    """Webhook events waiting to be delivered, and the endpoints that asked for
    no more (``410 Gone``).

    An event stays queued until :meth:`remove_webhook` or
    :meth:`delete_webhooks_created_before` takes it out; a persistent backend
    keeps the queue and the disabled endpoints across restarts.
    """

    async def enqueue_webhooks(self, events: Sequence[WebhookEvent]) -> None:
        """Queue ``events`` in one write. An event whose id is queued already is
        skipped, so repeating an enqueue is harmless. If cancelled, the write may
        still be committed; its result is dropped."""
        ...

    async def take_due_webhooks(
        self, now: datetime, limit: int, lease_until: datetime
    ) -> list[WebhookEvent]:
        """Return at most ``limit`` queued events whose ``next_attempt_at`` is at
        or before ``now``, earliest ``next_attempt_at`` first (then oldest
        ``created_at``, then id), as they were; and in the same write set their
        ``next_attempt_at`` to ``lease_until``.

        The lease keeps an event being delivered from being taken again, and
        makes it due again at ``lease_until`` if its delivery never settles (a
        crash). Raises ValueError for a negative limit. If cancelled, the write
        may still be committed; its result is dropped.
        """
        ...

    async def reschedule_webhook(
        self, event_id: str, attempts: int, next_attempt_at: datetime
    ) -> bool:
        """Record a failed attempt: set the queued event's ``attempts`` and
        ``next_attempt_at``. Returns False, changing nothing, if it is not queued."""
        ...

    async def remove_webhook(self, event_id: str) -> bool:
        """Take the event out of the outbox (delivered or given up); False if it
        was not queued."""
        ...

    async def delete_webhooks_created_before(self, cutoff: datetime) -> list[str]:
        """Take every event created before ``cutoff`` out of the outbox and
        return their ids, oldest first."""
        ...

    async def webhook_outbox_summary(self) -> OutboxSummary:
        """Return the :class:`OutboxSummary` of the queue as it is now."""
        ...

    async def disable_webhook_endpoint(self, url: str, at: datetime) -> None:
        """Record that ``url`` answered ``410 Gone`` at ``at``. Idempotent: an
        endpoint disabled already keeps its first time."""
        ...

    async def webhook_endpoint_disabled_at(self, url: str) -> datetime | None:
        """Return when ``url`` was disabled, or None if it never was."""
        ...


class Store(JobStore, NotificationStore, WebhookOutbox, Protocol):
    """One backend serving jobs, notifications and webhooks; what the factory builds."""


@attrs.frozen
class Limits:
    """The caps a new job is admitted under (see :meth:`ClusterStore.admit_job`)."""

    max_concurrent_jobs: int
    max_jobs_per_user: int
    max_foreground_streams: int


class Admission(enum.Enum):
    """What :meth:`ClusterStore.admit_job` decided."""

    ADMITTED = "admitted"
    GLOBAL_CAP = "global_cap"
    USER_CAP = "user_cap"
    FOREGROUND_CAP = "foreground_cap"


@runtime_checkable
class ClusterStore(Store, Protocol):
    """A store several processes (nodes) share, with what they need to act as one.

    On such a store a job is *running* from :meth:`admit_job` until
    :meth:`~JobStore.update_job` makes it terminal: the first terminal update wins
    across all nodes (it returns True once), takes the job out of the running set,
    wakes its live readers (:meth:`read_live` reports it ended), and schedules the
    job's deletion ``retention`` seconds after its ``completed_at`` (the backend
    expires it; :meth:`~JobStore.delete_finished_before` still works). The node that
    admitted a job holds a lease on it, renewed while it streams; a job whose lease
    ran out lost its node (:meth:`expired_jobs`).
    """

    async def admit_job(self, job: Job, limits: Limits, node_id: str, lease: float) -> Admission:
        """Create ``job`` (as :meth:`~JobStore.create_job`) unless that would pass a cap,
        atomically across every node, and give ``node_id`` its lease for ``lease``
        seconds.

        A foreground job (``job.foreground``) counts against
        ``limits.max_foreground_streams`` only; a background one against
        ``max_concurrent_jobs`` and, per ``job.user_id`` (across workspaces),
        ``max_jobs_per_user``. Returns the refusal, creating nothing, or ADMITTED.
        Raises :class:`StoreError` if a job with its id exists or the backend fails.
        If cancelled, the job may still be admitted.
        """
        ...

    async def renew_leases(self, node_id: str, job_ids: Collection[str], lease: float) -> set[str]:
        """Extend for ``lease`` seconds ``node_id``'s leases on ``job_ids``, in one round
        trip; return the ids whose lease it no longer holds (the job is no longer running
        under ``node_id``'s lease: another node ended it), renewing nothing for those.

        A lease that ran out on a job still running is renewed all the same: after an
        outage of the store every lease may have run out, and the nodes that are alive
        renew theirs before the others end the jobs of :meth:`expired_jobs`."""
        ...

    async def expired_jobs(self) -> list[str]:
        """The running jobs whose node's lease has run out, oldest first."""
        ...

    async def mark_watched(self, job_id: str, duration: float) -> None:
        """Record that someone (a poll, a follower on any node) watches the job for
        the next ``duration`` seconds; a later mark extends it."""
        ...

    async def is_watched(self, job_id: str) -> bool:
        """Whether a :meth:`mark_watched` of the job is still within its duration."""
        ...

    async def read_live(
        self, job_id: str, after_seq: int, timeout: float, limit: int = 256
    ) -> tuple[list[Delta], bool]:
        """The job's stored deltas after ``after_seq`` (at most ``limit``, ascending),
        waiting up to ``timeout`` seconds for one if there is none yet; and whether the
        job has ended (every delta it will ever have is then at or before the last one
        returned, or was returned before). Returns ``([], False)`` on timeout. A
        missing job counts as ended. Cancellation loses nothing."""
        ...

    async def publish(self, channel: str, message: bytes) -> None:
        """Send ``message`` to every node subscribed to ``channel`` now (at most once,
        none to a node that is not subscribed)."""
        ...

    def subscribe(self, channel: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """``async with store.subscribe(ch) as messages: async for m in messages``:
        what is published on ``channel`` from when the block is entered. Iteration
        raises :class:`StoreError` when the connection is lost (subscribe again)."""
        ...


def as_utc(value: datetime, what: str) -> datetime:
    """Return the UTC datetime for the instant ``value``; raise ValueError naming
    ``what`` if ``value`` is naive, since a naive time names no single instant."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got naive {value!r}")
    return value.astimezone(UTC)


def check_limit(limit: int | None) -> None:
    """Raise ValueError unless ``limit`` is None or at least 1."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")


def check_delta_job(job_id: str, deltas: Sequence[Delta]) -> None:
    """Raise ValueError if any of ``deltas`` belongs to a job other than ``job_id``."""
    for d in deltas:
        if d.job_id != job_id:
            raise ValueError(f"delta for job {d.job_id!r} filed under job {job_id!r}")


def check_batches(batches: Mapping[str, Sequence[Delta]]) -> None:
    """Raise ValueError if any delta in ``batches`` is filed under another job's id."""
    for job_id, deltas in batches.items():
        check_delta_job(job_id, deltas)


def new_deltas_in_order(deltas: Sequence[Delta], last_seq: int) -> list[Delta]:
    """Return the deltas an append takes: those with ``seq > last_seq``, in seq
    order, keeping the first of any repeated seq."""
    taken: dict[int, Delta] = {}
    for d in deltas:
        if d.seq > last_seq and d.seq not in taken:
            taken[d.seq] = d
    return [taken[seq] for seq in sorted(taken)]
