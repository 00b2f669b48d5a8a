"""A scriptable fake of an OpenAI-compatible streaming chat completions server.

It is a real HTTP server (hypercorn, trio worker) on 127.0.0.1 with a raw ASGI app, so
clients are tested over real sockets, real chunked transfer and real disconnects::

    async with FakeUpstream.serve() as fake:
        fake.script("m1", Script.status(429, retry_after=1), Script.text("Hello world"))
        upstream = OpenAICompatibleUpstream(fake.base_url, api_key="sk-test")
        ...
        fake.requests[0].json["model"]           # every request is recorded
        await fake.requests[0].client_disconnected.wait()

Scripts are chosen by the ``model`` field of the request body. ``fake.script(model, *s)``
gives one script per attempt: request n for that model gets ``s[n]``, and the last script
repeats for later requests. Unscripted models get ``Script.text("Hello from fake")``.

A Script is either a status answer (``Script.status(...)``: a non-2xx JSON error body,
optional ``Retry-After``) or a 200 SSE stream built from steps. Build streams with the
constructors and chainable methods, each returning a new Script::

    Script.text("Hello world", chunk_size=1, delay=0.001)   # tokens, finish, usage, [DONE]
    Script.stream().keepalive().reasoning("hmm").content("Hi").finish("stop").usage().done()
    Script.stream().content("partial")                      # truncated: EOF, no finish/[DONE]
    Script.stream().content("a").error(502, "provider down")  # mid-stream error object
    Script.stream().content("a").hang()                      # then sleeps until disconnect
    Script.stream().content("a").sleep(0.5).content("b")     # slow tokens
    Script.stream().tool_call(0, id="c1", name="f", arguments='{"a"').tool_call(0, arguments="}")
    Script.stream().image("data:image/png;base64,AAAA")      # OpenRouter image output

Successful (2xx) answers carry ``X-Generation-Id: gen-fake-<request number>``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import orjson
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

__all__ = ["FakeUpstream", "RecordedRequest", "Script"]

_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@attrs.frozen
class _Write:
    """Bytes written to the response body as they are."""

    data: bytes


@attrs.frozen
class _Sleep:
    seconds: float


_Step = _Write | _Sleep


def _event(payload: object) -> _Write:
    return _Write(b"data: " + orjson.dumps(payload) + b"\n\n")


def _chunk(delta: dict[str, Any] | None = None, finish_reason: str | None = None) -> _Write:
    return _event(
        {
            "id": "chunk-fake",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason}],
        }
    )


@attrs.frozen
class Script:
    """What the fake answers to one request. Immutable; builder methods return copies."""

    status_code: int = 200
    error_body: bytes = b""
    retry_after: str | None = None
    steps: tuple[_Step, ...] = ()

    @classmethod
    def stream(cls) -> Script:
        """An empty 200 SSE stream to build on; as is, it ends at once (truncated)."""
        return cls()

    @classmethod
    def text(
        cls,
        text: str,
        *,
        chunk_size: int = 1,
        delay: float = 0.0,
        finish_reason: str = "stop",
        usage: bool = True,
        done: bool = True,
    ) -> Script:
        """Stream ``text`` as content deltas of ``chunk_size`` words (trailing spaces kept),
        ``delay`` seconds apart, then the finish chunk, a usage chunk and ``[DONE]``."""
        words = text.split(" ")
        tokens = [word + " " for word in words[:-1]] + [words[-1]]
        script = cls()
        for start in range(0, len(tokens), chunk_size):
            if delay and start:
                script = script.sleep(delay)
            script = script.content("".join(tokens[start : start + chunk_size]))
        script = script.finish(finish_reason)
        if usage:
            script = script.usage(completion_tokens=len(tokens))
        return script.done() if done else script

    @classmethod
    def status(
        cls,
        status: int,
        *,
        message: str | None = None,
        code: object = None,
        retry_after: float | str | None = None,
    ) -> Script:
        """A non-2xx answer with body ``{"error": {"code", "message"}}``."""
        body = {
            "error": {
                "code": status if code is None else code,
                "message": message or f"fake upstream answered {status}",
            }
        }
        return cls(
            status_code=status,
            error_body=orjson.dumps(body),
            retry_after=None if retry_after is None else str(retry_after),
        )

    @property
    def body(self) -> bytes:
        """Every byte a 200 stream of this script writes, in order."""
        return b"".join(step.data for step in self.steps if isinstance(step, _Write))

    def _then(self, step: _Step) -> Script:
        return attrs.evolve(self, steps=(*self.steps, step))

    def content(self, text: str) -> Script:
        """A chunk whose ``choices[0].delta.content`` is ``text``."""
        return self._then(_chunk({"content": text}))

    def reasoning(self, text: str) -> Script:
        """A chunk whose ``choices[0].delta.reasoning`` is ``text``."""
        return self._then(_chunk({"reasoning": text, "content": ""}))

    def tool_call(
        self,
        index: int,
        *,
        id: str | None = None,
        name: str | None = None,
        arguments: str | None = None,
    ) -> Script:
        """A chunk carrying one ``choices[0].delta.tool_calls`` fragment, as OpenAI streams
        them: ``index`` always, ``id``, ``type`` and ``function.name`` on the first one,
        then ``function.arguments`` pieces."""
        fragment: dict[str, Any] = {"index": index}
        if id is not None:
            fragment["id"] = id
            fragment["type"] = "function"
        function = {
            key: value for key, value in (("name", name), ("arguments", arguments)) if value
        }
        if function:
            fragment["function"] = function
        return self._then(_chunk({"tool_calls": [fragment]}))

    def image(self, url: str) -> Script:
        """A chunk whose ``choices[0].delta.images`` holds one image, as OpenRouter sends it."""
        image = {"type": "image_url", "image_url": {"url": url}}
        return self._then(_chunk({"content": "", "images": [image]}))

    def chunk(self, payload: object) -> Script:
        """A ``data:`` event carrying ``payload`` as JSON, whatever it is."""
        return self._then(_event(payload))

    def empty_choices(self) -> Script:
        """A chunk with ``"choices": []``."""
        return self._then(_event({"id": "chunk-fake", "choices": []}))

    def keepalive(self, text: str = "OPENROUTER PROCESSING") -> Script:
        """An SSE comment line, ``: <text>``."""
        return self._then(_Write(b": " + text.encode() + b"\n\n"))

    def finish(self, reason: str = "stop") -> Script:
        """A chunk with an empty delta and ``finish_reason``."""
        return self._then(_chunk({}, finish_reason=reason))

    def usage(
        self,
        *,
        prompt_tokens: int = 7,
        completion_tokens: int = 2,
        reasoning_tokens: int = 0,
        cost: float = 0.00042,
    ) -> Script:
        """The usage chunk: empty ``choices`` and a ``usage`` object with ``cost``."""
        return self._then(
            _event(
                {
                    "id": "chunk-fake",
                    "choices": [],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                        "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
                        "cost": cost,
                    },
                }
            )
        )

    def error(self, code: object = 502, message: str = "provider error") -> Script:
        """A mid-stream top-level ``{"error": {"code", "message"}}`` event (status stays 200)."""
        return self._then(_event({"error": {"code": code, "message": message}}))

    def done(self) -> Script:
        """``data: [DONE]``."""
        return self._then(_Write(b"data: [DONE]\n\n"))

    def raw(self, data: bytes) -> Script:
        """Bytes written to the body exactly as given."""
        return self._then(_Write(data))

    def sleep(self, seconds: float) -> Script:
        """Pause before the next step."""
        return self._then(_Sleep(seconds))

    def hang(self) -> Script:
        """Stop sending but keep the response open until the client goes away."""
        return self._then(_Sleep(math.inf))


@attrs.define
class RecordedRequest:
    """One request the fake received.

    ``headers`` have lower-case names. ``client_disconnected`` is set when the client
    closed the connection before the script finished; ``finished`` when the script ran
    to its end.
    """

    method: str
    path: str
    headers: dict[str, str]
    json: Any
    client_disconnected: trio.Event = attrs.field(factory=trio.Event)
    finished: trio.Event = attrs.field(factory=trio.Event)


class FakeUpstream:
    """The fake server; create it with :meth:`serve`."""

    def __init__(self) -> None:
        self.base_url = ""
        self.requests: list[RecordedRequest] = []
        self._scripts: dict[str, tuple[Script, ...]] = {}
        self._served: dict[str, int] = {}

    @classmethod
    @asynccontextmanager
    async def serve(cls) -> AsyncIterator[FakeUpstream]:
        """Run the server on 127.0.0.1 at a free port for the duration of the block."""
        fake = cls()
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        config.loglevel = "WARNING"
        config.graceful_timeout = 0.1
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(serve, fake._app, config)
            fake.base_url = binds[0] + "/v1"
            try:
                yield fake
            finally:
                # Hanging scripts would hold a graceful shutdown; tests want none.
                nursery.cancel_scope.cancel()

    def script(self, model: str, *scripts: Script) -> None:
        """Answer requests for ``model`` with ``scripts[n]`` for the n-th such request
        (counting from now); the last script repeats."""
        if not scripts:
            raise ValueError("give at least one script")
        self._scripts[model] = scripts
        self._served[model] = 0

    def _next_script(self, model: str) -> Script:
        scripts = self._scripts.get(model)
        if scripts is None:
            return Script.text("Hello from fake")
        index = self._served[model]
        self._served[model] = index + 1
        return scripts[min(index, len(scripts) - 1)]

    async def _app(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = None
        record = RecordedRequest(
            method=scope["method"],
            path=scope["path"],
            headers={k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
            json=parsed,
        )
        self.requests.append(record)
        model = parsed.get("model", "") if isinstance(parsed, dict) else ""
        script = self._next_script(str(model))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_disconnect, receive, record, nursery.cancel_scope)
            await self._play(script, len(self.requests), send)
            record.finished.set()
            nursery.cancel_scope.cancel()

    @staticmethod
    async def _watch_disconnect(
        receive: _Receive, record: RecordedRequest, script_scope: trio.CancelScope
    ) -> None:
        # Hypercorn silently drops sends after a disconnect, so only receive() tells.
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not record.finished.is_set():
                    record.client_disconnected.set()
                script_scope.cancel()
                return

    @staticmethod
    async def _play(script: Script, number: int, send: _Send) -> None:
        if script.status_code != 200:
            headers = [(b"content-type", b"application/json")]
            if script.retry_after is not None:
                headers.append((b"retry-after", script.retry_after.encode()))
            await send(
                {"type": "http.response.start", "status": script.status_code, "headers": headers}
            )
            await send({"type": "http.response.body", "body": script.error_body})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                    (b"x-generation-id", f"gen-fake-{number}".encode()),
                ],
            }
        )
        for step in script.steps:
            if isinstance(step, _Sleep):
                await trio.sleep(step.seconds)
            else:
                await send({"type": "http.response.body", "body": step.data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
