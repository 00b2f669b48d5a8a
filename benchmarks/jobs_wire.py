"""What the live-jobs benchmark's processes share: the token format, an SSE parser,
a minimal HTTP/1.1 client and the statistics.

The load generators must cost less than what they measure, so the client is a few
dozen lines over a trio socket rather than httpx: it sends a request, reads the
head, and hands the body on as it arrives (``Content-Length``, chunked, or up to
the close), with the wall-clock time of the ``recv`` that completed each piece.

A token is ``"<seq>:<send_time_ns>|"``: the upstream stamps each one with
``time.time_ns()`` just before writing it, so a follower on the same machine
computes the lag of each token it receives and checks that the sequence has no
gap and no duplicate.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Final

import attrs
import orjson
import trio

__all__ = [
    "DIGEST_SIZE",
    "LINK_ERRORS",
    "RELAY",
    "ROUTES",
    "TROUPE",
    "HttpConnection",
    "HttpError",
    "Response",
    "Routes",
    "SseEvent",
    "SseParser",
    "TokenChecker",
    "content_digest",
    "encode_token",
    "percentile",
]

DIGEST_SIZE: Final = 16
_RECV_SIZE: Final = 65536
_MAX_HEAD: Final = 65536


@attrs.frozen
class Routes:
    """How a server under test is driven: where jobs are created, read and followed."""

    name: str
    jobs_path: str
    """``POST`` here creates a job; ``{jobs_path}/{id}`` reads it, ``.../events`` follows it."""
    content_field: str
    """The field of the job's JSON that holds its whole content (read with no offset)."""

    def create_body(self, index: int, tag: str) -> bytes:
        """The body of ``POST jobs_path`` for job ``index``, whose prompt is ``tag``."""
        body: dict[str, object] = {"model": "bench", "messages": [{"role": "user", "content": tag}]}
        if self.name == TROUPE_NAME:
            body["thread_id"] = f"thread-{index}"
            body["message_id"] = f"message-{index}"
        return orjson.dumps(body)

    def job_path(self, job_id: str) -> str:
        return f"{self.jobs_path}/{job_id}"

    def events_path(self, job_id: str) -> str:
        return f"{self.jobs_path}/{job_id}/events"


TROUPE_NAME: Final = "troupe"
TROUPE: Final = Routes(TROUPE_NAME, "/v1/jobs", "content_delta")
RELAY: Final = Routes("relay", "/jobs", "content")
ROUTES: Final = {routes.name: routes for routes in (TROUPE, RELAY)}


def encode_token(seq: int, send_ns: int) -> str:
    """Token ``seq`` as the upstream writes it, stamped with its send time."""
    return f"{seq}:{send_ns}|"


