"""Graceful shutdown of a real server: open streams end with ``shutdown``, serve() returns
promptly, and running jobs are persisted as interrupted with their partial content."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio

from actors.config import ServiceConfig
from actors.model import JobStatus
from actors.stores import StoreFactory
from tests.http.conftest import (
    ApiServer,
    OpenApiServer,
    SseEvent,
    SseRead,
    chat_body,
    read_sse,
)


async def follow(
    client: httpx.AsyncClient,
    server: ApiServer,
    url: str,
    user: str,
    reads: dict[str, SseRead],
    streaming: trio.Event,
) -> None:
    """Read ``url`` to its end into ``reads[url]``; set ``streaming`` once the stream is
    live: at its first delta, or for the notification stream as soon as it answers."""

    def live(event: SseEvent) -> bool:
        if event.event == "delta":
            streaming.set()
        return False

    async with client.stream("GET", url, headers=server.auth(user)) as response:
        assert response.status_code == 200
        if "notifications" in url:
            streaming.set()
        reads[url] = await read_sse(response, until=live)


async def test_shutdown_ends_streams_returns_fast_and_keeps_partial_jobs(
    open_api_server: OpenApiServer, tmp_path: Path
) -> None:
    settings: dict[str, Any] = {
        "store": "sqlite",
        "simulated_tokens_per_second": 10.0,
        "drain_timeout": 0.2,
    }
    reads: dict[str, SseRead] = {}
    async with open_api_server(**settings) as server, server.client() as client:
        job_ids = []
        for user in ("alice", "bob"):
            created = await client.post(
                "/v1/jobs", json=chat_body(thread_id=f"t-{user}"), headers=server.auth(user)
            )
            assert created.status_code == 202
            job_ids.append(created.json()["id"])

        urls = [
            (f"/v1/jobs/{job_id}/events", user)
            for job_id, user in zip(job_ids, ("alice", "bob"), strict=True)
        ]
        urls.append(("/v1/notifications/events", "alice"))
        async with trio.open_nursery() as nursery:
            live = []
            for url, user in urls:
                streaming = trio.Event()
                live.append(streaming)
                nursery.start_soon(follow, client, server, url, user, reads, streaming)
            with trio.fail_after(5):
                for streaming in live:
                    await streaming.wait()

            stopped_at = trio.current_time()
            server.stop.set()
            with trio.fail_after(2):
                await server.finished.wait()
        assert server.finished_at is not None
        assert server.finished_at - stopped_at < 1.0

    for url, _ in urls:
        read = reads[url]
        assert read.ended, url
        assert read.events[-1].event == "shutdown", url
    for job_id in job_ids:
        read = reads[f"/v1/jobs/{job_id}/events"]
        deltas = read.named("delta")
        assert deltas
        shutdown = read.events[-1].json()
        assert shutdown["last_seq"] == deltas[-1].json()["seq"]
        assert not read.named("status")

    stores = StoreFactory(ServiceConfig(store="sqlite", data_dir=tmp_path))
    try:
        store = await stores.get()
        for job_id in job_ids:
            job = await store.get_job(job_id)
            assert job is not None
            assert job.status is JobStatus.ERROR
            assert job.error == "interrupted: server shut down"
            # Everything a client saw is kept; the drain may have added a little more.
            seen = "".join(
                e.json()["content"] for e in reads[f"/v1/jobs/{job_id}/events"].named("delta")
            )
            assert seen
            assert job.content.startswith(seen)
            assert job.chunks_received >= len(reads[f"/v1/jobs/{job_id}/events"].named("delta"))
            assert job.completed_at is not None
    finally:
        await stores.aclose()
