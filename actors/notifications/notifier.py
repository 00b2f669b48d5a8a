"""The :class:`Notifier` actor: decides on, stores and pushes notifications.

A job that ends ``complete`` or ``error`` gets exactly one notification,
unless a follower was watching it at that moment or its thread is muted. The
store keeps at most one notification per job, so a retried ``JobFinished``
(after a crash of this actor) cannot notify twice.

With ``webhook_url`` set, every job end it hears of (aborted too) is also queued as a
webhook event, with the notification's own event when there is one, in the same
store write as the notification; then the :class:`~actors.notifications.webhooks.WebhookSender`
is woken to deliver them. Nothing here waits for a delivery.

On a store several nodes share, the notifier that creates a notification
publishes it, and every node's notifier pushes what the others publish to its
own followers. A follower on any node gets it live; one whose node was cut off
from the store finds it in the list.

When the store fails, every reply that needed it is a StoreUnavailable.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Any

import attrs
import structlog
import trio
from cattrs.errors import ClassValidationError

from actors import codec
from actors.dependencies import WEBHOOKS, ServiceDependencies
from actors.errors import StoreUnavailable
from actors.jobs.cluster import listen
from actors.messages import (
    DeleteNotification,
    FollowNotifications,
    JobFinished,
    ListNotifications,
    MarkAllRead,
    MarkRead,
    MuteThread,
    WebhooksQueued,
)
from actors.model import (
    Job,
    JobStatus,
    Notification,
    NotificationAction,
    NotificationType,
    Owner,
    WebhookEvent,
)
from actors.notifications.webhooks import job_event, notification_event
from actors.stores import StoreError
from actors.stores.protocol import ClusterStore
from runtime import Actor, ActorStopped, ExitReason, MailboxFull

__all__ = ["NOTIFICATIONS_CHANNEL", "Notifier", "notification_for"]

log = structlog.get_logger("troupe.notifier")

NOTIFICATIONS_CHANNEL = "notifications"
"""The channel every notification created on a shared store is published on."""


@attrs.frozen
class _Published:
    """A notification as published: ``node`` created it (and pushed it to its own followers)."""

    node: str
    notification: Notification


def notification_for(job: Job, notification_id: str, created_at: Any) -> Notification | None:
    """The notification the seed sends for ``job``'s terminal status, or None for others."""
    if job.status is JobStatus.COMPLETE:
        kind = NotificationType.COMPLETE
        title = "Background response completed"
        body = f"Your background AI response is ready in thread {job.thread_id}"
    elif job.status is JobStatus.ERROR:
        kind = NotificationType.ERROR
        title = "Background response failed"
        body = f"Failed: {job.error or 'unknown error'}"
    else:
        return None
    return Notification(
        id=notification_id,
        user_id=job.user_id,
        workspace_id=job.workspace_id,
        thread_id=job.thread_id,
        job_id=job.id,
        type=kind,
        title=title,
        body=body,
        created_at=created_at,
        actions=(NotificationAction("Open chat", "open_chat", job.thread_id, job.message_id),),
    )


