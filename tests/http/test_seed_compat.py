"""What the seed app's own client sees: exact answer bytes, polling as watching, and the
OpenRouter attribution headers."""

from __future__ import annotations

from typing import Any

import httpx
import trio

from tests.fake_upstream import FakeUpstream, Script
from tests.http.conftest import ApiServer, OpenApiServer, fake_settings, wait_until

STREAM = "/api/openrouter/stream"
# A running job's keys, in the seed's order; completedAt and error are left out while unset.
RUNNING_KEYS = [
    "id",
    "status",
    "threadId",
    "messageId",
    "model",
    "chunksReceived",
    "startedAt",
    "content",
]


def seed_chat(model: str, **changes: Any) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "modalities": ["text"],
        "stream": True,
        "_background": True,
        "_threadId": "thread-1",
        "_messageId": "message-1",
    }
    return {**body, **changes}


async def start(client: httpx.AsyncClient, server: ApiServer, model: str) -> str:
    response = await client.post(STREAM, json=seed_chat(model), headers=server.auth())
    assert response.status_code == 200, response.text
    job_id: str = response.json()["jobId"]
    return job_id


async def status_of(client: httpx.AsyncClient, server: ApiServer, job_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/jobs/{job_id}/status", headers=server.auth())
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_status_leaves_unset_fields_out_in_the_seed_order(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("hang", Script.stream().content("so far").hang())
    fake_upstream.script("ok", Script.text("done"))
    fake_upstream.script("bad", Script.stream().content("half").error(502, "provider down"))
    async with open_api_server(**fake_settings(fake_upstream)) as server, server.client() as client:
        running_id = await start(client, server, "hang")

        async def has_content() -> bool:
            return bool((await status_of(client, server, running_id))["content"] == "so far")

        await wait_until(has_content)
        running = await client.get(f"/api/jobs/{running_id}/status", headers=server.auth())
        assert list(running.json()) == RUNNING_KEYS
        assert b"null" not in running.content

        for model, extra in (("ok", ["completedAt"]), ("bad", ["completedAt", "error"])):
            job_id = await start(client, server, model)

            async def ended(job_id: str = job_id) -> dict[str, Any] | None:
                body = await status_of(client, server, job_id)
                return body if body["status"] != "streaming" else None

            body = await wait_until(ended)
            assert list(body) == [*RUNNING_KEYS[:-1], *extra, "content"], model
            assert isinstance(body["completedAt"], int)
        assert body["error"]


async def test_seed_answers_are_byte_for_byte(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("hang", Script.stream().content("x").hang())
    settings = fake_settings(fake_upstream, max_concurrent_jobs=1)
    async with open_api_server(**settings) as server, server.client() as client:
        no_ids = seed_chat("hang")
        del no_ids["_messageId"]
        missing = await client.post(STREAM, json=no_ids, headers=server.auth())
        assert missing.status_code == 400
        assert (
            missing.content
            == b'{"error":"Missing _threadId or _messageId for background streaming"}'
        )

        not_found = await client.get("/api/jobs/nope/status", headers=server.auth())
        assert not_found.status_code == 404
        assert not_found.content == b'{"error":"Job not found or unauthorized"}'

        not_aborted = await client.post("/api/jobs/nope/abort", headers=server.auth())
        assert not_aborted.status_code == 200
        assert not_aborted.content == (
            b'{"aborted":false,"message":"Job not found, unauthorized, or already complete"}'
        )

        await start(client, server, "hang")
        busy = await client.post(STREAM, json=seed_chat("hang"), headers=server.auth("bob"))
        assert busy.status_code == 503
        assert busy.content == b'{"error":"Server busy, try again later"}'
        for answer in (missing, not_found, not_aborted, busy):
            assert answer.headers["content-type"] == "application/json"


async def test_a_job_that_ends_while_its_owner_polls_it_notifies_nobody(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    slow = Script.stream().content("Hello").sleep(1.0).content(" world").finish().usage().done()
    fake_upstream.script("slow", slow)
    settings = fake_settings(fake_upstream, watch_window=3.0)
    async with open_api_server(**settings) as server, server.client() as client:
        seed_polled = await start(client, server, "slow")
        v1_polled = await start(client, server, "slow")
        unwatched = await start(client, server, "slow")

        async def poll(url: str) -> None:
            # As the seed's client does (every second), until the job has ended.
            while True:
                answer = await client.get(url, headers=server.auth())
                if answer.json()["status"] not in ("queued", "streaming"):
                    return
                await trio.sleep(0.2)

        async def listed_complete() -> bool:
            listed = await client.get("/v1/jobs?status=complete", headers=server.auth())
            return len(listed.json()["jobs"]) == 3

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll, f"/api/jobs/{seed_polled}/status")
            nursery.start_soon(poll, f"/v1/jobs/{v1_polled}")
        # Listing is not polling a job: the third one ends unwatched.
        await wait_until(listed_complete)
        notes = (await client.get("/v1/notifications", headers=server.auth())).json()

    assert [note["job_id"] for note in notes["notifications"]] == [unwatched]


async def test_the_upstream_gets_the_attribution_headers(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    settings = fake_settings(
        fake_upstream, upstream_referer="https://chat.example.com", upstream_title="Example Chat"
    )
    async with open_api_server(**settings) as server, server.client() as client:
        await start(client, server, "m")

        async def sent() -> bool:
            return bool(fake_upstream.requests)

        await wait_until(sent)

    headers = fake_upstream.requests[-1].headers
    assert headers["http-referer"] == "https://chat.example.com"
    assert headers["x-title"] == "Example Chat"
