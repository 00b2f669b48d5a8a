"""The :class:`HttpAdapter` actor: serves the HTTP API with hypercorn's trio worker.

It runs as a child of the runtime tree next to the service, and reaches the
service only through the :class:`~actors.service.Service` facade.
"""

from __future__ import annotations

from typing import Any

import attrs
import hypercorn.trio
import structlog
import trio
from hypercorn.config import Config as HypercornConfig

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
        config = HypercornConfig()
        config.bind = [f"{self._host}:{self._port}"]
        config.accesslog = None  # the app logs each request with its request id
        config.errorlog = None
        config.graceful_timeout = 1.0
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
