"""Webhooks: signing, backoff, the sender's delivery rules and the notifier's events.

The sender runs under trio's mock clock, delivering through an ``httpx.MockTransport``
whose handler stands for the receiver; the notifier's events are read from the outbox.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import httpx
import orjson
import pytest
import trio
from trio.testing import MockClock

from actors.clock import TrioWallClock
from actors.dependencies import NOTIFIER, SERVICE, WEBHOOKS, ServiceDependencies
from actors.messages import JobFinished, WebhooksQueued
from actors.model import Job, JobStatus, Notification, WebhookEvent
from actors.notifications.notifier import Notifier
from actors.notifications.webhooks import (
    CONCURRENT_DELIVERIES,
    WebhookSender,
    retry_delay,
    sign,
)
from actors.store_keeper import StoreKeeper
from actors.stores import Store, StoreError, StoreFactory
from actors.upstream import SimulatedUpstream
from runtime import ActorSystem, ChildSpec, SupervisorSpec, open_system
from tests.service.kit import ALICE, config
from tests.webhook_receiver import SECRET, verify

URL = "https://hooks.example.com/troupe?token=t"
INITIAL, MAXIMUM, TIMEOUT, MAX_AGE = 1.0, 8.0, 2.0, 60.0

# -- signing and backoff ------------------------------------------------------------


def _hmac_sha256(key: bytes, message: bytes) -> bytes:
    """HMAC-SHA256 as RFC 2104 defines it, without the hmac module."""
    block = 64
    key = key.ljust(block, b"\0")
    inner = hashlib.sha256(bytes(k ^ 0x36 for k in key) + message).digest()
    return hashlib.sha256(bytes(k ^ 0x5C for k in key) + inner).digest()


def test_a_signature_is_the_standard_webhooks_one() -> None:
    # The example of the Standard Webhooks specification, and its published result.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    msg_id, timestamp, body = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, '{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    by_hand = _hmac_sha256(
        base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        b"%s.%d.%s" % (msg_id.encode(), timestamp, body.encode()),
    )

    assert "v1," + base64.b64encode(by_hand).decode() == expected
    assert sign(secret, msg_id, timestamp, body) == expected
    assert sign(secret, msg_id, timestamp + 1, body) != expected


class _FixedRandom(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


# The base of each step for initial 5 s and max 3600 s: 5 s doubled, capped.
_BASES = [5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]


def test_retry_delays_double_from_the_initial_one_up_to_the_max() -> None:
    lowest = [retry_delay(n, 5.0, 3600.0, _FixedRandom(0.0)) for n in range(1, 13)]
    highest = [retry_delay(n, 5.0, 3600.0, _FixedRandom(1.0)) for n in range(1, 13)]

    assert lowest == [base / 2 for base in _BASES]
    assert highest == _BASES
    assert retry_delay(10_000, 5.0, 3600.0, _FixedRandom(1.0)) == 3600.0


def test_retry_delays_are_jittered_within_the_upper_half_of_each_step() -> None:
    rng = random.Random(7)
    for attempts, base in enumerate(_BASES, start=1):
        delays = [retry_delay(attempts, 5.0, 3600.0, rng) for _ in range(200)]
        assert all(base / 2 <= d <= base for d in delays)
        assert len(set(delays)) == 200  # jittered: no two alike


# -- the sender ------------------------------------------------------------------


Answer = Callable[[httpx.Request], Awaitable[int]]


@attrs.define
class Receiver:
    """The MockTransport's handler: records each request at trio's time, answers ``answer``."""

    answer: Answer
    requests: list[tuple[float, httpx.Request]] = attrs.field(factory=list)
    in_flight: int = 0
    most_in_flight: int = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((trio.current_time(), request))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return httpx.Response(await self.answer(request))
        finally:
            self.in_flight -= 1

    def times(self) -> list[float]:
        return [at for at, _ in self.requests]


def answering(status: int, after: float = 0.0) -> Answer:
    async def answer(_request: httpx.Request) -> int:
        await trio.sleep(after)
        return status

    return answer


async def hang(_request: httpx.Request) -> int:
    await trio.sleep_forever()


@attrs.define
class Harness:
    system: ActorSystem
    store: Store
    deps: ServiceDependencies

    def wake(self) -> None:
        sender = self.system.lookup(WEBHOOKS)
        assert sender is not None
        sender.tell_nowait(WebhooksQueued())

    def count(self, result: str) -> float:
        value = self.deps.metrics.registry.get_sample_value(
            "troupe_webhook_deliveries_total", {"result": result}
        )
        return value or 0.0

    def gauge(self, name: str) -> float | None:
        return self.deps.metrics.registry.get_sample_value(name)


@asynccontextmanager
async def running_sender(
    stores: StoreFactory,
    receiver: Receiver,
    *,
    rng: random.Random | None = None,
    url: str = URL,
    **overrides: Any,
) -> AsyncIterator[Harness]:
    """The store keeper and a webhook sender, as in the service, on ``stores``."""
    settings: dict[str, Any] = {
        "webhook_url": url,
        "webhook_secret": SECRET,
        "webhook_retry_initial": INITIAL,
        "webhook_retry_max": MAXIMUM,
        "webhook_timeout": TIMEOUT,
        "webhook_max_age": MAX_AGE,
        **overrides,
    }
    deps = ServiceDependencies(
        config(stores.config.data_dir, **settings), stores, SimulatedUpstream(), TrioWallClock()
    )
    sender = functools.partial(
        WebhookSender,
        deps,
        transport=httpx.MockTransport(receiver),
        rng=rng or _FixedRandom(1.0),
    )
    spec = SupervisorSpec(
        children=[
            ChildSpec("store", functools.partial(StoreKeeper, deps)),
            ChildSpec("webhooks", sender),
        ]
    )
    async with open_system() as system:
        await system.spawn_supervisor(spec, name=SERVICE)
        yield Harness(system, await stores.get(), deps)


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """A memory store that outlives each sender run of a test, as a database would."""
    factory = StoreFactory(config(tmp_path))
    yield factory
    await factory.aclose()


def event(at: datetime, name: str = "msg_1") -> WebhookEvent:
    body = orjson.dumps({"type": "job.completed", "timestamp": at.isoformat(), "data": {}})
    return WebhookEvent(name, "job.completed", at, body.decode(), next_attempt_at=at)


def now_of(harness: Harness) -> datetime:
    return harness.deps.clock.now()


async def taken(store: Store) -> list[WebhookEvent]:
    """Every queued event, as it is; taken, so read it last."""
    far = datetime.now().astimezone() + timedelta(days=365)
    return await store.take_due_webhooks(far, 1000, far)


async def test_a_delivery_is_signed_and_a_2xx_takes_it_out_of_the_outbox(
    autojump_clock: MockClock, stores: StoreFactory
) -> None:
    receiver = Receiver(answering(200))
    async with running_sender(stores, receiver) as harness:
        queued = event(now_of(harness))
        await harness.store.enqueue_webhooks([queued])
        harness.wake()
        await trio.sleep(1)

        [(_, request)] = receiver.requests
        assert (request.method, str(request.url)) == ("POST", URL)
        assert request.headers["webhook-id"] == queued.id
        assert request.headers["content-type"] == "application/json"
        timestamp = int(request.headers["webhook-timestamp"])
        assert abs(timestamp - now_of(harness).timestamp()) <= 2
        assert request.headers["webhook-signature"] == sign(
            SECRET, queued.id, timestamp, queued.body
        )
        assert request.content == queued.body.encode()
        assert verify(SECRET, request.headers, request.content, now=timestamp) == orjson.loads(
            queued.body
        )
        assert (await harness.store.webhook_outbox_summary()).depth == 0
        assert harness.count("delivered") == 1
        assert harness.count("failed") == 0
        assert harness.gauge("troupe_webhook_outbox_depth") == 0


async def test_a_tell_wakes_an_idle_sender_at_once(
    autojump_clock: MockClock, stores: StoreFactory
) -> None:
    receiver = Receiver(answering(204))
    async with running_sender(stores, receiver) as harness:
        await trio.sleep(3600)  # idle: an empty outbox has no timer
        woken_at = trio.current_time()
        await harness.store.enqueue_webhooks([event(now_of(harness))])
        harness.wake()
        await trio.sleep(1)

    assert receiver.times() == [woken_at]


@pytest.mark.parametrize("jitter", [0.0, 1.0])
async def test_failed_attempts_back_off_doubling_until_the_max_age_gives_them_up(
    autojump_clock: MockClock, stores: StoreFactory, jitter: float
) -> None:
    receiver = Receiver(answering(500))
    async with running_sender(stores, receiver, rng=_FixedRandom(jitter)) as harness:
        start = trio.current_time()
        await harness.store.enqueue_webhooks([event(now_of(harness))])
        harness.wake()
        await trio.sleep(2 * MAX_AGE)

        summary = await harness.store.webhook_outbox_summary()
        given_up, failed = harness.count("given_up"), harness.count("failed")

    waits = [b - a for a, b in zip([start, *receiver.times()], receiver.times(), strict=False)]
    # Steps of 1, 2, 4 and then 8 s, each waited in full or in half, until the next
    # attempt would fall past the 60 s max age.
    steps = [0.0, 1, 2, 4, *[8] * 20]
    expected: list[float] = []
    for step in steps:
        wait = step * (0.5 + jitter / 2)
        if sum(expected) + wait >= MAX_AGE:
            break
        expected.append(wait)
    assert waits == pytest.approx(expected, abs=1e-3)
    assert summary.depth == 0
    assert (failed, given_up) == (len(expected), 1)
    assert {r.headers["webhook-id"] for _, r in receiver.requests} == {"msg_1"}


async def test_a_delivery_that_takes_too_long_is_a_failed_attempt(
    autojump_clock: MockClock, stores: StoreFactory
) -> None:
    receiver = Receiver(hang)
    async with running_sender(stores, receiver) as harness:
        start = trio.current_time()
        await harness.store.enqueue_webhooks([event(now_of(harness))])
        harness.wake()
        await trio.sleep(TIMEOUT + INITIAL + 0.5)

        [queued] = await taken(harness.store)

    # Cut off after the timeout, tried again one (full-jitter) step later.
    assert [at - start for at in receiver.times()] == pytest.approx(
        [0, TIMEOUT + INITIAL], abs=1e-3
    )
    assert queued.attempts == 1


async def test_an_event_past_its_max_age_is_given_up_untried(
    autojump_clock: MockClock, stores: StoreFactory
) -> None:
    receiver = Receiver(answering(200))
    async with running_sender(stores, receiver) as harness:
        now = now_of(harness)
        old = event(now - timedelta(seconds=MAX_AGE), "msg_old")
        fresh = event(now - timedelta(seconds=MAX_AGE - 1), "msg_fresh")
        # A sender that was down meanwhile: due long ago, never tried.
        await harness.store.enqueue_webhooks([old, fresh])
        harness.wake()
        await trio.sleep(1)

        assert [r.headers["webhook-id"] for _, r in receiver.requests] == ["msg_fresh"]
        assert (harness.count("given_up"), harness.count("delivered")) == (1, 1)


async def test_410_gone_disables_the_endpoint_across_restarts_and_keeps_the_events(
    autojump_clock: MockClock, stores: StoreFactory
) -> None:
    gone = Receiver(answering(410))
    async with running_sender(stores, gone) as harness:
        await harness.store.enqueue_webhooks([event(now_of(harness), "msg_1")])
        harness.wake()
        await trio.sleep(1)
        await harness.store.enqueue_webhooks([event(now_of(harness), "msg_2")])
        harness.wake()
        await trio.sleep(30)

        assert [r.headers["webhook-id"] for _, r in gone.requests] == ["msg_1"]
        assert await harness.store.webhook_endpoint_disabled_at(URL) is not None
        assert (await harness.store.webhook_outbox_summary()).depth == 2
        assert harness.gauge("troupe_webhook_endpoint_disabled") == 1
        assert harness.count("failed") == 1

    restarted = Receiver(answering(200))
    async with running_sender(stores, restarted) as harness:
        await trio.sleep(30)
        assert restarted.requests == []
        assert harness.gauge("troupe_webhook_endpoint_disabled") == 1

    elsewhere = Receiver(answering(200))
    async with running_sender(stores, elsewhere, url=URL + "&v=2") as harness:
        await trio.sleep(1)
        assert sorted(r.headers["webhook-id"] for _, r in elsewhere.requests) == ["msg_1", "msg_2"]
        assert (await harness.store.webhook_outbox_summary()).depth == 0
        assert harness.gauge("troupe_webhook_endpoint_disabled") == 0


async def test_at_most_8_deliveries_are_in_flight_and_the_oldest_go_first(
    autojump_clock: MockClock, stores: StoreFactory
) -> None:
    receiver = Receiver(answering(200, after=1.0))
    count = 3 * CONCURRENT_DELIVERIES + 2
    async with running_sender(stores, receiver) as harness:
        start, now = trio.current_time(), now_of(harness)
        events = [
            event(now - timedelta(microseconds=count - i), f"msg_{i:03}") for i in range(count)
        ]
        await harness.store.enqueue_webhooks(events)
        harness.wake()
        await trio.sleep(60)
        assert harness.count("delivered") == count

    assert receiver.most_in_flight == CONCURRENT_DELIVERIES
    ids = [r.headers["webhook-id"] for _, r in receiver.requests]
    waves = range(0, count, CONCURRENT_DELIVERIES)
    assert [sorted(ids[i : i + CONCURRENT_DELIVERIES]) for i in waves] == [
        [e.id for e in events[i : i + CONCURRENT_DELIVERIES]] for i in waves
    ]
    # Each delivery takes a second; a slot that frees up is taken at once.
    assert [at - start for at in receiver.times()] == pytest.approx(
        [i // CONCURRENT_DELIVERIES for i in range(count)], abs=1e-3
    )


async def test_a_delivery_cut_off_by_a_stop_is_sent_at_once_on_the_next_start(
    autojump_clock: MockClock, stores: StoreFactory
) -> None:
    hanging = Receiver(hang)
    async with running_sender(stores, hanging) as harness:
        await harness.store.enqueue_webhooks([event(now_of(harness))])
        harness.wake()
        await trio.sleep(TIMEOUT / 2)
        assert len(hanging.requests) == 1

    answering_now = Receiver(answering(204))
    async with running_sender(stores, answering_now) as harness:
        restarted = trio.current_time()
        await trio.sleep(1)
        assert answering_now.times() == [restarted]
        assert (await harness.store.webhook_outbox_summary()).depth == 0


# -- the notifier's events -------------------------------------------------------------


@asynccontextmanager
async def running_notifier(
    stores: StoreFactory, **overrides: Any
) -> AsyncIterator[tuple[ActorSystem, Store]]:
    """The store keeper and the notifier, with webhooks configured unless overridden."""
    settings: dict[str, Any] = {"webhook_url": URL, "webhook_secret": SECRET, **overrides}
    deps = ServiceDependencies(
        config(stores.config.data_dir, **settings), stores, SimulatedUpstream(), TrioWallClock()
    )
    spec = SupervisorSpec(
        children=[
            ChildSpec("store", functools.partial(StoreKeeper, deps)),
            ChildSpec("notifier", functools.partial(Notifier, deps)),
        ]
    )
    async with open_system() as system:
        await system.spawn_supervisor(spec, name=SERVICE)
        yield system, await stores.get()


async def finish(
    system: ActorSystem, store: Store, status: JobStatus, *, watched: bool = False
) -> tuple[Job, Notification | None]:
    """Store a running job with some output, then tell the notifier it ended in ``status``."""
    started = datetime.now().astimezone()
    job = Job(
        id=f"job-{status.value}",
        user_id=ALICE.user_id,
        workspace_id=ALICE.workspace_id,
        thread_id="thread-9",
        message_id="msg-9",
        model="m",
        status=JobStatus.STREAMING,
        started_at=started,
        content="Hello, wörld",
    )
    await store.create_job(job)
    ended = attrs.evolve(
        job,
        content="",
        status=status,
        completed_at=started + timedelta(seconds=3),
        error="boom" if status is JobStatus.ERROR else None,
        finish_reason="stop" if status is JobStatus.COMPLETE else None,
    )
    notifier = system.lookup(NOTIFIER)
    assert notifier is not None
    note: Notification | None = await notifier.ask(JobFinished(ended, watched))
    return ended, note


async def queued_payloads(store: Store) -> list[dict[str, Any]]:
    """The queued events' payloads, by type (events made together have no order)."""
    payloads = [orjson.loads(e.body) for e in await taken(store)]
    return sorted(payloads, key=lambda payload: str(payload["type"]))


