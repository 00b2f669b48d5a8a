"""The streaming client for OpenAI-compatible chat completion APIs (OpenRouter by default)."""

from __future__ import annotations

import contextlib
import email.utils
import itertools
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import httpx
import orjson
import stamina
import structlog
import trio

from actors.model import Usage
from actors.upstream.errors import UpstreamError, is_retryable_status
from actors.upstream.events import (
    ExtrasDelta,
    KeepAlive,
    RawBytes,
    StreamOpened,
    StreamResult,
    TextDelta,
    UpstreamEvent,
    UpstreamRequest,
)
from actors.upstream.sse import SSEComment, SSEDecoder

__all__ = ["DEFAULT_BASE_URL", "MAX_RETRY_AFTER", "OpenAICompatibleUpstream"]

DEFAULT_BASE_URL = "https://openrouter.ai/api/v1"

#: The longest ``Retry-After`` honoured, in seconds; a larger value is cut to this.
MAX_RETRY_AFTER = 60.0

_log = structlog.get_logger(__name__)

# What the socket reader hands the stream parser: a piece of the body, or the transport
# failure that ended it. End of body is the closing of the channel.


class OpenAICompatibleUpstream:
    """Streams chat completions from ``{base_url}/chat/completions`` over SSE.

    ``api_key`` is used unless a request carries its own. ``connect_timeout`` bounds
    connecting; the response's status line and headers must then come within
    ``idle_timeout`` (a head that never finishes fails ``idle_timeout`` at the two
    together), and so must each SSE event after them (keep-alive comments count).
    A redirect (3xx) is never followed: it fails ``http_<status>`` naming its
    ``Location``, and is not retried, so the request and its key never go to another
    address, nor over plain HTTP. An event that grows past ``max_event_chars`` before
    it ends (one huge chunk, or bytes with no line breaks) fails ``event_too_large``,
    not retried, so the decoder holds little more than that. Failures that are
    transient (HTTP 408, 429, 5xx, transport errors, a stream that ended before any
    output) are retried up to ``max_attempts`` attempts in total, but only while no
    output has been delivered and never for a pass-through request: exponential
    backoff from ``backoff_initial`` capped at ``backoff_max``, or the ``Retry-After``
    the upstream asked for (capped at :data:`MAX_RETRY_AFTER`).
    ``extra_headers`` (such as OpenRouter's ``HTTP-Referer`` / ``X-Title``) go with every
    request. A ``client`` passed in is used as is and left open by :meth:`aclose`.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        *,
        idle_timeout: float = 60.0,
        connect_timeout: float = 10.0,
        read_interval: float = 0.0,
        max_attempts: int = 4,
        max_event_chars: int = 10_000_000,
        backoff_initial: float = 0.5,
        backoff_max: float = 8.0,
        extra_headers: Mapping[str, str] | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if max_event_chars < 1:
            raise ValueError("max_event_chars must be at least 1")
        if idle_timeout <= 0 or connect_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if not 0 <= read_interval < idle_timeout:
            raise ValueError("read_interval must be at least 0 and below the idle timeout")
        self._pacer = _Pacer(read_interval) if read_interval else None
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._api_key = api_key
        self._idle_timeout = idle_timeout
        self._connect_timeout = connect_timeout
        self._max_attempts = max_attempts
        self._max_event_chars = max_event_chars
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._extra_headers = dict(extra_headers or {})
        self._owns_client = client is None
        # Reads are unbounded for httpx: the idle timeout is ours, on trio's clock.
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=connect_timeout, read=None, write=connect_timeout, pool=connect_timeout
            ),
            follow_redirects=False,
            # httpx's default pool of 100 connections would quietly cap the
            # jobs that stream at once; the service's own caps bound them.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=100),
        )

    def __repr__(self) -> str:
        return f"OpenAICompatibleUpstream(url={self._url!r})"

    async def __aenter__(self) -> OpenAICompatibleUpstream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if this upstream created it."""
        if self._owns_client:
            await self._client.aclose()

    async def stream(
        self,
        request: UpstreamRequest,
        on_event: Callable[[UpstreamEvent], Awaitable[None]],
    ) -> StreamResult:
        """Run one streaming chat completion, calling ``on_event`` for each event in order.

        Events: StreamOpened once per attempt that got a 2xx answer, then TextDelta,
        ExtrasDelta and KeepAlive in stream order; for a pass-through request, each piece
        of the body comes first as RawBytes, then the events parsed from it. Returns the
        StreamResult once ``[DONE]`` arrived, or the body ended after a ``finish_reason``.
        Raises UpstreamError for every other ending (see its codes), after the retries
        described on the class; ``no_api_key`` is raised before any network traffic.
        Exceptions from ``on_event`` propagate unchanged and are never retried. Blocks
        for the whole generation and the backoff between attempts; cancelling it closes
        the HTTP response at once, which stops the upstream's generation.
        """
        api_key = request.api_key or self._api_key
        if not api_key:
            raise UpstreamError("no_api_key", "no API key configured for the upstream")
        progress = _Progress()
        if request.passthrough:
            # The caller hands the upstream's answer on as it is: a failure is that answer.
            return await self._attempt(request, api_key, on_event, progress)

        def retry_delay(exc: BaseException) -> bool | float:
            # Once text reached the caller, a new attempt would repeat it: never retry then.
            if not isinstance(exc, UpstreamError) or not exc.retryable or progress.delivered:
                return False
            _log.info(
                "upstream.retrying",
                model=request.model,
                code=exc.code,
                status=exc.status,
                retry_after=exc.retry_after,
            )
            if exc.retry_after is not None:
                return min(exc.retry_after, MAX_RETRY_AFTER)
            return True

        async for attempt in stamina.retry_context(
            on=retry_delay,
            attempts=self._max_attempts,
            timeout=None,
            wait_initial=self._backoff_initial,
            wait_max=self._backoff_max,
            # A little jitter keeps many jobs hit by the same outage from retrying in step.
            wait_jitter=self._backoff_initial / 4,
        ):
            with attempt:
                return await self._attempt(request, api_key, on_event, progress)
        raise AssertionError("the retry loop either returns or raises")

    async def _attempt(
        self,
        request: UpstreamRequest,
        api_key: str,
        on_event: Callable[[UpstreamEvent], Awaitable[None]],
        progress: _Progress,
    ) -> StreamResult:
        body = {**request.params, "model": request.model, "messages": request.messages}
        body["stream"] = True
        headers = {
            **self._extra_headers,
            "Authorization": f"Bearer {api_key}",
            "Accept": "text/event-stream",
            "Content-Type": "application/json",
        }
        _log.debug("upstream.request", model=request.model, url=self._url)
        try:
            with trio.CancelScope() as headers_wait:
                headers_wait.deadline = (
                    trio.current_time() + self._connect_timeout + self._idle_timeout
                )
                async with self._client.stream(
                    "POST", self._url, content=orjson.dumps(body), headers=headers
                ) as response:
                    if not 200 <= response.status_code <= 299:
                        headers_wait.deadline = trio.current_time() + self._idle_timeout
                        raw = await response.aread()
                        raise _http_error(response, raw, api_key)
                    headers_wait.deadline = math.inf
                    generation_id = response.headers.get("x-generation-id")
                    await on_event(StreamOpened(generation_id))
                    return await self._read_events(
                        response, generation_id, api_key, on_event, progress, request.passthrough
                    )
        except httpx.HTTPError as exc:
            raise _connection_error(exc, api_key) from None
        raise UpstreamError(
            "idle_timeout",
            "no complete response head from the upstream within "
            f"{self._connect_timeout + self._idle_timeout:g} s",
            retryable=False,
        )

    async def _read_events(
        self,
        response: httpx.Response,
        generation_id: str | None,
        api_key: str,
        on_event: Callable[[UpstreamEvent], Awaitable[None]],
        progress: _Progress,
        passthrough: bool,
    ) -> StreamResult:
        """Read, parse and hand on the body's events, in this one task.

        A slow ``on_event`` holds back the reads: nothing is buffered beyond
        what httpx holds. With ``read_interval``, a piece that had to be waited
        for is followed by a pause until this stream's next tick of that period
        (see :class:`_Pacer`): what the upstream sends meanwhile waits in the
        socket buffer and comes in one read, so a token costs a fraction of a socket
        read. Pieces already read (httpx hands one HTTP chunk at a time) follow
        at once, so the pause never caps the rate. With ``passthrough``, each
        piece goes to ``on_event`` as RawBytes before its events; the time a
        slow ``on_event`` takes with it does not count as the upstream's silence.
        """
        parser = _ChunkParser(generation_id, api_key)
        decoder = SSEDecoder()
        pieces = response.aiter_bytes()
        pacer = self._pacer
        waited_for = 0.0 if pacer is None else pacer.interval / 20
        slot = 0 if pacer is None else pacer.slot()
        try:
            # One scope for the whole body, its deadline pushed on by every
            # event: a scope per read would cost more than the read.
            with trio.CancelScope(deadline=trio.current_time() + self._idle_timeout) as idle:
                while True:
                    asked_at = trio.current_time()
                    try:
                        piece: bytes | None = await pieces.__anext__()
                    except StopAsyncIteration:
                        piece = None
                    except httpx.HTTPError as exc:
                        raise _connection_error(exc, parser.api_key) from None
                    if passthrough and piece:
                        await on_event(RawBytes(piece))
                        idle.deadline = trio.current_time() + self._idle_timeout
                    sse_items = decoder.finish() if piece is None else decoder.feed(piece)
                    if sse_items:
                        idle.deadline = trio.current_time() + self._idle_timeout
                    for sse in sse_items:
                        if isinstance(sse, SSEComment):
                            await on_event(KeepAlive())
                            continue
                        if sse.data.strip() == "[DONE]":
                            return parser.result()
                        for delta in parser.parse(sse.data):
                            progress.delivered = True
                            await on_event(delta)
                        # Checked after the chunk's own text went out, so it is not lost.
                        if parser.finish_reason == "error":
                            raise UpstreamError(
                                "finish_error", "the upstream finished with finish_reason 'error'"
                            )
                    # After the piece's whole events went out, so that none is lost.
                    if decoder.pending > self._max_event_chars:
                        raise UpstreamError(
                            "event_too_large",
                            f"the upstream sent more than {self._max_event_chars:,} characters"
                            " without ending an event",
                        )
                    if piece is None:
                        if parser.finish_reason is not None:
                            return parser.result()
                        raise UpstreamError(
                            "truncated",
                            "the upstream stream ended before [DONE] and before a finish_reason",
                            # Nothing was shown yet, so a fresh attempt is as good as the first.
                            retryable=not progress.delivered,
                        )
                    if pacer is not None and trio.current_time() - asked_at > waited_for:
                        await pacer.pause(slot)
            raise UpstreamError(
                "idle_timeout",
                f"no event from the upstream for {self._idle_timeout:g} s",
                retryable=False,
            )
        finally:
            await _unwind(pieces)


