"""The seed's foreground path over real HTTP: the upstream's answer passed straight through.

Its stream byte for byte (tests/http/test_seed_routes.py), its failures with its own
status and body, the client's Stop as an abort, a cap of its own, and the job it is
recorded as.
"""

from __future__ import annotations

import socket
from typing import Any

import httpx
import orjson
import pytest
import trio

from tests.fake_upstream import FakeUpstream, Script
from tests.http.conftest import (
    SERVER_API_KEY,
    ApiServer,
    OpenApiServer,
    fake_settings,
    read_sse,
    wait_for_status,
)

URL = "/api/openrouter/stream"
BUSY = {"error": "Server busy, try again later"}
HANG = "hang"


def seed_body(model: str = "m", *, background: bool = False) -> dict[str, Any]:
    """The seed client's body; foreground unless ``background``."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "modalities": ["text"],
        "stream": True,
        "_background": background,
        "_threadId": "thread-7",
        "_messageId": "message-7",
    }


async def read_until(response: httpx.Response, marker: bytes) -> bytes:
    """Read the body until ``marker`` has come; what was read. Cancels rather than breaks
    out of httpx's iterator (see tests/http/conftest.py)."""
    seen = b""
    with trio.fail_after(5), trio.CancelScope() as scope:
        async for piece in response.aiter_bytes():
            seen += piece
            if marker in seen:
                scope.cancel()
    assert marker in seen, seen
    return seen


async def job_of(client: httpx.AsyncClient, server: ApiServer, job_id: str) -> dict[str, Any]:
    return await wait_for_status(client, job_id, server.auth())


@pytest.mark.parametrize("status", [401, 429, 500])
async def test_an_upstream_refusal_is_answered_with_its_own_status_and_body(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream, status: int
) -> None:
    # The upstream echoes the server's key: what reaches the client has it redacted.
    fake_upstream.script("m", Script.status(status, message=f"refused {SERVER_API_KEY}"))
    async with open_api_server(**fake_settings(fake_upstream)) as server, server.client() as client:
        response = await client.post(URL, json=seed_body(), headers=server.auth())

        assert response.status_code == status
        assert response.content == Script.status(status, message="refused [redacted]").error_body
        assert response.headers["content-type"] == "application/json"
        job = await job_of(client, server, response.headers["x-job-id"])
        assert (job["status"], job["foreground"]) == ("error", True)
    # No retry: the client sees the upstream's first answer.
    assert len(fake_upstream.requests) == 1


