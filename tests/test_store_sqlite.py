"""What only the SQLite store has: WAL, schema versions, the group-committing writer."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from actors.model import Delta, Job, JobStatus, Owner, Usage
from actors.stores import SqliteJobStore, SqliteStore, StoreError
from actors.stores.migrations import CURRENT_VERSION, MIGRATIONS, Migration, migrate
from actors.stores.sqlite import _rows_per_statement
from actors.stores.sqlite_writer import SqliteWriter

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def make_job(job_id: str) -> Job:
    return Job(
        id=job_id,
        user_id="alice",
        workspace_id="ws-1",
        thread_id="thread-1",
        message_id="message-1",
        model="m",
        status=JobStatus.STREAMING,
        started_at=T0,
    )


def raw(path: Path) -> sqlite3.Connection:
    """A plain connection for looking at (or preparing) the file from outside."""
    return sqlite3.connect(path, isolation_level=None)


def open_store(path: Path) -> SqliteStore:
    # Opening blocks on disk I/O; in tests that is fine on the trio thread.
    return SqliteStore(path)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "troupe.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SqliteStore]:
    opened = open_store(db_path)
    yield opened
    await opened.aclose()


async def test_database_is_in_wal_mode_with_normal_sync(store: SqliteStore, db_path: Path) -> None:
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # synchronous is per connection: ask the store's own read connection.
    assert await store._read(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 1
    assert await store._read(lambda c: c.execute("PRAGMA foreign_keys").fetchone()[0]) == 1


async def test_schema_version_is_recorded(store: SqliteStore, db_path: Path) -> None:
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == CURRENT_VERSION
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
    assert {
        "jobs",
        "deltas",
        "notifications",
        "muted_threads",
        "webhook_outbox",
        "webhook_endpoints",
        "write_probe",
    } <= tables
    assert len(MIGRATIONS) == CURRENT_VERSION


def test_job_side_alias_is_the_same_store() -> None:
    assert SqliteJobStore is SqliteStore


async def test_reopening_at_the_current_version_changes_nothing(db_path: Path) -> None:
    first = open_store(db_path)
    await first.create_job(make_job("job-1"))
    await first.aclose()
    with raw(db_path) as conn:
        schema_before = conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall()

    second = open_store(db_path)
    try:
        assert await second.get_job("job-1") == make_job("job-1")
    finally:
        await second.aclose()
    with raw(db_path) as conn:
        assert conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall() == (
            schema_before
        )
        assert conn.execute("PRAGMA user_version").fetchone()[0] == CURRENT_VERSION


def test_a_database_newer_than_the_code_is_refused(db_path: Path) -> None:
    with raw(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {CURRENT_VERSION + 1}")

    with pytest.raises(StoreError, match=rf"version {CURRENT_VERSION + 1} is newer"):
        open_store(db_path)

    with raw(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == CURRENT_VERSION + 1


def test_a_file_that_is_not_a_database_is_refused(db_path: Path) -> None:
    db_path.write_bytes(b"this is not a sqlite database, not even close" * 100)
    with pytest.raises(StoreError, match="cannot open SQLite store"):
        open_store(db_path)


def test_a_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open SQLite store"):
        open_store(tmp_path / "missing" / "troupe.db")


_V1 = Migration(1, ("CREATE TABLE things (id TEXT PRIMARY KEY) STRICT",))
_V2 = Migration(
    2,
    (
        "ALTER TABLE things ADD COLUMN label TEXT NOT NULL DEFAULT 'none'",
        "CREATE TABLE extras (id TEXT PRIMARY KEY) STRICT",
    ),
)


def test_migration_from_version_1_applies_only_the_newer_steps(db_path: Path) -> None:
    with raw(db_path) as conn:
        assert migrate(conn, [_V1]) == 1
        conn.execute("INSERT INTO things (id) VALUES ('kept')")

        # Re-running v1's CREATE TABLE would fail: reaching 2 proves it was skipped.
        assert migrate(conn, [_V1, _V2]) == 2

        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        assert conn.execute("SELECT id, label FROM things").fetchall() == [("kept", "none")]
        assert conn.execute("SELECT count(*) FROM extras").fetchone()[0] == 0
        assert migrate(conn, [_V1, _V2]) == 2


def test_a_failing_migration_is_rolled_back_whole(db_path: Path) -> None:
    broken = Migration(2, ("CREATE TABLE half_done (id TEXT) STRICT", "THIS IS NOT SQL"))
    with raw(db_path) as conn:
        migrate(conn, [_V1])

        with pytest.raises(StoreError, match="migration to version 2 failed"):
            migrate(conn, [_V1, broken])

        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert "half_done" not in names
        assert not conn.in_transaction


def test_migrations_must_be_numbered_from_one(db_path: Path) -> None:
    with raw(db_path) as conn, pytest.raises(ValueError, match="1, 2, 3"):
        migrate(conn, [_V2])


async def test_opening_an_empty_file_migrates_it_to_the_current_version(db_path: Path) -> None:
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
    store = open_store(db_path)
    await store.aclose()
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == CURRENT_VERSION


async def test_group_commit_batches_concurrent_writes(store: SqliteStore) -> None:
    jobs = [make_job(f"job-{i}") for i in range(1000)]
    async with trio.open_nursery() as nursery:
        for job in jobs:
            nursery.start_soon(store.create_job, job)
    commits_before = store.commit_count

    async with trio.open_nursery() as nursery:
        for job in jobs:
            nursery.start_soon(store.append_deltas, job.id, [Delta(job.id, 1, job.id)])

    appends_committed_in = store.commit_count - commits_before
    assert 1 <= appends_committed_in < 100
    assert store.write_count == 2000
    for job in jobs[::97]:
        got = await store.get_job(job.id)
        assert got is not None and got.content == job.id and got.last_seq == 1
    assert await store.count_active() == 1000


async def test_append_many_of_every_job_is_one_write_and_one_commit(store: SqliteStore) -> None:
    # More deltas than one statement carries, so the batch spans statements.
    jobs = [make_job(f"job-{i}") for i in range(600)]
    for job in jobs:
        await store.create_job(job)
    commits_before, writes_before = store.commit_count, store.write_count

    await store.append_many({job.id: [Delta(job.id, 1, job.id)] for job in jobs})

    assert (store.commit_count - commits_before, store.write_count - writes_before) == (1, 1)
    for job in jobs[::97] + jobs[-1:]:
        got = await store.get_job(job.id)
        assert got is not None and (got.content, got.chunks_received, got.last_seq) == (
            job.id,
            1,
            1,
        )


async def test_a_job_split_across_append_statements_counts_each_delta_once(
    store: SqliteStore,
) -> None:
    store._append_rows = 2
    long, short = make_job("long"), make_job("short")
    await store.create_job(long)
    await store.create_job(short)
    await store.append_deltas("long", [Delta("long", 1, "a"), Delta("long", 2, "b")])

    # 2 and 3 share a statement with the 2 already stored; 6 waits for 4 and 5.
    await store.append_many(
        {
            "long": [Delta("long", seq, str(seq)) for seq in (6, 2, 3, 4, 5)],
            "short": [Delta("short", 1, "s")],
        }
    )

    got = await store.get_job("long")
    assert got is not None and (got.content, got.chunks_received, got.last_seq) == ("ab3456", 6, 6)
    assert [d.content for d in await store.get_deltas("long")] == ["a", "b", "3", "4", "5", "6"]
    got = await store.get_job("short")
    assert got is not None and (got.content, got.last_seq) == ("s", 1)


def test_statements_carry_at_most_as_many_rows_as_the_parameter_limit_allows(
    db_path: Path,
) -> None:
    with raw(db_path) as conn:
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 30)
        assert _rows_per_statement(conn) == 4
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 32766)
        assert _rows_per_statement(conn) == 512


async def test_appending_does_not_rewrite_the_job_row_until_it_finishes(
    store: SqliteStore, db_path: Path
) -> None:
    await store.create_job(make_job("job-1"))
    for seq in range(1, 4):
        await store.append_deltas("job-1", [Delta("job-1", seq, f"w{seq} ", "r")])

    def row() -> tuple[str, str, int, int]:
        with raw(db_path) as conn:
            found: tuple[str, str, int, int] = conn.execute(
                "SELECT content, reasoning, content_length, reasoning_length FROM jobs"
            ).fetchone()
        return found

    assert row() == ("", "", 9, 3)
    got = await store.get_job("job-1")
    assert got is not None and got.content == "w1 w2 w3 "

    assert await store.update_job(
        attrs.evolve(make_job("job-1"), status=JobStatus.COMPLETE, completed_at=T0)
    )
    assert row() == ("w1 w2 w3 ", "rrr", 9, 3)


async def test_a_cancelled_append_many_is_still_stored_for_every_job(store: SqliteStore) -> None:
    jobs = [make_job(f"job-{i}") for i in range(10)]
    for job in jobs:
        await store.create_job(job)
    with trio.CancelScope() as scope:
        scope.cancel()
        await store.append_many({job.id: [Delta(job.id, 1, "x")] for job in jobs})
    assert scope.cancelled_caught

    # Submitted before the cancellation landed: once a later write is
    # committed, so is this one, for every job.
    await store.create_job(make_job("after"))
    got = [await store.get_job(job.id) for job in jobs]
    assert [(j.content, j.last_seq) for j in got if j is not None] == [("x", 1)] * 10


async def test_a_version_1_database_migrates_with_its_running_jobs_output(db_path: Path) -> None:
    # What version 1 stored: a running job's row held its whole output, and
    # its deltas held the same text again.
    with raw(db_path) as conn:
        assert migrate(conn, MIGRATIONS[:1]) == 1
        columns = (
            "id, user_id, workspace_id, thread_id, message_id, model, status, started_at, "
            "content, reasoning, chunks_received, last_seq, completed_at"
        )
        started = "2025-03-01T12:00:00.000000+00:00"
        for job_id, status, content, reasoning, seqs, completed in (
            ("running", "streaming", "pre:par\x00tial", "why", 2, None),
            ("done", "complete", "all of it", "", 1, "2025-03-01T12:01:00.000000+00:00"),
            ("queued", "queued", "", "", 0, None),
        ):
            conn.execute(
                f"INSERT INTO jobs ({columns}) VALUES (?, 'alice', 'ws-1', 't', 'm', 'x', ?, ?, "
                "?, ?, ?, ?, ?)",
                (job_id, status, started, content, reasoning, seqs, seqs, completed),
            )
        conn.executemany(
            "INSERT INTO deltas (job_id, seq, content, reasoning) VALUES (?, ?, ?, ?)",
            [
                ("running", 1, "par", "w"),
                ("running", 2, "\x00tial", "hy"),
                ("done", 1, "all of it", ""),
            ],
        )

    store = open_store(db_path)
    try:
        running = await store.get_job("running")
        assert running is not None
        assert (running.content, running.reasoning, running.last_seq) == (
            "pre:par\x00tial",
            "why",
            2,
        )
        done = await store.get_job("done")
        assert done is not None and done.content == "all of it"
        lengths = {
            s.job.id: (s.content_length, s.reasoning_length)
            for s in await store.list_job_summaries(Owner("alice", "ws-1"))
        }
        assert lengths == {"running": (12, 3), "done": (9, 0), "queued": (0, 0)}

        await store.append_deltas("running", [Delta("running", 3, "!", "")])
        assert await store.update_job(
            attrs.evolve(running, status=JobStatus.COMPLETE, completed_at=T0)
        )
        finished = await store.get_job("running")
        assert finished is not None and finished.content == "pre:par\x00tial!"
    finally:
        await store.aclose()
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == CURRENT_VERSION


async def test_a_version_2_database_migrates_its_jobs_and_gains_the_outbox(db_path: Path) -> None:
    with raw(db_path) as conn:
        assert migrate(conn, MIGRATIONS[:2]) == 2
        conn.execute(
            "INSERT INTO jobs (id, user_id, workspace_id, thread_id, message_id, model, status, "
            "started_at, content, chunks_received, last_seq, completed_at, finish_reason, usage, "
            "content_length) VALUES ('done', 'alice', 'ws-1', 'thread-1', 'message-1', 'm', "
            "'complete', '2025-03-01T12:00:00.000000+00:00', 'answer', 1, 1, "
            "'2025-03-01T12:01:00.000000+00:00', 'stop', '{\"prompt_tokens\":3}', 6)"
        )
        conn.execute(
            "INSERT INTO jobs (id, user_id, workspace_id, thread_id, message_id, model, status, "
            "started_at) VALUES ('running', 'alice', 'ws-1', 'thread-1', 'message-1', 'm', "
            "'streaming', '2025-03-01T12:00:00.000000+00:00')"
        )
        conn.execute("INSERT INTO deltas VALUES ('running', 1, 'part', '')")
        conn.execute("UPDATE jobs SET chunks_received = 1, last_seq = 1 WHERE id = 'running'")

    store = open_store(db_path)
    try:
        done = await store.get_job("done")
        assert done == Job(
            id="done",
            user_id="alice",
            workspace_id="ws-1",
            thread_id="thread-1",
            message_id="message-1",
            model="m",
            status=JobStatus.COMPLETE,
            started_at=T0,
            content="answer",
            chunks_received=1,
            last_seq=1,
            completed_at=T0 + timedelta(minutes=1),
            finish_reason="stop",
            usage=Usage(prompt_tokens=3),
        )
        running = await store.get_job("running")
        assert running is not None and running.content == "part"
        calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
        assert await store.update_job(
            attrs.evolve(running, status=JobStatus.COMPLETE, completed_at=T0, tool_calls=calls)
        )
        finished = await store.get_job("running")
        assert finished is not None and (finished.content, finished.tool_calls) == ("part", calls)
        assert (await store.webhook_outbox_summary()).depth == 0
    finally:
        await store.aclose()
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == CURRENT_VERSION
        added = conn.execute("SELECT tool_calls, images, foreground FROM jobs WHERE id = 'done'")
        assert added.fetchall() == [("[]", "[]", 0)]


def test_a_version_1_running_job_that_disagrees_with_its_deltas_is_not_migrated(
    db_path: Path,
) -> None:
    with raw(db_path) as conn:
        migrate(conn, MIGRATIONS[:1])
        conn.execute(
            "INSERT INTO jobs (id, user_id, workspace_id, thread_id, message_id, model, status, "
            "started_at, content, last_seq) VALUES ('odd', 'a', 'w', 't', 'm', 'x', 'streaming', "
            "'2025-03-01T12:00:00.000000+00:00', 'abc', 1)"
        )
        conn.execute("INSERT INTO deltas VALUES ('odd', 1, 'xyz', '')")

    with pytest.raises(StoreError, match=r"migration to version 2 failed.*'odd'"):
        open_store(db_path)

    with raw(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert conn.execute("SELECT content FROM jobs").fetchall() == [("abc",)]


async def test_a_failing_write_fails_only_its_caller(store: SqliteStore) -> None:
    await store.create_job(make_job("taken"))
    outcomes: dict[str, str] = {}

    async def create(job_id: str) -> None:
        try:
            await store.create_job(make_job(job_id))
        except StoreError:
            outcomes[job_id] = "failed"
        else:
            outcomes[job_id] = "ok"

    ids = [f"new-{i}" for i in range(20)]
    ids.insert(10, "taken")
    async with trio.open_nursery() as nursery:
        for job_id in ids:
            nursery.start_soon(create, job_id)

    assert outcomes.pop("taken") == "failed"
    assert set(outcomes.values()) == {"ok"}
    for job_id in outcomes:
        assert await store.get_job(job_id) is not None


async def test_writer_undoes_a_failed_operation_but_commits_its_group(db_path: Path) -> None:
    conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)")
    writer = SqliteWriter(conn)
    results: dict[int, str] = {}

    async def write(x: int, fail: bool) -> None:
        def operation(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO t (x) VALUES (?)", (x,))
            if fail:
                raise RuntimeError(f"operation {x} fails after writing")

        try:
            await writer.submit(operation)
        except RuntimeError:
            results[x] = "raised"
        else:
            results[x] = "ok"

    async with trio.open_nursery() as nursery:
        for x in range(10):
            nursery.start_soon(write, x, x == 4)
    await writer.aclose()

    assert results[4] == "raised"
    assert all(results[x] == "ok" for x in range(10) if x != 4)
    with raw(db_path) as check:
        stored = [row[0] for row in check.execute("SELECT x FROM t ORDER BY x")]
    assert stored == [x for x in range(10) if x != 4]


async def test_sqlite_errors_reach_the_caller_as_store_errors(db_path: Path) -> None:
    conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    writer = SqliteWriter(conn)
    try:
        with pytest.raises(StoreError, match="no such table") as raised:
            await writer.submit(lambda c: c.execute("INSERT INTO nowhere VALUES (1)"))
        assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
        assert await writer.submit(lambda c: 42) == 42
    finally:
        await writer.aclose()
    with pytest.raises(StoreError, match="closed"):
        await writer.submit(lambda c: 1)


async def test_a_cancelled_write_leaves_the_store_consistent(store: SqliteStore) -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        await store.create_job(make_job("cancelled-while-waiting"))
    assert scope.cancelled_caught

    # Writes are applied in submission order, so once a later write is
    # committed the cancelled one has been too; both are whole.
    await store.create_job(make_job("after"))
    assert await store.get_job("cancelled-while-waiting") == make_job("cancelled-while-waiting")
    assert await store.get_job("after") == make_job("after")


async def test_aclose_commits_writes_still_waiting(db_path: Path) -> None:
    store = open_store(db_path)
    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(store.create_job, make_job(f"job-{i}"))
        # Every writer task has queued its write and is waiting for the commit.
        await trio.testing.wait_all_tasks_blocked()
        await store.aclose()

    reopened = open_store(db_path)
    try:
        assert len(await reopened.list_jobs_by_status([JobStatus.STREAMING])) == 200
    finally:
        await reopened.aclose()


async def test_datetimes_are_stored_as_utc_iso_text(store: SqliteStore, db_path: Path) -> None:
    local = timezone(timedelta(hours=-5))
    started_at = datetime(2025, 3, 1, 7, 0, 0, 5, tzinfo=local)
    await store.create_job(attrs.evolve(make_job("job-tz"), started_at=started_at))
    with raw(db_path) as conn:
        (text,) = conn.execute("SELECT started_at FROM jobs WHERE id = 'job-tz'").fetchone()
    assert text == "2025-03-01T12:00:00.000005+00:00"
    got = await store.get_job("job-tz")
    assert got is not None and got.started_at == datetime(2025, 3, 1, 12, 0, 0, 5, tzinfo=UTC)
    assert got.started_at.tzinfo == UTC


async def test_ping_and_counters(store: SqliteStore) -> None:
    await store.ping()
    before = store.commit_count
    await store.create_job(make_job("one"))
    assert store.commit_count == before + 1
    assert "troupe.db" in repr(store)


def _fill_past(path: Path, size: int) -> None:
    """Grow the file past ``size`` bytes from another connection, until no page is free."""
    with raw(path) as conn:
        conn.execute("CREATE TABLE filler (stuff BLOB NOT NULL)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        while (
            conn.execute("PRAGMA page_count").fetchone()[0] * page_size < size
            or conn.execute("PRAGMA freelist_count").fetchone()[0] > 0
        ):
            conn.execute("INSERT INTO filler VALUES (zeroblob(65536))")


async def test_at_its_size_cap_the_store_refuses_writes_and_pings_until_room_is_made(
    db_path: Path,
) -> None:
    store = SqliteStore(db_path, max_bytes=1_048_576)
    try:
        await store.create_job(make_job("before"))
        await store.ping()
        _fill_past(db_path, 1_048_576)

        with pytest.raises(StoreError, match=r"takes no writes: .*database or disk is full"):
            await store.ping()
        # A row that would still fit in a page is refused too, while the store is full.
        with pytest.raises(StoreError, match="database or disk is full"):
            await store.create_job(make_job("refused"))
        assert await store.get_job("refused") is None
        assert await store.get_job("before") is not None

        with raw(db_path) as conn:
            conn.execute("DROP TABLE filler")
        await store.ping()
        await store.create_job(make_job("after"))
        assert await store.get_job("after") is not None
    finally:
        await store.aclose()
    with raw(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM write_probe").fetchone() == (0,)


async def test_a_store_told_its_file_is_read_only_opens_it_again_for_the_next_write(
    store: SqliteStore,
) -> None:
    # A write connection that refuses writes, as one that opened a read-only file does.
    await store._writer.submit(lambda conn: conn.execute("PRAGMA query_only = ON"))
    with pytest.raises(StoreError, match="attempt to write a readonly database"):
        await store.create_job(make_job("refused"))
    # The file takes writes (it always did): the next write is on a new connection.
    await store.create_job(make_job("after"))
    assert await store.get_job("after") is not None
    assert await store.get_job("refused") is None
    await store.ping()


async def test_a_reconnect_swaps_the_writers_connection_between_groups(db_path: Path) -> None:
    writer = SqliteWriter(sqlite3.connect(db_path, isolation_level=None, check_same_thread=False))
    opened: list[sqlite3.Connection] = []

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        opened.append(conn)
        return conn

    def which(conn: sqlite3.Connection) -> sqlite3.Connection:
        return conn

    try:
        old = await writer.submit(which)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.reconnect, connect)
            await trio.testing.wait_all_tasks_blocked()
            new = await writer.submit(which)
        assert old is not new and opened == [new]

        def broken() -> sqlite3.Connection:
            raise sqlite3.OperationalError("unable to open database file")

        with pytest.raises(StoreError, match="cannot open the database again"):
            await writer.reconnect(broken)
        # The old connection is closed all the same: writes fail until a reconnect works.
        with pytest.raises(StoreError):
            await writer.submit(which)
        await writer.reconnect(connect)
        assert await writer.submit(which) is opened[-1]
    finally:
        await writer.aclose()