class _Progress:
    """What one ``stream()`` call has delivered so far, shared across its attempts."""

    def __init__(self) -> None:
        self.delivered = False


class _ChunkParser:
    """Interprets the JSON chunks of one attempt and remembers how the stream ends."""

    def __init__(self, generation_id: str | None, api_key: str) -> None:
        self.generation_id = generation_id
        self.api_key = api_key
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    def result(self) -> StreamResult:
        return StreamResult(self.finish_reason, self.usage, self.generation_id)

    def _quoted(self, data: str) -> str:
        """The start of ``data`` for an error message, the key redacted first: cut
        before, a key would survive the redaction in part."""
        return repr(_redact(data[: 200 + len(self.api_key)], self.api_key)[:200])

    def parse(self, data: str) -> list[TextDelta | ExtrasDelta]:
        """Return the deltas one ``data`` payload carries; raise UpstreamError on failure."""
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError(
                "bad_chunk",
                f"the upstream sent a data line that is not JSON: {self._quoted(data)}",
            ) from None
        if not isinstance(chunk, dict):
            raise UpstreamError(
                "bad_chunk", f"the upstream sent a non-object chunk: {self._quoted(data)}"
            )
        if self.generation_id is None and isinstance(chunk.get("id"), str):
            self.generation_id = chunk["id"]
        error = chunk.get("error")
        if error:
            raise _stream_error(error, self.api_key)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = _parse_usage(usage)
        deltas: list[TextDelta | ExtrasDelta] = []
        choices = chunk.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            choice = choices[0]
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = _text(delta.get("content"))
                # "reasoning" is OpenRouter's name; some servers say "reasoning_content".
                reasoning = _text(delta.get("reasoning")) or _text(delta.get("reasoning_content"))
                if content or reasoning:
                    deltas.append(TextDelta(content=content, reasoning=reasoning))
                tool_calls = delta.get("tool_calls")
                images = delta.get("images")
                if tool_calls or images:
                    extras = ExtrasDelta(_objects(tool_calls), _objects(images))
                    if extras.tool_calls or extras.images:
                        deltas.append(extras)
            finish_reason = choice.get("finish_reason")
            if isinstance(finish_reason, str) and finish_reason:
                self.finish_reason = finish_reason
        return deltas


