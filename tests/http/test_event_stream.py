"""A job's event stream on the wire, read raw from a real server: every event the
follower has ready goes out in one HTTP chunk, keep-alives flow from the start, and a
client disconnect ends the server's side of the stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import h11
import pytest
import structlog
import trio
from structlog.testing import capture_logs
from trio.testing import MockClock

from actors.api import DeltaEvent, JobEvent, JobView, SnapshotEvent, StatusEvent
from actors.http.sse import KEEPALIVE, encode_event
from actors.model import Job, JobStatus, Owner
from actors.service import Service
from tests.fake_upstream import FakeUpstream, Script
from tests.http.conftest import ApiServer, OpenApiServer, chat_body, fake_settings, wait_until


class RawStream:
    """An HTTP/1.1 response read off a raw socket with h11, one chunk of the chunked
    body at a time, exactly as the server framed it."""

    def __init__(self, stream: trio.SocketStream, connection: h11.Connection) -> None:
        self.stream = stream
        self.connection = connection
        self.response: h11.Response | None = None

    async def _event(self) -> Any:
        while True:
            event = self.connection.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.connection.receive_data(await self.stream.receive_some())

    async def start(self) -> h11.Response:
        event = await self._event()
        assert isinstance(event, h11.Response), event
        self.response = event
        return event

    async def chunk(self) -> bytes | None:
        """The next chunk of the body, whole; None once the body has ended."""
        data = b""
        while True:
            event = await self._event()
            if isinstance(event, h11.Data):
                data += event.data
                if event.chunk_end:
                    return data
            else:
                assert isinstance(event, h11.EndOfMessage | h11.ConnectionClosed), event
                assert not data
                return None

    async def rest(self) -> list[bytes]:
        """Every chunk until the body ends."""
        chunks = []
        while (chunk := await self.chunk()) is not None:
            chunks.append(chunk)
        return chunks


@asynccontextmanager
async def raw_get(server: ApiServer, path: str, user: str = "alice") -> AsyncIterator[RawStream]:
    """``GET path`` with ``user``'s token on a socket of its own, closed at the end."""
    host, port = server.base_url.removeprefix("http://").split(":")
    connection = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="GET",
        target=path,
        headers=[("host", host), ("authorization", f"Bearer {server.token(user)}")],
    )
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(connection.send(request) + connection.send(h11.EndOfMessage()))
        yield RawStream(stream, connection)


async def start_job(server: ApiServer, model: str) -> str:
    async with server.client() as client:
        response = await client.post("/v1/jobs", json=chat_body(model=model), headers=server.auth())
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def frames(chunk: bytes) -> list[bytes]:
    """The SSE frames of a chunk, each with its blank line."""
    assert chunk.endswith(b"\n\n"), chunk
    return [frame + b"\n\n" for frame in chunk.removesuffix(b"\n\n").split(b"\n\n")]


class ScriptedFollower:
    """A follower that hands out the given batches, one per ``next_batch``, then none."""

    def __init__(self, batches: list[list[JobEvent]]) -> None:
        self.batches = list(batches)
        self.last_seq = 0
        self.closed = False

    async def next_batch(self) -> list[JobEvent]:
        await trio.lowlevel.checkpoint()
        return self.batches.pop(0) if self.batches else []

    def close(self) -> None:
        self.closed = True


def _view(job_id: str) -> JobView:
    job = Job(
        id=job_id,
        user_id="alice",
        workspace_id="w1",
        thread_id="thread-1",
        message_id="message-1",
        model="m",
        status=JobStatus.STREAMING,
        started_at=datetime(2026, 1, 2, tzinfo=UTC),
    )
    return JobView.of(job)


