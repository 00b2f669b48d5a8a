"""Hostile requests against every route of the served OpenAPI document, over real HTTP.

A corpus built from ``/openapi.json`` goes to a real server on 127.0.0.1 (SQLite store,
simulated model): every operation gets, where it applies,

- malformed JSON, wrong types, huge and deeply nested bodies;
- odd unicode (lone surrogates, NULs, bidi overrides, non-characters) in bodies,
  ids and queries;
- negative, huge and non-decimal offsets, and bogus ``Last-Event-ID`` values;
- path tricks in ids (``..``, ``%2F``, encoded NULs, broken escapes);
- header floods, duplicate ``Authorization`` headers, chunked bodies past the cap;
- methods no route takes;

then seeded random mutations of all that (``TROUPE_HOSTILE_SEED`` replays a run). Each
answer must come within :data:`PER_REQUEST` seconds, never be a 5xx, and carry every
error in its route family's shape (``{"error": {"code", "message"}}``, or the seed's
``{"error": "<message>"}``); where the answer is known (an offset that is a number in
range is served, any other refused) it must be that one. Afterwards nothing may be
lost: every job an answer acknowledged is listed, reads back with the ids it was
created with and ends, no actor ever failed and the server is ready.

What the HTTP layer refuses before any route sees it (a request head past hypercorn's
16 KiB, a NUL in a header, a broken chunk size) is sent on a raw socket: it gets a
bodiless 4xx from hypercorn at once, and the connection is closed.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, unquote

import attrs
import h11
import httpx
import orjson
import pytest
import structlog
import trio

from actors.http.openapi import openapi_document
from actors.http.schemas import MAX_QUERY_INT
from tests.http.conftest import ApiServer, make_config, run_api_server, wait_for_status
from tests.http.test_api_fuzz import error_shape_problem, expected_error_shape
from tests.reliability.bodies import OneChunk
from tests.reliability.figures import Figure, Figures, sized

PER_REQUEST: Final = 10.0
"""Seconds an answer may take, whole body included, before it counts as a hang."""
WORKERS: Final = 6
MAX_BODY: Final = 64 * 1024
MAX_CHAT_BODY: Final = 256 * 1024
SEED: Final = int(os.environ.get("TROUPE_HOSTILE_SEED", "20261207"))
RANDOM_PROBES: Final = sized(400, 20_000)
USER, WORKSPACE = "hostile", "hostile-space"

DOCUMENT: Final = openapi_document()
OPERATIONS: Final = [
    (method.upper(), path, operation)
    for path, item in DOCUMENT["paths"].items()
    for method, operation in item.items()
]
ALL_METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "BREW")

# Strings that break naive handling of text: each is tried as an id, a query value and
# a body field. Some are fine text (they must then round-trip exactly).
ODD_TEXT: Final = [
    "\x00",
    "a\x00b",
    "\u202eevil\u202c",  # a bidi override
    "\u200b",  # zero width space: not blank to str.strip()
    "\u3000",  # ideographic space: blank
    "e\u0301" * 50,  # combining marks
    "\U0001f4a9\U0001f9d1\u200d\U0001f680",  # astral characters and a ZWJ sequence
    "\ufeff",  # a byte order mark
    "\uffff\ufffe",  # non-characters
    "\U0010ffff",
    "'; DROP TABLE jobs; --",
    "${jndi:ldap://x}",
    "<script>alert(1)</script>",
    "../../etc/passwd",
    "x" * 201,  # one past the id limit
    "\r\nSet-Cookie: a=b",
]
# JSON texts that are not JSON (or not UTF-8): 400 everywhere.
MALFORMED_JSON: Final = [
    b"",
    b"{",
    b"}",
    b"{'model': 'm'}",
    b"nul",
    b"[1,]",
    b'{"model": "m",}',
    b'{"a": 1} trailing',
    b"\xef\xbb\xbf{}",  # UTF-8 with a BOM
    b"\xff\xfe{\x00}\x00",  # UTF-16
    b'{"model": "\xff"}',  # not UTF-8
    b'{"model": "\xed\xa0\x80"}',  # a lone surrogate, encoded
    b'{"model": "\xc0\xae"}',  # an overlong encoding
    b'{"model": "\\ud800"}',  # a lone surrogate, escaped
    b'{"model": "\\udc00x"}',
    b'{"n": NaN}',
    b'{"n": Infinity}',
    b'{"n": 1e400}',
    b'{"n": 0x10}',
    b"[" * 100_000,
    b'{"a":' * 50_000,
]
# Query values for the numeric parameters, beside those a test expects to be served.
NUMBERS: Final = [
    "-1",
    "-0",
    "+1",
    " 1",
    "1 ",
    "1.0",
    "1e3",
    "1_000",
    "0x10",
    "0b1",
    "0o7",
    "NaN",
    "inf",
    "",
    "\u0661\u0662",  # Arabic-Indic digits
    "\u00b2",
    "\uff11",  # fullwidth
    "1\x00",
    str(MAX_QUERY_INT + 1),
    str(2**64),
    "9" * 5000,
    "0",
    "00000000000000000000000000000000000000007",
    str(MAX_QUERY_INT),
    "500",
    "501",
]
# Ids as raw path segments: sent exactly as written, percent escapes and all.
PATH_SEGMENTS: Final = [
    "%2e%2e",
    "%2E%2E%2F%2E%2E",
    "..%2F..%2Fetc%2Fpasswd",
    "%2F",
    "a%2Fb",
    "%00",
    "a%00b",
    "%2500",
    "%FF%FE",
    "%ED%A0%80",
    "%C0%AE%C0%AE",
    "%",
    "%zz",
    "%u0000",
    "%20",
    "+",
    "a;b=c",
    "%3B%3F%23",
    "*",
    "~",
    "x" * 5000,
    "%E2%80%AE",
    "%F0%9F%92%A9",
]
# Literal dot segments, which httpx would resolve before sending: raw socket only.
DOT_SEGMENTS: Final = ["..", ".", "../..", "..;", "./x/.."]


def _statuses(value: Iterable[int] | None) -> frozenset[int] | None:
    return None if value is None else frozenset(value)


@attrs.frozen
class Probe:
    """One hostile request, and what may answer it.

    ``target`` is sent as written (path and query). ``expect`` is the set of
    statuses a right answer has, when the corpus knows it; otherwise any status
    below 500 will do. ``raw`` requests go on a socket of their own (see
    :func:`raw_exchange`); ``chunks`` then make a chunked body, sent until the
    server answers.
    """

    kind: str
    method: str
    target: str
    headers: tuple[tuple[str, str], ...] = ()
    content: bytes | None = None
    expect: frozenset[int] | None = attrs.field(default=None, converter=_statuses)
    raw: bool = False
    chunks: int = 0


@attrs.frozen
class Answer:
    status: int
    headers: httpx.Headers
    body: bytes
    seconds: float


@attrs.define
class Tally:
    """What the corpus got, for the checks after it and the figure."""

    tried: int = 0
    problems: list[str] = attrs.Factory(list)
    created: dict[str, dict[str, str]] = attrs.Factory(dict)
    """Job id -> the ids and model it was created with (for the read-back)."""
    slowest: float = 0.0
    requests: dict[str, str] = attrs.Factory(dict)
    resent: list[str] = attrs.Factory(list)
    """Job id -> the request that made it, for the report."""
    by_kind: dict[str, int] = attrs.Factory(dict)


# -- the corpus ---------------------------------------------------------------------------


def _chat(**changes: Any) -> dict[str, Any]:
    body = {
        "model": "hostile-model",
        "messages": [{"role": "user", "content": "hello"}],
        "thread_id": "t",
        "message_id": "m",
    }
    return {**body, **changes}


def _seed(**changes: Any) -> dict[str, Any]:
    body = {
        "model": "hostile-model",
        "messages": [{"role": "user", "content": "hello"}],
        "_background": True,
        "_threadId": "t",
        "_messageId": "m",
    }
    return {**body, **changes}


def _json(value: Any) -> bytes:
    # The standard library's encoder writes any nesting and any code point; orjson would not.
    return json.dumps(value).encode()


def _nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


WRONG_VALUES: Final = [None, 0, -1, 1.5, True, [], {}, [None], {"$gt": ""}, 2**70]


def _body_probes() -> Iterable[Probe]:
    """Malformed, mistyped, huge and nested bodies on the three routes that read one."""
    json_type = ("content-type", "application/json")
    routes = [
        ("POST", "/v1/jobs", _chat, 422),
        ("POST", "/api/openrouter/stream", _seed, 400),
    ]
    for method, target, make, refused in routes:
        for content in MALFORMED_JSON:
            yield Probe("malformed JSON", method, target, (json_type,), content, frozenset({400}))
        for value in ([], "body", 7, None):
            yield Probe("wrong types", method, target, (json_type,), _json(value), {400, 422})
        fields = ["model", "messages"]
        fields += ["thread_id", "message_id"] if make is _chat else ["_threadId", "_messageId"]
        for field in fields:
            for wrong in WRONG_VALUES:
                if make is _seed and field.startswith("_") and wrong is None:
                    continue  # the seed's ids are optional: null means absent
                body = _json(make(**{field: wrong}))
                yield Probe("wrong types", method, target, (json_type,), body, {refused})
        for wrong in WRONG_VALUES:
            for message in ({"role": wrong, "content": "x"}, {"role": "user", "content": wrong}):
                if message["content"] == []:
                    continue  # an empty list of parts is content
                body = _json(make(messages=[message]))
                yield Probe("wrong types", method, target, (json_type,), body, {refused})
        if make is _chat:
            for wrong in WRONG_VALUES:
                if not isinstance(wrong, dict):
                    body = _json(_chat(params=wrong))
                    yield Probe("wrong types", method, target, (json_type,), body, {422})
            body = _json(_chat(thread_id="t", colour="blue"))
            yield Probe("wrong types", method, target, (json_type,), body, {422})
        else:
            for wrong in (0, "yes", None, [], {}):
                if wrong is not None:
                    body = _json(_seed(_background=wrong))
                    yield Probe("wrong types", method, target, (json_type,), body, {400})
        # Huge: declared past the cap; a body just under it; many keys; many messages.
        cap = MAX_CHAT_BODY
        yield Probe("huge bodies", method, target, (json_type,), b" " * (cap + 1), {413})
        big = make(messages=[{"role": "user", "content": "y" * (cap - 1000)}])
        yield Probe("huge bodies", method, target, (json_type,), _json(big))
        keys = make(**{f"k{i}": i for i in range(5000)}) if make is _seed else None
        if keys is not None:
            yield Probe("huge bodies", method, target, (json_type,), _json(keys))
        many = make(messages=[{"role": "user", "content": "x"}] * 257)
        yield Probe("huge bodies", method, target, (json_type,), _json(many), {refused})
        chunked = cap // 8192 + 8
        yield Probe("huge bodies", method, target, (json_type,), chunks=chunked, expect={413})
        for depth in (65, 300, 900):
            for nest in (
                make(messages=[{"role": "user", "content": _nested(depth)}]),
                make(messages=[{"role": "assistant", "tool_calls": [_nested(depth)]}]),
            ):
                yield Probe("deep nesting", method, target, (json_type,), _json(nest), {refused})
        yield Probe(
            "deep nesting", method, target, (json_type,), b"[" * 900 + b"]" * 900, {400, 422}
        )
        for text in ODD_TEXT:
            for field in fields[0:1] + fields[2:]:
                yield Probe(
                    "odd unicode", method, target, (json_type,), _json(make(**{field: text}))
                )
            content = make(messages=[{"role": "user", "content": text}])
            yield Probe("odd unicode", method, target, (json_type,), _json(content))
    mute = "/v1/threads/t/mute"
    for content in MALFORMED_JSON:
        refusal = 413 if len(content) > MAX_BODY else 400  # this route's cap is lower
        yield Probe("malformed JSON", "PUT", mute, (json_type,), content, {refusal})
    for wrong in WRONG_VALUES:
        if wrong is not True:
            body = _json({"muted": wrong})
            yield Probe("wrong types", "PUT", mute, (json_type,), body, frozenset({422}))
    yield Probe("wrong types", "PUT", mute, (json_type,), _json({"muted": True, "x": 1}), {422})
    yield Probe("huge bodies", "PUT", mute, (json_type,), b" " * (MAX_BODY + 1), frozenset({413}))
    chunked = MAX_BODY // 8192 + 8
    yield Probe("huge bodies", "PUT", mute, (json_type,), chunks=chunked, expect={413})
    yield Probe("deep nesting", "PUT", mute, (json_type,), b"[" * 60_000, frozenset({400}))


def _query_probes(job_id: str) -> Iterable[Probe]:
    """Every query parameter of the document with every odd number, and bogus Last-Event-IDs."""
    numeric = {
        f"/v1/jobs/{job_id}": ["offset", "reasoning_offset"],
        f"/v1/jobs/{job_id}/events": ["after"],
        "/v1/notifications": ["limit"],
    }
    for target, names in numeric.items():
        for name in names:
            upper = 500 if name == "limit" else MAX_QUERY_INT
            for raw in NUMBERS:
                served = raw.isascii() and raw.isdigit() and len(raw) <= 19 and int(raw) <= upper
                expect = frozenset({200 if served else 422})
                yield Probe("offsets", "GET", f"{target}?{name}={quote(raw)}", expect=expect)
            yield Probe("offsets", "GET", f"{target}?{name}=1&{name}=x", expect=frozenset({422}))
            yield Probe("offsets", "GET", f"{target}?{name}=%FF", expect=frozenset({422}))
    for raw in ("", "QUEUED", "COMPLETE", "complete,error", "%00", "*", "%E2%80%AE"):
        yield Probe("offsets", "GET", f"/v1/jobs?status={raw}", expect=frozenset({422}))
    for raw in ("", "2", "TRUE", "on", "%00", "yes%00"):
        yield Probe("offsets", "GET", f"/v1/notifications?unread={raw}", expect=frozenset({422}))
    yield Probe("offsets", "GET", "/v1/jobs?" + "&".join(f"p{i}=v" for i in range(1000)))
    events = f"/v1/jobs/{job_id}/events"
    for raw in NUMBERS:
        if raw != raw.strip() or not raw.isprintable() or not raw.isascii():
            continue  # HTTP strips the spaces around a header value; h11 refuses controls
        served = raw.isdigit() and len(raw) <= 19 and int(raw) <= MAX_QUERY_INT
        yield Probe(
            "Last-Event-ID",
            "GET",
            events,
            (("Last-Event-ID", raw),),
            expect={200 if served else 422},
        )
    for raw in (
        "1, 2",
        "abc",
        "\u00ff".encode().decode("latin-1"),
        "1" * 8000,
        "-9223372036854775808",
    ):
        yield Probe("Last-Event-ID", "GET", events, (("Last-Event-ID", raw),), expect={422})
    yield Probe(
        "Last-Event-ID",
        "GET",
        events + "?after=x",
        (("Last-Event-ID", "1"),),
        expect=frozenset({200}),  # the header wins over the query
    )
    twice = (("Last-Event-ID", "1"), ("Last-Event-ID", "x"))
    yield Probe("Last-Event-ID", "GET", events, twice)


def _id_routes() -> list[tuple[str, str, str]]:
    """Every operation with a path parameter: method, template, and the parameter's name."""
    found = []
    for method, path, operation in OPERATIONS:
        names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]
        if names:
            found.append((method, path, names[0]))
    return found


