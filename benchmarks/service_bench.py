"""Benchmarks of troupe's background-streaming service, against baselines measured in the same run.

Usage::

    python benchmarks/service_bench.py [--quick] [--json PATH]

The benchmarks, with their baselines:

* SQLite group commit: 20,000 ``SqliteStore.append_deltas`` of one small delta
  each, issued by 100 concurrent trio tasks (one job each), through the store's
  one writer thread, which commits whatever is queued as one transaction.
  Against two baselines with stdlib ``sqlite3``, both a commit per write, run as
  a plain synchronous loop on one connection with no trio: the same 20,000
  small INSERTs into the same schema (autocommit), and the same 20,000 appends
  as the store runs them (SELECT of the job, INSERT of the delta, UPDATE of the
  job's counters) in a transaction each. Both sides use WAL and
  ``synchronous = NORMAL``.
* SQLite persister: 500 running jobs, one delta each per flush tick, 40 ticks
  (20,000 deltas). troupe: one ``SqliteStore.append_many`` per tick, carrying
  every job's delta, as the service's one persister task does. Against the
  same deltas stored by 500 concurrent trio tasks (one per job), each calling
  ``append_deltas`` for its own delta per tick, as a stream per job did; the
  writer still groups them into few commits, but runs one operation per job.
  Both in deltas stored per second, with the commits counted. Once more with
  the event loop busy half the time (a task that runs Python for 0.5 ms, then
  sleeps 0.5 ms), as the token path of many streams keeps the trio thread: the
  writer thread then has to win the GIL back after every call into SQLite.
* HTTP overhead: 4,000 ``GET /v1/jobs/{id}`` of a finished job (token check,
  registry ask, JSON) on the troupe server with a memory store; against a bare
  hypercorn trio worker serving a Starlette app with one route that returns a
  JSON body of the same shape and size. Server and client (one
  ``httpx.AsyncClient``, 10 concurrent trio tasks, one keep-alive connection
  each) share one process and one trio run, so the client's own cost is in
  both rates and dilutes the ratio. The service logs at warning level, so it
  writes no access log line per request (the bare server writes none either).
* end-to-end jobs (no baseline): 400 jobs, each a ``POST /v1/jobs`` followed
  by the job's SSE events stream read until its final ``status`` event, 16 jobs
  in flight, on the simulated model at an infinite token rate (about 50 deltas
  per answer). Once on a SQLite store, once on a memory store. Reported as jobs
  per second and deltas stored per second.

Every benchmark runs each side once on a tenth of the work to warm up, then
three times, alternating sides; the reported rate of a side is its best repeat.
Each run starts its own server (or store) on 127.0.0.1, port 0, in a fresh
temporary directory; start-up and shut-down are not timed. Every run checks
that it did its work (counts, status codes, bodies, job statuses) and raises
:class:`BenchmarkError` if not. Compare ratios, not absolute rates.

``--quick`` divides the work by 20 for a smoke run; its ratios are only
indicative. ``--json PATH`` also writes the results, the machine description
and every repeat's timing to ``PATH``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import attrs
import httpx
import hypercorn.trio
import orjson
import trio
from harness import (
    REPEATS,
    WARMUP_FRACTION,
    Benchmark,
    BenchmarkResult,
    Side,
    expect,
    machine,
    measure,
    print_machine,
    rate,
    results_table,
    run_benchmark,
    under_trio,
)
from hypercorn.config import Config as HypercornConfig
from hypercorn.typing import Framework
from rich.console import Console
from rich.table import Table
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from actors.api import JobView
from actors.config import ServiceConfig, StoreName
from actors.http.auth import TokenAuthority
from actors.http.schemas import job_json
from actors.http.server import serve
from actors.logs import configure_logging
from actors.model import Delta, Job, JobStatus, Owner
from actors.stores import SqliteStore
from actors.stores.migrations import migrate
from actors.upstream import SimulatedUpstream, StreamResult, TextDelta, UpstreamRequest
from actors.upstream.events import UpstreamEvent

__all__ = [
    "Answer",
    "Comparison",
    "Notes",
    "SoloBenchmark",
    "SoloResult",
    "comparisons",
    "main",
    "run_solo",
    "simulated_answer",
    "solo_benchmarks",
    "solo_table",
]

QUICK_DIVISOR = 20
PACKAGES = ("hypercorn", "starlette", "httpx")
SQLITE_WRITERS = 100
PERSISTER_JOBS = 500
PERSISTER_TICKS = 40
# How long the busy event loop runs Python between two checkpoints.
BUSY_SLICE = 0.0005
HTTP_CONCURRENCY = 10
JOBS_IN_FLIGHT = 16
# Above the jobs in flight, so that a job the client has seen finish but the
# registry has not yet let go of can never make a new one bounce off a cap.
JOB_CAP = 4 * JOBS_IN_FLIGHT
HTTP_TIMEOUT = 30.0
JWT_SECRET = "service-benchmark-signing-key-0123456789abcdef"
USER, WORKSPACE = "bench-user", "bench-workspace"
MODEL = "simulated"
# With the simulated model's canned text, an answer of 53 deltas.
PROMPT = "How long does a background job take?"

Notes = dict[str, float]
"""Figures a timed run leaves behind besides its time (writes per commit, body sizes);
each run overwrites the previous run's."""

