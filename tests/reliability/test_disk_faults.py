"""Disk faults under the SQLite store: a full disk, and a read-only database file.

Both with the real engine's own errors. The full disk is the store's size cap
(``sqlite_max_bytes``, SQLite's ``max_page_count``) reached: the test grows the
database file past it from a connection of its own, with a table of filler, and
SQLite answers the server's next write that needs a page "database or disk is full"
(``SQLITE_FULL``), as on a full disk. Dropping the filler makes room again. The
read-only file is the database (and its ``-wal`` and ``-shm``) made read-only after a
``kill -9``, then a server started on it; as root, the server runs without the
capabilities that let root write a read-only file, so SQLite says "attempt to write a
readonly database" (``SQLITE_READONLY``). Making the files writable again clears it.

While the fault lasts: ``/readyz`` answers 503; a new job gets 503 with
``Retry-After`` in the route family's error shape, and leaves no job behind; the
log says why; a follower is never sent a delta that is not stored, and a running job
ends "store unavailable" after ``store_outage_grace``. Once the fault is gone the
server is ready again, stores the ends it owes (with their deltas and one
notification each) and runs new jobs. The figure per fault: how often it was
injected, the jobs, the deltas a follower was sent that the store lost (0), and the
longest time from the fault's end to the server whole again: ``/readyz`` 200 and the
end it owed stored.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Final

import httpx
import trio
from structlog.testing import capture_logs

from actors.stores.factory import SQLITE_FILE_NAME
from tests.fake_upstream import FakeUpstream
from tests.http.conftest import ApiServer, chat_body, make_config, run_api_server
from tests.reliability.figures import Figure, Figures, sized
from tests.reliability.server_process import (
    Followed,
    authorization,
    follow,
    integrity,
    paced_answer,
    reaped,
    server_env,
    wait_ready,
    without_file_permission_override,
)

QUOTA: Final = 1_048_576
"""The store's size cap in the full-disk test: the smallest ``sqlite_max_bytes``."""
GRACE: Final = 1.0
"""``store_outage_grace``: how long a running job streams into memory on a failing store."""
FULL_CYCLES: Final = sized(2, 20)
READ_ONLY_CYCLES: Final = sized(1, 5)
REFUSED: Final = 3
"""New jobs asked for during each fault (each must be refused)."""
WAIT: Final = 20.0
LONG_TOKENS: Final = 2000
SHORT_TOKENS: Final = 10
_POLL: Final = 0.02


def _tokens(name: str, count: int) -> list[str]:
    return [f"{name}w{k} " for k in range(count)]


def _long(fake: FakeUpstream, name: str) -> str:
    """Script a 50 s answer (far past each test) for model ``name``; returns its text."""
    tokens = _tokens(name, LONG_TOKENS)
    fake.script(name, paced_answer(tokens, 0.025))
    return "".join(tokens)


def _short(fake: FakeUpstream, name: str) -> str:
    """Script an answer of a moment for model ``name``; returns its text."""
    tokens = _tokens(name, SHORT_TOKENS)
    fake.script(name, paced_answer(tokens, 0.002))
    return "".join(tokens)


async def _short_job(
    client: httpx.AsyncClient, fake: FakeUpstream, headers: dict[str, str], name: str
) -> tuple[str, str]:
    """Start a short job of model ``name`` (see :func:`_short`), wait until it is
    complete with exactly its text, and return its id and that text."""
    text = _short(fake, name)
    started = await client.post("/v1/jobs", json=chat_body(model=name), headers=headers)
    assert started.status_code == 202, started.text
    job_id: str = started.json()["id"]
    done = await _wait_job(client, headers, job_id, "complete")
    assert done["content_delta"] == text
    return job_id, text


def _seed_body(model: str) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
        "_background": True,
        "_threadId": "thread-seed",
        "_messageId": "message-seed",
    }


