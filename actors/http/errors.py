"""API errors: ``{"error": {"code", "message"}}`` with the right status."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

__all__ = [
    "SEED_PREFIX",
    "ApiError",
    "error_response",
    "http_exception_handler",
    "internal_error_handler",
]

# The seed's routes live here; their errors are ``{"error": "<message>"}``.
SEED_PREFIX = "/api/"

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_jobs",
    500: "internal_error",
    503: "server_busy",
}


class ApiError(Exception):
    """Raised by a route; rendered as the error shape with ``status``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    """Routing errors (unknown route, wrong method) in the API's error shape.

    No route was chosen, so this is the v1 shape under ``/api/`` too.
    """
    assert isinstance(exc, HTTPException)
    code = _CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code
    if exc.status_code == 404:
        message = f"no route for {request.method} {request.url.path}"
    return error_response(exc.status_code, code, message, exc.headers)


async def internal_error_handler(request: Request, exc: Exception) -> Response:
    """A 500 in the error shape of the route's family (the seed's ``/api/...`` or v1)."""
    if request.url.path.startswith(SEED_PREFIX):
        return JSONResponse({"error": "Internal server error"}, status_code=500)
    return error_response(500, "internal_error", "internal error; see the server log")
