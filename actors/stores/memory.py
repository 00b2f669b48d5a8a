"""The in-memory store: jobs, deltas, notifications and the webhook outbox in
dicts, lost at exit.

Every method checkpoints once, first, and then does all of its work without
awaiting. trio switches tasks only at checkpoints, so each operation is atomic
with respect to every other task and the dicts need no lock; a cancellation
lands on that first checkpoint, before anything has changed.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime

import attrs
import trio

from actors.model import (
    TERMINAL_STATUSES,
    Delta,
    Job,
    JobStatus,
    Notification,
    Owner,
    WebhookEvent,
)
from actors.stores.protocol import (
    JobSummary,
    OutboxSummary,
    StoreError,
    as_utc,
    check_batches,
    check_limit,
    new_deltas_in_order,
)

__all__ = ["MemoryStore"]

_ACTIVE_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.STREAMING})


class MemoryStore:
    """Implements :class:`~actors.stores.protocol.Store` in process memory."""

    def __init__(self) -> None:
        self._jobs: dict[str, _Entry] = {}
        self._notifications: dict[str, Notification] = {}
        self._notification_by_job: dict[str, str] = {}
        self._muted: set[tuple[str, str, str]] = set()
        self._outbox: dict[str, WebhookEvent] = {}
        self._disabled_endpoints: dict[str, datetime] = {}
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"<MemoryStore jobs={len(self._jobs)} notifications={len(self._notifications)}"
            f"{' closed' if self._closed else ''}>"
        )

    async def _enter(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise StoreError("store is closed")

    # -- jobs ---------------------------------------------------------------

    async def create_job(self, job: Job) -> None:
        """See :meth:`JobStore.create_job`."""
        await self._enter()
        job = _job_in_utc(job)
        if job.id in self._jobs:
            raise StoreError(f"job {job.id!r} already exists")
        self._jobs[job.id] = _Entry(job, len(job.content), len(job.reasoning))

    async def get_job(self, job_id: str, owner: Owner | None = None) -> Job | None:
        """See :meth:`JobStore.get_job`."""
        await self._enter()
        entry = self._jobs.get(job_id)
        if entry is None or (owner is not None and entry.job.owner != owner):
            return None
        return entry.current()

    async def list_jobs(self, owner: Owner, status: JobStatus | None = None) -> list[Job]:
        """See :meth:`JobStore.list_jobs`."""
        await self._enter()
        return [entry.current() for entry in self._owned(owner, status)]

    async def list_job_summaries(
        self, owner: Owner, status: JobStatus | None = None
    ) -> list[JobSummary]:
        """See :meth:`JobStore.list_job_summaries`."""
        await self._enter()
        return [
            JobSummary(
                attrs.evolve(entry.job, content="", reasoning=""),
                entry.content_length,
                entry.reasoning_length,
            )
            for entry in self._owned(owner, status)
        ]

    async def append_many(self, batches: Mapping[str, Sequence[Delta]]) -> None:
        """See :meth:`JobStore.append_many`."""
        await self._enter()
        check_batches(batches)
        for job_id, deltas in batches.items():
            entry = self._jobs.get(job_id)
            if entry is not None and not entry.job.status.is_terminal:
                entry.grow(new_deltas_in_order(deltas, entry.job.last_seq))

    async def append_deltas(self, job_id: str, deltas: Sequence[Delta]) -> None:
        """See :meth:`JobStore.append_deltas`."""
        await self.append_many({job_id: deltas})

    async def update_job(self, job: Job) -> bool:
        """See :meth:`JobStore.update_job`."""
        await self._enter()
        completed_at = _optional_utc(job.completed_at, "completed_at")
        entry = self._jobs.get(job.id)
        if entry is None or entry.job.status.is_terminal:
            return False
        # A terminal job's output is final: join it once, here.
        stored = entry.current() if job.status.is_terminal else entry.job
        entry.job = attrs.evolve(
            stored,
            status=job.status,
            error=job.error,
            completed_at=completed_at,
            finish_reason=job.finish_reason,
            usage=job.usage,
            generation_id=job.generation_id,
            model=job.model,
            tool_calls=job.tool_calls,
            images=job.images,
        )
        return True

    async def get_deltas(
        self, job_id: str, after_seq: int = 0, limit: int | None = None
    ) -> list[Delta]:
        """See :meth:`JobStore.get_deltas`."""
        check_limit(limit)
        await self._enter()
        entry = self._jobs.get(job_id)
        if entry is None:
            return []
        # The deltas are kept in seq order.
        start = bisect.bisect_right(entry.deltas, after_seq, key=lambda d: d.seq)
        return entry.deltas[start : None if limit is None else start + limit]

    async def list_jobs_by_status(self, statuses: Collection[JobStatus]) -> list[Job]:
        """See :meth:`JobStore.list_jobs_by_status`."""
        await self._enter()
        wanted = frozenset(statuses)
        entries = [entry for entry in self._jobs.values() if entry.job.status in wanted]
        entries.sort(key=lambda entry: (entry.job.started_at, entry.job.id))
        return [entry.current() for entry in entries]

    async def delete_finished_before(self, cutoff: datetime) -> list[str]:
        """See :meth:`JobStore.delete_finished_before`."""
        await self._enter()
        cutoff = as_utc(cutoff, "cutoff")
        expired = sorted(
            (
                entry.job
                for entry in self._jobs.values()
                if entry.job.status in TERMINAL_STATUSES
                and entry.job.completed_at is not None
                and entry.job.completed_at < cutoff
            ),
            key=lambda job: (job.completed_at, job.id),
        )
        for job in expired:
            del self._jobs[job.id]
        return [job.id for job in expired]

    async def count_active(self) -> int:
        """See :meth:`JobStore.count_active`."""
        await self._enter()
        return sum(1 for entry in self._jobs.values() if entry.job.status in _ACTIVE_STATUSES)

    # -- notifications ------------------------------------------------------

    async def add_notification(
        self, n: Notification, webhooks: Sequence[WebhookEvent] = ()
    ) -> bool:
        """See :meth:`NotificationStore.add_notification`."""
        await self._enter()
        n = attrs.evolve(
            n,
            created_at=as_utc(n.created_at, "created_at"),
            read_at=_optional_utc(n.read_at, "read_at"),
        )
        events = [_event_in_utc(event) for event in webhooks]
        if n.job_id in self._notification_by_job:
            return False
        if n.id in self._notifications:
            raise StoreError(f"notification {n.id!r} already exists")
        self._notifications[n.id] = n
        self._notification_by_job[n.job_id] = n.id
        self._queue(events)
        return True

    async def list_notifications(
        self, owner: Owner, *, unread_only: bool = False, limit: int = 50
    ) -> list[Notification]:
        """See :meth:`NotificationStore.list_notifications`."""
        await self._enter()
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        found = [
            n
            for n in self._notifications.values()
            if _owns(owner, n) and not (unread_only and n.read_at is not None)
        ]
        found.sort(key=lambda n: (n.created_at, n.id), reverse=True)
        return found[:limit]

    async def get_notification(self, owner: Owner, notification_id: str) -> Notification | None:
        """See :meth:`NotificationStore.get_notification`."""
        await self._enter()
        return self._owned_notification(owner, notification_id)

    async def mark_read(self, owner: Owner, notification_id: str, at: datetime) -> bool:
        """See :meth:`NotificationStore.mark_read`."""
        await self._enter()
        at = as_utc(at, "at")
        n = self._owned_notification(owner, notification_id)
        if n is None:
            return False
        if n.read_at is None:
            self._notifications[n.id] = attrs.evolve(n, read_at=at)
        return True

    async def mark_all_read(self, owner: Owner, at: datetime) -> int:
        """See :meth:`NotificationStore.mark_all_read`."""
        await self._enter()
        at = as_utc(at, "at")
        unread = [n for n in self._notifications.values() if _owns(owner, n) and n.read_at is None]
        for n in unread:
            self._notifications[n.id] = attrs.evolve(n, read_at=at)
        return len(unread)

    async def delete_notification(self, owner: Owner, notification_id: str) -> bool:
        """See :meth:`NotificationStore.delete_notification`."""
        await self._enter()
        n = self._owned_notification(owner, notification_id)
        if n is None:
            return False
        del self._notifications[n.id]
        del self._notification_by_job[n.job_id]
        return True

    async def set_thread_muted(self, owner: Owner, thread_id: str, muted: bool) -> None:
        """See :meth:`NotificationStore.set_thread_muted`."""
        await self._enter()
        key = (owner.user_id, owner.workspace_id, thread_id)
        if muted:
            self._muted.add(key)
        else:
            self._muted.discard(key)

    async def is_thread_muted(self, owner: Owner, thread_id: str) -> bool:
        """See :meth:`NotificationStore.is_thread_muted`."""
        await self._enter()
        return (owner.user_id, owner.workspace_id, thread_id) in self._muted

    # -- webhook outbox -----------------------------------------------------

    async def enqueue_webhooks(self, events: Sequence[WebhookEvent]) -> None:
        """See :meth:`WebhookOutbox.enqueue_webhooks`."""
        await self._enter()
        self._queue([_event_in_utc(event) for event in events])

    async def take_due_webhooks(
        self, now: datetime, limit: int, lease_until: datetime
    ) -> list[WebhookEvent]:
        """See :meth:`WebhookOutbox.take_due_webhooks`."""
        await self._enter()
        now = as_utc(now, "now")
        lease_until = as_utc(lease_until, "lease_until")
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        due = [event for event in self._outbox.values() if event.next_attempt_at <= now]
        due.sort(key=lambda event: (event.next_attempt_at, event.created_at, event.id))
        taken = due[:limit]
        for event in taken:
            self._outbox[event.id] = attrs.evolve(event, next_attempt_at=lease_until)
        return taken

    async def reschedule_webhook(
        self, event_id: str, attempts: int, next_attempt_at: datetime
    ) -> bool:
        """See :meth:`WebhookOutbox.reschedule_webhook`."""
        await self._enter()
        next_attempt_at = as_utc(next_attempt_at, "next_attempt_at")
        event = self._outbox.get(event_id)
        if event is None:
            return False
        self._outbox[event_id] = attrs.evolve(
            event, attempts=attempts, next_attempt_at=next_attempt_at
        )
        return True

    async def remove_webhook(self, event_id: str) -> bool:
        """See :meth:`WebhookOutbox.remove_webhook`."""
        await self._enter()
        return self._outbox.pop(event_id, None) is not None

    async def delete_webhooks_created_before(self, cutoff: datetime) -> list[str]:
        """See :meth:`WebhookOutbox.delete_webhooks_created_before`."""
        await self._enter()
        cutoff = as_utc(cutoff, "cutoff")
        expired = sorted(
            (event for event in self._outbox.values() if event.created_at < cutoff),
            key=lambda event: (event.created_at, event.id),
        )
        for event in expired:
            del self._outbox[event.id]
        return [event.id for event in expired]

    async def webhook_outbox_summary(self) -> OutboxSummary:
        """See :meth:`WebhookOutbox.webhook_outbox_summary`."""
        await self._enter()
        events = self._outbox.values()
        if not events:
            return OutboxSummary(0, None, None)
        return OutboxSummary(
            len(events),
            min(event.next_attempt_at for event in events),
            min(event.created_at for event in events),
        )

    async def disable_webhook_endpoint(self, url: str, at: datetime) -> None:
        """See :meth:`WebhookOutbox.disable_webhook_endpoint`."""
        await self._enter()
        self._disabled_endpoints.setdefault(url, as_utc(at, "at"))

    async def webhook_endpoint_disabled_at(self, url: str) -> datetime | None:
        """See :meth:`WebhookOutbox.webhook_endpoint_disabled_at`."""
        await self._enter()
        return self._disabled_endpoints.get(url)

    def _queue(self, events: list[WebhookEvent]) -> None:
        for event in events:
            self._outbox.setdefault(event.id, event)

    # -- lifecycle ----------------------------------------------------------

    async def ping(self) -> None:
        """Return at once; raise :class:`StoreError` once closed."""
        await self._enter()

    async def aclose(self) -> None:
        """Drop all data and refuse further calls. Idempotent."""
        await trio.lowlevel.checkpoint()
        self._closed = True
        self._jobs.clear()
        self._notifications.clear()
        self._notification_by_job.clear()
        self._muted.clear()
        self._outbox.clear()
        self._disabled_endpoints.clear()

    def _owned(self, owner: Owner, status: JobStatus | None) -> list[_Entry]:
        """``owner``'s jobs, optionally only those in ``status``, newest first."""
        entries = [
            entry
            for entry in self._jobs.values()
            if entry.job.owner == owner and (status is None or entry.job.status is status)
        ]
        entries.sort(key=lambda entry: (entry.job.started_at, entry.job.id), reverse=True)
        return entries

    def _owned_notification(self, owner: Owner, notification_id: str) -> Notification | None:
        n = self._notifications.get(notification_id)
        return n if n is not None and _owns(owner, n) else None


