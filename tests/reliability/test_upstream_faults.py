"""Upstream faults against a real troupe server: each job ends in its documented state.

Every fault runs as background jobs of a real server on 127.0.0.1, each job for a user
of its own, all at once, beside a normal job that must complete exactly while
``/readyz`` is polled throughout. For each fault job the test checks, over HTTP, the
final status, the error, the content kept (exactly), how many requests the upstream
saw, that troupe hung up where it should, and that its owner got exactly one
notification. Faults an HTTP server can play come from the scriptable fake upstream
(``tests/fake_upstream.py``); those below HTTP (a reset, garbage in place of a
response, a head that never ends, a redirect with its ``Location``) from
:class:`~tests.reliability.fault_upstream.FaultPeer`.

The documented ends, with this module's small timeouts (idle 3 s, connect 1 s, job 7 s;
larger under soak):

| fault | status, error | content kept | upstream requests |
|---|---|---|---|
| connection reset mid-stream | error ``connection_error`` | what came before | 1 |
| connection reset before any output | complete | the whole answer | 2 |
| hang after some output | error ``idle_timeout``, after the idle timeout | what came before | 1 |
| 429 burst with ``Retry-After`` | complete, after the waits it asked for | the answer | 4 |
| 429 past the retries | error ``http_429`` and its message | nothing | 4 |
| 500, 502, 503 | error ``http_5xx`` and its message | nothing | 4 |
| garbage body | error ``truncated`` | nothing | 4 |
| a ``data:`` line that is not JSON | error ``bad_chunk`` | what came before | 1 |
| garbage instead of HTTP | error ``connection_error`` | nothing | 4 |
| an answer past ``max_answer_chars`` | error ``answer_too_large`` | text up to the cap | 1 |
| an image past ``max_answer_chars`` | error ``answer_too_large`` | the text, not the image | 1 |
| one event, or bytes with no line break, past the cap | ``event_too_large`` | what came first | 1 |
| a 1 byte/s drip | error ``idle_timeout`` (no event completes in time) | what came before | 1 |
| a 1 byte/s drip of keep-alives | error "Job timed out" at ``job_timeout`` | what came before | 1 |
| an ``http://`` redirect (301, 302, 307, 308) | error ``http_3xx``, the Location | nothing | 1 |
| headers that never finish | error ``idle_timeout`` at connect + idle timeout | nothing | 1 |
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from actors.config import ServiceConfig
from tests.fake_upstream import FakeUpstream, Script
from tests.http.conftest import (
    SERVER_API_KEY,
    ApiServer,
    chat_body,
    make_config,
    run_api_server,
    wait_until,
)
from tests.reliability.fault_upstream import (
    FaultPeer,
    answer,
    endless_head,
    garbage,
    redirect,
    reset_after,
)
from tests.reliability.figures import SOAK, Figure, Figures, sized

# Small timeouts keep the test short; under soak, ten times the jobs share one core
# with their clients and upstream, so every time there is larger.
IDLE_TIMEOUT = 10.0 if SOAK else 3.0
CONNECT_TIMEOUT = 3.0 if SOAK else 1.0
JOB_TIMEOUT = 40.0 if SOAK else 7.0
# How much later than its timeout a job may end (a loaded machine only adds time).
SLACK = 15.0 if SOAK else 3.0
# Faults run this many jobs each, at once.
REPEATS = sized(1, 10)
# The long answer: its size and the cap it runs into (the default cap under soak). The
# faults of that size run one job each: ten at once would measure the machine's share of
# a core more than the fault.
BIG_ANSWER_BYTES = sized(5_000_000, 50_000_000)
ANSWER_CAP = sized(200_000, ServiceConfig().max_answer_chars)
BIG_CHUNK = 32 * 1024
# Job polls: each job is polled this often until it ends (the end time comes from the
# job's own completed_at, so this costs precision only in the test's waiting).
POLL = 1.0 if SOAK else 0.2
TLS = ssl.create_default_context()
# Under soak the jobs start this far apart: a hundred connections opened at once
# overflow a listening socket's backlog (hypercorn's is 100), and each dropped one is
# retried a second or more later, which would be measured as the fault's cost.
STAGGER = 0.05 if SOAK else 0.0
PAST_THE_END = {"offset": 10**12, "reasoning_offset": 10**12}
# The retries of the upstream client: four attempts in all.
ATTEMPTS = 4

ANSWER = "Upstream faults leave the rest of the server alone, and this answer arrives whole."
NORMAL = " ".join(f"word{n}" for n in range(60))

Trigger = Callable[[httpx.AsyncClient, str, dict[str, str]], Awaitable[datetime]]


@attrs.define
class Case:
    """One job and the end its fault must lead to."""

    fault: str
    """The figure's name for the fault; jobs of one fault share it."""
    injected: str
    model: str
    status: str
    content: str
    error: str | None = None
    """A piece of text the job's error must contain (None: no error)."""
    reasoning: str = ""
    attempts: int = 1
    hangs_up: bool = False
    """Troupe must close the upstream request itself (the upstream never would)."""
    took: tuple[float, float] | None = None
    """Bounds on the seconds from the fault's start to the job's end."""
    trigger: Trigger | None = None
    """Starts the fault once the job runs; returns when it began (else: at creation)."""
    large: bool = False
    """A fault of ``BIG_ANSWER_BYTES``: one job, at every size."""
    baseline: bool = False
    """The normal job that runs beside the faults: checked, but not a figure."""
    job_id: str = ""
    recovery_s: float = 0.0
    problems: list[str] = attrs.Factory(list)

    @property
    def user(self) -> str:
        return f"user-{self.model}"


