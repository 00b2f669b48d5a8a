"""Fuzz the HTTP API from its own OpenAPI document, over real HTTP.

Schemathesis reads ``/openapi.json`` from a running server and, for every
operation, generates requests that fit the document (positive) and requests
that break it (negative). Each response must:

- never be a 5xx;
- have a documented status code, content type, headers and body (for event
  streams: every event read, see below);
- accept what the document accepts and reject what it rejects (4xx);
- answer 401 without the bearer token where the document asks for one;
- answer errors in exactly one shape: ``{"error": {"code", "message"}}``, or
  ``{"error": "<message>"}`` from the seed's ``/api/...`` handlers. A request
  that no route takes (unknown path, wrong method) is answered by the router in
  the v1 shape, under ``/api/`` too.

Event streams may never end, so they are read for at most
:data:`STREAM_READ_SECONDS`; the events read by then are checked against the
document. A job's stream ends by itself once the job has finished, so the
streams of the finished jobs the fixture made are checked whole.

Schemathesis drives requests synchronously, so the server runs in a thread of
its own under ``trio.run``. Examples are derandomized so that a run is
reproducible; the examples per operation are few to keep the module fast.
The tests after the fuzz send what the generator does not reach, or reaches
rarely (deep nesting, huge numbers, unusual digits): the bugs found around
the fuzzing, kept fixed.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx
import orjson
import pytest
import schemathesis
import structlog
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from starlette.requests import Request

from actors.config import ServiceConfig
from actors.http.auth import TokenAuthority
from actors.http.errors import SEED_PREFIX, internal_error_handler
from actors.http.openapi import openapi_document
from actors.http.server import serve

JWT_SECRET = "fuzz-tests-jwt-secret-0123456789abcdef"
EXAMPLES_PER_OPERATION = 25
# How long an event stream is read before the fuzzer stops and checks what came.
STREAM_READ_SECONDS = 0.3
# Keep-alive comments come often enough that a stream read never idles out.
KEEPALIVE_SECONDS = 0.05

DOCUMENT = openapi_document()
OPERATIONS = [(method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item]


def _needs_token(method: str, path: str) -> bool:
    operation = DOCUMENT["paths"][path][method.lower()]
    return bool(operation.get("security", DOCUMENT["security"]))


def _negatable(method: str, path: str) -> bool:
    """Whether a request can break the document: a token to leave out, a parameter or a body."""
    operation = DOCUMENT["paths"][path][method.lower()]
    return _needs_token(method, path) or bool(
        operation.get("parameters") or operation.get("requestBody")
    )


# Operations without any input have no negative requests: schemathesis cannot make one.
CASES = [
    pytest.param(method, path, mode, id=f"{method} {path} {mode.value}")
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or _negatable(method, path)
]


class LiveServer:
    """:func:`actors.http.server.serve` in a thread of its own, for synchronous clients.

    ``with LiveServer(config) as server`` blocks until the server listens (or
    raises if it failed to start) and, on exit, stops it and waits for it.
    """

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.base_url = ""
        self.tokens = TokenAuthority(JWT_SECRET)
        self._listening = threading.Event()
        self._failure: BaseException | None = None
        self._trio_token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="fuzz-server", daemon=True)

    def _run(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as error:  # reported by __enter__ / __exit__ in the test thread
            self._failure = error
        finally:
            self._listening.set()

    async def _serve(self) -> None:
        self._stop = trio.Event()
        self._trio_token = trio.lowlevel.current_trio_token()

        def on_ready(addresses: list[str], tokens: TokenAuthority | None) -> None:
            assert tokens is not None
            self.base_url = addresses[0]
            self.tokens = tokens
            self._listening.set()

        await serve(self.config, stop=self._stop, on_ready=on_ready, keepalive=KEEPALIVE_SECONDS)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        assert self._listening.wait(10), "the server did not start listening in 10 s"
        if self._failure is not None:
            raise RuntimeError("the server failed to start") from self._failure
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._thread.is_alive():
            assert self._trio_token is not None and self._stop is not None
            trio.from_thread.run_sync(self._stop.set, trio_token=self._trio_token)
        self._thread.join(10)
        assert not self._thread.is_alive(), "the server did not stop in 10 s"
        if self._failure is not None:
            raise RuntimeError("the server failed") from self._failure


class FuzzTarget:
    """The running server, the schema read from it, and ids of real jobs and notifications."""

    def __init__(self, server: LiveServer, token: str) -> None:
        self.server = server
        self.token = token
        self.schema = schemathesis.openapi.from_url(
            f"{server.base_url}/openapi.json",
            config=schemathesis.Config.from_dict(
                {
                    "auth": {"openapi": {"bearer": {"bearer": token}}},
                    "checks": {
                        # Any client error rejects a request: 413 too (a body past the cap).
                        "negative_data_rejection": {"expected-statuses": ["4xx"]},
                        # A valid request with the (admin) token is served, or meets a
                        # missing id, the body cap or a job cap.
                        "positive_data_acceptance": {
                            "expected-statuses": ["2xx", "404", "413", "429", "503"]
                        },
                    },
                }
            ),
        )
        self.job_ids: list[str] = []
        self.notification_ids: list[str] = []

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.server.base_url,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10,
        )


def _finished_jobs(client: httpx.Client, count: int) -> list[str]:
    """Start ``count`` jobs and wait until all have finished; their ids."""
    ids = []
    for index in range(count):
        body = {
            "model": "fuzz-model",
            "messages": [{"role": "user", "content": f"question {index}"}],
            "thread_id": f"fuzz-thread-{index}",
            "message_id": f"fuzz-message-{index}",
        }
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    for job_id in ids:
        # Polled, not followed: a job someone follows as it ends is watched, and
        # a watched job sends no notification (polls do not count: watch_window=0).
        deadline = time.monotonic() + 10.0
        while (status := client.get(f"/v1/jobs/{job_id}").json()["status"]) in (
            "queued",
            "streaming",
        ) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert status == "complete", status
    return ids


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    config = ServiceConfig(
        store="sqlite",
        data_dir=tmp_path_factory.mktemp("fuzz"),
        upstream="simulated",
        simulated_tokens_per_second=100_000.0,
        allow_user_api_keys=True,
        max_concurrent_jobs=10_000,
        max_jobs_per_user=10_000,
        drain_timeout=0.0,
        watch_window=0.0,
        host="127.0.0.1",
        port=0,
        jwt_secret=JWT_SECRET,
    )
    # The server logs from its own thread, past the capture of the test that caused it;
    # collected here, the log lines do not litter the report.
    with structlog.testing.capture_logs() as logs, LiveServer(config) as server:
        fuzz = FuzzTarget(server, server.tokens.mint("fuzzer", "fuzz-space", admin=True))
        with fuzz.client() as client:
            fuzz.job_ids = _finished_jobs(client, 3)
            # The notification follows the job's final status by a moment.
            listed = poll(lambda: client.get("/v1/notifications").json()["notifications"], 3)
        fuzz.notification_ids = [notification["id"] for notification in listed]
        yield fuzz
        with fuzz.client() as client:
            assert_nothing_lost(client)
    errors = [entry for entry in logs if entry["log_level"] in ("error", "critical")]
    assert not errors, errors


def poll(fetch: Callable[[], list[Any]], count: int, timeout: float = 10.0) -> list[Any]:
    """``fetch()`` again until it returns ``count`` items (asserted), for ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while len(items := fetch()) != count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(items) == count, items
    return items


