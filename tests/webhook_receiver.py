"""A webhook receiver for the tests: a real HTTP server that checks deliveries as the README says.

``async with WebhookReceiver.serve(answers) as receiver`` runs a Starlette app under
hypercorn on 127.0.0.1 at a free port; ``receiver.url`` takes the deliveries. The n-th
delivery (counting all of them) gets ``answers[n]``, and the last answer repeats:
a status code, or :data:`HANG` to never answer. Each delivery is checked with
``verify`` from ``examples/verify_webhook.py``, the README's own code, and recorded
as a :class:`Delivery`; a delivery that fails the check is answered 400.
"""

from __future__ import annotations

import base64
import importlib.util
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import attrs
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["HANG", "SECRET", "Delivery", "WebhookReceiver", "verify"]

SECRET: Final = "whsec_" + base64.b64encode(b"a test key of thirty-two bytes!!").decode()
HANG: Final = -1
"""An answer that never comes: the delivery waits until the sender gives up on it."""


def _load_verify() -> Callable[..., Any]:
    path = Path(__file__).resolve().parent.parent / "examples" / "verify_webhook.py"
    spec = importlib.util.spec_from_file_location("verify_webhook", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    verify: Callable[..., Any] = module.verify
    return verify


verify: Final = _load_verify()
"""``verify(secret, headers, body, now=None)`` from ``examples/verify_webhook.py``."""


@attrs.frozen
class Delivery:
    """One delivery as received: its headers, its body, its verified payload (None if it
    failed the check) and the status it was answered (:data:`HANG` for none)."""

    webhook_id: str
    headers: dict[str, str]
    body: bytes
    payload: Any
    answer: int

    @property
    def accepted(self) -> bool:
        return self.payload is not None and 200 <= self.answer < 300


class WebhookReceiver:
    """The receiver; create it with :meth:`serve`. ``answers`` may be replaced at any time."""

    def __init__(self, answers: Sequence[int]) -> None:
        self.answers = list(answers)
        self.url = ""
        self.deliveries: list[Delivery] = []
        self.hanging = 0
        self._changed = trio.Event()

    @classmethod
    @asynccontextmanager
    async def serve(cls, answers: Sequence[int] = (204,)) -> AsyncIterator[WebhookReceiver]:
        """Run the receiver on 127.0.0.1 at a free port for the duration of the block."""
        receiver = cls(answers)
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        config.loglevel = "WARNING"
        config.graceful_timeout = 0.1
        app = Starlette(routes=[Route("/hooks", receiver._receive, methods=["POST"])])
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(serve, app, config)
            receiver.url = binds[0] + "/hooks"
            try:
                yield receiver
            finally:
                # Hanging deliveries would hold a graceful shutdown; tests want none.
                nursery.cancel_scope.cancel()

    def accepted(self) -> dict[str, Any]:
        """The payloads of the accepted deliveries, by webhook-id (so deduplicated)."""
        return {d.webhook_id: d.payload for d in self.deliveries if d.accepted}

    async def wait_until(self, check: Callable[[], bool], *, timeout: float = 10.0) -> None:
        """Wait until ``check()`` holds, checking after every delivery."""
        with trio.fail_after(timeout):
            while not check():
                await self._changed.wait()

    async def _receive(self, request: Request) -> Response:
        body = await request.body()
        headers = dict(request.headers)
        try:
            payload = verify(SECRET, headers, body)
        except (KeyError, ValueError):
            payload = None
        answer = self.answers[min(len(self.deliveries), len(self.answers) - 1)]
        if payload is None:
            answer = 400
        self.deliveries.append(
            Delivery(headers.get("webhook-id", ""), headers, body, payload, answer)
        )
        self._changed.set()
        self._changed = trio.Event()
        if answer == HANG:
            self.hanging += 1
            await trio.sleep_forever()
        return Response(status_code=answer)
