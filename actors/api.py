"""The types the service facade takes and returns."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

from actors.model import Job, JobStatus, Usage

__all__ = [
    "ChatRequest",
    "DeltaEvent",
    "JobEvent",
    "JobView",
    "SnapshotEvent",
    "StatusEvent",
]


@attrs.frozen
class ChatRequest:
    """A chat completion to run in the background.

    ``params`` are extra upstream body fields (``temperature``,
    ``max_tokens``…). ``api_key`` is the caller's own upstream key, accepted
    only when the configuration allows it; it is never stored or shown.
    """

    model: str
    messages: list[dict[str, Any]]
    thread_id: str
    message_id: str
    params: dict[str, Any] = attrs.field(factory=dict)
    api_key: str | None = attrs.field(default=None, repr=False)


@attrs.frozen
class JobView:
    """A job as its owner sees it, with ``content`` from ``offset`` on and ``reasoning``
    from ``reasoning_offset`` on (delta polling).

    ``content_length`` and ``reasoning_length`` are the lengths of the whole content
    and reasoning, so the next poll asks for ``offset=content_length`` and
    ``reasoning_offset=reasoning_length``. Each offset is clamped to its length.
    ``tool_calls``, ``images`` and ``foreground`` are the job's own (see :class:`Job`).
    """

    id: str
    thread_id: str
    message_id: str
    model: str
    status: JobStatus
    started_at: datetime
    completed_at: datetime | None
    error: str | None
    chunks_received: int
    last_seq: int
    finish_reason: str | None
    usage: Usage | None
    generation_id: str | None
    offset: int
    content: str
    content_length: int
    reasoning_offset: int
    reasoning: str
    reasoning_length: int
    tool_calls: list[dict[str, Any]]
    images: list[dict[str, Any]]
    foreground: bool

    @classmethod
    def of(cls, job: Job, offset: int = 0, reasoning_offset: int = 0) -> JobView:
        offset = max(0, min(offset, len(job.content)))
        reasoning_offset = max(0, min(reasoning_offset, len(job.reasoning)))
        return cls(
            id=job.id,
            thread_id=job.thread_id,
            message_id=job.message_id,
            model=job.model,
            status=job.status,
            started_at=job.started_at,
            completed_at=job.completed_at,
            error=job.error,
            chunks_received=job.chunks_received,
            last_seq=job.last_seq,
            finish_reason=job.finish_reason,
            usage=job.usage,
            generation_id=job.generation_id,
            offset=offset,
            content=job.content[offset:],
            content_length=len(job.content),
            reasoning_offset=reasoning_offset,
            reasoning=job.reasoning[reasoning_offset:],
            reasoning_length=len(job.reasoning),
            tool_calls=job.tool_calls,
            images=job.images,
            foreground=job.foreground,
        )


@attrs.frozen
class SnapshotEvent:
    """First event of a follow: the job's metadata (content comes as deltas)."""

    job: JobView


@attrs.frozen
class DeltaEvent:
    """One stored delta; ``seq`` grows by one per delta."""

    seq: int
    content: str
    reasoning: str = ""


@attrs.frozen
class StatusEvent:
    """The job reached a terminal status; the last event of a follow."""

    status: JobStatus
    error: str | None
    finish_reason: str | None
    usage: Usage | None
    last_seq: int

    @classmethod
    def of(cls, job: Job) -> StatusEvent:
        """The status of ``job`` as it is (stored)."""
        return cls(job.status, job.error, job.finish_reason, job.usage, job.last_seq)


JobEvent = SnapshotEvent | DeltaEvent | StatusEvent
