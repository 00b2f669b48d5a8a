"""No secret leaves the server: a whole server lifetime, every byte it shows, grepped.

``examples/server.py`` runs in a process of its own on SQLite, logging at ``debug``,
with every stdlib logger (httpx, httpcore, hypercorn...) also written to stderr at
``DEBUG``. It streams from a fake upstream with the server's key, and with a user's
own key brought the two documented ways (``X-Upstream-Api-Key`` on ``/v1``, and
``Authorization: Bearer sk-or-...`` beside the session cookie on the seed route, in
the background and in the foreground). The upstream misbehaves the ways that carry a
key back: a 401, a 503 and a mid-stream error whose messages echo the key, and a data
line that is not JSON holding it; a job is aborted, bad requests are refused, a
webhook receiver takes every event, and SIGTERM ends it all.

Then everything is gathered: every line the process wrote (stdout and stderr), every
answer (bodies and headers: jobs, errors, event streams, the pass-through, the seed's
status, notifications, ``/metrics``, ``/v1/system/actors`` while a job holds the
user's key, ``/openapi.json``), every webhook body, and every byte of the data
directory (the SQLite database and its WAL). Neither API key may appear in any of it,
nor any 12-character piece of one (a truncated key is still a leak), nor the JWT or
webhook secrets; while ``prompt_tokens`` and ``completion_tokens``, whose names hold
the word "token", must stay visible with their values, in the answers and in the
log: the redaction must not over-reach.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx
import jwt
import orjson
import pytest
import trio

from tests.fake_upstream import FakeUpstream, Script
from tests.http.conftest import wait_until
from tests.reliability.figures import Figure, Figures
from tests.reliability.server_process import server_env
from tests.webhook_receiver import SECRET as WEBHOOK_SECRET
from tests.webhook_receiver import WebhookReceiver

ROOT: Final = Path(__file__).resolve().parents[2]
SERVER_KEY: Final = "sk-or-v1-" + secrets.token_hex(32)
USER_KEY: Final = "sk-or-v1-" + secrets.token_hex(32)
JWT_SECRET: Final = "secrets-test-jwt-" + secrets.token_hex(16)
SECRETS: Final = {
    SERVER_KEY: "server key",
    USER_KEY: "user key",
    JWT_SECRET: "JWT secret",
    WEBHOOK_SECRET.removeprefix("whsec_"): "webhook secret",
}
PIECE: Final = 12
"""The shortest piece of a secret that counts as a leak."""
COMPLETION_TOKENS: Final = 31
PROMPT_TOKENS: Final = 1234
ANSWER: Final = " ".join(f"word{i}" for i in range(COMPLETION_TOKENS))
SESSION: Final = "__session"
_LISTENING: Final = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")

# Every stdlib logger to stderr at DEBUG, then the server as ``python examples/server.py``.
LAUNCH: Final = (
    "import logging, runpy, sys; "
    "logging.basicConfig(level=logging.DEBUG, stream=sys.stderr); "
    "sys.argv = ['server.py', '--port', '0']; "
    "runpy.run_path('examples/server.py', run_name='__main__')"
)


def pieces(secret: str) -> list[str]:
    """Every run of :data:`PIECE` characters of ``secret``."""
    return [secret[i : i + PIECE] for i in range(len(secret) - PIECE + 1)]


def leaks(haystack: bytes, secret: str, name: str) -> list[str]:
    """Where a piece of ``secret`` shows in ``haystack``, with some context."""
    found = []
    for piece in pieces(secret):
        at = haystack.find(piece.encode())
        if at >= 0:
            context = haystack[max(0, at - 80) : at + 80]
            found.append(f"{name}: {piece!r} in {context!r}")
    return found


_MINTED: dict[tuple[str, bool], str] = {}


def token(user: str = "secret-keeper", *, admin: bool = False) -> str:
    """The one token of ``user`` for this run (so that the test can look for it)."""
    if (user, admin) not in _MINTED:
        now = int(time.time())
        claims: dict[str, Any] = {"sub": user, "workspace": "vault", "iat": now, "exp": now + 3600}
        if admin:
            claims["admin"] = True
        _MINTED[user, admin] = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    return _MINTED[user, admin]


def _script(fake: FakeUpstream) -> None:
    """The upstream: good answers with usage, and failures that echo the keys."""
    fake.script(
        "ok",
        Script.text(ANSWER, delay=0.001, usage=False, done=False)
        .usage(prompt_tokens=PROMPT_TOKENS, completion_tokens=COMPLETION_TOKENS)
        .done(),
    )
    fake.script(
        "denied-server",
        Script.status(401, message=f"Incorrect API key provided: {SERVER_KEY}"),
    )
    fake.script(
        "denied-user", Script.status(401, message=f"Incorrect API key provided: {USER_KEY}")
    )
    fake.script(
        "down", Script.status(503, message=f"overloaded for key {SERVER_KEY}", retry_after=0)
    )
    fake.script(
        "revoked", Script.stream().content("partial ").error(401, f"key {SERVER_KEY} revoked")
    )
    # A data line that is not JSON, the key near the end of what an error message quotes.
    garbage = b"data: " + b"<" * 180 + SERVER_KEY.encode() + b" not json\n\n"
    fake.script("garbage", Script.stream().content("partial ").raw(garbage))
    fake.script("hang", Script.stream().content("holding ").hang())


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Holds the server process; kills it if the test did not stop it."""
    held: list[subprocess.Popen[bytes]] = []
    yield held
    for process in held:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def _launch(env: dict[str, str], output: Path) -> subprocess.Popen[bytes]:
    """Start the server, its stdout and stderr both into ``output``."""
    with output.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", LAUNCH],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )


