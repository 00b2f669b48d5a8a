"""The live-jobs benchmark's upstream: an OpenAI-compatible streaming endpoint that is cheap.

Usage::

    python benchmarks/jobs_upstream.py [--tokens 200] [--rate 20] [--port 0]

It prints ``upstream listening on http://127.0.0.1:<port>`` once it accepts
connections, and serves until SIGTERM or SIGINT:

* ``POST .../chat/completions`` (any prefix): 200 ``text/event-stream``, chunked, on a
  keep-alive connection. Token k (from 1) is written at ``k / rate`` seconds after the
  request, as ``choices[0].delta.content = "<k>:<time_ns>|"``, stamped just before
  the write; then a ``finish_reason: "stop"`` chunk, a usage chunk and ``data: [DONE]``.
  The request's last message content names the stream (its tag).
* ``GET /stats``: JSON with the streams started, finished and broken, the peak number
  of streams open at once, how late the writes were against their schedule (slip, in
  microseconds), and per tag the tokens sent, the digest of the text sent and whether
  the stream ended.

It is raw HTTP/1.1 over trio sockets, not an ASGI server, so that one process
feeds thousands of tokens a second without being what the benchmark measures.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import signal
import sys
import time
from typing import Any, Final

import attrs
import orjson
import trio
from jobs_wire import DIGEST_SIZE, encode_token, percentile

__all__ = ["Upstream", "main"]

_RECV_SIZE: Final = 65536
_CHUNK_HEAD: Final = b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","choices":'
_STREAM_HEAD: Final = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"X-Generation-Id: gen-bench\r\n\r\n"
)


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _content_event(content: str) -> bytes:
    return (
        _CHUNK_HEAD
        + b'[{"index":0,"delta":{"content":"'
        + content.encode()
        + b'"},"finish_reason":null}]}\n\n'
    )


def _tail(tokens: int) -> bytes:
    finish = _CHUNK_HEAD + b'[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    usage = orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": tokens + 5},
        }
    )
    return _chunked(finish) + _chunked(b"data: " + usage + b"\n\n") + _chunked(b"data: [DONE]\n\n")


def _answer(status: int, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
        % (status, content_type, len(body))
        + body
    )


@attrs.define
class _Sent:
    tokens: int = 0
    finished: bool = False
    digest: hashlib.blake2b = attrs.field(
        factory=functools.partial(hashlib.blake2b, digest_size=DIGEST_SIZE)
    )


class Upstream:
    """The server's state: what it sent, to whom, and how punctually."""

    def __init__(self, tokens: int, rate: float) -> None:
        self.tokens = tokens
        self.interval = 1.0 / rate
        self.open_streams = 0
        self.peak_streams = 0
        self.started = 0
        self.finished = 0
        self.broken = 0
        self.slips_us: list[int] = []
        self.sent: dict[str, _Sent] = {}

    def stats(self) -> dict[str, Any]:
        slips = sorted(self.slips_us)
        return {
            "streams_started": self.started,
            "streams_finished": self.finished,
            "streams_broken": self.broken,
            "peak_streams": self.peak_streams,
            "tokens_sent": len(slips),
            "slip_us_p50": percentile(slips, 0.50),
            "slip_us_p99": percentile(slips, 0.99),
            "slip_us_max": slips[-1] if slips else 0,
            "sent": {
                tag: {"tokens": s.tokens, "digest": s.digest.hexdigest(), "finished": s.finished}
                for tag, s in self.sent.items()
            },
        }

    async def handle(self, stream: trio.SocketStream) -> None:
        """Serve the requests of one connection, one after another, until it closes."""
        buffer = bytearray()
        try:
            while True:
                while (end := buffer.find(b"\r\n\r\n")) < 0:
                    data = await stream.receive_some(_RECV_SIZE)
                    if not data:
                        return
                    buffer += data
                head = buffer[:end].decode("latin-1").split("\r\n")
                del buffer[: end + 4]
                method, path, *_ = [*head[0].split(" "), "", ""]
                length = 0
                for line in head[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                while len(buffer) < length:
                    data = await stream.receive_some(_RECV_SIZE)
                    if not data:
                        return
                    buffer += data
                body = bytes(buffer[:length])
                del buffer[:length]
                if method == "POST" and path.endswith("/chat/completions"):
                    await self._stream_answer(stream, body)
                elif method == "GET" and path == "/stats":
                    await stream.send_all(_answer(200, orjson.dumps(self.stats())))
                else:
                    await stream.send_all(_answer(404, b'{"error":{"code":404,"message":"no"}}'))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    async def _stream_answer(self, stream: trio.SocketStream, body: bytes) -> None:
        request = orjson.loads(body)
        tag = str(request["messages"][-1]["content"])
        sent = self.sent[tag] = _Sent()
        self.started += 1
        self.open_streams += 1
        self.peak_streams = max(self.peak_streams, self.open_streams)
        try:
            await stream.send_all(_STREAM_HEAD)
            start = trio.current_time()
            for seq in range(1, self.tokens + 1):
                due = start + seq * self.interval
                await trio.sleep_until(due)
                self.slips_us.append(int((trio.current_time() - due) * 1e6))
                content = encode_token(seq, time.time_ns())
                sent.digest.update(content.encode())
                await stream.send_all(_chunked(_content_event(content)))
                sent.tokens = seq
            await stream.send_all(_tail(self.tokens) + b"0\r\n\r\n")
            sent.finished = True
            self.finished += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.broken += 1
            raise
        finally:
            self.open_streams -= 1


async def serve(upstream: Upstream, port: int) -> None:
    """Serve on 127.0.0.1 until SIGINT or SIGTERM."""
    async with trio.open_nursery() as nursery:
        listeners: list[trio.SocketListener] = await nursery.start(
            functools.partial(trio.serve_tcp, upstream.handle, port, host="127.0.0.1")
        )
        bound = listeners[0].socket.getsockname()[1]
        print(f"upstream listening on http://127.0.0.1:{bound}", flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tokens", type=int, default=200, help="tokens per answer")
    parser.add_argument("--rate", type=float, default=20.0, help="tokens per second per answer")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1; 0 picks one")
    args = parser.parse_args(argv)
    trio.run(serve, Upstream(args.tokens, args.rate), args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
