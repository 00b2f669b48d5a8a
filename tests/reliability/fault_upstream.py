"""An upstream that misbehaves below HTTP, where no HTTP server library would let it.

:class:`FaultPeer` listens on 127.0.0.1 with a bare trio socket server. It reads each
request with h11 (so the request side is parsed properly) and answers with the play
scripted for the request's ``model``, which may break HTTP on purpose::

    async with FaultPeer.serve() as peer:
        peer.play("m", reset_after(Script.stream().content("Half ").body, gate))
        ...  # point troupe at peer.base_url
        peer.requests[0].closed_at  # when troupe hung up, on trio's clock

Plays (each an ``async (PeerExchange) -> None``):

- :func:`answer`: a well-formed 200 event stream with the given body, then the end;
- :func:`reset_after`: a 200 head and some of the body, then (once ``gate`` is set) a
  TCP reset, the way a crashed proxy or a dropped NAT entry ends a stream;
- :func:`garbage`: bytes that are no HTTP response at all, then the end;
- :func:`endless_head`: a status line, then one more header line every ``interval``,
  never the blank line that ends the head;
- :func:`redirect`: a well-formed redirect to ``location``.

``peer.play(model, *plays)`` gives one play per attempt: the n-th request for that
model gets ``plays[n]``, the last repeats. Every answer closes its connection, so no
kept-alive connection carries a request to the wrong play.
"""

from __future__ import annotations

import functools
import random
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import attrs
import h11
import orjson
import trio

__all__ = [
    "FaultPeer",
    "PeerExchange",
    "PeerRequest",
    "Play",
    "answer",
    "endless_head",
    "garbage",
    "redirect",
    "reset_after",
]

_EVENT_STREAM = [("content-type", "text/event-stream"), ("connection", "close")]


@attrs.define
class PeerRequest:
    """One request the peer received; ``attempt`` counts from 0 per model.

    ``closed`` is set (and ``closed_at`` is trio's clock then) when the client closed
    its end while the play was still running.
    """

    model: str
    path: str
    headers: dict[str, str]
    attempt: int
    closed: trio.Event = attrs.field(factory=trio.Event)
    closed_at: float | None = None


@attrs.define
class PeerExchange:
    """What a play works with: the socket, h11's view of the connection, the request."""

    stream: trio.SocketStream
    connection: h11.Connection
    request: PeerRequest

    async def send_event(self, event: h11.Event) -> None:
        """Send one well-formed piece of the response (head, body data, end)."""
        data = self.connection.send(event)
        if data:
            await self.stream.send_all(data)

    async def send_raw(self, data: bytes) -> None:
        """Send bytes as they are, outside h11."""
        await self.stream.send_all(data)


Play = Callable[[PeerExchange], Awaitable[None]]


def answer(body: bytes) -> Play:
    """A 200 event stream whose body is ``body``, then a proper end."""

    async def play(exchange: PeerExchange) -> None:
        await exchange.send_event(h11.Response(status_code=200, headers=_EVENT_STREAM))
        await exchange.send_event(h11.Data(data=body))
        await exchange.send_event(h11.EndOfMessage())

    return play


def reset_after(body: bytes, gate: trio.Event | None = None) -> Play:
    """A 200 event stream with ``body``, then a TCP reset once ``gate`` is set (at once
    without one): SO_LINGER of 0 makes the close send RST instead of FIN."""

    async def play(exchange: PeerExchange) -> None:
        await exchange.send_event(h11.Response(status_code=200, headers=_EVENT_STREAM))
        if body:
            await exchange.send_event(h11.Data(data=body))
        if gate is not None:
            await gate.wait()
        exchange.stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await exchange.stream.aclose()

    return play


def garbage(size: int, seed: int) -> Play:
    """``size`` seeded random bytes where the response should be, then the end."""
    noise = random.Random(seed).randbytes(size)

    async def play(exchange: PeerExchange) -> None:
        await exchange.send_raw(noise)

    return play


