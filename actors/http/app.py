"""The HTTP API: a Starlette app over the :class:`~actors.service.Service` facade.

It uses nothing but the facade, so everything it offers is also available to
an embedding trio program. Routes:

* ``/v1/...``: the JSON API, errors as ``{"error": {"code", "message"}}``;
* ``/api/...``: the seed's routes, with the seed's exact shapes;
* ``/healthz``, ``/readyz``, ``/metrics``, ``/openapi.json``.
"""

from __future__ import annotations

import uuid
from contextlib import aclosing
from typing import Any

import cattrs
import orjson
import structlog
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from actors import codec
from actors.api import ChatRequest
from actors.errors import ServerBusy, TooManyJobs, UserKeyNotAllowed
from actors.http.auth import AuthError, Principal, TokenAuthority
from actors.http.errors import (
    ApiError,
    api_error_handler,
    http_exception_handler,
    internal_error_handler,
)
from actors.http.events import (
    ShutdownSignal,
    foreground_stream,
    job_stream,
    notification_stream,
)
from actors.http.openapi import openapi_document
from actors.http.request_context import RequestContext
from actors.http.schemas import (
    MAX_QUERY_INT,
    ChatMessage,
    CreateJobBody,
    InvalidBody,
    MuteBody,
    check_create,
    check_messages,
    check_params,
    check_text,
    job_json,
    notification_json,
    seed_status_json,
    structure_body,
)
from actors.model import JobStatus
from actors.service import Service

__all__ = ["build_app"]

log = structlog.get_logger("troupe.http")

USER_KEY_HEADER = "x-upstream-api-key"

