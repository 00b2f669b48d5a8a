"""What every troupe benchmark shares: sides, repeats, results and their table.

Each benchmark times troupe and a baseline (or several) in the same process,
warms every side up on a tenth of the work, then runs them in turn
``REPEATS`` times; a side's rate is its best repeat. Compare the ratio, not
the absolute rates.
"""

from __future__ import annotations

import gc
import importlib.metadata
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import attrs
import trio
from rich.console import Console
from rich.table import Table

__all__ = [
    "REPEATS",
    "WARMUP_FRACTION",
    "Benchmark",
    "BenchmarkError",
    "BenchmarkResult",
    "RedisServer",
    "Side",
    "SideResult",
    "Timed",
    "expect",
    "machine",
    "measure",
    "print_machine",
    "rate",
    "redis_server",
    "results_table",
    "run_benchmark",
    "under_trio",
]

REPEATS = 3
WARMUP_FRACTION = 10
REDIS_START_TIMEOUT: Final = 10.0

# A timed function does ``n`` operations and returns the seconds they took.
Timed = Callable[[int], float]


class BenchmarkError(RuntimeError):
    """A benchmark did not do the work it claims to have measured."""


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise BenchmarkError(what)


def under_trio(fn: Callable[[int], Awaitable[float]]) -> Timed:
    """``fn`` run by a fresh ``trio.run``, so no state leaks from one repeat to the next."""

    def timed(n: int) -> float:
        elapsed: float = trio.run(fn, n)
        return elapsed

    return timed


@attrs.frozen
class Side:
    """One side of a comparison: a label, its timed function and its amount of work."""

    label: str
    timed: Timed
    n: int


@attrs.frozen
class Benchmark:
    """A troupe measurement and its baseline; ``unit`` names what is counted per second.

    ``target`` is the least ratio to ``baseline`` that passes. ``more_baselines``
    are also timed in the same turns, and reported with their ratios but no target.
    """

    name: str
    unit: str
    troupe: Side
    baseline: Side
    target: float | None
    more_baselines: tuple[Side, ...] = ()


@attrs.frozen
class SideResult:
    label: str
    n: int
    seconds: tuple[float, ...]

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rate(self) -> float:
        """Operations per second in the best repeat."""
        return self.n / self.best if self.best > 0 else math.inf


@attrs.frozen
class BenchmarkResult:
    name: str
    unit: str
    troupe: SideResult
    baseline: SideResult
    target: float | None
    more_baselines: tuple[SideResult, ...] = ()

    @property
    def ratio(self) -> float:
        return self.ratio_to(self.baseline)

    def ratio_to(self, baseline: SideResult) -> float:
        return self.troupe.rate / baseline.rate

    @property
    def verdict(self) -> str:
        """``PASS`` or ``MISS`` against the target; ``-`` when there is none."""
        if self.target is None:
            return "-"
        return "PASS" if self.ratio >= self.target else "MISS"

    def to_json(self) -> dict[str, Any]:
        document = {
            "name": self.name,
            "unit": self.unit,
            "troupe": _side_json(self.troupe),
            "baseline": _side_json(self.baseline),
            "ratio": self.ratio,
            "target": self.target,
            "verdict": self.verdict,
        }
        if self.more_baselines:
            document["more_baselines"] = [
                {**_side_json(side), "ratio": self.ratio_to(side)} for side in self.more_baselines
            ]
        return document


def _side_json(side: SideResult) -> dict[str, Any]:
    return {
        "label": side.label,
        "n": side.n,
        "seconds": list(side.seconds),
        "best_seconds": side.best,
        "median_seconds": side.median,
        "rate": side.rate,
    }


def measure(timed: Timed, n: int) -> float:
    # Garbage left by the previous run must not be collected on this one's clock.
    gc.collect()
    return timed(n)


