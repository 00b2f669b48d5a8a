"""The seed app's own client, replayed request for request against a real server.

The browser of that app names its user with nothing but its auth provider's session
cookie (``__session``, an RS256 token checked against the provider's JWKS, the
workspace from ``org_id``), and sends its user's own OpenRouter key as
``Authorization: Bearer`` on the stream route only; the server here has no key of its
own. This module sends exactly those requests (headers, JSON bodies with content
parts, the background flag and ids) and checks what the seed's client reads back
(shapes byte for byte where the seed fixes them, status codes) and what reached the
upstream: the user's key, and the body without the seed's three fields.

It covers the client's whole life: a background start, polling by length every
second (which counts as watching), abort, the foreground fallback after a 503 and its
Stop, attachments, tool calls, the upstream's own 401, and the webhooks a server that
owns the notifications pushes to the app.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import attrs
import httpx
import orjson
import trio

from actors.notifications.webhooks import NOTIFICATION_CREATED
from tests.fake_upstream import FakeUpstream, RecordedRequest, Script
from tests.http.conftest import (
    ApiServer,
    OpenApiServer,
    fake_settings,
    wait_for_status,
    wait_until,
)
from tests.http.jwks import ISSUER, JwksServer, SigningKey, claims
from tests.http.test_chat_bodies import pdf_part
from tests.http.test_seed_foreground import read_until
from tests.webhook_receiver import SECRET, WebhookReceiver

SESSION = "__session"
USER_KEY = "sk-or-v1-5eed0c11e47000000000000000000000000000000000000000000000000000"
STREAM = "/api/openrouter/stream"
SEED_ONLY = ("_background", "_threadId", "_messageId")
THREAD = "thread-1"
MESSAGE = "message-1"
HANG = "hang"
POLL_INTERVAL = 1.0
"""The seed's client polls the status route once a second."""
NOT_ABORTED = b'{"aborted":false,"message":"Job not found, unauthorized, or already complete"}'
BUSY = b'{"error":"Server busy, try again later"}'
PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 32).decode()


@attrs.frozen
class SeedBrowser:
    """The seed app's client in one user's browser: its requests, headers included."""

    http: httpx.AsyncClient
    session_token: str

    @property
    def cookie(self) -> dict[str, str]:
        """All that status and abort requests carry."""
        return {"Cookie": f"{SESSION}={self.session_token}"}

    def _chat(self, body: dict[str, Any]) -> dict[str, Any]:
        # fetch() with JSON.stringify: compact JSON, its content type, the user's key.
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {USER_KEY}",
            **self.cookie,
        }
        return {"content": orjson.dumps(body), "headers": headers}

    async def post_stream(self, body: dict[str, Any]) -> httpx.Response:
        """``POST /api/openrouter/stream`` with ``body``, read whole."""
        return await self.http.post(STREAM, **self._chat(body))

    def open_stream(self, body: dict[str, Any]) -> AbstractAsyncContextManager[httpx.Response]:
        """``POST /api/openrouter/stream`` with ``body``, its answer read as it comes;
        leaving the block closes the connection (the client's Stop, if it is unread)."""
        return self.http.stream("POST", STREAM, **self._chat(body))

    async def status(self, job_id: str) -> httpx.Response:
        return await self.http.get(f"/api/jobs/{job_id}/status", headers=self.cookie)

    async def abort(self, job_id: str) -> httpx.Response:
        return await self.http.post(f"/api/jobs/{job_id}/abort", headers=self.cookie)


@attrs.frozen
class SeedApp:
    """A server that trusts the provider's session tokens, and the provider's key."""

    server: ApiServer
    http: httpx.AsyncClient
    provider: SigningKey

    def browser(self, user: str = "user_1", org: str = "org_1") -> SeedBrowser:
        """The browser of ``user`` signed in to organisation ``org``."""
        return SeedBrowser(self.http, self.provider.sign(claims(user, org_id=org)))