def _path_probes(job_id: str, notification_id: str) -> Iterable[Probe]:
    """Path tricks in every id of every route."""
    json_type = ("content-type", "application/json")
    muted = _json({"muted": True})
    for method, template, name in _id_routes():
        headers: tuple[tuple[str, str], ...] = ()
        content = None
        if name == "thread_id":
            headers, content = (json_type,), muted
        for segment in PATH_SEGMENTS + [quote(text, safe="") for text in ODD_TEXT]:
            target = template.replace("{" + name + "}", segment)
            # A thread id is any text: a mute may well be taken. A job or notification
            # id that no route made is never found; the seed's abort says so in a 200.
            expect = None if name == "thread_id" else frozenset({404, 405})
            if template == "/api/jobs/{job_id}/abort":
                expect = frozenset({200, 404})
            yield Probe("path tricks", method, target, headers, content, expect)
        for segment in DOT_SEGMENTS:
            target = template.replace("{" + name + "}", segment)
            yield Probe("path tricks", method, target, headers, content, raw=True)
    # Another owner's job through a trick: still the caller's own namespace.
    yield Probe("path tricks", "GET", f"/v1/jobs/{job_id}%00", expect=frozenset({404}))
    yield Probe("path tricks", "GET", f"/v1/jobs/{job_id}%2F..%2F", expect=frozenset({404}))
    yield Probe("path tricks", "GET", f"/v1/jobs/%2E%2E/{job_id}", expect=frozenset({404}))


