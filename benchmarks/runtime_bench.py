"""Benchmarks of troupe's actor runtime, each against a baseline measured in the same run.

Usage::

    python benchmarks/runtime_bench.py [--quick] [--json PATH]

The benchmarks, with their baselines:

* tell: one sender tells 1,000,000 small messages to one actor (mailbox
  1000), timed until a final ask is answered; against two trio loops over a
  memory channel of the same size. The raw loop, ``await send`` and ``async
  for``, yields on every message: the target is 3x its rate. The
  ``send_nowait`` loop yields only when the channel is full or empty (the
  sender ``send_nowait``, awaiting ``send`` only when full; the receiver
  drains with ``receive_nowait``, awaiting ``receive`` only when empty): the
  ceiling for a sender that never checkpoints, with no target. A ``tell``
  that honours cancellation and yields now and then lands between the two.
* ask: 200,000 sequential ``ask(message, timeout=1.0)`` to an echoing actor;
  against 50,000 ``ask`` to a pykka ``ThreadingActor`` in the same process.
  The sides do different amounts of work, so compare their rates.
* fan-out: one sender tells 1,000,000 messages round-robin to 100 actors, then
  asks each for its count; against 100 trio tasks each draining a memory
  channel, fed with ``await send``.
* restart: a child that crashes on every message, under a ONE_FOR_ONE
  supervisor that never gives up, restarted 50,000 times; against
  ``nursery.start`` of 50,000 tasks that do the same start-up work and return.

Every benchmark runs each side once on a tenth of the work to warm up, then
three times each, taking turns (troupe, then each baseline) so that a drift
in the machine's speed hits all sides. The reported rate of each side is its
*best* repeat (the least disturbed one). The comparable figure is the ratio
``troupe rate / baseline rate``: absolute rates vary from machine to machine,
the ratio much less.

``--quick`` divides the work by 100 for a smoke run; its ratios are only
indicative. ``--json PATH`` also writes the results, the machine description
and every repeat's timing to ``PATH``.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import pykka
import trio
from harness import (
    REPEATS,
    Benchmark,
    BenchmarkResult,
    Side,
    expect,
    machine,
    print_machine,
    results_table,
    run_benchmark,
    under_trio,
)
from rich.console import Console

from runtime import (
    Actor,
    ChildSpec,
    Restart,
    Strategy,
    SupervisorSpec,
    open_system,
)

__all__ = ["benchmarks", "main"]

QUICK_DIVISOR = 100
PACKAGES = ("pykka",)
MAILBOX = 1000
FAN_OUT_ACTORS = 100
ASK_TIMEOUT = 1.0

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
    expect(count == n, f"the actor handled {count} of {n} messages")
    return elapsed


async def _trio_tell(n: int) -> float:
    """The raw loop: ``await send`` and ``async for``, a checkpoint per message on both sides."""
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
    expect(count == n, f"the consumer received {count} of {n} messages")
    return elapsed


async def _trio_tell_nowait(n: int) -> float:
    """The ``send_nowait`` loop: each side yields only when the channel is full or empty."""
    send, recv = trio.open_memory_channel[int](MAILBOX)
    count = 0

    async def drain() -> None:
        nonlocal count
        async with recv:
            while True:
                try:
                    recv.receive_nowait()
                except trio.WouldBlock:
                    try:
                        await recv.receive()
                    except trio.EndOfChannel:
                        return
                except trio.EndOfChannel:
                    return
                count += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        start = time.perf_counter()
        async with send:
            for i in range(n):
                try:
                    send.send_nowait(i)
                except trio.WouldBlock:
                    await send.send(i)
    elapsed = time.perf_counter() - start
    expect(count == n, f"the consumer received {count} of {n} messages")
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
    expect(n == 0 or reply == n - 1, "the last reply is not the last message")
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
    expect(n == 0 or reply == n - 1, "the last reply is not the last message")
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
    expect(counts == [rounds] * FAN_OUT_ACTORS, f"uneven counts: {set(counts)} != {rounds}")
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
    expect(counts == [rounds] * FAN_OUT_ACTORS, f"uneven counts: {set(counts)} != {rounds}")
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
    expect(starts.starts == n + 1, f"{starts.starts - 1} restarts instead of {n}")
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
    expect(starts.starts == n, f"{starts.starts} tasks started instead of {n}")
    return elapsed


def benchmarks(scale: int = 1) -> list[Benchmark]:
    """The benchmarks, with their amounts of work divided by ``scale``."""

    def n(full: int) -> int:
        return max(FAN_OUT_ACTORS, full // scale)

    return [
        Benchmark(
            "tell, 1 sender -> 1 actor",
            "msg/s",
            Side("troupe tell", under_trio(_troupe_tell), n(1_000_000)),
            Side("trio memory channel, await send", under_trio(_trio_tell), n(1_000_000)),
            target=3.0,
            more_baselines=(
                Side(
                    "trio memory channel, send_nowait",
                    under_trio(_trio_tell_nowait),
                    n(1_000_000),
                ),
            ),
        ),
        Benchmark(
            f"ask round trip, timeout {ASK_TIMEOUT:g} s",
            "ask/s",
            Side("troupe ask", under_trio(_troupe_ask), n(200_000)),
            Side("pykka ThreadingActor ask", _pykka_ask, n(50_000)),
            target=2.0,
        ),
        Benchmark(
            f"fan-out to {FAN_OUT_ACTORS} actors",
            "msg/s",
            Side("troupe tell", under_trio(_troupe_fan_out), n(1_000_000)),
            Side(f"trio, {FAN_OUT_ACTORS} channels", under_trio(_trio_fan_out), n(1_000_000)),
            target=None,
        ),
        Benchmark(
            "restart of a crashing child, one_for_one",
            "restart/s",
            Side("troupe restart", under_trio(_troupe_restart), n(50_000)),
            Side("trio nursery.start", under_trio(_trio_restart), n(50_000)),
            target=None,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    """Run every benchmark, print the table, optionally write JSON; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run with 1/100 of the work")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)

    console = Console()
    info = machine(PACKAGES)
    print_machine(console, info, PACKAGES)
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
    console.print(results_table(results, "troupe runtime"))
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