def assert_nothing_lost(client: httpx.Client) -> None:
    """Every job the fuzzing started has finished, and no actor ever failed.

    A job left streaming, or a crashed actor, would be an input that broke the
    service without a 5xx to show for it.
    """
    poll(
        lambda: [
            job
            for status in ("queued", "streaming")
            for job in client.get(f"/v1/jobs?status={status}").json()["jobs"]
        ],
        0,
    )
    for job in client.get("/v1/jobs").json()["jobs"]:
        assert job["status"] in ("complete", "error", "aborted"), job
        if job["status"] == "error":
            assert job["error"], job
    tree = client.get("/v1/system/actors").json()
    nodes = [tree]
    while nodes:
        node = nodes.pop()
        assert node["restarts"] == 0 and node["last_failure"] is None, node
        nodes.extend(node["children"])


# -- the error shape ------------------------------------------------------------------------


def _route_pattern(path: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(path)) + "$")


ROUTES = [(method, _route_pattern(path)) for method, path in OPERATIONS]


def _routed(method: str, path: str) -> bool:
    """Whether a route takes ``method`` on ``path`` (decoded, as the router sees it)."""
    return any(method == allowed and pattern.match(path) for allowed, pattern in ROUTES)


def expected_error_shape(method: str, url: str) -> str:
    """``"seed"`` if a seed handler answers ``method url``; ``"v1"`` otherwise."""
    path = unquote(urlsplit(url).path)
    return "seed" if path.startswith(SEED_PREFIX) and _routed(method, path) else "v1"


