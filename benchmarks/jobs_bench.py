"""How many live streaming jobs troupe holds: one process on SQLite, one and two
processes sharing a Redis, and a bare relay as the baseline, all in the same run.

Usage::

    python benchmarks/jobs_bench.py [--quick] [--ladder 25,50,...] [--tokens 200]
                                    [--rate 20] [--systems sqlite,redis-1,redis-2,relay]
                                    [--json PATH]

``--help`` lists the rest (ramp, users, follower processes, poll rate, lag limit,
attempts). ``--report PATH`` prints the tables of a run saved with ``--json``.

The systems (:data:`SYSTEMS`):

* ``sqlite``: one ``examples/server.py`` process on SQLite in a fresh directory;
* ``redis-1``: one such process on Redis (``store = "redis"``);
* ``redis-2``: two such processes on the same Redis. Job ``i`` is created on process
  ``i mod 2`` and followed on process ``(i div 2) mod 2``: each process runs half
  the jobs, and half of all jobs are followed on the process that does not run
  them, as behind a round-robin balancer without affinity; polls go to either;
* ``relay``: the bare relay (``relay.py``: hypercorn + trio + httpx, no auth, no
  store).

The benchmark starts its own ``redis-server`` (127.0.0.1, a free port, no
persistence) when a Redis system is measured, and empties it before each rung.
Every rung of the ladder starts fresh processes, all on 127.0.0.1 at free ports:

* the upstream (``jobs_upstream.py``): an OpenAI-compatible SSE endpoint streaming
  ``--tokens`` tokens per job at ``--rate`` tokens a second, each token stamped with
  its wall-clock send time;
* the server processes under test, with the ``openai`` upstream pointed at that
  endpoint and their caps raised for the rung;
* ``--followers`` follower processes (``jobs_follower.py``): they create the N jobs,
  evenly over ``--ramp`` seconds and spread over ``--users`` users, and follow each on
  its own SSE connection;
* the poll prober (``jobs_prober.py``): ``--poll-rate`` timed ``GET``\\ s of live jobs.

Measured per rung: the lag of every token (follower receipt minus the upstream's
stamp) at p50, p99 and max; jobs complete and exact (every delta once, in order, by
``id:``, ``seq`` and token; a ``complete`` status; the stored content, read back by
``GET`` from the first server process, equal to what the upstream sent); the CPU
(``/proc/<pid>/stat``) of the server processes and of ``redis-server`` per 1,000
tokens delivered; the server processes' RSS peak minus idle (``/proc/<pid>/status``)
per job; the poll latency; and the load generators' own CPU, so that the reader sees
they were not the bottleneck. The upstream also reports the peak of streams open at
once, which must reach N (when the ramp is shorter than a job): a server that
queues jobs behind a connection pool does not hold them.

A system holds N when every job is complete and exact, all N streams were open at
once, and the p99 lag is under ``--lag-limit`` ms (250). The systems climb the same
ladder, taking turns at each rung; a missed rung is run again (``--attempts``, 2
runs in all) before the system stops climbing. The first table shows the largest N
held, the figures at that N, the first N missed, and the ratios of
:data:`COMPARISONS` (two Redis processes against one, whose target is
:data:`SCALE_OUT_TARGET`; Redis against SQLite; SQLite against the relay); a second
table sets the systems side by side at the largest N all of them held. Everything
shares the machine: on 2 cores the load generators and ``redis-server`` take a share
of what the servers could use, and so does anything else running; compare the
ratios.

``--quick`` runs one small case per system (20 jobs of 20 tokens at 200 tokens a
second) and checks correctness only.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, Final

import attrs
import coredis
import jwt
import orjson
import trio
from harness import BenchmarkError, RedisServer, expect, machine, print_machine, redis_server
from jobs_wire import RELAY, TROUPE, HttpConnection, Routes, content_digest, percentile
from rich.console import Console
from rich.table import Table

__all__ = [
    "COMPARISONS",
    "SCALE_OUT_TARGET",
    "SYSTEMS",
    "RungResult",
    "Settings",
    "System",
    "main",
    "run_rung",
]

HERE: Final = Path(__file__).resolve().parent
ROOT: Final = HERE.parent
PACKAGES: Final = ("hypercorn", "starlette", "httpx", "coredis")
DEFAULT_LADDER: Final = (25, 50, 75, 100, 125, 150, 175, 200, 250, 300, 350, 400, 500, 750, 1000)
JWT_SECRET: Final = "jobs-benchmark-signing-key-0123456789abcdef"
STARTUP_TIMEOUT: Final = 60.0
SETTLE_SECONDS: Final = 1.0
GO_DELAY_SECONDS: Final = 0.3
RSS_SAMPLE_SECONDS: Final = 0.1
DEADLINE_SLACK_SECONDS: Final = 30.0
_LISTENING: Final = re.compile(rb"listening on (http://[^\s:]+):(\d+)")
_CLOCK_TICK: Final = os.sysconf("SC_CLK_TCK")


@attrs.frozen
class System:
    """A system under test: how it is driven and what serves it."""

    name: str
    routes: Routes
    store: str | None = None
    """The store of its ``examples/server.py`` processes; None for the bare relay."""
    processes: int = 1

    def placement(self, index: int) -> tuple[int, int]:
        """The server processes that create job ``index`` and follow it (indexes in
        their ports): round both ways, so that with 2 processes each runs half the
        jobs and half of all jobs are followed on the other one."""
        return index % self.processes, index // self.processes % self.processes


SYSTEMS: Final = {
    system.name: system
    for system in (
        System("sqlite", TROUPE, "sqlite"),
        System("redis-1", TROUPE, "redis"),
        System("redis-2", TROUPE, "redis", processes=2),
        System("relay", RELAY),
    )
}
COMPARISONS: Final = (("redis-2", "redis-1"), ("redis-1", "sqlite"), ("sqlite", "relay"))
"""The ratios the tables show: two processes against one, Redis against SQLite,
troupe against the bare relay."""
SCALE_OUT_TARGET: Final = 1.6
"""The least ratio of jobs held by two processes on Redis to one, on 2 cores."""


@attrs.frozen
class Settings:
    ladder: tuple[int, ...]
    tokens: int
    rate: float
    ramp: float
    users: int
    followers: int
    poll_rate: float
    lag_limit_ms: float
    quick: bool
    attempts: int = 2
    """Runs of a rung before a miss counts: the machine is shared, and one burst of
    someone else's work should not end the climb."""
    systems: tuple[str, ...] = tuple(SYSTEMS)

    @property
    def duration(self) -> float:
        """Seconds one job streams for."""
        return self.tokens / self.rate


