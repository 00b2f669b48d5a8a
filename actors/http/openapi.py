"""The OpenAPI 3.1 document of the HTTP API, served at ``GET /openapi.json``."""

from __future__ import annotations

from functools import cache
from typing import Any

__all__ = ["openapi_document"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _sse(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }


_NULLABLE_STRING = {"type": ["string", "null"]}
_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
_NOTIFICATION_ID = {
    "name": "notification_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}
_AUTH_ERRORS = {"401": _error("Missing, expired or invalid bearer token.")}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
    "ChatMessage": {
        "type": "object",
        "required": ["role"],
        "additionalProperties": False,
        "properties": {
            "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
            "content": {"oneOf": [{"type": "string"}, {"type": "array"}, {"type": "null"}]},
            "name": _NULLABLE_STRING,
            "tool_call_id": _NULLABLE_STRING,
            "tool_calls": {"type": ["array", "null"]},
        },
    },
    "CreateJob": {
        "type": "object",
        "required": ["model", "messages", "thread_id", "message_id"],
        "additionalProperties": False,
        "properties": {
            "model": {"type": "string", "maxLength": 200},
            "messages": {
                "type": "array",
                "items": _ref("ChatMessage"),
                "minItems": 1,
                "maxItems": 256,
            },
            "thread_id": {"type": "string", "maxLength": 200},
            "message_id": {"type": "string", "maxLength": 200},
            "params": {
                "type": "object",
                "description": "Extra upstream fields (temperature, max_tokens...).",
            },
        },
    },
    "Usage": {
        "type": ["object", "null"],
        "properties": {
            "prompt_tokens": {"type": ["integer", "null"]},
            "completion_tokens": {"type": ["integer", "null"]},
            "total_tokens": {"type": ["integer", "null"]},
            "reasoning_tokens": {"type": ["integer", "null"]},
            "cost": {"type": ["number", "null"]},
        },
    },
    "Job": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "thread_id": {"type": "string"},
            "message_id": {"type": "string"},
            "model": {"type": "string"},
            "status": {"enum": ["queued", "streaming", "complete", "error", "aborted"]},
            "started_at": {"type": "string", "format": "date-time"},
            "completed_at": {"type": ["string", "null"], "format": "date-time"},
            "error": _NULLABLE_STRING,
            "chunks_received": {"type": "integer"},
            "last_seq": {"type": "integer"},
            "finish_reason": _NULLABLE_STRING,
            "usage": _ref("Usage"),
            "generation_id": _NULLABLE_STRING,
            "offset": {"type": "integer"},
            "content_delta": {"type": "string", "description": "Content from `offset` on."},
            "content_length": {"type": "integer"},
            "reasoning": {"type": "string"},
        },
    },
    "Notification": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "thread_id": {"type": "string"},
            "job_id": {"type": "string"},
            "type": {"enum": ["ai.background.complete", "ai.background.error"]},
            "title": {"type": "string"},
            "body": {"type": "string"},
            "actions": {"type": "array", "items": {"type": "object"}},
            "read_at": {"type": ["string", "null"], "format": "date-time"},
            "created_at": {"type": "string", "format": "date-time"},
        },
    },
}

