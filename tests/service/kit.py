"""What the service tests share: owners, request and config builders, polling, a hanging upstream.

Fixtures live in ``conftest.py`` (which builds on this module); everything here is a
plain value, function or class that a test module imports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol

import trio

from actors import ChatRequest, JobView, Owner, Service, ServiceConfig
from actors.upstream import (
    EventHandler,
    SimulatedUpstream,
    StreamOpened,
    StreamResult,
    TextDelta,
    Upstream,
    UpstreamEvent,
    UpstreamRequest,
)

ALICE = Owner("alice", "ws-1")
BOB = Owner("bob", "ws-1")

# The simulated model quotes it, so its answer depends on it (47 tokens).
PROMPT = "hello"


async def simulated_answer(prompt: str = PROMPT) -> str:
    """The simulated model's whole answer to ``prompt``, straight from the model."""
    pieces: list[str] = []

    async def keep(event: UpstreamEvent) -> None:
        if isinstance(event, TextDelta):
            pieces.append(event.content)

    request = UpstreamRequest("m", [{"role": "user", "content": prompt}])
    await SimulatedUpstream(math.inf).stream(request, keep)
    return "".join(pieces)


def chat(
    model: str = "m",
    *,
    thread_id: str = "thread-1",
    message_id: str = "msg-1",
    params: Mapping[str, Any] | None = None,
    api_key: str | None = None,
) -> ChatRequest:
    """A request of one user message, ``PROMPT``; ``params`` are extra upstream body fields."""
    return ChatRequest(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        thread_id=thread_id,
        message_id=message_id,
        params=dict(params or {}),
        api_key=api_key,
    )


def config(tmp_path: Path, **overrides: Any) -> ServiceConfig:
    """A service configuration with its data under ``tmp_path``, on the memory store unless
    ``store`` is among ``overrides``; every other setting is the product default."""
    settings: dict[str, Any] = {"store": "memory", **overrides}
    return ServiceConfig(data_dir=tmp_path, **settings)


class MemoryConfig(Protocol):
    """The ``memory_config`` fixture: ``memory_config(**overrides)``."""

    def __call__(self, **overrides: Any) -> ServiceConfig: ...


class OpenSimulatedService(Protocol):
    """The ``open_simulated_service`` fixture: ``open_simulated_service(config, pace)``."""

    def __call__(
        self, config: ServiceConfig, tokens_per_second: float = ...
    ) -> AbstractAsyncContextManager[Service]: ...


def is_finished(view: JobView) -> bool:
    """Whether the job has reached a terminal status."""
    return view.status.is_terminal


def reached_seq(seq: int) -> Callable[[JobView], bool]:
    """A predicate for :func:`wait_until`: the job has stored delta ``seq`` or a later one."""

    def reached(view: JobView) -> bool:
        return view.last_seq >= seq

    return reached


async def wait_until(
    service: Service,
    job_id: str,
    predicate: Callable[[JobView], bool],
    *,
    owner: Owner = ALICE,
    timeout: float = 10.0,
) -> JobView:
    """Poll ``owner``'s job every 10 ms until ``predicate`` holds, and return that view.

    Raises ``trio.TooSlowError`` after ``timeout`` seconds of trio's clock (virtual seconds
    on the mock clock) and ``AssertionError`` when the owner has no such job.
    """
    with trio.fail_after(timeout):
        while True:
            view = await service.get_job(owner, job_id)
            assert view is not None
            if predicate(view):
                return view
            await trio.sleep(0.01)


async def wait_finished(
    service: Service, job_id: str, *, owner: Owner = ALICE, timeout: float = 10.0
) -> JobView:
    """:func:`wait_until` the job has finished (complete, error or aborted)."""
    return await wait_until(service, job_id, is_finished, owner=owner, timeout=timeout)


async def run_job(
    service: Service, request: ChatRequest, *, owner: Owner = ALICE, timeout: float = 10.0
) -> JobView:
    """Start a job for ``owner`` and return its view once it has finished.

    Raises what ``start_job`` raises, and as :func:`wait_finished` does.
    """
    job = await service.start_job(owner, request)
    return await wait_finished(service, job.id, owner=owner, timeout=timeout)


def restarts(service: Service, path: str) -> int:
    """How many times the actor at ``path`` has been restarted; it must exist."""
    node = service.snapshot().find(path)
    assert node is not None, path
    return node.restarts


class HangingUpstream:
    """An upstream whose streams never finish: each waits until it is cancelled.

    With ``first_delta``, a stream first reports ``StreamOpened`` and that text, so its job
    is streaming with some content; without it, a stream reports nothing at all and the
    job stays queued. With ``others``, only requests for the model ``hang_model`` hang and
    every other request goes to ``others`` (a simulated model, say), so one service can
    run both kinds of job.

    ``started`` counts the streams that hung and ``cancelled`` those of them that were
    cancelled: an abort, a timeout or a shutdown that reached the upstream.
    """

    def __init__(
        self,
        first_delta: str | None = None,
        *,
        others: Upstream | None = None,
        hang_model: str = "hang",
    ) -> None:
        self.first_delta = first_delta
        self.others = others
        self.hang_model = hang_model
        self.started = 0
        self.cancelled = 0

    async def stream(self, request: UpstreamRequest, on_event: EventHandler) -> StreamResult:
        """Wait until cancelled, so never return, unless the request goes to ``others``:
        then return or raise what ``others`` does."""
        if self.others is not None and request.model != self.hang_model:
            return await self.others.stream(request, on_event)
        self.started += 1
        if self.first_delta is not None:
            await on_event(StreamOpened("gen-hanging"))
            await on_event(TextDelta(content=self.first_delta))
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            self.cancelled += 1
            raise

    async def aclose(self) -> None:
        """Nothing to release; ``others`` belongs to the caller."""