async def _job(client: httpx.AsyncClient, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    answer = await client.get(f"/v1/jobs/{job_id}", headers=headers)
    assert answer.status_code == 200, answer.text
    job: dict[str, Any] = answer.json()
    return job


async def _wait_job(
    client: httpx.AsyncClient, headers: dict[str, str], job_id: str, status: str
) -> dict[str, Any]:
    with trio.fail_after(WAIT):
        while True:
            job = await _job(client, headers, job_id)
            if job["status"] == status:
                return job
            await trio.sleep(_POLL)


async def _wait_readyz(client: httpx.AsyncClient, status: int) -> None:
    with trio.fail_after(WAIT):
        while True:
            if (await client.get("/readyz")).status_code == status:
                return
            await trio.sleep(_POLL)


async def _notes(client: httpx.AsyncClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    answer = await client.get("/v1/notifications", params={"limit": 500}, headers=headers)
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()["notifications"]
    return found


async def _refused_while_faulted(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    """New jobs, on both route families, are refused 503 in their shapes, and the server
    says it is not ready."""
    ready = await client.get("/readyz")
    assert (ready.status_code, ready.json()) == (503, {"status": "not ready"})
    for attempt in range(REFUSED):
        refused = await client.post(
            "/v1/jobs", json=chat_body(model="refused", message_id=f"r{attempt}"), headers=headers
        )
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "5"
        assert refused.json()["error"]["code"] == "server_busy", refused.text
        assert set(refused.json()["error"]) == {"code", "message"}
    seed = await client.post("/api/openrouter/stream", json=_seed_body("refused"), headers=headers)
    assert (seed.status_code, seed.json()) == (503, {"error": "Server busy, try again later"})


def _seconds(times: list[float]) -> str:
    return ", ".join(f"{t:.3f}" for t in times) + " s"


def _check_ended(job: dict[str, Any], text: str, followed: Followed, error: str) -> None:
    """A job the fault ended: ``error``, its stored content a prefix of the upstream's
    ``text`` that holds every delta its follower was sent."""
    where = f"job {job['id']}"
    assert (job["status"], job["error"]) == ("error", error), (where, job)
    content: str = job["content_delta"]
    assert text.startswith(content), (where, content[-60:])
    assert content.startswith(followed.text), (where, followed.text[-60:], content[-60:])
    assert job["last_seq"] >= len(followed.deltas), where
    seqs = [seq for seq, _ in followed.deltas]
    assert seqs == list(range(1, len(seqs) + 1)), where


# -- the full disk ---------------------------------------------------------------------------


@contextmanager
def _raw(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    try:
        yield conn
    finally:
        conn.close()


def _fill(path: Path) -> int:
    """Grow the database past the cap with a table of filler until no page is free;
    returns the file's size in bytes."""
    with _raw(path) as conn:
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        conn.execute("CREATE TABLE filler (stuff BLOB NOT NULL)")
        while True:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            if pages * page_size >= QUOTA and free == 0:
                return int(pages) * page_size
            conn.execute("INSERT INTO filler VALUES (zeroblob(65536))")


def _make_room(path: Path) -> None:
    with _raw(path) as conn:
        conn.execute("DROP TABLE filler")


@asynccontextmanager
async def _full_disk_server(tmp_path: Path, fake: FakeUpstream) -> AsyncIterator[ApiServer]:
    config = make_config(
        tmp_path,
        store="sqlite",
        data_dir=tmp_path / "data",
        sqlite_max_bytes=QUOTA,
        store_outage_grace=GRACE,
        upstream="openai",
        upstream_base_url=fake.base_url,
        upstream_api_key="sk-disk-faults-not-a-key",
    )
    async with run_api_server(config) as server:
        yield server


async def test_a_full_disk_refuses_new_jobs_loses_nothing_sent_and_recovers(
    tmp_path: Path, figures: Figures
) -> None:
    db_path = tmp_path / "data" / SQLITE_FILE_NAME
    # Seconds from the fault's end to /readyz 200, and to the owed end stored too.
    ready: list[float] = []
    whole: list[float] = []
    lost = 0
    jobs: set[str] = set()
    # Notified: the jobs that completed unwatched. One the fault ended was watched by
    # its follower, who got its end: no notification.
    notified: set[str] = set()
    with capture_logs() as logged:
        async with (
            FakeUpstream.serve() as fake,
            _full_disk_server(tmp_path, fake) as server,
            server.client() as client,
        ):
            headers = server.auth()
            for cycle in range(FULL_CYCLES):
                long_text = _long(fake, f"long{cycle}-")
                created = await client.post(
                    "/v1/jobs", json=chat_body(model=f"long{cycle}-"), headers=headers
                )
                assert created.status_code == 202, created.text
                job_id = created.json()["id"]
                jobs.add(job_id)
                followed = Followed(job_id)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(follow, client, followed, headers)
                    with trio.fail_after(WAIT):
                        await followed.first_delta.wait()
                    assert (await client.get("/readyz")).status_code == 200

                    assert await trio.to_thread.run_sync(_fill, db_path) >= QUOTA
                    await _wait_readyz(client, 503)
                    await _refused_while_faulted(client, headers)
                    # The follower learns the job's end at the grace, having been sent
                    # only stored deltas; the store still shows the job running.
                    with trio.fail_after(WAIT):
                        await followed.ended.wait()
                    [status] = followed.statuses
                    assert (status["status"], status["error"]) == ("error", "store unavailable")
                    assert status["last_seq"] == len(followed.deltas)
                    polled = await _job(client, headers, job_id)
                    assert polled["status"] == "streaming", polled
                    assert polled["content_delta"].startswith(followed.text)

                    await trio.to_thread.run_sync(_make_room, db_path)
                    room_at = trio.current_time()
                    await wait_ready(client)
                    ready.append(trio.current_time() - room_at)
                assert followed.ended_by == "end of stream", followed.ended_by

                # The end is stored once there is room, with every delta the follower
                # was sent and what streamed into memory meanwhile.
                ended = await _wait_job(client, headers, job_id, "error")
                whole.append(trio.current_time() - room_at)
                _check_ended(ended, long_text, followed, "store unavailable")
                assert ended["last_seq"] > len(followed.deltas), "nothing streamed meanwhile"
                lost += sum(1 for seq, _ in followed.deltas if seq > ended["last_seq"])

                again_id, _ = await _short_job(client, fake, headers, f"short{cycle}-")
                jobs.add(again_id)
                notified.add(again_id)

            # Nothing refused was kept. A job's notification is stored before its end.
            listed = await client.get("/v1/jobs", headers=headers)
            assert {job["id"] for job in listed.json()["jobs"]} == jobs
            notes = await _notes(client, headers)
            assert sorted(note["job_id"] for note in notes) == sorted(notified)

    failures = [entry for entry in logged if "database or disk is full" in str(entry)]
    assert any(entry["log_level"] == "error" for entry in failures), logged
    assert any("refused" in entry["event"] for entry in failures), failures
    assert integrity(db_path) == [("ok",)]
    print(f"disk full: ready again after {_seconds(ready)}, whole after {_seconds(whole)}")
    figures.record(
        Figure(
            test="disk full (SQLite)",
            injected="database at its size cap (SQLITE_FULL) under a streaming job",
            times=FULL_CYCLES,
            jobs=len(jobs),
            lost=lost,
            what_lost="deltas",
            recovery_s=max(whole),
        )
    )
    assert lost == 0


# -- the read-only file --------------------------------------------------------------------


def _database_files(data_dir: Path) -> list[Path]:
    return [path for path in data_dir.iterdir() if path.name.startswith(SQLITE_FILE_NAME)]


def _chmod_all(data_dir: Path, mode: int) -> None:
    for path in _database_files(data_dir):
        path.chmod(mode)


async def test_a_read_only_database_file_refuses_writes_clearly_and_recovers(
    tmp_path: Path, figures: Figures
) -> None:
    data_dir = tmp_path / "data"
    server_argv = [sys.executable, "examples/server.py", "--port", "0"]
    # Root writes read-only files; the server must not, or there is no fault.
    honour = without_file_permission_override if os.geteuid() == 0 else None
    headers = authorization("reader")
    # Seconds from the fault's end to /readyz 200, and to the owed end stored too.
    ready: list[float] = []
    whole: list[float] = []
    lost = 0
    jobs: set[str] = set()
    with reaped(tmp_path) as children:
        async with FakeUpstream.serve() as fake:
            env = server_env(data_dir, fake.base_url)
            server = children.start("server", server_argv, env)
            for cycle in range(READ_ONLY_CYCLES):
                async with httpx.AsyncClient(base_url=await server.url(), timeout=10.0) as client:
                    await wait_ready(client)
                    done_id, short_text = await _short_job(client, fake, headers, f"done{cycle}-")
                    long_text = _long(fake, f"cut{cycle}-")
                    cut = await client.post(
                        "/v1/jobs", json=chat_body(model=f"cut{cycle}-"), headers=headers
                    )
                    assert cut.status_code == 202, cut.text
                    followed = Followed(cut.json()["id"])
                    jobs |= {done_id, followed.job_id}
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(follow, client, followed, headers)
                        with trio.fail_after(WAIT):
                            await followed.first_delta.wait()
                        await trio.sleep(0.3)
                        server.process.send_signal(signal.SIGKILL)
                        assert server.process.wait(timeout=10) == -signal.SIGKILL

                _chmod_all(data_dir, 0o444)
                server = children.start("server", server_argv, env, preexec_fn=honour)
                async with httpx.AsyncClient(base_url=await server.url(), timeout=10.0) as client:
                    await _wait_readyz(client, 503)
                    await _refused_while_faulted(client, headers)
                    # Reads work: the finished job as it was, the cut one as the kill left it.
                    finished = await _job(client, headers, done_id)
                    assert (finished["status"], finished["content_delta"]) == (
                        "complete",
                        short_text,
                    )
                    left = await _job(client, headers, followed.job_id)
                    assert left["status"] == "streaming", left
                    assert left["content_delta"].startswith(followed.text)

                    _chmod_all(data_dir, 0o644)
                    writable_at = trio.current_time()
                    await wait_ready(client)
                    ready.append(trio.current_time() - writable_at)
                    # The end it could not store at start is stored now, notified once.
                    ended = await _wait_job(client, headers, followed.job_id, "error")
                    whole.append(trio.current_time() - writable_at)
                    _check_ended(ended, long_text, followed, "interrupted: server restarted")
                    assert ended["content_delta"] == left["content_delta"]
                    lost += sum(1 for seq, _ in followed.deltas if seq > ended["last_seq"])
                    again_id, _ = await _short_job(client, fake, headers, f"again{cycle}-")
                    jobs.add(again_id)
                    # Nothing refused was kept; every job, unwatched at its end, notified
                    # once (a job's notification is stored before its end).
                    listed = await client.get("/v1/jobs", headers=headers)
                    assert {job["id"] for job in listed.json()["jobs"]} == jobs
                    notes = await _notes(client, headers)
                    assert sorted(note["job_id"] for note in notes) == sorted(jobs)
                log = server.log.read_text()
                assert "attempt to write a readonly database" in log, log

            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(timeout=30) == 0, server.log.read_text()
    assert integrity(data_dir / SQLITE_FILE_NAME) == [("ok",)]
    print(f"read-only: ready again after {_seconds(ready)}, whole after {_seconds(whole)}")
    figures.record(
        Figure(
            test="read-only database (SQLite)",
            injected="database files made read-only after a kill -9, server restarted on them",
            times=READ_ONLY_CYCLES,
            jobs=len(jobs),
            lost=lost,
            what_lost="deltas",
            recovery_s=max(whole),
        )
    )
    assert lost == 0
