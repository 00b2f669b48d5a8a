"""Pure ASGI middleware: a request id in the logs and the response, and an access log line."""

from __future__ import annotations

import time
import uuid

import structlog
import trio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["DIRECT_SEND", "RequestContext"]

log = structlog.get_logger("troupe.http")

# Bound on the shielded last send of a response (see RequestContext).
_LAST_SEND_TIMEOUT = 5.0

DIRECT_SEND = "troupe.direct_send"
"""The scope key under which :class:`RequestContext` leaves the ``send`` it was given.

A response that sends many body messages (an event stream) may send them there,
past every layer below; it sends its start and its last message on its own
``send``, so that the request id, the status and the access line stay right."""


class RequestContext:
    """Pure ASGI middleware: a request id in the logs and the response, and an access log line.

    The id is the request's ``X-Request-ID`` (at most 64 characters) or a new one;
    it is bound in structlog's context for the whole request and sent back as
    ``x-request-id``. The access line is written once the app has returned.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming[:64] if incoming else uuid.uuid4().hex
        started = time.perf_counter()
        status = 500
        scope[DIRECT_SEND] = send

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # Hypercorn ends the connection's keep-alive cycle (or closes it, once
                # shutting down) inside this last send. sse-starlette cancels its task
                # group as soon as that send wakes its disconnect listener, which would cut
                # the close short and leave the connection open for the whole grace time.
                with trio.CancelScope(
                    deadline=trio.current_time() + _LAST_SEND_TIMEOUT, shield=True
                ):
                    await send(message)
                return
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                log.info(
                    "request",
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    ms=round((time.perf_counter() - started) * 1000, 1),
                )
