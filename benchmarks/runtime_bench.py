"""Benchmarks of troupe's actor runtime, each against a baseline measured in the same run.

Usage::

    python benchmarks/runtime_bench.py [--quick] [--json PATH]

The benchmarks, with their baselines:

* tell: one sender tells 1,000,000 small messages to one actor (mailbox
  1000), timed until a final ask is answered; against a raw trio loop of
  ``await send`` and ``async for`` over a memory channel of the same size.
* ask: 200,000 sequential ``ask(message, timeout=1.0)`` to an echoing actor;
  against 50,000 ``ask`` to a pykka ``ThreadingActor`` in the same process.
  The sides do different amounts of work, so compare their rates.
* fan-out: one sender tells 1,000,000 messages round-robin to 100 actors, then
  asks each for its count; against 100 trio tasks each draining a memory
  channel, fed with ``await send``.
* restart: a child that crashes on every message, under a ONE_FOR_ONE
  supervisor that never gives up, restarted 50,000 times; against
  ``nursery.start`` of 50,000 tasks that do the same start-up work and return.

Every benchmark runs both sides once on a tenth of the work to warm up, then
three times each, alternating troupe and baseline so that a drift in the
machine's speed hits both. The reported rate of each side is its *best*
repeat (the least disturbed one). The comparable figure is the ratio
``troupe rate / baseline rate``: absolute rates vary from machine to machine,
the ratio much less.

``--quick`` divides the work by 100 for a smoke run; its ratios are only
indicative. ``--json PATH`` also writes the results, the machine description
and every repeat's timing to ``PATH``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pykka
import trio
from rich.console import Console
from rich.table import Table

from runtime import (
    Actor,
    ChildSpec,
    Restart,
    Strategy,
    SupervisorSpec,
    open_system,
)

__all__ = [
    "Benchmark",
    "BenchmarkError",
    "BenchmarkResult",
    "Side",
    "SideResult",
    "benchmarks",
    "machine",
    "main",
    "results_table",
    "run_benchmark",
]

REPEATS = 3
WARMUP_FRACTION = 10
QUICK_DIVISOR = 100
MAILBOX = 1000
FAN_OUT_ACTORS = 100
ASK_TIMEOUT = 1.0

# A timed function does ``n`` operations and returns the seconds they took.
Timed = Callable[[int], float]


class BenchmarkError(RuntimeError):
    """A benchmark did not do the work it claims to have measured."""


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise BenchmarkError(what)


# -- tell throughput -----------------------------------------------------------


class _Report:
    """The message that asks a :class:`Counter` for the number of messages it handled."""


REPORT = _Report()


class Counter(Actor):
    """Counts the messages it handles; answers :data:`REPORT` with the count."""

    def __init__(self) -> None:
        self.count = 0

    async def handle(self, message: Any) -> Any:
        if message is REPORT:
            return self.count
        self.count += 1
        return None


async def _troupe_tell(n: int) -> float:
    async with open_system() as system:
        ref = await system.spawn(Counter, mailbox_size=MAILBOX)
        start = time.perf_counter()
        for i in range(n):
            await ref.tell(i)
        # The ask queues behind every tell, so its reply means all were handled.
        count = await ref.ask(REPORT, timeout=None)
        elapsed = time.perf_counter() - start
    _expect(count == n, f"the actor handled {count} of {n} messages")
    return elapsed


async def _trio_tell(n: int) -> float:
    send, recv = trio.open_memory_channel[int](MAILBOX)
    count = 0

    async def consume() -> None:
        nonlocal count
        async with recv:
            async for _ in recv:
                count += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        start = time.perf_counter()
        async with send:
            for i in range(n):
                await send.send(i)
    elapsed = time.perf_counter() - start
    _expect(count == n, f"the consumer received {count} of {n} messages")
    return elapsed


# -- ask round trips -----------------------------------------------------------


class Echo(Actor):
    """Replies to every message with the message itself."""

    async def handle(self, message: Any) -> Any:
        return message


async def _troupe_ask(n: int) -> float:
    async with open_system() as system:
        ref = await system.spawn(Echo, mailbox_size=MAILBOX)
        start = time.perf_counter()
        for i in range(n):
            reply = await ref.ask(i, timeout=ASK_TIMEOUT)
        elapsed = time.perf_counter() - start
    _expect(n == 0 or reply == n - 1, "the last reply is not the last message")
    return elapsed


class PykkaEcho(pykka.ThreadingActor):
    """pykka's counterpart of :class:`Echo`."""

    def on_receive(self, message: Any) -> Any:
        return message


def _pykka_ask(n: int) -> float:
    ref = PykkaEcho.start()
    try:
        start = time.perf_counter()
        for i in range(n):
            reply = ref.ask(i, timeout=ASK_TIMEOUT)
        elapsed = time.perf_counter() - start
    finally:
        ref.stop()
    _expect(n == 0 or reply == n - 1, "the last reply is not the last message")
    return elapsed