@attrs.frozen
class RungResult:
    """One system at one N: what came, how late, and what it cost."""

    system: str
    n: int
    complete: int
    exact: int
    problems: tuple[str, ...]
    lag_ms: tuple[float, float, float]
    """p50, p99, max."""
    tokens_delivered: int
    peak_streams: int
    reconnects: int
    wall_s: float
    server_cpu_s: float
    rss_idle_kb: int
    rss_peak_kb: int
    poll_ms: tuple[float, float]
    """p50, p99."""
    polls: int
    poll_failures: int
    create_p99_ms: float
    upstream_cpu_s: float
    followers_cpu_s: float
    prober_cpu_s: float
    upstream_slip_p99_ms: float
    processes: int = 1
    """Server processes; ``server_cpu_s`` and the RSS figures are their sums."""
    redis_cpu_s: float = 0.0
    """``redis-server``'s CPU over the rung (0 for a system without it)."""
    redis_commands: int = 0
    """Commands Redis processed over the rung."""
    remote_lag_ms: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    """p50, p99, max of the jobs followed on another process than the one running
    them (included in ``lag_ms``); NaN with one process."""

    @property
    def cpu_ms_per_1k_tokens(self) -> float:
        """The server processes' CPU and Redis's, per 1,000 tokens delivered."""
        if not self.tokens_delivered:
            return math.nan
        return (self.server_cpu_s + self.redis_cpu_s) * 1e6 / self.tokens_delivered

    @property
    def redis_commands_per_token(self) -> float:
        return self.redis_commands / self.tokens_delivered if self.tokens_delivered else math.nan

    @property
    def rss_kb_per_job(self) -> float:
        return (self.rss_peak_kb - self.rss_idle_kb) / self.n

    def share(self, cpu_s: float) -> float:
        """CPU seconds as a percentage of one core over the rung's wall time."""
        return 100 * cpu_s / self.wall_s if self.wall_s else math.nan

    def correct(self) -> bool:
        return self.complete == self.n and self.exact == self.n

    def held(self, settings: Settings) -> bool:
        """Whether the system held the rung: correct, all at once, and on time."""
        if not self.correct():
            return False
        if settings.quick:
            return True
        concurrent = self.peak_streams >= self.n or settings.ramp >= settings.duration
        return concurrent and self.lag_ms[1] < settings.lag_limit_ms

    def to_json(self) -> dict[str, Any]:
        return {
            **attrs.asdict(self),
            "cpu_ms_per_1k_tokens": self.cpu_ms_per_1k_tokens,
            "rss_kb_per_job": self.rss_kb_per_job,
            "redis_commands_per_token": self.redis_commands_per_token,
        }


# -- processes -----------------------------------------------------------------


