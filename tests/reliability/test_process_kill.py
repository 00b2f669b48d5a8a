"""Durability you can see: ``kill -9`` the server while jobs stream, start it again, look.

Real processes, real HTTP on 127.0.0.1: ``examples/server.py`` on a SQLite store
streams from a fake OpenAI-compatible upstream run by the test. Each round starts
``JOBS`` jobs for several users: half are short answers, which complete before the
kill, half long ones, each followed on its event stream, which are mid-stream when the
server gets SIGKILL. A new server on the same data directory must then show:

- every short job ``complete``, its content exactly the upstream's text, with one
  notification;
- every long job ``error`` "interrupted: server restarted", with one notification,
  its stored content a prefix of the upstream's text, cut after a whole token, that
  holds every delta its follower was sent (followers only get stored deltas), and
  is what the database held at the kill, no more and no less;
- ``PRAGMA integrity_check`` ``ok`` on the database as the kill left it;
- every job of the earlier rounds, notifications included, exactly as before.

The figure: kills, jobs, deltas a follower was sent that the store lost (0), and the
longest time from the kill to the new process answering ``/readyz`` 200.
"""

from __future__ import annotations

import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any, Final

import attrs
import httpx
import trio

from actors.stores.factory import SQLITE_FILE_NAME
from tests.fake_upstream import FakeUpstream, Script
from tests.reliability.figures import Figure, Figures, sized
from tests.reliability.server_process import (
    Child,
    Followed,
    authorization,
    crash_image,
    follow,
    integrity,
    paced_answer,
    reaped,
    server_env,
    wait_ready,
)

ROUNDS: Final = sized(5, 12)
JOBS: Final = sized(50, 120)
"""Jobs a round, half short and half long."""
USERS: Final = sized(5, 10)
SHORT_TOKENS: Final = 12
LONG_TOKENS: Final = 2000
TOKEN_DELAY: Final = {"short": 0.005, "long": 0.05}
"""Seconds between two tokens: a long answer would take 100 s, far past the kill."""
STREAM_FOR: Final = 0.5
"""Seconds of streaming once every follower has a delta, before the kill."""
WAIT: Final = 30.0
INTERRUPTED: Final = "interrupted: server restarted"


@attrs.frozen
class Planned:
    """One job of a round: who asks, what the upstream answers, whether it is followed."""

    round_no: int
    index: int

    @property
    def kind(self) -> str:
        return "short" if self.index % 2 == 0 else "long"

    @property
    def user(self) -> str:
        return f"user-{self.index % USERS}"

    @property
    def model(self) -> str:
        """The fake upstream picks the job's script by its model."""
        return f"kill-{self.round_no}-{self.index}"

    @property
    def tokens(self) -> list[str]:
        count = SHORT_TOKENS if self.kind == "short" else LONG_TOKENS
        return [f"r{self.round_no}j{self.index}w{k} " for k in range(count)]

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def script(self) -> Script:
        """The upstream's answer: one token a chunk, ``TOKEN_DELAY`` apart."""
        return paced_answer(self.tokens, TOKEN_DELAY[self.kind])

    def body(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": f"question {self.model}"}],
            "thread_id": f"thread-{self.model}",
            "message_id": f"message-{self.model}",
        }


@attrs.define
class Started:
    plan: Planned
    job_id: str
    followed: Followed | None


@attrs.frozen
class RoundFigures:
    killed_after: float
    """Seconds from the round's first job to the kill."""
    recovery: float
    """Seconds from the kill to the new process answering ``/readyz`` 200."""
    seen: int
    """Deltas the followers were sent."""
    stored: int
    """Deltas of the interrupted jobs the new process holds."""
    sent_unstored: int
    """Deltas a follower was sent that the store does not hold: must be 0."""