def _env(data_dir: Path, upstream: str, webhook: str) -> dict[str, str]:
    return server_env(
        data_dir,
        upstream,
        upstream_api_key=SERVER_KEY,
        jwt_secret=JWT_SECRET,
        jwt_cookie=SESSION,
        log_level="debug",
        drain_timeout=1,
        max_jobs_per_user=50,
        max_concurrent_jobs=50,
        webhook_url=webhook,
        webhook_secret=WEBHOOK_SECRET,
    )


class Seen:
    """Every answer the test got, headers and body."""

    def __init__(self) -> None:
        self.answers: list[bytes] = []

    def keep(self, response: httpx.Response) -> httpx.Response:
        head = "".join(f"{k}: {v}\n" for k, v in response.headers.items()).encode()
        self.answers.append(head + response.content)
        return response


async def _wait_job(client: httpx.AsyncClient, job_id: str, seen: Seen) -> dict[str, Any]:
    """The job once it has ended."""

    async def ended() -> dict[str, Any] | None:
        job: dict[str, Any] = seen.keep(
            await client.get(f"/v1/jobs/{job_id}", headers=_bearer())
        ).json()
        return None if job["status"] in ("queued", "streaming") else job

    found: dict[str, Any] = await wait_until(ended, timeout=30)
    return found


def _bearer(user: str = "secret-keeper", *, admin: bool = False) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user, admin=admin)}"}


def _cookie() -> dict[str, str]:
    return {"Cookie": f"{SESSION}={token()}"}


def _v1(model: str, n: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "tell me"}],
        "thread_id": f"thread-{n}",
        "message_id": f"message-{n}",
    }


def _seed(model: str, n: int, *, background: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "tell me"}],
        "_threadId": f"seed-thread-{n}",
        "_messageId": f"seed-message-{n}",
    }
    if background:
        body["_background"] = True
    return body


