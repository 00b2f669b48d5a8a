"""Server-Sent Event streams of a follower, ended by the server's shutdown.

A user's notifications: few events, so rendering uses sse-starlette's
:class:`ServerSentEvent`, and these iterators are the bodies of its
``EventSourceResponse``. A job's events, the hot path, have a response of
their own (:mod:`actors.http.sse`), and so does the seed's foreground answer
(:mod:`actors.http.foreground`). These streams are classes rather than async
generators so that cancellation (a client disconnect) never leaves a
generator suspended inside a cancel scope.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import orjson
import trio
from sse_starlette import ServerSentEvent

from actors.errors import JobNotFound
from actors.http.schemas import notification_json
from actors.jobs.following import Follower, NotificationFollower
from actors.model import Notification

__all__ = ["ShutdownSignal", "notification_stream"]

E = TypeVar("E")


class ShutdownSignal:
    """Ends every open event stream with a final ``shutdown`` event.

    Hypercorn waits for open connections before it finishes shutting down,
    so the server triggers this first.
    """

    def __init__(self) -> None:
        self.triggered = False
        self._scopes: set[trio.CancelScope] = set()

    def trigger(self) -> None:
        self.triggered = True
        for scope in self._scopes:
            scope.cancel()

    async def run_until_triggered(self, fn: Callable[[], Awaitable[Any]]) -> tuple[bool, Any]:
        """``(True, fn())``, or ``(False, None)`` if the signal came first."""
        if self.triggered:
            return False, None
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                return True, await fn()
            finally:
                self._scopes.discard(scope)
        return False, None


class _SseStream(Generic[E]):
    """A follower's events rendered as SSE, until it ends or the server shuts down.

    ``render`` may return None to skip an event. On shutdown the stream ends
    with ``farewell()``. A client disconnect only closes the follower: the
    job goes on.
    """

    def __init__(
        self,
        follower: Follower[E],
        shutdown: ShutdownSignal,
        render: Callable[[E], ServerSentEvent | None],
        farewell: Callable[[], ServerSentEvent],
    ) -> None:
        self._follower = follower
        self._shutdown = shutdown
        self._render = render
        self._farewell = farewell
        self._finished = False

    def __aiter__(self) -> _SseStream[E]:
        return self

    async def __anext__(self) -> ServerSentEvent:
        while not self._finished:
            try:
                got, event = await self._shutdown.run_until_triggered(self._follower.__anext__)
            except (StopAsyncIteration, JobNotFound):
                break  # JobNotFound: deleted by retention since the route checked it
            except BaseException:
                self._follower.close()
                raise
            if not got:
                self._finished = True
                self._follower.close()
                return self._farewell()
            rendered = self._render(event)
            if rendered is not None:
                return rendered
        self._finished = True
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._follower.close()
        await trio.lowlevel.checkpoint()


def _sse(event: str, data: Any) -> ServerSentEvent:
    return ServerSentEvent(data=orjson.dumps(data).decode(), event=event)


def notification_stream(
    follower: NotificationFollower, shutdown: ShutdownSignal
) -> _SseStream[Notification]:
    return _SseStream(
        follower,
        shutdown,
        lambda notification: _sse("notification", notification_json(notification)),
        lambda: _sse("shutdown", {"message": "server shutting down"}),
    )