# -- fan-out -------------------------------------------------------------------


async def _troupe_fan_out(m: int) -> float:
    rounds = m // FAN_OUT_ACTORS
    async with open_system() as system:
        refs = [await system.spawn(Counter, mailbox_size=MAILBOX) for _ in range(FAN_OUT_ACTORS)]
        start = time.perf_counter()
        for i in range(rounds):
            for ref in refs:
                await ref.tell(i)
        counts = [await ref.ask(REPORT, timeout=None) for ref in refs]
        elapsed = time.perf_counter() - start
    _expect(counts == [rounds] * FAN_OUT_ACTORS, f"uneven counts: {set(counts)} != {rounds}")
    return elapsed


async def _trio_fan_out(m: int) -> float:
    rounds = m // FAN_OUT_ACTORS
    channels = [trio.open_memory_channel[int](MAILBOX) for _ in range(FAN_OUT_ACTORS)]
    counts = [0] * FAN_OUT_ACTORS

    async def consume(index: int, recv: trio.MemoryReceiveChannel[int]) -> None:
        async with recv:
            async for _ in recv:
                counts[index] += 1

    async with trio.open_nursery() as nursery:
        for index, (_, recv) in enumerate(channels):
            nursery.start_soon(consume, index, recv)
        sends = [send for send, _ in channels]
        start = time.perf_counter()
        for i in range(rounds):
            for send in sends:
                await send.send(i)
        # Closing plays the part of the final asks: each consumer ends once drained.
        for send in sends:
            await send.aclose()
    elapsed = time.perf_counter() - start
    _expect(counts == [rounds] * FAN_OUT_ACTORS, f"uneven counts: {set(counts)} != {rounds}")
    return elapsed


# -- restart cost --------------------------------------------------------------


class _Crash(Exception):
    """What :class:`Crasher` raises on every message."""


@attrs.define
class StartCounter:
    """Counts starts; sets ``done`` at the ``goal``-th one."""

    goal: int
    starts: int = 0
    done: trio.Event = attrs.field(factory=trio.Event)

    def started(self) -> None:
        self.starts += 1
        if self.starts >= self.goal:
            self.done.set()


class Crasher(Actor):
    """Counts its start, then crashes on every message."""

    def __init__(self, starts: StartCounter) -> None:
        self._starts = starts

    async def on_start(self) -> None:
        self._starts.started()

    async def handle(self, message: Any) -> Any:
        raise _Crash("crash on purpose")


async def _troupe_restart(n: int) -> float:
    # The first start is not a restart: n restarts make n + 1 starts.
    starts = StartCounter(goal=n + 1)
    supervisor = SupervisorSpec(
        Strategy.ONE_FOR_ONE,
        max_restarts=sys.maxsize,
        within=1.0,
        children=[ChildSpec("crasher", functools.partial(Crasher, starts), Restart.PERMANENT)],
    )
    async with open_system() as system:
        sup = await system.spawn_supervisor(supervisor, name="sup")
        (ref,) = await sup.children()
        start = time.perf_counter()
        # Queued messages survive restarts, so each one crashes a fresh instance.
        for i in range(n):
            await ref.tell(i)
        await starts.done.wait()
        elapsed = time.perf_counter() - start
    _expect(starts.starts == n + 1, f"{starts.starts - 1} restarts instead of {n}")
    return elapsed


async def _trio_restart(n: int) -> float:
    starts = StartCounter(goal=n)

    async def incarnation(*, task_status: trio.TaskStatus[None]) -> None:
        starts.started()
        task_status.started()

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            await nursery.start(incarnation)
    elapsed = time.perf_counter() - start
    _expect(starts.starts == n, f"{starts.starts} tasks started instead of {n}")
    return elapsed


# -- the harness ---------------------------------------------------------------


def _under_trio(fn: Callable[[int], Any]) -> Timed:
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
    """A troupe measurement and its baseline; ``unit`` names what is counted per second."""

    name: str
    unit: str
    troupe: Side
    baseline: Side
    target: float | None


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

    @property
    def ratio(self) -> float:
        return self.troupe.rate / self.baseline.rate

    @property
    def verdict(self) -> str:
        """``PASS`` or ``MISS`` against the target; ``-`` when there is none."""
        if self.target is None:
            return "-"
        return "PASS" if self.ratio >= self.target else "MISS"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "troupe": _side_json(self.troupe),
            "baseline": _side_json(self.baseline),
            "ratio": self.ratio,
            "target": self.target,
            "verdict": self.verdict,
        }


def _side_json(side: SideResult) -> dict[str, Any]:
    return {
        "label": side.label,
        "n": side.n,
        "seconds": list(side.seconds),
        "best_seconds": side.best,
        "median_seconds": side.median,
        "rate": side.rate,
    }


