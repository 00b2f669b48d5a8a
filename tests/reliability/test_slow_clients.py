"""Slow and stuck clients: followers that never read, and slowloris.

Followers that never read. ``examples/server.py`` runs in a process of its own (so
its RSS and its file descriptors are its own) on SQLite, fed by an upstream in this
process whose tokens carry their send time, so each normal follower knows the lag of
every token it gets. A first round of jobs has normal followers only: the baseline.
A second round adds ``STUCK`` followers of the same jobs on raw sockets with a tiny
receive buffer, which read the response head and nothing more. The jobs pause until
every stuck follower is open, then go on: the stuck followers' buffers fill, the
server's writes to them wait, and the kernel closes each connection
``http_send_timeout`` after its client took nothing; the server counts each drop
(``troupe_followers_dropped``) and logs it. Asserted: the server's RSS stays under a
bound, every stuck follower is dropped (counted, logged, its socket reset, the
server's descriptors back), the normal followers lose no delta and their lag while
the others are stuck is the baseline's, and a server with stuck followers still
exits on SIGTERM (hypercorn's sends cannot be cancelled: before the send timeout
such a server never exited).

Slowloris. A server in this trio run: a header block over ``http_max_header_bytes``
or with more than ``http_max_headers`` fields gets 431; and 200 clients that send
their headers, or a body, a byte at a time are cut off after
``http_keep_alive_timeout`` (headers) or with 408 after ``http_body_timeout`` (body),
while a normal client is served promptly and follows its job to the end.

Those two run on the real clock: the timeouts under test are the kernel's and
hypercorn's, against real sockets. The body deadline's arithmetic and the stream's
bounded writes and drop accounting are then checked piece by piece on the mock clock.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import attrs
import httpx
import orjson
import pytest
import trio
import trio.testing
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from prometheus_client import CollectorRegistry, Counter
from starlette.types import Message, Receive, Scope, Send
from structlog.testing import capture_logs

from actors.api import DeltaEvent, JobEvent
from actors.config import ServiceConfig
from actors.http.events import ShutdownSignal
from actors.http.limits import RequestLimits
from actors.http.request_context import DIRECT_SEND
from actors.http.sse import MAX_WRITE, JobEventStream, encode_event
from tests.http.conftest import ApiServer, chat_body, make_config, run_api_server
from tests.reliability.figures import Figure, Figures, sized
from tests.reliability.server_process import (
    Child,
    Children,
    authorization,
    server_env,
    wait_ready,
)

# -- followers that never read -------------------------------------------------------

STUCK: Final = sized(500, 1000)
"""Followers that never read."""
STUCK_JOBS: Final = 4
"""Jobs the stuck followers follow (normal followers follow them too)."""
OTHER_JOBS: Final = 4
"""Jobs only normal followers follow."""
RATE: Final = 100.0
"""Tokens a second a job."""
GATE_AT: Final = 50
"""A round's jobs pause after this token until the round's gate opens: once every
stuck follower is open, however long that took. The stuck followers resume after it
(``?after=``), so they get nothing before the gate, then all fill their buffers
together, and stay stuck together."""
TOKENS: Final = GATE_AT + 600
"""An answer's tokens: 6 s of them after the gate, past the send timeout."""
SEND_TIMEOUT: Final = 4.0
"""The server's ``http_send_timeout`` here."""
FILL: Final = 1.5
"""Seconds from the gate to every stuck follower's buffers full (about 10 KB each,
which the server sends before it can tell), at the jobs' pace."""
SEND_BUFFER: Final = 4096
"""The server's ``http_send_buffer`` here (the kernel doubles it)."""
RECEIVE_BUFFER: Final = 1024
"""A stuck follower's ``SO_RCVBUF`` (the kernel raises it to its minimum, 2304)."""
RSS_PER_STUCK: Final = 256 * 1024
"""Bytes of server RSS one stuck follower may cost at most, on average. Measured: 57 to
125 KiB, what a follower that reads costs too (about 80 KiB): the connection, its
tasks and its follower, nothing that grows while it is stuck."""
SHUTDOWN_STUCK: Final = 50
"""Stuck followers left open when the server gets SIGTERM."""
_DROPPED: Final = re.compile(r"^troupe_followers_dropped_total (\S+)$", re.MULTILINE)