async def run_lifetime(client: httpx.AsyncClient, seen: Seen) -> dict[str, dict[str, Any]]:
    """Everything a server's life holds, with both keys; the finished jobs by name."""
    own = {"X-Upstream-Api-Key": USER_KEY}
    users_bearer = {**_cookie(), "Authorization": f"Bearer {USER_KEY}"}
    started: dict[str, str] = {}
    for n, (name, model, headers) in enumerate(
        [
            ("server key", "ok", {}),
            ("user key", "ok", own),
            ("server key refused", "denied-server", {}),
            ("user key refused", "denied-user", own),
            ("upstream down", "down", {}),
            ("revoked mid-stream", "revoked", {}),
            ("garbage", "garbage", {}),
        ]
    ):
        created = seen.keep(
            await client.post("/v1/jobs", json=_v1(model, n), headers={**_bearer(), **headers})
        )
        assert created.status_code == 202, created.text
        started[name] = created.json()["id"]
    for n, (name, model) in enumerate([("seed, user key", "ok"), ("seed, refused", "denied-user")]):
        created = seen.keep(
            await client.post("/api/openrouter/stream", json=_seed(model, n), headers=users_bearer)
        )
        assert created.status_code == 200, created.text
        started[name] = created.json()["jobId"]
    # The foreground: the upstream's answer passed through, a refusal too.
    for n, model in enumerate(["ok", "denied-user"]):
        body = _seed(model, 10 + n, background=False)
        async with client.stream(
            "POST", "/api/openrouter/stream", json=body, headers=users_bearer
        ) as response:
            await response.aread()
        seen.keep(response)
        assert response.status_code == (200 if model == "ok" else 401), response.text
    # A job that holds the user's key while the actor tree and the metrics are read.
    holding = seen.keep(
        await client.post("/v1/jobs", json=_v1("hang", 20), headers={**_bearer(), **own})
    )
    holding_id = holding.json()["id"]

    async def holding_the_key() -> bool:
        job = seen.keep(await client.get(f"/v1/jobs/{holding_id}", headers=_bearer())).json()
        return bool(job["content_length"])

    await wait_until(holding_the_key)
    tree = seen.keep(await client.get("/v1/system/actors", headers=_bearer(admin=True)))
    assert "service/streams/" in tree.text
    seen.keep(await client.get("/metrics"))
    seen.keep(await client.get("/openapi.json"))
    aborted = seen.keep(await client.post(f"/v1/jobs/{holding_id}/abort", headers=_bearer()))
    assert aborted.json()["aborted"] is True

    # Bad requests that carry a key where it does not belong.
    refused = [
        await client.post(
            "/v1/jobs", json={**_v1("ok", 30), "api_key": USER_KEY}, headers=_bearer()
        ),
        await client.post(
            "/v1/jobs", json={**_v1("ok", 31), "thread_id": [USER_KEY]}, headers=_bearer()
        ),
        await client.get("/v1/jobs", headers={"Authorization": f"Bearer {USER_KEY}"}),
        await client.get("/v1/jobs", headers={"Authorization": f"Bearer {SERVER_KEY}.x.y"}),
        await client.post(
            "/v1/jobs", content=f'{{"model": "{USER_KEY}"'.encode(), headers=_bearer()
        ),
    ]
    for response in refused:
        seen.keep(response)
        assert 400 <= response.status_code < 500, response.text

    finished = {}
    for name, job_id in started.items():
        finished[name] = await _wait_job(client, job_id, seen)
        events = seen.keep(await client.get(f"/v1/jobs/{job_id}/events", headers=_bearer()))
        assert events.status_code == 200
        seen.keep(await client.get(f"/api/jobs/{job_id}/status", headers=_cookie()))
    seen.keep(await client.get("/v1/jobs", headers=_bearer()))

    async def all_notified() -> bool:
        listed = seen.keep(await client.get("/v1/notifications", headers=_bearer())).json()
        return len(listed["notifications"]) == len(started)

    await wait_until(all_notified)
    return finished


def _log_lines(output: bytes) -> list[dict[str, Any]]:
    """The structlog JSON lines among the process's output."""
    found = []
    for line in output.splitlines():
        if line.startswith(b"{"):
            with contextlib.suppress(orjson.JSONDecodeError):
                found.append(orjson.loads(line))
    return found