def _measure(timed: Timed, n: int) -> float:
    # Garbage left by the previous run must not be collected on this one's clock.
    gc.collect()
    return timed(n)


def run_benchmark(bench: Benchmark, repeats: int = REPEATS) -> BenchmarkResult:
    """Warm up both sides, then time ``repeats`` alternating runs of each.

    Blocks for the whole run. Raises :class:`BenchmarkError` if a side did
    not do its work.
    """
    sides = (bench.troupe, bench.baseline)
    for side in sides:
        _measure(side.timed, max(1, side.n // WARMUP_FRACTION))
    samples: dict[str, list[float]] = {side.label: [] for side in sides}
    for _ in range(repeats):
        for side in sides:
            samples[side.label].append(_measure(side.timed, side.n))
    return BenchmarkResult(
        bench.name,
        bench.unit,
        SideResult(bench.troupe.label, bench.troupe.n, tuple(samples[bench.troupe.label])),
        SideResult(bench.baseline.label, bench.baseline.n, tuple(samples[bench.baseline.label])),
        bench.target,
    )


def benchmarks(scale: int = 1) -> list[Benchmark]:
    """The benchmarks, with their amounts of work divided by ``scale``."""

    def n(full: int) -> int:
        return max(FAN_OUT_ACTORS, full // scale)

    return [
        Benchmark(
            "tell, 1 sender -> 1 actor",
            "msg/s",
            Side("troupe tell", _under_trio(_troupe_tell), n(1_000_000)),
            Side("trio memory channel", _under_trio(_trio_tell), n(1_000_000)),
            target=3.0,
        ),
        Benchmark(
            f"ask round trip, timeout {ASK_TIMEOUT:g} s",
            "ask/s",
            Side("troupe ask", _under_trio(_troupe_ask), n(200_000)),
            Side("pykka ThreadingActor ask", _pykka_ask, n(50_000)),
            target=2.0,
        ),
        Benchmark(
            f"fan-out to {FAN_OUT_ACTORS} actors",
            "msg/s",
            Side("troupe tell", _under_trio(_troupe_fan_out), n(1_000_000)),
            Side(f"trio, {FAN_OUT_ACTORS} channels", _under_trio(_trio_fan_out), n(1_000_000)),
            target=None,
        ),
        Benchmark(
            "restart of a crashing child, one_for_one",
            "restart/s",
            Side("troupe restart", _under_trio(_troupe_restart), n(50_000)),
            Side("trio nursery.start", _under_trio(_trio_restart), n(50_000)),
            target=None,
        ),
    ]


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "trio": trio.__version__,
        "pykka": importlib.metadata.version("pykka"),
        # Other work on the machine skews absolute rates more than ratios.
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def results_table(results: list[BenchmarkResult]) -> Table:
    """The results as a table: each rate with its unit and its amount of work."""
    table = Table(title=f"troupe runtime, best of {REPEATS} repeats")
    table.add_column("benchmark / baseline")
    table.add_column("troupe", justify="right")
    table.add_column("baseline", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("target", justify="right")
    for result in results:
        verdict = {"PASS": " [green]PASS[/]", "MISS": " [red]MISS[/]"}.get(result.verdict, "")
        table.add_row(
            f"{result.name}\n[dim]vs {result.baseline.label}[/]",
            f"{_rate(result.troupe.rate)} {result.unit}\n[dim]n={result.troupe.n:,}[/]",
            f"{_rate(result.baseline.rate)} {result.unit}\n[dim]n={result.baseline.n:,}[/]",
            f"{result.ratio:.2f}x",
            ("-" if result.target is None else f">= {result.target:g}x") + verdict,
        )
    return table


def main(argv: list[str] | None = None) -> int:
    """Run every benchmark, print the table, optionally write JSON; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run with 1/100 of the work")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)

    console = Console()
    info = machine()
    console.print(
        f"machine: {info['cores']} cores, {info['cpu']}, {info['platform']}",
        markup=False,
        highlight=False,
    )
    console.print(
        f"python: {info['implementation']} {info['python']}, "
        f"trio {info['trio']}, pykka {info['pykka']}",
        markup=False,
        highlight=False,
    )
    if info["load_average"] is not None:
        console.print(f"load average: {' '.join(f'{x:.2f}' for x in info['load_average'])}")
    if args.quick:
        console.print("[yellow]quick run: small amounts of work, the ratios are indicative[/]")
    selected = benchmarks(QUICK_DIVISOR if args.quick else 1)
    results: list[BenchmarkResult] = []
    for index, bench in enumerate(selected, 1):
        console.print(
            f"[{index}/{len(selected)}] {bench.name} "
            f"(n={bench.troupe.n:,}, baseline n={bench.baseline.n:,})",
            markup=False,
            highlight=False,
        )
        results.append(run_benchmark(bench))
    console.print(results_table(results))
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
            "results": [result.to_json() for result in results],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        console.print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