class _Pacer:
    """Pauses readers until their next tick: a multiple of ``interval`` on trio's
    clock, shifted by their slot's share of it.

    Readers are dealt round the ``slots`` in turn, so their wake-ups, and the
    work each brings, spread over the interval instead of coming at once. One
    sleep a tick serves every reader of a slot: the first to pause sleeps, the
    others wait on its event (a sleep costs a cancel scope and a deadline; an
    event wait costs neither). If that first reader is cancelled, the others
    wake early, which only shortens their pause.
    """

    def __init__(self, interval: float, slots: int = 4) -> None:
        self.interval = interval
        self._offsets = [interval * i / slots for i in range(slots)]
        self._due = [-math.inf] * slots
        self._woken = [trio.Event() for _ in range(slots)]
        self._dealt = itertools.count()

    def slot(self) -> int:
        """The slot for a new reader."""
        return next(self._dealt) % len(self._offsets)

    async def pause(self, slot: int) -> None:
        """Return at the slot's next tick; a checkpoint."""
        offset = self._offsets[slot]
        due = ((trio.current_time() - offset) // self.interval + 1) * self.interval + offset
        if due == self._due[slot]:
            await self._woken[slot].wait()
            return
        self._due[slot] = due
        woken = self._woken[slot] = trio.Event()
        try:
            await trio.sleep_until(due)
        finally:
            woken.set()


async def _unwind(pieces: AsyncIterator[bytes]) -> None:
    """End httpx's body iterators from the inside, however the reading stopped.

    Left suspended (after a return, an exception, or a cancellation outside
    them), httpx's and httpcore's nested async generators would be collected
    unfinished: a ResourceWarning under trio, as after a ``break``. Under a
    cancelled scope, the next read that waits for the socket raises Cancelled
    inside the innermost of them, which ends each one on its way out; reads
    that httpcore can answer from its buffer come first.
    """
    with trio.CancelScope() as scope:
        scope.cancel()
        with contextlib.suppress(trio.Cancelled, StopAsyncIteration, httpx.HTTPError):
            while True:
                await pieces.__anext__()


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _objects(value: object) -> list[dict[str, Any]]:
    """The JSON objects of a list; nothing for anything else."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _parse_usage(usage: dict[str, Any]) -> Usage:
    details = usage.get("completion_tokens_details")
    reasoning_tokens = _int(details.get("reasoning_tokens")) if isinstance(details, dict) else None
    cost = usage.get("cost")
    return Usage(
        prompt_tokens=_int(usage.get("prompt_tokens")),
        completion_tokens=_int(usage.get("completion_tokens")),
        total_tokens=_int(usage.get("total_tokens")),
        reasoning_tokens=reasoning_tokens,
        cost=float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None,
    )


def _redact(text: str, api_key: str) -> str:
    return text.replace(api_key, "[redacted]") if api_key else text


def _error_message(error: object) -> tuple[object, str | None]:
    """Return the ``code`` and ``message`` of an ``{"code", "message"}`` error object."""
    if isinstance(error, dict):
        message = error.get("message")
        return error.get("code"), message if isinstance(message, str) else None
    if isinstance(error, str):
        return None, error
    return None, None


def _stream_error(error: object, api_key: str) -> UpstreamError:
    code, message = _error_message(error)
    # Providers put an HTTP-like status in "code"; a transient one before any output
    # is worth another attempt.
    status = code if isinstance(code, int) and not isinstance(code, bool) else None
    text = message or "the upstream reported an error mid-stream"
    if code is not None:
        text = f"{text} (code {code})"
    return UpstreamError(
        "stream_error",
        _redact(text, api_key),
        status=None,
        retryable=status is not None and is_retryable_status(status),
    )


def _http_error(response: httpx.Response, raw: bytes, api_key: str) -> UpstreamError:
    status = response.status_code
    raw = raw.replace(api_key.encode(), b"[redacted]")
    message: str | None = None
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        _, message = _error_message(parsed.get("error"))
    if 300 <= status <= 399:
        # Following it would send the request, key included, wherever the Location
        # says, maybe over plain HTTP: the operator fixes the address instead.
        location = response.headers.get("location", "")[:300]
        message = (
            f"the upstream redirected to {location!r}; redirects are not followed,"
            " so set the upstream address to the final one"
        )
    elif message is None:
        message = raw[:300].decode("utf-8", errors="replace").strip() or response.reason_phrase
    retryable = is_retryable_status(status)
    return UpstreamError(
        f"http_{status}",
        _redact(message or f"HTTP {status}", api_key),
        status=status,
        retryable=retryable,
        retry_after=_retry_after(response.headers.get("retry-after")) if retryable else None,
        body=raw,
        content_type=response.headers.get("content-type"),
    )


def _retry_after(value: str | None) -> float | None:
    """Parse ``Retry-After`` as seconds (integer or decimal) or an HTTP date."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _connection_error(exc: httpx.HTTPError, api_key: str) -> UpstreamError:
    detail = str(exc) or type(exc).__name__
    return UpstreamError(
        "connection_error",
        _redact(f"{type(exc).__name__}: {detail}", api_key),
        retryable=isinstance(exc, httpx.TransportError),
    )
