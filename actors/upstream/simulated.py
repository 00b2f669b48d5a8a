"""A stand-in model that streams a canned answer without any network.

It serves demos, local runs without an API key, and tests of everything above the
upstream. The answer quotes the last user message, so the same request always gets the
same text, paced at a fixed number of tokens per second on trio's clock.

Request params it understands (other params are ignored):

- ``"simulate_error": "<message>"``: halfway through the answer, raise
  ``UpstreamError("stream_error", <message>)`` instead of finishing.

A pass-through request also gets the answer as an OpenAI-compatible server would
send it, as RawBytes: a ``data:`` chunk per delta, then the finish chunk, the usage
chunk and ``data: [DONE]`` (or, for a simulated error, the error event).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import trio

from actors.model import Usage
from actors.upstream.errors import UpstreamError
from actors.upstream.events import (
    RawBytes,
    StreamOpened,
    StreamResult,
    TextDelta,
    UpstreamEvent,
    UpstreamRequest,
)

__all__ = ["SIMULATE_ERROR_PARAM", "SimulatedUpstream"]

SIMULATE_ERROR_PARAM = "simulate_error"

# The quote is cut so that the answer stays around 30 to 60 tokens.
_MAX_QUOTED_WORDS = 12

_ANSWER = (
    'Thanks for your message! You wrote: "{quote}". This is a simulated answer, streamed '
    "word by word so you can watch a background response grow, follow it live, resume it "
    "after a disconnect or abort it halfway. Nothing was sent to a real model. "
    "Have a nice day!"
)

_REASONING = "The user wrote {count} words. A short and friendly reply that quotes them should do."


class SimulatedUpstream:
    """An :class:`~actors.upstream.protocol.Upstream` that makes its answer up.

    Emits StreamOpened (generation id ``sim-<n>``), then, when ``reasoning`` is on, a few
    reasoning-only deltas, then the answer as one TextDelta per word (with its trailing
    space), sleeping ``1 / tokens_per_second`` before each delta. Returns
    ``StreamResult("stop", Usage(..., cost=0.0), "sim-<n>")``. A pass-through request
    gets each delta's chunk as RawBytes just before the delta, and the ending chunks
    after the last one.
    """

    def __init__(self, tokens_per_second: float = 20.0, *, reasoning: bool = False) -> None:
        if not tokens_per_second > 0:
            raise ValueError("tokens_per_second must be positive")
        self._delay = 0.0 if math.isinf(tokens_per_second) else 1.0 / tokens_per_second
        self._reasoning = reasoning
        self._numbers = itertools.count(1)

    def __repr__(self) -> str:
        return f"SimulatedUpstream(delay={self._delay!r}, reasoning={self._reasoning!r})"

    async def stream(
        self,
        request: UpstreamRequest,
        on_event: Callable[[UpstreamEvent], Awaitable[None]],
    ) -> StreamResult:
        """Stream the canned answer to ``request``; see the class docs for the events.

        Raises UpstreamError("stream_error") halfway when the request's params hold
        ``simulate_error``. Sleeps between tokens, so it may be cancelled at any of them.
        """
        generation_id = f"sim-{next(self._numbers)}"
        prompt = _last_user_text(request.messages)
        answer = _tokens(_ANSWER.format(quote=_quote(prompt)))
        thoughts = _tokens(_REASONING.format(count=len(prompt.split()))) if self._reasoning else []
        deltas = [TextDelta(reasoning=token) for token in thoughts]
        deltas += [TextDelta(content=token) for token in answer]
        error = request.params.get(SIMULATE_ERROR_PARAM)
        fail_at = len(deltas) // 2 if error is not None else None
        wire = _Wire(generation_id, request.model) if request.passthrough else None

        await on_event(StreamOpened(generation_id))
        for index, delta in enumerate(deltas):
            if index == fail_at:
                if wire is not None:
                    await on_event(RawBytes(wire.event({"error": {"message": str(error)}})))
                raise UpstreamError("stream_error", str(error))
            await trio.sleep(self._delay)
            if wire is not None:
                await on_event(RawBytes(wire.chunk(delta)))
            await on_event(delta)

        prompt_tokens = sum(len(_text_of(m).split()) for m in request.messages)
        completion_tokens = len(deltas)
        usage = Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            reasoning_tokens=len(thoughts) if self._reasoning else None,
            cost=0.0,
        )
        if wire is not None:
            await on_event(RawBytes(wire.ending(usage)))
        return StreamResult(finish_reason="stop", usage=usage, generation_id=generation_id)

    async def aclose(self) -> None:
        """Nothing to release."""


class _Wire:
    """The answer's SSE bytes, as an OpenAI-compatible server writes them."""

    def __init__(self, generation_id: str, model: str) -> None:
        self._head = {"id": generation_id, "object": "chat.completion.chunk", "model": model}

    def event(self, payload: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    def chunk(self, delta: TextDelta) -> bytes:
        fields = {"content": delta.content} if delta.content else {"reasoning": delta.reasoning}
        choice = {"index": 0, "delta": fields, "finish_reason": None}
        return self.event({**self._head, "choices": [choice]})

    def ending(self, usage: Usage) -> bytes:
        """The finish chunk, the usage chunk and ``[DONE]``."""
        finish = {"index": 0, "delta": {}, "finish_reason": "stop"}
        totals = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens or 0},
            "cost": usage.cost,
        }
        return (
            self.event({**self._head, "choices": [finish]})
            + self.event({**self._head, "choices": [], "usage": totals})
            + b"data: [DONE]\n\n"
        )


def _text_of(message: dict[str, Any]) -> str:
    """The text of a chat message whose content is a string or a list of parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _text_of(message)
    return ""


def _quote(prompt: str) -> str:
    words = prompt.split()
    if not words:
        return "(nothing)"
    if len(words) > _MAX_QUOTED_WORDS:
        return " ".join(words[:_MAX_QUOTED_WORDS]) + " ..."
    return " ".join(words)


def _tokens(text: str) -> list[str]:
    """Split into words that keep their trailing space, so joining gives ``text`` back."""
    words = text.split(" ")
    return [word + " " for word in words[:-1]] + [words[-1]]
