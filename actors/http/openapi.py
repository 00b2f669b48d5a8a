"""The OpenAPI 3.1 document of the HTTP API, served at ``GET /openapi.json``."""

from __future__ import annotations

from functools import cache
from typing import Any

import attrs

from actors.config import ServiceConfig
from actors.http.schemas import (
    DATA_URL_PATTERN,
    HTTP_URL_PATTERN,
    IMAGE_DETAILS,
    MAX_ID_CHARS,
    MAX_MESSAGES,
    MAX_NESTING,
    MAX_QUERY_INT,
    PART_TYPES,
)
from actors.model import JobStatus, NotificationType

__all__ = ["openapi_document"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_RATE_LIMIT_RETRY_AFTER: dict[str, Any] = {
    "description": "Past the per-user rate limit: whole seconds after which a request "
    "will be let through.",
    "required": False,
    "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"},
}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _seed_error(description: str) -> dict[str, Any]:
    return _json(_ref("SeedError"), description)


def _sse(description: str, event: dict[str, Any]) -> dict[str, Any]:
    """An event stream; as OpenAPI 3.1 has it, ``event`` describes each event."""
    return {"description": description, "content": {"text/event-stream": {"schema": event}}}


def _event(name: str, data: dict[str, Any], *, with_id: bool = False) -> dict[str, Any]:
    """An event ``name`` whose ``data`` is JSON matching ``data``."""
    properties: dict[str, Any] = {
        "event": {"const": name},
        "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data},
    }
    if with_id:
        properties["id"] = {"type": "string", "pattern": "^[0-9]+$"}
    return {
        "type": "object",
        "required": ["event", "data", *(["id"] if with_id else [])],
        "properties": properties,
    }


_NULLABLE_STRING = {"type": ["string", "null"]}
_NULLABLE_INTEGER = {"type": ["integer", "null"]}
_INTEGER = {"type": "integer"}
# The characters str.strip() removes (str.isspace()), written out as a range list
# because regex dialects disagree on what \s matches.
_BLANK_CHARS = "\t-\r\x1c- \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# Ids and names the API checks with check_text: 1 to 200 characters, not all blank.
_TEXT = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_ID_CHARS,
    "pattern": f"[^{_BLANK_CHARS}]",
}


def _path_id(name: str, *, checked_text: bool = False) -> dict[str, Any]:
    """A path parameter: one path segment, since an encoded ``/`` is decoded before routing.

    ``checked_text``: also 1 to ``MAX_ID_CHARS`` characters, not all blank (check_text).
    """
    schema: dict[str, Any] = {"type": "string", "minLength": 1, "pattern": "^[^/]+$"}
    if checked_text:
        schema = {**schema, "maxLength": MAX_ID_CHARS, "pattern": f"^[^/]*[^/{_BLANK_CHARS}][^/]*$"}
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _count(name: str, location: str = "query", maximum: int = MAX_QUERY_INT) -> dict[str, Any]:
    return {
        "name": name,
        "in": location,
        "required": False,
        "schema": {"type": "integer", "minimum": 0, "maximum": maximum},
    }


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    """An object with exactly ``properties``, all required unless ``required`` says otherwise."""
    return {
        "type": "object",
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
        "properties": properties,
    }


