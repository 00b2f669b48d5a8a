"""The seed app's routes over real HTTP, with the seed's exact status codes and shapes."""

from __future__ import annotations

from typing import Any

import httpx
import trio

from tests.fake_upstream import FakeUpstream, Script
from tests.http.conftest import ApiServer, OpenApiServer, fake_settings, wait_until
from tests.http.test_seed_compat import RUNNING_KEYS

ANSWER = "Background answers keep streaming after the tab closes"
# The keys of a running job's status; a finished job adds completedAt, a failed one
# error too (the seed left unset fields out).
STATUS_KEYS = set(RUNNING_KEYS)
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
        assert set(done) == STATUS_KEYS | {"completedAt"}
        assert done["id"] == started["jobId"]
        assert done["threadId"] == "thread-9"
        assert done["messageId"] == "message-9"
        assert done["model"] == "m"
        assert done["content"] == ANSWER
        assert done["chunksReceived"] == len(ANSWER.split(" "))
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
        unauthenticated = "Authentication required for background streaming"
        assert assert_seed_error(await client.post(url, json=seed_body()), 401) == unauthenticated
        # A Bearer value that is not a JWT is the user's own upstream key, no identity.
        own_key = {"Authorization": "Bearer nope"}
        refused = await client.post(url, json=seed_body(), headers=own_key)
        assert assert_seed_error(refused, 401) == unauthenticated
        empty_workspace = {"Authorization": f"Bearer {api_server.token(workspace='')}"}
        refused = await client.post(url, json=seed_body(), headers=empty_workspace)
        assert assert_seed_error(refused, 401) == unauthenticated

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
        assert assert_seed_error(anonymous, 401) == "Authentication required"


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

        anonymous = await client.post(url)
        assert anonymous.status_code == 401
        assert anonymous.json() == {"error": "Authentication required", "aborted": False}
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


async def test_foreground_passes_the_upstream_stream_through_byte_for_byte(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    image = "data:image/png;base64,iVBORw0KGgo="
    script = (
        Script.stream()
        .keepalive()
        .reasoning("Looking it up.")
        .content("Here ")
        .keepalive()
        .content("you go.")
        .tool_call(0, id="call_1", name="lookup")
        .tool_call(0, arguments='{"q": ')
        .tool_call(0, arguments='"actors"}')
        .image(image)
        .finish("tool_calls")
        .usage()
        .done()
    )
    fake_upstream.script("m", script)
    async with open_api_server(**fake_settings(fake_upstream)) as server, server.client() as client:
        body = seed_body(background=False, modalities=["text"], stream=True)
        async with client.stream(
            "POST", "/api/openrouter/stream", json=body, headers=server.auth()
        ) as response:
            received = b"".join([piece async for piece in response.aiter_bytes()])
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["cache-control"] == "no-cache"
        job_id = response.headers["x-job-id"]
        assert received == script.body

        recorded = await wait_for_seed_status(client, server, job_id, "complete")
        assert recorded["content"] == "Here you go."
        assert recorded["threadId"] == "thread-9"
        job = (await client.get(f"/v1/jobs/{job_id}", headers=server.auth())).json()
        assert job["foreground"] is True
        assert job["finish_reason"] == "tool_calls"
        assert job["reasoning"] == "Looking it up."
        assert job["tool_calls"] == [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "lookup", "arguments": '{"q": "actors"}'},
            }
        ]
        assert job["images"] == [{"type": "image_url", "image_url": {"url": image}}]

    sent = fake_upstream.requests[-1].json
    assert not {"_background", "_threadId", "_messageId"} & set(sent)
    assert sent["modalities"] == ["text"]
    assert sent["stream"] is True
