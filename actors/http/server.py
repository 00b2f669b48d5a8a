"""Run the service with its HTTP adapter until SIGINT or SIGTERM.

Shutdown order: end the event streams with a final event and stop accepting
requests, then let running jobs drain for ``drain_timeout`` and record what is
left as interrupted, with its partial content. The process exits 0.
"""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable

import structlog
import trio

from actors.config import ServiceConfig
from actors.http.adapter import GetAddresses, HttpAdapter, StopServing
from actors.http.auth import TokenAuthority, load_secret
from actors.logs import configure_logging
from actors.service import open_service
from runtime import ActorRef

__all__ = ["run_server", "serve"]

log = structlog.get_logger("troupe.server")


async def serve(
    config: ServiceConfig,
    *,
    stop: trio.Event | None = None,
    on_ready: Callable[[list[str], TokenAuthority], None] | None = None,
    keepalive: float = 15.0,
) -> None:
    """Serve until ``stop`` is set, or until SIGINT/SIGTERM when ``stop`` is None.

    ``on_ready(addresses, tokens)`` is called once the server listens.
    ``keepalive`` is the interval, in seconds, of the comment lines that keep
    idle event streams open through proxies.
    """
    tokens = TokenAuthority(load_secret(config))
    async with open_service(config) as service:
        adapter: ActorRef = await service.system.spawn(
            functools.partial(
                HttpAdapter, service, tokens, config.host, config.port, keepalive=keepalive
            ),
            name="http",
        )
        addresses: list[str] = await adapter.ask(GetAddresses())
        if on_ready is not None:
            on_ready(addresses, tokens)
        if stop is None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("shutting down", signal=signal.Signals(signum).name)
                    break
        else:
            await stop.wait()
        await adapter.ask(StopServing(), timeout=None)


def _announce(config: ServiceConfig) -> Callable[[list[str], TokenAuthority], None]:
    def announce(addresses: list[str], tokens: TokenAuthority) -> None:
        out = sys.stdout
        for address in addresses:
            print(f"troupe listening on {address}", file=out)
        print(f"store: {config.store} in {config.data_dir}; upstream: {config.upstream}", file=out)
        if config.jwt_secret is None:
            token = tokens.mint("dev", "dev", ttl=7 * 24 * 3600)
            print("development token (user dev, workspace dev, valid 7 days):", file=out)
            print(token, file=out)
        out.flush()

    return announce


def run_server(config: ServiceConfig) -> None:
    """Configure logging and serve ``config`` until a signal; blocks."""
    configure_logging(config.log_level)
    trio.run(functools.partial(serve, config, on_ready=_announce(config)))
