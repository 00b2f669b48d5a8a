"""The :class:`HttpAdapter` actor: serves the HTTP API with hypercorn's trio worker.

It runs as a child of the runtime tree next to the service, and reaches the
service only through the :class:`~actors.service.Service` facade.
"""

from __future__ import annotations

import socket
from typing import Any

import attrs
import hypercorn.trio
import structlog
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets

from actors.config import ServiceConfig
from actors.http.app import build_app
from actors.http.auth import Authenticator
from actors.http.events import ShutdownSignal
from actors.service import Service
from runtime import Actor

__all__ = ["GetAddresses", "HttpAdapter", "StopServing"]

log = structlog.get_logger("troupe.http")


@attrs.frozen
class GetAddresses:
    """Reply: the URLs the server listens on, like ``["http://127.0.0.1:8000"]``."""


@attrs.frozen
class StopServing:
    """End the event streams with a ``shutdown`` event, stop accepting, and wait
    for open requests to finish (at most ``grace`` seconds). Reply: None."""

    grace: float = 1.0


class _Started:
    """Takes hypercorn's ``task_status.started(binds)``."""

    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.event = trio.Event()

    def started(self, value: Any = None) -> None:
        self.addresses = list(value or [])
        self.event.set()


# The longest TCP_USER_TIMEOUT the kernel takes, in milliseconds (an unsigned int).
_MAX_USER_TIMEOUT_MS = 2**31 - 1


class _ServerConfig(HypercornConfig):
    """hypercorn's settings, from the service's ``http_*`` settings, with the
    per-connection send limits on the listening sockets.

    Linux copies a listening socket's ``SO_SNDBUF`` and ``TCP_USER_TIMEOUT`` to every
    connection it accepts (as it does the ``TCP_NODELAY`` hypercorn sets there), so
    each connection gets them without hypercorn's help. hypercorn's own sends are
    shielded from cancellation: a client that stops reading would hold its request's
    task (and the server's shutdown) for as long as the connection lives, and only
    the kernel can end that connection.
    """

    def __init__(self, settings: ServiceConfig, host: str, port: int) -> None:
        super().__init__()
        self.bind = [f"{host}:{port}"]
        self.accesslog = None  # the app logs each request with its request id
        self.errorlog = None
        self.graceful_timeout = 1.0
        # Runs from a connection's start until its first request is whole, and between
        # requests: so it is also the deadline of a slowly sent header block.
        self.keep_alive_timeout = settings.http_keep_alive_timeout
        # h11 answers 431 and closes once the request line and headers pass it.
        self.h11_max_incomplete_size = settings.http_max_header_bytes
        # hypercorn's read_timeout stays off: it bounds every single read of a
        # connection, and an event stream's client sends nothing while it reads, so it
        # would cut every follower. A body's deadline is the app's (RequestLimits).
        self._send_buffer = settings.http_send_buffer
        self._send_timeout_ms = min(
            _MAX_USER_TIMEOUT_MS, max(1, round(settings.http_send_timeout * 1000))
        )

    def create_sockets(self) -> Sockets:
        sockets = super().create_sockets()
        for sock in sockets.insecure_sockets + sockets.secure_sockets:
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer)
            if hasattr(socket, "TCP_USER_TIMEOUT"):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, self._send_timeout_ms)
            else:
                log.warning("http_send_timeout needs Linux: clients that stop reading stay")
        return sockets


class HttpAdapter(Actor):
    def __init__(
        self,
        service: Service,
        auth: Authenticator,
        host: str,
        port: int,
        *,
        keepalive: float = 15.0,
    ) -> None:
        self._service = service
        self._auth = auth
        self._host = host
        self._port = port
        self._keepalive = keepalive
        self._shutdown = ShutdownSignal()
        self._stop_accepting = trio.Event()
        self._served = trio.Event()
        self._started = _Started()

    async def on_start(self) -> None:
        config = _ServerConfig(self._service.config, self._host, self._port)
        app = build_app(self._service, self._auth, self._shutdown, keepalive=self._keepalive)
        self.context.start_task(self._serve, app, config)
        await self._started.event.wait()
        log.info("listening", addresses=self._started.addresses)

    async def _serve(self, app: Any, config: HypercornConfig) -> None:
        try:
            await hypercorn.trio.serve(
                app,
                config,
                shutdown_trigger=self._stop_accepting.wait,
                task_status=self._started,
            )
        finally:
            self._served.set()

    async def handle(self, message: Any) -> Any:
        if isinstance(message, GetAddresses):
            return list(self._started.addresses)
        if isinstance(message, StopServing):
            self._shutdown.trigger()
            self._stop_accepting.set()
            with trio.move_on_after(message.grace + 1.0):
                await self._served.wait()
            return None
        self.unhandled(message)
