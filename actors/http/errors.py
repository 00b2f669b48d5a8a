"""API errors: the two error shapes, and the one table from service errors to HTTP.

The v1 routes answer ``{"error": {"code", "message"}}``; the seed's ``/api/...``
routes answer ``{"error": "<message>"}``, as the seed app did. A route lets a
service error (:mod:`actors.errors`) propagate, and :func:`service_error_handler`
answers it from :data:`SERVICE_ERRORS` in the shape of the route's family.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from actors.errors import (
    JobNotFound,
    MissingApiKey,
    ServerBusy,
    ServiceError,
    TooManyJobs,
    UserKeyNotAllowed,
)

__all__ = [
    "SEED_PREFIX",
    "SERVICE_ERRORS",
    "ApiError",
    "ErrorAnswer",
    "SeedError",
    "answer_for",
    "api_error_handler",
    "error_response",
    "http_exception_handler",
    "internal_error_handler",
    "seed_error_handler",
    "service_error_handler",
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


@attrs.frozen
class ErrorAnswer:
    """How both route families answer one kind of service error.

    ``message`` is the v1 message; None means the error's own text. ``headers``
    go with the v1 answer only: the seed's answers keep the seed's bare shape.
    """

    status: int
    code: str
    seed_message: str
    message: str | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict)


SERVICE_ERRORS: Mapping[type[ServiceError], ErrorAnswer] = {
    ServerBusy: ErrorAnswer(
        503, "server_busy", "Server busy, try again later", headers={"Retry-After": "5"}
    ),
    TooManyJobs: ErrorAnswer(429, "too_many_jobs", "Too many background jobs, try again later"),
    UserKeyNotAllowed: ErrorAnswer(403, "user_key_not_allowed", "User API keys are not allowed"),
    MissingApiKey: ErrorAnswer(401, "missing_api_key", "Missing OpenRouter API key"),
    JobNotFound: ErrorAnswer(
        404, "not_found", "Job not found or unauthorized", message="no such job"
    ),
}
"""Every service error the facade raises, by class: a subclass answers as its
nearest listed base."""


def answer_for(error: ServiceError) -> ErrorAnswer | None:
    """The answer to ``error`` from :data:`SERVICE_ERRORS`, or None if it lists no base of it."""
    for cls in type(error).__mro__:
        answer = SERVICE_ERRORS.get(cls)
        if answer is not None:
            return answer
    return None


class ApiError(Exception):
    """Raised by a v1 route; rendered as the v1 error shape with ``status``."""

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


class SeedError(Exception):
    """Raised by a seed route; rendered as ``{"error": "<message>"}`` with ``status``
    and ``headers``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _is_seed(request: Request) -> bool:
    return request.url.path.startswith(SEED_PREFIX)


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def seed_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SeedError)
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)


async def service_error_handler(request: Request, exc: Exception) -> Response:
    """A service error in the shape of the route's family, from :data:`SERVICE_ERRORS`.

    Only routes raise these, so the path tells the family. An error the table
    does not list is a 500.
    """
    assert isinstance(exc, ServiceError)
    answer = answer_for(exc)
    if answer is None:
        return await internal_error_handler(request, exc)
    if _is_seed(request):
        return JSONResponse({"error": answer.seed_message}, status_code=answer.status)
    message = (str(exc) or answer.code) if answer.message is None else answer.message
    return error_response(answer.status, answer.code, message, answer.headers)


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
    if _is_seed(request):
        return JSONResponse({"error": "Internal server error"}, status_code=500)
    return error_response(500, "internal_error", "internal error; see the server log")