def _header_probes(server: ApiServer, job_id: str) -> Iterable[Probe]:
    """Header floods on every route, and duplicate Authorization headers on protected ones."""
    mine = server.auth(USER, WORKSPACE)["Authorization"]
    other = server.auth("someone-else", WORKSPACE)["Authorization"]
    # Within the server's header limits, and past their count (but not their size).
    floods = [tuple((f"x-flood-{i}", "v" * 8) for i in range(n)) for n in (90, 400)]
    for method, path, operation in OPERATIONS:
        target = path.replace("{job_id}", job_id).replace("{notification_id}", "n")
        target = target.replace("{thread_id}", "t")
        headers: tuple[tuple[str, str], ...] = (("content-type", "application/json"),)
        content = _json({"muted": True}) if "mute" in path else _json(_chat())
        if "openrouter" in path:
            content = _json(_seed())
        if method in ("GET", "DELETE"):
            content = None
        for flood in floods:
            # Past the server's count of header fields, a 431 in the route's shape.
            many = len(flood) > server.config.http_max_headers
            expect = frozenset({431}) if many else None
            yield Probe("header floods", method, target, headers + flood, content, expect)
        # Past the 16 KiB hypercorn reads of a request head.
        big = tuple((f"x-flood-{i}", "v" * 100) for i in range(400))
        yield Probe("header floods", method, target, big, raw=True, expect=frozenset({431}))
        yield Probe("header floods", method, target, (("x-nul", "a\x00b"),), raw=True)
        if not operation.get("security", DOCUMENT["security"]):
            continue
        for pair in (
            (mine, "Bearer garbage"),
            ("Bearer garbage", mine),
            (mine, other),
            (mine, mine),
        ):
            dup = tuple(("Authorization", value) for value in pair)
            yield Probe("duplicate Authorization", method, target, headers + dup, content, {401})
    # The caller's own key, odd: the simulated model ignores it, but it must not break.
    for key in ("", " ", "k" * 12_000, "\u00e9\u00ff", "sk-or-\t-1"):
        value = (("X-Upstream-Api-Key", key), ("content-type", "application/json"))
        yield Probe("header floods", "POST", "/v1/jobs", value, _json(_chat()))
    yield Probe(
        "header floods",
        "POST",
        "/v1/jobs",
        (("content-type", "application/json"), ("transfer-encoding", "chunked")),
        chunks=-1,  # a chunk whose size is not hex
        raw=True,
        expect=frozenset({400}),
    )


