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
from actors.http.auth import TokenAuthority, build_auth, uses_dev_secret
from actors.logs import configure_logging
from actors.service import open_service
from runtime import ActorRef

__all__ = ["run_server", "serve"]

log = structlog.get_logger("troupe.server")


async def serve(
    config: ServiceConfig,
    *,
    stop: trio.Event | None = None,
    on_ready: Callable[[list[str], TokenAuthority | None], None] | None = None,
    keepalive: float = 15.0,
) -> None:
    """Serve until ``stop`` is set, or until SIGINT/SIGTERM when ``stop`` is None.

    ``on_ready(addresses, tokens)`` is called once the server listens; ``tokens``
    mints tokens the server accepts, or is None when the server checks them with an
    auth provider's keys or trusts a gateway's headers. ``keepalive`` is the
    interval, in seconds, of the comment lines that keep idle event streams open
    through proxies. Raises :class:`~actors.config.ConfigError` for an unusable
    ``jwt_public_key``.
    """
    auth, tokens = build_auth(config)
    _log_settings(config)
    async with open_service(config) as service:
        adapter: ActorRef = await service.system.spawn(
            functools.partial(
                HttpAdapter, service, auth, config.host, config.port, keepalive=keepalive
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


def _upstream_summary(config: ServiceConfig) -> str:
    """Where answers come from, and whose key pays for them."""
    if config.upstream == "simulated":
        return (
            "simulated model (answers are made up locally; set upstream_api_key"
            " or upstream_base_url for a real upstream)"
        )
    if config.upstream_api_key is None:
        return (
            f"{config.upstream_base_url} with no server key:"
            " each request must bring its user's own key"
        )
    users = ", or a user's own" if config.allow_user_api_keys else ""
    return f"{config.upstream_base_url} with the server's key{users}"


def _auth_summary(config: ServiceConfig) -> str:
    """How callers are identified."""
    if config.auth_mode == "trusted_headers":
        proxies = ", ".join(config.trusted_proxies)
        return f"{config.trusted_user_header} header from {proxies}"
    source = config.jwt_jwks_url or (
        "jwt_public_key" if config.jwt_public_key is not None else "jwt_secret"
    )
    if uses_dev_secret(config):
        source = f"the development secret in {config.data_dir}"
    cookie = f" or the {config.jwt_cookie} cookie" if config.jwt_cookie is not None else ""
    return f"JWT ({', '.join(config.token_algorithms)}, {source}) as Bearer{cookie}"


def _log_settings(config: ServiceConfig) -> None:
    """Say once, in the log, the settings an operator must not miss."""
    (log.warning if config.upstream == "simulated" else log.info)(
        "upstream", summary=_upstream_summary(config)
    )
    (log.warning if uses_dev_secret(config) else log.info)("auth", summary=_auth_summary(config))


def _announce(config: ServiceConfig) -> Callable[[list[str], TokenAuthority | None], None]:
    def announce(addresses: list[str], tokens: TokenAuthority | None) -> None:
        out = sys.stdout
        for address in addresses:
            print(f"troupe listening on {address}", file=out)
        print(f"store: {config.store} in {config.data_dir}", file=out)
        print(f"upstream: {_upstream_summary(config)}", file=out)
        print(f"auth: {_auth_summary(config)}", file=out)
        if tokens is not None and uses_dev_secret(config):
            token = tokens.mint("dev", "dev", ttl=7 * 24 * 3600)
            print("development token (user dev, workspace dev, valid 7 days):", file=out)
            print(token, file=out)
        out.flush()

    return announce


def run_server(config: ServiceConfig) -> None:
    """Configure logging and serve ``config`` until a signal; blocks."""
    configure_logging(config.log_level)
    trio.run(functools.partial(serve, config, on_ready=_announce(config)))
