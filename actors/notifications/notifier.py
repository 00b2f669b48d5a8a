"""The :class:`Notifier` actor: decides on, stores and pushes notifications.

A job that ends ``complete`` or ``error`` gets exactly one notification,
unless a follower was watching it at that moment or its thread is muted. The
store keeps at most one notification per job, so a retried ``JobFinished``
(after a crash of this actor) cannot notify twice.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import structlog
import trio

from actors.dependencies import ServiceDependencies
from actors.messages import (
    DeleteNotification,
    FollowNotifications,
    JobFinished,
    ListNotifications,
    MarkAllRead,
    MarkRead,
    MuteThread,
)
from actors.model import (
    Job,
    JobStatus,
    Notification,
    NotificationAction,
    NotificationType,
    Owner,
)
from runtime import Actor, ExitReason

__all__ = ["Notifier", "notification_for"]

log = structlog.get_logger("troupe.notifier")


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

    async def on_stop(self, reason: ExitReason) -> None:
        # Followers resubscribe on their own when their channel ends.
        for channels in self._followers.values():
            for channel in channels:
                channel.close()

    async def handle(self, message: Any) -> Any:
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
        if watched or job.status not in (JobStatus.COMPLETE, JobStatus.ERROR):
            return None
        if await self._store.is_thread_muted(job.owner, job.thread_id):
            return None
        notification = notification_for(job, self._deps.new_id(), self._deps.clock.now())
        if notification is None or not await self._store.add_notification(notification):
            return None
        log.info("notified", job_id=job.id, type=notification.type.value)
        self._push(notification)
        return notification

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
