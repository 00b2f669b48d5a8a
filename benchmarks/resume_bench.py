"""The cost of a resume on Redis against SQLite: replaying a finished job's 1,000 deltas.

Usage::

    python benchmarks/resume_bench.py [--quick] [--json PATH]

On each store the benchmark first runs one job to its end: a troupe server (in this
process, on 127.0.0.1 port 0) streams :data:`DELTAS` tokens from the fake upstream
of ``jobs_upstream.py``, one delta each, as fast as they come; then it stops. Each
timed run then opens the same store afresh, so that nothing of the job is left in
memory (on Redis, the replaying server is another node than the one that ran the
job), and replays it ``n`` times in a row:

* end to end over HTTP: a follower resumes the job's SSE events with
  ``Last-Event-ID: 0`` and reads them to the ``status`` event, on one keep-alive
  connection, with the lean client of ``jobs_wire.py`` (which parses every event);
* the store call alone: ``get_deltas(job_id, after_seq=0)``.

Every replay is checked: all the deltas, once each and in order, and exactly the
text the upstream sent. Redis is a ``redis-server`` the benchmark starts itself
(127.0.0.1, a free port, no persistence); SQLite is a fresh directory. As in
``service_bench.py``: a warm-up on a tenth of the work, then 3 repeats with the
sides taking turns; a side's figure is its best repeat, and the ratio compares
Redis's time per replay with SQLite's, measured in the same run.

``--quick`` replays a few times, to check that everything works; its figures mean
nothing. ``--json PATH`` also writes the results and every repeat's timing.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import attrs
import orjson
import trio
from harness import (
    REPEATS,
    Benchmark,
    BenchmarkResult,
    RedisServer,
    Side,
    Timed,
    expect,
    machine,
    print_machine,
    redis_server,
    run_benchmark,
    under_trio,
)
from jobs_follower import StreamChecker
from jobs_upstream import Upstream
from jobs_wire import TROUPE, HttpConnection, content_digest
from rich.console import Console
from rich.table import Table

from actors.config import ServiceConfig, StoreName
from actors.http.auth import TokenAuthority
from actors.http.server import serve
from actors.logs import configure_logging
from actors.stores import StoreFactory

__all__ = ["DELTAS", "FinishedJob", "main", "resume_benchmarks"]

DELTAS: Final = 1000
PACKAGES: Final = ("hypercorn", "starlette", "coredis")
JWT_SECRET: Final = "resume-benchmark-signing-key-0123456789abcdef"
USER, WORKSPACE = "bench-user", "bench-workspace"
UPSTREAM_RATE: Final = 100_000.0
"""Tokens a second from the fake upstream: as fast as the server takes them."""
FINISH_TIMEOUT: Final = 60.0
POLL_SECONDS: Final = 0.02
HTTP_REPLAYS, STORE_REPLAYS = 40, 200
QUICK_DIVISOR: Final = 10


@attrs.frozen
class FinishedJob:
    """A job run to its end on a store: where it is, and what it must replay to."""

    config: ServiceConfig
    job_id: str
    digest: str
    """The :func:`~jobs_wire.content_digest` of the text the upstream sent."""


def _config(store: StoreName, directory: Path, redis: RedisServer | None) -> ServiceConfig:
    settings: dict[str, Any] = {}
    if redis is not None:
        settings = {"redis_url": redis.url, "redis_prefix": "resume-bench:"}
    return ServiceConfig(
        store=store,
        data_dir=directory / store,
        upstream="openai",
        upstream_api_key="sk-bench-not-a-key",
        host="127.0.0.1",
        port=0,
        jwt_secret=JWT_SECRET,
        drain_timeout=0.0,
        **settings,
    )


@attrs.frozen
class _Server:
    host: str
    port: int
    headers: dict[str, str] = attrs.field(repr=False)


@asynccontextmanager
async def _server(config: ServiceConfig) -> AsyncIterator[_Server]:
    """The troupe server of ``config`` for the block, with a token for :data:`USER`."""
    stop = trio.Event()
    ready = trio.Event()
    servers: list[_Server] = []

    def on_ready(addresses: list[str], tokens: TokenAuthority | None) -> None:
        assert tokens is not None
        address = urlsplit(addresses[0])
        assert address.hostname is not None and address.port is not None
        token = tokens.mint(USER, WORKSPACE)
        servers.append(
            _Server(address.hostname, address.port, {"Authorization": f"Bearer {token}"})
        )
        ready.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(serve, config, stop=stop, on_ready=on_ready))
        await ready.wait()
        try:
            yield servers[0]
        finally:
            stop.set()


async def finish_a_job(config: ServiceConfig) -> FinishedJob:
    """Run one job of :data:`DELTAS` tokens to ``complete`` on ``config``'s store."""
    upstream = Upstream(DELTAS, UPSTREAM_RATE)
    async with trio.open_nursery() as nursery:
        listeners: list[trio.SocketListener] = await nursery.start(
            functools.partial(trio.serve_tcp, upstream.handle, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        config = config.with_overrides(upstream_base_url=f"http://127.0.0.1:{port}/v1")
        async with _server(config) as server:
            connection = await HttpConnection.open(server.host, server.port)
            try:
                job_id = await _run_to_end(connection, server.headers)
            finally:
                await connection.aclose()
        nursery.cancel_scope.cancel()
    sent = upstream.stats()["sent"]["resume"]
    expect(sent["finished"] and sent["tokens"] == DELTAS, f"the upstream sent {sent}")
    return FinishedJob(config, job_id, sent["digest"])


async def _run_to_end(connection: HttpConnection, headers: dict[str, str]) -> str:
    """Create the job, wait for its end; its id. Raises BenchmarkError unless it
    ended ``complete`` with one delta a token."""
    created = await connection.request(
        "POST",
        TROUPE.jobs_path,
        {**headers, "Content-Type": "application/json"},
        TROUPE.create_body(0, "resume"),
    )
    expect(created.status == 202, f"create answered {created.status}: {created.body[:200]!r}")
    job_id = str(orjson.loads(created.body)["id"])
    job: dict[str, Any] = {}
    with trio.move_on_after(FINISH_TIMEOUT):
        while job.get("status") in (None, "streaming"):
            await trio.sleep(POLL_SECONDS)
            job = orjson.loads(
                (await connection.request("GET", TROUPE.job_path(job_id), headers)).body
            )
    expect(
        job.get("status") == "complete", f"the job ended {job.get('status')}: {job.get('error')}"
    )
    expect(job.get("last_seq") == DELTAS, f"{job.get('last_seq')} deltas stored, not {DELTAS}")
    return job_id


def over_http(job: FinishedJob) -> Timed:
    """``n`` replays of ``job``'s events from ``Last-Event-ID: 0`` on a fresh server."""

    async def replay(n: int) -> float:
        checkers = [StreamChecker([]) for _ in range(n)]
        statuses: list[int] = []
        async with _server(job.config) as server:
            headers = {**server.headers, "Accept": "text/event-stream", "Last-Event-ID": "0"}
            path = TROUPE.events_path(job.job_id)
            connection = await HttpConnection.open(server.host, server.port)
            try:
                began = time.perf_counter()
                for checker in checkers:
                    status, _ = await connection.stream("GET", path, headers, None, checker.feed)
                    statuses.append(status)
                elapsed = time.perf_counter() - began
            finally:
                await connection.aclose()
        for status, checker in zip(statuses, checkers, strict=True):
            expect(status == 200, f"the events answered {status}")
            expect(checker.verdict(DELTAS), f"a replay was not exact: {checker.tokens.problems}")
            expect(checker.deltas == DELTAS, f"{checker.deltas} deltas replayed, not {DELTAS}")
            expect(
                checker.tokens.digest() == job.digest, "a replay differs from the upstream's text"
            )
        return elapsed

    return under_trio(replay)


def store_call(job: FinishedJob) -> Timed:
    """``n`` calls of ``get_deltas(job_id, 0)`` on the job's store, opened afresh."""

    async def replay(n: int) -> float:
        factory = StoreFactory(job.config)
        try:
            store = await factory.get()
            began = time.perf_counter()
            replays = [await store.get_deltas(job.job_id, 0) for _ in range(n)]
            elapsed = time.perf_counter() - began
        finally:
            await factory.aclose()
        for deltas in replays:
            expect([d.seq for d in deltas] == list(range(1, DELTAS + 1)), "a replay lost its order")
            text = "".join(d.content for d in deltas)
            expect(content_digest(text) == job.digest, "a replay differs from the upstream's text")
        return elapsed

    return under_trio(replay)


def resume_benchmarks(redis: FinishedJob, sqlite: FinishedJob, scale: int = 1) -> list[Benchmark]:
    """The two comparisons, Redis against SQLite; ``scale`` divides the replays."""
    pairs: tuple[tuple[str, Callable[[FinishedJob], Timed], int], ...] = (
        ("end to end over HTTP, from Last-Event-ID 0", over_http, HTTP_REPLAYS),
        ("the store call alone, get_deltas(job, 0)", store_call, STORE_REPLAYS),
    )
    return [
        Benchmark(
            name=name,
            unit="replays/s",
            troupe=Side("Redis", timed(redis), max(1, n // scale)),
            baseline=Side("SQLite", timed(sqlite), max(1, n // scale)),
            target=None,
        )
        for name, timed, n in pairs
    ]


def _ms(seconds: float, n: int) -> str:
    return f"{seconds / n * 1000:,.2f} ms"


def resume_table(results: list[BenchmarkResult]) -> Table:
    table = Table(title=f"replaying a finished job's {DELTAS:,} deltas, best of {REPEATS} repeats")
    for header in ("replay", "Redis", "SQLite", "Redis / SQLite", "replays"):
        table.add_column(header, justify="left" if header == "replay" else "right")
    for result in results:
        redis, sqlite = result.troupe, result.baseline
        table.add_row(
            result.name,
            _ms(redis.best, redis.n),
            _ms(sqlite.best, sqlite.n),
            f"{(redis.best / redis.n) / (sqlite.best / sqlite.n):.2f}x",
            f"{redis.n:,}",
        )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a few replays, correctness only")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)
    # An access log line per request would be on the server's clock, not the store's.
    configure_logging("warning")
    console = Console(width=None if sys.stdout.isatty() else 120)
    info = machine(PACKAGES)
    print_machine(console, info, PACKAGES)
    if args.quick:
        console.print("[yellow]quick run: correctness only, the figures mean nothing[/]")
    with tempfile.TemporaryDirectory(prefix="troupe-resume-bench-") as name:
        directory = Path(name)
        with redis_server(directory) as redis:
            info["redis_server"] = redis.version
            console.print(f"redis-server {redis.version}, no persistence", highlight=False)
            on_redis = trio.run(finish_a_job, _config("redis", directory, redis))
            on_sqlite = trio.run(finish_a_job, _config("sqlite", directory, None))
            benchmarks = resume_benchmarks(on_redis, on_sqlite, QUICK_DIVISOR if args.quick else 1)
            results = [run_benchmark(bench) for bench in benchmarks]
    console.print(resume_table(results))
    console.print(
        "time per replay of the whole job; the HTTP figure includes the client's parsing of "
        "every event. Compare the ratios.",
        highlight=False,
    )
    if args.json is not None:
        document = {"machine": info, "results": [result.to_json() for result in results]}
        args.json.write_text(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
        console.print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
