"""Fixtures of the black-box HTTP API tests: a real server on 127.0.0.1, real sockets.

- ``open_api_server(**overrides)``: ``async with open_api_server(...) as server`` runs
  :func:`actors.http.server.serve` in a nursery on port 0 until the block ends. The
  config is a memory store in ``tmp_path`` on the simulated model at 2000 tokens per
  second, ``drain_timeout=0``, ``watch_window=0``; keyword arguments override
  :class:`ServiceConfig` fields, and ``keepalive=`` sets the SSE comment interval.
- ``api_server``: such a server with the defaults.
- ``fake_upstream``: a running :class:`~tests.fake_upstream.FakeUpstream`;
  ``open_api_server(**fake_settings(fake))`` streams from it.
- :class:`ApiServer`: the base URL, the token authority (None unless the server checks
  HMAC tokens), the stop event, an ``auth(user, workspace)`` header helper and a
  ``client()`` factory.
- :func:`read_sse`: parses a streamed ``text/event-stream`` response into
  :class:`SseEvent` objects and comments, stopping early on a condition.
- :func:`chat_body`, :func:`wait_for_status`, :func:`wait_until`: small helpers.

Reading a stream never breaks out of an httpx iterator (that leaves its async
generators to the garbage collector, which warns under trio); it cancels a
scope instead, so the cancellation unwinds every generator in order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import attrs
import httpx
import orjson
import pytest
import trio

from actors.config import ServiceConfig
from actors.http.auth import TokenAuthority
from actors.http.server import serve
from tests.fake_upstream import FakeUpstream

JWT_SECRET = "http-tests-jwt-secret-0123456789abcdef"
SERVER_API_KEY = "sk-server-test"

_DEFAULTS: dict[str, Any] = {
    "store": "memory",
    "upstream": "simulated",
    "simulated_tokens_per_second": 2000.0,
    "drain_timeout": 0.0,
    # The tests wait for jobs by polling them, which would otherwise count as watching
    # and suppress the notifications many of them check; the tests of that set it.
    "watch_window": 0.0,
    "host": "127.0.0.1",
    "port": 0,
    "jwt_secret": JWT_SECRET,
}


@attrs.define
class ApiServer:
    """A running server. ``finished`` is set (and ``finished_at`` is trio's clock then)
    when :func:`serve` has returned."""

    base_url: str
    tokens: TokenAuthority | None
    stop: trio.Event
    config: ServiceConfig
    finished: trio.Event = attrs.field(factory=trio.Event)
    finished_at: float | None = None

    def token(self, user: str = "alice", workspace: str = "w1", **claims: Any) -> str:
        """A valid token; ``ttl=`` and ``admin=`` pass through to ``mint``."""
        assert self.tokens is not None, "this server does not check HMAC tokens"
        return self.tokens.mint(user, workspace, **claims)

    def auth(self, user: str = "alice", workspace: str = "w1", **claims: Any) -> dict[str, str]:
        """The ``Authorization`` header for ``user`` in ``workspace``."""
        return {"Authorization": f"Bearer {self.token(user, workspace, **claims)}"}

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An :class:`httpx.AsyncClient` on the server, with a 10 s timeout; close it."""
        kwargs.setdefault("timeout", 10.0)
        return httpx.AsyncClient(base_url=self.base_url, **kwargs)


class OpenApiServer(Protocol):
    def __call__(
        self, *, keepalive: float = ..., **overrides: Any
    ) -> AbstractAsyncContextManager[ApiServer]: ...


def make_config(tmp_path: Path, **overrides: Any) -> ServiceConfig:
    """The test config: :data:`_DEFAULTS` with ``overrides`` applied, data in ``tmp_path``."""
    return ServiceConfig(**{"data_dir": tmp_path, **_DEFAULTS, **overrides})


@asynccontextmanager
async def run_api_server(
    config: ServiceConfig, *, keepalive: float = 15.0
) -> AsyncIterator[ApiServer]:
    """Serve ``config`` for the block; on exit set the stop event and wait for serve()."""
    stop = trio.Event()
    ready = trio.Event()
    found: list[tuple[list[str], TokenAuthority | None]] = []

    def on_ready(addresses: list[str], tokens: TokenAuthority | None) -> None:
        found.append((addresses, tokens))
        ready.set()

    async with trio.open_nursery() as nursery:
        holder: list[ApiServer] = []

        async def run() -> None:
            try:
                await serve(config, stop=stop, on_ready=on_ready, keepalive=keepalive)
            finally:
                if holder:
                    holder[0].finished_at = trio.current_time()
                    holder[0].finished.set()
                # serve() failing before it is ready must not leave the fixture waiting.
                ready.set()

        nursery.start_soon(run)
        with trio.fail_after(10):
            await ready.wait()
        assert found, "serve() ended before it was ready"
        addresses, tokens = found[0]
        server = ApiServer(addresses[0], tokens, stop, config)
        holder.append(server)
        try:
            yield server
        finally:
            stop.set()
            # Even when the block failed, let serve() shut down by itself, so that the
            # report shows the failure and not the noise of a cancelled service.
            with trio.move_on_after(5, shield=True):
                await server.finished.wait()


@pytest.fixture
def open_api_server(tmp_path: Path) -> OpenApiServer:
    """``async with open_api_server(**overrides) as server``: see the module docs."""

    def open_it(
        *, keepalive: float = 15.0, **overrides: Any
    ) -> AbstractAsyncContextManager[ApiServer]:
        return run_api_server(make_config(tmp_path, **overrides), keepalive=keepalive)

    return open_it


@pytest.fixture
async def fake_upstream() -> AsyncIterator[FakeUpstream]:
    """A running :class:`FakeUpstream`; point a server at it with :func:`fake_settings`."""
    async with FakeUpstream.serve() as fake:
        yield fake


def fake_settings(fake: FakeUpstream, **overrides: Any) -> dict[str, Any]:
    """Config overrides that make the server stream from ``fake`` with the server key."""
    return {
        "upstream": "openai",
        "upstream_base_url": fake.base_url,
        "upstream_api_key": SERVER_API_KEY,
        **overrides,
    }


@pytest.fixture
async def api_server(open_api_server: OpenApiServer) -> AsyncIterator[ApiServer]:
    """A server with the default test config."""
    async with open_api_server() as server:
        yield server


# -- SSE ----------------------------------------------------------------------------


@attrs.frozen
class SseEvent:
    """One server-sent event; ``event`` is ``"message"`` when the server named none."""

    event: str
    data: str
    id: str | None = None

    def json(self) -> Any:
        return orjson.loads(self.data)


@attrs.define
class SseRead:
    """What :func:`read_sse` saw: the events, the comment lines (without the ``:``),
    and whether the server ended the stream (False when the reader stopped it)."""

    events: list[SseEvent] = attrs.field(factory=list)
    comments: list[str] = attrs.field(factory=list)
    ended: bool = False

    def named(self, name: str) -> list[SseEvent]:
        return [event for event in self.events if event.event == name]


async def read_sse(
    response: httpx.Response,
    *,
    until: Callable[[SseEvent], bool] | None = None,
    until_comment: bool = False,
    timeout: float = 10.0,
) -> SseRead:
    """Parse ``response`` (from ``client.stream(...)``) as SSE until the server ends it,
    ``until(event)`` is true for an event just read, or (``until_comment``) a comment
    arrives. Raises :class:`trio.TooSlowError` after ``timeout`` seconds.
    """
    seen = SseRead()
    name = "message"
    event_id: str | None = None
    data: list[str] = []
    stopping = False
    with trio.fail_after(timeout), trio.CancelScope() as scope:
        async for line in response.aiter_lines():
            if stopping:
                continue  # lines already buffered before the cancellation lands
            if line == "":
                if data:
                    event = SseEvent(name, "\n".join(data), event_id)
                    seen.events.append(event)
                    if until is not None and until(event):
                        stopping = True
                        scope.cancel()
                name, event_id, data = "message", None, []
            elif line.startswith(":"):
                seen.comments.append(line[1:].strip())
                if until_comment:
                    stopping = True
                    scope.cancel()
            else:
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "event":
                    name = value
                elif field == "data":
                    data.append(value)
                elif field == "id":
                    event_id = value
        seen.ended = True
    return seen


# -- requests ---------------------------------------------------------------------


def chat_body(
    text: str = "Hello there",
    *,
    model: str = "test-model",
    thread_id: str = "thread-1",
    message_id: str = "message-1",
    **extra: Any,
) -> dict[str, Any]:
    """A valid ``POST /v1/jobs`` body asking ``text``; ``extra`` adds top-level fields."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "thread_id": thread_id,
        "message_id": message_id,
        **extra,
    }


async def wait_for_status(
    client: httpx.AsyncClient,
    job_id: str,
    headers: dict[str, str],
    statuses: tuple[str, ...] = ("complete", "error", "aborted"),
    *,
    timeout: float = 5.0,
) -> dict[str, Any]:
    """Poll ``GET /v1/jobs/{id}`` until its status is one of ``statuses``; the job JSON."""
    with trio.fail_after(timeout):
        while True:
            response = await client.get(f"/v1/jobs/{job_id}", headers=headers)
            assert response.status_code == 200, response.text
            job: dict[str, Any] = response.json()
            if job["status"] in statuses:
                return job
            await trio.sleep(0.01)


async def wait_until(
    check: Callable[[], Any], *, timeout: float = 5.0, interval: float = 0.01
) -> Any:
    """Await ``check()`` until it returns something truthy; that value."""
    with trio.fail_after(timeout):
        while True:
            value = await check()
            if value:
                return value
            await trio.sleep(interval)