class _Lines:
    """Lines from a child's stdout."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def readline(self) -> bytes | None:
        """The next line without its newline; None at the end of the stream."""
        while (end := self._buffer.find(b"\n")) < 0:
            data = await self._stream.receive_some(65536)
            if not data:
                rest, self._buffer = self._buffer, b""
                return rest or None
            self._buffer += data
        line, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
        return line


@attrs.define
class _Child:
    name: str
    process: trio.Process
    lines: _Lines
    log: Path

    def log_tail(self) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-15:])

    async def wait_for(self, pattern: re.Pattern[bytes]) -> re.Match[bytes]:
        with trio.move_on_after(STARTUP_TIMEOUT):
            while (line := await self.lines.readline()) is not None:
                if found := pattern.search(line):
                    return found
        raise BenchmarkError(f"{self.name} did not start:\n{self.log_tail()}")


@asynccontextmanager
async def _spawn(
    name: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None
) -> AsyncIterator[_Child]:
    """Run ``argv`` for the block; on the way out SIGTERM, then SIGKILL after 10 s."""
    with log.open("wb") as errors:
        process = await trio.lowlevel.open_process(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            env=env,
            cwd=ROOT,
        )
    assert process.stdout is not None
    try:
        yield _Child(name, process, _Lines(process.stdout), log)
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                with trio.move_on_after(10):
                    await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    await pipe.aclose()


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU of process ``pid`` and its threads, from ``/proc``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICK


def _memory_kb(pid: int) -> tuple[int, int]:
    """``VmRSS`` and ``VmHWM`` of process ``pid``, in KB."""
    found = {"VmRSS": 0, "VmHWM": 0}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in found:
            found[key] = int(value.split()[0])
    return found["VmRSS"], found["VmHWM"]


def _troupe_env(
    system: System,
    node: int,
    settings: Settings,
    n: int,
    upstream_url: str,
    data_dir: Path,
    redis: RedisServer | None,
) -> dict[str, str]:
    """The environment of ``system``'s server process ``node``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TROUPE_")}
    env.pop("OPENROUTER_API_KEY", None)
    per_user = math.ceil(n / settings.users)
    assert system.store is not None
    env.update(
        {
            "TROUPE_STORE": system.store,
            "TROUPE_DATA_DIR": str(data_dir),
            "TROUPE_UPSTREAM": "openai",
            "TROUPE_UPSTREAM_BASE_URL": upstream_url + "/v1",
            "TROUPE_UPSTREAM_API_KEY": "sk-bench-not-a-key",
            "TROUPE_MAX_CONCURRENT_JOBS": str(n + 50),
            "TROUPE_MAX_JOBS_PER_USER": str(per_user + 10),
            "TROUPE_JOB_TIMEOUT": str(max(300.0, 3 * (settings.ramp + settings.duration))),
            "TROUPE_JWT_SECRET": JWT_SECRET,
            # As in service_bench: no log line per request on the server's CPU.
            "TROUPE_LOG_LEVEL": "warning",
        }
    )
    if system.store == "redis":
        expect(redis is not None, f"{system.name} needs a Redis server")
        assert redis is not None
        env["TROUPE_REDIS_URL"] = redis.url
        env["TROUPE_NODE_ID"] = f"bench-{node}"
    return env


def _authorizations(system: System, users: int) -> list[str]:
    if system.routes is not TROUPE:
        return [""] * users
    now = int(time.time())
    return [
        "Bearer "
        + jwt.encode(
            {"sub": f"bench-user-{u}", "workspace": "bench", "iat": now, "exp": now + 7200},
            JWT_SECRET,
            algorithm="HS256",
        )
        for u in range(users)
    ]


async def _empty(redis: RedisServer) -> None:
    """Delete everything in ``redis``, so that each rung starts on an empty store."""
    async with coredis.Redis.from_url(redis.url) as client:
        await client.flushall()


async def _commands(redis: RedisServer | None) -> int:
    """The commands ``redis`` has processed since it started; 0 without one."""
    if redis is None:
        return 0
    async with coredis.Redis.from_url(redis.url) as client:
        processed = (await client.info("stats"))["total_commands_processed"]
    expect(isinstance(processed, int), f"Redis counts its commands as {processed!r}")
    assert isinstance(processed, int)
    return processed


# -- one rung ------------------------------------------------------------------


async def run_rung(
    system: System, n: int, settings: Settings, workdir: Path, redis: RedisServer | None
) -> RungResult:
    """Run ``n`` jobs through ``system`` with fresh processes; ``redis`` is the Redis
    server of a system on Redis (emptied first)."""
    rundir = Path(tempfile.mkdtemp(prefix=f"{system.name}-{n}-", dir=workdir))
    python = sys.executable
    upstream_argv = [python, str(HERE / "jobs_upstream.py")]
    upstream_argv += ["--tokens", str(settings.tokens), "--rate", str(settings.rate)]
    # Only a system on Redis is charged with its CPU and commands.
    redis = redis if system.store == "redis" else None
    if redis is not None:
        await _empty(redis)
    async with _spawn("upstream", upstream_argv, rundir / "upstream.log") as upstream:
        found = await upstream.wait_for(_LISTENING)
        upstream_host, upstream_port = found[1].decode(), int(found[2])
        upstream_url = f"{upstream_host}:{upstream_port}"
        async with AsyncExitStack() as stack:
            servers = []
            for node in range(system.processes):
                if system.store is None:
                    argv = [python, str(HERE / "relay.py"), "--upstream", upstream_url + "/v1"]
                    env = None
                else:
                    argv = [python, str(ROOT / "examples" / "server.py"), "--port", "0"]
                    data_dir = rundir / f"data-{node}"
                    env = _troupe_env(system, node, settings, n, upstream_url, data_dir, redis)
                log = rundir / f"server-{node}.log"
                server = _spawn(f"{system.name} server {node}", argv, log, env)
                servers.append(await stack.enter_async_context(server))
            ports = [int((await server.wait_for(_LISTENING))[2]) for server in servers]
            authorizations = _authorizations(system, settings.users)
            base = {"routes": system.routes.name, "host": "127.0.0.1", "ports": ports}
            pids = _Pids([s.process.pid for s in servers], upstream.process.pid, redis)
            load = await _drive(system, n, settings, rundir, base, authorizations, pids)
            return await _finish(system, n, settings, base, authorizations, upstream_port, load)


