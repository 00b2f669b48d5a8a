"""``examples/server.py`` as a process of its own, for the tests that kill it or break its disk.

- :class:`Children` starts processes (output to a log file each), and :func:`reaped`
  kills whatever is left of them at the end; :class:`Child` finds the address a
  server printed.
- :func:`server_env` is the environment of a server on SQLite in a data directory,
  streaming from an OpenAI-compatible upstream, with the caps out of the way.
- :func:`authorization` mints a user's token; :func:`wait_ready` polls ``/readyz``.
- :class:`Followed` and :func:`follow` record what a follower of a job's event
  stream was sent, until the stream breaks or ends.
- :func:`paced_answer` is a fake upstream's answer of given tokens, paced.
- :func:`crash_image` copies the database as a kill left it and reads its deltas.
- :func:`without_file_permission_override` makes a root process honour file
  permissions, as every other user's does.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import attrs
import httpx
import jwt
import orjson
import trio

from actors.stores.factory import SQLITE_FILE_NAME
from tests.fake_upstream import Script

ROOT: Final = Path(__file__).resolve().parents[2]
JWT_SECRET: Final = "reliability-server-secret-32-bytes-or-more"
START_TIMEOUT: Final = 30.0
"""Seconds a server may take to print its address (imports on a busy machine)."""
_LISTENING: Final = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")
_POLL: Final = 0.02


@attrs.define
class Child:
    """A process whose stdout and stderr go to ``log``."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    async def url(self) -> str:
        """Poll the log for the ``listening on`` line; fail if the process exits first."""
        with trio.fail_after(START_TIMEOUT):
            while (found := _LISTENING.search(self.log.read_text())) is None:
                assert self.process.poll() is None, f"{self.name} exited:\n{self.log.read_text()}"
                await trio.sleep(_POLL)
        return found[1]

    def reap(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


@attrs.define
class Children:
    """Every process the test started, killed at the end whatever happened."""

    workdir: Path
    started: list[Child] = attrs.Factory(list)

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> Child:
        log = self.workdir / f"{name}-{len(self.started)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                preexec_fn=preexec_fn,
            )
        child = Child(name, process, log)
        self.started.append(child)
        return child

    def reap_all(self) -> None:
        for child in reversed(self.started):
            child.reap()


@contextmanager
def reaped(workdir: Path) -> Iterator[Children]:
    """``with reaped(tmp_path) as children``: every process started is killed at the end,
    its log in ``workdir``."""
    spawned = Children(workdir)
    try:
        yield spawned
    finally:
        spawned.reap_all()