def _taken_by(method: str, target: str) -> bool:
    """Whether an operation of the document takes ``method`` on ``target`` (a GET, HEAD too)."""
    path = unquote(target.split("?")[0])
    for allowed, template, _ in OPERATIONS:
        pattern = "^" + re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method in (allowed, "HEAD" if allowed == "GET" else ""):
            return True
    return False


def _method_probes(job_id: str) -> Iterable[Probe]:
    """Every method on every path: those no route takes are 405."""
    for path in dict.fromkeys(path for _, path, _ in OPERATIONS):
        target = path.replace("{job_id}", job_id).replace("{notification_id}", "n")
        target = target.replace("{thread_id}", "t")
        for method in ALL_METHODS:
            if not _taken_by(method, target):
                yield Probe("methods", method, target, expect=frozenset({405}))
            elif method == "HEAD":
                yield Probe("methods", method, target)  # an event stream's head, say
    yield Probe("methods", "GET", "/v1/jobs/" + job_id + "/nope", expect=frozenset({404}))


ALPHABET: Final = (
    "a0-_.~/%?&=#;:@!$'()*+, \t\x00\x7f\u00e9\u202e\u200b\ufeff\U0001f4a9\ud800\udfff{}[]\"\\"
)


def _random_text(rng: random.Random, longest: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, longest)))