class Notifier(Actor):
    def __init__(self, deps: ServiceDependencies) -> None:
        self._deps = deps
        self._followers: defaultdict[Owner, list[trio.MemorySendChannel[Notification]]] = (
            defaultdict(list)
        )

    async def on_start(self) -> None:
        self._store = await self._deps.stores.get()
        self._cluster = self._store if isinstance(self._store, ClusterStore) else None
        if self._cluster is not None:
            self.context.start_task(
                listen, self._cluster, NOTIFICATIONS_CHANNEL, self._on_published
            )

    async def on_stop(self, reason: ExitReason) -> None:
        # Followers resubscribe on their own when their channel ends.
        for channels in self._followers.values():
            for channel in channels:
                channel.close()

    async def handle(self, message: Any) -> Any:
        # An outage is an answer, not a crash: a crash per request would soon take
        # the service down with this actor.
        try:
            return await self._handle(message)
        except StoreError as error:
            log.warning("the store failed", request=type(message).__name__, error=str(error))
            return StoreUnavailable("the store does not answer; try again later")

    async def _handle(self, message: Any) -> Any:
        store = self._store
        match message:
            case JobFinished(job, watched):
                return await self._on_job_finished(job, watched)
            case ListNotifications(owner, unread_only, limit):
                return await store.list_notifications(owner, unread_only=unread_only, limit=limit)
            case MarkRead(owner, notification_id):
                return await store.mark_read(owner, notification_id, self._deps.clock.now())
            case MarkAllRead(owner):
                return await store.mark_all_read(owner, self._deps.clock.now())
            case DeleteNotification(owner, notification_id):
                return await store.delete_notification(owner, notification_id)
            case MuteThread(owner, thread_id, muted):
                await store.set_thread_muted(owner, thread_id, muted)
                return None
            case FollowNotifications(owner):
                send, receive = trio.open_memory_channel[Notification](
                    self._deps.config.follower_buffer
                )
                self._followers[owner].append(send)
                return receive
        self.unhandled(message)

    async def _on_job_finished(self, job: Job, watched: bool) -> Notification | None:
        notification = await self._decide(job, watched)
        events = await self._webhook_events(job, notification)
        if notification is None:
            if events:
                await self._store.enqueue_webhooks(events)
        elif not await self._store.add_notification(notification, events):
            # An earlier try stored the job's notification, and its events with it.
            notification = None
        if events:
            self._wake_webhooks()
        if notification is not None:
            log.info("notified", job_id=job.id, type=notification.type.value)
            self._push(notification)
            await self._publish(notification)
        return notification

    async def _publish(self, notification: Notification) -> None:
        if self._cluster is None:
            return
        try:
            await self._cluster.publish(
                NOTIFICATIONS_CHANNEL, codec.dumps(_Published(self._deps.node_id, notification))
            )
        except StoreError as error:
            # It is stored: followers on other nodes find it in the list.
            log.warning(
                "could not publish a notification", job_id=notification.job_id, error=str(error)
            )

    async def _on_published(self, message: bytes) -> None:
        """Push a notification another node created to the followers here."""
        try:
            published = codec.loads(message, _Published)
        except (ValueError, ClassValidationError) as error:
            log.error("unreadable notification on the channel", error=str(error))
            return
        if published.node != self._deps.node_id:
            # Not a handler, but _push never awaits, so no handler runs in between.
            self._push(published.notification)

    async def _decide(self, job: Job, watched: bool) -> Notification | None:
        """The notification ``job``'s end calls for, or None."""
        if watched or job.status not in (JobStatus.COMPLETE, JobStatus.ERROR):
            return None
        if await self._store.is_thread_muted(job.owner, job.thread_id):
            return None
        return notification_for(job, self._deps.new_id(), self._deps.clock.now())

    async def _webhook_events(
        self, job: Job, notification: Notification | None
    ) -> list[WebhookEvent]:
        """The webhook events of ``job``'s end: its notification's, if any, and its
        status's; none without ``webhook_url``."""
        if self._deps.config.webhook_url is None:
            return []
        now = self._deps.clock.now()
        # The registry's record of a job has no output; the store has all of it.
        stored = await self._store.get_job(job.id)
        events = [job_event(job, 0 if stored is None else len(stored.content), now)]
        if notification is not None:
            events.insert(0, notification_event(notification, job.message_id, now))
        return events

    def _wake_webhooks(self) -> None:
        sender = self.context.system.lookup(WEBHOOKS)
        # A full mailbox holds a wake already; a sender that is not running reads
        # the outbox when it starts.
        if sender is not None:
            with contextlib.suppress(MailboxFull, ActorStopped):
                sender.tell_nowait(WebhooksQueued())

    def _push(self, notification: Notification) -> None:
        owner = Owner(notification.user_id, notification.workspace_id)
        kept = []
        for channel in self._followers.get(owner, ()):
            try:
                channel.send_nowait(notification)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                channel.close()  # too slow or gone; it resubscribes and lists what it missed
            else:
                kept.append(channel)
        if kept:
            self._followers[owner] = kept
        else:
            self._followers.pop(owner, None)
