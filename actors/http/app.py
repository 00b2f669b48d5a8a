"""The HTTP API: a Starlette app over the :class:`~actors.service.Service` facade.

It uses nothing but the facade, so everything it offers is also available to
an embedding trio program. The endpoints live in :mod:`actors.http.routes`, by
family:

* ``/v1/...`` (:mod:`~actors.http.routes.v1`): the JSON API, errors as
  ``{"error": {"code", "message"}}``;
* ``/api/...`` (:mod:`~actors.http.routes.seed`): the seed's routes, with the
  seed's exact shapes;
* ``/healthz``, ``/readyz``, ``/metrics``, ``/v1/system/actors``, ``/openapi.json``
  (:mod:`~actors.http.routes.ops`).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route
from starlette.types import ASGIApp

from actors.errors import ServiceError
from actors.http.auth import Authenticator
from actors.http.errors import (
    ApiError,
    SeedError,
    api_error_handler,
    http_exception_handler,
    internal_error_handler,
    seed_error_handler,
    service_error_handler,
)
from actors.http.events import ShutdownSignal
from actors.http.limits import RequestLimits
from actors.http.ratelimit import RateLimiter
from actors.http.request_context import RequestContext
from actors.http.routes import RouteDependencies, ops, seed, v1
from actors.service import Service

__all__ = ["build_app"]


def build_app(
    service: Service,
    auth: Authenticator,
    shutdown: ShutdownSignal,
    *,
    keepalive: float = 15.0,
) -> Starlette:
    """The Starlette app for ``service``, whose callers ``auth`` names; ``keepalive``
    is the SSE comment interval."""
    # One route per path, so that a 405 lists every allowed method in ``Allow``.
    routes = [
        Route("/v1/jobs", v1.jobs, methods=["GET", "POST"]),
        Route("/v1/jobs/{job_id}", v1.get_job, methods=["GET"]),
        Route("/v1/jobs/{job_id}/abort", v1.abort_job, methods=["POST"]),
        Route("/v1/jobs/{job_id}/events", v1.job_events, methods=["GET"]),
        Route("/v1/notifications", v1.list_notifications, methods=["GET"]),
        Route("/v1/notifications/read-all", v1.read_all_notifications, methods=["POST"]),
        Route("/v1/notifications/events", v1.notification_events, methods=["GET"]),
        Route("/v1/notifications/{notification_id}/read", v1.read_notification, methods=["POST"]),
        Route("/v1/notifications/{notification_id}", v1.delete_notification, methods=["DELETE"]),
        Route("/v1/threads/{thread_id}/mute", v1.mute_thread, methods=["PUT"]),
        Route("/v1/system/actors", ops.system_actors, methods=["GET"]),
        Route("/api/openrouter/stream", seed.seed_stream, methods=["POST"]),
        Route("/api/jobs/{job_id}/status", seed.seed_status, methods=["GET"]),
        Route("/api/jobs/{job_id}/abort", seed.seed_abort, methods=["POST"]),
        Route("/healthz", ops.healthz, methods=["GET"]),
        Route("/readyz", ops.readyz, methods=["GET"]),
        Route("/metrics", ops.metrics, methods=["GET"]),
        Route("/openapi.json", ops.openapi, methods=["GET"]),
    ]
    app = _App(
        routes=routes,
        # Inside the request id and the access line, so its 408 and 431 carry them.
        middleware=[Middleware(RequestLimits, config=service.config)],
        exception_handlers={
            ApiError: api_error_handler,
            SeedError: seed_error_handler,
            ServiceError: service_error_handler,
            HTTPException: http_exception_handler,
            Exception: internal_error_handler,
        },
    )
    # No 307 from "/v1/jobs/" to "/v1/jobs": the API's paths are exact, and Starlette
    # builds that redirect's Location from the request's own Host header.
    app.router.redirect_slashes = False
    app.state.dependencies = RouteDependencies(
        service=service,
        auth=auth,
        shutdown=shutdown,
        keepalive=keepalive,
        limiter=RateLimiter.for_config(service.config),
    )
    return app


class _App(Starlette):
    """Starlette with :class:`RequestContext` outside all of its own layers.

    So the request id is on every answer, a 500 of Starlette's error layer too,
    and :data:`~actors.http.request_context.DIRECT_SEND` is the server's own send.
    """

    def build_middleware_stack(self) -> ASGIApp:
        return RequestContext(super().build_middleware_stack())