SEED_NOT_FOUND = "Job not found or unauthorized"
SEED_NOT_ABORTED = "Job not found, unauthorized, or already complete"
# The spellings of a true or false query flag (``?unread=1``).
FLAG_VALUES = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def build_app(
    service: Service,
    tokens: TokenAuthority,
    shutdown: ShutdownSignal,
    *,
    keepalive: float = 15.0,
) -> Starlette:
    """The Starlette app for ``service``; ``keepalive`` is the SSE comment interval."""
    max_body = service.config.max_body_bytes

    def principal(request: Request, *, seed: bool = False) -> Principal:
        try:
            return tokens.verify(request.headers.get("authorization"))
        except AuthError as error:
            if seed:
                raise _SeedError(401, "Unauthorized") from None
            raise ApiError(
                401, "unauthorized", str(error), {"WWW-Authenticate": 'Bearer realm="troupe"'}
            ) from None

    async def read_json(request: Request) -> Any:
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
        return request.headers.get(USER_KEY_HEADER) or None

    async def start(principal_: Principal, request: ChatRequest) -> Any:
        try:
            return await service.start_job(principal_.owner, request)
        except TooManyJobs as error:
            raise ApiError(429, "too_many_jobs", str(error)) from None
        except ServerBusy as error:
            raise ApiError(503, "server_busy", str(error), {"Retry-After": "5"}) from None
        except UserKeyNotAllowed as error:
            raise ApiError(403, "user_key_not_allowed", str(error)) from None

    # -- v1: jobs -------------------------------------------------------------

    async def create_job(request: Request) -> Response:
        who = principal(request)
        try:
            body: CreateJobBody = structure_body(await read_json(request), CreateJobBody)
            messages = check_create(body)
        except InvalidBody as error:
            raise ApiError(422, "invalid_request", str(error)) from None
        job = await start(
            who,
            ChatRequest(
                model=body.model,
                messages=messages,
                thread_id=body.thread_id,
                message_id=body.message_id,
                params=body.params,
                api_key=user_key(request),
            ),
        )
        view = await service.get_job(who.owner, job.id)
        assert view is not None
        return JSONResponse(
            job_json(view), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"}
        )

    async def jobs(request: Request) -> Response:
        if request.method == "POST":
            return await create_job(request)
        return await list_jobs(request)

    async def get_job(request: Request) -> Response:
        who = principal(request)
        offset = _int_param(request, "offset", 0)
        view = await service.get_job(who.owner, request.path_params["job_id"], offset)
        if view is None:
            raise ApiError(404, "not_found", "no such job")
        return JSONResponse(job_json(view))

    async def list_jobs(request: Request) -> Response:
        who = principal(request)
        raw = request.query_params.get("status")
        status = None
        if raw is not None:
            try:
                status = JobStatus(raw)
            except ValueError:
                valid = ", ".join(s.value for s in JobStatus)
                raise ApiError(422, "invalid_request", f"status: one of {valid}") from None
        views = await service.list_jobs(who.owner, status)
        return JSONResponse({"jobs": [job_json(v) for v in views]})

    async def abort_job(request: Request) -> Response:
        who = principal(request)
        job_id = request.path_params["job_id"]
        aborted = await service.abort_job(who.owner, job_id)
        view = await service.get_job(who.owner, job_id)
        if view is None:
            raise ApiError(404, "not_found", "no such job")
        return JSONResponse({"aborted": aborted, "job": job_json(view)})

    async def job_events(request: Request) -> Response:
        who = principal(request)
        job_id = request.path_params["job_id"]
        after = _resume_point(request)
        if await service.get_job(who.owner, job_id) is None:
            raise ApiError(404, "not_found", "no such job")
        follower = service.follow(who.owner, job_id, after)
        return EventSourceResponse(
            job_stream(follower, shutdown),
            ping=keepalive,
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    # -- v1: notifications ----------------------------------------------------

    async def list_notifications(request: Request) -> Response:
        who = principal(request)
        unread = _flag_param(request, "unread")
        limit = _int_param(request, "limit", 50, maximum=500)
        found = await service.list_notifications(who.owner, unread, limit)
        return JSONResponse({"notifications": [notification_json(n) for n in found]})

    async def read_notification(request: Request) -> Response:
        who = principal(request)
        if not await service.mark_read(who.owner, request.path_params["notification_id"]):
            raise ApiError(404, "not_found", "no such notification")
        return JSONResponse({"read": True})

    async def read_all_notifications(request: Request) -> Response:
        who = principal(request)
        return JSONResponse({"updated": await service.mark_all_read(who.owner)})

    async def delete_notification(request: Request) -> Response:
        who = principal(request)
        if not await service.delete_notification(who.owner, request.path_params["notification_id"]):
            raise ApiError(404, "not_found", "no such notification")
        return Response(status_code=204)

    async def notification_events(request: Request) -> Response:
        who = principal(request)
        follower = service.follow_notifications(who.owner)
        return EventSourceResponse(
            notification_stream(follower, shutdown),
            ping=keepalive,
            headers={"Cache-Control": "no-store"},
        )

    async def mute_thread(request: Request) -> Response:
        who = principal(request)
        thread_id = request.path_params["thread_id"]
        try:
            body: MuteBody = structure_body(await read_json(request), MuteBody)
            check_text(thread_id, "thread_id")
        except InvalidBody as error:
            raise ApiError(422, "invalid_request", str(error)) from None
        await service.mute_thread(who.owner, thread_id, body.muted)
        return JSONResponse({"thread_id": thread_id, "muted": body.muted})

    # -- operations -------------------------------------------------------------

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if shutdown.triggered:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        if await service.ready():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready"}, status_code=503)

    async def metrics(request: Request) -> Response:
        return Response(
            service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    async def system_actors(request: Request) -> Response:
        who = principal(request)
        if not who.admin:
            raise ApiError(403, "forbidden", "this needs a token with the admin claim")
        # orjson renders the snapshot's enums; the stdlib encoder would not.
        return Response(codec.dumps(service.snapshot()), media_type="application/json")

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document())

    # -- the seed's routes ------------------------------------------------------

    async def seed_stream(request: Request) -> Response:
        who = principal(request, seed=True)
        try:
            body = await read_json(request)
        except ApiError as error:
            raise _SeedError(error.status, error.message) from None
        if not isinstance(body, dict):
            raise _SeedError(400, "Invalid request body")
        background = body.pop("_background", False)
        raw_thread_id = body.pop("_threadId", None)
        raw_message_id = body.pop("_messageId", None)
        raw_model = body.pop("model", None)
        raw_messages = body.pop("messages", None)
        body.pop("stream", None)
        if not isinstance(background, bool):
            raise _SeedError(400, "_background: must be true or false")
        if background and not (_is_text(raw_thread_id) and _is_text(raw_message_id)):
            raise _SeedError(400, "Missing _threadId or _messageId for background streaming")
        if not _is_text(raw_model):
            raise _SeedError(400, "Missing model")
        model: str = raw_model
        try:
            check_text(model, "model")
            thread_id = _seed_text(raw_thread_id, "_threadId")
            message_id = _seed_text(raw_message_id, "_messageId")
            check_params(body)
        except InvalidBody as error:
            raise _SeedError(400, str(error)) from None
        try:
            messages = check_messages(codec.structure(raw_messages, list[ChatMessage]))
        # A malformed list raises cattrs' IterableValidationError, not a ClassValidationError.
        except (InvalidBody, cattrs.BaseValidationError, TypeError, ValueError):
            raise _SeedError(400, "Invalid messages") from None
        chat = ChatRequest(
            model=model,
            messages=messages,
            thread_id=thread_id if thread_id is not None else uuid.uuid4().hex,
            message_id=message_id if message_id is not None else uuid.uuid4().hex,
            params=body,
            api_key=user_key(request),
        )
        try:
            job = await service.start_job(who.owner, chat)
        except ServerBusy:
            raise _SeedError(503, "Server busy, try again later") from None
        except TooManyJobs:
            raise _SeedError(429, "Too many background jobs, try again later") from None
        except UserKeyNotAllowed:
            raise _SeedError(403, "User API keys are not allowed") from None
        if background:
            return JSONResponse({"jobId": job.id, "status": "streaming"})
        return EventSourceResponse(
            foreground_stream(service.follow(who.owner, job.id), shutdown, model),
            ping=keepalive,
            headers={"X-Job-Id": job.id, "Cache-Control": "no-store"},
        )

    async def seed_status(request: Request) -> Response:
        who = principal(request, seed=True)
        view = await service.get_job(who.owner, request.path_params["job_id"])
        if view is None:
            raise _SeedError(404, SEED_NOT_FOUND)
        return JSONResponse(seed_status_json(view))

    async def seed_abort(request: Request) -> Response:
        who = principal(request, seed=True)
        if await service.abort_job(who.owner, request.path_params["job_id"]):
            return JSONResponse({"aborted": True})
        return JSONResponse({"aborted": False, "message": SEED_NOT_ABORTED})

    async def seed_error_handler(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _SeedError)
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    routes = [
        # One route per path, so that a 405 lists every allowed method in ``Allow``.
        Route("/v1/jobs", jobs, methods=["GET", "POST"]),
        Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/v1/jobs/{job_id}/abort", abort_job, methods=["POST"]),
        Route("/v1/jobs/{job_id}/events", job_events, methods=["GET"]),
        Route("/v1/notifications", list_notifications, methods=["GET"]),
        Route("/v1/notifications/read-all", read_all_notifications, methods=["POST"]),
        Route("/v1/notifications/events", notification_events, methods=["GET"]),
        Route("/v1/notifications/{notification_id}/read", read_notification, methods=["POST"]),
        Route("/v1/notifications/{notification_id}", delete_notification, methods=["DELETE"]),
        Route("/v1/threads/{thread_id}/mute", mute_thread, methods=["PUT"]),
        Route("/v1/system/actors", system_actors, methods=["GET"]),
        Route("/api/openrouter/stream", seed_stream, methods=["POST"]),
        Route("/api/jobs/{job_id}/status", seed_status, methods=["GET"]),
        Route("/api/jobs/{job_id}/abort", seed_abort, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            ApiError: api_error_handler,
            _SeedError: seed_error_handler,
            HTTPException: http_exception_handler,
            Exception: internal_error_handler,
        },
    )
    app.add_middleware(RequestContext)
    return app


class _SeedError(Exception):
    """An error of the seed's routes, rendered as ``{"error": "<message>"}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _seed_text(value: Any, field: str) -> str | None:
    """The optional text field ``field`` of a seed body: None if absent.

    Raises :class:`InvalidBody` unless it is a non-blank string of at most
    ``MAX_ID_CHARS`` characters.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidBody(f"{field}: must be a string")
    check_text(value, field)
    return value


def _non_negative_int(raw: str) -> int | None:
    """``raw`` as an integer from 0 to :data:`MAX_QUERY_INT`, or None if it is not one."""
    # str.isdigit() also accepts digits that int() refuses ("²"), and int() refuses
    # strings of more than a few thousand digits: check the form and length first.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > len(str(MAX_QUERY_INT)):
        return None
    value = int(raw)
    return value if value <= MAX_QUERY_INT else None


def _int_param(request: Request, name: str, default: int, maximum: int | None = None) -> int:
    """The query parameter ``name`` as an integer from 0 to ``maximum``; ``default`` if
    absent. Raises :class:`ApiError` 422 otherwise (an empty value too)."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    value = _non_negative_int(raw)
    upper = MAX_QUERY_INT if maximum is None else maximum
    if value is None or value > upper:
        raise ApiError(422, "invalid_request", f"{name}: must be an integer from 0 to {upper}")
    return value


def _flag_param(request: Request, name: str) -> bool:
    """The query parameter ``name`` as a flag: false if absent. Raises
    :class:`ApiError` 422 for a value not in :data:`FLAG_VALUES` (an empty one too)."""
    raw = request.query_params.get(name)
    if raw is None:
        return False
    if raw not in FLAG_VALUES:
        raise ApiError(422, "invalid_request", f"{name}: one of {', '.join(FLAG_VALUES)}")
    return FLAG_VALUES[raw]


def _resume_point(request: Request) -> int | None:
    """The seq to resume after: ``Last-Event-ID`` wins over ``?after=``; None if neither
    is given. Raises :class:`ApiError` 422 for one that is not a seq (an empty one too)."""
    raw = request.headers.get("last-event-id")
    if raw is None:
        raw = request.query_params.get("after")
    if raw is None:
        return None
    value = _non_negative_int(raw)
    if value is None:
        raise ApiError(422, "invalid_request", "Last-Event-ID / after: must be a delta seq")
    return value