def _mutated(rng: random.Random, body: bytes) -> bytes:
    """``body`` with a few bytes dropped, repeated, flipped or inserted."""
    data = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(data) + 1)
        choice = rng.randrange(4)
        if choice == 0 and at < len(data):
            del data[at]
        elif choice == 1:
            data[at:at] = data[at : at + rng.randint(1, 8)] * rng.randint(1, 30)
        elif choice == 2 and at < len(data):
            data[at] ^= 1 << rng.randrange(8)
        else:
            data[at:at] = _random_text(rng, 6).encode("utf-8", "surrogatepass")
    return bytes(data)


def _random_probes(rng: random.Random, job_id: str, count: int) -> Iterable[Probe]:
    """Seeded random mixes of the above: any route, any id, query and body mutation."""
    bodies = [_json(_chat()), _json(_seed()), _json({"muted": True})]
    for _ in range(count):
        method, path, operation = rng.choice(OPERATIONS)
        segment = quote(_random_text(rng, 12).encode("utf-8", "surrogatepass"), safe="")
        # httpx would resolve a dot segment before sending it (the corpus sends those raw).
        segment = segment if segment.strip(".") else segment.replace(".", "%2E") or "x"
        ids = {"job_id": rng.choice([job_id, segment]), "notification_id": segment}
        target = path
        for name, value in {**ids, "thread_id": segment}.items():
            target = target.replace("{" + name + "}", value)
        if rng.random() < 0.5:
            names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
            name = rng.choice(names or ["x"])
            value = quote(_random_text(rng, 10).encode("utf-8", "surrogatepass"), safe="")
            target += f"?{quote(name)}={value}"
        content = None
        headers: tuple[tuple[str, str], ...] = ()
        if method in ("POST", "PUT"):
            content = _mutated(rng, rng.choice(bodies))
            headers = (("content-type", "application/json"),)
        if rng.random() < 0.2:
            value = _random_text(rng, 20).encode("utf-8", "surrogatepass").decode("latin-1")
            value = "".join(c for c in value if c.isprintable()).strip()
            headers += (("Last-Event-ID", value),)
        yield Probe("random mutations", method, target, headers, content)