@attrs.frozen
class _Pids:
    """The processes whose CPU a rung measures."""

    servers: list[int]
    upstream: int
    redis: RedisServer | None

    def cpu_seconds(self) -> tuple[float, float, float]:
        """CPU seconds so far of the servers (summed), the upstream and Redis."""
        redis = 0.0 if self.redis is None else _cpu_seconds(self.redis.pid)
        servers = sum(_cpu_seconds(pid) for pid in self.servers)
        return servers, _cpu_seconds(self.upstream), redis

    def memory_kb(self) -> tuple[int, int]:
        """The servers' ``VmRSS`` and ``VmHWM``, each summed."""
        rss, hwm = zip(*(_memory_kb(pid) for pid in self.servers), strict=True)
        return sum(rss), sum(hwm)


async def _drive(
    system: System,
    n: int,
    settings: Settings,
    rundir: Path,
    base: dict[str, Any],
    authorizations: list[str],
    pids: _Pids,
) -> dict[str, Any]:
    """Start the prober and the followers, give the signal, measure until they end."""
    python = sys.executable
    followers = min(settings.followers, n)
    specs = []
    for f in range(followers):
        jobs = []
        for i in range(f, n, followers):
            create, follow = system.placement(i)
            tag = f"{system.name}-{n}-{i}"
            jobs.append(
                {"index": i, "tag": tag, "user": i % settings.users}
                | {"create": create, "follow": follow}
            )
        spec = {
            **base,
            "tokens": settings.tokens,
            "ramp": settings.ramp,
            "total": n,
            "deadline": settings.ramp + settings.duration + DEADLINE_SLACK_SECONDS,
            "authorizations": authorizations,
            "jobs": jobs,
        }
        path = rundir / f"follower-{f}.json"
        path.write_bytes(orjson.dumps(spec))
        specs.append(path)
    prober_spec = rundir / "prober.json"
    prober_spec.write_bytes(
        orjson.dumps({**base, "rate": settings.poll_rate, "authorizations": authorizations})
    )
    prober_argv = [python, str(HERE / "jobs_prober.py"), str(prober_spec), str(rundir / "p.out")]
    async with _spawn("prober", prober_argv, rundir / "prober.log") as prober:
        async with _spawned_followers(followers, specs, rundir) as children:
            for child in children:
                expect(await child.lines.readline() == b"ready", f"{child.name}: not ready")
            await trio.sleep(SETTLE_SECONDS)
            rss_idle = rss_peak = pids.memory_kb()[0]
            commands = await _commands(pids.redis)
            cpu_before = pids.cpu_seconds()
            began = time.perf_counter()
            go = f"go {time.time_ns() + int(GO_DELAY_SECONDS * 1e9)}\n".encode()
            for child in children:
                assert child.process.stdin is not None
                await child.process.stdin.send_all(go)
            to_prober, from_followers = trio.open_memory_channel[bytes](math.inf)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_feed_prober, prober, from_followers)
                async with trio.open_nursery() as load:
                    for child in children:
                        load.start_soon(_relay_lines, child, to_prober.clone())
                    to_prober.close()

                    async def sample() -> None:
                        nonlocal rss_peak
                        while True:
                            rss_peak = max(rss_peak, pids.memory_kb()[0])
                            await trio.sleep(RSS_SAMPLE_SECONDS)

                    nursery.start_soon(sample)
                wall = time.perf_counter() - began
                cpu = [
                    after - before
                    for after, before in zip(pids.cpu_seconds(), cpu_before, strict=True)
                ]
                rss_peak = max(rss_peak, *pids.memory_kb())
                nursery.cancel_scope.cancel()
            commands = await _commands(pids.redis) - commands
            assert prober.process.stdin is not None
            await prober.process.stdin.aclose()
            for child in children:
                await child.process.wait()
                expect(child.process.returncode == 0, f"{child.name} failed:\n{child.log_tail()}")
        await prober.process.wait()
        expect(prober.process.returncode == 0, f"the prober failed:\n{prober.log_tail()}")
    results = [orjson.loads((rundir / f"f{f}.out").read_bytes()) for f in range(followers)]
    return {
        "wall_s": wall,
        "server_cpu_s": cpu[0],
        "upstream_cpu_s": cpu[1],
        "redis_cpu_s": cpu[2],
        "redis_commands": commands,
        "rss_idle_kb": rss_idle,
        "rss_peak_kb": rss_peak,
        "followers": results,
        "prober": orjson.loads((rundir / "p.out").read_bytes()),
    }


