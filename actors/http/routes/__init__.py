"""The routes, by family: :mod:`.v1`, :mod:`.seed` and :mod:`.ops`.

Endpoints are module-level functions. What they depend on is one
:class:`RouteDependencies` that :func:`~actors.http.app.build_app` puts at
``app.state.dependencies``; this module holds that and the few request
helpers every family uses.
"""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

import attrs
import orjson
from starlette.requests import Request

from actors.http.auth import Authenticator, AuthError, Principal, bearer_value, jwt_header
from actors.http.errors import ApiError
from actors.http.events import ShutdownSignal
from actors.http.ratelimit import RateLimiter, retry_after
from actors.service import Service

__all__ = [
    "USER_KEY_HEADER",
    "RouteDependencies",
    "dependencies",
    "principal",
    "rate_limited",
    "read_json",
    "user_key",
]

# The header that carries a caller's own upstream key.
USER_KEY_HEADER = "x-upstream-api-key"


@attrs.frozen
class RouteDependencies:
    """What the endpoints use: the facade, the authenticator, the shutdown signal
    that ends event streams, and the keep-alive interval of those streams (seconds)."""

    service: Service
    auth: Authenticator
    shutdown: ShutdownSignal
    keepalive: float
    limiter: RateLimiter | None = None
    """The per-user limit on the routes that start jobs; None: no limit."""


def dependencies(request: Request) -> RouteDependencies:
    """The app's :class:`RouteDependencies`."""
    found = request.app.state.dependencies
    assert isinstance(found, RouteDependencies)
    return found


async def principal(request: Request) -> Principal:
    """The caller, as the app's :class:`~actors.http.auth.Authenticator` tells it.

    Raises :class:`ApiError` 401 (with ``WWW-Authenticate``) when it names none,
    with a message that says why.
    """
    try:
        return await dependencies(request).auth.authenticate(request)
    except AuthError as error:
        raise ApiError(
            401, "unauthorized", str(error), {"WWW-Authenticate": 'Bearer realm="troupe"'}
        ) from None


def rate_limited(request: Request, who: Principal) -> int | None:
    """None if ``who`` may start a job now (a token is taken from the user's bucket),
    else the ``Retry-After`` seconds after which a request will be let through.

    Keyed by the user, across workspaces, as ``max_jobs_per_user`` counts. Never blocks.
    """
    deps = dependencies(request)
    if deps.limiter is None:
        return None
    wait = deps.limiter.take_nowait(who.owner.user_id)
    if wait == 0.0:
        return None
    deps.service.metrics.requests_rate_limited.inc()
    return retry_after(wait)


async def read_json(request: Request, max_body: int) -> Any:
    """The body, parsed as JSON.

    Raises :class:`ApiError` 413 as soon as it is known to be larger than
    ``max_body`` bytes (by its ``Content-Length``, or while reading it), and 400
    if it is not JSON.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise ApiError(413, "payload_too_large", f"the body may be at most {max_body} bytes")
    body = bytearray()
    # Closed explicitly: a generator left to the garbage collector after an early
    # exit is finalized outside this request, with a warning.
    async with aclosing(request.stream()) as chunks:
        async for chunk in chunks:
            body += chunk
            if len(body) > max_body:
                raise ApiError(
                    413, "payload_too_large", f"the body may be at most {max_body} bytes"
                )
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {error}") from None


def user_key(request: Request) -> str | None:
    """The caller's own upstream key, if the request carries one: ``X-Upstream-Api-Key``,
    or an ``Authorization: Bearer`` value that is not a JWT (the seed app's client sends
    its user's OpenRouter key so)."""
    header = request.headers.get(USER_KEY_HEADER, "").strip()
    if header:
        return header
    bearer = bearer_value(request.headers.get("authorization"))
    if bearer is not None and jwt_header(bearer) is None:
        return bearer
    return None