_PATHS: dict[str, Any] = {
    "/v1/jobs": {
        "post": {
            "summary": "Start a background job",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("CreateJob")}},
            },
            "parameters": [
                {
                    "name": "X-Upstream-Api-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "Your own upstream key, if the server allows it.",
                }
            ],
            "responses": {
                "202": _json(_ref("Job"), "Started; `Location` names the job."),
                "400": _error("The body is not JSON."),
                **_AUTH_ERRORS,
                "403": _error("Per-request API keys are not allowed."),
                "413": _error("The body is too large."),
                "422": _error("The body is JSON but not a valid request."),
                "429": _error("You run as many jobs as allowed per user."),
                "503": _error("The server runs as many jobs as it can; retry after `Retry-After`."),
            },
        },
        "get": {
            "summary": "List your jobs",
            "parameters": [
                {
                    "name": "status",
                    "in": "query",
                    "required": False,
                    "schema": {"enum": ["queued", "streaming", "complete", "error", "aborted"]},
                }
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {"jobs": {"type": "array", "items": _ref("Job")}},
                    },
                    "Newest first.",
                ),
                **_AUTH_ERRORS,
                "422": _error("Unknown status."),
            },
        },
    },
    "/v1/jobs/{job_id}": {
        "get": {
            "summary": "Poll a job, with the content from `offset` on",
            "parameters": [
                _JOB_ID,
                {
                    "name": "offset",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 0},
                },
            ],
            "responses": {
                "200": _json(_ref("Job"), "The job."),
                **_AUTH_ERRORS,
                "404": _error("No such job of yours."),
            },
        }
    },
    "/v1/jobs/{job_id}/abort": {
        "post": {
            "summary": "Abort a job (idempotent); closes the upstream response",
            "parameters": [_JOB_ID],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {"aborted": {"type": "boolean"}, "job": _ref("Job")},
                    },
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
                "comments. Resume with `Last-Event-ID` or `?after=N`. Ends after `status`, or "
                "with `shutdown` when the server stops. A disconnect never aborts the job."
            ),
            "parameters": [
                _JOB_ID,
                {
                    "name": "after",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 0},
                },
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                },
            ],
            "responses": {
                "200": _sse("The event stream."),
                **_AUTH_ERRORS,
                "404": _error("No such job of yours."),
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
                    "schema": {"enum": ["0", "1"]},
                },
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 0, "maximum": 500},
                },
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "notifications": {"type": "array", "items": _ref("Notification")}
                        },
                    },
                    "Notifications.",
                ),
                **_AUTH_ERRORS,
            },
        }
    },
    "/v1/notifications/{notification_id}/read": {
        "post": {
            "summary": "Mark one notification read",
            "parameters": [_NOTIFICATION_ID],
            "responses": {
                "200": _json({"type": "object"}, "Read."),
                **_AUTH_ERRORS,
                "404": _error("No such notification of yours."),
            },
        }
    },
    "/v1/notifications/read-all": {
        "post": {
            "summary": "Mark all your notifications read",
            "responses": {
                "200": _json(
                    {"type": "object", "properties": {"updated": {"type": "integer"}}},
                    "How many changed.",
                ),
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
            "responses": {"200": _sse("The event stream."), **_AUTH_ERRORS},
        }
    },
    "/v1/threads/{thread_id}/mute": {
        "put": {
            "summary": "Mute or unmute a thread's notifications",
            "parameters": [
                {"name": "thread_id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["muted"],
                            "additionalProperties": False,
                            "properties": {"muted": {"type": "boolean"}},
                        }
                    }
                },
            },
            "responses": {
                "200": _json({"type": "object"}, "The new state."),
                **_AUTH_ERRORS,
                "422": _error("Bad body."),
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
                "answers `{jobId, status}`; without, it streams OpenAI chunks (the job is still "
                "recorded; see `X-Job-Id`). Errors are `{error: string}`."
            ),
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "responses": {
                "200": {"description": '`{jobId, status: "streaming"}` or an event stream.'},
                "400": {"description": "Missing `_threadId` or `_messageId`."},
                "401": {"description": "Unauthorized."},
                "503": {"description": "Server busy, try again later."},
            },
        }
    },
    "/api/jobs/{job_id}/status": {
        "get": {
            "summary": "Seed-compatible job status (camelCase)",
            "parameters": [_JOB_ID],
            "responses": {
                "200": {"description": "The job."},
                "404": {"description": "Job not found or unauthorized."},
            },
        }
    },
    "/api/jobs/{job_id}/abort": {
        "post": {
            "summary": "Seed-compatible abort",
            "parameters": [_JOB_ID],
            "responses": {
                "200": {"description": "`{aborted: true}` or `{aborted: false, message}`."}
            },
        }
    },
    "/healthz": {
        "get": {
            "summary": "Liveness",
            "security": [],
            "responses": {"200": {"description": "Alive."}},
        }
    },
    "/readyz": {
        "get": {
            "summary": "Readiness: store reachable, tree running",
            "security": [],
            "responses": {"200": {"description": "Ready."}, "503": {"description": "Not ready."}},
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics",
            "security": [],
            "responses": {"200": {"description": "Text exposition format."}},
        }
    },
    "/openapi.json": {
        "get": {
            "summary": "This document",
            "security": [],
            "responses": {"200": {"description": "OpenAPI 3.1."}},
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
