"""The v1 JSON API: jobs, their event streams, notifications and muted threads.

Errors are ``{"error": {"code", "message"}}``: :class:`ApiError` for what a
route refuses itself, and the service's own errors (caps, keys, missing jobs)
as :data:`~actors.http.errors.SERVICE_ERRORS` answers them.
"""

from __future__ import annotations

from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from actors.api import ChatRequest
from actors.errors import JobNotFound
from actors.http.errors import ApiError
from actors.http.events import notification_stream
from actors.http.routes import dependencies, principal, rate_limited, read_json, user_key
from actors.http.schemas import (
    MAX_QUERY_INT,
    CreateJobBody,
    InvalidBody,
    MuteBody,
    check_create,
    check_text,
    job_json,
    notification_json,
    structure_body,
)
from actors.http.sse import JobEventStream
from actors.model import JobStatus

__all__ = [
    "abort_job",
    "create_job",
    "delete_notification",
    "get_job",
    "job_events",
    "jobs",
    "list_jobs",
    "list_notifications",
    "mute_thread",
    "notification_events",
    "read_all_notifications",
    "read_notification",
]

# The spellings of a true or false query flag (``?unread=1``).
FLAG_VALUES = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


# -- jobs ---------------------------------------------------------------------------


async def jobs(request: Request) -> Response:
    """``/v1/jobs``: one route for both methods, so that a 405 lists both in ``Allow``."""
    if request.method == "POST":
        return await create_job(request)
    return await list_jobs(request)


async def create_job(request: Request) -> Response:
    """Start a job: 202 with the job. 429 with ``Retry-After`` past the caller's rate
    limit (the body is not read then), and the service's errors (caps, keys)."""
    who = await principal(request)
    wait = rate_limited(request, who)
    if wait is not None:
        raise ApiError(
            429,
            "rate_limited",
            f"too many requests to start jobs; retry after {wait} s",
            {"Retry-After": str(wait)},
        )
    service = dependencies(request).service
    try:
        body: CreateJobBody = structure_body(
            await read_json(request, service.config.max_chat_body_bytes), CreateJobBody
        )
        messages = check_create(body)
    except InvalidBody as error:
        raise ApiError(422, "invalid_request", str(error)) from None
    job = await service.start_job(
        who.owner,
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
    return JSONResponse(job_json(view), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})


async def list_jobs(request: Request) -> Response:
    who = await principal(request)
    raw = request.query_params.get("status")
    status = None
    if raw is not None:
        try:
            status = JobStatus(raw)
        except ValueError:
            valid = ", ".join(s.value for s in JobStatus)
            raise ApiError(422, "invalid_request", f"status: one of {valid}") from None
    views = await dependencies(request).service.list_jobs(who.owner, status)
    return JSONResponse({"jobs": [job_json(v) for v in views]})


async def get_job(request: Request) -> Response:
    """The job, with the content from ``?offset=`` on and the reasoning from
    ``?reasoning_offset=`` on (each 0 if absent). A poll: the job counts as watched."""
    who = await principal(request)
    job_id = request.path_params["job_id"]
    offset = _int_param(request, "offset", 0)
    reasoning_offset = _int_param(request, "reasoning_offset", 0)
    view = await dependencies(request).service.get_job(
        who.owner, job_id, offset, reasoning_offset, watching=True
    )
    if view is None:
        raise JobNotFound(job_id)
    return JSONResponse(job_json(view))


async def abort_job(request: Request) -> Response:
    who = await principal(request)
    service = dependencies(request).service
    job_id = request.path_params["job_id"]
    aborted = await service.abort_job(who.owner, job_id)
    view = await service.get_job(who.owner, job_id)
    if view is None:
        raise JobNotFound(job_id)
    return JSONResponse({"aborted": aborted, "job": job_json(view)})


async def job_events(request: Request) -> Response:
    who = await principal(request)
    deps = dependencies(request)
    job_id = request.path_params["job_id"]
    after = _resume_point(request)
    if await deps.service.get_job(who.owner, job_id) is None:
        raise JobNotFound(job_id)
    follower = deps.service.follow(who.owner, job_id, after)
    return JobEventStream(
        follower, deps.shutdown, deps.keepalive, dropped=deps.service.metrics.followers_dropped
    )


# -- notifications ------------------------------------------------------------------


async def list_notifications(request: Request) -> Response:
    who = await principal(request)
    unread = _flag_param(request, "unread")
    limit = _int_param(request, "limit", 50, maximum=500)
    found = await dependencies(request).service.list_notifications(who.owner, unread, limit)
    return JSONResponse({"notifications": [notification_json(n) for n in found]})


async def read_notification(request: Request) -> Response:
    who = await principal(request)
    notification_id = request.path_params["notification_id"]
    if not await dependencies(request).service.mark_read(who.owner, notification_id):
        raise ApiError(404, "not_found", "no such notification")
    return JSONResponse({"read": True})


async def read_all_notifications(request: Request) -> Response:
    who = await principal(request)
    return JSONResponse({"updated": await dependencies(request).service.mark_all_read(who.owner)})


async def delete_notification(request: Request) -> Response:
    who = await principal(request)
    notification_id = request.path_params["notification_id"]
    if not await dependencies(request).service.delete_notification(who.owner, notification_id):
        raise ApiError(404, "not_found", "no such notification")
    return Response(status_code=204)


async def notification_events(request: Request) -> Response:
    who = await principal(request)
    deps = dependencies(request)
    follower = deps.service.follow_notifications(who.owner)
    return EventSourceResponse(
        notification_stream(follower, deps.shutdown),
        ping=deps.keepalive,
        headers={"Cache-Control": "no-store"},
    )


async def mute_thread(request: Request) -> Response:
    who = await principal(request)
    service = dependencies(request).service
    thread_id = request.path_params["thread_id"]
    try:
        body: MuteBody = structure_body(
            await read_json(request, service.config.max_body_bytes), MuteBody
        )
        check_text(thread_id, "thread_id")
    except InvalidBody as error:
        raise ApiError(422, "invalid_request", str(error)) from None
    await service.mute_thread(who.owner, thread_id, body.muted)
    return JSONResponse({"thread_id": thread_id, "muted": body.muted})


# -- query parameters ---------------------------------------------------------------


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
