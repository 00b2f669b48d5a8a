"""Durability you can see: ``kill -9`` the server while jobs stream, start it again, look.

Real processes, real HTTP on 127.0.0.1: the live-jobs benchmark's fake upstream
(``benchmarks/jobs_upstream.py``) feeds ``examples/server.py`` on a SQLite store,
and followers read each job's ``GET /v1/jobs/{id}/events``. A second into the
streams the server gets SIGKILL; a new one on the same data directory must report
every job as ``error: interrupted: server restarted``, once notified, with stored
content that holds everything any follower was sent (followers only get stored
deltas) and nothing the upstream did not send. Three rounds on one data directory:
the jobs of earlier rounds must read exactly as they did.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import attrs
import httpx
import jwt
import orjson
import pytest
import trio

from actors.stores.factory import SQLITE_FILE_NAME

ROOT: Final = Path(__file__).resolve().parent.parent
ROUNDS: Final = 3
JOBS_PER_ROUND: Final = 20
TOKENS: Final = 400
RATE: Final = 40.0
"""Tokens a second per job: an answer takes 10 s, so every job is mid-stream at the kill."""
STREAM_FOR: Final = 1.0
"""Seconds of streaming before the kill (longer if a follower has had no delta yet)."""
READY_TIMEOUT: Final = 20.0
JWT_SECRET: Final = "durability-test-secret-32-bytes-or-more"
USER: Final = "durable"
INTERRUPTED: Final = "interrupted: server restarted"
_LISTENING: Final = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")
_POLL: Final = 0.02


# -- processes -------------------------------------------------------------------------


@attrs.define
class Child:
    """A process whose stdout and stderr go to ``log``."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    async def url(self) -> str:
        """Poll the log for the ``listening on`` line; fail if the process exits first."""
        with trio.fail_after(READY_TIMEOUT):
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

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        log = self.workdir / f"{name}-{len(self.started)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        child = Child(name, process, log)
        self.started.append(child)
        return child

    def reap_all(self) -> None:
        for child in reversed(self.started):
            child.reap()


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Children]:
    spawned = Children(tmp_path)
    try:
        yield spawned
    finally:
        spawned.reap_all()