def content_digest(text: str) -> str:
    """The digest by which the upstream's text, a follower's and the stored one are compared."""
    return hashlib.blake2b(text.encode(), digest_size=DIGEST_SIZE).hexdigest()


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of values already sorted; NaN when there are none."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class TokenChecker:
    """Takes a job's content as it arrives, in pieces cut anywhere, and checks its tokens.

    Each complete token must carry the next seq (1, 2, ...): ``problems`` records the
    first few departures (a gap, a duplicate, a malformed token) and ``ok`` turns
    False for good. The lag of each token, receipt time minus its stamp in
    microseconds, is appended to ``lags``, which several checkers may share.
    """

    def __init__(self, lags: list[int]) -> None:
        self.lags = lags
        self.next_seq = 1
        self.ok = True
        self.problems: list[str] = []
        self._pending = ""
        self._hash = hashlib.blake2b(digest_size=DIGEST_SIZE)

    def feed(self, content: str, received_ns: int) -> None:
        self._hash.update(content.encode())
        text = self._pending + content
        cut = text.rfind("|")
        if cut < 0:
            self._pending = text
            return
        self._pending = text[cut + 1 :]
        for token in text[:cut].split("|"):
            seq_text, _, stamp_text = token.partition(":")
            try:
                seq, stamp = int(seq_text), int(stamp_text)
            except ValueError:
                self.fail(f"malformed token {token[:40]!r}")
                continue
            if seq != self.next_seq:
                what = "duplicate" if seq < self.next_seq else "gap"
                self.fail(f"{what}: token {seq} where {self.next_seq} was due")
            self.next_seq = max(self.next_seq, seq + 1)
            self.lags.append((received_ns - stamp) // 1000)

    def fail(self, problem: str) -> None:
        self.ok = False
        if len(self.problems) < 5:
            self.problems.append(problem)

    @property
    def tokens(self) -> int:
        """How many tokens in order have been seen."""
        return self.next_seq - 1

    @property
    def trailing(self) -> str:
        """Content after the last complete token (empty for a whole answer)."""
        return self._pending

    def digest(self) -> str:
        """The :func:`content_digest` of everything fed so far."""
        return self._hash.hexdigest()


@attrs.frozen
class SseEvent:
    event: str
    data: str
    id: str | None


class SseParser:
    """An incremental ``text/event-stream`` parser.

    Lines end with LF or CRLF (a lone CR is not a line end here: neither server
    under test writes one); ``data:`` lines are joined with LF; comments are
    skipped. An event without data is not dispatched, as the HTML standard says.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, data: bytes) -> list[SseEvent]:
        buffer = self._buffer + data if self._buffer else data
        events: list[SseEvent] = []
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            line = buffer[start : end - 1 if end > start and buffer[end - 1] == 13 else end]
            start = end + 1
            if not line:
                if self._data:
                    events.append(
                        SseEvent(self._event or "message", "\n".join(self._data), self._id)
                    )
                self._event, self._data, self._id = "", [], None
                continue
            field, colon, value = line.partition(b":")
            if not field:
                continue  # a comment, such as a keep-alive
            if colon and value[:1] == b" ":
                value = value[1:]
            if field == b"data":
                self._data.append(value.decode())
            elif field == b"event":
                self._event = value.decode()
            elif field == b"id":
                self._id = value.decode()
        self._buffer = buffer[start:]
        return events


class HttpError(Exception):
    """The connection closed early or the server answered something unreadable."""


LINK_ERRORS: Final = (HttpError, trio.BrokenResourceError, trio.ClosedResourceError, OSError)
"""What a request raises when its connection fails."""


@attrs.frozen
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class HttpConnection:
    """One keep-alive HTTP/1.1 connection, used for one request at a time."""

    def __init__(self, stream: trio.SocketStream, host: str) -> None:
        self._stream = stream
        self._host = host
        self._buffer = bytearray()
        self.received_ns = 0
        """Wall-clock time of the last ``recv``."""

    @classmethod
    async def open(cls, host: str, port: int) -> HttpConnection:
        return cls(await trio.open_tcp_stream(host, port), f"{host}:{port}")

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> Response:
        """Send a request and read its whole answer."""
        pieces: list[bytes] = []
        status, answer_headers = await self.stream(
            method, path, headers, body, lambda piece, _ns: pieces.append(piece)
        )
        return Response(status, answer_headers, b"".join(pieces))

    async def stream(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None,
        body: bytes | None,
        on_body: Callable[[bytes, int], object],
    ) -> tuple[int, dict[str, str]]:
        """Send a request and call ``on_body(piece, received_ns)`` for each piece of the
        answer's body as it arrives; return the status and headers once the body ends.

        Raises :class:`HttpError` if the connection closes before the body's end, and
        whatever trio raises if the socket breaks.
        """
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self._host}"]
        lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        await self._stream.send_all(head + body if body is not None else head)
        status, answer_headers = await self._read_head()
        if answer_headers.get("transfer-encoding", "").lower() == "chunked":
            await self._read_chunked(on_body)
        elif "content-length" in answer_headers:
            await self._read_exactly(int(answer_headers["content-length"]), on_body)
        else:
            await self._read_to_close(on_body)
        return status, answer_headers

    async def _fill(self) -> None:
        data = await self._stream.receive_some(_RECV_SIZE)
        self.received_ns = time.time_ns()
        if not data:
            raise HttpError("the server closed the connection")
        self._buffer += data

    async def _read_head(self) -> tuple[int, dict[str, str]]:
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            if len(self._buffer) > _MAX_HEAD:
                raise HttpError("response head too long")
            await self._fill()
        head = self._buffer[:end].decode("latin-1").split("\r\n")
        del self._buffer[: end + 4]
        parts = head[0].split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise HttpError(f"bad status line {head[0]!r}")
        headers: dict[str, str] = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

    async def _read_chunked(self, on_body: Callable[[bytes, int], object]) -> None:
        buffer = self._buffer
        while True:
            while (end := buffer.find(b"\r\n")) < 0:
                await self._fill()
            size = int(buffer[:end].split(b";", 1)[0], 16)
            del buffer[: end + 2]
            if size == 0:
                while (end := buffer.find(b"\r\n")) != 0:  # trailers, then a blank line
                    if end > 0:
                        del buffer[: end + 2]
                    else:
                        await self._fill()
                del buffer[:2]
                return
            while len(buffer) < size + 2:
                await self._fill()
            on_body(bytes(buffer[:size]), self.received_ns)
            del buffer[: size + 2]

    async def _read_exactly(self, length: int, on_body: Callable[[bytes, int], object]) -> None:
        while len(self._buffer) < length:
            await self._fill()
        on_body(bytes(self._buffer[:length]), self.received_ns)
        del self._buffer[:length]

    async def _read_to_close(self, on_body: Callable[[bytes, int], object]) -> None:
        while True:
            if self._buffer:
                on_body(bytes(self._buffer), self.received_ns)
                self._buffer.clear()
            try:
                await self._fill()
            except HttpError:
                return