async def _stream_then_kill(
    client: httpx.AsyncClient, server: Child, fake: FakeUpstream, round_no: int
) -> tuple[list[Started], float, float]:
    """Start this round's jobs, let the short ones complete and the long ones stream,
    then SIGKILL the server. Returns the jobs, the seconds streamed before the kill and
    the kill's time on trio's clock."""
    started: list[Started] = []
    async with trio.open_nursery() as nursery:
        began = trio.current_time()
        for index in range(JOBS):
            plan = Planned(round_no, index)
            fake.script(plan.model, plan.script())
            headers = authorization(plan.user)
            created = await client.post("/v1/jobs", json=plan.body(), headers=headers)
            assert created.status_code == 202, created.text
            job_id = created.json()["id"]
            followed = Followed(job_id) if plan.kind == "long" else None
            if followed is not None:
                nursery.start_soon(follow, client, followed, headers)
            started.append(Started(plan, job_id, followed))
        with trio.fail_after(WAIT):
            # Every short job is stored complete (so its notification too), every
            # follower has had a delta: there is something to lose on both sides.
            for job in started:
                if job.followed is not None:
                    await job.followed.first_delta.wait()
                else:
                    await _wait_complete(client, job)
        await trio.sleep(STREAM_FOR)
        streamed = trio.current_time() - began
        killed_at = trio.current_time()
        server.process.send_signal(signal.SIGKILL)
        assert server.process.wait(timeout=10) == -signal.SIGKILL
    for job in started:
        if job.followed is not None:
            assert job.followed.ended_by not in ("", "end of stream"), job.followed
            assert job.followed.statuses == [], f"{job.job_id} ended before the kill"
    return started, streamed, killed_at


async def _wait_complete(client: httpx.AsyncClient, job: Started) -> None:
    headers = authorization(job.plan.user)
    while True:
        answer = await client.get(f"/v1/jobs/{job.job_id}", headers=headers)
        assert answer.status_code == 200, answer.text
        if answer.json()["status"] == "complete":
            return
        assert answer.json()["status"] in ("queued", "streaming"), answer.json()
        await trio.sleep(0.02)


async def _notifications(client: httpx.AsyncClient, expected: set[str]) -> list[dict[str, Any]]:
    """Every user's notifications, polled until each job of ``expected`` has one."""
    with trio.fail_after(WAIT):
        while True:
            found: list[dict[str, Any]] = []
            for user in range(USERS):
                answer = await client.get(
                    "/v1/notifications",
                    params={"limit": 500},
                    headers=authorization(f"user-{user}"),
                )
                assert answer.status_code == 200, answer.text
                found += answer.json()["notifications"]
            if {n["job_id"] for n in found} >= expected:
                return found
            await trio.sleep(0.05)


def _whole_tokens(content: str, plan: Planned) -> int:
    """How many of the upstream's tokens ``content`` is; fails unless it is exactly the
    first that many."""
    tokens = plan.tokens
    count, joined = 0, ""
    while len(joined) < len(content) and count < len(tokens):
        joined += tokens[count]
        count += 1
    assert joined == content, f"{plan.model}: not a whole-token prefix: {content[-60:]!r}"
    return count


def _check_round(
    jobs: list[Started],
    views: dict[str, dict[str, Any]],
    crashed: dict[str, list[tuple[int, str]]],
) -> tuple[int, int, int]:
    """Check this round's jobs as the new process shows them; returns the deltas the
    followers were sent, those of the interrupted jobs stored, and those sent but not
    stored."""
    seen = stored = sent_unstored = 0
    for job in jobs:
        view, plan = views[job.job_id], job.plan
        where = f"job {job.job_id} ({plan.model})"
        content: str = view["content_delta"]
        last_seq: int = view["last_seq"]
        assert view["content_length"] == len(content), where
        assert view["chunks_received"] == last_seq, where
        on_disk = crashed.get(job.job_id, [])
        # What was on disk at the kill is what the new server reports: no more, no less.
        assert [seq for seq, _ in on_disk] == list(range(1, last_seq + 1)), where
        assert "".join(text for _, text in on_disk) == content, where
        if job.followed is None:
            assert (view["status"], view["error"]) == ("complete", None), (where, view)
            assert content == plan.text, where
            assert view["finish_reason"] == "stop", where
            continue
        assert (view["status"], view["error"]) == ("error", INTERRUPTED), (where, view)
        tokens = _whole_tokens(content, plan)
        assert tokens < LONG_TOKENS, f"{where} was not mid-stream at the kill"
        followed = job.followed
        follower_seqs = [seq for seq, _ in followed.deltas]
        assert follower_seqs == list(range(1, len(follower_seqs) + 1)), where
        assert followed.snapshots == 1, where
        # Followers were only ever sent stored deltas.
        assert content.startswith(followed.text), (
            f"{where}: a follower was sent what the store does not hold: "
            f"follower {followed.text[-60:]!r}, stored {content[-60:]!r}"
        )
        seen += len(followed.deltas)
        stored += last_seq
        sent_unstored += sum(1 for seq in follower_seqs if seq > last_seq)
    return seen, stored, sent_unstored


