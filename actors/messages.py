"""The messages the service's actors exchange, one section per protocol.

Replies are noted per message; "tell" messages have none. A reply that reads the
store may instead be a :class:`~actors.errors.StoreUnavailable` (returned, not
raised, so that an outage does not crash the actor) where the message says so.
"""

from __future__ import annotations

from typing import Any

import attrs

from actors.api import ChatRequest
from actors.jobs.log import JobLog
from actors.jobs.passthrough import Passthrough
from actors.model import Job, Owner, Usage

__all__ = [
    "AbortJob",
    "BeginDrain",
    "CreateJob",
    "DeleteNotification",
    "FollowJob",
    "FollowNotifications",
    "ForegroundStarted",
    "GetLog",
    "InterruptAll",
    "JobFinished",
    "JobPolled",
    "JobsLost",
    "LeasedJobs",
    "ListNotifications",
    "MarkAllRead",
    "MarkRead",
    "MuteThread",
    "Ping",
    "ReapJobs",
    "StreamFailed",
    "StreamFinished",
    "StreamOpened",
    "Subscription",
    "Sweep",
    "SweepResult",
    "TrackLog",
    "WebhooksQueued",
]

# -- JobRegistry: from the facade -------------------------------------------


@attrs.frozen
class CreateJob:
    """Reply: the new :class:`Job`, or with a ``passthrough`` a :class:`ForegroundStarted`;
    at a cap the ServerBusy / TooManyJobs / ForegroundBusy refusal, and StoreUnavailable
    (returned as the reply, not raised, so the registry does not crash).

    With a ``passthrough`` (made by the caller, so that it can close the reader even
    when it never gets the reply) the job is a foreground one: passed straight through
    to its caller and recorded like any other. It counts against
    ``max_foreground_streams`` only, a background job against ``max_concurrent_jobs``
    and ``max_jobs_per_user`` only.
    """

    owner: Owner
    request: ChatRequest
    passthrough: Passthrough | None = attrs.field(default=None, eq=False)


@attrs.frozen
class ForegroundStarted:
    """Reply to a foreground :class:`CreateJob`: the job, and the upstream's answer
    as the job's stream passes it on."""

    job: Job
    passthrough: Passthrough = attrs.field(eq=False)


@attrs.frozen
class AbortJob:
    """Reply: True if this call aborted a running job of the owner's (on a shared
    store, one running on any node), or StoreUnavailable."""

    owner: Owner
    job_id: str


@attrs.frozen
class Subscription:
    """Reply to :class:`FollowJob`: the job as stored now, and its live log.

    ``log`` is None when the job is already terminal: everything is in the store.
    """

    job: Job
    log: JobLog | None = attrs.field(eq=False)


@attrs.frozen
class FollowJob:
    """Reply: a :class:`Subscription`, None if the job is not the owner's, or
    StoreUnavailable."""

    owner: Owner
    job_id: str


@attrs.frozen
class JobPolled:
    """Its owner has just read this running job's status: the job counts as
    watched for ``watch_window`` seconds. Told with ``tell_nowait``; no reply."""

    job_id: str


@attrs.frozen
class BeginDrain:
    """Refuse new jobs from now on. Reply: the number of running jobs."""


@attrs.frozen
class InterruptAll:
    """Stop every running job, recording it as an error with ``reason``. Reply: how many.

    With ``store_down`` (from the persister, once the store has failed for
    ``store_outage_grace``) the store is not tried now: each job ends at once for its
    followers here, and its end is stored when the store answers again.
    """

    reason: str
    store_down: bool = False


# -- JobRegistry: from the LeaseKeeper and the control channel (shared stores) ----


@attrs.frozen
class LeasedJobs:
    """Reply: the ids of the jobs this node holds leases on: those it runs, and those
    it ended but could not yet store the end of."""


@attrs.frozen
class JobsLost:
    """This node no longer holds these jobs: another node ended them (an abort), or
    their lease ran out. Each one running here stops; its log ends with the status the
    store has, or, if the store still has it running, the job ends "interrupted: node
    lost" as a reaper would end it."""

    job_ids: frozenset[str]


@attrs.frozen
class ReapJobs:
    """These jobs' nodes lost their leases (they died): end each one still running
    "interrupted: node lost", keeping its content. Reply: how many this node ended
    (and notified of); another node may have ended some first."""

    job_ids: tuple[str, ...]


# -- JobRegistry: from its StreamActors ----------------------------------------


@attrs.frozen
class StreamOpened:
    job_id: str
    generation_id: str | None


@attrs.frozen
class StreamFinished:
    """``tool_calls`` are whole calls (fragments merged); ``images`` as the upstream sent them."""

    job_id: str
    finish_reason: str | None
    usage: Usage | None
    generation_id: str | None
    tool_calls: list[dict[str, Any]] = attrs.field(factory=list)
    images: list[dict[str, Any]] = attrs.field(factory=list)


@attrs.frozen
class StreamFailed:
    """The output that was not text, up to the failure, as :class:`StreamFinished` has it."""

    job_id: str
    error: str
    tool_calls: list[dict[str, Any]] = attrs.field(factory=list)
    images: list[dict[str, Any]] = attrs.field(factory=list)


@attrs.frozen
class GetLog:
    """To a StreamActor, from a restarted registry or persister. Reply: its :class:`JobLog`."""


# -- Persister: from the JobRegistry ---------------------------------------------


@attrs.frozen
class TrackLog:
    """Store this running job's deltas from now on, until its log is closed."""

    log: JobLog = attrs.field(eq=False)


# -- JobRegistry: from the Sweeper ---------------------------------------------


@attrs.frozen
class Sweep:
    """Time out old running jobs and delete expired finished ones. Reply: :class:`SweepResult`."""


@attrs.frozen
class SweepResult:
    timed_out: int
    deleted: int


# -- Notifier: every reply may be StoreUnavailable instead -----------------------


@attrs.frozen
class JobFinished:
    """A job ended. Reply: the :class:`Notification` created, None, or StoreUnavailable
    (then nothing was stored: ask again).

    ``watched`` is True when a follower was attached at that moment, or its
    owner had polled it within ``watch_window`` seconds.
    """

    job: Job
    watched: bool


@attrs.frozen
class ListNotifications:
    owner: Owner
    unread_only: bool = False
    limit: int = 50


@attrs.frozen
class MarkRead:
    owner: Owner
    notification_id: str


@attrs.frozen
class MarkAllRead:
    owner: Owner


@attrs.frozen
class DeleteNotification:
    owner: Owner
    notification_id: str


@attrs.frozen
class MuteThread:
    owner: Owner
    thread_id: str
    muted: bool


@attrs.frozen
class FollowNotifications:
    """Reply: a receive channel of the owner's new :class:`Notification` values."""

    owner: Owner


# -- WebhookSender ----------------------------------------------------------------


@attrs.frozen
class WebhooksQueued:
    """From the notifier: events were queued in the outbox; deliver what is due."""


# -- StoreKeeper ------------------------------------------------------------------


@attrs.frozen
class Ping:
    """Reply: True once the store answered, False if it failed (within the store's
    own command timeout)."""
