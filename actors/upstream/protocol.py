"""The interface every upstream (real or simulated) offers to the stream actors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from actors.upstream.events import StreamResult, UpstreamEvent, UpstreamRequest

__all__ = ["EventHandler", "Upstream"]

EventHandler = Callable[[UpstreamEvent], Awaitable[None]]


class Upstream(Protocol):
    """A source of streamed chat completions."""

    async def stream(
        self,
        request: UpstreamRequest,
        on_event: Callable[[UpstreamEvent], Awaitable[None]],
    ) -> StreamResult:
        """Run one streaming chat completion, calling ``on_event`` for each event in order.

        Returns the StreamResult when the upstream finished properly; raises UpstreamError
        otherwise. For a pass-through request (``request.passthrough``) the body also
        comes as RawBytes events, each before the events parsed from it, and a failure
        is raised at once, never retried. An exception raised by ``on_event`` propagates
        unchanged. Blocks for the whole generation, including any backoff between
        retries. Cancellation (a cancel scope around the call) closes the upstream HTTP
        response at once: this is how an abort reaches the upstream and stops generation
        and billing.
        """
        ...

    async def aclose(self) -> None:
        """Release the resources (connections) the upstream owns."""
        ...