async def test_kill_9_mid_stream_loses_nothing_a_follower_saw(
    tmp_path: Path, figures: Figures
) -> None:
    data_dir = tmp_path / "data"
    server_argv = [sys.executable, "examples/server.py", "--port", "0"]
    views: dict[str, dict[str, Any]] = {}
    owners: dict[str, str] = {}
    notified: dict[str, dict[str, Any]] = {}
    rounds: list[RoundFigures] = []
    with reaped(tmp_path) as children:
        async with FakeUpstream.serve() as fake:
            env = server_env(data_dir, fake.base_url)
            server = children.start("server", server_argv, env)
            async with httpx.AsyncClient(base_url=await server.url(), timeout=10.0) as client:
                await wait_ready(client)
            for round_no in range(1, ROUNDS + 1):
                async with httpx.AsyncClient(base_url=await server.url(), timeout=10.0) as client:
                    jobs, streamed, killed_at = await _stream_then_kill(
                        client, server, fake, round_no
                    )
                crashed = crash_image(data_dir, tmp_path / f"crash-{round_no}")

                server = children.start("server", server_argv, env)
                async with httpx.AsyncClient(base_url=await server.url(), timeout=10.0) as client:
                    await wait_ready(client)
                    recovery = trio.current_time() - killed_at
                    before = dict(views)
                    owners.update({job.job_id: job.plan.user for job in jobs})
                    for job_id, user in owners.items():
                        answer = await client.get(f"/v1/jobs/{job_id}", headers=authorization(user))
                        assert answer.status_code == 200, answer.text
                        views[job_id] = answer.json()
                    notes = await _notifications(client, set(views))

                # Earlier rounds' jobs read exactly as they did, notifications included.
                for job_id, view in before.items():
                    assert views[job_id] == view, f"job {job_id} changed in round {round_no}"
                by_job: dict[str, list[dict[str, Any]]] = {}
                for note in notes:
                    by_job.setdefault(note["job_id"], []).append(note)
                assert set(by_job) == set(views), "notifications for jobs this test did not run"
                for job_id, found in by_job.items():
                    assert len(found) == 1, (job_id, found)
                    expected = "complete" if views[job_id]["status"] == "complete" else "error"
                    assert found[0]["type"] == f"ai.background.{expected}", found[0]
                    assert notified.get(job_id, found[0]) == found[0], (job_id, found[0])
                notified = {job_id: found[0] for job_id, found in by_job.items()}

                seen, stored, sent_unstored = _check_round(jobs, views, crashed)
                rounds.append(RoundFigures(streamed, recovery, seen, stored, sent_unstored))

            # The last server stops cleanly; then the database itself is whole.
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(timeout=30) == 0, server.log.read_text()
    assert integrity(data_dir / SQLITE_FILE_NAME) == [("ok",)]
    conn = sqlite3.connect(data_dir / SQLITE_FILE_NAME)
    try:
        rows = conn.execute("SELECT status, error, COUNT(*) FROM jobs GROUP BY 1, 2").fetchall()
    finally:
        conn.close()
    short = sum(1 for index in range(JOBS) if Planned(0, index).kind == "short")
    assert sorted(rows) == [
        ("complete", None, ROUNDS * short),
        ("error", INTERRUPTED, ROUNDS * (JOBS - short)),
    ]

    for round_no, f in enumerate(rounds, start=1):
        print(
            f"round {round_no}: killed {f.killed_after:.2f} s in, back in {f.recovery:.2f} s; "
            f"followers saw {f.seen} deltas, {f.stored} stored, {f.sent_unstored} sent unstored"
        )
    lost = sum(f.sent_unstored for f in rounds)
    figures.record(
        Figure(
            test="process kill",
            injected="kill -9 of examples/server.py (SQLite) mid-stream, then a restart",
            times=ROUNDS,
            jobs=ROUNDS * JOBS,
            lost=lost,
            what_lost="deltas",
            recovery_s=max(f.recovery for f in rounds),
        )
    )
    assert lost == 0
    # Not vacuous: the followers were sent deltas, and the interrupted jobs hold them.
    assert all(f.seen > 0 and f.stored >= f.seen for f in rounds), rounds