def endless_head(interval: float) -> Play:
    """A 200 status line, then a header line every ``interval`` seconds, forever."""

    async def play(exchange: PeerExchange) -> None:
        await exchange.send_raw(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
        number = 0
        while True:
            await trio.sleep(interval)
            number += 1
            await exchange.send_raw(f"x-still-coming-{number}: {number}\r\n".encode())

    return play


async def _not_found(exchange: PeerExchange) -> None:
    headers = [("content-length", "0"), ("connection", "close")]
    await exchange.send_event(h11.Response(status_code=404, headers=headers))
    await exchange.send_event(h11.EndOfMessage())


def redirect(status: int, location: str) -> Play:
    """A ``status`` redirect to ``location`` with an empty body."""

    async def play(exchange: PeerExchange) -> None:
        headers = [("location", location), ("content-length", "0"), ("connection", "close")]
        await exchange.send_event(h11.Response(status_code=status, headers=headers))
        await exchange.send_event(h11.EndOfMessage())

    return play


class FaultPeer:
    """The peer; create it with :meth:`serve`. Unscripted models get a 404."""

    def __init__(self) -> None:
        self.base_url = ""
        self.requests: list[PeerRequest] = []
        self.connections = 0
        self._plays: dict[str, tuple[Play, ...]] = {}
        self._attempts: dict[str, int] = {}

    @classmethod
    @asynccontextmanager
    async def serve(cls) -> AsyncIterator[FaultPeer]:
        """Listen on 127.0.0.1 at a free port for the duration of the block."""
        peer = cls()
        async with trio.open_nursery() as nursery:
            listeners: list[trio.SocketListener] = await nursery.start(
                functools.partial(trio.serve_tcp, peer._handle, 0, host="127.0.0.1")
            )
            host, port = listeners[0].socket.getsockname()[:2]
            peer.base_url = f"http://{host}:{port}/v1"
            try:
                yield peer
            finally:
                nursery.cancel_scope.cancel()

    def play(self, model: str, *plays: Play) -> None:
        """Answer the n-th request for ``model`` (from now) with ``plays[n]``; the last
        repeats."""
        if not plays:
            raise ValueError("give at least one play")
        self._plays[model] = plays
        self._attempts[model] = 0

    def for_model(self, model: str) -> list[PeerRequest]:
        """The requests received for ``model``, in order."""
        return [request for request in self.requests if request.model == model]

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        connection = h11.Connection(h11.SERVER)
        try:
            request = await self._read_request(stream, connection)
        except (h11.RemoteProtocolError, trio.BrokenResourceError):
            await stream.aclose()
            return
        if request is None:
            await stream.aclose()
            return
        plays = self._plays.get(request.model)
        if plays is None:
            plays = (_not_found,)
        else:
            self._attempts[request.model] += 1
        exchange = PeerExchange(stream, connection, request)
        play = plays[min(request.attempt, len(plays) - 1)]
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_close, exchange, nursery.cancel_scope)
                await play(exchange)
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            # The client went away mid-play, and a send noticed it first.
            _record_close(request)
        finally:
            await stream.aclose()

    async def _read_request(
        self, stream: trio.SocketStream, connection: h11.Connection
    ) -> PeerRequest | None:
        """Read one request through h11; None if the client left before it ended."""
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return None
        assert head is not None
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        model = str(parsed.get("model", "")) if isinstance(parsed, dict) else ""
        request = PeerRequest(
            model=model,
            path=head.target.decode("latin-1"),
            headers={k.decode("latin-1"): v.decode("latin-1") for k, v in head.headers},
            attempt=self._attempts.get(model, 0),
        )
        self.requests.append(request)
        return request

    @staticmethod
    async def _watch_close(exchange: PeerExchange, play_scope: trio.CancelScope) -> None:
        """Record the client closing its end, and stop the play then."""
        try:
            while await exchange.stream.receive_some(65536):
                pass  # a client sends nothing more after its request
        except trio.ClosedResourceError:
            return  # the play closed the socket itself (a reset)
        except trio.BrokenResourceError:
            pass
        _record_close(exchange.request)
        play_scope.cancel()


def _record_close(request: PeerRequest) -> None:
    if not request.closed.is_set():
        request.closed_at = trio.current_time()
        request.closed.set()
