"""Notifications over real HTTP: list, read, read-all, delete, live events and muting."""

from __future__ import annotations

from typing import Any

import httpx
import trio

from tests.http.conftest import (
    ApiServer,
    OpenApiServer,
    SseRead,
    chat_body,
    read_sse,
    wait_for_status,
    wait_until,
)

NOTIFICATION_KEYS = {
    "id",
    "thread_id",
    "job_id",
    "type",
    "title",
    "body",
    "actions",
    "read_at",
    "created_at",
}


async def finish_job(
    client: httpx.AsyncClient,
    server: ApiServer,
    thread_id: str,
    *,
    user: str = "alice",
    **extra: Any,
) -> dict[str, Any]:
    """Run a job in ``thread_id`` to its end without watching it; the final job JSON."""
    headers = server.auth(user)
    body = chat_body(thread_id=thread_id, message_id=f"msg-{thread_id}", **extra)
    created = await client.post("/v1/jobs", json=body, headers=headers)
    assert created.status_code == 202, created.text
    return await wait_for_status(client, created.json()["id"], headers)


async def notifications(
    client: httpx.AsyncClient, server: ApiServer, query: str = "", *, user: str = "alice"
) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/notifications{query}", headers=server.auth(user))
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["notifications"]
    return found


async def notification_for(
    client: httpx.AsyncClient, server: ApiServer, job_id: str, *, user: str = "alice"
) -> dict[str, Any]:
    """Wait until the notification of ``job_id`` is listed; it is created just after the job
    ends."""

    async def find() -> dict[str, Any] | None:
        listed = await notifications(client, server, user=user)
        return next((n for n in listed if n["job_id"] == job_id), None)

    found: dict[str, Any] = await wait_until(find)
    return found


async def test_completion_and_failure_are_listed_with_their_shape(api_server: ApiServer) -> None:
    async with api_server.client() as client:
        done = await finish_job(client, api_server, "t-ok")
        assert done["status"] == "complete"
        completed = await notification_for(client, api_server, done["id"])
        assert set(completed) == NOTIFICATION_KEYS
        assert completed["type"] == "ai.background.complete"
        assert completed["title"] == "Background response completed"
        assert completed["body"] == "Your background AI response is ready in thread t-ok"
        assert completed["thread_id"] == "t-ok"
        assert completed["read_at"] is None
        assert completed["actions"] == [
            {
                "label": "Open chat",
                "kind": "open_chat",
                "thread_id": "t-ok",
                "message_id": "msg-t-ok",
            }
        ]

        failed_job = await finish_job(
            client, api_server, "t-bad", params={"simulate_error": "model fell over"}
        )
        assert failed_job["status"] == "error"
        failed = await notification_for(client, api_server, failed_job["id"])
        assert failed["type"] == "ai.background.error"
        assert failed["title"] == "Background response failed"
        assert failed["body"].startswith("Failed: ")
        assert "model fell over" in failed["body"]


async def test_list_unread_and_limit(api_server: ApiServer) -> None:
    async with api_server.client() as client:
        jobs = [await finish_job(client, api_server, f"t-{n}") for n in range(3)]
        for job in jobs:
            await notification_for(client, api_server, job["id"])

        listed = await notifications(client, api_server)
        assert [n["job_id"] for n in listed] == [job["id"] for job in reversed(jobs)]
        assert len(await notifications(client, api_server, "?limit=2")) == 2

        read = await client.post(
            f"/v1/notifications/{listed[0]['id']}/read", headers=api_server.auth()
        )
        assert read.status_code == 200
        unread = await notifications(client, api_server, "?unread=1")
        assert {n["id"] for n in unread} == {n["id"] for n in listed[1:]}
        assert all(n["read_at"] is None for n in unread)
        everything = await notifications(client, api_server)
        assert len(everything) == 3
        assert next(n for n in everything if n["id"] == listed[0]["id"])["read_at"] is not None

        bad_limit = await client.get("/v1/notifications?limit=many", headers=api_server.auth())
        assert bad_limit.status_code == 422
        assert bad_limit.json()["error"]["code"] == "invalid_request"


