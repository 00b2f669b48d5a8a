"""A Python client of the troupe HTTP API, for trio programs.

:class:`TroupeClient` wraps an :class:`httpx.AsyncClient`. Every method is one
request and returns the decoded JSON the API answers, or raises
:class:`TroupeError` built from the API's ``{"error": {"code", "message"}}``
shape (:class:`TroupeConnectionError` when the server cannot be reached).

:meth:`TroupeClient.follow` and :meth:`TroupeClient.follow_notifications`
return event streams that survive dropped connections: they reconnect with
backoff, resume a job after the last delta they saw (``Last-Event-ID``), and
give up with :class:`TroupeConnectionError` after too many failures in a row.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import attrs
import httpx
import httpx_sse
import orjson
import trio

__all__ = [
    "JobEventStream",
    "NotificationStream",
    "ServerEvent",
    "TroupeClient",
    "TroupeConnectionError",
    "TroupeError",
]

Json = dict[str, Any]
RetryCallback = Callable[[int, BaseException], None]
"""Called as ``on_retry(attempt, cause)`` before each reconnection's backoff sleep."""

USER_KEY_HEADER = "X-Upstream-Api-Key"


class TroupeError(Exception):
    """The API refused a request: ``status`` (HTTP), ``code`` and ``message`` from the
    error body. ``str()`` is ``"<code>: <message>"``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class TroupeConnectionError(TroupeError):
    """The server could not be reached, or an event stream could not be resumed.

    ``status`` is 0 and ``code`` is ``"connection_error"``; the cause is chained.
    """

    def __init__(self, message: str) -> None:
        super().__init__(0, "connection_error", message)


@attrs.frozen
class ServerEvent:
    """One event of an event stream.

    ``event`` is the event's name: ``"snapshot"`` (``data`` is the job JSON),
    ``"delta"`` (``{"seq", "content", "reasoning"}``), ``"status"``
    (``{"status", "error", "finish_reason", "usage", "last_seq"}``) or
    ``"notification"`` (the notification JSON). ``data`` is the decoded JSON.
    ``id`` is the SSE id the server gave the event: the delta's seq as text for
    deltas, ``None`` for the others.
    """

    event: str
    data: Any
    id: str | None = None


@attrs.frozen
class _RetryPolicy:
    retries: int
    backoff: float
    max_backoff: float

    def delay(self, attempt: int) -> float:
        # Jitter spreads the reconnections of many clients after a server restart.
        base: float = min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1))
        return base * random.uniform(0.5, 1.0)


class TroupeClient:
    """A client of one troupe server, acting as the user of ``token``.

    ``timeout`` bounds each request (and connecting an event stream);
    ``stream_idle_timeout`` is the longest silence accepted on an open event
    stream (the server sends keep-alive comments well within it). Event
    streams retry up to ``retries`` consecutive failures, sleeping
    ``backoff * 2**n`` seconds (at most ``max_backoff``, with jitter) between
    attempts. ``transport`` replaces httpx's network transport (tests).

    Use it as ``async with TroupeClient(...) as client`` or call :meth:`aclose`.
    The token is sent as a Bearer header and never appears in a repr or an error.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        stream_idle_timeout: float = 60.0,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._stream_timeout = httpx.Timeout(timeout, read=stream_idle_timeout)
        self._policy = _RetryPolicy(retries, backoff, max_backoff)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}", "User-Agent": "troupe-client"},
            timeout=timeout,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"TroupeClient({self.base_url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool. Streams still open stop working."""
        await self._http.aclose()

    # -- jobs ------------------------------------------------------------------------

    async def start_job(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        thread_id: str,
        message_id: str,
        params: Mapping[str, Any] | None = None,
        api_key: str | None = None,
    ) -> Json:
        """Start a background job (``POST /v1/jobs``); returns the job JSON.

        ``api_key`` is a per-request upstream key, accepted only when the server
        allows user keys. Raises :class:`TroupeError` (422 invalid request, 429
        too many jobs, 503 server busy, ...).
        """
        body: Json = {
            "model": model,
            "messages": [dict(message) for message in messages],
            "thread_id": thread_id,
            "message_id": message_id,
        }
        if params:
            body["params"] = dict(params)
        headers = {USER_KEY_HEADER: api_key} if api_key else None
        return await self._json("POST", "/v1/jobs", json=body, headers=headers)

    async def get_job(self, job_id: str, offset: int = 0) -> Json:
        """The job JSON; ``content_delta`` holds the content from ``offset`` on.

        Raises :class:`TroupeError` 404 if the job is not the caller's.
        """
        return await self._json("GET", f"/v1/jobs/{job_id}", params={"offset": offset})

    async def list_jobs(self, status: str | None = None) -> list[Json]:
        """The caller's jobs, optionally only those with ``status``."""
        params = {"status": status} if status else None
        found: list[Json] = (await self._json("GET", "/v1/jobs", params=params))["jobs"]
        return found

    async def abort_job(self, job_id: str) -> Json:
        """Abort a job: ``{"aborted": bool, "job": {...}}``; ``aborted`` is False when
        it had already finished. Raises :class:`TroupeError` 404 if not the caller's."""
        return await self._json("POST", f"/v1/jobs/{job_id}/abort")

    def follow(
        self,
        job_id: str,
        after: int | None = None,
        *,
        on_retry: RetryCallback | None = None,
    ) -> JobEventStream:
        """The job's events, live: a snapshot, the deltas after seq ``after`` (all of
        them when None), then the final status; see :class:`JobEventStream`.

        Use it as ``async with client.follow(job_id) as events: async for event in
        events: ...``. Nothing is sent before the first iteration.
        """
        return JobEventStream(self, job_id, after, self._policy, on_retry)

    # -- notifications ---------------------------------------------------------------

    async def list_notifications(self, unread: bool = False, limit: int = 50) -> list[Json]:
        """The caller's notifications, newest first; only unread ones with ``unread``."""
        params: dict[str, str | int] = {"limit": limit}
        if unread:
            params["unread"] = 1
        found: list[Json] = (await self._json("GET", "/v1/notifications", params=params))[
            "notifications"
        ]
        return found

    async def mark_read(self, notification_id: str) -> None:
        """Mark one notification read. Raises :class:`TroupeError` 404 if unknown."""
        await self._json("POST", f"/v1/notifications/{notification_id}/read")

    async def mark_all_read(self) -> int:
        """Mark all of the caller's notifications read; returns how many changed."""
        updated: int = (await self._json("POST", "/v1/notifications/read-all"))["updated"]
        return updated

    async def delete_notification(self, notification_id: str) -> None:
        """Delete one notification. Raises :class:`TroupeError` 404 if unknown."""
        await self._request("DELETE", f"/v1/notifications/{notification_id}")

    def follow_notifications(self, *, on_retry: RetryCallback | None = None) -> NotificationStream:
        """The caller's new notifications, live, until closed; see
        :class:`NotificationStream`."""
        return NotificationStream(self, self._policy, on_retry)

    async def mute_thread(self, thread_id: str, muted: bool = True) -> Json:
        """Mute (or unmute) a thread's notifications: ``{"thread_id", "muted"}``."""
        return await self._json("PUT", f"/v1/threads/{thread_id}/mute", json={"muted": muted})

    # -- operations ------------------------------------------------------------------

    async def health(self) -> Json:
        """``GET /healthz``: ``{"status": "ok"}`` while the server runs."""
        return await self._json("GET", "/healthz")

    # -- plumbing --------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        try:
            response = await self._http.request(
                method, path, json=json, params=params, headers=headers
            )
        except httpx.TransportError as error:
            raise TroupeConnectionError(
                f"cannot reach the server at {self.base_url}: {_describe(error)}"
            ) from error
        if response.is_error:
            raise _api_error(response)
        return response

    async def _json(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Json:
        response = await self._request(method, path, json=json, params=params, headers=headers)
        try:
            decoded: Json = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise TroupeError(
                response.status_code, "invalid_response", "the server did not answer JSON"
            ) from None
        return decoded


def _describe(error: BaseException) -> str:
    text = str(error)
    if isinstance(error, _StreamDropped):
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _api_error(response: httpx.Response) -> TroupeError:
    """The :class:`TroupeError` of an error response (read in full)."""
    status = response.status_code
    code, message = f"http_{status}", response.reason_phrase or "error"
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            code = str(error.get("code") or code)
            message = str(error.get("message") or message)
        elif isinstance(error, str):  # the seed routes' shape
            message = error
    return TroupeError(status, code, message)


class _StreamDropped(Exception):
    """A connection ended in a way that calls for reconnecting."""


class _EventStream(ABC):
    """One SSE resource, reconnected on failure.

    Holds at most one open response. Closing it drains the SSE parser under a
    cancelled scope, so that the cancellation unwinds httpx's nested async
    generators in order instead of leaving them to the garbage collector.
    """

    _reset_on_connect = False
    """Whether a successful connection counts as progress (resets :attr:`failures`)."""

    def __init__(
        self,
        client: TroupeClient,
        path: str,
        policy: _RetryPolicy,
        on_retry: RetryCallback | None,
    ) -> None:
        self._client = client
        self._path = path
        self._policy = policy
        self._on_retry = on_retry
        self._response: httpx.Response | None = None
        self._events: AsyncGenerator[httpx_sse.ServerSentEvent, None] | None = None
        self._finished = False
        self.failures = 0
        """Consecutive failed connections (reset by progress)."""

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ServerEvent:
        """The next event. Blocks until one arrives (or while reconnecting); may be
        cancelled, which closes the stream. Raises :class:`TroupeError`."""
        if self._finished:
            raise StopAsyncIteration
        try:
            return await self._next_event()
        except BaseException:
            await self.aclose()
            raise

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop: close the connection; iteration ends. Idempotent; never blocks long."""
        self._finished = True
        await self._disconnect()

    @abstractmethod
    async def _next_event(self) -> ServerEvent:
        """The next event to yield, reading (and reconnecting) as needed."""

    def _resume_headers(self) -> dict[str, str]:
        return {}

    async def _next_sse(self) -> httpx_sse.ServerSentEvent:
        """The next raw event, connecting and reconnecting as needed."""
        while True:
            if self._events is None:
                await self._connect()
            assert self._events is not None
            try:
                return await self._events.__anext__()
            except StopAsyncIteration:
                cause: BaseException = _StreamDropped("the server closed the event stream")
            except httpx.TransportError as error:
                cause = error
            await self._disconnect()
            await self._backoff(cause)

    async def _connect(self) -> None:
        while True:
            try:
                await self._open()
                if self._reset_on_connect:
                    self.failures = 0
                return
            except (httpx.TransportError, _StreamDropped) as error:
                cause: BaseException = error
            await self._backoff(cause)

    async def _open(self) -> None:
        http = self._client._http
        request = http.build_request(
            "GET",
            self._path,
            headers={"Accept": "text/event-stream", **self._resume_headers()},
            timeout=self._client._stream_timeout,
        )
        response = await http.send(request, stream=True)
        if response.status_code != 200:
            try:
                await response.aread()
            finally:
                await response.aclose()
            error = _api_error(response)
            # 5xx and 429 are passing states (a restart, a busy server); the rest is final.
            if response.status_code >= 500 or response.status_code == 429:
                raise _StreamDropped(str(error)) from error
            raise error
        content_type = response.headers.get("content-type", "")
        if not content_type.startswith("text/event-stream"):
            await response.aclose()
            raise TroupeError(200, "invalid_response", f"not an event stream: {content_type!r}")
        self._response = response
        self._events = httpx_sse.EventSource(response).aiter_sse()

    async def _disconnect(self) -> None:
        events, response = self._events, self._response
        self._events = self._response = None
        with trio.CancelScope(shield=True):
            if events is not None:
                with trio.CancelScope() as drain:
                    drain.cancel()
                    try:
                        while True:
                            await events.__anext__()
                    except (StopAsyncIteration, httpx.HTTPError, httpx_sse.SSEError):
                        pass
            if response is not None:
                await response.aclose()

    async def _backoff(self, cause: BaseException) -> None:
        """Count a failure; sleep before the next attempt, or give up past the budget."""
        self.failures += 1
        if self.failures > self._policy.retries:
            self._finished = True
            raise TroupeConnectionError(
                f"lost the event stream {self._path} at {self._client.base_url} after "
                f"{self.failures} attempts: {_describe(cause)}"
            ) from cause
        if self._on_retry is not None:
            self._on_retry(self.failures, cause)
        await trio.sleep(self._policy.delay(self.failures))


def _decode(sse: httpx_sse.ServerSentEvent) -> Any:
    try:
        return orjson.loads(sse.data)
    except orjson.JSONDecodeError:
        raise TroupeError(
            200, "invalid_response", f"a {sse.event!r} event did not carry JSON"
        ) from None


class JobEventStream(_EventStream):
    """``async for event in stream``: a job's :class:`ServerEvent`\\ s until its status.

    Yields the ``snapshot`` once, every ``delta`` once and in order, then the
    ``status``, after which iteration ends and the connection is closed. When
    the connection drops, or the server announces ``shutdown``, it reconnects
    with ``Last-Event-ID`` set to the last delta seq seen (:attr:`last_seq`);
    deltas the server sends again are skipped. After more than ``retries``
    failures with no new delta in between it raises
    :class:`TroupeConnectionError`. Raises :class:`TroupeError` 404 if the job
    is not the caller's (or was deleted meanwhile).

    Close it (``async with`` or :meth:`aclose`) when stopping early.
    """

    def __init__(
        self,
        client: TroupeClient,
        job_id: str,
        after: int | None,
        policy: _RetryPolicy,
        on_retry: RetryCallback | None,
    ) -> None:
        super().__init__(client, f"/v1/jobs/{job_id}/events", policy, on_retry)
        self.job_id = job_id
        self.last_seq = after
        """The seq of the last delta yielded (or ``after``)."""
        self._snapshot_seen = False

    def _resume_headers(self) -> dict[str, str]:
        return {} if self.last_seq is None else {"Last-Event-ID": str(self.last_seq)}

    async def _next_event(self) -> ServerEvent:
        while True:
            sse = await self._next_sse()
            if sse.event == "delta":
                data = _decode(sse)
                seq = data["seq"]
                if self.last_seq is not None and seq <= self.last_seq:
                    continue
                self.last_seq = seq
                self.failures = 0
                return ServerEvent("delta", data, sse.id or str(seq))
            if sse.event == "snapshot":
                if self._snapshot_seen:
                    continue
                self._snapshot_seen = True
                return ServerEvent("snapshot", _decode(sse))
            if sse.event == "status":
                data = _decode(sse)
                self._finished = True
                await self._disconnect()
                return ServerEvent("status", data)
            if sse.event == "shutdown":
                await self._disconnect()
                await self._backoff(_StreamDropped("the server is shutting down"))
            elif sse.event == "error":
                data = _decode(sse)
                code = str(data.get("code", "error"))
                raise TroupeError(
                    404 if code == "not_found" else 500, code, str(data.get("message", ""))
                )
            # Any other event name is from a newer server; skip it.


class NotificationStream(_EventStream):
    """``async for event in stream``: the caller's new notifications (``event`` is
    ``"notification"``), live, until closed.

    Reconnects like :class:`JobEventStream` (a successful connection resets the
    failure count); notifications created while disconnected are not replayed,
    they are in :meth:`TroupeClient.list_notifications`.
    """

    def __init__(
        self, client: TroupeClient, policy: _RetryPolicy, on_retry: RetryCallback | None
    ) -> None:
        super().__init__(client, "/v1/notifications/events", policy, on_retry)

    _reset_on_connect = True

    async def _next_event(self) -> ServerEvent:
        while True:
            sse = await self._next_sse()
            if sse.event == "notification":
                return ServerEvent("notification", _decode(sse))
            if sse.event == "shutdown":
                await self._disconnect()
                await self._backoff(_StreamDropped("the server is shutting down"))