def server_env(data_dir: Path, upstream_url: str, **settings: object) -> dict[str, str]:
    """The environment of ``examples/server.py`` on SQLite in ``data_dir``, streaming from
    the OpenAI-compatible ``upstream_url`` (its ``/v1`` base) with a server key; caps
    high, no watch window (so a poll never stops a notification); ``settings`` are
    more ``TROUPE_*`` settings by field name."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TROUPE_")}
    env.pop("OPENROUTER_API_KEY", None)
    env.update(
        TROUPE_STORE="sqlite",
        TROUPE_DATA_DIR=str(data_dir),
        TROUPE_UPSTREAM="openai",
        TROUPE_UPSTREAM_BASE_URL=upstream_url,
        TROUPE_UPSTREAM_API_KEY="sk-reliability-not-a-key",
        TROUPE_JWT_SECRET=JWT_SECRET,
        TROUPE_MAX_CONCURRENT_JOBS="10000",
        TROUPE_MAX_JOBS_PER_USER="10000",
        TROUPE_WATCH_WINDOW="0",
    )
    env.update({f"TROUPE_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def authorization(user: str) -> dict[str, str]:
    """The ``Authorization`` header of ``user`` (workspace ``reliability``), for an hour."""
    now = int(time.time())
    claims = {"sub": user, "workspace": "reliability", "iat": now, "exp": now + 3600}
    return {"Authorization": "Bearer " + jwt.encode(claims, JWT_SECRET, algorithm="HS256")}


async def wait_ready(client: httpx.AsyncClient, *, timeout: float = START_TIMEOUT) -> None:
    """Poll ``/readyz`` until it answers 200."""
    with trio.fail_after(timeout):
        while True:
            if (await client.get("/readyz")).status_code == 200:
                return
            await trio.sleep(_POLL)


def paced_answer(tokens: list[str], delay: float) -> Script:
    """The fake upstream's answer: one token a chunk, ``delay`` seconds apart, then
    ``finish_reason`` stop, the usage and ``[DONE]``.

    Built in one go: adding thousands of steps one by one copies the steps each time.
    """
    pause = Script.stream().sleep(delay).steps
    steps: list[Any] = []
    for k, token in enumerate(tokens):
        if k:
            steps += pause
        steps += Script.stream().content(token).steps
    answer = attrs.evolve(Script.stream(), steps=tuple(steps))
    return answer.finish("stop").usage(completion_tokens=len(tokens)).done()


# -- following -------------------------------------------------------------------------


@attrs.define
class Followed:
    """One job and what its follower was sent."""

    job_id: str
    deltas: list[tuple[int, str]] = attrs.Factory(list)
    snapshots: int = 0
    statuses: list[dict[str, Any]] = attrs.Factory(list)
    ended_by: str = ""
    first_delta: trio.Event = attrs.Factory(trio.Event)
    ended: trio.Event = attrs.Factory(trio.Event)
    """Set by the status event."""

    @property
    def text(self) -> str:
        return "".join(content for _, content in self.deltas)


async def follow(client: httpx.AsyncClient, job: Followed, headers: dict[str, str]) -> None:
    """Record every event of the job's stream until it ends or breaks.

    A delta's ``id:`` must be its seq, and a snapshot (a fresh follower's) carries no
    content. ``ended_by`` says how the stream stopped: ``"end of stream"``, or the name
    of the transport error.
    """
    try:
        url = f"/v1/jobs/{job.job_id}/events"
        async with client.stream("GET", url, headers=headers) as response:
            assert response.status_code == 200, await response.aread()
            event, data, event_id = "", "", ""
            async for line in response.aiter_lines():
                if line:
                    field, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if field == "event":
                        event = value
                    elif field == "data":
                        data = value
                    elif field == "id":
                        event_id = value
                    continue
                # A blank line ends the event; a truncated event never gets here.
                if event == "delta":
                    delta = orjson.loads(data)
                    assert event_id == str(delta["seq"]), (event_id, delta)
                    job.deltas.append((delta["seq"], delta["content"]))
                    job.first_delta.set()
                elif event == "snapshot":
                    job.snapshots += 1
                    assert orjson.loads(data)["content_delta"] == ""
                elif event == "status":
                    job.statuses.append(orjson.loads(data))
                    job.ended.set()
                elif event:
                    raise AssertionError(f"unexpected {event!r} event: {data}")
                event, data, event_id = "", "", ""
    except httpx.TransportError as error:
        job.ended_by = type(error).__name__
    else:
        job.ended_by = "end of stream"


# -- the database ----------------------------------------------------------------------


def crash_image(data_dir: Path, into: Path) -> dict[str, list[tuple[int, str]]]:
    """Copy the database as a kill left it (its WAL included) into ``into``, check its
    integrity, and return every job's stored deltas in seq order."""
    into.mkdir()
    for suffix in ("", "-wal", "-shm"):
        source = data_dir / (SQLITE_FILE_NAME + suffix)
        if source.exists():
            shutil.copyfile(source, into / source.name)
    conn = sqlite3.connect(into / SQLITE_FILE_NAME)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        stored: dict[str, list[tuple[int, str]]] = {}
        for job_id, seq, content in conn.execute(
            "SELECT job_id, seq, content FROM deltas ORDER BY job_id, seq"
        ):
            stored.setdefault(job_id, []).append((seq, content))
        return stored
    finally:
        conn.close()


def integrity(path: Path) -> list[tuple[Any, ...]]:
    """``PRAGMA integrity_check`` of the database at ``path``."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()


# -- permissions -----------------------------------------------------------------------

_PR_CAPBSET_DROP: Final = 24
_CAP_DAC_OVERRIDE: Final = 1
_CAP_DAC_READ_SEARCH: Final = 2


def without_file_permission_override() -> None:
    """In a child before it runs its program (``preexec_fn``): drop the capabilities
    by which root ignores file permissions, so a read-only file is read-only to it.

    Dropped from the bounding set, they are not in the program's permitted set. Only
    for a root parent; raises OSError if the kernel refuses.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