async def test_read_all_then_delete(api_server: ApiServer) -> None:
    async with api_server.client() as client:
        jobs = [await finish_job(client, api_server, f"t-{n}") for n in range(2)]
        found = [await notification_for(client, api_server, job["id"]) for job in jobs]

        read_all = await client.post("/v1/notifications/read-all", headers=api_server.auth())
        assert read_all.status_code == 200
        assert read_all.json() == {"updated": 2}
        assert await notifications(client, api_server, "?unread=1") == []
        again = await client.post("/v1/notifications/read-all", headers=api_server.auth())
        assert again.json() == {"updated": 0}

        url = f"/v1/notifications/{found[0]['id']}"
        deleted = await client.delete(url, headers=api_server.auth())
        assert deleted.status_code == 204
        assert deleted.content == b""
        gone = await client.delete(url, headers=api_server.auth())
        assert gone.status_code == 404
        assert gone.json()["error"]["code"] == "not_found"
        read_gone = await client.post(f"{url}/read", headers=api_server.auth())
        assert read_gone.status_code == 404
        assert [n["id"] for n in await notifications(client, api_server)] == [found[1]["id"]]


async def test_notifications_are_owner_scoped(api_server: ApiServer) -> None:
    async with api_server.client() as client:
        job = await finish_job(client, api_server, "t-private")
        mine = await notification_for(client, api_server, job["id"])
        url = f"/v1/notifications/{mine['id']}"

        for user, workspace in (("bob", "w1"), ("alice", "w2")):
            stranger = api_server.auth(user, workspace)
            listed = await client.get("/v1/notifications", headers=stranger)
            assert listed.json() == {"notifications": []}
            read = await client.post(f"{url}/read", headers=stranger)
            assert read.status_code == 404
            deleted = await client.delete(url, headers=stranger)
            assert deleted.status_code == 404
            read_all = await client.post("/v1/notifications/read-all", headers=stranger)
            assert read_all.json() == {"updated": 0}

        still = await notifications(client, api_server, "?unread=1")
        assert [n["id"] for n in still] == [mine["id"]]


async def test_events_deliver_a_new_notification_live(
    open_api_server: OpenApiServer,
) -> None:
    # Slow enough that the event stream is subscribed long before the job ends.
    async with (
        open_api_server(simulated_tokens_per_second=150.0) as server,
        server.client() as client,
    ):
        reads: list[SseRead] = []
        connected = trio.Event()

        async def listen() -> None:
            headers = server.auth()
            async with client.stream("GET", "/v1/notifications/events", headers=headers) as r:
                assert r.status_code == 200
                connected.set()
                reads.append(await read_sse(r, until=lambda e: e.event == "notification"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(listen)
            with trio.fail_after(5):
                await connected.wait()
            # Bob's notification must not reach Alice's stream.
            await finish_job(client, server, "t-bob", user="bob")
            job = await finish_job(client, server, "t-live")

        pushed = reads[0].named("notification")
        assert len(pushed) == 1
        notification = pushed[0].json()
        assert set(notification) == NOTIFICATION_KEYS
        assert notification["job_id"] == job["id"]
        assert notification["thread_id"] == "t-live"
        listed = await notification_for(client, server, job["id"])
        assert listed["id"] == notification["id"]


async def test_a_muted_thread_gets_no_notifications(api_server: ApiServer) -> None:
    async with api_server.client() as client:
        headers = api_server.auth()
        mute = await client.put("/v1/threads/t-muted/mute", json={"muted": True}, headers=headers)
        assert mute.status_code == 200
        assert mute.json() == {"thread_id": "t-muted", "muted": True}

        silent = await finish_job(client, api_server, "t-muted")
        loud = await finish_job(client, api_server, "t-loud")
        # The notifier handles the job ends in order: once the second one is listed, the
        # first was decided too.
        await notification_for(client, api_server, loud["id"])
        listed = await notifications(client, api_server)
        assert [n["job_id"] for n in listed] == [loud["id"]]
        assert silent["id"] not in {n["job_id"] for n in listed}

        unmute = await client.put(
            "/v1/threads/t-muted/mute", json={"muted": False}, headers=headers
        )
        assert unmute.json() == {"thread_id": "t-muted", "muted": False}
        heard = await finish_job(client, api_server, "t-muted")
        assert (await notification_for(client, api_server, heard["id"]))["thread_id"] == "t-muted"

        # Muting is per owner: Bob's thread of the same name still notifies.
        await client.put("/v1/threads/t-same/mute", json={"muted": True}, headers=headers)
        bobs = await finish_job(client, api_server, "t-same", user="bob")
        assert (await notification_for(client, api_server, bobs["id"], user="bob"))["job_id"]

        bad = await client.put("/v1/threads/t-x/mute", json={"muted": "yes"}, headers=headers)
        assert bad.status_code == 422
        assert bad.json()["error"]["code"] == "invalid_request"