# -- the simulated answer ------------------------------------------------------


@attrs.frozen
class Answer:
    """What the simulated model answers to :data:`PROMPT`: its text, deltas and result."""

    content: str
    deltas: int
    result: StreamResult


async def simulated_answer() -> Answer:
    """Stream the simulated model's answer to :data:`PROMPT` in-process, with no pacing."""
    pieces: list[str] = []

    async def collect(event: UpstreamEvent) -> None:
        if isinstance(event, TextDelta) and event.content:
            pieces.append(event.content)
        await trio.lowlevel.checkpoint()

    request = UpstreamRequest(MODEL, [{"role": "user", "content": PROMPT}])
    result = await SimulatedUpstream(math.inf).stream(request, collect)
    return Answer("".join(pieces), len(pieces), result)


# -- SQLite group commit -------------------------------------------------------


def _job(job_id: str) -> Job:
    return Job(
        id=job_id,
        user_id=USER,
        workspace_id=WORKSPACE,
        thread_id=f"thread-{job_id}",
        message_id=f"message-{job_id}",
        model=MODEL,
        status=JobStatus.STREAMING,
        started_at=datetime.now(UTC),
    )


def _job_ids() -> list[str]:
    return [f"job-{index:03d}" for index in range(SQLITE_WRITERS)]


def _delta_text(seq: int) -> str:
    return f"word{seq} "


async def _troupe_group_commit(notes: Notes, n: int) -> float:
    per_job = n // SQLITE_WRITERS
    with tempfile.TemporaryDirectory(prefix="troupe-bench-") as directory:
        store = await trio.to_thread.run_sync(SqliteStore, Path(directory) / "bench.db")
        try:
            job_ids = _job_ids()
            for job_id in job_ids:
                await store.create_job(_job(job_id))
            commits_before, writes_before = store.commit_count, store.write_count

            async def append_all(job_id: str) -> None:
                for seq in range(1, per_job + 1):
                    await store.append_deltas(job_id, [Delta(job_id, seq, _delta_text(seq))])

            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for job_id in job_ids:
                    nursery.start_soon(append_all, job_id)
            elapsed = time.perf_counter() - start
            commits = store.commit_count - commits_before
            writes = store.write_count - writes_before
            expected_content = "".join(_delta_text(seq) for seq in range(1, per_job + 1))
            for job_id in job_ids:
                job = await store.get_job(job_id)
                expect(job is not None, f"job {job_id} is missing")
                assert job is not None
                expect(
                    job.chunks_received == per_job and job.last_seq == per_job,
                    f"job {job_id} took {job.chunks_received} of {per_job} deltas",
                )
                expect(job.content == expected_content, f"job {job_id} has the wrong content")
                stored = await store.get_deltas(job_id)
                expect(len(stored) == per_job, f"{len(stored)} of {per_job} deltas stored")
        finally:
            await store.aclose()
    expect(writes == per_job * SQLITE_WRITERS, f"{writes} writes instead of {n}")
    notes["commits"] = commits
    notes["writes_per_commit"] = writes / commits
    return elapsed


