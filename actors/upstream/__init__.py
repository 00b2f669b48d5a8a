"""Upstream model clients: the OpenAI-compatible SSE client and a simulated model.

Both satisfy :class:`Upstream`: ``await upstream.stream(request, on_event)`` calls
``on_event`` with StreamOpened, TextDelta, ExtrasDelta and KeepAlive events in order (and
RawBytes for a pass-through request) and returns a StreamResult, or raises UpstreamError.
Cancelling the call closes the upstream response.
"""

from __future__ import annotations

from actors.upstream.errors import UpstreamError
from actors.upstream.events import (
    ExtrasDelta,
    KeepAlive,
    RawBytes,
    StreamOpened,
    StreamResult,
    TextDelta,
    UpstreamEvent,
    UpstreamRequest,
    merge_tool_calls,
)
from actors.upstream.openai_compatible import OpenAICompatibleUpstream
from actors.upstream.protocol import EventHandler, Upstream
from actors.upstream.simulated import SimulatedUpstream

__all__ = [
    "EventHandler",
    "ExtrasDelta",
    "KeepAlive",
    "OpenAICompatibleUpstream",
    "RawBytes",
    "SimulatedUpstream",
    "StreamOpened",
    "StreamResult",
    "TextDelta",
    "Upstream",
    "UpstreamError",
    "UpstreamEvent",
    "UpstreamRequest",
    "merge_tool_calls",
]