def run_benchmark(bench: Benchmark, repeats: int = REPEATS) -> BenchmarkResult:
    """Warm up every side, then time ``repeats`` turns of each side in order.

    Taking turns spreads a drift in the machine's speed over every side.
    Blocks for the whole run. Raises :class:`BenchmarkError` if a side did
    not do its work.
    """
    sides = (bench.troupe, bench.baseline, *bench.more_baselines)
    for side in sides:
        measure(side.timed, max(1, side.n // WARMUP_FRACTION))
    samples: list[list[float]] = [[] for _ in sides]
    for _ in range(repeats):
        for side, seconds in zip(sides, samples, strict=True):
            seconds.append(measure(side.timed, side.n))
    troupe, baseline, *more = (
        SideResult(side.label, side.n, tuple(seconds))
        for side, seconds in zip(sides, samples, strict=True)
    )
    return BenchmarkResult(bench.name, bench.unit, troupe, baseline, bench.target, tuple(more))


def machine(packages: Iterable[str] = ()) -> dict[str, Any]:
    """What the figures were measured on, with the versions of ``packages``."""
    info = {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "trio": trio.__version__,
        # Other work on the machine skews absolute rates more than ratios.
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    for package in packages:
        info[package] = importlib.metadata.version(package)
    return info


def print_machine(console: Console, info: dict[str, Any], packages: Iterable[str]) -> None:
    """Print what :func:`machine` found."""
    versions = ", ".join(f"{package} {info[package]}" for package in packages)
    console.print(
        f"machine: {info['cores']} cores, {info['cpu']}, {info['platform']}",
        markup=False,
        highlight=False,
    )
    console.print(
        f"python: {info['implementation']} {info['python']}, trio {info['trio']}, {versions}",
        markup=False,
        highlight=False,
    )
    if info["load_average"] is not None:
        console.print(f"load average: {' '.join(f'{x:.2f}' for x in info['load_average'])}")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def rate(value: float) -> str:
    return f"{value:,.0f}"


def results_table(results: list[BenchmarkResult], title: str) -> Table:
    """The results as a table: each rate with its unit and its amount of work."""
    table = Table(title=f"{title}, best of {REPEATS} repeats")
    table.add_column("benchmark / baseline")
    table.add_column("troupe", justify="right")
    table.add_column("baseline", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("target", justify="right")
    for result in results:
        verdict = {"PASS": " [green]PASS[/]", "MISS": " [red]MISS[/]"}.get(result.verdict, "")
        table.add_row(
            f"{result.name}\n[dim]vs {result.baseline.label}[/]",
            f"{rate(result.troupe.rate)} {result.unit}\n[dim]n={result.troupe.n:,}[/]",
            f"{rate(result.baseline.rate)} {result.unit}\n[dim]n={result.baseline.n:,}[/]",
            f"{result.ratio:.2f}x",
            ("-" if result.target is None else f">= {result.target:g}x") + verdict,
        )
        for baseline in result.more_baselines:
            table.add_row(
                f"[dim]vs {baseline.label}[/]",
                f"{rate(result.troupe.rate)} {result.unit}\n[dim]same runs[/]",
                f"{rate(baseline.rate)} {result.unit}\n[dim]n={baseline.n:,}[/]",
                f"{result.ratio_to(baseline):.2f}x",
                "-",
            )
    return table


@attrs.frozen
class RedisServer:
    """A running ``redis-server``: where to reach it, its process id (for its CPU) and
    its version."""

    url: str
    pid: int
    version: str


@contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    """Run a ``redis-server`` of the benchmark's own for the block: 127.0.0.1 at a free
    port, working in ``directory``, with no persistence.

    Blocks until it answers ``PING``; stops it (SIGTERM, then SIGKILL after 10 s) on
    the way out. Raises :class:`BenchmarkError` if ``redis-server`` is not installed
    or does not start.
    """
    executable = shutil.which("redis-server")
    expect(executable is not None, "redis-server not found: install Debian's redis-server")
    assert executable is not None
    found = subprocess.run([executable, "--version"], capture_output=True, text=True, check=True)
    version = found.stdout.partition(" v=")[2].split(" ", 1)[0] or found.stdout.strip()
    port = _free_port()
    log = directory / "redis.log"
    argv = [executable, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(directory)]
    argv += ["--save", "", "--appendonly", "no", "--logfile", str(log)]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    try:
        _wait_for_pong(process, port, log)
        yield RedisServer(f"redis://127.0.0.1:{port}/0", process.pid, version)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_for_pong(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + REDIS_START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                if connection.recv(64) == b"+PONG\r\n":
                    return
        except OSError:
            pass
        time.sleep(0.02)
    tail = log.read_text(errors="replace").splitlines()[-10:] if log.exists() else []
    raise BenchmarkError("redis-server did not start:\n" + "\n".join(tail))