async def test_no_key_or_secret_shows_anywhere_in_a_server_lifetime(
    tmp_path: Path, server_process: list[subprocess.Popen[bytes]], figures: Figures
) -> None:
    data_dir, output_file = tmp_path / "data", tmp_path / "server.out"
    seen = Seen()
    async with FakeUpstream.serve() as fake, WebhookReceiver.serve() as receiver:
        _script(fake)
        process = _launch(_env(data_dir, fake.base_url, receiver.url), output_file)
        server_process.append(process)

        async def listening() -> str | None:
            assert process.poll() is None, output_file.read_text()
            found = _LISTENING.search(output_file.read_text())
            return None if found is None else found[1]

        address = await wait_until(listening, timeout=20)
        async with httpx.AsyncClient(base_url=address, timeout=10) as client:
            finished = await run_lifetime(client, seen)
        # Every job's end and every notification is delivered before the server stops.
        await receiver.wait_until(lambda: len(receiver.accepted()) >= 2 * len(finished))
        process.send_signal(signal.SIGTERM)
        await trio.to_thread.run_sync(process.wait, 20)
        assert process.returncode == 0, output_file.read_text()[-3000:]
        # The keys did reach the upstream: the test is not vacuous.
        sent = {request.headers.get("authorization") for request in fake.requests}
        assert {f"Bearer {SERVER_KEY}", f"Bearer {USER_KEY}"} <= sent
        upstream_requests = len(fake.requests)

    output = output_file.read_bytes()
    stored = b"".join(path.read_bytes() for path in sorted(data_dir.rglob("*")) if path.is_file())
    webhooks = b"".join(delivery.body for delivery in receiver.deliveries)
    places = {
        "the log": output,
        "the answers": b"\n".join(seen.answers),
        "the webhooks": webhooks,
        "the data directory": stored,
    }
    found_leaks = [
        leak
        for where, haystack in places.items()
        for secret, name in SECRETS.items()
        for leak in leaks(haystack, secret, f"{name} in {where}")
    ]
    # The callers' tokens are credentials too: never logged, never shown.
    found_leaks += [
        f"a token in {where}"
        for where, haystack in places.items()
        for minted in _MINTED.values()
        if minted.encode() in haystack
    ]
    lines = _log_lines(output)
    searched = sum(len(pieces(secret)) for secret in SECRETS)
    print(
        f"\nsecrets: {len(output.splitlines())} lines of output ({len(lines)} structured), "
        f"{len(seen.answers)} answers, {len(receiver.deliveries)} webhooks and "
        f"{len(stored):,} stored bytes searched for {searched} pieces of {len(SECRETS)} "
        f"secrets; keys on {upstream_requests} upstream requests; {len(found_leaks)} found"
    )
    figures.record(
        Figure(
            test="secrets",
            injected="server and user API keys through a whole server lifetime, echoed back "
            "by the upstream; debug logs, answers, webhooks and the store grepped",
            times=upstream_requests,
            jobs=len(finished) + 3,
            lost=len(found_leaks),
            what_lost="secret leaks",
        )
    )
    assert not found_leaks, "\n".join(found_leaks[:20])

    # What happened is what the test meant: the jobs ended as their upstream made them.
    assert {name: job["status"] for name, job in finished.items()} == {
        "server key": "complete",
        "user key": "complete",
        "server key refused": "error",
        "user key refused": "error",
        "upstream down": "error",
        "revoked mid-stream": "error",
        "garbage": "error",
        "seed, user key": "complete",
        "seed, refused": "error",
    }
    assert "[redacted]" in finished["server key refused"]["error"]
    assert "[redacted]" in finished["garbage"]["error"]
    # The redaction does not over-reach: the usage counts show, in answers and in the log.
    usage = finished["server key"]["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (
        PROMPT_TOKENS,
        COMPLETION_TOKENS,
    )
    ended = [
        line for line in lines if line.get("event") == "job finished" and line.get("prompt_tokens")
    ]
    assert ended, "no job finished line with its usage"
    assert {(line["prompt_tokens"], line["completion_tokens"]) for line in ended} == {
        (PROMPT_TOKENS, COMPLETION_TOKENS)
    }
    # The run logged at every level: debug lines from the service and from httpx's stack.
    levels = {line.get("level") for line in lines}
    assert {"debug", "info"} <= levels, levels
    assert b"DEBUG:httpcore" in output
