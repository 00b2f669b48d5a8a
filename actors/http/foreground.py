"""The seed's foreground answer: the upstream's own response, passed straight through.

The seed app piped the upstream's SSE to the client unchanged, answered an
upstream failure with the upstream's own status and body, and took the
client's Stop (a closed connection) as an abort. :class:`ForegroundResponse`
does the same with what a foreground job's
:class:`~actors.jobs.passthrough.Passthrough` hands it.
"""

from __future__ import annotations

import trio
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from actors.errors import ServerBusy
from actors.http.errors import SERVICE_ERRORS
from actors.http.events import ShutdownSignal
from actors.http.request_context import DIRECT_SEND
from actors.http.sse import client_gone, raise_single
from actors.messages import ForegroundStarted
from actors.model import Owner
from actors.service import Service

__all__ = ["MAX_ERROR_CHARS", "UNREACHABLE", "ForegroundResponse"]

MAX_ERROR_CHARS = 2000
"""How much of an upstream's error body is passed on, in characters, as the seed did."""

UNREACHABLE = "Failed to reach OpenRouter"
"""The seed's 502 message when the upstream gave no answer."""


class ForegroundResponse(Response):
    """A foreground job's answer: the upstream's, as its passthrough hands it on.

    - The upstream streams: 200 with ``content-type: text/event-stream``,
      ``cache-control: no-cache`` and ``X-Job-Id``, then the upstream's bytes
      unchanged, until its body ends.
    - It answered an error status: that status, its content type, and the first
      :data:`MAX_ERROR_CHARS` characters of its body as text.
    - It gave no answer: 502 ``{"error": "Failed to reach OpenRouter"}``.

    The client's disconnect (its Stop) aborts the job, which closes the upstream
    response. The server's shutdown ends the body where it is (or, before the
    upstream answered, answers 503 ``Server busy``); the job is then the
    service's drain's to end. The passthrough's reader is closed however the
    response ends.
    """

    def __init__(
        self, service: Service, owner: Owner, started: ForegroundStarted, shutdown: ShutdownSignal
    ) -> None:
        self.status_code = 200
        self.background = None
        self.raw_headers = []
        self._service = service
        self._owner = owner
        self._job_id = started.job.id
        self._passthrough = started.passthrough
        self._shutdown = shutdown
        self._disconnected = False
        self._streaming = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_disconnect, receive, nursery.cancel_scope)
                try:
                    await self._answer(scope, receive, send)
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise_single(group)
        finally:
            self._passthrough.close_reader()
        if self._disconnected:
            await self._service.abort_job(self._owner, self._job_id)
        elif self._streaming:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        got, head = await self._shutdown.run_until_triggered(self._passthrough.head)
        job_header = {"X-Job-Id": self._job_id}
        if not got:
            busy = SERVICE_ERRORS[ServerBusy]
            answer: Response = JSONResponse(
                {"error": busy.seed_message}, busy.status, headers=job_header
            )
        elif head.status is None:
            answer = JSONResponse({"error": UNREACHABLE}, 502, headers=job_header)
        elif not 200 <= head.status <= 299:
            text = head.body.decode("utf-8", errors="replace")[:MAX_ERROR_CHARS]
            answer = Response(text, head.status, job_header, head.content_type)
        else:
            await self._stream(scope, send, head.status)
            return
        await answer(scope, receive, send)

    async def _stream(self, scope: Scope, send: Send, status: int) -> None:
        """Send the head, then every piece of the body as it comes, until it ends
        or the server shuts down; the caller sends the body's end."""
        headers = [
            (b"content-type", b"text/event-stream"),
            (b"cache-control", b"no-cache"),
            (b"x-job-id", self._job_id.encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        self._streaming = True
        # The pieces go past the middleware; the start and the end go through it.
        direct: Send = scope.get(DIRECT_SEND, send)
        receive_some = self._passthrough.receive_some
        shutdown = self._shutdown
        while True:
            try:
                got, data = await shutdown.run_until_triggered(receive_some)
            except trio.EndOfChannel:
                return
            if not got:
                return
            await direct({"type": "http.response.body", "body": data, "more_body": True})

    async def _watch_disconnect(self, receive: Receive, scope: trio.CancelScope) -> None:
        await client_gone(receive)
        self._disconnected = True
        scope.cancel()
