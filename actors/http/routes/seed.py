"""The seed app's routes, with the seed's exact shapes and status codes.

Errors are ``{"error": "<message>"}``: :class:`SeedError` for what a route
refuses itself, and the service's own errors with the seed messages of
:data:`~actors.http.errors.SERVICE_ERRORS`.
"""

from __future__ import annotations

import uuid
from typing import Any

import cattrs
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from actors import codec
from actors.api import ChatRequest
from actors.errors import JobNotFound, UserKeyNotAllowed
from actors.http.auth import AuthError, Principal
from actors.http.errors import ApiError, SeedError
from actors.http.foreground import ForegroundResponse
from actors.http.routes import dependencies, rate_limited, read_json, user_key
from actors.http.schemas import (
    ChatMessage,
    InvalidBody,
    check_messages,
    check_params,
    check_text,
    seed_status_json,
)
from actors.service import check_api_key

__all__ = ["seed_abort", "seed_status", "seed_stream"]

SEED_NOT_ABORTED = "Job not found, unauthorized, or already complete"
SEED_UNAUTHENTICATED = "Authentication required"
SEED_STREAM_UNAUTHENTICATED = "Authentication required for background streaming"
SEED_RATE_LIMITED = "Too many requests, try again later"


async def seed_stream(request: Request) -> Response:
    """``POST /api/openrouter/stream``: a background job (``_background: true``), or a
    foreground one whose upstream answer is passed straight through (see
    :class:`ForegroundResponse`). 429 with ``Retry-After`` past the caller's rate
    limit, before the body is read."""
    who = await _principal(request, SEED_STREAM_UNAUTHENTICATED)
    wait = rate_limited(request, who)
    if wait is not None:
        raise SeedError(429, SEED_RATE_LIMITED, {"Retry-After": str(wait)})
    deps = dependencies(request)
    try:
        body = await read_json(request, deps.service.config.max_chat_body_bytes)
    except ApiError as error:
        raise SeedError(error.status, error.message) from None
    if not isinstance(body, dict):
        raise SeedError(400, "Invalid request body")
    background = body.pop("_background", False)
    raw_thread_id = body.pop("_threadId", None)
    raw_message_id = body.pop("_messageId", None)
    raw_model = body.pop("model", None)
    raw_messages = body.pop("messages", None)
    body.pop("stream", None)
    if not isinstance(background, bool):
        raise SeedError(400, "_background: must be true or false")
    if background and not (_is_text(raw_thread_id) and _is_text(raw_message_id)):
        raise SeedError(400, "Missing _threadId or _messageId for background streaming")
    if not _is_text(raw_model):
        raise SeedError(400, "Missing model")
    model: str = raw_model
    try:
        check_text(model, "model")
        thread_id = _seed_text(raw_thread_id, "_threadId")
        message_id = _seed_text(raw_message_id, "_messageId")
        check_params(body)
    except InvalidBody as error:
        raise SeedError(400, str(error)) from None
    try:
        messages = check_messages(codec.structure(raw_messages, list[ChatMessage]))
    except InvalidBody as error:
        raise SeedError(400, str(error)) from None
    # A malformed list raises cattrs' IterableValidationError, not a ClassValidationError.
    except (cattrs.BaseValidationError, TypeError, ValueError):
        raise SeedError(400, "Invalid messages") from None
    chat = ChatRequest(
        model=model,
        messages=messages,
        thread_id=thread_id if thread_id is not None else uuid.uuid4().hex,
        message_id=message_id if message_id is not None else uuid.uuid4().hex,
        params=body,
        api_key=_user_key(request),
    )
    if background:
        job = await deps.service.start_job(who.owner, chat)
        return JSONResponse({"jobId": job.id, "status": "streaming"})
    started = await deps.service.start_foreground(who.owner, chat)
    return ForegroundResponse(deps.service, who.owner, started, deps.shutdown)


async def seed_status(request: Request) -> Response:
    who = await _principal(request)
    job_id = request.path_params["job_id"]
    view = await dependencies(request).service.get_job(who.owner, job_id, watching=True)
    if view is None:
        raise JobNotFound(job_id)
    return JSONResponse(seed_status_json(view))


async def seed_abort(request: Request) -> Response:
    """200 ``{aborted: true}``, or ``{aborted: false, message}`` as the seed has it; 401
    ``{error, aborted: false}`` without an authenticated caller."""
    try:
        who = await _principal(request)
    except SeedError as error:
        return JSONResponse({"error": error.message, "aborted": False}, status_code=error.status)
    if await dependencies(request).service.abort_job(who.owner, request.path_params["job_id"]):
        return JSONResponse({"aborted": True})
    return JSONResponse({"aborted": False, "message": SEED_NOT_ABORTED})


async def _principal(request: Request, message: str = SEED_UNAUTHENTICATED) -> Principal:
    """The caller; raises :class:`SeedError` 401 with ``message`` when it names none."""
    try:
        return await dependencies(request).auth.authenticate(request)
    except AuthError:
        raise SeedError(401, message) from None


def _user_key(request: Request) -> str | None:
    """The caller's own upstream key, or None where the server would refuse it: the
    seed app then used the server's key, so its client never sees that refusal."""
    key = user_key(request)
    if key is None:
        return None
    try:
        check_api_key(dependencies(request).service.config, key)
    except UserKeyNotAllowed:
        return None
    return key


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
