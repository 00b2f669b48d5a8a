"""A server on Redis while Redis is down: readiness, new jobs, a running job, and the return.

The test runs a Redis server of its own (append-only, so what it acknowledged
survives its stop) and stops it under a live job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio

from tests.http.conftest import ApiServer, OpenApiServer, SseRead, chat_body, read_sse, wait_until
from tests.redis_server import RedisServer, fresh_prefix

GRACE = 2.0


async def test_while_redis_is_down_new_jobs_wait_and_a_running_one_fails_clearly(
    open_api_server: OpenApiServer, tmp_path: Path
) -> None:
    directory = tmp_path / "redis"
    directory.mkdir()
    redis = RedisServer(directory, appendonly=True)
    await trio.to_thread.run_sync(redis.start)
    settings: dict[str, Any] = {
        "store": "redis",
        "redis_url": redis.url,
        "redis_prefix": fresh_prefix(),
        "redis_connect_timeout": 0.5,
        "redis_command_timeout": 0.5,
        "store_outage_grace": GRACE,
        "simulated_tokens_per_second": 20.0,
    }
    try:
        async with open_api_server(**settings) as server, server.client() as client:
            headers = server.auth()
            created = await client.post("/v1/jobs", json=chat_body(), headers=headers)
            assert created.status_code == 202, created.text
            job_id = created.json()["id"]
            async with trio.open_nursery() as nursery:
                read = SseRead()

                async def follow() -> None:
                    nonlocal read
                    url = f"/v1/jobs/{job_id}/events"
                    async with client.stream("GET", url, headers=headers) as response:
                        read = await read_sse(response, timeout=30)

                nursery.start_soon(follow)
                await wait_until(lambda: _has_deltas(client, server, job_id), timeout=10)
                await trio.to_thread.run_sync(redis.stop)
                stopped_at = trio.current_time()

                ready = await client.get("/readyz")
                refused = await client.post("/v1/jobs", json=chat_body(), headers=headers)
                seed_refused = await client.post(
                    "/api/openrouter/stream", json=_seed_body(), headers=headers
                )
                polled = await client.get(f"/v1/jobs/{job_id}", headers=headers)
            failed_after = trio.current_time() - stopped_at

            await trio.to_thread.run_sync(redis.start)
            await wait_until(lambda: _is_ready(client), timeout=10)
            # Its end is stored at the next try, within a second.
            job = await wait_until(lambda: _ended(client, server, job_id), timeout=5)
            again = await client.post("/v1/jobs", json=chat_body(), headers=headers)
    finally:
        await trio.to_thread.run_sync(redis.stop)

    assert ready.status_code == 503
    assert ready.json() == {"status": "not ready"}
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "5"
    assert refused.json()["error"]["code"] == "server_busy"
    assert seed_refused.status_code == 503
    assert seed_refused.json() == {"error": "Server busy, try again later"}
    assert polled.status_code == 503

    # The follower got the end at the grace, after every delta it was sent.
    [status] = read.named("status")
    assert status.json()["status"] == "error"
    assert status.json()["error"] == "store unavailable"
    assert GRACE <= failed_after <= GRACE + 3
    sent = "".join(event.json()["content"] for event in read.named("delta"))
    assert sent

    # Redis is back: the job ended that way there too, and kept all it was sent.
    assert (job["status"], job["error"]) == ("error", "store unavailable")
    assert job["content_delta"].startswith(sent)
    # And what streamed into memory meanwhile.
    assert job["last_seq"] > status.json()["last_seq"]
    assert again.status_code == 202


async def _has_deltas(client: httpx.AsyncClient, server: ApiServer, job_id: str) -> bool:
    response = await client.get(f"/v1/jobs/{job_id}", headers=server.auth())
    return bool(response.json()["last_seq"] >= 3)


async def _ended(client: httpx.AsyncClient, server: ApiServer, job_id: str) -> Any:
    response = await client.get(f"/v1/jobs/{job_id}", headers=server.auth())
    job = response.json()
    return job if job["status"] != "streaming" else None


async def _is_ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/readyz")).status_code == 200


def _seed_body() -> dict[str, Any]:
    return {
        "model": "m",
        "messages": [{"role": "user", "content": "hello"}],
        "_background": True,
        "_threadId": "thread-1",
        "_messageId": "message-1",
    }