def error_shape_problem(status: int, content: bytes, shape: str) -> str | None:
    """What is wrong with an error response body, or None if it has exactly ``shape``."""
    if status < 400:
        return None
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return f"the {status} body is not JSON: {content[:200]!r}"
    if shape == "seed":
        # The seed's abort route adds ``aborted: false`` to its 401.
        if status == 401 and isinstance(body, dict) and body.get("aborted") is False:
            body = {key: value for key, value in body.items() if key != "aborted"}
        if not (isinstance(body, dict) and body.keys() == {"error"}):
            return f'a seed error must be {{"error": "<message>"}}, got {body!r}'
        if not isinstance(body["error"], str) or not body["error"]:
            return f"a seed error message must be a non-empty string, got {body!r}"
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if not (isinstance(body, dict) and body.keys() == {"error"} and isinstance(error, dict)):
        return f'an error must be {{"error": {{"code", "message"}}}}, got {body!r}'
    if error.keys() != {"code", "message"}:
        return f"an error must have exactly a code and a message, got {body!r}"
    if not all(isinstance(error[key], str) and error[key] for key in ("code", "message")):
        return f"an error's code and message must be non-empty strings, got {body!r}"
    return None


@schemathesis.check
def one_error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx and 5xx body has the one error shape of its route family."""
    shape = expected_error_shape(response.request.method, response.request.url)
    problem = error_shape_problem(response.status_code, response.content, shape)
    if problem is not None:
        raise AssertionError(problem)
    return None


# -- the fuzz -------------------------------------------------------------------------------


def _with_real_ids(operation: Any, mode: GenerationMode, target: FuzzTarget) -> Any:
    """Generated cases, plus for positive ones cases on the fixture's real jobs or notifications.

    Random ids are never found, so without these the 200 answers of the
    operations on one job or notification would go untested.
    """
    generated = operation.as_strategy(generation_mode=mode)
    names = {parameter["name"] for parameter in operation.definition.raw.get("parameters", [])}
    if mode is not GenerationMode.POSITIVE:
        return generated
    pinned = []
    if "job_id" in names:
        pinned = [{"job_id": job_id} for job_id in target.job_ids]
    elif "notification_id" in names:
        pinned = [{"notification_id": one} for one in target.notification_ids]
    return st.one_of(
        generated,
        *(operation.as_strategy(generation_mode=mode, path_parameters=p) for p in pinned),
    )


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_every_response_matches_the_document(
    target: FuzzTarget, method: str, path: str, mode: GenerationMode
) -> None:
    operation = target.schema[path][method]
    raw = operation.definition.raw
    streams = "text/event-stream" in orjson.dumps(raw).decode()
    # An event stream may never end: read what comes in a short while, then check that.
    timeout = STREAM_READ_SECONDS if streams else 10.0
    # Without parameters or a body, the cases differ only in their token: a few will do.
    has_inputs = bool(raw.get("parameters") or raw.get("requestBody"))
    answered: set[int] = set()

    @settings(
        max_examples=EXAMPLES_PER_OPERATION if has_inputs else 3,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=_with_real_ids(operation, mode, target))
    def fuzz(case: Any) -> None:
        response = case.call_and_validate(base_url=target.server.base_url, timeout=timeout)
        answered.add(response.status_code)

    fuzz()
    # The fuzzing reached the operation's purpose, or (negative) its refusals.
    if mode is GenerationMode.POSITIVE:
        assert any(200 <= status < 300 for status in answered), answered
    else:
        assert any(400 <= status < 500 for status in answered), answered


def test_the_served_document_is_the_documented_one(target: FuzzTarget) -> None:
    with target.client() as client:
        served = client.get("/openapi.json")
    assert served.status_code == 200
    assert served.json() == orjson.loads(orjson.dumps(DOCUMENT))
    assert target.schema.raw_schema == served.json()


# -- inputs the generator does not reach ----------------------------------------------------


def _nested(depth: int) -> Any:
    """A string in ``depth`` lists."""
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def _chat(**changes: Any) -> dict[str, Any]:
    body = {
        "model": "fuzz-model",
        "messages": [{"role": "user", "content": "hello"}],
        "thread_id": "t",
        "message_id": "m",
    }
    return {**body, **changes}


def _seed_chat(**changes: Any) -> dict[str, Any]:
    body = {
        "model": "fuzz-model",
        "messages": [{"role": "user", "content": "hello"}],
        "_background": True,
        "_threadId": "t",
        "_messageId": "m",
    }
    return {**body, **changes}


def _jobs_of(client: httpx.Client) -> set[str]:
    return {job["id"] for job in client.get("/v1/jobs").json()["jobs"]}


def assert_rejected(response: httpx.Response, status: int, message: str) -> None:
    shape = expected_error_shape(response.request.method, str(response.request.url))
    assert response.status_code == status, response.text
    assert error_shape_problem(status, response.content, shape) is None
    body = response.json()
    got = body["error"] if shape == "seed" else body["error"]["message"]
    assert message in got, got


DEEP_BODIES: list[tuple[str, Callable[[], dict[str, Any] | str], str]] = [
    (
        "/v1/jobs",
        lambda: _chat(messages=[{"role": "user", "content": _nested(300)}]),
        "messages[0].content: nested more than 64 levels deep",
    ),
    (
        "/v1/jobs",
        lambda: _chat(messages=[{"role": "user", "content": _nested(65)}]),
        "messages[0].content: nested more than 64 levels deep",
    ),
    (
        "/v1/jobs",
        lambda: _chat(params={"extra": _nested(300)}),
        "params: nested more than 64 levels deep",
    ),
    (
        "/v1/jobs",
        lambda: _chat(messages=[{"role": "assistant", "tool_calls": [{"function": _nested(300)}]}]),
        "messages[0].tool_calls: nested more than 64 levels deep",
    ),
    ("/v1/jobs", lambda: "[" * 2000 + "]" * 2000, "the body is not valid JSON"),
    ("/api/openrouter/stream", lambda: _seed_chat(extra=_nested(300)), "params: nested"),
    (
        "/api/openrouter/stream",
        lambda: _seed_chat(messages=[{"role": "user", "content": _nested(300)}]),
        "messages[0].content: nested more than 64 levels deep",
    ),
]


@pytest.mark.parametrize(("path", "make_body", "message"), DEEP_BODIES)
def test_deeply_nested_bodies_are_refused_and_start_nothing(
    target: FuzzTarget, path: str, make_body: Callable[[], Any], message: str
) -> None:
    status = 400 if path.startswith(SEED_PREFIX) or "JSON" in message else 422
    with target.client() as client:
        before = _jobs_of(client)
        body = make_body()
        # The standard library's encoder: orjson refuses to write such deep nesting.
        response = client.post(path, content=body if isinstance(body, str) else json.dumps(body))
        assert_rejected(response, status, message)
        assert _jobs_of(client) == before


def test_content_nested_64_levels_deep_is_accepted(target: FuzzTarget) -> None:
    # The list of parts, a part, and 62 lists in a key the upstream may know.
    part = {"type": "text", "text": "x", "extension": _nested(62)}
    with target.client() as client:
        body = _chat(messages=[{"role": "user", "content": [part]}], params={"a": {}})
        response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "messages": [{"role": 1}]},
        {"model": "m", "messages": {"role": "user"}},
        {"model": "m", "messages": "hello"},
        {"model": "m", "messages": [["user", "hello"]]},
        {"model": "m", "messages": [{"role": "user", "content": "x", "extra": 1}]},
    ],
    ids=["role-not-text", "object", "string", "list-of-lists", "extra-key"],
)
def test_seed_stream_refuses_malformed_messages_with_400(
    target: FuzzTarget, body: dict[str, Any]
) -> None:
    with target.client() as client:
        response = client.post("/api/openrouter/stream", json=body)
    assert response.status_code == 400, response.text
    assert response.json() == {"error": "Invalid messages"}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"_background": "yes"}, "_background: must be true or false"),
        ({"_threadId": "   "}, "Missing _threadId or _messageId"),
        ({"_messageId": 7}, "Missing _threadId or _messageId"),
        ({"_background": False, "_threadId": 7}, "_threadId: must be a string"),
        ({"_background": False, "_messageId": ""}, "_messageId: must not be empty"),
        ({"_threadId": "t" * 201}, "_threadId: at most 200 characters"),
        ({"model": " "}, "Missing model"),
        ({"model": "m" * 201}, "model: at most 200 characters"),
    ],
)
def test_seed_stream_checks_its_own_fields(
    target: FuzzTarget, changes: dict[str, Any], message: str
) -> None:
    with target.client() as client:
        before = _jobs_of(client)
        response = client.post("/api/openrouter/stream", json=_seed_chat(**changes))
        assert_rejected(response, 400, message)
        assert _jobs_of(client) == before


UNUSUAL_NUMBERS = [
    "\u00b2",  # a digit to str.isdigit(), not to int()
    "\u0661\u0662",  # Arabic-Indic digits
    "\uff11",  # a fullwidth digit
    "1" * 5000,  # more digits than int() converts
    str(2**63),  # past SQLite's integers
    "",
    " 1",
    "+1",
    "-1",
    "1.0",
]


@pytest.mark.parametrize("raw", UNUSUAL_NUMBERS, ids=lambda raw: repr(raw)[:20])
@pytest.mark.parametrize(
    "route",
    [
        "/v1/jobs/{job}?offset=",
        "/v1/jobs/{job}?reasoning_offset=",
        "/v1/jobs/{job}/events?after=",
        "/v1/notifications?limit=",
    ],
)
def test_numbers_in_queries_are_digits_in_range(target: FuzzTarget, route: str, raw: str) -> None:
    with target.client() as client:
        response = client.get(route.format(job=target.job_ids[0]) + quote(raw))
    assert_rejected(response, 422, "must be")


# HTTP strips the whitespace around a header value, so " 1" arrives as "1".
@pytest.mark.parametrize(
    "raw", [raw for raw in UNUSUAL_NUMBERS if raw == raw.strip() or not raw.strip()]
)
def test_last_event_id_is_a_seq(target: FuzzTarget, raw: str) -> None:
    with target.client() as client:
        response = client.get(
            f"/v1/jobs/{target.job_ids[0]}/events", headers={b"Last-Event-ID": raw.encode()}
        )
    assert_rejected(response, 422, "Last-Event-ID / after: must be a delta seq")


@pytest.mark.parametrize(
    ("route", "ok"),
    [
        ("/v1/jobs/{job}?offset=9223372036854775807", 200),
        ("/v1/jobs/{job}?reasoning_offset=9223372036854775807", 200),
        ("/v1/jobs/{job}/events?after=9223372036854775807", 200),
        ("/v1/notifications?limit=500", 200),
        ("/v1/notifications?limit=501", 422),
    ],
)
def test_numbers_at_the_limits(target: FuzzTarget, route: str, ok: int) -> None:
    with target.client() as client:
        response = client.get(route.format(job=target.job_ids[0]))
    assert response.status_code == ok, response.text
    if ok == 200 and "?offset" in route:
        assert response.json()["content_delta"] == ""
    if ok == 200 and "reasoning_offset" in route:
        assert response.json()["reasoning"] == ""


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("unread=1", 200),
        ("unread=true", 200),
        ("unread=no", 200),
        ("unread=", 422),
        ("unread=maybe", 422),
        ("unread=TRUE", 422),
    ],
)
def test_unread_is_a_flag(target: FuzzTarget, query: str, status: int) -> None:
    with target.client() as client:
        response = client.get(f"/v1/notifications?{query}")
    if status == 200:
        assert response.status_code == 200, response.text
    else:
        assert_rejected(response, 422, "unread: one of 1, true, yes, 0, false, no")


def test_an_empty_status_filter_is_refused(target: FuzzTarget) -> None:
    with target.client() as client:
        response = client.get("/v1/jobs?status=")
    assert_rejected(response, 422, "status: one of")


@pytest.mark.parametrize("path", ["/api/jobs/x/status", "/v1/jobs/x"])
async def test_an_internal_error_has_the_shape_of_its_route_family(path: str) -> None:
    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}
    response = await internal_error_handler(Request(scope), RuntimeError("boom"))
    assert response.status_code == 500
    shape = "seed" if path.startswith(SEED_PREFIX) else "v1"
    assert error_shape_problem(500, bytes(response.body), shape) is None
    assert b"boom" not in bytes(response.body)


def test_route_family_of_an_error() -> None:
    assert expected_error_shape("GET", "http://h/api/jobs/abc/status") == "seed"
    assert expected_error_shape("POST", "http://h/api/openrouter/stream") == "seed"
    # No route takes these, so the router answers in the v1 shape.
    assert expected_error_shape("GET", "http://h/api/openrouter/stream") == "v1"
    assert expected_error_shape("GET", "http://h/api/jobs/a%2Fb/status") == "v1"
    assert expected_error_shape("GET", "http://h/v1/jobs/abc") == "v1"


def test_the_documented_blank_characters_are_those_the_api_strips() -> None:
    pattern = re.compile(
        DOCUMENT["components"]["schemas"]["CreateJob"]["properties"]["model"]["pattern"]
    )
    characters = [chr(code) for code in range(0x110000)]
    assert [c for c in characters if not pattern.fullmatch(c)] == [
        c for c in characters if c.isspace()
    ]