@attrs.define
class _Entry:
    """A stored job and its deltas.

    ``job`` holds everything but a running job's output, which is its content
    and reasoning followed by ``deltas`` (ascending by seq: only seqs above
    ``last_seq`` are ever added). :meth:`MemoryStore.update_job` joins them into
    ``job`` when the job becomes terminal, so appending never copies the output
    already stored. The lengths are those of the whole output.
    """

    job: Job
    content_length: int
    reasoning_length: int
    deltas: list[Delta] = attrs.Factory(list)

    def current(self) -> Job:
        """The job with its whole output."""
        job = self.job
        if job.status.is_terminal or not self.deltas:
            return job
        return attrs.evolve(
            job,
            content=job.content + "".join(d.content for d in self.deltas),
            reasoning=job.reasoning + "".join(d.reasoning for d in self.deltas),
        )

    def grow(self, taken: list[Delta]) -> None:
        """Add ``taken``, new deltas in seq order above ``last_seq``."""
        if not taken:
            return
        self.deltas.extend(taken)
        self.content_length += sum(len(d.content) for d in taken)
        self.reasoning_length += sum(len(d.reasoning) for d in taken)
        self.job = attrs.evolve(
            self.job,
            chunks_received=self.job.chunks_received + len(taken),
            last_seq=taken[-1].seq,
        )


def _owns(owner: Owner, n: Notification) -> bool:
    return n.user_id == owner.user_id and n.workspace_id == owner.workspace_id


def _optional_utc(value: datetime | None, what: str) -> datetime | None:
    return None if value is None else as_utc(value, what)


def _event_in_utc(event: WebhookEvent) -> WebhookEvent:
    return attrs.evolve(
        event,
        created_at=as_utc(event.created_at, "created_at"),
        next_attempt_at=as_utc(event.next_attempt_at, "next_attempt_at"),
    )


def _job_in_utc(job: Job) -> Job:
    return attrs.evolve(
        job,
        started_at=as_utc(job.started_at, "started_at"),
        completed_at=_optional_utc(job.completed_at, "completed_at"),
    )