@asynccontextmanager
async def seed_app(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream, **overrides: Any
) -> AsyncIterator[SeedApp]:
    """A provider's JWKS and a server configured as the seed app's deployment would be,
    streaming from ``fake_upstream`` with no key of its own; ``overrides`` go to its config."""
    provider = SigningKey.rsa("provider-1")
    async with JwksServer.serve(provider) as jwks:
        settings = fake_settings(
            fake_upstream,
            upstream_api_key=None,
            jwt_secret=None,
            jwt_jwks_url=jwks.url,
            jwt_cookie=SESSION,
            jwt_issuer=ISSUER,
            workspace_claim="org_id",
            **overrides,
        )
        async with open_api_server(**settings) as server, server.client() as http:
            yield SeedApp(server, http, provider)


def seed_body(model: str, *parts: dict[str, Any]) -> dict[str, Any]:
    """The seed client's background request: a text part, then ``parts``."""
    content = [{"type": "text", "text": "What does this say?"}, *parts]
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "modalities": ["text"],
        "stream": True,
        "_background": True,
        "_threadId": THREAD,
        "_messageId": MESSAGE,
    }


def foreground_of(body: dict[str, Any]) -> dict[str, Any]:
    """The client's fallback: the same request without ``_background``."""
    return {key: value for key, value in body.items() if key != "_background"}


async def upstream_request(fake: FakeUpstream, number: int = 1) -> RecordedRequest:
    """The ``number``-th request the fake upstream received, once it has."""

    async def arrived() -> bool:
        return len(fake.requests) >= number

    await wait_until(arrived)
    return fake.requests[number - 1]


def assert_forwarded(sent: RecordedRequest, body: dict[str, Any]) -> None:
    """``sent`` is ``body`` without the seed's fields, under the user's own key, and the
    user's session went no further than the server."""
    assert sent.json == {key: value for key, value in body.items() if key not in SEED_ONLY}
    assert sent.headers["authorization"] == f"Bearer {USER_KEY}"
    assert "cookie" not in sent.headers