async def test_events_that_are_ready_together_go_out_in_one_chunk(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_upstream.script("m", Script.text("unused"))
    followers: list[ScriptedFollower] = []
    async with open_api_server(**fake_settings(fake_upstream)) as server:
        job_id = await start_job(server, "m")
        ready = [
            SnapshotEvent(_view(job_id)),
            DeltaEvent(1, "Hello"),
            DeltaEvent(2, " wide", reasoning="thinking\nhard"),
            DeltaEvent(3, " world"),
        ]
        later = [DeltaEvent(4, "!")]
        final = [StatusEvent(JobStatus.COMPLETE, None, "stop", None, 4)]

        def follow(self: Service, owner: Owner, job: str, after: int | None = None) -> Any:
            assert (owner, job, after) == (Owner("alice", "w1"), job_id, None)
            followers.append(ScriptedFollower([ready, later, final]))
            return followers[-1]

        monkeypatch.setattr(Service, "follow", follow)
        with trio.fail_after(10):
            async with raw_get(server, f"/v1/jobs/{job_id}/events") as raw:
                response = await raw.start()
                chunks = await raw.rest()

    assert response.status_code == 200
    headers = dict(response.headers)
    assert headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert headers[b"cache-control"] == b"no-store"
    assert headers[b"x-accel-buffering"] == b"no"
    assert len(headers[b"x-request-id"]) == 32
    # One chunk per batch, the four ready events together in the first.
    assert chunks == [
        b"".join(encode_event(event) for event in batch) for batch in (ready, later)
    ] + [encode_event(final[0])]
    first = frames(chunks[0])
    assert [frame.split(b"\n")[0] for frame in first] == [
        b"event: snapshot",
        b"id: 1",
        b"id: 2",
        b"id: 3",
    ]
    assert first[2] == (
        b'id: 2\nevent: delta\ndata: {"seq":2,"content":" wide","reasoning":"thinking\\nhard"}\n\n'
    )
    assert chunks[2].startswith(b'event: status\ndata: {"status":"complete"')
    assert followers[0].closed


async def test_a_real_stream_sends_fewer_chunks_than_events(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    words = [f"w{index}" for index in range(60)]
    fake_upstream.script("burst", Script.text(" ".join(words)))
    async with open_api_server(**fake_settings(fake_upstream)) as server:
        job_id = await start_job(server, "burst")
        async with server.client() as client:

            async def finished() -> bool:
                response = await client.get(f"/v1/jobs/{job_id}", headers=server.auth())
                return bool(response.json()["status"] == "complete")

            await wait_until(finished)
        with trio.fail_after(10):
            async with raw_get(server, f"/v1/jobs/{job_id}/events") as raw:
                await raw.start()
                chunks = await raw.rest()

    sent = [frame for chunk in chunks for frame in frames(chunk)]
    deltas = [frame for frame in sent if b"\nevent: delta\n" in frame]
    assert len(deltas) == len(words)
    assert sent[0].startswith(b"event: snapshot\n")
    assert sent[-1].startswith(b"event: status\n")
    # The stored deltas of a finished job are all ready at once: a few chunks carry them.
    assert len(chunks) < len(deltas) // 4, [len(frames(chunk)) for chunk in chunks]


@pytest.fixture
def jumpable_clock() -> MockClock:
    """Trio's mock clock at real speed; a test moves it ahead with ``jump``."""
    return MockClock(rate=1.0)


async def test_keepalives_flow_from_the_start_while_no_token_has_come(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream, jumpable_clock: MockClock
) -> None:
    interval = 5.0
    fake_upstream.script("silent", Script.stream().hang())
    async with open_api_server(keepalive=interval, **fake_settings(fake_upstream)) as server:
        job_id = await start_job(server, "silent")
        # The jumps below count towards this deadline: it is on the mock clock too.
        with trio.fail_after(3 * interval + 10):
            async with raw_get(server, f"/v1/jobs/{job_id}/events") as raw:
                await raw.start()
                snapshot = await raw.chunk()
                assert snapshot is not None and snapshot.startswith(b"event: snapshot\n")
                # Nothing before the interval is up...
                with trio.move_on_after(0.3):
                    early = await raw.chunk()
                    pytest.fail(f"sent before the interval: {early!r}")
                # ...then a keep-alive at each interval, though no token ever comes.
                for _ in range(3):
                    jumpable_clock.jump(interval)
                    assert await raw.chunk() == KEEPALIVE
        async with server.client() as client:
            job = await client.get(f"/v1/jobs/{job_id}", headers=server.auth())
        assert job.json()["status"] == "streaming"
        assert job.json()["last_seq"] == 0


async def test_a_client_disconnect_ends_the_servers_side_of_the_stream(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("hang", Script.stream().content("first ").hang())
    async with open_api_server(keepalive=0.05, **fake_settings(fake_upstream)) as server:
        job_id = await start_job(server, "hang")
        path = f"/v1/jobs/{job_id}/events"
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logged:

            def access_lines() -> list[dict[str, Any]]:
                return [
                    line for line in logged if line["event"] == "request" and line["path"] == path
                ]

            with trio.fail_after(10):
                async with raw_get(server, path) as raw:
                    response = await raw.start()
                    seen = b""
                    while b"event: delta" not in seen:
                        chunk = await raw.chunk()
                        assert chunk is not None
                        seen += chunk
                    await trio.sleep(0.2)  # keep-alives flow; the stream stays open
                    assert not access_lines()

            async def ended() -> list[dict[str, Any]]:
                await trio.lowlevel.checkpoint()
                return access_lines()

            lines = await wait_until(ended, timeout=2.0)
        request_id = dict(response.headers)[b"x-request-id"].decode()
        assert [(line["status"], line["request_id"]) for line in lines] == [(200, request_id)]
        # A disconnect is not an abort.
        async with server.client() as client:
            job = await client.get(f"/v1/jobs/{job_id}", headers=server.auth())
        assert job.json()["status"] == "streaming"
        assert len(fake_upstream.requests) == 1
        assert not fake_upstream.requests[0].client_disconnected.is_set()


async def test_head_answers_the_headers_and_ends(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("hang", Script.stream().content("x").hang())
    async with open_api_server(**fake_settings(fake_upstream)) as server:
        job_id = await start_job(server, "hang")
        async with server.client() as client:
            with trio.fail_after(5):
                response = await client.head(f"/v1/jobs/{job_id}/events", headers=server.auth())
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.content == b""