# -- sending ------------------------------------------------------------------------------


async def http_exchange(client: httpx.AsyncClient, probe: Probe, auth: dict[str, str]) -> Answer:
    """Send ``probe`` with httpx; the whole answer, or only its head for a live event stream.

    The caller's token goes along unless the probe brings Authorization headers itself.
    """
    headers = list(probe.headers)
    if not any(name.lower() == "authorization" for name, _ in headers):
        headers += list(auth.items())
    started = time.perf_counter()
    request = client.build_request(
        probe.method,
        probe.target,
        headers=[(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers],
        content=probe.content,
    )
    # The target goes as written: httpx would otherwise quote what it finds unsafe.
    request.url = request.url.copy_with(raw_path=probe.target.encode("latin-1"))
    if probe.content:
        # The server may answer (413, 400) before it has read the whole body.
        request.stream = OneChunk(probe.content)
    response = await client.send(request, stream=True)
    try:
        body = b""
        live = response.headers.get("content-type", "").startswith("text/event-stream")
        # The notification stream never ends; a job's (of a finished job) does.
        if not (live and "/notifications/events" in probe.target):
            body = await response.aread()
    finally:
        await response.aclose()
    return Answer(response.status_code, response.headers, body, time.perf_counter() - started)


async def raw_exchange(address: str, probe: Probe, auth: dict[str, str]) -> Answer:
    """Send ``probe`` on a socket of its own, with h11, reading the answer meanwhile.

    For what httpx will not send: a literal ``..`` in the path, a head past the
    server's limit, a NUL in a header, and chunked bodies (``chunks`` 8 KiB chunks,
    sent until the server answers; -1: one chunk with a size that is not hex).
    """
    host, port = address.removeprefix("http://").split(":")
    headers = [("host", host), *probe.headers, *auth.items()]
    if probe.chunks and not any(name == "transfer-encoding" for name, _ in headers):
        headers.append(("transfer-encoding", "chunked"))
    elif probe.content is not None:
        headers.append(("content-length", str(len(probe.content))))
    head = b"%s %s HTTP/1.1\r\n" % (probe.method.encode(), probe.target.encode("latin-1"))
    # Written by hand: h11 would refuse to send a NUL or an oversized head itself.
    head += b"".join(b"%s: %s\r\n" % (n.encode(), v.encode("latin-1")) for n, v in headers)
    head += b"\r\n"
    parser = h11.Connection(h11.CLIENT)
    # The parser only reads the answer: it is told of a plain request, written by hand below.
    told = "HEAD" if probe.method == "HEAD" else "GET"  # a HEAD's answer has no body
    parser.send(h11.Request(method=told, target="/", headers=[("host", host)]))
    parser.send(h11.EndOfMessage())
    started = time.perf_counter()
    answer: dict[str, Any] = {}
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:

        async def read_answer() -> None:
            body = bytearray()
            while True:
                event = parser.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some()
                    parser.receive_data(data)
                    if not data and "status" not in answer:
                        answer["status"] = 0  # closed without an answer
                        return
                elif isinstance(event, h11.Response):
                    answer["status"] = event.status_code
                    answer["headers"] = [
                        (k.decode(), v.decode("latin-1")) for k, v in event.headers
                    ]
                    if event.status_code == 200 and "/notifications/events" in probe.target:
                        answer["body"] = b""  # a live stream, which never ends
                        return
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    answer["body"] = bytes(body)
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_answer)
            try:
                await stream.send_all(head)
                if probe.content is not None:
                    await stream.send_all(probe.content)
                if probe.chunks == -1:
                    await stream.send_all(b"zz\r\nhello\r\n")
                for _ in range(max(probe.chunks, 0)):
                    if "body" in answer:
                        break
                    await stream.send_all(b"2000\r\n" + b" " * 8192 + b"\r\n")
                    await trio.lowlevel.checkpoint()
                if probe.chunks > 0 and "body" not in answer:
                    await stream.send_all(b"0\r\n\r\n")
            except trio.BrokenResourceError:
                pass  # it answered and closed; the reader has the answer
    return Answer(
        answer["status"],
        httpx.Headers(answer.get("headers", [])),
        answer.get("body", b""),
        time.perf_counter() - started,
    )


