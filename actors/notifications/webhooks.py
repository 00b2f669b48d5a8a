"""Webhooks: every notification and every terminal job status, POSTed to ``webhook_url``.

A delivery follows Standard Webhooks (https://www.standardwebhooks.com): the body is
``{"type", "timestamp", "data"}`` as JSON, and the headers ``webhook-id`` (stable per
event, so a receiver dedupes on it), ``webhook-timestamp`` (unix seconds of the attempt)
and ``webhook-signature`` (``v1,`` and the base64 HMAC-SHA256 of
``{id}.{timestamp}.{body}`` under the key in ``webhook_secret``) come with it.

Delivery is at least once and never in a job's way. The notifier builds the events
(:func:`notification_event`, :func:`job_event`) and queues them in the store's outbox,
in the same write as the notification itself, then wakes the :class:`WebhookSender`.
The sender delivers from the outbox: a 2xx answer takes the event out; another
answer, a timeout or a connection error schedules the next attempt after
:func:`retry_delay`, until ``webhook_max_age`` after the event, when it is given up.
``410 Gone`` disables the endpoint: the sender records that in the store (so it
holds across restarts), logs an error and delivers nothing more to that URL; the
events stay queued (until their max age) for the next ``webhook_url``.

While the store fails, the sender tries again every ``_STORE_RETRY`` seconds; an
outcome it could not record is delivered again once its lease in the outbox ends.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import random
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

import httpx
import orjson
import structlog
import trio

from actors import codec
from actors.dependencies import ServiceDependencies
from actors.messages import WebhooksQueued
from actors.model import Job, JobStatus, Notification, WebhookEvent
from actors.stores import StoreError
from runtime import Actor, ExitReason

__all__ = [
    "JOB_EVENT_TYPES",
    "NOTIFICATION_CREATED",
    "WebhookSender",
    "job_event",
    "notification_event",
    "retry_delay",
    "sign",
]

log = structlog.get_logger("troupe.webhooks")

# Seconds between two tries of the outbox while the store fails.
_STORE_RETRY: Final = 1.0

NOTIFICATION_CREATED: Final = "notification.created"
JOB_EVENT_TYPES: Final[Mapping[JobStatus, str]] = {
    JobStatus.COMPLETE: "job.completed",
    JobStatus.ERROR: "job.failed",
    JobStatus.ABORTED: "job.aborted",
}

CONCURRENT_DELIVERIES: Final = 8
"""The most deliveries in flight at once, and so the most due events one round of the
sender takes from the outbox; the rest stay there until a delivery ends."""
LEASE_GRACE: Final = 60.0
"""Seconds past ``webhook_timeout`` that an event taken for delivery stays leased: if
its delivery never settles (the process died), it is due again then."""


def notification_event(n: Notification, message_id: str, at: datetime) -> WebhookEvent:
    """The ``notification.created`` event of ``n`` (of the job answering message
    ``message_id``), made at ``at``: the whole notification, as the seed app keeps it."""
    data = {
        "id": n.id,
        "type": n.type.value,
        "title": n.title,
        "body": n.body,
        "user_id": n.user_id,
        "workspace_id": n.workspace_id,
        "thread_id": n.thread_id,
        "message_id": message_id,
        "job_id": n.job_id,
        "actions": [
            {
                "label": action.label,
                "kind": action.kind,
                "thread_id": action.thread_id,
                "message_id": action.message_id,
            }
            for action in n.actions
        ],
        "read_at": _time(n.read_at),
        "created_at": _time(n.created_at),
    }
    return _event(f"msg_notification_{n.id}", NOTIFICATION_CREATED, at, data)


def job_event(job: Job, content_length: int, at: datetime) -> WebhookEvent:
    """The event of ``job``'s terminal status (:data:`JOB_EVENT_TYPES`), made at ``at``.

    It carries the job's record without its content, which can be large: only
    ``content_length`` (in code points); a receiver that wants the text reads the
    job from the API. Its id is derived from the job's, so queueing it again (a
    retried notifier) queues nothing new. Raises KeyError for a running job.
    """
    data = {
        "id": job.id,
        "user_id": job.user_id,
        "workspace_id": job.workspace_id,
        "thread_id": job.thread_id,
        "message_id": job.message_id,
        "model": job.model,
        "status": job.status.value,
        "error": job.error,
        "finish_reason": job.finish_reason,
        "usage": codec.unstructure(job.usage),
        "started_at": _time(job.started_at),
        "completed_at": _time(job.completed_at),
        "content_length": content_length,
        "foreground": job.foreground,
    }
    return _event(f"msg_job_{job.id}", JOB_EVENT_TYPES[job.status], at, data)


def _event(event_id: str, event_type: str, at: datetime, data: dict[str, Any]) -> WebhookEvent:
    payload = {"type": event_type, "timestamp": _time(at), "data": data}
    return WebhookEvent(
        id=event_id,
        type=event_type,
        created_at=at,
        body=orjson.dumps(payload).decode(),
        next_attempt_at=at,
    )


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def sign(secret: str, event_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` header of one attempt: ``v1,`` and the base64
    HMAC-SHA256 of ``{event_id}.{timestamp}.{body}`` keyed by the base64-decoded
    part of ``secret`` after ``whsec_``."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.digest(key, f"{event_id}.{timestamp}.{body}".encode(), hashlib.sha256)
    return "v1," + base64.b64encode(digest).decode()


def retry_delay(attempts: int, initial: float, maximum: float, rng: random.Random) -> float:
    """How long to wait after the ``attempts``-th failed attempt (1 for the first).

    The base is ``initial``, doubled for each earlier failure and capped at
    ``maximum``; the delay is drawn uniformly from the upper half of the base
    ("equal jitter"), so retries of events that failed together spread out,
    and no delay ever exceeds ``maximum``.
    """
    base = min(maximum, initial * 2.0 ** min(attempts - 1, 64))
    return base / 2 + rng.random() * base / 2


class WebhookSender(Actor):
    """Delivers the outbox to ``webhook_url``; a static child of the service, there
    only when ``webhook_url`` is set.

    It works in rounds: give up the events past ``webhook_max_age``, then take as
    many due events as there are free delivery slots (of
    :data:`CONCURRENT_DELIVERIES`), leased, and start delivering each within
    ``webhook_timeout``. Between rounds it sleeps on trio's clock until the next
    attempt or give-up is due, or until a :class:`WebhooksQueued` or the end of a
    delivery wakes it. A delivery cut off by a stop or a crash is due again at once
    on the next start (on its lease's end if the process died): it is sent again.

    ``transport`` replaces httpx's network transport (tests); ``rng`` draws the jitter.
    """

    def __init__(
        self,
        deps: ServiceDependencies,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        config = deps.config
        if config.webhook_url is None or config.webhook_secret is None:
            raise ValueError("the webhook sender needs webhook_url and webhook_secret")
        self._deps = deps
        self._config = config
        self._url = config.webhook_url
        self._secret = config.webhook_secret
        self._max_age = timedelta(seconds=config.webhook_max_age)
        self._lease = timedelta(seconds=config.webhook_timeout + LEASE_GRACE)
        self._transport = transport
        self._rng = rng or random.Random()
        self._metrics = deps.metrics
        self._wake = trio.Event()
        # Taken from the outbox, not settled yet: what on_stop gives back.
        self._in_flight: dict[str, WebhookEvent] = {}
        # Never the URL itself: its path or query may hold a token.
        self._endpoint = httpx.URL(self._url).host

    async def on_start(self) -> None:
        self._store = await self._deps.stores.get()
        # Read from the store in the first round: None until then.
        self._disabled: bool | None = None
        self._client = httpx.AsyncClient(
            transport=self._transport, timeout=self._config.webhook_timeout, follow_redirects=False
        )
        self.context.start_task(self._run)

    async def on_stop(self, reason: ExitReason) -> None:
        try:
            # Deliveries were cut off: end their leases, so the next start sends them
            # (or, if the store fails, their leases end on their own).
            for event in self._in_flight.values():
                await self._store.reschedule_webhook(
                    event.id, event.attempts, event.next_attempt_at
                )
        except StoreError as error:
            log.warning("could not give cut-off deliveries back", error=str(error))
        finally:
            await self._client.aclose()

    async def handle(self, message: Any) -> Any:
        if isinstance(message, WebhooksQueued):
            self._wake.set()
            return None
        self.unhandled(message)

    async def _run(self) -> None:
        async with trio.open_nursery() as deliveries:
            while True:
                try:
                    due_at = await self._round(deliveries)
                except StoreError as error:
                    log.warning("the store failed; the outbox waits", error=str(error))
                    due_at = self._deps.clock.now() + timedelta(seconds=_STORE_RETRY)
                seconds = (
                    math.inf
                    if due_at is None
                    else (due_at - self._deps.clock.now()).total_seconds()
                )
                with trio.move_on_after(max(0.0, seconds)):
                    await self._wake.wait()
                # No checkpoint since the wait ended: a wake sent meanwhile is not
                # lost, and the next round reads what it announced.
                self._wake = trio.Event()

    async def _round(self, deliveries: trio.Nursery) -> datetime | None:
        """Give up expired events and start delivering due ones in ``deliveries``;
        return when the next round is due (None: only when woken). Raises StoreError."""
        if self._disabled is None:
            self._disabled = await self._store.webhook_endpoint_disabled_at(self._url) is not None
            self._metrics.webhook_endpoint_disabled.set(int(self._disabled))
            if self._disabled:
                log.error(
                    "webhook endpoint disabled: it answered 410 Gone; set another webhook_url "
                    "to deliver again",
                    endpoint=self._endpoint,
                )
        now = self._deps.clock.now()
        # At its max age to the microsecond, an event is given up: "before" is strict.
        expired = await self._store.delete_webhooks_created_before(
            now - self._max_age + timedelta(microseconds=1)
        )
        if expired:
            self._given_up(expired)
        free = CONCURRENT_DELIVERIES - len(self._in_flight)
        if not self._disabled and free > 0:
            for event in await self._store.take_due_webhooks(now, free, now + self._lease):
                self._in_flight[event.id] = event
                deliveries.start_soon(self._deliver, event)
        summary = await self._store.webhook_outbox_summary()
        self._metrics.webhook_outbox_depth.set(summary.depth)
        if summary.oldest_created_at is None or summary.next_attempt_at is None:
            return None
        give_up_at = summary.oldest_created_at + self._max_age
        if self._disabled or len(self._in_flight) == CONCURRENT_DELIVERIES:
            return give_up_at  # the end of a delivery wakes the next round
        return min(summary.next_attempt_at, give_up_at)

    async def _deliver(self, event: WebhookEvent) -> None:
        outcome = await self._post(event)
        try:
            await self._settle(event, outcome, self._deps.clock.now())
        except StoreError as error:
            log.warning(
                "the store failed; the delivery is made again when its lease ends",
                webhook_id=event.id,
                error=str(error),
            )
        self._in_flight.pop(event.id, None)
        self._wake.set()

    async def _post(self, event: WebhookEvent) -> int | str:
        """One attempt: the answer's status code, or what went wrong instead."""
        timestamp = int(self._deps.clock.now().timestamp())
        headers = {
            "webhook-id": event.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._secret, event.id, timestamp, event.body),
            "content-type": "application/json",
        }
        # httpx's timeouts are per phase and belong to its network transport; this
        # one bounds the whole attempt, whatever the transport.
        with trio.move_on_after(self._config.webhook_timeout):
            try:
                # Streamed, so the answer's body is never read: only its status counts.
                async with self._client.stream(
                    "POST", self._url, content=event.body.encode(), headers=headers
                ) as response:
                    return response.status_code
            except httpx.HTTPError as error:
                return type(error).__name__
        return "timeout"

    async def _settle(self, event: WebhookEvent, outcome: int | str, now: datetime) -> None:
        """Record the outcome of an attempt in the outbox."""
        if isinstance(outcome, int) and 200 <= outcome < 300:
            self._metrics.webhook_deliveries.labels("delivered").inc()
            await self._store.remove_webhook(event.id)
            return
        self._metrics.webhook_deliveries.labels("failed").inc()
        if outcome == 410:
            await self._disable(now)
            # Kept as it was, due at once for the next endpoint.
            await self._store.reschedule_webhook(event.id, event.attempts, event.next_attempt_at)
            return
        attempts = event.attempts + 1
        delay = retry_delay(
            attempts, self._config.webhook_retry_initial, self._config.webhook_retry_max, self._rng
        )
        next_attempt_at = now + timedelta(seconds=delay)
        if next_attempt_at >= event.created_at + self._max_age:
            await self._store.remove_webhook(event.id)
            self._given_up([event.id])
            return
        await self._store.reschedule_webhook(event.id, attempts, next_attempt_at)
        log.warning(
            "webhook delivery failed",
            webhook_id=event.id,
            type=event.type,
            attempt=attempts,
            outcome=outcome,
            retry_in=round(delay, 3),
        )

    async def _disable(self, at: datetime) -> None:
        # Set before the first await, so no round starts another delivery meanwhile.
        if self._disabled:
            return
        self._disabled = True
        self._metrics.webhook_endpoint_disabled.set(1)
        await self._store.disable_webhook_endpoint(self._url, at)
        log.error(
            "webhook endpoint answered 410 Gone: delivery stops and events stay queued; "
            "set another webhook_url to deliver again",
            endpoint=self._endpoint,
        )

    def _given_up(self, event_ids: Sequence[str]) -> None:
        self._metrics.webhook_deliveries.labels("given_up").inc(len(event_ids))
        log.error("webhooks given up after webhook_max_age", webhook_ids=list(event_ids))
