"""TroupeClient against a real server on 127.0.0.1, and its reconnection logic on
scripted transports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing

from actors.client.client import (
    ServerEvent,
    TroupeClient,
    TroupeConnectionError,
    TroupeError,
)
from actors.config import ServiceConfig
from actors.http.auth import TokenAuthority
from actors.http.server import serve

TOKENS_PER_SECOND = 100.0


@attrs.frozen
class RunningServer:
    base_url: str
    tokens: TokenAuthority

    def client(self, user: str = "ada", workspace: str = "w1", **kwargs: Any) -> TroupeClient:
        kwargs.setdefault("timeout", 10.0)
        kwargs.setdefault("backoff", 0.01)
        return TroupeClient(self.base_url, self.tokens.mint(user, workspace), **kwargs)


@pytest.fixture
async def troupe_server(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A server on the simulated model with a memory store, until the test ends.

    It has an upstream key of its own and refuses users' keys.
    """
    config = ServiceConfig(
        store="memory",
        data_dir=tmp_path,
        simulated_tokens_per_second=TOKENS_PER_SECOND,
        drain_timeout=0.0,
        # The tests wait for jobs by polling them; that must not count as watching.
        watch_window=0.0,
        host="127.0.0.1",
        port=0,
        upstream_api_key="sk-server-own",
        allow_user_api_keys=False,
    )
    stop, ready, done = trio.Event(), trio.Event(), trio.Event()
    found: list[RunningServer] = []

    def on_ready(addresses: list[str], tokens: TokenAuthority | None) -> None:
        assert tokens is not None
        found.append(RunningServer(addresses[0], tokens))
        ready.set()

    async def run() -> None:
        try:
            await serve(config, stop=stop, on_ready=on_ready)
        finally:
            done.set()
            ready.set()

    nursery.start_soon(run)
    with trio.fail_after(10):
        await ready.wait()
    assert found, "the server did not start"
    yield found[0]
    stop.set()
    with trio.fail_after(10):
        await done.wait()


