"""Webhooks end to end: a real server delivers to a real receiver, which checks every
signature with the README's own code (``examples/verify_webhook.py``)."""

from __future__ import annotations

from typing import Any

import trio

from actors.notifications.webhooks import CONCURRENT_DELIVERIES
from tests.fake_upstream import FakeUpstream, Script
from tests.http.conftest import OpenApiServer, chat_body, fake_settings, wait_for_status
from tests.webhook_receiver import HANG, SECRET, WebhookReceiver

FAST_RETRIES: dict[str, Any] = {
    "webhook_secret": SECRET,
    "webhook_retry_initial": 0.05,
    "webhook_retry_max": 0.2,
}
ANSWER = "Hello from fake"


async def test_every_event_arrives_verified_and_once_by_id_after_two_refusals(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("hang", Script.stream().content("partial").hang())
    async with WebhookReceiver.serve([500, 500, 204]) as receiver:
        settings = fake_settings(fake_upstream, webhook_url=receiver.url, **FAST_RETRIES)
        async with open_api_server(store="sqlite", **settings) as server:
            headers = server.auth()
            async with server.client() as client:
                # Nobody polls these jobs: a poll would count as watching, and a
                # watched job notifies nobody.
                done = await client.post(
                    "/v1/jobs", json=chat_body(thread_id="t-1", message_id="m-1"), headers=headers
                )
                hung = await client.post(
                    "/v1/jobs", json=chat_body(model="hang", thread_id="t-2"), headers=headers
                )
                aborted = await client.post(f"/v1/jobs/{hung.json()['id']}/abort", headers=headers)
                assert aborted.json()["aborted"] is True
                await receiver.wait_until(lambda: len(receiver.accepted()) == 3)
                await trio.sleep(0.5)  # and nothing more comes

    assert all(d.payload is not None for d in receiver.deliveries), "a signature failed"
    refused = receiver.deliveries[:2]
    assert [d.answer for d in refused] == [500, 500]
    for first in refused:
        # Tried again as the same event: same id, same body.
        again = [d for d in receiver.deliveries[2:] if d.webhook_id == first.webhook_id]
        assert again and all(d.body == first.body for d in again)
    accepted = receiver.accepted()
    by_type = {payload["type"]: payload["data"] for payload in accepted.values()}
    assert len(accepted) == len(by_type) == 3
    done_id, hung_id = done.json()["id"], hung.json()["id"]
    completed, note, gone = (
        by_type["job.completed"],
        by_type["notification.created"],
        by_type["job.aborted"],
    )
    assert (completed["id"], completed["status"], completed["content_length"]) == (
        done_id,
        "complete",
        len(ANSWER),
    )
    assert (completed["thread_id"], completed["message_id"], completed["user_id"]) == (
        "t-1",
        "m-1",
        "alice",
    )
    assert (note["job_id"], note["type"], note["message_id"]) == (
        done_id,
        "ai.background.complete",
        "m-1",
    )
    assert note["actions"] == [
        {"label": "Open chat", "kind": "open_chat", "thread_id": "t-1", "message_id": "m-1"}
    ]
    assert (gone["id"], gone["status"], gone["thread_id"]) == (hung_id, "aborted", "t-2")


async def test_queued_events_survive_a_restart(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    async with WebhookReceiver.serve([503]) as receiver:
        settings = fake_settings(fake_upstream, webhook_url=receiver.url, **FAST_RETRIES)
        async with open_api_server(store="sqlite", **settings) as server, server.client() as client:
            await client.post("/v1/jobs", json=chat_body(), headers=server.auth())
            await receiver.wait_until(lambda: len({d.webhook_id for d in receiver.deliveries}) == 2)
        refused = {d.webhook_id for d in receiver.deliveries}
        assert receiver.accepted() == {}

        receiver.answers = [204]
        async with open_api_server(store="sqlite", **settings):
            await receiver.wait_until(lambda: set(receiver.accepted()) == refused)

    assert sorted(p["type"] for p in receiver.accepted().values()) == [
        "job.completed",
        "notification.created",
    ]


async def test_a_hanging_receiver_never_slows_a_job(open_api_server: OpenApiServer) -> None:
    async with (
        WebhookReceiver.serve([HANG]) as receiver,
        open_api_server(
            webhook_url=receiver.url, webhook_secret=SECRET, webhook_timeout=30.0
        ) as server,
    ):
        headers = server.auth()

        async def run_job(number: int) -> float:
            started = trio.current_time()
            body = chat_body(thread_id=f"t-{number}")
            created = await client.post("/v1/jobs", json=body, headers=headers)
            await wait_for_status(client, created.json()["id"], headers, ("complete",))
            return trio.current_time() - started

        async with server.client() as client:
            for number in range(CONCURRENT_DELIVERIES):
                await run_job(number)
            # Every delivery the sender may have in flight now hangs.
            await receiver.wait_until(lambda: receiver.hanging == CONCURRENT_DELIVERIES)
            took = [await run_job(number) for number in range(100, 105)]

    # A job that waited for a delivery would take the 30 s timeout, and one whose
    # notifier was held would take the registry's 1 s wait for it; these take
    # what the model takes (47 tokens at 2000 a second).
    assert max(took) < 1.0, took
    assert receiver.hanging == CONCURRENT_DELIVERIES