async def test_a_completed_job_queues_its_notification_and_its_status(
    stores: StoreFactory,
) -> None:
    async with running_notifier(stores) as (system, store):
        job, note = await finish(system, store, JobStatus.COMPLETE)
        assert note is not None
        payloads = await queued_payloads(store)

    assert [p["type"] for p in payloads] == ["job.completed", "notification.created"]
    status, notification = payloads[0]["data"], payloads[1]["data"]
    assert notification == {
        "id": note.id,
        "type": "ai.background.complete",
        "title": "Background response completed",
        "body": "Your background AI response is ready in thread thread-9",
        "user_id": "alice",
        "workspace_id": "ws-1",
        "thread_id": "thread-9",
        "message_id": "msg-9",
        "job_id": job.id,
        "actions": [
            {
                "label": "Open chat",
                "kind": "open_chat",
                "thread_id": "thread-9",
                "message_id": "msg-9",
            }
        ],
        "read_at": None,
        "created_at": note.created_at.isoformat(),
    }
    assert status == {
        "id": job.id,
        "user_id": "alice",
        "workspace_id": "ws-1",
        "thread_id": "thread-9",
        "message_id": "msg-9",
        "model": "m",
        "status": "complete",
        "error": None,
        "finish_reason": "stop",
        "usage": None,
        "started_at": job.started_at.isoformat(),
        "completed_at": job.completed_at.isoformat() if job.completed_at else None,
        "content_length": len("Hello, wörld"),
        "foreground": False,
    }
    assert datetime.fromisoformat(payloads[0]["timestamp"]).tzinfo is not None