def judge(probe: Probe, answer: Answer) -> str | None:
    """What is wrong with ``answer`` to ``probe``, or None."""
    where = f"{probe.kind}: {probe.method} {probe.target[:120]!r}"
    if answer.status >= 500 or answer.status == 0:
        return f"{where} -> {answer.status} {answer.body[:300]!r}"
    if probe.expect is not None and answer.status not in probe.expect:
        return f"{where} -> {answer.status}, expected {sorted(probe.expect)}: {answer.body[:300]!r}"
    if answer.status >= 400 and probe.method != "HEAD":
        if probe.raw and not answer.body:
            return None  # refused by the HTTP layer, before any route
        shape = expected_error_shape(probe.method, "http://h" + probe.target.split("?")[0])
        problem = error_shape_problem(answer.status, answer.body, shape)
        if problem is not None:
            return f"{where} -> {problem}"
    return None


def note_created(probe: Probe, answer: Answer, tally: Tally) -> None:
    """Remember the job an answer acknowledged, with what it was asked for."""
    if probe.method != "POST" or answer.status not in (200, 202):
        return
    job_id = None
    path = probe.target.partition("?")[0]
    if path == "/v1/jobs":
        job_id = orjson.loads(answer.body)["id"]
    elif path == "/api/openrouter/stream":
        job_id = answer.headers.get("x-job-id")
        if job_id is None:
            job_id = orjson.loads(answer.body)["jobId"]
    if job_id is None:
        return
    body = json.loads(probe.content or b"{}")
    # The seed's ids have names of their own; a v1 name there is a parameter like any.
    names = ("thread_id", "message_id") if path == "/v1/jobs" else ("_threadId", "_messageId")
    tally.created[job_id] = {
        "model": body["model"],
        "thread_id": body.get(names[0]),
        "message_id": body.get(names[1]),
    }
    tally.requests[job_id] = f"{probe.kind}: {probe.method} {probe.target} {probe.content!r}"


async def run_corpus(server: ApiServer, probes: list[Probe]) -> Tally:
    """Send every probe, :data:`WORKERS` at a time; each answer judged as it comes."""
    tally = Tally()
    auth = server.auth(USER, WORKSPACE)
    send, receive = trio.open_memory_channel[Probe](len(probes))
    for probe in probes:
        send.send_nowait(probe)
    send.close()

    async def worker(client: httpx.AsyncClient) -> None:
        async for probe in receive:
            tally.tried += 1
            tally.by_kind[probe.kind] = tally.by_kind.get(probe.kind, 0) + 1
            try:
                with trio.fail_after(PER_REQUEST):
                    if probe.raw or probe.chunks:
                        answer = await raw_exchange(server.base_url, probe, auth)
                    else:
                        try:
                            answer = await http_exchange(client, probe, auth)
                        except httpx.LocalProtocolError:
                            # httpx will not send it (a header with spaces around): a
                            # peer that does not care gets it through all the same.
                            probe = attrs.evolve(probe, raw=True)
                            answer = await raw_exchange(server.base_url, probe, auth)
                        except httpx.RemoteProtocolError as error:
                            # A kept-alive connection the server closed as it was reused
                            # (its idle timeout): sent again on a connection of its own,
                            # where a server that drops the request shows as status 0.
                            tally.resent.append(f"{probe.method} {probe.target[:80]}: {error}")
                            answer = await raw_exchange(server.base_url, probe, auth)
            except trio.TooSlowError:
                tally.problems.append(f"{probe.kind}: {probe.method} {probe.target[:120]!r} hung")
                continue
            except httpx.TransportError as error:
                tally.problems.append(
                    f"{probe.kind}: {probe.method} {probe.target[:120]!r} "
                    f"{probe.headers!r:.200} {probe.content!r:.200}: no answer ({error!r})"
                )
                continue
            tally.slowest = max(tally.slowest, answer.seconds)
            problem = judge(probe, answer)
            if problem is not None:
                tally.problems.append(problem)
            note_created(probe, answer, tally)

    async with server.client(timeout=PER_REQUEST * 2) as client, trio.open_nursery() as nursery:
        for _ in range(WORKERS):
            nursery.start_soon(worker, client)
    return tally


# -- the test -----------------------------------------------------------------------------


@pytest.fixture
async def hostile_server(tmp_path: Path) -> AsyncIterator[ApiServer]:
    """A server on SQLite whose body caps are small enough to cross cheaply."""
    config = make_config(
        tmp_path,
        store="sqlite",
        simulated_tokens_per_second=100_000.0,
        max_concurrent_jobs=10_000,
        max_jobs_per_user=10_000,
        max_body_bytes=MAX_BODY,
        max_chat_body_bytes=MAX_CHAT_BODY,
        # The corpus starts many jobs at once; the per-user limit has tests of its own.
        rate_limit_per_user=0.0,
    )
    async with run_api_server(config, keepalive=0.2) as server:
        yield server


