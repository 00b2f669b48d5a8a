"""The seed app's routes over real HTTP, with the seed's exact status codes and shapes."""

from __future__ import annotations

from typing import Any

import httpx
import trio

from tests.fake_upstream import FakeUpstream, Script
from tests.http.conftest import ApiServer, OpenApiServer, fake_settings, read_sse, wait_until

ANSWER = "Background answers keep streaming after the tab closes"
STATUS_KEYS = {
    "id",
    "status",
    "threadId",
    "messageId",
    "model",
    "chunksReceived",
    "startedAt",
    "completedAt",
    "error",
    "content",
}
NOT_FOUND = {"error": "Job not found or unauthorized"}
NOT_ABORTED = {"aborted": False, "message": "Job not found, unauthorized, or already complete"}


def seed_body(model: str = "m", *, background: bool = True, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "_threadId": "thread-9",
        "_messageId": "message-9",
        **extra,
    }
    if background:
        body["_background"] = True
    return body


async def seed_status(
    client: httpx.AsyncClient, server: ApiServer, job_id: str, user: str = "alice"
) -> httpx.Response:
    return await client.get(f"/api/jobs/{job_id}/status", headers=server.auth(user))


async def wait_for_seed_status(
    client: httpx.AsyncClient, server: ApiServer, job_id: str, status: str
) -> dict[str, Any]:
    with trio.fail_after(5):
        while True:
            body: dict[str, Any] = (await seed_status(client, server, job_id)).json()
            if body["status"] == status:
                return body
            await trio.sleep(0.01)


def assert_seed_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"], str)
    message: str = body["error"]
    return message


async def test_background_stream_answers_job_id_and_strips_the_private_fields(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("m", Script.text(ANSWER))
    async with open_api_server(**fake_settings(fake_upstream)) as server, server.client() as client:
        body = seed_body(temperature=0.3, max_tokens=64, top_p=0.9)
        response = await client.post("/api/openrouter/stream", json=body, headers=server.auth())
        assert response.status_code == 200
        started = response.json()
        assert set(started) == {"jobId", "status"}
        assert started["status"] == "streaming"

        done = await wait_for_seed_status(client, server, started["jobId"], "complete")
        assert set(done) == STATUS_KEYS
        assert done["id"] == started["jobId"]
        assert done["threadId"] == "thread-9"
        assert done["messageId"] == "message-9"
        assert done["model"] == "m"
        assert done["content"] == ANSWER
        assert done["chunksReceived"] == len(ANSWER.split(" "))
        assert done["error"] is None
        assert isinstance(done["startedAt"], int)
        assert isinstance(done["completedAt"], int)
        assert done["completedAt"] >= done["startedAt"]

    sent = fake_upstream.requests[-1].json
    assert not {"_background", "_threadId", "_messageId"} & set(sent)
    assert sent["temperature"] == 0.3
    assert sent["max_tokens"] == 64
    assert sent["top_p"] == 0.9
    assert sent["model"] == "m"
    assert sent["messages"] == [{"role": "user", "content": "hi"}]
    assert sent["stream"] is True


async def test_background_stream_needs_auth_and_both_ids(api_server: ApiServer) -> None:
    async with api_server.client() as client:
        url = "/api/openrouter/stream"
        assert_seed_error(await client.post(url, json=seed_body()), 401)
        forged = {"Authorization": "Bearer nope"}
        assert_seed_error(await client.post(url, json=seed_body(), headers=forged), 401)
        no_workspace = {"Authorization": f"Bearer {api_server.token(workspace='')}"}
        assert_seed_error(await client.post(url, json=seed_body(), headers=no_workspace), 401)

        for missing in ("_threadId", "_messageId"):
            body = seed_body()
            del body[missing]
            message = assert_seed_error(
                await client.post(url, json=body, headers=api_server.auth()), 400
            )
            assert "_threadId" in message or "_messageId" in message

        listed = await client.get("/v1/jobs", headers=api_server.auth())
        assert listed.json() == {"jobs": []}


async def test_background_stream_at_the_cap_is_503_server_busy(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("hang", Script.stream().content("x").hang())
    settings = fake_settings(fake_upstream, max_concurrent_jobs=1)
    async with open_api_server(**settings) as server, server.client() as client:
        url = "/api/openrouter/stream"
        first = await client.post(url, json=seed_body("hang"), headers=server.auth())
        assert first.status_code == 200
        busy = await client.post(url, json=seed_body("hang"), headers=server.auth("bob"))
        assert busy.status_code == 503
        assert busy.json() == {"error": "Server busy, try again later"}


async def test_status_is_owner_scoped_and_needs_auth(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("hang", Script.stream().content("so far").hang())
    async with open_api_server(**fake_settings(fake_upstream)) as server, server.client() as client:
        started = await client.post(
            "/api/openrouter/stream", json=seed_body("hang"), headers=server.auth()
        )
        job_id = started.json()["jobId"]
        running = await wait_for_seed_status(client, server, job_id, "streaming")
        assert set(running) == STATUS_KEYS
        assert running["completedAt"] is None

        async def has_content() -> bool:
            response = await seed_status(client, server, job_id)
            return bool(response.json()["content"] == "so far")

        await wait_until(has_content)

        other = await seed_status(client, server, job_id, user="bob")
        assert other.status_code == 404
        assert other.json() == NOT_FOUND
        missing = await seed_status(client, server, "no-such-job")
        assert missing.status_code == 404
        assert missing.json() == NOT_FOUND
        anonymous = await client.get(f"/api/jobs/{job_id}/status")
        assert_seed_error(anonymous, 401)


async def test_abort_answers_true_then_false_and_is_owner_scoped(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("hang", Script.stream().content("x").hang())
    async with open_api_server(**fake_settings(fake_upstream)) as server, server.client() as client:
        started = await client.post(
            "/api/openrouter/stream", json=seed_body("hang"), headers=server.auth()
        )
        job_id = started.json()["jobId"]
        url = f"/api/jobs/{job_id}/abort"

        assert_seed_error(await client.post(url), 401)
        stranger = await client.post(url, headers=server.auth("bob"))
        assert stranger.status_code == 200
        assert stranger.json() == NOT_ABORTED

        first = await client.post(url, headers=server.auth())
        assert first.status_code == 200
        assert first.json() == {"aborted": True}
        second = await client.post(url, headers=server.auth())
        assert second.status_code == 200
        assert second.json() == NOT_ABORTED

        final = await wait_for_seed_status(client, server, job_id, "aborted")
        assert final["completedAt"] is not None
        missing = await client.post("/api/jobs/no-such-job/abort", headers=server.auth())
        assert missing.json() == NOT_ABORTED


async def test_foreground_stream_sends_openai_chunks_and_records_the_job(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("m", Script.text(ANSWER))
    async with open_api_server(**fake_settings(fake_upstream)) as server, server.client() as client:
        body = seed_body(background=False)
        async with client.stream(
            "POST", "/api/openrouter/stream", json=body, headers=server.auth()
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            job_id = response.headers["x-job-id"]
            read = await read_sse(response)

        assert read.ended
        data = [event.data for event in read.events]
        assert all(event.event == "message" for event in read.events)
        assert data[-1] == "[DONE]"
        chunks = [event.json() for event in read.events[:-1]]
        assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
        assert all(chunk["model"] == "m" for chunk in chunks)
        streamed = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks)
        assert streamed == ANSWER

        recorded = await wait_for_seed_status(client, server, job_id, "complete")
        assert recorded["content"] == ANSWER
        assert recorded["threadId"] == "thread-9"
        assert not {"_background", "_threadId", "_messageId"} & set(fake_upstream.requests[-1].json)
