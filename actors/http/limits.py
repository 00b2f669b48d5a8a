"""Pure ASGI middleware: the limits on a request that hypercorn does not set.

hypercorn bounds the time a header block takes to arrive (``http_keep_alive_timeout``),
and its size while it is incomplete (``http_max_header_bytes``: h11 checks only
what it still waits on, so a larger block that arrives in one read gets through).
:class:`RequestLimits` adds:

* the size of the request line and headers (``http_max_header_bytes``) and the
  count of header fields (``http_max_headers``), however they arrived: past
  either, 431;
* a deadline on the body, as Apache's ``mod_reqtimeout`` sets one: the body must
  arrive within ``http_body_timeout`` seconds of the headers, and each
  ``http_body_min_rate`` bytes received earn it one more second. A body trickled
  in slower is answered 408 with ``Connection: close`` (its request is cancelled
  where it waits for the body), so a slow-body client holds a connection for that
  long at most.

Both answers are in the error shape of the route's family. The deadline watches
``receive()`` only until the body has come: an event stream's wait for its
client's disconnect is not bounded.
"""

from __future__ import annotations

import trio
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actors.config import ServiceConfig
from actors.http.errors import SEED_PREFIX, error_response

__all__ = ["RequestLimits"]


class RequestLimits:
    """Refuse requests with too large or too many header fields; end those whose body
    comes too slowly."""

    def __init__(self, app: ASGIApp, config: ServiceConfig) -> None:
        self.app = app
        self.max_header_bytes = config.http_max_header_bytes
        self.max_headers = config.http_max_headers
        self.body_timeout = config.http_body_timeout
        self.body_min_rate = config.http_body_min_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        if len(headers) > self.max_headers:
            message = f"a request may have at most {self.max_headers} header fields"
            await _refusal(scope, 431, "too_many_headers", message)(scope, receive, send)
            return
        # As on the wire: "name: value\r\n" a field, after the request line.
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string", b""))
        size += sum(len(name) + len(value) + 4 for name, value in headers)
        if size > self.max_header_bytes:
            message = f"the request line and headers may be at most {self.max_header_bytes} bytes"
            await _refusal(scope, 431, "headers_too_large", message)(scope, receive, send)
            return
        body = _BodyDeadline(trio.current_time() + self.body_timeout, self.body_min_rate)
        started = False

        async def send_started(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        with trio.CancelScope() as request_scope:
            body.request_scope = request_scope
            await self.app(scope, body.wrap(receive), send_started)
        if body.expired and not started:
            message = "the request body came too slowly"
            answer = _refusal(scope, 408, "request_timeout", message)
            await answer(scope, receive, send)


class _BodyDeadline:
    """The body's deadline, moved later as its bytes come; ``expired`` once it passed."""

    def __init__(self, deadline: float, min_rate: int) -> None:
        self.deadline = deadline
        self.min_rate = min_rate
        self.complete = False
        self.expired = False
        self.request_scope: trio.CancelScope | None = None

    def wrap(self, receive: Receive) -> Receive:
        async def receive_in_time() -> Message:
            if self.complete:
                return await receive()
            with trio.move_on_at(self.deadline) as waiting:
                message = await receive()
            if waiting.cancelled_caught:
                self.expired = True
                assert self.request_scope is not None
                self.request_scope.cancel()
                # The request's own scope is cancelled: this raises Cancelled at once.
                await trio.sleep_forever()
            if message["type"] == "http.request":
                self.deadline += len(message.get("body", b"")) / self.min_rate
                self.complete = not message.get("more_body", False)
            else:  # http.disconnect: there is no more body to wait for
                self.complete = True
            return message

        return receive_in_time


def _refusal(scope: Scope, status: int, code: str, message: str) -> Response:
    """``message`` in the error shape of the path's family, closing the connection.

    The connection may still hold the rest of the request, which nobody will read.
    """
    headers = {"Connection": "close"}
    if str(scope["path"]).startswith(SEED_PREFIX):
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    return error_response(status, code, message, headers)