@asynccontextmanager
async def _spawned_followers(
    count: int, specs: list[Path], rundir: Path
) -> AsyncIterator[list[_Child]]:
    """Run the follower processes for the block, stopped like :func:`_spawn` on the way out."""
    async with AsyncExitStack() as stack:
        children = []
        for f in range(count):
            argv = [sys.executable, str(HERE / "jobs_follower.py"), str(specs[f])]
            argv.append(str(rundir / f"f{f}.out"))
            log = rundir / f"follower-{f}.log"
            children.append(await stack.enter_async_context(_spawn(f"follower {f}", argv, log)))
        yield children


async def _relay_lines(child: _Child, out: trio.MemorySendChannel[bytes]) -> None:
    """Pass a follower's ``job``/``done`` lines on until its stdout ends."""
    async with out:
        while (line := await child.lines.readline()) is not None:
            if line.startswith((b"job ", b"done ")):
                await out.send(line + b"\n")


async def _feed_prober(prober: _Child, lines: trio.MemoryReceiveChannel[bytes]) -> None:
    assert prober.process.stdin is not None
    async with lines:
        async for line in lines:
            await prober.process.stdin.send_all(line)


async def _finish(
    system: System,
    n: int,
    settings: Settings,
    base: dict[str, Any],
    authorizations: list[str],
    upstream_port: int,
    load: dict[str, Any],
) -> RungResult:
    """Check the stored contents, read from the first server process, against the
    upstream's, and gather the figures."""
    routes = system.routes
    upstream = await HttpConnection.open("127.0.0.1", upstream_port)
    try:
        stats = orjson.loads((await upstream.request("GET", "/stats")).body)
    finally:
        await upstream.aclose()
    sent: dict[str, dict[str, Any]] = stats["sent"]
    jobs = [job for result in load["followers"] for job in result["jobs"]]
    followers = load["followers"]
    remote_lags = sorted(lag for result in followers for lag in result["remote_lags_us"])
    lags = sorted([lag for result in followers for lag in result["lags_us"]] + remote_lags)
    problems: list[str] = []
    complete = exact = 0
    connection = await HttpConnection.open(base["host"], base["ports"][0])
    try:
        for job in sorted(jobs, key=lambda job: int(job["index"])):
            job_problems = [str(p) for p in job.get("problems", ())]
            stored: dict[str, Any] = {}
            if job["id"] is not None:
                token = authorizations[job["index"] % settings.users]
                answer = await connection.request(
                    "GET", routes.job_path(job["id"]), {"Authorization": token} if token else {}
                )
                stored = orjson.loads(answer.body) if answer.status == 200 else {}
            upstream_side = sent.get(job["tag"], {})
            if job.get("status") == "complete" and stored.get("status") == "complete":
                complete += 1
            text = stored.get(routes.content_field)
            if not isinstance(text, str) or content_digest(text) != job.get("digest"):
                job_problems.append("the stored content differs from what the follower got")
            if upstream_side.get("digest") != job.get("digest") or not upstream_side.get(
                "finished"
            ):
                job_problems.append("what the follower got differs from what the upstream sent")
            if job["ok"] and len(job_problems) == len(job.get("problems", ())):
                exact += 1
            problems.extend(f"job {job['index']}: {p}" for p in job_problems)
    finally:
        await connection.aclose()
    expect(len(jobs) == n, f"{len(jobs)} of {n} jobs reported")
    prober = load["prober"]
    polls = sorted(prober["latencies_us"])
    creates = sorted(float(job.get("create_ms", math.nan)) for job in jobs if "create_ms" in job)
    return RungResult(
        system=system.name,
        n=n,
        complete=complete,
        exact=exact,
        problems=tuple(problems[:10]),
        lag_ms=_lag_ms(lags),
        tokens_delivered=len(lags),
        peak_streams=stats["peak_streams"],
        reconnects=sum(int(job.get("reconnects", 0)) for job in jobs),
        wall_s=load["wall_s"],
        server_cpu_s=load["server_cpu_s"],
        rss_idle_kb=load["rss_idle_kb"],
        rss_peak_kb=load["rss_peak_kb"],
        poll_ms=(percentile(polls, 0.50) / 1000, percentile(polls, 0.99) / 1000),
        polls=len(polls),
        poll_failures=prober["failures"],
        create_p99_ms=percentile(creates, 0.99),
        upstream_cpu_s=load["upstream_cpu_s"],
        followers_cpu_s=sum(result["cpu_s"] for result in load["followers"]),
        prober_cpu_s=prober["cpu_s"],
        upstream_slip_p99_ms=stats["slip_us_p99"] / 1000,
        processes=system.processes,
        redis_cpu_s=load["redis_cpu_s"],
        redis_commands=load["redis_commands"],
        remote_lag_ms=_lag_ms(remote_lags),
    )