class GatedUpstream:
    """An OpenAI-compatible streaming upstream whose tokens carry their send time.

    Token k is ``"<k>:<time_ns>|"``, sent ``k / RATE`` seconds after the request;
    ``TOKENS`` of them, then the finish and usage chunks and ``[DONE]``. The prompt
    names the job, ``"<round>-<n>"``: while ``gates`` holds an unset event for its
    round, a job pauses after token ``GATE_AT`` until the event is set, and goes on
    at the same pace from there.
    """

    def __init__(self) -> None:
        self.gates: dict[str, trio.Event] = {}
        self.base_url = ""

    @classmethod
    @asynccontextmanager
    async def serve(cls) -> AsyncIterator[GatedUpstream]:
        upstream = cls()
        config = HypercornConfig()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        config.loglevel = "WARNING"
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(hypercorn_serve, upstream._app, config)
            upstream.base_url = binds[0] + "/v1"
            try:
                yield upstream
            finally:
                nursery.cancel_scope.cancel()

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        tag = str(orjson.loads(body)["messages"][-1]["content"])
        gate = self.gates.get(tag.rpartition("-")[0])
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        start = trio.current_time()
        for seq in range(1, TOKENS + 1):
            if seq == GATE_AT + 1 and gate is not None:
                await gate.wait()
                start = trio.current_time() - GATE_AT / RATE
            await trio.sleep_until(start + seq / RATE)
            await send(_chunk({"content": f"{seq}:{time.time_ns()}|"}, None))
        await send(_chunk({}, "stop"))
        usage = {"prompt_tokens": 1, "completion_tokens": TOKENS, "total_tokens": TOKENS + 1}
        await send(_event({"choices": [], "usage": usage}))
        await send(_event_bytes(b"[DONE]", more=False))


def _event_bytes(data: bytes, *, more: bool = True) -> Message:
    return {"type": "http.response.body", "body": b"data: " + data + b"\n\n", "more_body": more}


def _event(payload: object) -> Message:
    return _event_bytes(orjson.dumps(payload))


def _chunk(delta: dict[str, str], finish_reason: str | None) -> Message:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    return _event({"object": "chat.completion.chunk", "choices": [choice]})


@attrs.define
class Tokens:
    """What one normal follower of a job got: tokens in order, and each one's lag."""

    job_id: str
    next_seq: int = 1
    problems: list[str] = attrs.Factory(list)
    lags: list[tuple[int, float]] = attrs.Factory(list)
    """Each token's send time (ns, wall clock) and lag (s)."""
    statuses: list[str] = attrs.Factory(list)
    pending: str = ""

    def feed(self, content: str, received_ns: int) -> None:
        """Take a delta's content; its complete ``<seq>:<send ns>|`` tokens are checked."""
        text = self.pending + content
        cut = text.rfind("|")
        self.pending = text[cut + 1 :]
        if cut < 0:
            return
        for token in text[:cut].split("|"):
            seq_text, _, stamp_text = token.partition(":")
            seq, stamp = int(seq_text), int(stamp_text)
            if seq != self.next_seq:
                self.problems.append(f"token {seq} where {self.next_seq} was due")
            self.next_seq = max(self.next_seq, seq + 1)
            self.lags.append((stamp, (received_ns - stamp) / 1e9))

    @property
    def lost(self) -> int:
        """Tokens of the answer this follower never got (0 when it got them all)."""
        return TOKENS - (self.next_seq - 1) + len(self.problems)


async def _follow(client: httpx.AsyncClient, job: Tokens, headers: dict[str, str]) -> None:
    """Read the job's event stream to its end, checking and timing each token."""
    async with client.stream("GET", f"/v1/jobs/{job.job_id}/events", headers=headers) as answer:
        assert answer.status_code == 200, await answer.aread()
        event = ""
        async for line in answer.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "delta":
                job.feed(orjson.loads(line[6:])["content"], time.time_ns())
            elif line.startswith("data: ") and event == "status":
                job.statuses.append(orjson.loads(line[6:])["status"])


async def _create(client: httpx.AsyncClient, tag: str, headers: dict[str, str]) -> str:
    body = chat_body(tag, model="gated", thread_id=f"t-{tag}", message_id=f"m-{tag}")
    created = await client.post("/v1/jobs", json=body, headers=headers)
    assert created.status_code == 202, created.text
    job_id: str = created.json()["id"]
    return job_id


