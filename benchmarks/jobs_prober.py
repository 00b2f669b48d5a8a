"""The live-jobs benchmark's poll prober: ``GET`` of live jobs, timed, from its own process.

Usage (run by ``jobs_bench.py``)::

    python benchmarks/jobs_prober.py SPEC.json RESULT.json

``SPEC.json`` holds the name of the servers' routes, their host and ports (one per
server process), the polls per second and the Authorization header of each user.
The prober reads the followers' ``job <id> <user>`` and ``done <id>`` lines on stdin;
while some job is live it reads one of them, picked at random, from one of the
servers, picked at random, ``rate`` times a second on one keep-alive connection per
server (the whole content, as a poller that has seen nothing yet), and times each
request. It stops at the end of its stdin and writes ``RESULT.json``: the latencies
in microseconds, the requests that did not answer 200, and its own CPU time. A
request that fails on a broken connection counts as a failure, and the next one to
that server goes on a new connection.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import trio
from jobs_wire import LINK_ERRORS, ROUTES, HttpConnection

__all__ = ["main"]


async def _read_jobs(live: dict[str, int], ended: trio.Event) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    pending = b""
    async with stdin:
        while data := await stdin.receive_some(65536):
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                word, _, rest = line.decode().partition(" ")
                if word == "job":
                    job_id, _, user = rest.partition(" ")
                    live[job_id] = int(user)
                elif word == "done":
                    live.pop(rest, None)
    ended.set()


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    routes = ROUTES[spec["routes"]]
    host, ports = spec["host"], spec["ports"]
    live: dict[str, int] = {}
    ended = trio.Event()
    latencies: list[int] = []
    failures = 0
    cpu_before = time.process_time()
    interval = 1.0 / spec["rate"]
    connections = [await HttpConnection.open(host, port) for port in ports]
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_jobs, live, ended)
            due = trio.current_time()
            while not ended.is_set():
                due += interval
                await trio.sleep_until(due)
                if not live:
                    continue
                job_id = random.choice(list(live))
                token = spec["authorizations"][live[job_id]]
                server = random.randrange(len(ports))
                began = time.perf_counter_ns()
                try:
                    answer = await connections[server].request(
                        "GET", routes.job_path(job_id), {"Authorization": token} if token else {}
                    )
                except LINK_ERRORS:
                    failures += 1
                    await connections[server].aclose()
                    connections[server] = await HttpConnection.open(host, ports[server])
                    continue
                latencies.append((time.perf_counter_ns() - began) // 1000)
                failures += answer.status != 200
                due = max(due, trio.current_time())  # a slow answer delays, never bunches, polls
            nursery.cancel_scope.cancel()
    finally:
        for connection in connections:
            await connection.aclose()
    return {
        "latencies_us": latencies,
        "failures": failures,
        "cpu_s": time.process_time() - cpu_before,
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec = orjson.loads(Path(args[0]).read_bytes())
    outcome = trio.run(run, spec)
    Path(args[1]).write_bytes(orjson.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