@pytest.mark.parametrize(
    ("status", "watched", "types"),
    [
        (JobStatus.ERROR, False, ["job.failed", "notification.created"]),
        (JobStatus.ABORTED, False, ["job.aborted"]),
        (JobStatus.COMPLETE, True, ["job.completed"]),
    ],
)
async def test_every_job_end_queues_its_status_and_only_notified_ones_their_notification(
    stores: StoreFactory, status: JobStatus, watched: bool, types: list[str]
) -> None:
    async with running_notifier(stores) as (system, store):
        await finish(system, store, status, watched=watched)
        payloads = await queued_payloads(store)

    assert [p["type"] for p in payloads] == types
    assert payloads[0]["data"]["status"] == status.value


async def test_a_retried_job_end_queues_nothing_twice(stores: StoreFactory) -> None:
    async with running_notifier(stores) as (system, store):
        job, _ = await finish(system, store, JobStatus.COMPLETE)
        notifier = system.lookup(NOTIFIER)
        assert notifier is not None
        assert await notifier.ask(JobFinished(job, False)) is None
        payloads = await queued_payloads(store)

    assert [p["type"] for p in payloads] == ["job.completed", "notification.created"]


async def test_without_a_webhook_url_nothing_is_queued(stores: StoreFactory) -> None:
    async with running_notifier(stores, webhook_url=None, webhook_secret=None) as (system, store):
        _, note = await finish(system, store, JobStatus.COMPLETE)
        assert note is not None
        assert await queued_payloads(store) == []