async def _open_stuck(address: tuple[str, int], path: str, token: str) -> trio.socket.SocketType:
    """A follower on a raw socket that reads the response head and never reads again."""
    sock = trio.socket.socket()
    # Set before connecting, so that the window it offers is this small from the start.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    await sock.connect(address)
    request = f"GET {path} HTTP/1.1\r\nHost: troupe\r\nAuthorization: {token}\r\n\r\n"
    await sock.send(request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        piece = await sock.recv(512)
        assert piece, f"the server closed a new follower's stream: {head!r}"
        head += piece
    assert head.startswith(b"HTTP/1.1 200 "), head[:200]
    return sock


async def _reset_by_server(sock: trio.socket.SocketType) -> bool:
    """Read what the socket holds; True if the server had forgotten the connection.

    Once read, the data opens the window again, and a server that dropped the
    connection answers that with a reset. A live one would send more instead.
    """
    try:
        with trio.fail_after(5):
            while await sock.recv(65536):
                pass
    except ConnectionResetError:
        return True
    except trio.TooSlowError:
        return False
    return False  # a clean end: the server finished the stream, it did not drop it


def _rss(pid: int) -> int:
    """The process's resident set, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _dropped(client: httpx.AsyncClient) -> int:
    found = _DROPPED.search((await client.get("/metrics")).text)
    assert found is not None, "the server exports no troupe_followers_dropped_total"
    return int(float(found[1]))


@attrs.define
class RssWatch:
    """The peak RSS of a process, sampled every 50 ms while it runs."""

    pid: int
    peak: int = 0

    async def run(self) -> None:
        while True:
            self.peak = max(self.peak, _rss(self.pid))
            await trio.sleep(0.05)


@attrs.define
class Stuck:
    """The stuck followers: their sockets, and when the server had dropped them all."""

    sockets: list[trio.socket.SocketType] = attrs.Factory(list)
    all_dropped_at: float = 0.0

    async def open(self, address: tuple[str, int], job_ids: list[str], token: str) -> None:
        """Open ``STUCK`` followers of ``job_ids`` (after ``GATE_AT``), 50 at a time."""
        limit = trio.CapacityLimiter(50)

        async def open_one(index: int) -> None:
            async with limit:
                path = f"/v1/jobs/{job_ids[index % len(job_ids)]}/events?after={GATE_AT}"
                self.sockets.append(await _open_stuck(address, path, token))

        async with trio.open_nursery() as nursery:
            for index in range(STUCK):
                nursery.start_soon(open_one, index)

    async def wait_dropped(self, client: httpx.AsyncClient) -> None:
        """Return once the server counts them all dropped (it says so only in /metrics)."""
        while True:
            if await _dropped(client) >= STUCK:
                break
            await trio.sleep(0.2)
        self.all_dropped_at = trio.current_time()


@attrs.frozen
class Round:
    followed: list[Tokens]
    gate_ns: int
    """When the round's gate opened, on the wall clock (the tokens' clock)."""
    gate_at: float
    """The same moment on trio's clock."""

    def lags(self, from_s: float, to_s: float) -> list[float]:
        """The lags of the tokens sent from ``from_s`` to ``to_s`` seconds after the gate."""
        low, high = (self.gate_ns + int(at * 1e9) for at in (from_s, to_s))
        return [lag for job in self.followed for stamp, lag in job.lags if low <= stamp < high]


async def _round(
    client: httpx.AsyncClient,
    upstream: GatedUpstream,
    name: str,
    stuck: Stuck | None,
    address: tuple[str, int],
) -> Round:
    """Start the round's jobs and follow each with a normal follower to its end. With
    ``stuck``, open the stuck followers of the first jobs before the gate, and wait
    until the server has dropped them."""
    headers = authorization(f"user-{name}")
    gate = upstream.gates[name] = trio.Event()
    started = trio.current_time()
    jobs = STUCK_JOBS + OTHER_JOBS
    followed = [Tokens(await _create(client, f"{name}-{n}", headers)) for n in range(jobs)]
    with trio.fail_after(TOKENS / RATE + SEND_TIMEOUT + 60):
        async with trio.open_nursery() as nursery:
            for job in followed:
                nursery.start_soon(_follow, client, job, headers)
            if stuck is not None:
                stuck_jobs = [job.job_id for job in followed[:STUCK_JOBS]]
                await stuck.open(address, stuck_jobs, headers["Authorization"])
                nursery.start_soon(stuck.wait_dropped, client)
            # Every job is at the gate by then.
            await trio.sleep_until(started + GATE_AT / RATE + 0.5)
            gate_ns, gate_at = time.time_ns(), trio.current_time()
            gate.set()
    return Round(followed, gate_ns, gate_at)


