"""A job's event stream over real HTTP: order, keep-alives, resume, disconnects and abort."""

from __future__ import annotations

import random
from typing import Any

import httpx
import trio

from tests.fake_upstream import FakeUpstream, Script
from tests.http.conftest import (
    ApiServer,
    OpenApiServer,
    SseEvent,
    SseRead,
    chat_body,
    fake_settings,
    read_sse,
    wait_for_status,
)

ANSWER = (
    "Resumable streams must deliver every chunk exactly once, in order, even when the "
    "client drops the connection at an awkward moment and comes back with the last id"
)


async def start_job(client: httpx.AsyncClient, server: ApiServer, model: str) -> str:
    response = await client.post("/v1/jobs", json=chat_body(model=model), headers=server.auth())
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def deltas_of(read: SseRead) -> list[dict[str, Any]]:
    return [event.json() for event in read.named("delta")]


async def test_events_are_snapshot_then_deltas_then_status_then_end(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("m", Script.text(ANSWER, delay=0.001))
    async with open_api_server(**fake_settings(fake_upstream)) as server, server.client() as client:
        job_id = await start_job(client, server, "m")
        url = f"/v1/jobs/{job_id}/events"
        async with client.stream("GET", url, headers=server.auth()) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            read = await read_sse(response)

    assert read.ended
    kinds = [event.event for event in read.events]
    assert kinds[0] == "snapshot"
    assert kinds[-1] == "status"
    assert set(kinds[1:-1]) == {"delta"}
    snapshot = read.events[0].json()
    assert snapshot["id"] == job_id

    deltas = read.named("delta")
    # The snapshot carries what was there before the first delta event.
    assert snapshot["content_delta"] == ""
    seqs = [event.json()["seq"] for event in deltas]
    assert [event.id for event in deltas] == [str(seq) for seq in seqs]
    assert seqs == list(range(1, len(seqs) + 1))
    assert "".join(event.json()["content"] for event in deltas) == ANSWER

    status = read.events[-1].json()
    assert status["status"] == "complete"
    assert status["finish_reason"] == "stop"
    assert status["error"] is None
    assert status["last_seq"] == seqs[-1]
    assert status["usage"]["completion_tokens"] > 0


async def test_keepalive_comments_flow_while_the_upstream_is_quiet(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script(
        "slow", Script.stream().content("Hello").sleep(0.3).content(" world").finish().done()
    )
    async with (
        open_api_server(keepalive=0.02, **fake_settings(fake_upstream)) as server,
        server.client() as client,
    ):
        job_id = await start_job(client, server, "slow")
        url = f"/v1/jobs/{job_id}/events"
        async with client.stream("GET", url, headers=server.auth()) as response:
            read = await read_sse(response)

    assert read.ended
    assert len(read.comments) >= 3
    assert "".join(delta["content"] for delta in deltas_of(read)) == "Hello world"
    assert read.events[-1].json()["status"] == "complete"


async def follow_in_pieces(
    client: httpx.AsyncClient,
    server: ApiServer,
    job_id: str,
    rng: random.Random,
    *,
    use_query_once: bool,
) -> tuple[list[dict[str, Any]], dict[str, Any], int]:
    """Follow the job, dropping the connection after a random number of deltas each time
    and resuming from the last seq seen. Returns (deltas, final status, connections)."""
    received: list[dict[str, Any]] = []
    connections = 0
    while True:
        last = received[-1]["seq"] if received else None
        headers = server.auth()
        url = f"/v1/jobs/{job_id}/events"
        if last is not None:
            if use_query_once:
                url += f"?after={last}"
                use_query_once = False
            else:
                headers["Last-Event-ID"] = str(last)
        cut_after = rng.randint(0, 6)
        count = 0

        def cut(event: SseEvent, limit: int = cut_after) -> bool:
            nonlocal count
            if event.event == "delta":
                count += 1
            return count >= limit

        connections += 1
        async with client.stream("GET", url, headers=headers) as response:
            assert response.status_code == 200
            read = await read_sse(response, until=cut)
        assert read.events[0].event == "snapshot"
        received += deltas_of(read)
        if read.events[-1].event == "status":
            return received, read.events[-1].json(), connections


async def test_resume_after_random_disconnects_loses_and_repeats_nothing(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    rng = random.Random(20240611)
    rounds = 6
    for number in range(rounds):
        fake_upstream.script(f"m{number}", Script.text(ANSWER, delay=0.003))
    async with open_api_server(**fake_settings(fake_upstream)) as server, server.client() as client:
        for number in range(rounds):
            job_id = await start_job(client, server, f"m{number}")
            deltas, status, connections = await follow_in_pieces(
                client, server, job_id, rng, use_query_once=number == 0
            )
            seqs = [delta["seq"] for delta in deltas]
            assert seqs == list(range(1, len(seqs) + 1)), f"round {number}: {seqs}"
            assert "".join(delta["content"] for delta in deltas) == ANSWER
            assert status["status"] == "complete"
            assert status["last_seq"] == seqs[-1]
            assert connections > 1


async def test_last_event_id_wins_over_after_and_must_be_a_seq(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("m", Script.text(ANSWER))
    async with open_api_server(**fake_settings(fake_upstream)) as server, server.client() as client:
        job_id = await start_job(client, server, "m")
        await wait_for_status(client, job_id, server.auth())
        headers = {**server.auth(), "Last-Event-ID": "5"}
        url = f"/v1/jobs/{job_id}/events?after=2"
        async with client.stream("GET", url, headers=headers) as response:
            read = await read_sse(response)
        assert deltas_of(read)[0]["seq"] == 6

        bad = await client.get(
            f"/v1/jobs/{job_id}/events", headers={**server.auth(), "Last-Event-ID": "x"}
        )
        assert bad.status_code == 422
        assert bad.json()["error"]["code"] == "invalid_request"


async def test_a_client_disconnect_does_not_abort_the_job(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("m", Script.text(ANSWER, delay=0.005))
    async with open_api_server(**fake_settings(fake_upstream)) as server, server.client() as client:
        job_id = await start_job(client, server, "m")
        url = f"/v1/jobs/{job_id}/events"
        async with client.stream("GET", url, headers=server.auth()) as response:
            read = await read_sse(response, until=lambda event: event.event == "delta")
        assert not read.ended

        done = await wait_for_status(client, job_id, server.auth())
        assert done["status"] == "complete"
        assert done["content_delta"] == ANSWER
        assert done["finish_reason"] == "stop"
        assert len(fake_upstream.requests) == 1


async def test_abort_over_http_closes_the_upstream_and_ends_the_stream(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("hang", Script.stream().content("partial ").hang())
    async with open_api_server(**fake_settings(fake_upstream)) as server, server.client() as client:
        job_id = await start_job(client, server, "hang")
        first_delta = trio.Event()
        reads: list[SseRead] = []

        async def follow() -> None:
            def saw(event: SseEvent) -> bool:
                if event.event == "delta":
                    first_delta.set()
                return False

            url = f"/v1/jobs/{job_id}/events"
            async with client.stream("GET", url, headers=server.auth()) as response:
                reads.append(await read_sse(response, until=saw))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            with trio.fail_after(5):
                await first_delta.wait()
            upstream = fake_upstream.requests[-1]
            assert not upstream.client_disconnected.is_set()

            aborted = await client.post(f"/v1/jobs/{job_id}/abort", headers=server.auth())
            assert aborted.json()["aborted"] is True
            with trio.fail_after(1):
                await upstream.client_disconnected.wait()

        read = reads[0]
        assert read.ended
        assert [delta["content"] for delta in deltas_of(read)] == ["partial "]
        status = read.events[-1]
        assert status.event == "status"
        assert status.json()["status"] == "aborted"
        final = await wait_for_status(client, job_id, server.auth())
        assert final["status"] == "aborted"
        assert final["content_delta"] == "partial "


async def test_events_of_a_missing_job_are_404(api_server: ApiServer) -> None:
    async with api_server.client() as client:
        response = await client.get("/v1/jobs/nope/events", headers=api_server.auth())
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "no such job"}}