def _server_env(data_dir: Path, upstream_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TROUPE_")}
    env.pop("OPENROUTER_API_KEY", None)
    env.update(
        TROUPE_STORE="sqlite",
        TROUPE_DATA_DIR=str(data_dir),
        TROUPE_UPSTREAM="openai",
        TROUPE_UPSTREAM_BASE_URL=upstream_url + "/v1",
        TROUPE_UPSTREAM_API_KEY="sk-durability-not-a-key",
        TROUPE_JWT_SECRET=JWT_SECRET,
        TROUPE_MAX_CONCURRENT_JOBS=str(JOBS_PER_ROUND + 10),
        TROUPE_MAX_JOBS_PER_USER=str(JOBS_PER_ROUND + 10),
    )
    return env


def _authorization() -> dict[str, str]:
    now = int(time.time())
    claims = {"sub": USER, "workspace": "durability", "iat": now, "exp": now + 3600}
    return {"Authorization": "Bearer " + jwt.encode(claims, JWT_SECRET, algorithm="HS256")}


# -- following -------------------------------------------------------------------------


@attrs.define
class Followed:
    """One job and what its follower was sent before the server died."""

    job_id: str
    tag: str
    """The prompt, by which the upstream names the stream."""
    deltas: list[tuple[int, str]] = attrs.Factory(list)
    snapshots: int = 0
    ended_by: str = ""
    first_delta: trio.Event = attrs.Factory(trio.Event)

    @property
    def text(self) -> str:
        return "".join(content for _, content in self.deltas)


async def _follow(client: httpx.AsyncClient, job: Followed) -> None:
    """Record every delta of the job's event stream until the stream breaks."""
    try:
        async with client.stream("GET", f"/v1/jobs/{job.job_id}/events") as response:
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
                else:
                    raise AssertionError(f"unexpected {event!r} event before the kill: {data}")
                event, data, event_id = "", "", ""
    except httpx.TransportError as error:
        job.ended_by = type(error).__name__
    else:
        job.ended_by = "end of stream"


async def _stream_then_kill(
    client: httpx.AsyncClient, server: Child, round_no: int
) -> tuple[list[Followed], int]:
    """Start and follow this round's jobs, SIGKILL the server mid-stream.

    Returns the jobs with what their followers got, and the wall-clock time of the kill.
    """
    jobs: list[Followed] = []
    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        for index in range(JOBS_PER_ROUND):
            tag = f"durability-{round_no}-{index}"
            body = {
                "model": "fake",
                "messages": [{"role": "user", "content": tag}],
                "thread_id": f"thread-{round_no}-{index}",
                "message_id": f"message-{round_no}-{index}",
            }
            created = await client.post("/v1/jobs", json=body)
            assert created.status_code == 202, created.text
            job = Followed(created.json()["id"], tag)
            jobs.append(job)
            nursery.start_soon(_follow, client, job)
        # Every follower must have been sent something, or there is nothing to check.
        with trio.fail_after(READY_TIMEOUT):
            for job in jobs:
                await job.first_delta.wait()
        await trio.sleep_until(started + STREAM_FOR)
        killed_ns = time.time_ns()
        server.process.send_signal(signal.SIGKILL)
        assert server.process.wait(timeout=10) == -signal.SIGKILL
    for job in jobs:
        assert job.ended_by not in ("", "end of stream"), (job.job_id, job.ended_by)
    return jobs, killed_ns


# -- checks ----------------------------------------------------------------------------


def _tokens(content: str) -> list[tuple[int, int]]:
    """The upstream's ``"<seq>:<time_ns>|"`` tokens that make up ``content``, parsed."""
    assert content == "" or content.endswith("|"), content[-40:]
    tokens = []
    for token in content.split("|")[:-1]:
        seq, colon, stamp = token.partition(":")
        assert colon and seq.isdigit() and stamp.isdigit(), f"malformed token {token!r}"
        tokens.append((int(seq), int(stamp)))
    return tokens


def _crash_image(data_dir: Path, into: Path) -> dict[str, list[tuple[int, str]]]:
    """Copy the database as the kill left it (WAL included), check its integrity, and
    return every job's stored deltas in seq order."""
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


async def _notifications(client: httpx.AsyncClient, job_ids: list[str]) -> list[dict[str, Any]]:
    """Poll the notifications until each of ``job_ids`` has one; return them all."""
    with trio.fail_after(READY_TIMEOUT):
        while True:
            answer = await client.get("/v1/notifications", params={"limit": 500})
            assert answer.status_code == 200, answer.text
            found: list[dict[str, Any]] = answer.json()["notifications"]
            if {n["job_id"] for n in found} >= set(job_ids):
                return found
            await trio.sleep(_POLL)


@attrs.frozen
class RoundFigures:
    jobs: int
    seen: int
    """Deltas the followers were sent."""
    stored: int
    """Deltas the restarted server holds."""
    stored_unseen: int
    """Stored deltas no follower got before the kill (written, not yet sent)."""
    sent_unstored: int
    """Deltas a follower got that the store does not hold: must be 0."""
    upstream_tokens: int
    """Tokens the upstream wrote to the server's sockets."""
    stored_tokens: int


def _check_round(
    jobs: list[Followed],
    views: dict[str, dict[str, Any]],
    crashed: dict[str, list[tuple[int, str]]],
    upstream: dict[str, Any],
    killed_ns: int,
) -> RoundFigures:
    """Check this round's interrupted jobs against their followers, the crash image and
    the upstream; return the round's figures."""
    seen = stored = stored_unseen = sent_unstored = upstream_tokens = stored_tokens = 0
    for job in jobs:
        view = views[job.job_id]
        where = f"job {job.job_id} ({job.tag})"
        assert view["status"] == "error", (where, view["status"])
        assert view["error"] == INTERRUPTED, (where, view["error"])
        content: str = view["content_delta"]
        last_seq: int = view["last_seq"]
        assert view["content_length"] == len(content), where

        # What was on disk at the kill is what the new server reports: no more, no less.
        on_disk = crashed.get(job.job_id, [])
        assert [seq for seq, _ in on_disk] == list(range(1, last_seq + 1)), where
        assert "".join(text for _, text in on_disk) == content, where
        assert view["chunks_received"] == last_seq, where

        # The content is the upstream's answer, cut after a whole token it did send.
        tokens = _tokens(content)
        assert [seq for seq, _ in tokens] == list(range(1, len(tokens) + 1)), where
        stamps = [stamp for _, stamp in tokens]
        assert stamps == sorted(stamps), where
        assert not stamps or stamps[-1] < killed_ns, where
        sent = upstream["sent"][job.tag]
        assert not sent["finished"], f"{where} was not mid-stream at the kill"
        assert len(tokens) <= sent["tokens"] < TOKENS, (where, len(tokens), sent["tokens"])

        # Followers were only ever sent stored deltas.
        follower_seqs = [seq for seq, _ in job.deltas]
        assert follower_seqs == list(range(1, len(job.deltas) + 1)), (where, follower_seqs)
        assert job.snapshots == 1, where
        assert last_seq >= len(job.deltas), (where, last_seq, len(job.deltas))
        assert content.startswith(job.text), (
            f"{where}: a follower was sent what the store does not hold: "
            f"follower {job.text[-60:]!r}, stored {content[-60:]!r}"
        )

        seen += len(job.deltas)
        stored += last_seq
        stored_unseen += last_seq - len(job.deltas)
        sent_unstored += sum(1 for seq, _ in job.deltas if seq > last_seq)
        upstream_tokens += sent["tokens"]
        stored_tokens += len(tokens)
    return RoundFigures(
        len(jobs), seen, stored, stored_unseen, sent_unstored, upstream_tokens, stored_tokens
    )


# -- the test --------------------------------------------------------------------------


async def test_kill_9_mid_stream_loses_nothing_a_follower_saw(
    children: Children, tmp_path: Path
) -> None:
    python = sys.executable
    upstream = children.start(
        "upstream",
        [python, "benchmarks/jobs_upstream.py", "--tokens", str(TOKENS), "--rate", str(RATE)],
    )
    upstream_url = await upstream.url()
    data_dir = tmp_path / "data"
    env = _server_env(data_dir, upstream_url)
    server_argv = [python, "examples/server.py", "--port", "0"]
    server = children.start("server", server_argv, env)

    seen_views: dict[str, dict[str, Any]] = {}
    seen_notes: dict[str, dict[str, Any]] = {}
    figures: list[RoundFigures] = []
    async with httpx.AsyncClient(timeout=10.0) as upstream_client:
        for round_no in range(1, ROUNDS + 1):
            async with httpx.AsyncClient(
                base_url=await server.url(), headers=_authorization(), timeout=10.0
            ) as client:
                jobs, killed_ns = await _stream_then_kill(client, server, round_no)
            crashed = _crash_image(data_dir, tmp_path / f"crash-{round_no}")

            server = children.start("server", server_argv, env)
            async with httpx.AsyncClient(
                base_url=await server.url(), headers=_authorization(), timeout=10.0
            ) as client:
                views = {}
                for job_id in [*seen_views, *(job.job_id for job in jobs)]:
                    answer = await client.get(f"/v1/jobs/{job_id}")
                    assert answer.status_code == 200, answer.text
                    views[job_id] = answer.json()
                notes = await _notifications(client, list(views))
            stats = (await upstream_client.get(upstream_url + "/stats")).json()

            # Earlier rounds' jobs read exactly as they did, notification included.
            for job_id, before in seen_views.items():
                assert views[job_id] == before, f"job {job_id} changed in round {round_no}"
            by_job: dict[str, list[dict[str, Any]]] = {}
            for note in notes:
                by_job.setdefault(note["job_id"], []).append(note)
            assert set(by_job) == set(views), "notifications for jobs this test did not run"
            for job_id, found in by_job.items():
                assert len(found) == 1, (job_id, found)
                assert found[0]["type"] == "ai.background.error", found[0]
                assert seen_notes.get(job_id, found[0]) == found[0], (job_id, found[0])

            figures.append(_check_round(jobs, views, crashed, stats, killed_ns))
            seen_views = views
            seen_notes = {job_id: found[0] for job_id, found in by_job.items()}

    # The last server stops cleanly; then the database itself is whole.
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=20) == 0, server.log.read_text()
    conn = sqlite3.connect(data_dir / SQLITE_FILE_NAME)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = conn.execute("SELECT status, error, COUNT(*) FROM jobs GROUP BY 1, 2").fetchall()
    finally:
        conn.close()
    assert rows == [("error", INTERRUPTED, ROUNDS * JOBS_PER_ROUND)]

    for round_no, f in enumerate(figures, start=1):
        print(
            f"round {round_no}: {f.jobs} jobs; followers saw {f.seen} deltas, "
            f"{f.stored} stored, {f.stored_unseen} stored unseen, {f.sent_unstored} sent "
            f"unstored; upstream wrote {f.upstream_tokens} tokens, {f.stored_tokens} stored"
        )
    assert sum(f.sent_unstored for f in figures) == 0