async def _finished_job(client: httpx.AsyncClient, server: ApiServer) -> str:
    auth = server.auth(USER, WORKSPACE)
    created = await client.post("/v1/jobs", json=_chat(thread_id="base"), headers=auth)
    assert created.status_code == 202, created.text
    job_id: str = created.json()["id"]
    await wait_for_status(client, job_id, auth, ("complete",))
    return job_id


def _walk(tree: dict[str, Any]) -> Iterable[dict[str, Any]]:
    nodes = [tree]
    while nodes:
        node = nodes.pop()
        yield node
        nodes.extend(node["children"])


async def check_nothing_lost(server: ApiServer, tally: Tally, base_jobs: set[str]) -> None:
    """Every acknowledged job is listed, and none else; each reads back with the ids it
    was created with and ends; the server is ready and no actor ever failed. What is
    wrong goes to ``tally.problems``.
    """
    auth = server.auth(USER, WORKSPACE)
    async with server.client() as client:
        listed = {job["id"] for job in (await client.get("/v1/jobs", headers=auth)).json()["jobs"]}
        acknowledged = set(tally.created) | base_jobs
        tally.problems += [
            f"job {job_id} was acknowledged, and is gone"
            for job_id in sorted(acknowledged - listed)
        ]
        tally.problems += [
            f"job {job_id} was made by a refused request"
            for job_id in sorted(listed - acknowledged)
        ]
        for job_id, asked in tally.created.items():
            if job_id not in listed:
                continue
            job = await wait_for_status(client, job_id, auth, timeout=30.0)
            got = {key: job[key] for key in asked if asked[key] is not None}
            if got != {key: value for key, value in asked.items() if value is not None}:
                tally.problems.append(
                    f"job {job_id} reads back as {got}, created as {asked} by "
                    f"{tally.requests[job_id][:400]}"
                )
        ready = await client.get("/readyz")
        if ready.status_code != 200:
            tally.problems.append(f"/readyz answers {ready.status_code} {ready.text}")
        tree = await client.get("/v1/system/actors", headers=server.auth(admin=True))
        tally.problems += [
            f"actor {node['path']} failed: {node['last_failure']}"
            for node in _walk(tree.json())
            if node["restarts"] or node["last_failure"]
        ]


def build_corpus(server: ApiServer, job_id: str, notification_id: str) -> list[Probe]:
    """The whole corpus: every category, then the seeded random mutations."""
    rng = random.Random(SEED)
    return [
        *_body_probes(),
        *_query_probes(job_id),
        *_path_probes(job_id, notification_id),
        *_header_probes(server, job_id),
        *_method_probes(job_id),
        *_random_probes(rng, job_id, RANDOM_PROBES),
    ]


async def test_hostile_requests_get_no_500_no_hang_and_the_error_shape(
    hostile_server: ApiServer, figures: Figures
) -> None:
    server = hostile_server
    with structlog.testing.capture_logs() as logs:
        async with server.client() as client:
            base = [await _finished_job(client, server) for _ in range(2)]
            notes = await client.get("/v1/notifications", headers=server.auth(USER, WORKSPACE))
            notification_id = notes.json()["notifications"][0]["id"]
        probes = build_corpus(server, base[0], notification_id)
        tally = await run_corpus(server, probes)
        await check_nothing_lost(server, tally, set(base))
    errors = [entry for entry in logs if entry["log_level"] in ("error", "critical")]

    kinds = ", ".join(f"{kind} {count}" for kind, count in tally.by_kind.items())
    print(
        f"\nhostile requests: {tally.tried} tried (seed {SEED}: {kinds}); "
        f"{len(tally.created)} jobs acknowledged; slowest answer {tally.slowest:.3f} s; "
        f"resent on a new connection: {tally.resent or 'none'}"
    )
    figures.record(
        Figure(
            test="hostile requests",
            injected=f"malformed, mistyped, huge, nested, odd-unicode and tricky requests on "
            f"all {len(OPERATIONS)} operations, {RANDOM_PROBES} of them random (seed {SEED})",
            times=tally.tried,
            jobs=len(tally.created) + len(base),
            lost=len(tally.problems),
            what_lost="bad answers or jobs",
        )
    )
    assert tally.tried == len(probes)
    assert not tally.problems, "\n".join(tally.problems[:40])
    assert not errors, errors