async def test_an_upstream_error_body_is_cut_to_its_first_2000_characters(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("m", Script.status(500, message="é" * 3000))
    async with open_api_server(**fake_settings(fake_upstream)) as server, server.client() as client:
        response = await client.post(URL, json=seed_body(), headers=server.auth())

    assert response.status_code == 500
    whole = Script.status(500, message="é" * 3000).error_body.decode()
    assert response.text == whole[:2000]


async def test_an_unreachable_upstream_is_502_failed_to_reach_openrouter(
    open_api_server: OpenApiServer,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings: dict[str, Any] = {
        "upstream": "openai",
        "upstream_base_url": f"http://127.0.0.1:{port}/v1",
        "upstream_api_key": SERVER_API_KEY,
    }
    async with open_api_server(**settings) as server, server.client() as client:
        response = await client.post(URL, json=seed_body(), headers=server.auth())

        assert response.status_code == 502
        assert response.json() == {"error": "Failed to reach OpenRouter"}
        job = await job_of(client, server, response.headers["x-job-id"])
        assert job["status"] == "error"


async def test_without_any_upstream_key_it_is_refused_before_a_job_starts(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    settings = fake_settings(fake_upstream, upstream_api_key=None)
    async with open_api_server(**settings) as server, server.client() as client:
        response = await client.post(URL, json=seed_body(), headers=server.auth())

        assert response.status_code == 401
        assert response.json() == {"error": "Missing OpenRouter API key"}
        assert (await client.get("/v1/jobs", headers=server.auth())).json() == {"jobs": []}
    assert fake_upstream.requests == []


async def test_stop_closes_the_upstream_and_the_job_ends_aborted_with_its_partial_content(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script(HANG, Script.stream().content("so far ").hang())
    async with open_api_server(**fake_settings(fake_upstream)) as server, server.client() as client:
        async with client.stream(
            "POST", URL, json=seed_body(HANG), headers=server.auth()
        ) as response:
            assert response.status_code == 200
            job_id = response.headers["x-job-id"]
            await read_until(response, b"so far")
        # Leaving the block closed the connection: the client's Stop.

        with trio.fail_after(5):
            await fake_upstream.requests[0].client_disconnected.wait()
        job = await job_of(client, server, job_id)
        assert job["status"] == "aborted"
        assert job["content_delta"] == "so far "


async def test_a_user_at_the_background_caps_still_gets_a_foreground_stream(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script(HANG, Script.stream().content("x").hang())
    fake_upstream.script("m", Script.text("Still here"))
    settings = fake_settings(fake_upstream, max_jobs_per_user=5, max_concurrent_jobs=5)
    async with open_api_server(**settings) as server, server.client() as client:
        alice = server.auth()
        for _ in range(5):
            started = await client.post(URL, json=seed_body(HANG, background=True), headers=alice)
            assert started.status_code == 200
        # At both caps at once: the server's (checked first) and alice's own.
        refused = await client.post(URL, json=seed_body(HANG, background=True), headers=alice)
        assert refused.status_code == 503
        assert refused.json() == BUSY

        async with client.stream("POST", URL, json=seed_body(), headers=alice) as response:
            read = await read_sse(response)
        assert response.status_code == 200
        content = "".join(
            event.json()["choices"][0]["delta"].get("content", "")
            for event in read.events[:-1]
            if event.json()["choices"]
        )
        assert content == "Still here"
        assert read.events[-1].data == "[DONE]"


async def test_the_foreground_cap_refuses_foreground_streams_only(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script(HANG, Script.stream().content("x").hang())
    settings = fake_settings(fake_upstream, max_foreground_streams=1, max_concurrent_jobs=1)
    async with open_api_server(**settings) as server, server.client() as client:
        # Open, its head read and its body not: leaving the block is the Stop.
        async with client.stream("POST", URL, json=seed_body(HANG), headers=server.auth()) as first:
            assert first.status_code == 200
            first_id = first.headers["x-job-id"]

            for user in ("alice", "bob"):
                refused = await client.post(URL, json=seed_body(), headers=server.auth(user))
                assert refused.status_code == 503
                assert refused.json() == BUSY
            # The one background slot is free: the foreground stream does not hold it.
            background = await client.post(
                URL, json=seed_body(HANG, background=True), headers=server.auth("bob")
            )
            assert background.status_code == 200

        # The first stream's Stop frees the foreground slot; the background job takes none.
        assert (await job_of(client, server, first_id))["status"] == "aborted"
        async with client.stream("POST", URL, json=seed_body(HANG), headers=server.auth()) as again:
            assert again.status_code == 200


async def test_shutdown_ends_a_foreground_stream_before_the_grace_time(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    hang = Script.stream().content("x").hang()
    fake_upstream.script(HANG, hang)
    async with (
        open_api_server(**fake_settings(fake_upstream)) as server,
        server.client() as client,
        client.stream("POST", URL, json=seed_body(HANG), headers=server.auth()) as response,
    ):
        assert response.status_code == 200
        stopped_at = trio.current_time()
        server.stop.set()
        with trio.fail_after(5):
            received = b"".join([piece async for piece in response.aiter_bytes()])
        ended_at = trio.current_time()
    # The server's grace time for open connections is a second: the stream ended by itself.
    assert ended_at - stopped_at < 1.0
    assert hang.body.startswith(received)


async def test_the_simulated_model_passes_through_valid_openai_sse_of_the_stored_content(
    api_server: ApiServer,
) -> None:
    async with api_server.client() as client:
        async with client.stream("POST", URL, json=seed_body(), headers=api_server.auth()) as r:
            read = await read_sse(r)
            job_id = r.headers["x-job-id"]
        job = await job_of(client, api_server, job_id)

    assert read.ended
    assert read.events[-1].data == "[DONE]"
    chunks = [orjson.loads(event.data) for event in read.events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert all(chunk["model"] == "m" for chunk in chunks)
    *tokens, finish, usage = chunks
    streamed = "".join(chunk["choices"][0]["delta"]["content"] for chunk in tokens)
    assert streamed == job["content_delta"]
    assert len(tokens) == job["chunks_received"]
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert usage["usage"]["completion_tokens"] == len(tokens)
    assert job["status"] == "complete"