def _lag_ms(lags_us: list[int]) -> tuple[float, float, float]:
    """p50, p99 and max of sorted lags in µs, in ms; NaN when there are none."""
    return (
        percentile(lags_us, 0.50) / 1000,
        percentile(lags_us, 0.99) / 1000,
        (lags_us[-1] if lags_us else math.nan) / 1000,
    )


# -- the search and its tables -------------------------------------------------


def _progress(result: RungResult, held: bool) -> str:
    p50, p99, worst = result.lag_ms
    verdict = "held" if held else "NOT held"
    redis = (
        f" (Redis {result.share(result.redis_cpu_s):3.0f}% of a core,"
        f" {result.redis_commands_per_token:.1f} commands/token)"
        if result.redis_commands
        else ""
    )
    remote = ""
    if not math.isnan(result.remote_lag_ms[1]):
        remote = " (followed on the other process: p50 {:.1f} p99 {:.1f} max {:.1f})".format(
            *result.remote_lag_ms
        )
    return (
        f"  {result.system:>7} N={result.n:<5}"
        f" lag p50 {p50:6.1f} p99 {p99:7.1f} max {worst:7.1f} ms{remote}"
        f" | complete {result.complete}/{result.n}, exact {result.exact}/{result.n},"
        f" peak streams {result.peak_streams}"
        f" | server {result.cpu_ms_per_1k_tokens:5.0f} ms CPU/1k tokens{redis},"
        f" {result.rss_kb_per_job:5.1f} KB/job, poll p99 {result.poll_ms[1]:6.1f} ms"
        f" | load gen: upstream {result.share(result.upstream_cpu_s):3.0f}%,"
        f" followers {result.share(result.followers_cpu_s):3.0f}% of a core,"
        f" upstream slip p99 {result.upstream_slip_p99_ms:.0f} ms"
        f" -> {verdict}"
    )


async def search(
    settings: Settings, workdir: Path, redis: RedisServer | None
) -> dict[str, list[RungResult]]:
    """Climb the ladder with every system, taking turns at each rung, each until a
    rung it misses ``attempts`` times in a row; every run is kept."""
    rungs: dict[str, list[RungResult]] = {system: [] for system in settings.systems}
    climbing = list(settings.systems)
    for n in settings.ladder:
        for system in list(climbing):
            for _attempt in range(settings.attempts):
                result = await run_rung(SYSTEMS[system], n, settings, workdir, redis)
                held = result.held(settings)
                rungs[system].append(result)
                print(_progress(result, held), flush=True)
                for problem in result.problems[:3]:
                    print(f"      {problem}", flush=True)
                if held:
                    break
            else:
                climbing.remove(system)
        if not climbing:
            break
    return rungs


def _held(results: list[RungResult], settings: Settings) -> RungResult | None:
    """The run at the largest N held (of several there, the one with the lowest p99)."""
    held = [result for result in results if result.held(settings)]
    return max(held, key=lambda result: (result.n, -result.lag_ms[1])) if held else None


def _missed(results: list[RungResult], settings: Settings) -> RungResult | None:
    """The best run at the first N that no run held, where the climb stopped."""
    held = {result.n for result in results if result.held(settings)}
    missed = [result for result in results if result.n not in held]
    return min(missed, key=lambda result: (result.n, result.lag_ms[1])) if missed else None


def _ratio(value: float, baseline: float) -> str:
    if not baseline or math.isnan(value) or math.isnan(baseline):
        return "-"
    return f"{value / baseline:.2f}x"


def _pairs(best: dict[str, RungResult | None]) -> list[tuple[RungResult, RungResult]]:
    """The :data:`COMPARISONS` whose two systems both have a result in ``best``."""
    return [
        (first, second)
        for a, b in COMPARISONS
        if (first := best.get(a)) is not None and (second := best.get(b)) is not None
    ]


def _lags(lag_ms: tuple[float, float, float]) -> str:
    if math.isnan(lag_ms[1]):
        return "-"
    return " / ".join(f"{value:,.0f}" for value in lag_ms) + " ms"


def _redis_load(result: RungResult) -> str:
    """Redis's CPU and its commands per token, or "-" for a system without it."""
    if not result.redis_commands:
        return "-"
    return f"{result.share(result.redis_cpu_s):.0f}%, {result.redis_commands_per_token:.1f}"


