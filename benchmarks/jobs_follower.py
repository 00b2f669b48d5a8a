"""A live-jobs benchmark follower process: it creates its share of the jobs and follows each.

Usage (run by ``jobs_bench.py``)::

    python benchmarks/jobs_follower.py SPEC.json RESULT.json

``SPEC.json`` holds the name of the servers' routes, their host and ports (one per
server process), the tokens expected per job, the ramp, the deadline, the
Authorization header of each user and this process's jobs (index, tag, user, and
the indexes in the ports of the server that creates it and of the one that
follows it).

The process prints ``ready``, waits for a line ``go <wall-clock ns>`` on stdin, then
creates job ``index`` at ``go + ramp * index / total`` and at once follows its SSE
events with one connection per job (a second one when it follows on another server).
It prints ``job <job id> <user>`` when a job is created (``user`` indexes the
headers) and ``done <job id>`` when its stream ends, so the poll prober knows which
jobs are live. At the end it writes ``RESULT.json``: every token's lag, its own CPU
time (the lags of jobs followed on another server than the one that created them
apart) and, per job, its id, final status, tokens, the digest of the content it
received and whether that content was exact (every delta once by ``id:`` and
``seq``, every token once and in order, ended by a ``complete`` status).

A stream that breaks before its ``status`` event is resumed with ``Last-Event-ID``
(counted in ``reconnects``), as a client of either system would.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Final

import orjson
import trio
from jobs_wire import LINK_ERRORS, ROUTES, HttpConnection, Routes, SseParser, TokenChecker

__all__ = ["JobResult", "StreamChecker", "main"]

MAX_RECONNECTS: Final = 3


class StreamChecker:
    """Reads one job's event stream, piece by piece, and checks it is exact.

    ``last_id`` is the last delta's ``id:``; ``final`` the ``status`` event's data
    once it came. Problems go to the :class:`TokenChecker`, which turns ``ok`` False.
    """

    def __init__(self, lags: list[int]) -> None:
        self.tokens = TokenChecker(lags)
        self.last_id = 0
        self.deltas = 0
        self.final: dict[str, Any] | None = None
        self._parser = SseParser()

    def restart(self) -> None:
        """Forget a partial event: the stream broke and is opened again."""
        self._parser = SseParser()

    def feed(self, piece: bytes, received_ns: int) -> None:
        for event in self._parser.feed(piece):
            if event.event == "delta":
                self._delta(event.id, orjson.loads(event.data), received_ns)
            elif event.event == "status":
                self.final = orjson.loads(event.data)
                if self.final.get("last_seq") != self.last_id:
                    self.tokens.fail(
                        f"status last_seq {self.final.get('last_seq')} ≠ {self.last_id}"
                    )
            elif event.event == "shutdown":
                self.tokens.fail("the server shut down")

    def _delta(self, event_id: str | None, data: dict[str, Any], received_ns: int) -> None:
        seq = data.get("seq")
        if event_id != str(seq):
            self.tokens.fail(f"delta id {event_id!r} ≠ seq {seq!r}")
        if seq != self.last_id + 1:
            what = "duplicate" if isinstance(seq, int) and seq <= self.last_id else "gap"
            self.tokens.fail(f"{what}: delta {seq} after {self.last_id}")
        if isinstance(seq, int):
            self.last_id = max(self.last_id, seq)
        self.deltas += 1
        self.tokens.feed(str(data.get("content") or ""), received_ns)

    def verdict(self, expected_tokens: int) -> bool:
        """Whether the job ended ``complete`` with exactly the ``expected_tokens``."""
        if self.final is None:
            self.tokens.fail("no status event")
        elif self.final.get("status") != "complete":
            self.tokens.fail(f"ended {self.final.get('status')}")
        if self.tokens.tokens != expected_tokens or self.tokens.trailing:
            self.tokens.fail(f"{self.tokens.tokens} of {expected_tokens} tokens")
        return self.tokens.ok


JobResult = dict[str, Any]


async def _follow(
    routes: Routes,
    connection: HttpConnection,
    job_id: str,
    authorization: dict[str, str],
    checker: StreamChecker,
    reopen: Any,
) -> tuple[HttpConnection, int]:
    """Follow the job's events to their end, resuming a broken stream; return the
    connection in use and the number of reconnections."""
    reconnects = 0
    while True:
        headers = {**authorization, "Accept": "text/event-stream"}
        if checker.last_id:
            headers["Last-Event-ID"] = str(checker.last_id)
        try:
            status, _ = await connection.stream(
                "GET", routes.events_path(job_id), headers, None, checker.feed
            )
            if status != 200:
                checker.tokens.fail(f"events answered {status}")
                return connection, reconnects
            if checker.final is not None:
                return connection, reconnects
        except LINK_ERRORS:
            pass
        if reconnects == MAX_RECONNECTS:
            checker.tokens.fail(f"stream lost {reconnects + 1} times")
            return connection, reconnects
        reconnects += 1
        checker.restart()
        await connection.aclose()
        connection = await reopen()


async def run_job(spec: dict[str, Any], job: dict[str, Any], lags: list[int]) -> JobResult:
    """Create one job and follow it; the result says what came and whether it was exact."""
    routes = ROUTES[spec["routes"]]
    host, ports = spec["host"], spec["ports"]
    create_port, follow_port = ports[job["create"]], ports[job["follow"]]
    token = spec["authorizations"][job["user"]]
    authorization = {"Authorization": token} if token else {}
    result: JobResult = {"index": job["index"], "tag": job["tag"], "id": None, "ok": False}
    checker = StreamChecker(lags)

    async def reopen() -> HttpConnection:
        return await HttpConnection.open(host, follow_port)

    connection = await HttpConnection.open(host, create_port)
    try:
        began = time.perf_counter()
        created = await connection.request(
            "POST",
            routes.jobs_path,
            {**authorization, "Content-Type": "application/json"},
            routes.create_body(job["index"], job["tag"]),
        )
        result["create_ms"] = (time.perf_counter() - began) * 1000
        if created.status != 202:
            result["problems"] = [f"create answered {created.status}: {created.body[:200]!r}"]
            return result
        job_id = str(orjson.loads(created.body)["id"])
        result["id"] = job_id
        print(f"job {job_id} {job['user']}", flush=True)
        if follow_port != create_port:
            await connection.aclose()
            connection = await reopen()
        connection, result["reconnects"] = await _follow(
            routes, connection, job_id, authorization, checker, reopen
        )
    except LINK_ERRORS as error:
        checker.tokens.fail(f"{type(error).__name__}: {error}")
    finally:
        await connection.aclose()
        if result["id"] is not None:
            print(f"done {result['id']}", flush=True)
        result["ok"] = checker.verdict(spec["tokens"]) and result["id"] is not None
        result["status"] = (checker.final or {}).get("status")
        result["tokens"] = checker.tokens.tokens
        result["deltas"] = checker.deltas
        result["digest"] = checker.tokens.digest()
        result.setdefault("problems", checker.tokens.problems)
    return result


async def run(spec: dict[str, Any], go_ns: int) -> dict[str, Any]:
    """Run every job of ``spec`` from wall-clock time ``go_ns``; return the results,
    with the lags of the jobs followed on another server than the one running them
    apart from the others'."""
    lags: list[int] = []
    remote_lags: list[int] = []
    results: list[JobResult] = []
    cpu_before = time.process_time()
    # The start times are wall-clock, shared by every follower process; trio sleeps
    # on its own clock, so translate once.
    offset = trio.current_time() + (go_ns - time.time_ns()) / 1e9
    ramp, total = spec["ramp"], spec["total"]

    async def one(job: dict[str, Any]) -> None:
        await trio.sleep_until(offset + ramp * job["index"] / total)
        remote = job["create"] != job["follow"]
        results.append(await run_job(spec, job, remote_lags if remote else lags))

    with trio.move_on_at(offset + spec["deadline"]):
        async with trio.open_nursery() as nursery:
            for job in spec["jobs"]:
                nursery.start_soon(one, job)
    finished = {result["index"] for result in results}
    for job in spec["jobs"]:
        if job["index"] not in finished:
            results.append(
                {"index": job["index"], "tag": job["tag"], "id": None, "ok": False}
                | {"problems": ["deadline passed"], "status": None, "tokens": 0}
            )
    return {
        "lags_us": lags,
        "remote_lags_us": remote_lags,
        "cpu_s": time.process_time() - cpu_before,
        "jobs": results,
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec = orjson.loads(Path(args[0]).read_bytes())
    print("ready", flush=True)
    word, _, value = sys.stdin.readline().partition(" ")
    if word != "go":
        return 2
    outcome = trio.run(run, spec, int(value))
    Path(args[1]).write_bytes(orjson.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
