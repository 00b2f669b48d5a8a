"""The event stream of ``GET /v1/jobs/{id}/events``: the hot path of the API.

Every delta of every followed job goes through here, so it is an ASGI
response of its own rather than sse-starlette's: each event is encoded once,
straight to bytes with orjson, and every event the follower has ready goes out
in one ``http.response.body`` message, sent on the server's own ``send``
(:data:`~actors.http.request_context.DIRECT_SEND`) past the middleware. The
response start and its end still go through the middleware, so the request
id, the status and the access line stay per request.

One task reads the follower and writes; beside it, one sends a keep-alive
comment whenever nothing was written for ``keepalive`` seconds (from the
start, so a job that has not produced its first token yet is kept open too),
and one watches ``receive()`` for the client's disconnect, which ends the
stream at once. The :class:`~actors.http.events.ShutdownSignal` ends it with
a ``shutdown`` event.

A follower's writes are bounded: at most ``MAX_WRITE`` bytes (or one event) a
message, and one message at a time, so a client that stops reading holds that
much here, plus the kernel's send buffer (``http_send_buffer``). Past it the write
waits; the kernel closes a connection whose client has taken nothing for
``http_send_timeout``, and a stream whose connection ended while a write to it
waited counts as a dropped follower (``troupe_followers_dropped``, and a warning
in the log).
"""

from __future__ import annotations

import orjson
import structlog
import trio
from prometheus_client import Counter
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from actors.api import DeltaEvent, JobEvent, SnapshotEvent, StatusEvent
from actors.errors import JobNotFound
from actors.http.events import ShutdownSignal
from actors.http.request_context import DIRECT_SEND
from actors.http.schemas import delta_json, job_json, status_json
from actors.jobs.following import JobFollower

__all__ = [
    "KEEPALIVE",
    "MAX_WRITE",
    "JobEventStream",
    "client_gone",
    "encode_event",
    "raise_single",
]

log = structlog.get_logger("troupe.http")

KEEPALIVE = b": keep-alive\n\n"
"""The comment sent on an idle stream, so that proxies do not drop it."""

_DELTA = b"id: %d\nevent: delta\ndata: %b\n\n"
_NAMED = b"event: %b\ndata: %b\n\n"

MAX_WRITE = 16 * 1024
"""Most bytes of events one write carries (a single larger event goes alone)."""

# A write that took this long waited for the client to read (or for a busy server).
_STALL = 0.1


def encode_event(event: JobEvent) -> bytes:
    """One event as SSE bytes: ``delta`` with ``id:`` = seq, ``snapshot``, ``status``.

    orjson escapes line breaks inside strings, so the JSON is one ``data:`` line.
    """
    if isinstance(event, DeltaEvent):
        return _DELTA % (event.seq, orjson.dumps(delta_json(event)))
    if isinstance(event, SnapshotEvent):
        return _NAMED % (b"snapshot", orjson.dumps(job_json(event.job)))
    return _NAMED % (b"status", orjson.dumps(status_json(event)))