def user_message(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def collect(client: TroupeClient, job_id: str, **kwargs: Any) -> list[ServerEvent]:
    events: list[ServerEvent] = []
    with trio.fail_after(10):
        async with client.follow(job_id, **kwargs) as stream:
            async for event in stream:
                events.append(event)
    return events


async def wait_finished(client: TroupeClient, job_id: str) -> dict[str, Any]:
    with trio.fail_after(10):
        while True:
            job = await client.get_job(job_id)
            if job["status"] in ("complete", "error", "aborted"):
                return job
            await trio.sleep(0.02)


# -- round trips against the server ---------------------------------------------------


async def test_job_methods_round_trip(troupe_server: RunningServer) -> None:
    async with troupe_server.client() as client:
        assert await client.health() == {"status": "ok"}

        started = await client.start_job("sim", user_message("Hello there"), "t1", "m1")
        assert started["status"] in ("queued", "streaming")
        assert started["thread_id"] == "t1"
        assert started["message_id"] == "m1"

        events = await collect(client, started["id"])
        assert events[0].event == "snapshot"
        assert events[-1].event == "status"
        assert events[-1].data["status"] == "complete"
        text = "".join(e.data["content"] for e in events if e.event == "delta")
        assert 'You wrote: "Hello there"' in text

        job = await client.get_job(started["id"])
        assert job["status"] == "complete"
        assert job["content_delta"] == text
        assert job["content_length"] == len(text)
        tail = await client.get_job(started["id"], offset=10)
        assert tail["content_delta"] == text[10:]

        assert [j["id"] for j in await client.list_jobs()] == [started["id"]]
        assert [j["id"] for j in await client.list_jobs("complete")] == [started["id"]]
        assert await client.list_jobs("aborted") == []

        finished = await client.abort_job(started["id"])
        assert finished["aborted"] is False
        assert finished["job"]["status"] == "complete"

        running = await client.start_job("sim", user_message("Stop me"), "t2", "m2")
        stopped = await client.abort_job(running["id"])
        assert stopped["aborted"] is True
        assert stopped["job"]["status"] == "aborted"
        assert [j["id"] for j in await client.list_jobs("aborted")] == [running["id"]]


async def test_start_job_sends_params_and_the_user_key(troupe_server: RunningServer) -> None:
    async with troupe_server.client() as client:
        job = await client.start_job(
            "sim", user_message("Fail please"), "t1", "m1", params={"simulate_error": "boom"}
        )
        assert (await wait_finished(client, job["id"]))["error"] is not None

        with pytest.raises(TroupeError) as refused:
            await client.start_job("sim", user_message("hi"), "t1", "m2", api_key="sk-mine-123")
        assert refused.value.status == 403
        assert refused.value.code == "user_key_not_allowed"
        assert "sk-mine-123" not in str(refused.value)


async def test_notification_methods_round_trip(troupe_server: RunningServer) -> None:
    async with troupe_server.client() as client:
        first = await client.start_job("sim", user_message("one"), "thread-a", "m1")
        await wait_finished(client, first["id"])
        unread = await client.list_notifications(unread=True)
        assert [n["job_id"] for n in unread] == [first["id"]]
        assert unread[0]["type"] == "ai.background.complete"
        assert unread[0]["read_at"] is None

        await client.mark_read(unread[0]["id"])
        assert await client.list_notifications(unread=True) == []
        assert len(await client.list_notifications()) == 1

        live: list[ServerEvent] = []
        heard = trio.Event()

        async def listen() -> None:
            async with client.follow_notifications() as stream:
                live.append(await stream.__anext__())
                heard.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(listen)
            await trio.sleep(0.2)  # lets the listener subscribe before the job ends
            second = await client.start_job("sim", user_message("two"), "thread-b", "m2")
            with trio.fail_after(10):
                await heard.wait()
        assert live[0].event == "notification"
        assert live[0].data["job_id"] == second["id"]

        assert await client.mark_all_read() == 1
        assert await client.list_notifications(unread=True) == []
        assert len(await client.list_notifications(limit=1)) == 1

        await client.delete_notification(unread[0]["id"])
        assert [n["job_id"] for n in await client.list_notifications()] == [second["id"]]
        with pytest.raises(TroupeError) as missing:
            await client.delete_notification(unread[0]["id"])
        assert (missing.value.status, missing.value.code) == (404, "not_found")
        with pytest.raises(TroupeError):
            await client.mark_read("no-such-notification")

        assert await client.mute_thread("thread-c") == {"thread_id": "thread-c", "muted": True}
        muted = await client.start_job("sim", user_message("three"), "thread-c", "m3")
        await wait_finished(client, muted["id"])
        assert muted["id"] not in [n["job_id"] for n in await client.list_notifications()]
        assert await client.mute_thread("thread-c", muted=False) == {
            "thread_id": "thread-c",
            "muted": False,
        }


async def test_errors_carry_status_and_code(troupe_server: RunningServer) -> None:
    async with troupe_server.client() as client:
        with pytest.raises(TroupeError) as missing:
            await client.get_job("no-such-job")
        assert (missing.value.status, missing.value.code) == (404, "not_found")
        assert str(missing.value) == "not_found: no such job"

        with pytest.raises(TroupeError) as not_followed:
            await collect(client, "no-such-job")
        assert not_followed.value.status == 404

        theirs = await client.start_job("sim", user_message("mine"), "t1", "m1")
    async with troupe_server.client(user="someone-else") as other:
        with pytest.raises(TroupeError) as foreign:
            await other.abort_job(theirs["id"])
        assert foreign.value.status == 404

    async with TroupeClient(troupe_server.base_url, "not-a-jwt", timeout=10.0) as forged:
        with pytest.raises(TroupeError) as unauthorized:
            await forged.list_jobs()
        assert (unauthorized.value.status, unauthorized.value.code) == (401, "unauthorized")
        assert "not-a-jwt" not in repr(forged)
        assert "not-a-jwt" not in str(unauthorized.value)


async def test_unreachable_server_is_a_connection_error() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with TroupeClient(f"http://127.0.0.1:{port}", "token", timeout=5.0) as client:
        with pytest.raises(TroupeConnectionError) as refused:
            await client.health()
    assert refused.value.status == 0
    assert f"cannot reach the server at http://127.0.0.1:{port}" in refused.value.message


# -- resuming ---------------------------------------------------------------------------


async def _drain_cancelled(chunks: AsyncIterator[bytes]) -> None:
    """Unwind ``chunks`` (and the generators under it) by cancelling its next read."""
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            while True:
                await chunks.__anext__()
        except (StopAsyncIteration, httpx.HTTPError):
            pass


class _CutStream(httpx.AsyncByteStream):
    """Passes chunks on until ``deltas`` delta events went by, then fails like a
    dropped connection."""

    def __init__(self, inner: httpx.AsyncByteStream, deltas: int) -> None:
        self._inner = inner
        self._deltas = deltas

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = aiter(self._inner)
        seen = 0
        while seen < self._deltas:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            seen += chunk.count(b"event: delta")
            yield chunk
        await _drain_cancelled(chunks)
        raise httpx.ReadError("connection cut by the test")

    async def aclose(self) -> None:
        await self._inner.aclose()


class CuttingTransport(httpx.AsyncBaseTransport):
    """The network, except that the first event stream breaks after some deltas."""

    def __init__(self, cut_after_deltas: int) -> None:
        self._network = httpx.AsyncHTTPTransport()
        self._cut_after = cut_after_deltas
        self.event_requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._network.handle_async_request(request)
        if not request.url.path.endswith("/events"):
            return response
        self.event_requests.append(request)
        if len(self.event_requests) > 1:
            return response
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_CutStream(response.stream, self._cut_after),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._network.aclose()


async def test_follow_resumes_after_a_dropped_connection(troupe_server: RunningServer) -> None:
    transport = CuttingTransport(cut_after_deltas=3)
    retries: list[tuple[int, BaseException]] = []
    seq_at_cut: list[int | None] = []
    async with troupe_server.client(transport=transport) as client:
        job = await client.start_job("sim", user_message("Keep going"), "t1", "m1")

        def on_retry(attempt: int, cause: BaseException) -> None:
            retries.append((attempt, cause))
            seq_at_cut.append(stream.last_seq)

        events: list[ServerEvent] = []
        async with client.follow(job["id"], on_retry=on_retry) as stream:
            with trio.fail_after(10):
                async for event in stream:
                    events.append(event)
        final = await client.get_job(job["id"])

    assert len(retries) == 1
    assert isinstance(retries[0][1], httpx.ReadError)
    assert len(transport.event_requests) == 2
    assert "last-event-id" not in transport.event_requests[0].headers
    assert transport.event_requests[1].headers["last-event-id"] == str(seq_at_cut[0])
    assert seq_at_cut[0] is not None and seq_at_cut[0] >= 3

    names = [e.event for e in events]
    assert names.count("snapshot") == 1
    assert names.count("status") == 1
    assert names[-1] == "status"
    deltas = [e for e in events if e.event == "delta"]
    seqs = [e.data["seq"] for e in deltas]
    assert seqs == list(range(1, len(seqs) + 1))
    assert [e.id for e in deltas] == [str(s) for s in seqs]
    assert final["status"] == "complete"
    assert "".join(e.data["content"] for e in deltas) == final["content_delta"]
    assert seqs[-1] == final["last_seq"] == events[-1].data["last_seq"]


async def test_follow_can_start_after_a_seq(troupe_server: RunningServer) -> None:
    async with troupe_server.client() as client:
        job = await client.start_job("sim", user_message("Partial"), "t1", "m1")
        everything = await collect(client, job["id"])
        partial = await collect(client, job["id"], after=5)
    all_deltas = [e for e in everything if e.event == "delta"]
    assert len(all_deltas) > 5
    assert [e for e in partial if e.event == "delta"] == all_deltas[5:]
    assert partial[-1] == everything[-1]


# -- reconnection rules on scripted responses ----------------------------------------------


def sse(*events: tuple[str, str, str | None]) -> bytes:
    out = ""
    for name, data, event_id in events:
        if event_id is not None:
            out += f"id: {event_id}\r\n"
        out += f"event: {name}\r\ndata: {data}\r\n\r\n"
    return out.encode()


def delta(seq: int, text: str) -> tuple[str, str, str | None]:
    return ("delta", f'{{"seq": {seq}, "content": "{text}", "reasoning": null}}', str(seq))


SNAPSHOT = ("snapshot", '{"id": "j1", "status": "streaming"}', None)
STATUS = ("status", '{"status": "complete", "last_seq": 3}', None)
SHUTDOWN = ("shutdown", '{"message": "server shutting down", "last_seq": 2}', None)


def scripted(
    answers: list[Callable[[httpx.Request], httpx.Response]],
) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers[min(len(seen), len(answers)) - 1](request)

    return httpx.MockTransport(handler), seen


def stream_of(body: bytes) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _: httpx.Response(
        200, headers={"content-type": "text/event-stream; charset=utf-8"}, content=body
    )


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


async def test_shutdown_event_reconnects_and_skips_repeated_deltas(
    autojump_clock: trio.testing.MockClock,
) -> None:
    transport, seen = scripted(
        [
            stream_of(sse(SNAPSHOT, delta(1, "a"), delta(2, "b"), SHUTDOWN)),
            refuse,
            stream_of(sse(SNAPSHOT, delta(2, "b"), delta(3, "c"), STATUS)),
        ]
    )
    async with TroupeClient("http://troupe.test", "tok", transport=transport) as client:
        events = await collect(client, "j1")
    assert [e.event for e in events] == ["snapshot", "delta", "delta", "delta", "status"]
    assert "".join(e.data["content"] for e in events if e.event == "delta") == "abc"
    assert [r.headers.get("last-event-id") for r in seen] == [None, "2", "2"]


async def test_follow_gives_up_after_consecutive_failures(
    autojump_clock: trio.testing.MockClock,
) -> None:
    transport, seen = scripted([stream_of(sse(SNAPSHOT, delta(1, "a"))), refuse])
    async with TroupeClient(
        "http://troupe.test", "tok", transport=transport, retries=3, backoff=1.0
    ) as client:
        started = trio.current_time()
        with pytest.raises(TroupeConnectionError) as gave_up:
            await collect(client, "j1")
    # one stream that ended early, then three refused reconnections
    assert len(seen) == 4
    assert "after 4 attempts" in gave_up.value.message
    assert "ConnectError" in gave_up.value.message
    assert isinstance(gave_up.value.__cause__, httpx.ConnectError)
    # backoff 1, 2, 4 seconds with jitter down to half
    assert 3.5 <= trio.current_time() - started <= 7.0


async def test_progress_resets_the_failure_count(autojump_clock: trio.testing.MockClock) -> None:
    transport, seen = scripted(
        [
            stream_of(sse(SNAPSHOT, delta(1, "a"))),
            stream_of(sse(SNAPSHOT, delta(1, "a"), delta(2, "b"))),
            stream_of(sse(SNAPSHOT, delta(2, "b"), delta(3, "c"), STATUS)),
        ]
    )
    async with TroupeClient("http://troupe.test", "tok", transport=transport, retries=1) as client:
        events = await collect(client, "j1")
    assert "".join(e.data["content"] for e in events if e.event == "delta") == "abc"
    assert len(seen) == 3


async def test_client_errors_are_not_retried(autojump_clock: trio.testing.MockClock) -> None:
    transport, seen = scripted(
        [
            stream_of(sse(SNAPSHOT, delta(1, "a"), SHUTDOWN)),
            lambda _: httpx.Response(
                404, json={"error": {"code": "not_found", "message": "no such job"}}
            ),
        ]
    )
    async with TroupeClient("http://troupe.test", "tok", transport=transport) as client:
        with pytest.raises(TroupeError) as missing:
            await collect(client, "j1")
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    assert len(seen) == 2


async def test_server_errors_are_retried(autojump_clock: trio.testing.MockClock) -> None:
    transport, seen = scripted(
        [
            lambda _: httpx.Response(503, json={"error": {"code": "server_busy", "message": "x"}}),
            stream_of(sse(SNAPSHOT, delta(1, "a"), STATUS)),
        ]
    )
    async with TroupeClient("http://troupe.test", "tok", transport=transport) as client:
        events = await collect(client, "j1")
    assert [e.event for e in events] == ["snapshot", "delta", "status"]
    assert len(seen) == 2


async def test_notification_stream_reconnects_after_shutdown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    note = ("notification", '{"id": "n1", "job_id": "j1"}', None)
    other = ("notification", '{"id": "n2", "job_id": "j2"}', None)
    transport, seen = scripted(
        [stream_of(sse(note, SHUTDOWN)), refuse, stream_of(sse(other)), refuse]
    )
    async with (
        TroupeClient("http://troupe.test", "tok", transport=transport, retries=2) as client,
        client.follow_notifications() as stream,
    ):
        first = await stream.__anext__()
        second = await stream.__anext__()
        with pytest.raises(TroupeConnectionError):
            await stream.__anext__()
    assert (first.data["id"], second.data["id"]) == ("n1", "n2")
    assert len(seen) == 5
    assert all(r.url.path == "/v1/notifications/events" for r in seen)