# -- the fake upstream's faults ---------------------------------------------------------


def drip(script: Script, data: bytes, seconds: float) -> Script:
    """``script``, then ``data`` one byte at a time, ``seconds`` apart."""
    for byte in data:
        script = script.raw(bytes([byte])).sleep(seconds)
    return script


def big_answer() -> tuple[str, Script, str]:
    """Reasoning, then ``BIG_ANSWER_BYTES`` of content in chunks that each name their
    place (so a lost, doubled or shifted chunk shows); the script, the reasoning and the
    content the cap keeps."""
    reasoning = "Weighing a very long answer. " * 40
    chunks = []
    for number in range(BIG_ANSWER_BYTES // BIG_CHUNK):
        mark = f"<chunk {number:06d}>"
        chunks.append(mark + "x" * (BIG_CHUNK - len(mark)))
    script = Script.stream().reasoning(reasoning)
    for chunk in chunks:
        script = script.content(chunk)
    # Then it hangs, so that only troupe can end the exchange: it must hang up.
    script = script.finish().done().hang()
    kept = ANSWER_CAP - len(reasoning)
    return reasoning, script, "".join(chunks[: kept // BIG_CHUNK + 1])[:kept]


def fake_cases(fake: FakeUpstream) -> list[Case]:
    """Script every fault the fake upstream can play, ``REPEATS`` jobs each."""
    cases = [Case("normal", "none", "normal", "complete", NORMAL, attempts=1, baseline=True)]
    fake.script("normal", Script.text(NORMAL, delay=0.01))
    noise = random.Random(7).randbytes(4096)
    garbage_body = b"<!doctype html><title>Not an event stream</title>\n" + noise
    reasoning, big, big_kept = big_answer()
    # The image's event is under the cap, so that it is read whole; with the text
    # before it, the answer is not.
    lead = "Here it is. " * 200
    big_image = "data:image/png;base64," + "A" * (ANSWER_CAP - 1000)
    flood = Script.stream().content("Before the flood ")
    one_event = flood.content("y" * BIG_ANSWER_BYTES).hang()
    no_breaks = flood.raw(b"x" * BIG_ANSWER_BYTES).hang()
    idle = (IDLE_TIMEOUT, IDLE_TIMEOUT + SLACK)
    for n in range(REPEATS):
        scripts: list[tuple[Case, tuple[Script, ...]]] = [
            (
                Case(
                    "hang past the idle timeout",
                    f"hang after the first token, idle timeout {IDLE_TIMEOUT:g} s",
                    f"hang-{n}",
                    "error",
                    "Before the hang ",
                    error="idle_timeout",
                    hangs_up=True,
                    took=idle,
                ),
                (Script.stream().content("Before the hang ").hang(),),
            ),
            (
                Case(
                    "429 burst with Retry-After",
                    "three 429s, Retry-After 1.5 s, then the answer",
                    f"burst-{n}",
                    "complete",
                    ANSWER,
                    attempts=ATTEMPTS,
                    # Three waits of 1.5 s: longer than the backoff's 0.5 + 1 + 2 s (and
                    # its jitter), so an end this late shows Retry-After was honoured.
                    took=(4.5, JOB_TIMEOUT),
                ),
                (
                    *[Script.status(429, message="slow down", retry_after=1.5)] * 3,
                    Script.text(ANSWER),
                ),
            ),
            (
                Case(
                    "429 past the retries",
                    "429 with Retry-After 0.2 s on every attempt",
                    f"throttled-{n}",
                    "error",
                    "",
                    error="http_429: slow down",
                    attempts=ATTEMPTS,
                ),
                (Script.status(429, message="slow down", retry_after=0.2),),
            ),
            *[
                (
                    Case(
                        f"HTTP {status}",
                        f"{status} on every attempt" + (", Retry-After 0.1 s" if wait else ""),
                        f"status-{status}-{n}",
                        "error",
                        "",
                        error=f"http_{status}: upstream says {status}",
                        attempts=ATTEMPTS,
                    ),
                    (Script.status(status, message=f"upstream says {status}", retry_after=wait),),
                )
                for status, wait in ((500, None), (502, None), (503, 0.1))
            ],
            (
                Case(
                    "garbage body",
                    "200 with an HTML page and 4 KiB of random bytes, no SSE",
                    f"garbage-body-{n}",
                    "error",
                    "",
                    error="truncated",
                    attempts=ATTEMPTS,
                ),
                (Script.stream().raw(garbage_body),),
            ),
            (
                Case(
                    "data line that is not JSON",
                    "one good token, then `data: {not json`",
                    f"bad-chunk-{n}",
                    "error",
                    "Fine so far ",
                    error="bad_chunk",
                ),
                (Script.stream().content("Fine so far ").raw(b"data: {not json\n\n"),),
            ),
            (
                Case(
                    "answer past max_answer_chars",
                    f"{BIG_ANSWER_BYTES / 1e6:g} MB answer, cap {ANSWER_CAP:,} characters",
                    f"big-{n}",
                    "error",
                    big_kept,
                    error="answer_too_large",
                    reasoning=reasoning,
                    hangs_up=True,
                    large=True,
                ),
                (big,),
            ),
            (
                Case(
                    "image past max_answer_chars",
                    f"{len(lead):,} characters, then an image of {len(big_image):,}",
                    f"big-image-{n}",
                    "error",
                    lead,
                    error="answer_too_large",
                    large=True,
                ),
                (Script.stream().content(lead).image(big_image).finish().done(),),
            ),
            (
                Case(
                    "answer in one event past the cap",
                    f"a token, then one event of {BIG_ANSWER_BYTES / 1e6:g} MB",
                    f"one-event-{n}",
                    "error",
                    "Before the flood ",
                    error="event_too_large",
                    hangs_up=True,
                    large=True,
                ),
                (one_event,),
            ),
            (
                Case(
                    "garbage without line breaks",
                    f"a token, then {BIG_ANSWER_BYTES / 1e6:g} MB with no line break",
                    f"no-breaks-{n}",
                    "error",
                    "Before the flood ",
                    error="event_too_large",
                    hangs_up=True,
                    large=True,
                ),
                (no_breaks,),
            ),
            (
                Case(
                    "1 byte/s drip",
                    "a token, then the next event at 1 byte/s",
                    f"drip-{n}",
                    "error",
                    "Before the drip ",
                    error="idle_timeout",
                    hangs_up=True,
                    took=idle,
                ),
                (
                    drip(
                        Script.stream().content("Before the drip "),
                        Script.stream().content("never whole").body,
                        1.0,
                    ),
                ),
            ),
            (
                Case(
                    "1 byte/s keep-alive drip, never ending",
                    f"a token, then `:` and a newline at 1 byte/s, job timeout {JOB_TIMEOUT:g} s",
                    f"endless-{n}",
                    "error",
                    "Kept alive ",
                    error="Job timed out",
                    hangs_up=True,
                    took=(JOB_TIMEOUT, JOB_TIMEOUT + SLACK),
                ),
                (drip(Script.stream().content("Kept alive "), b":\n" * int(JOB_TIMEOUT * 4), 1.0),),
            ),
        ]
        for case, answers in scripts:
            if case.large and n > 0:
                continue
            fake.script(case.model, *answers)
            cases.append(case)
    return cases


# -- the faults below HTTP --------------------------------------------------------------


def reset_when_stored(gate: trio.Event, content: str) -> Trigger:
    """Wait until the job holds ``content``, then open ``gate`` (the peer resets)."""

    async def trigger(client: httpx.AsyncClient, job_id: str, headers: dict[str, str]) -> datetime:
        async def stored() -> bool:
            job = (await client.get(f"/v1/jobs/{job_id}", headers=headers)).json()
            return bool(job["content_delta"] == content)

        await wait_until(stored, timeout=60.0 if SOAK else 10.0, interval=POLL / 4)
        gate.set()
        return datetime.now(UTC)

    return trigger


def peer_cases(peer: FaultPeer, trap: FaultPeer) -> list[Case]:
    """Script every fault played below HTTP, ``REPEATS`` jobs each."""
    cases = [Case("normal", "none", "normal", "complete", NORMAL, baseline=True)]
    peer.play("normal", answer(Script.text(NORMAL).body))
    head = (CONNECT_TIMEOUT + IDLE_TIMEOUT, CONNECT_TIMEOUT + IDLE_TIMEOUT + SLACK)
    for n in range(REPEATS):
        gate = trio.Event()
        first = Script.stream().content("Part one ").body
        plays = [
            (
                Case(
                    "connection reset mid-stream",
                    "TCP reset after the first token was stored",
                    f"reset-{n}",
                    "error",
                    "Part one ",
                    error="connection_error",
                    trigger=reset_when_stored(gate, "Part one "),
                ),
                (reset_after(first, gate),),
            ),
            (
                Case(
                    "connection reset before any output",
                    "TCP reset right after the 200 head, then the answer",
                    f"reset-early-{n}",
                    "complete",
                    ANSWER,
                    attempts=2,
                ),
                (reset_after(b""), answer(Script.text(ANSWER).body)),
            ),
            (
                Case(
                    "garbage instead of HTTP",
                    "4 KiB of random bytes in place of the response",
                    f"garbage-{n}",
                    "error",
                    "",
                    error="connection_error",
                    attempts=ATTEMPTS,
                ),
                (garbage(4096, seed=11),),
            ),
            (
                Case(
                    "headers that never finish",
                    "a header line every 0.5 s, never the end of the head",
                    f"head-{n}",
                    "error",
                    "",
                    error="idle_timeout",
                    hangs_up=True,
                    took=head,
                ),
                (endless_head(0.5),),
            ),
            *[
                (
                    Case(
                        "http:// redirect",
                        "301, 302, 307 and 308 to an http:// Location",
                        f"redirect-{status}-{n}",
                        "error",
                        "",
                        error=f"http_{status}: the upstream redirected to '{trap.base_url}",
                    ),
                    (redirect(status, f"{trap.base_url}/chat/completions"),),
                )
                for status in (301, 302, 307, 308)
            ],
        ]
        for case, answers in plays:
            peer.play(case.model, *answers)
            cases.append(case)
    return cases


# -- running the cases --------------------------------------------------------------------


@attrs.define
class Upstream:
    """What the test sees of the upstream: requests per model, and whether troupe hung
    up on the last one."""

    attempts: Callable[[str], int]
    hung_up: Callable[[str], trio.Event]


def fake_side(fake: FakeUpstream) -> Upstream:
    def requests(model: str) -> list[Any]:
        return [r for r in fake.requests if isinstance(r.json, dict) and r.json["model"] == model]

    return Upstream(
        lambda model: len(requests(model)),
        lambda model: requests(model)[-1].client_disconnected,
    )


def peer_side(peer: FaultPeer) -> Upstream:
    return Upstream(
        lambda model: len(peer.for_model(model)),
        lambda model: peer.for_model(model)[-1].closed,
    )


async def run_case(server: ApiServer, upstream: Upstream, case: Case, delay: float) -> None:
    """After ``delay`` seconds, start the case's job on a client of its own, see it end,
    and note in ``case.problems`` every way its end differs from the documented one."""
    await trio.sleep(delay)
    # One client a job: httpx's pool looks through all its connections for each
    # request, which costs more than the request once a hundred jobs share one. They
    # share the TLS context, which costs as much again to build (and plain HTTP never
    # uses).
    async with server.client(timeout=30.0, verify=TLS) as client:
        await check_case(client, server, upstream, case)


async def check_case(
    client: httpx.AsyncClient, server: ApiServer, upstream: Upstream, case: Case
) -> None:
    headers = server.auth(case.user)
    body = chat_body(model=case.model, thread_id=f"t-{case.model}", message_id=f"m-{case.model}")
    created = await client.post("/v1/jobs", json=body, headers=headers)
    assert created.status_code == 202, f"{case.model}: {created.text}"
    case.job_id = created.json()["id"]
    began = None
    if case.trigger is not None:
        began = await case.trigger(client, case.job_id, headers)
    url = f"/v1/jobs/{case.job_id}"
    with trio.fail_after(120.0 if SOAK else 30.0):
        while True:
            # Past any content: a poll of a long answer stays small.
            polled = await client.get(url, params=PAST_THE_END, headers=headers)
            if polled.json()["status"] in ("complete", "error", "aborted"):
                break
            await trio.sleep(POLL)
    job = (await client.get(url, headers=headers)).json()
    ended = datetime.fromisoformat(job["completed_at"])
    began = began or datetime.fromisoformat(job["started_at"])
    case.recovery_s = (ended - began).total_seconds()

    def problem(what: str) -> None:
        case.problems.append(f"{case.model}: {what}")

    if job["status"] != case.status:
        problem(f"status {job['status']!r} (error {job['error']!r}), expected {case.status!r}")
    if case.error is None and job["error"] is not None:
        problem(f"error {job['error']!r}, expected none")
    if case.error is not None and case.error not in (job["error"] or ""):
        problem(f"error {job['error']!r} lacks {case.error!r}")
    if job["content_delta"] != case.content:
        got = job["content_delta"]
        problem(f"content of {len(got):,} characters {got[:80]!r}, expected {case.content[:80]!r}")
    if job["images"] or job["tool_calls"]:
        problem(f"kept {len(job['images'])} images and {len(job['tool_calls'])} tool calls")
    if job["reasoning"] != case.reasoning:
        problem(f"reasoning {job['reasoning'][:80]!r}, expected {case.reasoning[:80]!r}")
    if upstream.attempts(case.model) != case.attempts:
        problem(f"{upstream.attempts(case.model)} upstream requests, expected {case.attempts}")
    if case.took is not None and not case.took[0] <= case.recovery_s < case.took[1]:
        problem(f"ended {case.recovery_s:.3f} s after the fault, expected {case.took}")
    if case.hangs_up:
        with trio.move_on_after(SLACK):
            await upstream.hung_up(case.model).wait()
        if not upstream.hung_up(case.model).is_set():
            problem("troupe never closed the upstream request")

    async def notified() -> list[Any]:
        listed = await client.get("/v1/notifications", headers=headers)
        found: list[Any] = listed.json()["notifications"]
        return found

    try:
        notes = await wait_until(notified, timeout=60.0 if SOAK else 10.0, interval=POLL)
    except trio.TooSlowError:
        problem("no notification")
        return
    kind = "ai.background.complete" if case.status == "complete" else "ai.background.error"
    if [(n["job_id"], n["type"]) for n in notes] != [(case.job_id, kind)]:
        problem(f"notifications {notes}, expected one {kind}")
    elif case.status == "error" and notes[0]["body"] != f"Failed: {job['error']}":
        problem(f"notification body {notes[0]['body']!r}")


async def run_all(server: ApiServer, upstream: Upstream, cases: list[Case]) -> list[str]:
    """Run every case at once while ``/readyz`` is polled; every problem found."""
    readiness: list[int] = []
    async with server.client(timeout=30.0) as client:
        async with trio.open_nursery() as nursery:

            async def watch_readiness() -> None:
                while True:
                    readiness.append((await client.get("/readyz")).status_code)
                    await trio.sleep(0.1)

            nursery.start_soon(watch_readiness)
            async with trio.open_nursery() as jobs:
                for number, case in enumerate(cases):
                    jobs.start_soon(run_case, server, upstream, case, number * STAGGER)
            nursery.cancel_scope.cancel()
        # A second notification would follow the first at once: by now it would show.
        await trio.sleep(0.3)
        for case in cases:
            listed = await client.get("/v1/notifications", headers=server.auth(case.user))
            count = len(listed.json()["notifications"])
            if count != 1:
                case.problems.append(f"{case.model}: {count} notifications in the end")
        assert (await client.get("/readyz")).status_code == 200
    problems = [p for case in cases for p in case.problems]
    not_ready = [status for status in readiness if status != 200]
    if not readiness or not_ready:
        problems.append(f"/readyz answered {not_ready} among {len(readiness)} polls")
    return problems


def record(figures: Figures, cases: list[Case]) -> None:
    """One figure per fault: its jobs, those that missed their documented end, and the
    longest time from the fault to the job's end."""
    faults: dict[str, list[Case]] = {}
    for case in cases:
        if not case.baseline:
            faults.setdefault(case.fault, []).append(case)
    for fault, jobs in faults.items():
        figures.record(
            Figure(
                test=f"upstream: {fault}",
                injected=jobs[0].injected,
                times=len(jobs),
                jobs=len(jobs),
                lost=sum(1 for job in jobs if job.problems),
                what_lost="jobs off their documented end",
                recovery_s=max(job.recovery_s for job in jobs),
            )
        )


def settings(base_url: str) -> dict[str, Any]:
    """The server's settings: the upstream at ``base_url``, small timeouts and cap."""
    return {
        "upstream": "openai",
        "upstream_base_url": base_url,
        "upstream_api_key": SERVER_API_KEY,
        "upstream_idle_timeout": IDLE_TIMEOUT,
        "upstream_connect_timeout": CONNECT_TIMEOUT,
        "job_timeout": JOB_TIMEOUT,
        "sweep_interval": 0.25,
        "max_answer_chars": ANSWER_CAP,
        "max_concurrent_jobs": 1000,
    }


async def test_faults_an_http_server_plays_end_each_job_as_documented(
    tmp_path: Path, figures: Figures
) -> None:
    """A hang, 429 bursts, 500/502/503, garbage and non-JSON bodies, an answer, an
    image, one event and a flood with no line break past the cap, and two 1 byte/s
    drips: one whose events never complete within the idle timeout, one of
    keep-alives that never ends, which ``job_timeout`` ends."""
    async with FakeUpstream.serve() as fake:
        cases = fake_cases(fake)
        config = make_config(tmp_path, **settings(fake.base_url))
        async with run_api_server(config) as server:
            problems = await run_all(server, fake_side(fake), cases)
    record(figures, cases)
    assert problems == []


async def test_faults_below_http_end_each_job_as_documented(
    tmp_path: Path, figures: Figures
) -> None:
    """A TCP reset mid-stream and before any output, garbage in place of a response, a
    head that never finishes, and ``http://`` redirects.

    troupe never follows a redirect: the request carries the API key, and a
    ``Location`` may name another host or plain HTTP. The job fails with the status and
    the ``Location``, so that the operator sets the final address; the redirect's
    target never sees a connection.
    """
    async with FaultPeer.serve() as peer, FaultPeer.serve() as trap:
        cases = peer_cases(peer, trap)
        config = make_config(tmp_path, **settings(peer.base_url))
        async with run_api_server(config) as server:
            problems = await run_all(server, peer_side(peer), cases)
        assert trap.connections == 0, "a redirect was followed"
    record(figures, cases)
    assert problems == []
