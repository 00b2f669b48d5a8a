"""What goes into an upstream (a request) and what comes out of it (events and a result)."""

from __future__ import annotations

from typing import Any

import attrs

from actors.model import Usage

__all__ = [
    "KeepAlive",
    "StreamOpened",
    "StreamResult",
    "TextDelta",
    "UpstreamEvent",
    "UpstreamRequest",
]


@attrs.frozen
class UpstreamRequest:
    """One chat completion to stream.

    ``messages`` are OpenAI chat messages, passed through as they are. ``params``
    (temperature, max_tokens, ...) are merged into the request body; ``model``,
    ``messages`` and ``stream`` always win over them. ``api_key``, when given, is used
    instead of the upstream's own key; it is left out of ``repr``.
    """

    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any] = attrs.field(factory=dict)
    api_key: str | None = attrs.field(default=None, repr=False)


@attrs.frozen
class StreamOpened:
    """The upstream answered with a 2xx status; its ``X-Generation-Id`` header, if any.

    It comes once per attempt, so after a retried failure it may come again.
    """

    generation_id: str | None


@attrs.frozen
class TextDelta:
    """One chunk's ``choices[0].delta``: new answer text and/or new reasoning text.

    At least one of the two fields is non-empty when an upstream emits it.
    """

    content: str = ""
    reasoning: str = ""


@attrs.frozen
class KeepAlive:
    """An SSE comment such as ``: OPENROUTER PROCESSING``: the upstream is alive."""


UpstreamEvent = StreamOpened | TextDelta | KeepAlive


@attrs.frozen
class StreamResult:
    """How a properly finished stream ended.

    ``finish_reason`` is the last non-null ``finish_reason`` seen; ``usage`` comes from
    the usage chunk (``None`` if there was none); ``generation_id`` is the
    ``X-Generation-Id`` header, or else the ``id`` of the first chunk.
    """

    finish_reason: str | None
    usage: Usage | None
    generation_id: str | None