_JOB_ID = _path_id("job_id")
_NOTIFICATION_ID = _path_id("notification_id")
_USER_KEY = {
    "name": "X-Upstream-Api-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "Your own upstream key (an `Authorization: Bearer` value that is not a "
    "JWT counts too), used if the server allows user keys or has none of its own; else "
    "`/v1` answers 403 and the seed route uses the server's key.",
}
_AUTH_ERRORS = {"401": _error("Missing, expired or invalid bearer token.")}
_JOB_STATUSES = [status.value for status in JobStatus]
_SETTINGS = attrs.fields(ServiceConfig)
_CHAT_BODY_LIMIT = (
    "The body is larger than the server's `max_chat_body_bytes` "
    f"({_SETTINGS.max_chat_body_bytes.default} bytes by default)."
)
_BODY_LIMIT = (
    "The body is larger than the server's `max_body_bytes` "
    f"({_SETTINGS.max_body_bytes.default} bytes by default)."
)
_CONTENT = {"type": "string", "description": "Bounded only by the body limit."}


def _part(kind: str, field: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A content part ``{"type": kind, field: ...}``; other keys pass upstream as they are."""
    return {
        "type": "object",
        "required": ["type", field],
        "properties": {"type": {"const": kind}, field: schema},
    }


_PARTS = {
    "text": _part("text", "text", {"type": "string"}),
    "image_url": _part(
        "image_url",
        "image_url",
        {
            "type": "object",
            "required": ["url"],
            "properties": {
                "url": {
                    "type": "string",
                    "description": "An http(s) URL, or the image as a base64 data URL.",
                    "anyOf": [{"pattern": HTTP_URL_PATTERN}, {"pattern": DATA_URL_PATTERN}],
                },
                "detail": {"enum": list(IMAGE_DETAILS)},
            },
        },
    ),
    "file": _part(
        "file",
        "file",
        {
            "type": "object",
            "required": ["filename", "file_data"],
            "properties": {
                "filename": {"type": "string"},
                "file_data": {"type": "string", "pattern": DATA_URL_PATTERN},
            },
        },
    ),
}
_CONTENT_PARTS = {
    "type": "array",
    "description": (
        "Content parts (text, images, files as base64 data URLs), passed upstream as they "
        f"are; bounded only by the body limit, nested at most {MAX_NESTING} levels."
    ),
    "items": {"oneOf": [_PARTS[kind] for kind in PART_TYPES]},
}
_MESSAGE_EXTRAS = {
    "name": _NULLABLE_STRING,
    "tool_call_id": _NULLABLE_STRING,
    "tool_calls": {"type": ["array", "null"], "items": {"type": "object"}},
}
_MESSAGES = {
    "type": "array",
    "items": _ref("ChatMessage"),
    "minItems": 1,
    "maxItems": MAX_MESSAGES,
}

_SCHEMAS: dict[str, Any] = {
    "Error": _object(
        {"error": _object({"code": {"type": "string"}, "message": {"type": "string"}})}
    ),
    "SeedError": _object({"error": {"type": "string"}}),
    "ChatMessage": {
        "description": "A chat message; only assistant and tool messages may have no content.",
        "oneOf": [
            {
                "type": "object",
                "required": ["role", "content"],
                "additionalProperties": False,
                "properties": {
                    "role": {"enum": ["system", "developer", "user"]},
                    "content": {"oneOf": [_CONTENT, _CONTENT_PARTS]},
                    **_MESSAGE_EXTRAS,
                },
            },
            {
                "type": "object",
                "required": ["role"],
                "additionalProperties": False,
                "properties": {
                    "role": {"enum": ["assistant", "tool"]},
                    "content": {"oneOf": [_CONTENT, _CONTENT_PARTS, {"type": "null"}]},
                    **_MESSAGE_EXTRAS,
                },
            },
        ],
    },
    "CreateJob": {
        "type": "object",
        "required": ["model", "messages", "thread_id", "message_id"],
        "additionalProperties": False,
        "properties": {
            "model": _TEXT,
            "messages": _MESSAGES,
            "thread_id": _TEXT,
            "message_id": _TEXT,
            "params": {
                "type": "object",
                "description": (
                    "Extra upstream fields (temperature, max_tokens...), nested at most "
                    f"{MAX_NESTING} levels."
                ),
            },
        },
    },
    "SeedChat": {
        "type": "object",
        "description": (
            "An OpenAI chat body. `_background`, `_threadId`, `_messageId` and `stream` are "
            "taken out; any other field goes upstream as it is."
        ),
        "required": ["model", "messages"],
        "properties": {
            "model": _TEXT,
            "messages": _MESSAGES,
            "_background": {"type": "boolean"},
            "_threadId": _TEXT,
            "_messageId": _TEXT,
            "stream": {"description": "Ignored: a job always streams."},
        },
        "if": {"required": ["_background"], "properties": {"_background": {"const": True}}},
        "then": {"required": ["_threadId", "_messageId"]},
    },
    "Usage": {
        **_object(
            {
                "prompt_tokens": _NULLABLE_INTEGER,
                "completion_tokens": _NULLABLE_INTEGER,
                "total_tokens": _NULLABLE_INTEGER,
                "reasoning_tokens": _NULLABLE_INTEGER,
                "cost": {"type": ["number", "null"]},
            }
        ),
        "type": ["object", "null"],
    },
    "Job": _object(
        {
            "id": {"type": "string"},
            "thread_id": {"type": "string"},
            "message_id": {"type": "string"},
            "model": {"type": "string"},
            "status": {"enum": _JOB_STATUSES},
            "started_at": {"type": "string", "format": "date-time"},
            "completed_at": {"type": ["string", "null"], "format": "date-time"},
            "error": _NULLABLE_STRING,
            "chunks_received": {"type": "integer"},
            "last_seq": {"type": "integer"},
            "finish_reason": _NULLABLE_STRING,
            "usage": _ref("Usage"),
            "generation_id": _NULLABLE_STRING,
            "offset": {"type": "integer", "description": "The asked offset, at most the length."},
            "content_delta": {"type": "string", "description": "Content from `offset` on."},
            "content_length": {"type": "integer"},
            "reasoning_offset": {
                "type": "integer",
                "description": "The asked reasoning offset, at most the reasoning's length.",
            },
            "reasoning": {"type": "string", "description": "Reasoning from `reasoning_offset` on."},
            "reasoning_length": {"type": "integer"},
            "tool_calls": {
                "type": "array",
                "description": "Whole tool calls, their streamed fragments joined; set when "
                "the job ends (an aborted job may have none).",
                "items": _object(
                    {
                        "id": {"type": "string"},
                        "type": {"type": "string"},
                        "function": _object(
                            {"name": {"type": "string"}, "arguments": {"type": "string"}}
                        ),
                    }
                ),
            },
            "images": {
                "type": "array",
                "description": "Images the model made, as the upstream sent them "
                '(`{"type": "image_url", "image_url": {"url": "data:..."}}`); set when '
                "the job ends.",
                "items": {"type": "object"},
            },
            "foreground": {
                "type": "boolean",
                "description": "Streamed straight through to its caller (the seed's foreground "
                "path) and recorded here.",
            },
        }
    ),
    "Notification": _object(
        {
            "id": {"type": "string"},
            "thread_id": {"type": "string"},
            "job_id": {"type": "string"},
            "type": {"enum": [kind.value for kind in NotificationType]},
            "title": {"type": "string"},
            "body": {"type": "string"},
            "actions": {
                "type": "array",
                "items": _object(
                    {
                        "label": {"type": "string"},
                        "kind": {"type": "string"},
                        "thread_id": {"type": "string"},
                        "message_id": {"type": "string"},
                    }
                ),
            },
            "read_at": {"type": ["string", "null"], "format": "date-time"},
            "created_at": {"type": "string", "format": "date-time"},
        }
    ),
    "Delta": _object(
        {"seq": _INTEGER, "content": {"type": "string"}, "reasoning": {"type": "string"}}
    ),
    "StatusEvent": _object(
        {
            "status": {"enum": _JOB_STATUSES},
            "error": _NULLABLE_STRING,
            "finish_reason": _NULLABLE_STRING,
            "usage": _ref("Usage"),
            "last_seq": _INTEGER,
        }
    ),
    "SeedJobStatus": _object(
        {
            "id": {"type": "string"},
            "status": {"enum": ["streaming", "complete", "error", "aborted"]},
            "threadId": {"type": "string"},
            "messageId": {"type": "string"},
            "model": {"type": "string"},
            "chunksReceived": {"type": "integer"},
            "startedAt": {"type": "integer", "description": "Epoch milliseconds."},
            "completedAt": {
                "type": "integer",
                "description": "Epoch milliseconds; absent until the job ends.",
            },
            "error": {"type": "string", "description": "Absent unless the job failed."},
            "content": {"type": "string"},
        },
        required=[
            "id",
            "status",
            "threadId",
            "messageId",
            "model",
            "chunksReceived",
            "startedAt",
            "content",
        ],
    ),
}

_PATHS: dict[str, Any] = {
    "/v1/jobs": {
        "post": {
            "summary": "Start a background job",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("CreateJob")}},
            },
            "parameters": [_USER_KEY],
            "responses": {
                "202": {
                    **_json(_ref("Job"), "Started."),
                    "headers": {
                        "Location": {
                            "description": "The job's URL.",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    },
                },
                "400": _error("The body is not JSON."),
                **_AUTH_ERRORS,
                "403": _error("Per-request API keys are not allowed."),
                "413": _error(_CHAT_BODY_LIMIT),
                "422": _error("The body is JSON but not a valid request."),
                "429": {
                    **_error(
                        "You run as many jobs as allowed per user (`too_many_jobs`), or you "
                        "sent more requests to start jobs than your rate limit allows "
                        "(`rate_limited`, with `Retry-After`)."
                    ),
                    "headers": {"Retry-After": _RATE_LIMIT_RETRY_AFTER},
                },
                "503": {
                    **_error("The server runs as many jobs as it can; retry after `Retry-After`."),
                    "headers": {
                        "Retry-After": {
                            "description": "Seconds to wait.",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    },
                },
            },
        },
        "get": {
            "summary": "List your jobs",
            "parameters": [
                {
                    "name": "status",
                    "in": "query",
                    "required": False,
                    "schema": {"enum": _JOB_STATUSES},
                }
            ],
            "responses": {
                "200": _json(
                    _object({"jobs": {"type": "array", "items": _ref("Job")}}), "Newest first."
                ),
                **_AUTH_ERRORS,
                "422": _error("Unknown status."),
            },
        },
    },
    "/v1/jobs/{job_id}": {
        "get": {
            "summary": "Poll a job, with the content from `offset` on and the reasoning "
            "from `reasoning_offset` on",
            "parameters": [_JOB_ID, _count("offset"), _count("reasoning_offset")],
            "responses": {
                "200": _json(_ref("Job"), "The job."),
                **_AUTH_ERRORS,
                "404": _error("No such job of yours."),
                "422": _error("`offset` or `reasoning_offset` is not an integer in range."),
            },
        }
    },
    "/v1/jobs/{job_id}/abort": {
        "post": {
            "summary": "Abort a job (idempotent); closes the upstream response",
            "parameters": [_JOB_ID],
            "responses": {
                "200": _json(
                    _object({"aborted": {"type": "boolean"}, "job": _ref("Job")}),
                    "`aborted` is true if this call aborted it.",
                ),
                **_AUTH_ERRORS,
                "404": _error("No such job of yours."),
            },
        }
    },
    "/v1/jobs/{job_id}/events": {
        "get": {
            "summary": "Follow a job live (Server-Sent Events)",
            "description": (
                "Events `snapshot`, `delta` (`id:` is the seq) and `status`, plus keep-alive "
                "comments. Resume with `Last-Event-ID` or `?after=N` (the header wins). Ends "
                "after `status`, or with `shutdown` when the server stops. A disconnect never "
                "aborts the job."
            ),
            "parameters": [_JOB_ID, _count("after"), _count("Last-Event-ID", "header")],
            "responses": {
                "200": _sse(
                    "The event stream.",
                    {
                        "oneOf": [
                            _event("snapshot", _ref("Job")),
                            _event("delta", _ref("Delta"), with_id=True),
                            _event("status", _ref("StatusEvent")),
                            _event(
                                "shutdown",
                                _object({"message": {"type": "string"}, "last_seq": _INTEGER}),
                            ),
                        ]
                    },
                ),
                **_AUTH_ERRORS,
                "404": _error("No such job of yours."),
                "422": _error("`after` or `Last-Event-ID` is not a delta seq."),
            },
        }
    },
    "/v1/notifications": {
        "get": {
            "summary": "List your notifications, newest first",
            "parameters": [
                {
                    "name": "unread",
                    "in": "query",
                    "required": False,
                    "schema": {"enum": ["1", "true", "yes", "0", "false", "no"]},
                    "description": "Only unread ones when true.",
                },
                _count("limit", maximum=500),
            ],
            "responses": {
                "200": _json(
                    _object({"notifications": {"type": "array", "items": _ref("Notification")}}),
                    "Notifications.",
                ),
                **_AUTH_ERRORS,
                "422": _error("`unread` or `limit` is out of range."),
            },
        }
    },
    "/v1/notifications/{notification_id}/read": {
        "post": {
            "summary": "Mark one notification read",
            "parameters": [_NOTIFICATION_ID],
            "responses": {
                "200": _json(_object({"read": {"const": True}}), "Read."),
                **_AUTH_ERRORS,
                "404": _error("No such notification of yours."),
            },
        }
    },
    "/v1/notifications/read-all": {
        "post": {
            "summary": "Mark all your notifications read",
            "responses": {
                "200": _json(_object({"updated": {"type": "integer"}}), "How many changed."),
                **_AUTH_ERRORS,
            },
        }
    },
    "/v1/notifications/{notification_id}": {
        "delete": {
            "summary": "Delete a notification",
            "parameters": [_NOTIFICATION_ID],
            "responses": {
                "204": {"description": "Deleted."},
                **_AUTH_ERRORS,
                "404": _error("No such notification of yours."),
            },
        }
    },
    "/v1/notifications/events": {
        "get": {
            "summary": "New notifications, live (Server-Sent Events `notification`)",
            "responses": {
                "200": _sse(
                    "The event stream.",
                    {
                        "oneOf": [
                            _event("notification", _ref("Notification")),
                            _event("shutdown", _object({"message": {"type": "string"}})),
                        ]
                    },
                ),
                **_AUTH_ERRORS,
            },
        }
    },
    "/v1/threads/{thread_id}/mute": {
        "put": {
            "summary": "Mute or unmute a thread's notifications",
            "parameters": [_path_id("thread_id", checked_text=True)],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": _object({"muted": {"type": "boolean"}})}
                },
            },
            "responses": {
                "200": _json(
                    _object({"thread_id": {"type": "string"}, "muted": {"type": "boolean"}}),
                    "The new state.",
                ),
                "400": _error("The body is not JSON."),
                **_AUTH_ERRORS,
                "404": _error("No route: a thread id with `/` has no mute URL."),
                "413": _error(_BODY_LIMIT),
                "422": _error("Bad body, or a blank or too long thread id."),
            },
        }
    },
    "/v1/system/actors": {
        "get": {
            "summary": "The live actor tree (admin tokens only)",
            "responses": {
                "200": _json({"type": "object"}, "The runtime snapshot."),
                **_AUTH_ERRORS,
                "403": _error("Not an admin token."),
            },
        }
    },
    "/api/openrouter/stream": {
        "post": {
            "summary": "Seed-compatible chat stream",
            "description": (
                "With `_background: true`, `_threadId` and `_messageId` it starts a job and "
                "answers `{jobId, status}`; without, it passes the upstream's answer through: "
                "its Server-Sent Events byte for byte, or its own error status and body (the "
                "first 2000 characters). The job is still recorded; see `X-Job-Id`. The "
                "service's own errors are `{error: string}`."
            ),
            "parameters": [_USER_KEY],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("SeedChat")}},
            },
            "responses": {
                "200": {
                    "description": '`{jobId, status: "streaming"}`, or an event stream.',
                    "content": {
                        "application/json": {
                            "schema": _object(
                                {"jobId": {"type": "string"}, "status": {"const": "streaming"}}
                            )
                        },
                        "text/event-stream": {
                            "schema": {
                                "description": "One of the upstream's events, unchanged.",
                                "type": "object",
                                "required": ["data"],
                                "properties": {
                                    "event": {"type": "string"},
                                    "data": {
                                        "type": "string",
                                        "description": "An OpenAI chat-completion chunk as "
                                        "JSON, or `[DONE]`.",
                                    },
                                },
                            }
                        },
                    },
                },
                "400": _seed_error(
                    "Not JSON, no model or messages, a bad message or content part (the "
                    "message names the field), or no `_threadId` or `_messageId` for a "
                    "background job."
                ),
                "401": _seed_error(
                    "`Authentication required for background streaming`, or `Missing "
                    "OpenRouter API key` when neither the server nor the request has one. "
                    "A user's key the server does not allow is ignored for the server's own."
                ),
                "413": _seed_error(_CHAT_BODY_LIMIT),
                "429": {
                    **_seed_error(
                        "Too many background jobs of yours, or `Too many requests, try again "
                        "later` past your rate limit (with `Retry-After`)."
                    ),
                    "headers": {"Retry-After": _RATE_LIMIT_RETRY_AFTER},
                },
                "502": _seed_error("Failed to reach OpenRouter (the upstream did not answer)."),
                "503": _seed_error("Server busy, try again later."),
            },
        }
    },
    "/api/jobs/{job_id}/status": {
        "get": {
            "summary": "Seed-compatible job status (camelCase)",
            "parameters": [_JOB_ID],
            "responses": {
                "200": _json(_ref("SeedJobStatus"), "The job."),
                "401": _seed_error("`Authentication required`."),
                "404": _seed_error("Job not found or unauthorized."),
            },
        }
    },
    "/api/jobs/{job_id}/abort": {
        "post": {
            "summary": "Seed-compatible abort",
            "parameters": [_JOB_ID],
            "responses": {
                "200": _json(
                    _object(
                        {"aborted": {"type": "boolean"}, "message": {"type": "string"}},
                        required=["aborted"],
                    ),
                    "`{aborted: true}` or `{aborted: false, message}`.",
                ),
                "401": _json(
                    _object({"error": {"type": "string"}, "aborted": {"const": False}}),
                    '`{error: "Authentication required", aborted: false}`.',
                ),
            },
        }
    },
    "/healthz": {
        "get": {
            "summary": "Liveness",
            "security": [],
            "responses": {"200": _json(_object({"status": {"const": "ok"}}), "Alive.")},
        }
    },
    "/readyz": {
        "get": {
            "summary": "Readiness: store reachable, tree running",
            "security": [],
            "responses": {
                "200": _json(_object({"status": {"const": "ready"}}), "Ready."),
                "503": _json(
                    _object({"status": {"enum": ["not ready", "shutting down"]}}), "Not ready."
                ),
            },
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics",
            "security": [],
            "responses": {
                "200": {
                    "description": "Text exposition format.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/openapi.json": {
        "get": {
            "summary": "This document",
            "security": [],
            "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1.")},
        }
    },
}


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI document (built once)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "troupe",
            "version": "1",
            "description": (
                "Background streaming of LLM chat responses: start, poll, follow, resume, "
                "abort, and be notified."
            ),
        },
        "security": [{"bearer": []}],
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
        "paths": _PATHS,
    }