async def status_when(
    browser: SeedBrowser, job_id: str, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The first status answer of ``job_id`` for which ``check`` holds."""

    async def answer() -> dict[str, Any] | None:
        response = await browser.status(job_id)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body if check(body) else None

    found: dict[str, Any] = await wait_until(answer)
    return found


async def poll_while_streaming(browser: SeedBrowser, job_id: str) -> list[dict[str, Any]]:
    """The client's loop while its user looks at the thread: the status every second
    until it is no longer ``streaming``; every answer, in order."""
    answers: list[dict[str, Any]] = []
    with trio.fail_after(15):
        while True:
            response = await browser.status(job_id)
            assert response.status_code == 200, response.text
            answers.append(response.json())
            if answers[-1]["status"] != "streaming":
                return answers
            await trio.sleep(POLL_INTERVAL)


async def notified_jobs(browser: SeedBrowser) -> list[str]:
    """The jobs of the browser's user's notifications."""
    response = await browser.http.get("/v1/notifications", headers=browser.cookie)
    assert response.status_code == 200, response.text
    return [note["job_id"] for note in response.json()["notifications"]]


async def test_a_background_start_answers_the_seed_shape_and_streams_with_the_users_key(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    body = seed_body("m", {"type": "image_url", "image_url": {"url": PNG}})
    async with seed_app(open_api_server, fake_upstream) as app:
        response = await app.browser().post_stream(body)

        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        job_id = response.json()["jobId"]
        assert response.content == b'{"jobId":"%s","status":"streaming"}' % job_id.encode()
        sent = await upstream_request(fake_upstream)
    assert_forwarded(sent, body)


async def test_polling_by_length_sees_only_growth_and_counts_as_watching(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    answer = "The quick brown fox jumps over the lazy dog"
    fake_upstream.script("slow", Script.text(answer, delay=0.3))  # 2.4 s in all
    fake_upstream.script("quick", Script.text("Done"))
    async with seed_app(open_api_server, fake_upstream, watch_window=3.0) as app:
        browser = app.browser()
        polled = (await browser.post_stream(seed_body("slow"))).json()["jobId"]
        unwatched = (await browser.post_stream(seed_body("quick"))).json()["jobId"]

        answers = await poll_while_streaming(browser, polled)

        async def notified() -> list[str]:
            return await notified_jobs(browser)

        # A job's notification is decided before its end is stored: once a poll has
        # seen the end, any notification of the polled job would be listed.
        assert await wait_until(notified) == [unwatched]

    *running, final = answers
    shown = ""
    for status in answers:
        assert status["content"].startswith(shown)
        shown = status["content"]
    assert running, "the first poll came after the answer ended"
    assert any(0 < len(status["content"]) < len(answer) for status in running)
    for status in running:
        assert status["status"] == "streaming"
        assert "completedAt" not in status
        assert "error" not in status
    assert list(final) == [
        "id",
        "status",
        "threadId",
        "messageId",
        "model",
        "chunksReceived",
        "startedAt",
        "completedAt",
        "content",
    ]
    assert (final["id"], final["status"], final["content"]) == (polled, "complete", answer)
    assert (final["threadId"], final["messageId"], final["model"]) == (THREAD, MESSAGE, "slow")
    assert final["chunksReceived"] == len(answer.split(" "))
    assert isinstance(final["completedAt"], int)
    assert final["completedAt"] >= final["startedAt"]


async def test_abort_with_the_cookie_closes_the_upstream_and_only_the_owner_may(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script(HANG, Script.stream().content("so far ").hang())
    async with seed_app(open_api_server, fake_upstream) as app:
        owner, colleague = app.browser(), app.browser("user_2")
        job_id = (await owner.post_stream(seed_body(HANG))).json()["jobId"]
        await status_when(owner, job_id, lambda status: status["content"] == "so far ")
        upstream = fake_upstream.requests[0]

        refused = await colleague.abort(job_id)
        assert (refused.status_code, refused.content) == (200, NOT_ABORTED)
        assert (await owner.status(job_id)).json()["status"] == "streaming"
        assert not upstream.client_disconnected.is_set()

        aborted = await owner.abort(job_id)
        assert (aborted.status_code, aborted.content) == (200, b'{"aborted":true}')
        with trio.fail_after(5):
            await upstream.client_disconnected.wait()
        final = (await owner.status(job_id)).json()
        assert (final["status"], final["content"]) == ("aborted", "so far ")
        assert "error" not in final

        again = await owner.abort(job_id)
        assert (again.status_code, again.content) == (200, NOT_ABORTED)


async def test_stop_on_the_foreground_closes_the_upstream_and_aborts_the_job(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script(HANG, Script.stream().content("so far ").hang())
    async with seed_app(open_api_server, fake_upstream) as app:
        browser = app.browser()
        async with browser.open_stream(foreground_of(seed_body(HANG))) as response:
            assert response.status_code == 200
            job_id = response.headers["x-job-id"]
            await read_until(response, b"so far")
        # Leaving the block closed the connection unread: the client's Stop.

        with trio.fail_after(5):
            await fake_upstream.requests[0].client_disconnected.wait()
        final = await status_when(browser, job_id, lambda status: status["status"] != "streaming")
        assert (final["status"], final["content"]) == ("aborted", "so far ")


async def test_a_busy_background_start_falls_back_to_the_foreground_stream(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    answer = Script.text("Answered in the foreground", chunk_size=2)
    fake_upstream.script(HANG, Script.stream().content("x").hang())
    fake_upstream.script("m", answer)
    async with seed_app(open_api_server, fake_upstream, max_concurrent_jobs=1) as app:
        browser = app.browser()
        assert (await browser.post_stream(seed_body(HANG))).status_code == 200
        body = seed_body("m")

        busy = await browser.post_stream(body)
        assert (busy.status_code, busy.content) == (503, BUSY)
        assert busy.headers["content-type"] == "application/json"

        async with browser.open_stream(foreground_of(body)) as response:
            received = b"".join([piece async for piece in response.aiter_bytes()])
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        assert received == answer.body
    # The refused start never reached the upstream: the fallback is its second request.
    assert len(fake_upstream.requests) == 2
    assert_forwarded(fake_upstream.requests[1], foreground_of(body))


async def test_a_pdf_attachment_reaches_the_upstream_unchanged(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    body = seed_body("m", pdf_part(512 * 1024))
    async with seed_app(open_api_server, fake_upstream) as app:
        response = await app.browser().post_stream(body)

        assert response.status_code == 200, response.text[:500]
        sent = await upstream_request(fake_upstream)
    assert_forwarded(sent, body)


async def test_tool_calls_pass_through_the_foreground_and_are_recorded_merged(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    script = (
        Script.stream()
        .content("Let me check.")
        .tool_call(0, id="call_1", name="get_weather")
        .tool_call(0, arguments='{"city": ')
        .tool_call(0, arguments='"Paris"}')
        .finish("tool_calls")
        .usage()
        .done()
    )
    fake_upstream.script("m", script)
    async with seed_app(open_api_server, fake_upstream) as app:
        browser = app.browser()
        async with browser.open_stream(foreground_of(seed_body("m"))) as response:
            received = b"".join([piece async for piece in response.aiter_bytes()])
        assert response.status_code == 200
        assert received == script.body

        job = await wait_for_status(app.http, response.headers["x-job-id"], browser.cookie)
        assert (job["status"], job["finish_reason"], job["foreground"]) == (
            "complete",
            "tool_calls",
            True,
        )
        assert job["content_delta"] == "Let me check."
        assert job["tool_calls"] == [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ]


async def test_the_upstreams_401_reaches_the_client_with_its_own_body(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    refusal = Script.status(401, message="No auth credentials found")
    fake_upstream.script("m", refusal)
    body = foreground_of(seed_body("m"))
    async with seed_app(open_api_server, fake_upstream) as app:
        browser = app.browser()
        response = await browser.post_stream(body)

        assert response.status_code == 401
        assert response.headers["content-type"] == "application/json"
        assert response.content == refusal.error_body
        job = await wait_for_status(app.http, response.headers["x-job-id"], browser.cookie)
        assert job["status"] == "error"
    # Never retried: the user's key is wrong, and the client shows why.
    assert len(fake_upstream.requests) == 1
    assert_forwarded(fake_upstream.requests[0], body)


def received_events(receiver: WebhookReceiver) -> dict[tuple[str, str], dict[str, Any]]:
    """The data of the verified, accepted events, by their type and their job's id."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for payload in receiver.accepted().values():
        data = payload["data"]
        job_id = data["job_id"] if payload["type"] == NOTIFICATION_CREATED else data["id"]
        found[(payload["type"], job_id)] = data
    return found


async def test_webhooks_carry_the_seed_notification_of_an_unwatched_job_and_none_for_foreground(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    answer = "Ready when you are"
    fake_upstream.script("m", Script.text(answer))
    async with WebhookReceiver.serve() as receiver:
        hooks = {"webhook_url": receiver.url, "webhook_secret": SECRET, "watch_window": 3.0}
        async with seed_app(open_api_server, fake_upstream, **hooks) as app:
            browser = app.browser()
            async with browser.open_stream(foreground_of(seed_body("m"))) as response:
                await response.aread()
            foreground = response.headers["x-job-id"]
            # Nobody polls this one: it ends unwatched.
            background = (await browser.post_stream(seed_body("m"))).json()["jobId"]
            expected = {
                (NOTIFICATION_CREATED, background),
                ("job.completed", background),
                ("job.completed", foreground),
            }
            await receiver.wait_until(lambda: expected <= received_events(receiver).keys())
            assert await notified_jobs(browser) == [background]

    assert all(delivery.payload is not None for delivery in receiver.deliveries)
    events = received_events(receiver)
    assert events.keys() == expected
    note = events[(NOTIFICATION_CREATED, background)]
    assert note == {
        "id": note["id"],
        "type": "ai.background.complete",
        "title": "Background response completed",
        "body": f"Your background AI response is ready in thread {THREAD}",
        "user_id": "user_1",
        "workspace_id": "org_1",
        "thread_id": THREAD,
        "message_id": MESSAGE,
        "job_id": background,
        "actions": [
            {"label": "Open chat", "kind": "open_chat", "thread_id": THREAD, "message_id": MESSAGE}
        ],
        "read_at": None,
        "created_at": note["created_at"],
    }
    for job_id in (background, foreground):
        completed = events[("job.completed", job_id)]
        assert (completed["status"], completed["content_length"]) == ("complete", len(answer))
        assert (completed["user_id"], completed["workspace_id"]) == ("user_1", "org_1")
        assert (completed["thread_id"], completed["message_id"]) == (THREAD, MESSAGE)
