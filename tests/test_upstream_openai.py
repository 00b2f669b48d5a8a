"""OpenAICompatibleUpstream against a real fake server over HTTP on 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from actors.model import Usage
from actors.upstream import (
    ExtrasDelta,
    KeepAlive,
    OpenAICompatibleUpstream,
    RawBytes,
    StreamOpened,
    StreamResult,
    TextDelta,
    Upstream,
    UpstreamError,
    UpstreamEvent,
    UpstreamRequest,
)
from actors.upstream.openai_compatible import _Pacer
from tests.fake_upstream import FakeUpstream, Script

KEY = "sk-or-server-key-123"
USER_KEY = "sk-or-user-key-456"
MESSAGES: list[dict[str, Any]] = [{"role": "user", "content": "Say hello"}]


class Recorder:
    """An on_event callback that keeps every event."""

    def __init__(self) -> None:
        self.events: list[UpstreamEvent] = []

    async def __call__(self, event: UpstreamEvent) -> None:
        self.events.append(event)

    @property
    def deltas(self) -> list[TextDelta]:
        return [e for e in self.events if isinstance(e, TextDelta)]

    @property
    def content(self) -> str:
        return "".join(d.content for d in self.deltas)

    @property
    def extras(self) -> list[ExtrasDelta]:
        return [e for e in self.events if isinstance(e, ExtrasDelta)]

    @property
    def raw(self) -> bytes:
        return b"".join(e.data for e in self.events if isinstance(e, RawBytes))


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream.serve() as server:
        yield server


@pytest.fixture
async def upstream(fake: FakeUpstream) -> AsyncIterator[OpenAICompatibleUpstream]:
    async with OpenAICompatibleUpstream(
        fake.base_url, api_key=KEY, idle_timeout=2.0, backoff_initial=0.01, backoff_max=0.05
    ) as client:
        yield client


def request(model: str, **params: Any) -> UpstreamRequest:
    return UpstreamRequest(model=model, messages=MESSAGES, params=params)


async def run(
    upstream: OpenAICompatibleUpstream, req: UpstreamRequest
) -> tuple[StreamResult, Recorder]:
    recorder = Recorder()
    result = await upstream.stream(req, recorder)
    return result, recorder


async def failure(upstream: OpenAICompatibleUpstream, req: UpstreamRequest) -> UpstreamError:
    with pytest.raises(UpstreamError) as caught:
        await upstream.stream(req, Recorder())
    return caught.value


async def test_text_stream_delivers_every_delta_and_the_result(
    fake: FakeUpstream, upstream: OpenAICompatibleUpstream
) -> None:
    text = "Hello there, this is a streamed answer."
    fake.script("m", Script.text(text, chunk_size=2))
    result, recorder = await run(upstream, request("m"))

    assert recorder.content == text
    assert len(recorder.deltas) == 4
    assert recorder.events[0] == StreamOpened("gen-fake-1")
    assert result.finish_reason == "stop"
    assert result.generation_id == "gen-fake-1"
    assert result.usage is not None
    assert result.usage.cost == pytest.approx(0.00042)


async def test_request_body_and_headers(
    fake: FakeUpstream, upstream: OpenAICompatibleUpstream
) -> None:
    req = UpstreamRequest(
        model="m",
        messages=MESSAGES,
        params={"temperature": 0.5, "model": "ignored", "stream": False, "max_tokens": 9},
    )
    await run(upstream, req)

    [seen] = fake.requests
    assert (seen.method, seen.path) == ("POST", "/v1/chat/completions")
    assert seen.json == {
        "model": "m",
        "messages": MESSAGES,
        "stream": True,
        "temperature": 0.5,
        "max_tokens": 9,
    }
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert seen.headers["accept"] == "text/event-stream"


async def test_extra_headers_are_sent(fake: FakeUpstream) -> None:
    async with OpenAICompatibleUpstream(
        fake.base_url, api_key=KEY, extra_headers={"X-Title": "troupe"}
    ) as client:
        await run(client, request("m"))
    assert fake.requests[0].headers["x-title"] == "troupe"


async def test_keep_alives_are_events_and_never_parsed(
    fake: FakeUpstream, upstream: OpenAICompatibleUpstream
) -> None:
    fake.script(
        "m",
        Script.stream()
        .keepalive()
        .content("Hi")
        .keepalive()
        .keepalive("{not json")
        .content("!")
        .finish()
        .done(),
    )
    result, recorder = await run(upstream, request("m"))

    kinds = [type(e).__name__ for e in recorder.events]
    assert kinds == [
        "StreamOpened",
        "KeepAlive",
        "TextDelta",
        "KeepAlive",
        "KeepAlive",
        "TextDelta",
    ]
    assert recorder.content == "Hi!"
    assert result.finish_reason == "stop"


async def test_reasoning_empty_choices_tool_calls_and_usage(
    fake: FakeUpstream, upstream: OpenAICompatibleUpstream
) -> None:
    tool_call = {"index": 0, "id": "call_1", "function": {"name": "f", "arguments": "{}"}}
    fake.script(
        "m",
        Script.stream()
        .chunk({"id": "c", "choices": [{"index": 0, "delta": {"role": "assistant"}}]})
        .reasoning("thinking")
        .empty_choices()
        .content("Answer")
        .chunk({"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [tool_call]}}]})
        .finish("tool_calls")
        .usage(prompt_tokens=11, completion_tokens=5, reasoning_tokens=3, cost=0.25)
        .done(),
    )
    result, recorder = await run(upstream, request("m"))

    assert recorder.deltas == [TextDelta(reasoning="thinking"), TextDelta(content="Answer")]
    assert recorder.extras == [ExtrasDelta(tool_calls=[tool_call])]
    assert result.finish_reason == "tool_calls"
    assert result.usage == Usage(
        prompt_tokens=11, completion_tokens=5, total_tokens=16, reasoning_tokens=3, cost=0.25
    )


async def test_eof_after_finish_reason_without_done_is_success(
    fake: FakeUpstream, upstream: OpenAICompatibleUpstream
) -> None:
    fake.script("m", Script.text("fine", done=False))
    result, recorder = await run(upstream, request("m"))
    assert recorder.content == "fine"
    assert result.finish_reason == "stop"


async def test_mid_stream_error_object_fails_the_stream(
    fake: FakeUpstream, upstream: OpenAICompatibleUpstream
) -> None:
    fake.script(
        "m", Script.stream().content("partial").error(502, "Provider returned error").done()
    )
    recorder = Recorder()
    with pytest.raises(UpstreamError) as caught:
        await upstream.stream(request("m"), recorder)

    assert caught.value.code == "stream_error"
    assert "Provider returned error" in caught.value.message
    assert recorder.content == "partial"
    assert len(fake.requests) == 1


async def test_finish_reason_error_fails_the_stream(
    fake: FakeUpstream, upstream: OpenAICompatibleUpstream
) -> None:
    fake.script("m", Script.stream().content("so far").finish("error").done())
    error = await failure(upstream, request("m"))
    assert error.code == "finish_error"


async def test_eof_before_done_and_finish_is_truncated_and_not_retried_after_tokens(
    fake: FakeUpstream, upstream: OpenAICompatibleUpstream
) -> None:
    fake.script("m", Script.stream().content("Hello").content(" wor"))
    recorder = Recorder()
    with pytest.raises(UpstreamError) as caught:
        await upstream.stream(request("m"), recorder)

    assert caught.value.code == "truncated"
    assert recorder.content == "Hello wor"
    assert len(fake.requests) == 1


async def test_truncated_before_any_token_is_retried(
    fake: FakeUpstream, upstream: OpenAICompatibleUpstream
) -> None:
    fake.script("m", Script.stream().keepalive(), Script.text("second try"))
    result, recorder = await run(upstream, request("m"))

    assert recorder.content == "second try"
    assert result.generation_id == "gen-fake-2"
    assert len(fake.requests) == 2


async def test_bad_json_chunk_fails_the_stream(
    fake: FakeUpstream, upstream: OpenAICompatibleUpstream
) -> None:
    fake.script("m", Script.stream().raw(b"data: {oops\n\n").done())
    error = await failure(upstream, request("m"))
    assert error.code == "bad_chunk"


async def test_429_with_retry_after_then_success(
    fake: FakeUpstream, upstream: OpenAICompatibleUpstream
) -> None:
    fake.script("m", Script.status(429, retry_after=1), Script.text("after the wait"))
    started = trio.current_time()
    result, recorder = await run(upstream, request("m"))
    waited = trio.current_time() - started

    assert recorder.content == "after the wait"
    assert result.finish_reason == "stop"
    assert len(fake.requests) == 2
    # backoff_max is 0.05 s, so only Retry-After explains a wait of about a second.
    assert 0.95 <= waited < 2.0


async def test_5xx_is_retried_with_backoff(
    fake: FakeUpstream, upstream: OpenAICompatibleUpstream
) -> None:
    fake.script("m", Script.status(500), Script.status(503), Script.text("third time"))
    _, recorder = await run(upstream, request("m"))
    assert recorder.content == "third time"
    assert len(fake.requests) == 3


async def test_retries_stop_at_max_attempts(fake: FakeUpstream) -> None:
    fake.script("m", Script.status(502, message="Bad gateway upstream"))
    async with OpenAICompatibleUpstream(
        fake.base_url, api_key=KEY, max_attempts=2, backoff_initial=0.01
    ) as client:
        error = await failure(client, request("m"))

    assert (error.code, error.status, error.retryable) == ("http_502", 502, True)
    assert error.message == "Bad gateway upstream"
    assert len(fake.requests) == 2


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404])
async def test_client_errors_are_not_retried(
    fake: FakeUpstream, upstream: OpenAICompatibleUpstream, status: int
) -> None:
    fake.script("m", Script.status(status, message="No auth credentials found"))
    error = await failure(upstream, request("m"))

    assert error.code == f"http_{status}"
    assert error.status == status
    assert error.message == "No auth credentials found"
    assert not error.retryable
    assert len(fake.requests) == 1


async def test_idle_timeout_on_a_hang_closes_the_connection(fake: FakeUpstream) -> None:
    fake.script("m", Script.stream().content("a").hang())
    async with OpenAICompatibleUpstream(fake.base_url, api_key=KEY, idle_timeout=0.2) as client:
        recorder = Recorder()
        with pytest.raises(UpstreamError) as caught:
            await client.stream(request("m"), recorder)

    assert caught.value.code == "idle_timeout"
    assert recorder.content == "a"
    with trio.fail_after(2):
        await fake.requests[0].client_disconnected.wait()


async def test_keep_alives_hold_off_the_idle_timeout(fake: FakeUpstream) -> None:
    script = Script.stream()
    for _ in range(4):
        script = script.sleep(0.1).keepalive()
    fake.script("m", script.content("late").finish().done())
    async with OpenAICompatibleUpstream(fake.base_url, api_key=KEY, idle_timeout=0.25) as client:
        _, recorder = await run(client, request("m"))
    assert recorder.content == "late"


async def test_slow_tokens_arrive_in_order(
    fake: FakeUpstream, upstream: OpenAICompatibleUpstream
) -> None:
    fake.script("m", Script.text("one two three four", delay=0.02))
    _, recorder = await run(upstream, request("m"))
    assert [d.content for d in recorder.deltas] == ["one ", "two ", "three ", "four"]


async def test_cancel_closes_the_upstream_connection(
    fake: FakeUpstream, upstream: OpenAICompatibleUpstream
) -> None:
    fake.script("m", Script.stream().content("first").hang())
    recorder = Recorder()
    with trio.move_on_after(0.2) as scope:
        await upstream.stream(request("m"), recorder)

    assert scope.cancelled_caught
    assert recorder.content == "first"
    with trio.fail_after(2):
        await fake.requests[0].client_disconnected.wait()
    assert not fake.requests[0].finished.is_set()


async def test_cancel_while_the_callback_blocks_closes_the_connection(
    fake: FakeUpstream, upstream: OpenAICompatibleUpstream
) -> None:
    fake.script("m", Script.text("a b c d e f", delay=0.01))
    got_token = trio.Event()

    async def slow_consumer(event: UpstreamEvent) -> None:
        if isinstance(event, TextDelta):
            got_token.set()
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:

        async def consume() -> None:
            await upstream.stream(request("m"), slow_consumer)

        nursery.start_soon(consume)
        await got_token.wait()
        nursery.cancel_scope.cancel()

    with trio.fail_after(2):
        await fake.requests[0].client_disconnected.wait()


async def test_connection_errors_are_retried_then_reported() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with OpenAICompatibleUpstream(
        f"http://127.0.0.1:{port}/v1", api_key=KEY, max_attempts=3, backoff_initial=0.01
    ) as client:
        error = await failure(client, request("m"))
    assert error.code == "connection_error"
    assert error.retryable


async def test_request_key_overrides_the_configured_key(
    fake: FakeUpstream, upstream: OpenAICompatibleUpstream
) -> None:
    req = UpstreamRequest(model="m", messages=MESSAGES, api_key=USER_KEY)
    await run(upstream, req)
    assert fake.requests[0].headers["authorization"] == f"Bearer {USER_KEY}"
    assert USER_KEY not in repr(req)


async def test_api_key_never_appears_in_errors(
    fake: FakeUpstream, upstream: OpenAICompatibleUpstream
) -> None:
    fake.script("401", Script.status(401, message=f"Invalid key {USER_KEY}"))
    fake.script("stream", Script.stream().error(500, f"key {USER_KEY} was revoked"))
    req = UpstreamRequest(model="401", messages=MESSAGES, api_key=USER_KEY)
    errors = [
        await failure(upstream, req),
        await failure(upstream, UpstreamRequest("stream", MESSAGES, api_key=USER_KEY)),
    ]
    for error in errors:
        for text in (str(error), repr(error), error.message, repr(error.args)):
            assert USER_KEY not in text
    assert errors[0].message == "Invalid key [redacted]"
    assert errors[0].body == Script.status(401, message="Invalid key [redacted]").error_body
    assert errors[1].body is None


async def test_missing_api_key_fails_before_any_request(fake: FakeUpstream) -> None:
    async with OpenAICompatibleUpstream(fake.base_url) as client:
        error = await failure(client, request("m"))
    assert (error.code, error.retryable) == ("no_api_key", False)
    assert fake.requests == []


async def test_aclose_leaves_a_passed_in_client_open(fake: FakeUpstream) -> None:
    async with httpx.AsyncClient() as http:
        upstream = OpenAICompatibleUpstream(fake.base_url, api_key=KEY, client=http)
        await upstream.aclose()
        assert not http.is_closed
        _, recorder = await run(upstream, request("m"))
    assert recorder.content == "Hello from fake"


async def test_is_an_upstream_and_keeps_the_key_out_of_its_repr() -> None:
    upstream: Upstream = OpenAICompatibleUpstream(api_key=KEY)
    try:
        assert "openrouter.ai/api/v1/chat/completions" in repr(upstream)
        assert KEY not in repr(upstream)
    finally:
        await upstream.aclose()


async def test_paced_readers_wake_at_their_phase_of_the_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = _Pacer(0.1, slots=4)
    assert [pacer.slot() for _ in range(5)] == [0, 1, 2, 3, 0]
    start = (trio.current_time() // 0.1 + 1) * 0.1  # a multiple of the period, ahead
    await trio.sleep_until(start)
    woke: list[tuple[int, float]] = []

    async def reader(slot: int) -> None:
        await pacer.pause(slot)
        woke.append((slot, round(trio.current_time() - start, 9)))

    async with trio.open_nursery() as nursery:
        for slot in (3, 1, 0, 2, 1):
            nursery.start_soon(reader, slot)
    # Each slot wakes at its own phase of the period; two readers of one slot at once.
    assert sorted(woke) == [(0, 0.1), (1, 0.025), (1, 0.025), (2, 0.05), (3, 0.075)]


async def test_pausing_between_reads_never_caps_the_token_rate(fake: FakeUpstream) -> None:
    """Pieces already read come at once: a 100 ms pause does not hold a stream of 100
    tokens a second to ten."""
    text = "".join(f"t{i} " for i in range(60))
    fake.script("m", Script.text(text, chunk_size=1, delay=0.01))
    async with OpenAICompatibleUpstream(
        fake.base_url, api_key=KEY, idle_timeout=5.0, read_interval=0.1
    ) as paced:
        recorder = Recorder()
        started = trio.current_time()
        await paced.stream(UpstreamRequest("m", MESSAGES), recorder)
        took = trio.current_time() - started
    assert recorder.content == text
    assert len(recorder.deltas) == 60
    # Sent over about 0.6 s; at one piece per pause it would take at least 6 s.
    assert took < 3.0


async def test_tool_call_fragments_and_images_are_extras_deltas_in_stream_order(
    fake: FakeUpstream, upstream: OpenAICompatibleUpstream
) -> None:
    url = "data:image/png;base64,iVBORw0KGgo="
    fake.script(
        "m",
        Script.stream()
        .content("Let me look.")
        .tool_call(0, id="call_1", name="lookup")
        .tool_call(0, arguments='{"q": ')
        .tool_call(0, arguments='"x"}')
        .image(url)
        .chunk({"choices": [{"index": 0, "delta": {"tool_calls": ["junk"], "images": 3}}]})
        .finish("tool_calls")
        .done(),
    )
    result, recorder = await run(upstream, request("m"))

    image = {"type": "image_url", "image_url": {"url": url}}
    assert [e for e in recorder.events if not isinstance(e, StreamOpened)] == [
        TextDelta(content="Let me look."),
        ExtrasDelta(
            tool_calls=[
                {"index": 0, "id": "call_1", "type": "function", "function": {"name": "lookup"}}
            ]
        ),
        ExtrasDelta(tool_calls=[{"index": 0, "function": {"arguments": '{"q": '}}]),
        ExtrasDelta(tool_calls=[{"index": 0, "function": {"arguments": '"x"}'}}]),
        ExtrasDelta(images=[image]),
    ]
    assert result.finish_reason == "tool_calls"


async def test_passthrough_hands_on_the_body_byte_for_byte_before_its_events(
    fake: FakeUpstream, upstream: OpenAICompatibleUpstream
) -> None:
    script = (
        Script.stream()
        .keepalive()
        .reasoning("hmm")
        .content("Hi")
        .raw(b'data: {"id": "c", "choices": [{"index": 0, "delta": {"content": "!"}}]}\r\n\r\n')
        .tool_call(0, id="call_1", name="f", arguments="{}")
        .image("data:image/png;base64,AAAA")
        .finish("tool_calls")
        .usage()
        .done()
    )
    fake.script("m", script)
    recorder = Recorder()
    seen: list[tuple[UpstreamEvent, bytes]] = []

    async def on_event(event: UpstreamEvent) -> None:
        await recorder(event)
        seen.append((event, recorder.raw))

    result = await upstream.stream(UpstreamRequest("m", MESSAGES, passthrough=True), on_event)

    assert recorder.raw == script.body
    assert result.finish_reason == "tool_calls"
    # Each parsed event comes after the bytes it was parsed from.
    markers = {
        TextDelta(reasoning="hmm"): b'"hmm"',
        TextDelta(content="Hi"): b'"Hi"',
        TextDelta(content="!"): b'"!"}',
    }
    for event, raw_so_far in seen:
        if isinstance(event, TextDelta):
            assert markers[event] in raw_so_far
        elif isinstance(event, KeepAlive):
            assert b": OPENROUTER PROCESSING" in raw_so_far
        elif isinstance(event, ExtrasDelta):
            assert (b"call_1" if event.tool_calls else b"AAAA") in raw_so_far
    assert [type(e) for e, _ in seen if not isinstance(e, RawBytes)] == [
        StreamOpened,
        KeepAlive,
        TextDelta,
        TextDelta,
        TextDelta,
        ExtrasDelta,
        ExtrasDelta,
    ]


async def test_passthrough_is_never_retried_and_keeps_the_upstream_answer(
    fake: FakeUpstream, upstream: OpenAICompatibleUpstream
) -> None:
    fake.script(
        "m",
        Script.status(429, message=f"slow down, {KEY}", retry_after=0),
        Script.text("a retry would get this"),
    )
    error = await failure(upstream, UpstreamRequest("m", MESSAGES, passthrough=True))

    assert (error.code, error.status, error.retryable) == ("http_429", 429, True)
    assert error.body == Script.status(429, message="slow down, [redacted]").error_body
    assert error.content_type == "application/json"
    assert len(fake.requests) == 1


async def test_passthrough_connection_error_is_reported_without_backoff() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with OpenAICompatibleUpstream(
        f"http://127.0.0.1:{port}/v1", api_key=KEY, max_attempts=3, backoff_initial=30.0
    ) as client:
        with trio.fail_after(5):
            error = await failure(client, UpstreamRequest("m", MESSAGES, passthrough=True))
    assert (error.code, error.status, error.body) == ("connection_error", None, None)