class JobEventStream(Response):
    """A job's events as Server-Sent Events, until its status, the client's
    disconnect, or the server's shutdown.

    A disconnect only closes the follower: the job goes on. The follower is
    closed however the stream ends. ``dropped`` counts the streams whose
    connection ended while a write to the client waited.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        follower: JobFollower,
        shutdown: ShutdownSignal,
        keepalive: float,
        *,
        dropped: Counter | None = None,
    ) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers(
            {"Cache-Control": "no-store", "Connection": "keep-alive", "X-Accel-Buffering": "no"}
        )
        self._follower = follower
        self._shutdown = shutdown
        self._keepalive = keepalive
        # The seq of the last delta written, for the ``shutdown`` event's resume point.
        self._last_seq = follower.last_seq
        self._last_write = 0.0
        self._writing = False
        self._write_done = trio.lowlevel.ParkingLot()
        self._disconnected = False
        self._dropped = dropped
        # How long the write that the connection ended in had waited, if it had.
        self._dropped_after: float | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        direct: Send = scope.get(DIRECT_SEND, send)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            if scope["method"] == "HEAD":
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            self._last_write = trio.current_time()
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch_disconnect, receive, nursery.cancel_scope)
                    if self._keepalive > 0:
                        nursery.start_soon(self._keep_alive, direct)
                    try:
                        await self._pump(direct)
                    finally:
                        nursery.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                raise_single(group)
        finally:
            self._follower.close()
            if self._dropped_after is not None:
                self._report_drop(self._dropped_after)
        if not self._disconnected:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _pump(self, send: Send) -> None:
        """Read the follower and write what it has, a batch per message; return after
        the ``status`` event, or the ``shutdown`` event, or once the job is gone."""
        next_batch = self._follower.next_batch
        shutdown = self._shutdown
        while True:
            try:
                got, batch = await shutdown.run_until_triggered(next_batch)
            except JobNotFound:
                return  # deleted by retention since the route checked it
            if not got:
                await self._write(send, self._farewell())
                return
            if not batch:
                return
            frames = []
            size = 0
            finished = False
            for event in batch:
                frame = encode_event(event)
                frames.append(frame)
                size += len(frame)
                if isinstance(event, DeltaEvent):
                    self._last_seq = event.seq
                elif isinstance(event, StatusEvent):
                    finished = True
                    break
                if size >= MAX_WRITE:
                    await self._write(send, _take(frames))
                    size = 0
            if frames:
                await self._write(send, _take(frames))
            if finished:
                return

    def _farewell(self) -> bytes:
        data = {
            "message": "server shutting down; resume with Last-Event-ID",
            "last_seq": self._last_seq,
        }
        return _NAMED % (b"shutdown", orjson.dumps(data))

    async def _write(self, send: Send, body: bytes) -> None:
        """Send ``body`` as one message; waits while the other task's write is in
        progress, so that writes never overlap."""
        # Rare: a keep-alive goes only on an idle stream.
        while self._writing:
            await self._write_done.park()
        self._writing = True
        # Stamped as it starts: a write that waits for a slow client is not idleness.
        started = self._last_write = trio.current_time()
        try:
            await send({"type": "http.response.body", "body": body, "more_body": True})
        finally:
            self._writing = False
            if self._write_done:
                self._write_done.unpark_all()
        waited = trio.current_time() - started
        if waited >= _STALL:
            # hypercorn swallows a send's error and queues the disconnect for our
            # watcher, which has been woken by then: let it run before looking.
            await trio.lowlevel.cancel_shielded_checkpoint()
            await trio.lowlevel.cancel_shielded_checkpoint()
            if self._disconnected:
                self._dropped_after = waited

    def _report_drop(self, waited: float) -> None:
        """Say that the client stopped reading and its connection was lost for it."""
        if self._dropped is not None:
            self._dropped.inc()
        log.warning(
            "follower dropped: it stopped reading",
            job_id=self._follower.job_id,
            waited_s=round(waited, 3),
        )

    async def _keep_alive(self, send: Send) -> None:
        interval = self._keepalive
        while True:
            due = self._last_write + interval
            if trio.current_time() < due:
                await trio.sleep_until(due)
            elif self._writing:
                # A write that takes this long: the stream is not idle, the client is slow.
                await trio.sleep(interval)
            else:
                await self._write(send, KEEPALIVE)

    async def _watch_disconnect(self, receive: Receive, scope: trio.CancelScope) -> None:
        await client_gone(receive)
        self._disconnected = True
        scope.cancel()


def _take(frames: list[bytes]) -> bytes:
    """The frames joined, the list emptied: while a write waits for a slow client,
    its bytes are held once, by the write."""
    body = b"".join(frames)
    frames.clear()
    return body


async def client_gone(receive: Receive) -> None:
    """Return once the client has disconnected. Hypercorn drops sends after a
    disconnect silently, so only ``receive()`` tells."""
    while (await receive())["type"] != "http.disconnect":
        pass


def raise_single(group: BaseExceptionGroup[BaseException]) -> None:
    """Re-raise the one error of a task group on its own, as Starlette's streaming
    responses do, so that the layers above see the error and not a group."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    raise error
