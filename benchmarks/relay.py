"""The live-jobs benchmark's baseline: a bare relay of upstream SSE streams to followers.

Usage::

    python benchmarks/relay.py --upstream http://127.0.0.1:PORT/v1 [--port 0]

A hypercorn (trio worker) ASGI app with httpx as the upstream client, the stack
troupe serves on, and nothing else: no auth, no persistence, no actors, no caps.

* ``POST /jobs`` with ``{"model", "messages"}``: 202 ``{"id", "status"}``; a task starts
  streaming ``{upstream}/chat/completions`` and keeps each content delta in a list.
* ``GET /jobs/{id}/events``: SSE, ``delta`` events (``id:`` = seq, data ``{"seq",
  "content"}``) from the first one (or after ``Last-Event-ID``), then one ``status``
  event ``{"status", "last_seq"}``; the deltas waiting when a follower wakes go in one write.
* ``GET /jobs/{id}``: ``{"id", "status", "content"}``.

The per-job list is bounded by the answer's length, and jobs are never deleted: the
relay lives for one benchmark run. It prints ``relay listening on <url>`` when ready.
"""

from __future__ import annotations

import argparse
import functools
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

import httpx
import orjson
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import Framework

__all__ = ["Relay", "main"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _Job:
    def __init__(self) -> None:
        self.deltas: list[str] = []
        self.status = "streaming"
        self.changed = trio.Event()

    def publish(self, content: str | None = None, status: str | None = None) -> None:
        if content is not None:
            self.deltas.append(content)
        if status is not None and self.status == "streaming":
            self.status = status
        changed, self.changed = self.changed, trio.Event()
        changed.set()


class Relay:
    """The ASGI app; its forwarding tasks run in ``nursery``."""

    def __init__(self, url: str, client: httpx.AsyncClient, nursery: trio.Nursery) -> None:
        self._url = url.rstrip("/") + "/chat/completions"
        self._client = client
        self._nursery = nursery
        self._jobs: dict[str, _Job] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        parts = scope["path"].strip("/").split("/")
        job = self._jobs.get(parts[1]) if len(parts) >= 2 and parts[0] == "jobs" else None
        if scope["method"] == "POST" and parts == ["jobs"]:
            await self._create(receive, send)
        elif scope["method"] == "GET" and job is not None and parts[2:] == ["events"]:
            last = dict(scope["headers"]).get(b"last-event-id", b"0")
            await self._follow(job, int(last), receive, send)
        elif scope["method"] == "GET" and job is not None and len(parts) == 2:
            body = {"id": parts[1], "status": job.status, "content": "".join(job.deltas)}
            await _json(send, 200, body)
        else:
            await _json(send, 404, {"error": "not found"})

    async def _create(self, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        request = orjson.loads(body)
        job_id, job = uuid.uuid4().hex, _Job()
        self._jobs[job_id] = job
        upstream_body = {"model": request["model"], "messages": request["messages"], "stream": True}
        self._nursery.start_soon(self._forward, job, upstream_body)
        await _json(send, 202, {"id": job_id, "status": job.status})

    async def _forward(self, job: _Job, body: dict[str, Any]) -> None:
        headers = {"Authorization": "Bearer relay", "Accept": "text/event-stream"}
        finish: str | None = None
        done = False
        try:
            async with self._client.stream("POST", self._url, json=body, headers=headers) as answer:
                if answer.status_code != 200:
                    job.publish(status="error")
                    return
                pending = b""
                async for data in answer.aiter_raw():
                    pending += data
                    while (end := pending.find(b"\n\n")) >= 0:
                        event, pending = pending[:end], pending[end + 2 :]
                        for line in event.split(b"\n"):
                            if not line.startswith(b"data:"):
                                continue
                            payload = line[5:].strip()
                            if payload == b"[DONE]":
                                done = True
                                continue
                            chunk = orjson.loads(payload)
                            for choice in chunk.get("choices") or ():
                                content = (choice.get("delta") or {}).get("content")
                                if content:
                                    job.publish(content)
                                finish = choice.get("finish_reason") or finish
        except httpx.HTTPError:
            job.publish(status="error")
            return
        job.publish(status="complete" if done and finish == "stop" else "error")

    async def _follow(self, job: _Job, after: int, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async with trio.open_nursery() as nursery:
            # Hypercorn drops a send after a disconnect silently: only receive() tells.
            nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
            sent = after
            while True:
                changed = job.changed
                if sent < len(job.deltas):
                    events = b"".join(
                        b"event: delta\nid: %d\ndata: %s\n\n"
                        % (seq, orjson.dumps({"seq": seq, "content": job.deltas[seq - 1]}))
                        for seq in range(sent + 1, len(job.deltas) + 1)
                    )
                    sent = len(job.deltas)
                    await send({"type": "http.response.body", "body": events, "more_body": True})
                elif job.status != "streaming":
                    status = orjson.dumps({"status": job.status, "last_seq": sent})
                    await send(
                        {
                            "type": "http.response.body",
                            "body": b"event: status\ndata: %s\n\n" % status,
                        }
                    )
                    break
                else:
                    await changed.wait()
            nursery.cancel_scope.cancel()


async def _cancel_on_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


async def _json(send: Send, status: int, body: object) -> None:
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": orjson.dumps(body)})


async def run(upstream: str, port: int) -> None:
    """Serve on 127.0.0.1 until SIGINT or SIGTERM."""
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.graceful_timeout = 0.5
    # No pool limit: every job holds its upstream connection for its whole answer.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx.Timeout(10.0, read=None)
    client = httpx.AsyncClient(limits=limits, timeout=timeout)
    async with client, trio.open_nursery() as nursery:
        app = Relay(upstream, client, nursery)
        framework = cast(Framework, app)
        binds: list[str] = await nursery.start(functools.partial(serve, framework, config))
        print(f"relay listening on {binds[0]}", flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--upstream", required=True, help="base URL of the upstream API")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1; 0 picks one")
    args = parser.parse_args(argv)
    trio.run(run, args.upstream, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
