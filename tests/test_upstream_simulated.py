"""SimulatedUpstream: deterministic canned answers, paced on trio's (mock) clock."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from actors.upstream import (
    RawBytes,
    SimulatedUpstream,
    StreamOpened,
    StreamResult,
    TextDelta,
    Upstream,
    UpstreamError,
    UpstreamEvent,
    UpstreamRequest,
)
from actors.upstream.sse import SSEDecoder, SSEMessage


def ask(text: Any, *, passthrough: bool = False, **params: Any) -> UpstreamRequest:
    return UpstreamRequest(
        model="sim",
        messages=[
            {"role": "system", "content": "Be nice."},
            {"role": "user", "content": text},
        ],
        params=params,
        passthrough=passthrough,
    )


def sse_data(events: list[UpstreamEvent]) -> list[str]:
    """The ``data`` of every SSE message in the RawBytes events."""
    decoder = SSEDecoder()
    items = [item for e in events if isinstance(e, RawBytes) for item in decoder.feed(e.data)]
    return [item.data for item in items + decoder.finish() if isinstance(item, SSEMessage)]


async def collect(
    upstream: Upstream, request: UpstreamRequest
) -> tuple[StreamResult, list[UpstreamEvent]]:
    events: list[UpstreamEvent] = []

    async def on_event(event: UpstreamEvent) -> None:
        events.append(event)

    result = await upstream.stream(request, on_event)
    return result, events


def answer(events: list[UpstreamEvent]) -> str:
    return "".join(e.content for e in events if isinstance(e, TextDelta))


async def test_same_request_same_text_quoting_the_prompt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = SimulatedUpstream(tokens_per_second=1000)
    first_result, first = await collect(upstream, ask("What is an actor?"))
    second_result, second = await collect(upstream, ask("What is an actor?"))
    _, other = await collect(upstream, ask("Something else entirely"))

    assert answer(first) == answer(second)
    assert first[1:] == second[1:]
    assert '"What is an actor?"' in answer(first)
    assert answer(other) != answer(first)
    assert first[0] == StreamOpened("sim-1")
    assert (first_result.generation_id, second_result.generation_id) == ("sim-1", "sim-2")


async def test_tokens_are_words_with_trailing_space_and_usage_counts_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    result, events = await collect(SimulatedUpstream(1000), ask("hello there"))
    deltas = [e for e in events if isinstance(e, TextDelta)]

    assert 30 <= len(deltas) <= 60
    assert all(d.content.endswith(" ") for d in deltas[:-1])
    assert all(" " not in d.content.rstrip(" ") for d in deltas)
    assert result.finish_reason == "stop"
    assert result.usage is not None
    assert result.usage.completion_tokens == len(deltas)
    assert result.usage.prompt_tokens == 4  # "Be nice." + "hello there"
    assert result.usage.total_tokens == len(deltas) + 4
    assert result.usage.cost == 0.0


async def test_long_prompts_are_cut_so_the_answer_stays_short(
    autojump_clock: trio.testing.MockClock,
) -> None:
    _, events = await collect(SimulatedUpstream(1000), ask("word " * 200))
    assert len([e for e in events if isinstance(e, TextDelta)]) <= 60


async def test_content_given_as_parts_is_quoted(autojump_clock: trio.testing.MockClock) -> None:
    parts = [{"type": "text", "text": "Describe"}, {"type": "image_url", "image_url": {}}]
    _, events = await collect(SimulatedUpstream(1000), ask(parts))
    assert '"Describe"' in answer(events)


async def test_rate_follows_tokens_per_second_on_the_mock_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = SimulatedUpstream(tokens_per_second=10)
    times: list[float] = []

    async def on_event(event: UpstreamEvent) -> None:
        if isinstance(event, TextDelta):
            times.append(trio.current_time())

    started = trio.current_time()
    await upstream.stream(ask("pace me"), on_event)

    assert times[0] - started == pytest.approx(0.1)
    assert [b - a for a, b in itertools.pairwise(times)] == pytest.approx([0.1] * (len(times) - 1))
    assert trio.current_time() - started == pytest.approx(len(times) / 10)


async def test_reasoning_comes_before_the_answer(autojump_clock: trio.testing.MockClock) -> None:
    result, events = await collect(SimulatedUpstream(1000, reasoning=True), ask("think"))
    deltas = [e for e in events if isinstance(e, TextDelta)]
    reasoning = [d for d in deltas if d.reasoning]

    assert reasoning
    assert deltas[: len(reasoning)] == reasoning
    assert all(not d.content for d in reasoning)
    assert result.usage is not None
    assert result.usage.reasoning_tokens == len(reasoning)


async def test_simulate_error_fails_halfway(autojump_clock: trio.testing.MockClock) -> None:
    upstream = SimulatedUpstream(1000)
    _, full = await collect(upstream, ask("boom"))
    events: list[UpstreamEvent] = []

    async def on_event(event: UpstreamEvent) -> None:
        events.append(event)

    with pytest.raises(UpstreamError) as caught:
        await upstream.stream(ask("boom", simulate_error="model overloaded"), on_event)

    assert caught.value.code == "stream_error"
    assert caught.value.message == "model overloaded"
    full_deltas = [e for e in full if isinstance(e, TextDelta)]
    assert [e for e in events if isinstance(e, TextDelta)] == full_deltas[: len(full_deltas) // 2]


async def test_cancel_stops_the_stream(autojump_clock: trio.testing.MockClock) -> None:
    upstream = SimulatedUpstream(tokens_per_second=10)
    events: list[UpstreamEvent] = []

    async def on_event(event: UpstreamEvent) -> None:
        events.append(event)

    with trio.move_on_after(0.35):
        await upstream.stream(ask("stop me"), on_event)
    assert len([e for e in events if isinstance(e, TextDelta)]) == 3


def test_rejects_a_non_positive_rate() -> None:
    with pytest.raises(ValueError, match="tokens_per_second"):
        SimulatedUpstream(tokens_per_second=0)


async def test_passthrough_writes_each_delta_as_an_openai_chunk_then_the_ending(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = SimulatedUpstream(1000, reasoning=True)
    _, plain = await collect(upstream, ask("wire me"))
    result, events = await collect(upstream, ask("wire me", passthrough=True))

    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert deltas == [e for e in plain if isinstance(e, TextDelta)]
    # Each delta comes right after its own chunk's bytes.
    for index, event in enumerate(events):
        if isinstance(event, TextDelta):
            assert isinstance(events[index - 1], RawBytes)
    data = sse_data(events)
    assert data[-1] == "[DONE]"
    chunks = [orjson.loads(d) for d in data[:-1]]
    assert all(
        (c["id"], c["object"], c["model"]) == ("sim-2", "chat.completion.chunk", "sim")
        for c in chunks
    )
    *token_chunks, finish, usage = chunks
    assert [c["choices"][0]["delta"] for c in token_chunks] == [
        {"content": d.content} if d.content else {"reasoning": d.reasoning} for d in deltas
    ]
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert usage["choices"] == []
    assert result.usage is not None
    assert usage["usage"] == {
        "prompt_tokens": result.usage.prompt_tokens,
        "completion_tokens": result.usage.completion_tokens,
        "total_tokens": result.usage.total_tokens,
        "completion_tokens_details": {"reasoning_tokens": result.usage.reasoning_tokens},
        "cost": 0.0,
    }


async def test_passthrough_of_a_simulated_error_ends_with_the_error_event(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events: list[UpstreamEvent] = []

    async def on_event(event: UpstreamEvent) -> None:
        events.append(event)

    with pytest.raises(UpstreamError):
        await SimulatedUpstream(1000).stream(
            ask("boom", passthrough=True, simulate_error="model overloaded"), on_event
        )

    data = sse_data(events)
    assert orjson.loads(data[-1]) == {"error": {"message": "model overloaded"}}
    assert len(data) - 1 == len([e for e in events if isinstance(e, TextDelta)])


async def test_without_passthrough_no_bytes_are_written(
    autojump_clock: trio.testing.MockClock,
) -> None:
    _, events = await collect(SimulatedUpstream(1000), ask("plain"))
    assert not [e for e in events if isinstance(e, RawBytes)]