def summary_table(rungs: dict[str, list[RungResult]], settings: Settings) -> Table:
    table = Table(
        title=f"live jobs held: {settings.tokens} tokens a job at "
        f"{settings.rate:g} tokens/s, p99 lag < {settings.lag_limit_ms:g} ms"
    )
    for header in (
        "system",
        "N held",
        "lag p99 at N",
        "CPU / 1k tokens",
        "Redis CPU, commands / token",
        "RSS / job",
        "poll p99",
        "load gen CPU (upstream / followers)",
        "first N missed",
    ):
        table.add_column(header, justify="left" if header == "system" else "right")
    held = {system: _held(results, settings) for system, results in rungs.items()}
    for system, results in rungs.items():
        best = held[system]
        missed = _missed(results, settings)
        missed_text = "-" if missed is None else f"{missed.n} (p99 {missed.lag_ms[1]:,.0f} ms)"
        if best is None:
            table.add_row(system, "0", "-", "-", "-", "-", "-", "-", missed_text)
            continue
        table.add_row(
            system,
            str(best.n),
            f"{best.lag_ms[1]:,.0f} ms",
            f"{best.cpu_ms_per_1k_tokens:,.0f} ms",
            _redis_load(best),
            f"{best.rss_kb_per_job:,.1f} KB",
            f"{best.poll_ms[1]:,.1f} ms",
            f"{best.share(best.upstream_cpu_s):.0f}% / {best.share(best.followers_cpu_s):.0f}%",
            missed_text,
        )
    # Lag and poll latency at two different N say nothing: see the table at one N.
    for first, second in _pairs(held):
        table.add_row(
            f"{first.system} / {second.system}",
            _ratio(first.n, second.n),
            "-",
            _ratio(first.cpu_ms_per_1k_tokens, second.cpu_ms_per_1k_tokens),
            "-",
            _ratio(first.rss_kb_per_job, second.rss_kb_per_job),
            "-",
            "",
            "",
        )
    return table


def same_n_table(rungs: dict[str, list[RungResult]], settings: Settings) -> Table | None:
    """Every system at the largest N all of them held; None if there is no such N."""
    held = {system: [r for r in results if r.held(settings)] for system, results in rungs.items()}
    common = set.intersection(*({r.n for r in results} for results in held.values()))
    if not common:
        return None
    n = max(common)
    best = {
        system: min((r for r in results if r.n == n), key=lambda r: r.lag_ms[1])
        for system, results in held.items()
    }
    table = Table(title=f"every system at N = {n}, the largest N all held")
    for header in (
        "system",
        "lag p50 / p99 / max",
        "the same, followed on the other process",
        "CPU / 1k tokens",
        "server CPU",
        "Redis CPU, commands / token",
        "RSS / job",
        "poll p50 / p99",
        "load gen CPU (upstream / followers)",
    ):
        table.add_column(header, justify="left" if header == "system" else "right")
    for r in best.values():
        table.add_row(
            r.system,
            _lags(r.lag_ms),
            _lags(r.remote_lag_ms),
            f"{r.cpu_ms_per_1k_tokens:,.0f} ms",
            f"{r.share(r.server_cpu_s):.0f}% of a core",
            _redis_load(r),
            f"{r.rss_kb_per_job:,.1f} KB",
            f"{r.poll_ms[0]:,.1f} / {r.poll_ms[1]:,.1f} ms",
            f"{r.share(r.upstream_cpu_s):.0f}% / {r.share(r.followers_cpu_s):.0f}%",
        )
    for first, second in _pairs(dict(best)):
        table.add_row(
            f"{first.system} / {second.system}",
            " / ".join(_ratio(a, b) for a, b in zip(first.lag_ms, second.lag_ms, strict=True)),
            "",
            _ratio(first.cpu_ms_per_1k_tokens, second.cpu_ms_per_1k_tokens),
            _ratio(first.server_cpu_s, second.server_cpu_s),
            "",
            _ratio(first.rss_kb_per_job, second.rss_kb_per_job),
            " / ".join(_ratio(a, b) for a, b in zip(first.poll_ms, second.poll_ms, strict=True)),
            "",
        )
    return table


def scale_out(rungs: dict[str, list[RungResult]], settings: Settings) -> float | None:
    """Jobs held by two processes on Redis over one; None unless both held some."""
    two, one = (_held(rungs.get(name, []), settings) for name in ("redis-2", "redis-1"))
    return None if two is None or one is None else two.n / one.n


def print_tables(console: Console, rungs: dict[str, list[RungResult]], settings: Settings) -> None:
    console.print(summary_table(rungs, settings))
    if (same := same_n_table(rungs, settings)) is not None:
        console.print(same)
    if (ratio := scale_out(rungs, settings)) is not None:
        verdict = "met" if ratio >= SCALE_OUT_TARGET else "missed"
        console.print(
            f"2 processes on Redis held {ratio:.2f}x the jobs of 1 "
            f"(target >= {SCALE_OUT_TARGET:g}x: {verdict})",
            highlight=False,
        )
    console.print(
        "lag = follower receipt - upstream send stamp, every token; CPU from /proc/<pid>/stat "
        "over the rung: CPU / 1k tokens counts the server processes and redis-server, server "
        "CPU the server processes; RSS = peak minus idle VmRSS of the server processes / N; "
        "Redis and load gen CPU in % of one core. Everything shares the machine: compare the "
        "ratios.",
        highlight=False,
    )


def _from_json(cls: type[Any], data: dict[str, Any]) -> Any:
    names = {field.name for field in attrs.fields(cls)}
    return cls(**{k: _from_json_value(v) for k, v in data.items() if k in names})


def _from_json_value(value: Any) -> Any:
    """A field's value as saved: lists were tuples, and JSON writes NaN as null."""
    if isinstance(value, list):
        return tuple(_from_json_value(item) for item in value)
    return math.nan if value is None else value