def _persister_job_ids() -> list[str]:
    return [f"job-{index:03d}" for index in range(PERSISTER_JOBS)]


async def _busy_loop() -> None:
    """Keep the trio thread busy half the time, as many streams' token path
    does: Python for :data:`BUSY_SLICE` seconds, then a sleep as long, until
    cancelled. While it runs Python it holds the GIL."""
    while True:
        end = time.perf_counter() + BUSY_SLICE
        while time.perf_counter() < end:
            pass
        await trio.sleep(BUSY_SLICE)


async def _persist(per_tick: bool, busy: bool, notes: Notes, n: int) -> float:
    """Store ``n`` deltas of :data:`PERSISTER_JOBS` running jobs, one per job
    per tick: one ``append_many`` per tick (``per_tick``), or one task per job
    calling ``append_deltas`` per tick. Returns the seconds taken; checks every
    job's counters and output and the deltas stored."""
    ticks = max(1, n // PERSISTER_JOBS)
    job_ids = _persister_job_ids()
    with tempfile.TemporaryDirectory(prefix="troupe-bench-") as directory:
        store = await trio.to_thread.run_sync(SqliteStore, Path(directory) / "bench.db")
        try:
            for job_id in job_ids:
                await store.create_job(_job(job_id))
            commits_before = store.commit_count

            async def persister() -> None:
                for seq in range(1, ticks + 1):
                    text = _delta_text(seq)
                    await store.append_many(
                        {job_id: [Delta(job_id, seq, text)] for job_id in job_ids}
                    )

            async def stream(job_id: str) -> None:
                for seq in range(1, ticks + 1):
                    await store.append_deltas(job_id, [Delta(job_id, seq, _delta_text(seq))])

            async with trio.open_nursery() as background:
                if busy:
                    background.start_soon(_busy_loop)
                start = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    if per_tick:
                        nursery.start_soon(persister)
                    else:
                        for job_id in job_ids:
                            nursery.start_soon(stream, job_id)
                elapsed = time.perf_counter() - start
                background.cancel_scope.cancel()
            commits = store.commit_count - commits_before
            expected = "".join(_delta_text(seq) for seq in range(1, ticks + 1))
            summaries = await store.list_job_summaries(Owner(USER, WORKSPACE))
            expect(len(summaries) == PERSISTER_JOBS, f"{len(summaries)} jobs listed")
            for summary in summaries:
                job = summary.job
                expect(
                    job.chunks_received == ticks and job.last_seq == ticks,
                    f"job {job.id} took {job.chunks_received} of {ticks} deltas",
                )
                expect(summary.content_length == len(expected), f"job {job.id} is truncated")
            for job_id in job_ids[:: PERSISTER_JOBS // 5]:
                got = await store.get_job(job_id)
                expect(got is not None and got.content == expected, f"job {job_id}'s output")
                stored = await store.get_deltas(job_id)
                expect(len(stored) == ticks, f"{len(stored)} of {ticks} deltas stored")
        finally:
            await store.aclose()
    notes["commits"] = commits
    notes["deltas_per_commit"] = ticks * PERSISTER_JOBS / commits
    return elapsed


def _insert_delta(conn: sqlite3.Connection, job_id: str, seq: int, text: str) -> None:
    conn.execute(
        "INSERT INTO deltas (job_id, seq, content, reasoning) VALUES (?, ?, ?, '')",
        (job_id, seq, text),
    )


def _append_delta(conn: sqlite3.Connection, job_id: str, seq: int, text: str) -> None:
    """What ``SqliteStore.append_deltas`` does for one delta, as its own transaction:
    check the job, insert the delta, grow the job's counters (not its text)."""
    conn.execute("BEGIN IMMEDIATE")
    row = conn.execute("SELECT status, last_seq FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row[0] == "streaming" and seq > row[1]:
        _insert_delta(conn, job_id, seq, text)
        conn.execute(
            "UPDATE jobs SET chunks_received = chunks_received + 1, last_seq = ?, "
            "content_length = content_length + ? WHERE id = ?",
            (seq, len(text), job_id),
        )
    conn.execute("COMMIT")


def _sqlite_commit_per_write(
    write: Callable[[sqlite3.Connection, str, int, str], None], notes: Notes, n: int
) -> float:
    """``n`` writes of one delta each, round-robin over the jobs, each write its own
    transaction; plain synchronous code on one connection, no trio."""
    per_job = n // SQLITE_WRITERS
    with tempfile.TemporaryDirectory(prefix="troupe-bench-") as directory:
        # Autocommit mode: a statement outside BEGIN is a transaction of its own.
        conn = sqlite3.connect(Path(directory) / "bench.db", isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            migrate(conn)
            job_ids = _job_ids()
            for job_id in job_ids:
                conn.execute(
                    "INSERT INTO jobs (id, user_id, workspace_id, thread_id, message_id, model, "
                    "status, started_at) VALUES (?, ?, ?, ?, ?, ?, 'streaming', ?)",
                    (job_id, USER, WORKSPACE, "t", "m", MODEL, datetime.now(UTC).isoformat()),
                )
            start = time.perf_counter()
            # The order in which the troupe side's tasks interleave.
            for seq in range(1, per_job + 1):
                text = _delta_text(seq)
                for job_id in job_ids:
                    write(conn, job_id, seq, text)
            elapsed = time.perf_counter() - start
            (stored,) = conn.execute("SELECT count(*) FROM deltas").fetchone()
            (last,) = conn.execute("SELECT min(last_seq) FROM jobs").fetchone()
        finally:
            conn.close()
    expect(stored == per_job * SQLITE_WRITERS, f"{stored} rows instead of {n}")
    expect(write is _insert_delta or last == per_job, f"a job's last_seq is {last}")
    notes["writes_per_commit"] = 1.0
    return elapsed


# -- HTTP overhead -------------------------------------------------------------


@attrs.frozen
class _Endpoint:
    base_url: str
    headers: dict[str, str] = attrs.field(repr=False)


def _service_config(data_dir: Path, store: StoreName) -> ServiceConfig:
    return ServiceConfig(
        store=store,
        data_dir=data_dir,
        upstream="simulated",
        simulated_tokens_per_second=math.inf,
        max_concurrent_jobs=JOB_CAP,
        max_jobs_per_user=JOB_CAP,
        # One user starts every job of the end-to-end runs, as fast as they go.
        rate_limit_per_user=0.0,
        drain_timeout=0.0,
        host="127.0.0.1",
        port=0,
        jwt_secret=JWT_SECRET,
        log_level="warning",
    )


@asynccontextmanager
async def _troupe_server(store: StoreName) -> AsyncIterator[_Endpoint]:
    """The troupe server on 127.0.0.1:0, with a token for :data:`USER` in its headers."""
    stop = trio.Event()
    ready = trio.Event()
    endpoints: list[_Endpoint] = []

    def on_ready(addresses: list[str], tokens: TokenAuthority | None) -> None:
        assert tokens is not None
        token = tokens.mint(USER, WORKSPACE)
        endpoints.append(_Endpoint(addresses[0], {"Authorization": f"Bearer {token}"}))
        ready.set()

    with tempfile.TemporaryDirectory(prefix="troupe-bench-") as directory:
        config = _service_config(Path(directory), store)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(serve, config, stop=stop, on_ready=on_ready))
            await ready.wait()
            try:
                yield endpoints[0]
            finally:
                stop.set()


@asynccontextmanager
async def _bare_server(body: dict[str, Any]) -> AsyncIterator[_Endpoint]:
    """hypercorn's trio worker on 127.0.0.1:0 serving one Starlette route that returns ``body``."""

    async def job(request: Request) -> Response:
        return JSONResponse(body)

    # Starlette and hypercorn type the same ASGI protocol in different words.
    app = cast(Framework, Starlette(routes=[Route("/v1/jobs/{job_id}", job, methods=["GET"])]))
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            functools.partial(hypercorn.trio.serve, app, config, shutdown_trigger=stop.wait)
        )
        try:
            # A token like the troupe side's, so both sides get alike requests; unchecked here.
            token = TokenAuthority(JWT_SECRET).mint(USER, WORKSPACE)
            yield _Endpoint(binds[0], {"Authorization": f"Bearer {token}"})
        finally:
            stop.set()


def _client(endpoint: _Endpoint, connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(
        base_url=endpoint.base_url, headers=endpoint.headers, limits=limits, timeout=HTTP_TIMEOUT
    )


async def _hammer(client: httpx.AsyncClient, path: str, n: int, notes: Notes) -> float:
    """GET ``path`` ``n`` times from :data:`HTTP_CONCURRENCY` tasks; return the seconds taken.

    Each task first makes one untimed request, so every connection is open
    before the clock starts. Every response must be 200 with the same body.
    """
    first = await client.get(path)
    expect(first.status_code == 200, f"GET {path} answered {first.status_code}")
    expected = first.content
    notes["body_bytes"] = len(expected)
    remaining = n
    answered = 0
    connected = 0
    all_connected = trio.Event()
    go = trio.Event()

    async def worker() -> None:
        nonlocal remaining, answered, connected
        response = await client.get(path)
        expect(response.content == expected, "a warm-up response differs")
        connected += 1
        if connected == HTTP_CONCURRENCY:
            all_connected.set()
        await go.wait()
        while remaining > 0:
            remaining -= 1
            response = await client.get(path)
            expect(response.status_code == 200, f"GET {path} answered {response.status_code}")
            expect(response.content == expected, "a response body differs from the first")
            answered += 1

    async with trio.open_nursery() as nursery:
        for _ in range(HTTP_CONCURRENCY):
            nursery.start_soon(worker)
        await all_connected.wait()
        start = time.perf_counter()
        go.set()
    elapsed = time.perf_counter() - start
    expect(answered == n, f"{answered} of {n} requests answered")
    return elapsed


async def _troupe_get_job(notes: Notes, n: int) -> float:
    async with _troupe_server("memory") as endpoint, _client(endpoint, HTTP_CONCURRENCY) as client:
        job_id, status = await _run_job(client, 0)
        expect(status == "complete", f"the job to read ended {status}")
        body = (await client.get(f"/v1/jobs/{job_id}")).json()
        expect(body["status"] == "complete", f"the job to read is {body['status']}")
        return await _hammer(client, f"/v1/jobs/{job_id}", n, notes)


def _sample_body(answer: Answer) -> dict[str, Any]:
    """A finished job's v1 JSON, as troupe renders it for the same simulated answer."""
    now = datetime.now(UTC)
    # The ids of the job the troupe side reads: the first of :func:`_job_body`.
    job = attrs.evolve(
        _job("0" * 32),
        thread_id="thread-0",
        message_id="message-0",
        status=JobStatus.COMPLETE,
        content=answer.content,
        chunks_received=answer.deltas,
        last_seq=answer.deltas,
        completed_at=now,
        finish_reason=answer.result.finish_reason,
        usage=answer.result.usage,
        generation_id=answer.result.generation_id,
    )
    return job_json(JobView.of(job))


async def _bare_get_job(body: dict[str, Any], notes: Notes, n: int) -> float:
    async with _bare_server(body) as endpoint, _client(endpoint, HTTP_CONCURRENCY) as client:
        return await _hammer(client, "/v1/jobs/" + "0" * 32, n, notes)


# -- end-to-end jobs -----------------------------------------------------------


def _job_body(index: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "thread_id": f"thread-{index}",
        "message_id": f"message-{index}",
    }


async def _run_job(client: httpx.AsyncClient, index: int) -> tuple[str, str]:
    """Start a job and follow its SSE events to the end; return its id and final status.

    The stream ends by itself after the ``status`` event, so it is read to its end.
    """
    created = await client.post("/v1/jobs", json=_job_body(index))
    expect(created.status_code == 202, f"POST /v1/jobs answered {created.status_code}")
    job_id: str = created.json()["id"]
    event = ""
    final: dict[str, Any] | None = None
    async with client.stream("GET", f"/v1/jobs/{job_id}/events") as events:
        expect(events.status_code == 200, f"the events stream answered {events.status_code}")
        async for line in events.aiter_lines():
            if line.startswith("event:"):
                event = line[len("event:") :].strip()
            elif line.startswith("data:") and event == "status":
                final = orjson.loads(line[len("data:") :])
    expect(final is not None, f"job {job_id}: the events stream ended without a status")
    assert final is not None
    return job_id, str(final["status"])


async def _troupe_jobs(store: StoreName, answer: Answer, notes: Notes, m: int) -> float:
    async with _troupe_server(store) as endpoint, _client(endpoint, JOBS_IN_FLIGHT) as client:
        statuses: dict[str, str] = {}
        next_index = 0

        async def worker() -> None:
            nonlocal next_index
            while next_index < m:
                index, next_index = next_index, next_index + 1
                job_id, status = await _run_job(client, index)
                statuses[job_id] = status

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(JOBS_IN_FLIGHT):
                nursery.start_soon(worker)
        elapsed = time.perf_counter() - start

        expect(len(statuses) == m, f"{len(statuses)} of {m} jobs ran")
        unfinished = {s for s in statuses.values() if s != "complete"}
        expect(not unfinished, f"jobs ended {sorted(unfinished)}, not complete")
        listed = (await client.get("/v1/jobs", params={"status": "complete"})).json()["jobs"]
        expect(len(listed) == m, f"the server lists {len(listed)} of {m} jobs complete")
        for job in listed:
            expect(
                job["last_seq"] == answer.deltas and job["chunks_received"] == answer.deltas,
                f"job {job['id']} stored {job['chunks_received']} of {answer.deltas} deltas",
            )
            expect(job["content_length"] == len(answer.content), f"job {job['id']} is truncated")
    notes["deltas_per_job"] = answer.deltas
    return elapsed


@attrs.frozen
class SoloBenchmark:
    """A troupe measurement with no baseline; each operation stores ``deltas_per_op`` deltas."""

    name: str
    unit: str
    side: Side
    deltas_per_op: int


@attrs.frozen
class SoloResult:
    name: str
    unit: str
    label: str
    n: int
    seconds: tuple[float, ...]
    deltas_per_op: int

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def rate(self) -> float:
        """Operations per second in the best repeat."""
        return self.n / self.best if self.best > 0 else math.inf

    @property
    def delta_rate(self) -> float:
        """Deltas stored per second in the best repeat."""
        return self.rate * self.deltas_per_op

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "label": self.label,
            "n": self.n,
            "seconds": list(self.seconds),
            "best_seconds": self.best,
            "median_seconds": statistics.median(self.seconds),
            "rate": self.rate,
            "deltas_per_op": self.deltas_per_op,
            "deltas_per_second": self.delta_rate,
        }


def run_solo(bench: SoloBenchmark, repeats: int = REPEATS) -> SoloResult:
    """Warm up, then time ``repeats`` runs; blocks. Raises :class:`BenchmarkError`
    if a run did not do its work."""
    side = bench.side
    measure(side.timed, max(1, side.n // WARMUP_FRACTION))
    seconds = tuple(measure(side.timed, side.n) for _ in range(repeats))
    return SoloResult(bench.name, bench.unit, side.label, side.n, seconds, bench.deltas_per_op)


# -- the harness ---------------------------------------------------------------


@attrs.frozen
class Comparison:
    """A benchmark with a baseline, and the notes its two sides leave behind."""

    bench: Benchmark
    troupe_notes: Notes
    baseline_notes: Notes


def comparisons(answer: Answer, scale: int = 1) -> list[Comparison]:
    """The benchmarks with a baseline, with their amounts of work divided by ``scale``."""
    writes = max(SQLITE_WRITERS, 20_000 // scale // SQLITE_WRITERS * SQLITE_WRITERS)
    requests = max(HTTP_CONCURRENCY, 4_000 // scale)
    compared: list[Comparison] = []
    sqlite_baselines = (
        ("SQLite small writes", "sqlite3 INSERT, commit per write", _insert_delta),
        ("SQLite appends", "sqlite3 SELECT+INSERT+UPDATE, commit per write", _append_delta),
    )
    for name, label, write in sqlite_baselines:
        troupe_notes: Notes = {}
        baseline_notes: Notes = {}
        bench = Benchmark(
            f"{name}, {SQLITE_WRITERS} tasks",
            "write/s",
            Side(
                "troupe append_deltas, group commit",
                under_trio(functools.partial(_troupe_group_commit, troupe_notes)),
                writes,
            ),
            Side(label, functools.partial(_sqlite_commit_per_write, write, baseline_notes), writes),
            target=None,
        )
        compared.append(Comparison(bench, troupe_notes, baseline_notes))
    deltas = max(PERSISTER_JOBS, PERSISTER_TICKS * PERSISTER_JOBS // scale)
    for busy in (False, True):
        troupe_notes = {}
        baseline_notes = {}
        loop = ", busy event loop" if busy else ""
        bench = Benchmark(
            f"SQLite persister, {PERSISTER_JOBS} jobs x 1 delta a tick{loop}",
            "delta/s",
            Side(
                "one append_many a tick",
                under_trio(functools.partial(_persist, True, busy, troupe_notes)),
                deltas,
            ),
            Side(
                f"{PERSISTER_JOBS} tasks, append_deltas each",
                under_trio(functools.partial(_persist, False, busy, baseline_notes)),
                deltas,
            ),
            target=None,
        )
        compared.append(Comparison(bench, troupe_notes, baseline_notes))
    troupe_notes = {}
    baseline_notes = {}
    bench = Benchmark(
        f"GET /v1/jobs/{{id}}, {HTTP_CONCURRENCY} concurrent",
        "req/s",
        Side(
            "troupe server",
            under_trio(functools.partial(_troupe_get_job, troupe_notes)),
            requests,
        ),
        Side(
            "hypercorn + Starlette, one JSON route",
            under_trio(functools.partial(_bare_get_job, _sample_body(answer), baseline_notes)),
            requests,
        ),
        target=None,
    )
    compared.append(Comparison(bench, troupe_notes, baseline_notes))
    return compared


def solo_benchmarks(answer: Answer, scale: int = 1) -> list[tuple[SoloBenchmark, Notes]]:
    """The end-to-end benchmarks, with their amounts of work divided by ``scale``."""
    jobs = max(JOBS_IN_FLIGHT, 400 // scale)
    found: list[tuple[SoloBenchmark, Notes]] = []
    store: StoreName
    for store in ("sqlite", "memory"):
        notes: Notes = {}
        timed = under_trio(functools.partial(_troupe_jobs, store, answer, notes))
        found.append(
            (
                SoloBenchmark(
                    f"jobs end to end, {store} store, {JOBS_IN_FLIGHT} in flight",
                    "job/s",
                    Side(f"POST + SSE to status, {store}", timed, jobs),
                    answer.deltas,
                ),
                notes,
            )
        )
    return found


def solo_table(results: list[SoloResult]) -> Table:
    """The end-to-end results as a table: jobs/s, deltas stored/s and the time per delta."""
    table = Table(title=f"troupe service end to end, best of {REPEATS} repeats")
    table.add_column("benchmark")
    table.add_column("rate", justify="right")
    table.add_column("deltas stored", justify="right")
    table.add_column("per delta", justify="right")
    for result in results:
        table.add_row(
            f"{result.name}\n[dim]{result.deltas_per_op} deltas per job[/]",
            f"{rate(result.rate)} {result.unit}\n[dim]n={result.n:,}[/]",
            f"{rate(result.delta_rate)} delta/s",
            f"{1e6 / result.delta_rate:,.0f} us",
        )
    return table


def main(argv: list[str] | None = None) -> int:
    """Run every benchmark, print the tables, optionally write JSON; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run with 1/20 of the work")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)
    # The access log line of every request would be on the troupe side's clock only.
    configure_logging("warning")

    console = Console()
    info = machine(PACKAGES)
    info["sqlite"] = sqlite3.sqlite_version
    print_machine(console, info, PACKAGES)
    console.print(f"SQLite {info['sqlite']}", highlight=False)
    if args.quick:
        console.print("[yellow]quick run: small amounts of work, the ratios are indicative[/]")

    scale = QUICK_DIVISOR if args.quick else 1
    answer = trio.run(simulated_answer)
    compared = comparisons(answer, scale)
    solos = solo_benchmarks(answer, scale)
    total = len(compared) + len(solos)
    results: list[BenchmarkResult] = []
    for index, item in enumerate(compared, 1):
        bench = item.bench
        console.print(
            f"[{index}/{total}] {bench.name} "
            f"(n={bench.troupe.n:,}, baseline n={bench.baseline.n:,})",
            markup=False,
            highlight=False,
        )
        results.append(run_benchmark(bench))
    solo_results: list[SoloResult] = []
    for index, (solo, _) in enumerate(solos, len(compared) + 1):
        console.print(
            f"[{index}/{total}] {solo.name} (n={solo.side.n:,})", markup=False, highlight=False
        )
        solo_results.append(run_solo(solo))

    console.print(results_table(results, "troupe service"))
    console.print(solo_table(solo_results))
    group_commit, http = compared[0], compared[-1]
    http_result = results[-1]
    extra_us = (1 / http_result.troupe.rate - 1 / http_result.baseline.rate) * 1e6
    http.troupe_notes["extra_us_per_request"] = extra_us
    console.print(
        f"group commit: {group_commit.troupe_notes['writes_per_commit']:.1f} writes per commit "
        f"in the last repeat. HTTP: troupe adds {extra_us:,.0f} us per request; bodies of "
        f"{http.troupe_notes['body_bytes']:.0f} bytes (troupe) and "
        f"{http.baseline_notes['body_bytes']:.0f} bytes (baseline).",
        highlight=False,
    )
    for item in compared:
        if "deltas_per_commit" in item.troupe_notes:
            console.print(
                f"{item.bench.name}: {item.troupe_notes['commits']:.0f} commits "
                f"({item.troupe_notes['deltas_per_commit']:.0f} deltas each) against "
                f"{item.baseline_notes['commits']:.0f} "
                f"({item.baseline_notes['deltas_per_commit']:.0f} each), last repeat.",
                markup=False,
                highlight=False,
            )
    console.print(
        "ratio = troupe rate / baseline rate, each the best of "
        f"{REPEATS} repeats after a warm-up; compare ratios, not absolute rates."
    )
    if args.json is not None:
        document = {
            "machine": info,
            "quick": args.quick,
            "repeats": REPEATS,
            "statistic": "best",
            "results": [
                {
                    **result.to_json(),
                    "troupe_notes": item.troupe_notes,
                    "baseline_notes": item.baseline_notes,
                }
                for result, item in zip(results, compared, strict=True)
            ],
            "end_to_end": [
                {**result.to_json(), "notes": notes}
                for result, (_, notes) in zip(solo_results, solos, strict=True)
            ],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        console.print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