def _p(values: list[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (NaN when there are none)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else math.nan


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Children]:
    """The processes a test starts, killed at its end whatever happened."""
    spawned = Children(tmp_path)
    try:
        yield spawned
    finally:
        spawned.reap_all()


async def test_followers_that_never_read_are_dropped_and_cost_the_others_nothing(
    processes: Children, tmp_path: Path, figures: Figures
) -> None:
    async with GatedUpstream.serve() as upstream:
        env = server_env(
            tmp_path / "data",
            upstream.base_url,
            http_send_timeout=SEND_TIMEOUT,
            http_send_buffer=SEND_BUFFER,
            drain_timeout=0.5,
        )
        argv = [sys.executable, "examples/server.py", "--port", "0"]
        server = processes.start("server", argv, env)
        base_url = await server.url()
        parts = urlsplit(base_url)
        address = (parts.hostname or "127.0.0.1", parts.port or 0)
        pid = server.process.pid
        stuck = Stuck()
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            await wait_ready(client)
            try:
                baseline = await _round(client, upstream, "baseline", None, address)
                rss_before, fds_before = _rss(pid), _descriptors(pid)
                watch = RssWatch(pid, rss_before)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(watch.run)
                    loaded = await _round(client, upstream, "stuck", stuck, address)
                    nursery.cancel_scope.cancel()
                fds_after = _descriptors(pid)
                resets = sum([await _reset_by_server(sock) for sock in stuck.sockets])
                dropped = await _dropped(client)
                shutdown_s = await _stop_with_stuck_followers(client, server, address)
            finally:
                for sock in stuck.sockets:
                    sock.close()
    # From the gate, when the stuck followers had something to take, to the server
    # rid of them all.
    recovered = stuck.all_dropped_at - loaded.gate_at

    logged = server.log.read_text().count("follower dropped: it stopped reading")
    followed = baseline.followed + loaded.followed
    lost = sum(job.lost for job in followed)
    # Lag is compared over the tokens sent while every stuck follower was stuck: from
    # their buffers full to their send timeout. (What they cost until then is what
    # any 500 followers cost: load, not the fault.)
    window = (FILL, SEND_TIMEOUT)
    base_lags, lags = baseline.lags(*window), loaded.lags(*window)
    per_stuck = (watch.peak - rss_before) / STUCK
    print(
        f"\n{STUCK} stuck followers: RSS {rss_before / 2**20:.1f} MiB before, peak"
        f" {watch.peak / 2**20:.1f} MiB ({per_stuck / 1024:.1f} KiB a stuck follower);"
        f" fds {fds_before} before, {fds_after} after; dropped {dropped}, logged {logged},"
        f" reset {resets}; all dropped {recovered:.2f} s after the gate; lag p50/p99/max"
        f" ({len(base_lags)} tokens) without {_p(base_lags, 0.5) * 1000:.0f}/"
        f"{_p(base_lags, 0.99) * 1000:.0f}/{_p(base_lags, 1) * 1000:.0f} ms,"
        f" ({len(lags)}) with {_p(lags, 0.5) * 1000:.0f}/{_p(lags, 0.99) * 1000:.0f}/"
        f"{_p(lags, 1) * 1000:.0f} ms; SIGTERM to exit with {SHUTDOWN_STUCK} stuck:"
        f" {shutdown_s:.2f} s"
    )
    figures.record(
        Figure(
            test="followers that never read",
            injected=f"SSE followers with a {RECEIVE_BUFFER} B receive buffer that never read",
            times=STUCK,
            jobs=2 * (STUCK_JOBS + OTHER_JOBS) + 1,
            lost=lost,
            what_lost="deltas (normal followers)",
            recovery_s=recovered,
        )
    )
    assert lost == 0, [(job.job_id, job.problems[:3], job.next_seq) for job in followed]
    for job in followed:
        assert job.statuses == ["complete"], (job.job_id, job.statuses)
    # Every stuck follower was dropped by the server, counted once and logged once.
    assert dropped == STUCK
    assert logged == STUCK
    assert resets == STUCK
    assert fds_after <= fds_before + 20, (fds_before, fds_after)
    assert recovered <= SEND_TIMEOUT + 15, recovered
    # Memory: a bounded cost per stuck follower while they were there.
    assert per_stuck <= RSS_PER_STUCK, (rss_before, watch.peak)
    # The normal followers' lag is the baseline's: a follower that stopped reading
    # holds no one up. (A job, or a server, that waited for its stuck followers would
    # show the others seconds behind, until the send timeout.)
    assert len(base_lags) >= 1000 and len(lags) >= 1000, (len(base_lags), len(lags))
    # The bounds leave room for a busy machine, not for a stall: the stuck followers'
    # jobs stalled from the gate to the drops would put their tokens 1 to 4 s behind.
    assert _p(lags, 0.5) <= _p(base_lags, 0.5) + 0.25, (_p(base_lags, 0.5), _p(lags, 0.5))
    assert _p(lags, 0.99) <= _p(base_lags, 0.99) + 1.5, (_p(base_lags, 0.99), _p(lags, 0.99))
    assert shutdown_s <= SEND_TIMEOUT + 8


async def _stop_with_stuck_followers(
    client: httpx.AsyncClient, server: Child, address: tuple[str, int]
) -> float:
    """SIGTERM the server while stuck followers' writes wait; the seconds it took to exit.

    hypercorn's sends are shielded from cancellation, so only the kernel's send
    timeout lets such a server finish its shutdown.
    """
    headers = authorization("user-shutdown")
    job_id = await _create(client, "shutdown-0", headers)  # no gate: it streams on
    path = f"/v1/jobs/{job_id}/events"
    stuck = [
        await _open_stuck(address, path, headers["Authorization"]) for _ in range(SHUTDOWN_STUCK)
    ]
    try:
        # About 150 events in: past what the buffers hold, short of the send timeout.
        await trio.sleep(1.5)
        server.process.send_signal(signal.SIGTERM)
        sent_at = trio.current_time()
        with trio.fail_after(SEND_TIMEOUT + 20):
            code = await trio.to_thread.run_sync(server.process.wait, abandon_on_cancel=True)
        assert code == 0, server.log.read_text()[-2000:]
        return trio.current_time() - sent_at
    finally:
        for sock in stuck:
            sock.close()


# -- slowloris --------------------------------------------------------------------------

SLOW_CLIENTS: Final = sized(200, 600)
"""Slow clients at once: half send their headers a byte at a time, half their body."""
HEADER_TIMEOUT: Final = 3.0
"""The server's ``http_keep_alive_timeout`` here."""
BODY_TIMEOUT: Final = 3.0
"""The server's ``http_body_timeout`` here."""
CUT_SLACK: Final = sized(3, 8)
"""Seconds past its limit by which a slow client must have been cut: the server, busy
with all of them on 2 cores, runs its timers late (600 at once were cut up to 3.3 s
late)."""
TRICKLE: Final = 0.5
"""Seconds between two bytes of a slow client."""
PROMPT: Final = 1.0
"""Seconds a normal request may take while the slow clients trickle (it takes tens of
milliseconds; one that waited for a slow client to finish would take seconds)."""


@asynccontextmanager
async def _slow_server(tmp_path: Path) -> AsyncIterator[ApiServer]:
    config = make_config(
        tmp_path,
        http_keep_alive_timeout=HEADER_TIMEOUT,
        http_body_timeout=BODY_TIMEOUT,
        simulated_tokens_per_second=1000.0,
    )
    async with run_api_server(config) as server:
        yield server


def _address(server: ApiServer) -> tuple[str, int]:
    parts = urlsplit(server.base_url)
    return parts.hostname or "127.0.0.1", parts.port or 0


async def _connect(server: ApiServer) -> trio.SocketStream:
    host, port = _address(server)
    return await trio.open_tcp_stream(host, port)


async def _read_to_end(stream: trio.SocketStream, limit: float) -> bytes:
    """Everything the server sends until it closes the connection (reset included)."""
    got = b""
    with trio.fail_after(limit):
        while True:
            try:
                piece = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return got
            if not piece:
                return got
            got += piece


@attrs.define
class Trickle:
    """One slow client: when it started, when the server cut it off, what it answered."""

    kind: str
    started: float = 0.0
    connected: trio.Event = attrs.Factory(trio.Event)
    cut_after: float | None = None
    answer: bytes = b""


async def _trickle(server: ApiServer, client: Trickle, token: str) -> None:
    """Send a request slowly, a byte every ``TRICKLE`` seconds, until the server closes
    the connection; record when it did and what it answered."""
    stream = await _connect(server)
    client.started = trio.current_time()
    client.connected.set()
    if client.kind == "header":
        head = b"GET /healthz HTTP/1.1\r\n"
        rest = b"Host: troupe\r\n" + b"X-Slow: " + b"a" * 10_000 + b"\r\n\r\n"
    else:
        body = orjson.dumps(chat_body("slow body"))
        head = (
            b"POST /v1/jobs HTTP/1.1\r\nHost: troupe\r\nContent-Type: application/json\r\n"
            + f"Authorization: {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        rest = body
    async with stream:
        await stream.send_all(head)

        async def send_slowly() -> None:
            try:
                for byte in rest:
                    await trio.sleep(TRICKLE)
                    await stream.send_all(bytes([byte]))
            except trio.BrokenResourceError:
                pass  # cut off: what the test waits for

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_slowly)
            client.answer = await _read_to_end(stream, HEADER_TIMEOUT + BODY_TIMEOUT + 10)
            client.cut_after = trio.current_time() - client.started
            nursery.cancel_scope.cancel()


async def _raw_request(server: ApiServer, request: bytes) -> bytes:
    stream = await _connect(server)
    async with stream:
        # The server may close before it has read the whole request.
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(request)
        return await _read_to_end(stream, 10)


def _status_and_body(answer: bytes) -> tuple[int, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        size, _, rest = body.partition(b"\r\n")
        body = rest[: int(size, 16)]
    return status, orjson.loads(body) if body else None


async def test_slowloris_clients_are_cut_off_and_others_are_served(
    tmp_path: Path, figures: Figures
) -> None:
    async with _slow_server(tmp_path) as server:
        # Oversized and overfull header blocks are refused at once: whole (the app
        # counts), or still incomplete past the limit (h11 does), 431 either way.
        big = b"GET /v1/jobs HTTP/1.1\r\nHost: troupe\r\nX-Big: " + b"b" * 20_000
        status, body = _status_and_body(await _raw_request(server, big + b"\r\n\r\n"))
        assert status == 431, body
        assert body["error"]["code"] == "headers_too_large", body
        answer = await _raw_request(server, big)
        assert answer == b"" or _status_and_body(answer)[0] == 431, answer[:200]
        many = "".join(f"X-H{n}: {n}\r\n" for n in range(150))
        for path, shape in (("/v1/jobs", dict), ("/api/jobs/x/status", str)):
            request = f"GET {path} HTTP/1.1\r\nHost: troupe\r\n{many}\r\n".encode()
            status, body = _status_and_body(await _raw_request(server, request))
            assert status == 431, body
            assert isinstance(body["error"], shape), body
            if shape is dict:
                assert body["error"]["code"] == "too_many_headers", body

        # Many at once, while a normal client starts a job, follows it and polls.
        slow = [Trickle("header" if n % 2 else "body") for n in range(SLOW_CLIENTS)]
        latencies: list[float] = []
        deltas: list[int] = []
        statuses: list[str] = []
        async with server.client() as client, trio.open_nursery() as nursery:
            for n, one in enumerate(slow):
                # A user each: the per-user rate limit is not what this test is about.
                nursery.start_soon(_trickle, server, one, f"Bearer {server.token(f'slow-{n}')}")
            with trio.fail_after(10):
                for one in slow:
                    await one.connected.wait()
            await trio.sleep(0.1)  # every slow client has sent the start of its request
            headers = server.auth("slowloris")
            started = trio.current_time()
            created = await client.post("/v1/jobs", json=chat_body("served?"), headers=headers)
            latencies.append(trio.current_time() - started)
            assert created.status_code == 202, created.text
            job_id = created.json()["id"]
            async with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as got:
                event = ""
                async for line in got.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "delta":
                        deltas.append(orjson.loads(line[6:])["seq"])
                    elif line.startswith("data: ") and event == "status":
                        statuses.append(orjson.loads(line[6:])["status"])
            for _ in range(3):
                started = trio.current_time()
                polled = await client.get(f"/v1/jobs/{job_id}", headers=headers)
                latencies.append(trio.current_time() - started)
                assert polled.status_code == 200, polled.text
                started = trio.current_time()
                assert (await client.get("/healthz")).status_code == 200
                latencies.append(trio.current_time() - started)
            served_until = trio.current_time()
        final = polled.json()
        lost = final["last_seq"] - len(set(deltas))

    cuts = [one.cut_after for one in slow]
    assert all(cut is not None for cut in cuts), "a slow client was never cut off"
    longest = max(cut for cut in cuts if cut is not None)
    first_cut = min(one.started + (one.cut_after or 0.0) for one in slow)
    print(
        f"\n{SLOW_CLIENTS} slow clients: cut after {min(c for c in cuts if c is not None):.2f}"
        f" to {longest:.2f} s; normal requests meanwhile {max(latencies) * 1000:.0f} ms at"
        f" most; the followed job had {final['last_seq']} deltas"
    )
    figures.record(
        Figure(
            test="slowloris",
            injected="clients sending headers or a body a byte per 500 ms",
            times=SLOW_CLIENTS,
            jobs=1,
            lost=lost,
            what_lost="deltas (normal follower)",
            recovery_s=longest,
        )
    )
    assert lost == 0, (final["last_seq"], deltas[:20])
    assert statuses == ["complete"], statuses
    assert deltas == list(range(1, final["last_seq"] + 1))
    # The normal client was served while every slow client still held its connection.
    assert served_until < first_cut, (served_until, first_cut)
    assert max(latencies) <= PROMPT, latencies
    for one in slow:
        assert one.cut_after is not None
        limit = HEADER_TIMEOUT if one.kind == "header" else BODY_TIMEOUT
        assert limit * 0.9 <= one.cut_after <= limit + CUT_SLACK, (one.kind, one.cut_after)
        if one.kind == "header":
            assert one.answer == b"", one.answer[:200]
        else:
            status, body = _status_and_body(one.answer)
            assert status == 408, one.answer[:200]
            assert body["error"]["code"] == "request_timeout", body


# -- the limits and the stalled stream, one piece at a time, on the mock clock -----------


class _Peer:
    """An ASGI server's side of one request, scripted: the body's pieces with the
    virtual seconds before each, then nothing until ``disconnect`` is set."""

    def __init__(self, pieces: list[tuple[float, bytes]]) -> None:
        self.pieces = list(pieces)
        self.disconnect = trio.Event()
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        if self.pieces:
            delay, data = self.pieces.pop(0)
            await trio.sleep(delay)
            return {"type": "http.request", "body": data, "more_body": bool(self.pieces)}
        await self.disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    def answer(self) -> tuple[int, Any]:
        status = next(m["status"] for m in self.sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")
        return status, orjson.loads(body) if body else None


def _scope(path: str, headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers or [(b"host", b"troupe")],
    }


async def _echo_body(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that reads the whole body, answers its length, then waits for the client
    to leave (as an event stream does)."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": orjson.dumps({"length": len(body)})})
    while (await receive())["type"] != "http.disconnect":
        pass


async def test_request_limits_cut_slow_bodies_and_header_floods_only(
    autojump_clock: trio.testing.MockClock, figures: Figures
) -> None:
    config = ServiceConfig(
        http_body_timeout=1.0,
        http_body_min_rate=100,
        http_max_headers=3,
        http_max_header_bytes=1024,
    )
    limits = RequestLimits(_echo_body, config)
    tried = 0

    async def run(scope: Scope, peer: _Peer) -> float:
        nonlocal tried
        tried += 1
        started = trio.current_time()
        await limits(scope, peer.receive, peer.send)
        return trio.current_time() - started

    # At the minimum rate (10 bytes every 0.1 s), a body may take far longer than the
    # timeout: each 100 bytes earn it a second. Then the wait for the client's
    # disconnect is not bounded: it leaves after a minute.
    steady = _Peer([(0.1, b"x" * 10)] * 60)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, _scope("/v1/jobs"), steady)
        await trio.sleep(66.0)
        steady.disconnect.set()
    assert steady.answer() == (200, {"length": 600})
    lost = 0 if steady.answer()[1]["length"] == 600 else 1

    # At half of it, the body is cut when it falls behind: 1 s + received / 100 B/s.
    for path, shape in (("/v1/jobs", dict), ("/api/openrouter/stream", str)):
        slow = _Peer([(0.2, b"x" * 10)] * 60)
        took = await run(_scope(path), slow)
        status, body = slow.answer()
        assert status == 408, body
        assert isinstance(body["error"], shape), body
        # 1 s, plus 0.8 s earned by the 80 bytes that came in time.
        assert took == pytest.approx(1.8), took
        headers = next(m["headers"] for m in slow.sent if m["type"] == "http.response.start")
        assert (b"connection", b"close") in headers

    # Header floods: more fields, or more bytes, than allowed.
    many = [(b"x-h%d" % n, b"1") for n in range(4)]
    big = [(b"x-big", b"b" * 1100)]
    for headers, code in ((many, "too_many_headers"), (big, "headers_too_large")):
        flooded = _Peer([(0.0, b"{}")])
        await run(_scope("/v1/jobs", headers), flooded)
        assert flooded.answer()[0] == 431
        assert flooded.answer()[1]["error"]["code"] == code
    # Within both limits, a request goes through.
    fine = _Peer([(0.0, b"{}")])
    fine.disconnect.set()
    await run(_scope("/v1/jobs", [(b"host", b"troupe"), (b"x-a", b"a" * 900)]), fine)
    assert fine.answer() == (200, {"length": 2})

    figures.record(
        Figure(
            test="request limits (mock clock)",
            injected="bodies at and under the minimum rate, header floods",
            times=tried,
            jobs=0,
            lost=lost,
            what_lost="requests wrongly refused",
            clock="virtual",
        )
    )
    assert lost == 0


class _LiveFollower:
    """A follower of a running job: the given batches, then nothing more."""

    def __init__(self, batches: list[list[JobEvent]]) -> None:
        self.batches = list(batches)
        self.last_seq = 0
        self.job_id = "job-stalled"
        self.closed = False

    async def next_batch(self) -> list[JobEvent]:
        if not self.batches:
            await trio.sleep_forever()
        await trio.lowlevel.checkpoint()
        return self.batches.pop(0)

    def close(self) -> None:
        self.closed = True


async def test_a_stream_writes_bounded_pieces_and_counts_a_drop_only_when_stalled(
    autojump_clock: trio.testing.MockClock, figures: Figures
) -> None:
    batch: list[JobEvent] = [DeltaEvent(seq, "y" * 1000) for seq in range(1, 257)]
    expected = b"".join(encode_event(event) for event in batch)

    async def serve(stall: float, client_leaves: bool, leave_after: float) -> tuple[_Peer, float]:
        """Stream ``batch`` to a peer whose first write takes ``stall`` seconds (ending,
        if ``client_leaves``, with its disconnect, as a kernel that gave up on it); or
        that leaves by itself ``leave_after`` seconds in. Returns the peer and the drops."""
        registry = CollectorRegistry()
        dropped = Counter("dropped", "drops", registry=registry)
        peer = _Peer([(0.0, b"")])
        writes = 0

        async def direct(message: Message) -> None:
            nonlocal writes
            writes += 1
            if writes == 1 and stall:
                # hypercorn's sends cannot be cancelled.
                with trio.CancelScope(shield=True):
                    await trio.sleep(stall)
                if client_leaves:
                    peer.disconnect.set()
            peer.sent.append(message)

        follower = _LiveFollower([batch])
        stream = JobEventStream(follower, ShutdownSignal(), 15.0, dropped=dropped)  # type: ignore[arg-type]
        scope = {"type": "http", "method": "GET", DIRECT_SEND: direct}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream, scope, peer.receive, peer.send)
            if not client_leaves:
                await trio.sleep(leave_after)
                peer.disconnect.set()
        assert follower.closed
        return peer, registry.get_sample_value("dropped_total") or 0.0

    cases = 0
    with capture_logs() as logs:
        # Stalled, then gone: one drop, logged with its job.
        peer, drops = await serve(stall=2.0, client_leaves=True, leave_after=0.0)
        cases += 1
        assert drops == 1
        assert [e["job_id"] for e in logs if e["event"].startswith("follower dropped")] == [
            "job-stalled"
        ]
        # Slow once but still there, leaving later by itself: no drop.
        peer, drops = await serve(stall=2.0, client_leaves=False, leave_after=10.0)
        cases += 1
        assert drops == 0
        bodies = [m["body"] for m in peer.sent if m["type"] == "http.response.body"]
        # Every write is bounded (one event past the bound at most), and together they
        # are the batch, in order.
        assert all(len(body) <= MAX_WRITE + len(encode_event(batch[0])) for body in bodies)
        assert len(bodies) > 1
        assert b"".join(bodies) == expected
        # Never stalled, gone: no drop either.
        peer, drops = await serve(stall=0.0, client_leaves=False, leave_after=1.0)
        cases += 1
        assert drops == 0
    assert len([e for e in logs if e["event"].startswith("follower dropped")]) == 1
    lost = len(expected) - len(b"".join(bodies))

    figures.record(
        Figure(
            test="stalled event stream (mock clock)",
            injected="a write that waits 2 s, with and without the client's disconnect",
            times=cases,
            jobs=0,
            lost=lost,
            what_lost="bytes of events",
            clock="virtual",
        )
    )
    assert lost == 0