def load_report(path: Path) -> tuple[dict[str, list[RungResult]], Settings]:
    """The rungs and settings of a run saved with ``--json``."""
    document = orjson.loads(path.read_bytes())
    settings: Settings = _from_json(Settings, document["settings"])
    rungs = {
        system: [_from_json(RungResult, r) for r in results]
        for system, results in document["rungs"].items()
    }
    return rungs, settings


def _parse_ladder(text: str) -> tuple[int, ...]:
    values = tuple(int(part) for part in text.split(",") if part.strip())
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive job counts")
    return tuple(sorted(set(values)))


def _parse_systems(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names or any(name not in SYSTEMS for name in names):
        raise argparse.ArgumentTypeError(f"a comma-separated list of {', '.join(SYSTEMS)}")
    return tuple(dict.fromkeys(names))


def parse_settings(argv: list[str] | None) -> tuple[Settings, Path | None, Path | None]:
    """The settings, the ``--json`` path and the ``--report`` path from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="one small case, correctness only")
    parser.add_argument("--ladder", type=_parse_ladder, help="job counts to try, e.g. 50,100,200")
    parser.add_argument("--tokens", type=int, help="tokens per job (200; quick 20)")
    parser.add_argument("--rate", type=float, help="tokens per second per job (20; quick 200)")
    parser.add_argument("--ramp", type=float, help="seconds over which jobs start (2; quick 0.2)")
    parser.add_argument("--users", type=int, default=10, help="users the jobs are spread over")
    parser.add_argument("--followers", type=int, default=4, help="follower processes")
    parser.add_argument("--poll-rate", type=float, default=20.0, help="polls per second")
    parser.add_argument("--lag-limit", type=float, default=250.0, help="p99 lag limit, ms")
    parser.add_argument(
        "--attempts", type=int, default=2, help="runs of a rung before a miss ends the climb"
    )
    parser.add_argument(
        "--systems",
        type=_parse_systems,
        default=tuple(SYSTEMS),
        help=f"which systems to measure: {','.join(SYSTEMS)} (all)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    parser.add_argument(
        "--report", type=Path, metavar="PATH", help="print the tables of a --json file; run nothing"
    )
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    settings = Settings(
        ladder=args.ladder or ((20,) if quick else DEFAULT_LADDER),
        tokens=args.tokens or (20 if quick else 200),
        rate=args.rate or (200.0 if quick else 20.0),
        ramp=args.ramp if args.ramp is not None else (0.2 if quick else 2.0),
        users=args.users,
        followers=2 if quick and args.followers == 4 else args.followers,
        poll_rate=args.poll_rate,
        lag_limit_ms=args.lag_limit,
        quick=quick,
        attempts=1 if quick else args.attempts,
        systems=args.systems,
    )
    if min(settings.tokens, settings.users, settings.followers, settings.attempts) < 1:
        parser.error("--tokens, --users, --followers and --attempts must be >= 1")
    if settings.rate <= 0 or settings.poll_rate <= 0:
        parser.error("--rate and --poll-rate must be > 0")
    return settings, args.json, args.report


def main(argv: list[str] | None = None) -> int:
    """Run the search (or the quick case), print the tables; 1 if a quick case was wrong."""
    settings, json_path, report = parse_settings(argv)
    # A table written to a pipe or a file keeps its width.
    console = Console(width=None if sys.stdout.isatty() else 160)
    if report is not None:
        saved, saved_settings = load_report(report)
        print_tables(console, saved, saved_settings)
        return 0
    # Every job holds two sockets on the server; make room for them in every child.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    info = machine(PACKAGES)
    print_machine(console, info, PACKAGES)
    console.print(
        f"ladder {', '.join(map(str, settings.ladder))}; {settings.tokens} tokens a job at "
        f"{settings.rate:g}/s, started over {settings.ramp:g} s by {settings.followers} follower "
        f"processes for {settings.users} users; polls {settings.poll_rate:g}/s",
        highlight=False,
    )
    if settings.quick:
        console.print("[yellow]quick run: correctness only, the figures mean nothing[/]")
    on_redis = any(SYSTEMS[system].store == "redis" for system in settings.systems)
    with (
        tempfile.TemporaryDirectory(prefix="troupe-jobs-bench-") as directory,
        ExitStack() as stack,
    ):
        redis = stack.enter_context(redis_server(Path(directory))) if on_redis else None
        if redis is not None:
            info["redis_server"] = redis.version
            console.print(f"redis-server {redis.version}, no persistence", highlight=False)
        rungs = trio.run(search, settings, Path(directory), redis)
    print_tables(console, rungs, settings)
    if json_path is not None:
        document = {
            "machine": info,
            "settings": attrs.asdict(settings),
            "rungs": {system: [r.to_json() for r in results] for system, results in rungs.items()},
            "held": {
                system: (None if (best := _held(results, settings)) is None else best.n)
                for system, results in rungs.items()
            },
        }
        json_path.write_text(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
        console.print(f"results written to {json_path}")
    if settings.quick:
        wrong = [r for results in rungs.values() for r in results if not r.correct()]
        return 1 if wrong else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
