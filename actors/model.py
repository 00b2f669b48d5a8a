"""The service's records: jobs, their deltas, and notifications.

These are plain frozen attrs classes. They are what the stores persist and what
the facade hands out; every change makes a new value (``attrs.evolve``).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import attrs

__all__ = [
    "TERMINAL_STATUSES",
    "Delta",
    "Job",
    "JobStatus",
    "Notification",
    "NotificationAction",
    "NotificationType",
    "Owner",
    "Usage",
    "WebhookEvent",
]


class JobStatus(enum.Enum):
    QUEUED = "queued"
    STREAMING = "streaming"
    COMPLETE = "complete"
    ERROR = "error"
    ABORTED = "aborted"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETE, JobStatus.ERROR, JobStatus.ABORTED})


@attrs.frozen
class Owner:
    """Who a job or notification belongs to. Every read and write is scoped by both."""

    user_id: str
    workspace_id: str


@attrs.frozen
class Usage:
    """Token accounting from the upstream's usage chunk; any field may be missing."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost: float | None = None


@attrs.frozen
class Job:
    """One background chat completion.

    ``content`` and ``reasoning`` are the concatenation of every delta stored so
    far, and ``last_seq`` is the ``seq`` of the newest of them (0 before the
    first). ``chunks_received`` counts the upstream deltas. ``tool_calls`` (whole
    calls, their streamed fragments merged) and ``images`` (as the upstream sent
    them) are recorded when the job ends. ``foreground`` marks a job whose answer
    was passed straight through to the caller (the seed's foreground path).
    """

    id: str
    user_id: str
    workspace_id: str
    thread_id: str
    message_id: str
    model: str
    status: JobStatus
    started_at: datetime
    content: str = ""
    reasoning: str = ""
    chunks_received: int = 0
    last_seq: int = 0
    completed_at: datetime | None = None
    error: str | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    generation_id: str | None = None
    tool_calls: list[dict[str, Any]] = attrs.field(factory=list)
    images: list[dict[str, Any]] = attrs.field(factory=list)
    foreground: bool = False

    @property
    def owner(self) -> Owner:
        return Owner(self.user_id, self.workspace_id)


@attrs.frozen
class Delta:
    """A piece of a job's output; ``seq`` starts at 1 and grows by 1 per delta."""

    job_id: str
    seq: int
    content: str = ""
    reasoning: str = ""


class NotificationType(enum.Enum):
    COMPLETE = "ai.background.complete"
    ERROR = "ai.background.error"


@attrs.frozen
class NotificationAction:
    """The "Open chat" button: it carries the thread and the message to open."""

    label: str
    kind: str
    thread_id: str
    message_id: str


@attrs.frozen
class Notification:
    id: str
    user_id: str
    workspace_id: str
    thread_id: str
    job_id: str
    type: NotificationType
    title: str
    body: str
    created_at: datetime
    actions: tuple[NotificationAction, ...] = ()
    read_at: datetime | None = None


@attrs.frozen
class WebhookEvent:
    """One event for the webhook endpoint, as the outbox keeps it until it is delivered.

    ``id`` is the ``webhook-id`` every attempt carries, so a receiver dedupes on it;
    ``body`` is the JSON payload, fixed when the event is made, so every attempt sends
    the same text. ``attempts`` counts the failed tries so far and ``next_attempt_at``
    is when the next one is due.
    """

    id: str
    type: str
    created_at: datetime
    body: str
    next_attempt_at: datetime
    attempts: int = 0
