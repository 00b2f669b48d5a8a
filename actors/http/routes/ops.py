"""Operations: liveness, readiness, metrics, the actor tree and the OpenAPI document."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from actors import codec
from actors.http.errors import ApiError
from actors.http.openapi import openapi_document
from actors.http.routes import dependencies, principal

__all__ = ["healthz", "metrics", "openapi", "readyz", "system_actors"]


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """503 once shutting down or while the store does not answer."""
    deps = dependencies(request)
    if deps.shutdown.triggered:
        return JSONResponse({"status": "shutting down"}, status_code=503)
    if await deps.service.ready():
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "not ready"}, status_code=503)


async def metrics(request: Request) -> Response:
    return Response(
        dependencies(request).service.metrics.render(),
        media_type="text/plain; version=0.0.4; charset=utf-8",
    )


async def system_actors(request: Request) -> Response:
    """The live actor tree; only for a token with the admin claim (else 403)."""
    who = await principal(request)
    if not who.admin:
        raise ApiError(403, "forbidden", "this needs a token with the admin claim")
    # orjson renders the snapshot's enums; the stdlib encoder would not.
    return Response(
        codec.dumps(dependencies(request).service.snapshot()), media_type="application/json"
    )


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document())
