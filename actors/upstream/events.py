"""What goes into an upstream (a request) and what comes out of it (events and a result)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from actors.model import Usage

__all__ = [
    "ExtrasDelta",
    "KeepAlive",
    "RawBytes",
    "StreamOpened",
    "StreamResult",
    "TextDelta",
    "UpstreamEvent",
    "UpstreamRequest",
    "merge_tool_calls",
]


@attrs.frozen
class UpstreamRequest:
    """One chat completion to stream.

    ``messages`` are OpenAI chat messages, passed through as they are. ``params``
    (temperature, max_tokens, ...) are merged into the request body; ``model``,
    ``messages`` and ``stream`` always win over them. ``api_key``, when given, is used
    instead of the upstream's own key; it is left out of ``repr``.

    ``passthrough`` asks for the answer as it comes over the wire: the body's bytes
    as :class:`RawBytes` events beside the parsed ones, and no retry, so that the
    caller sees the upstream's own answer, its failure included, at once.
    """

    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any] = attrs.field(factory=dict)
    api_key: str | None = attrs.field(default=None, repr=False)
    passthrough: bool = False


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
class ExtrasDelta:
    """One chunk's ``choices[0].delta`` output that is not text.

    ``tool_calls`` are the streamed fragments as sent (join them with
    :func:`merge_tool_calls`); ``images`` are whole OpenRouter image outputs,
    ``{"type": "image_url", "image_url": {"url": "data:..."}}``. At least one of the
    two is non-empty when an upstream emits it.
    """

    tool_calls: list[dict[str, Any]] = attrs.field(factory=list)
    images: list[dict[str, Any]] = attrs.field(factory=list)


@attrs.frozen
class RawBytes:
    """A piece of the response body exactly as read, for pass-through requests only.

    It comes before the events parsed from it; the pieces of a stream, joined, are
    the body the upstream sent.
    """

    data: bytes


@attrs.frozen
class KeepAlive:
    """An SSE comment such as ``: OPENROUTER PROCESSING``: the upstream is alive."""


UpstreamEvent = StreamOpened | TextDelta | ExtrasDelta | RawBytes | KeepAlive


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


def merge_tool_calls(fragments: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Join streamed tool-call fragments into whole calls, ordered by ``index``.

    Each call is ``{"id", "type", "function": {"name", "arguments"}}``: fragments of
    one call share its ``index``; a non-empty ``id``, ``type`` or ``function.name``
    replaces what came before (``type`` is ``"function"`` until one comes), and the
    ``function.arguments`` pieces are concatenated in order. A fragment without an
    integer ``index`` continues the last call, or starts a new one when it carries an
    ``id`` other than that call's (providers that send each call whole, unindexed).
    Never raises on malformed fragments: what is not a string is left out.
    """
    calls: dict[int, dict[str, Any]] = {}
    arguments: dict[int, list[str]] = {}
    last: int | None = None
    for fragment in fragments:
        call_id = _text(fragment.get("id"))
        index = fragment.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            if last is None or (call_id and call_id != calls[last]["id"]):
                index = max(calls, default=-1) + 1
            else:
                index = last
        call = calls.get(index)
        if call is None:
            call = calls[index] = {"id": "", "type": "function", "function": {"name": ""}}
            arguments[index] = []
        last = index
        if call_id:
            call["id"] = call_id
        if kind := _text(fragment.get("type")):
            call["type"] = kind
        function = fragment.get("function")
        if isinstance(function, Mapping):
            if name := _text(function.get("name")):
                call["function"]["name"] = name
            if piece := _text(function.get("arguments")):
                arguments[index].append(piece)
    merged = []
    for index in sorted(calls):
        call = calls[index]
        call["function"]["arguments"] = "".join(arguments[index])
        merged.append(call)
    return merged


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