async def test_a_store_outage_holds_deliveries_back_without_a_crash(
    autojump_clock: MockClock, stores: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the store fails the sender waits, then delivers what the outbox holds;
    a delivery whose outcome it could not record is made again once its lease ends."""
    store = await stores.get()
    down = True

    for name in ("webhook_endpoint_disabled_at", "take_due_webhooks", "remove_webhook"):
        real = getattr(type(store), name)

        async def call(self: Store, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
            if down:
                raise StoreError("store down")
            return await _real(self, *args, **kwargs)

        monkeypatch.setattr(type(store), name, call)

    async def answer(_request: httpx.Request) -> int:
        nonlocal down
        # The first delivery goes through, and the store fails before it is recorded.
        down = len(receiver.requests) == 1
        await trio.lowlevel.checkpoint()
        return 200

    receiver = Receiver(answer)
    async with running_sender(stores, receiver, webhook_max_age=3600.0) as harness:
        queued = event(now_of(harness))
        await harness.store.enqueue_webhooks([queued])
        harness.wake()
        await trio.sleep(10)
        assert receiver.requests == []
        down = False
        await trio.sleep(2)  # the next try of the outbox
        assert len(receiver.requests) == 1
        down = False
        await trio.sleep(TIMEOUT + 120)
        node = harness.system.snapshot().find(WEBHOOKS)
        depth = (await harness.store.webhook_outbox_summary()).depth

    assert node is not None and node.restarts == 0
    assert [request.headers["webhook-id"] for _, request in receiver.requests] == [queued.id] * 2
    assert depth == 0
