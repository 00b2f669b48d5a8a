"""The SQLite schema, as an ordered list of versions, and the code that applies it.

The database records its version in ``PRAGMA user_version`` (0 for a new file).
Opening a database applies every migration above that version, each in its own
transaction together with the version bump, so a failed migration leaves the
database at the previous version. A database newer than this code is refused
rather than guessed at.

To change the schema, append a :class:`Migration` with the next version; never
edit one that has shipped. A migration names statuses and columns as they were
at its version, never through the model's current names.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

import attrs

from actors.stores.protocol import StoreError

__all__ = ["CURRENT_VERSION", "MIGRATIONS", "Migration", "migrate", "schema_version"]


@attrs.frozen
class Migration:
    """The statements that take the schema from ``version - 1`` to ``version``.

    ``step``, if given, runs after the statements in the same transaction, for
    data SQL cannot move; it must not commit or roll back, and raising
    :class:`sqlite3.Error` or :class:`StoreError` fails the migration.
    """

    version: int
    statements: tuple[str, ...]
    step: Callable[[sqlite3.Connection], None] | None = None


def _split_running_output(conn: sqlite3.Connection) -> None:
    """Version 2: keep in a running job's row only the output it was created
    with, and record every job's output lengths.

    Version 1 appended every delta's text to its job's row as well as storing
    the delta, so a running row held its creation output followed by all its
    deltas'. Version 2 joins a running job's deltas when it is read, so that
    suffix is cut off here. The lengths are counted in Python: SQLite's
    ``length`` stops at the first NUL character.
    """
    jobs = conn.execute("SELECT id, status, content, reasoning FROM jobs").fetchall()
    for job_id, status, content, reasoning in jobs:
        content_length, reasoning_length = len(content), len(reasoning)
        if status in ("queued", "streaming"):
            pieces = conn.execute(
                "SELECT content, reasoning FROM deltas WHERE job_id = ? ORDER BY seq", (job_id,)
            ).fetchall()
            content = _without_suffix(job_id, content, "".join(p[0] for p in pieces))
            reasoning = _without_suffix(job_id, reasoning, "".join(p[1] for p in pieces))
        conn.execute(
            "UPDATE jobs SET content = ?, reasoning = ?, content_length = ?, "
            "reasoning_length = ? WHERE id = ?",
            (content, reasoning, content_length, reasoning_length, job_id),
        )


def _without_suffix(job_id: str, text: str, suffix: str) -> str:
    if not text.endswith(suffix):
        raise StoreError(f"job {job_id!r}: its output does not end with its deltas'")
    return text[: len(text) - len(suffix)]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        statements=(
            """
            CREATE TABLE jobs (
                id TEXT PRIMARY KEY,
                user_id TEXT NOT NULL,
                workspace_id TEXT NOT NULL,
                thread_id TEXT NOT NULL,
                message_id TEXT NOT NULL,
                model TEXT NOT NULL,
                status TEXT NOT NULL
                    CHECK (status IN ('queued', 'streaming', 'complete', 'error', 'aborted')),
                started_at TEXT NOT NULL,
                content TEXT NOT NULL DEFAULT '',
                reasoning TEXT NOT NULL DEFAULT '',
                chunks_received INTEGER NOT NULL DEFAULT 0,
                last_seq INTEGER NOT NULL DEFAULT 0,
                completed_at TEXT,
                error TEXT,
                finish_reason TEXT,
                usage TEXT,
                generation_id TEXT
            ) STRICT
            """,
            "CREATE INDEX jobs_by_owner ON jobs (user_id, workspace_id, started_at)",
            "CREATE INDEX jobs_by_status ON jobs (status, completed_at)",
            """
            CREATE TABLE deltas (
                job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
                seq INTEGER NOT NULL,
                content TEXT NOT NULL,
                reasoning TEXT NOT NULL,
                PRIMARY KEY (job_id, seq)
            ) STRICT, WITHOUT ROWID
            """,
            # No foreign key to jobs: a notification outlives its job's retention.
            """
            CREATE TABLE notifications (
                id TEXT PRIMARY KEY,
                user_id TEXT NOT NULL,
                workspace_id TEXT NOT NULL,
                thread_id TEXT NOT NULL,
                job_id TEXT NOT NULL UNIQUE,
                type TEXT NOT NULL,
                title TEXT NOT NULL,
                body TEXT NOT NULL,
                created_at TEXT NOT NULL,
                actions TEXT NOT NULL,
                read_at TEXT
            ) STRICT
            """,
            "CREATE INDEX notifications_by_owner "
            "ON notifications (user_id, workspace_id, created_at)",
            """
            CREATE TABLE muted_threads (
                user_id TEXT NOT NULL,
                workspace_id TEXT NOT NULL,
                thread_id TEXT NOT NULL,
                PRIMARY KEY (user_id, workspace_id, thread_id)
            ) STRICT, WITHOUT ROWID
            """,
        ),
    ),
    Migration(
        version=2,
        statements=(
            "ALTER TABLE jobs ADD COLUMN content_length INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE jobs ADD COLUMN reasoning_length INTEGER NOT NULL DEFAULT 0",
        ),
        step=_split_running_output,
    ),
    Migration(
        version=3,
        statements=(
            # A job's tool calls and images as JSON arrays; foreground is 0 or 1.
            "ALTER TABLE jobs ADD COLUMN tool_calls TEXT NOT NULL DEFAULT '[]'",
            "ALTER TABLE jobs ADD COLUMN images TEXT NOT NULL DEFAULT '[]'",
            "ALTER TABLE jobs ADD COLUMN foreground INTEGER NOT NULL DEFAULT 0 "
            "CHECK (foreground IN (0, 1))",
            """
            CREATE TABLE webhook_outbox (
                id TEXT PRIMARY KEY,
                type TEXT NOT NULL,
                created_at TEXT NOT NULL,
                body TEXT NOT NULL,
                next_attempt_at TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0
            ) STRICT
            """,
            "CREATE INDEX webhook_outbox_by_due "
            "ON webhook_outbox (next_attempt_at, created_at, id)",
            "CREATE INDEX webhook_outbox_by_age ON webhook_outbox (created_at)",
            """
            CREATE TABLE webhook_endpoints (
                url TEXT PRIMARY KEY,
                disabled_at TEXT NOT NULL
            ) STRICT
            """,
        ),
    ),
    Migration(
        version=4,
        statements=(
            # Always empty: a health check writes a page-sized row here and deletes
            # it in the same transaction, to learn whether the file takes writes.
            "CREATE TABLE write_probe (filler BLOB NOT NULL) STRICT",
        ),
    ),
)

CURRENT_VERSION = MIGRATIONS[-1].version


def schema_version(conn: sqlite3.Connection) -> int:
    """Return the schema version recorded in the database (0 if none)."""
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Bring the database behind ``conn`` up to the last of ``migrations``.

    ``conn`` must be in autocommit mode (``isolation_level=None``) with no open
    transaction. Returns the version the database is at afterwards. Raises
    :class:`StoreError` if the database is newer than the last migration, or if
    a migration fails (that migration is rolled back; earlier ones stay).
    Blocks on disk I/O; call it off the trio thread.
    """
    _check_numbering(migrations)
    target = migrations[-1].version if migrations else 0
    current = schema_version(conn)
    if current > target:
        raise StoreError(
            f"database schema version {current} is newer than this code supports ({target}); "
            "upgrade troupe or use another data directory"
        )
    for migration in migrations:
        if migration.version <= current:
            continue
        # BEGIN IMMEDIATE takes the write lock up front, so two processes opening
        # the same file cannot both apply a migration.
        conn.execute("BEGIN IMMEDIATE")
        try:
            if schema_version(conn) >= migration.version:
                conn.execute("ROLLBACK")
                continue
            for statement in migration.statements:
                conn.execute(statement)
            if migration.step is not None:
                migration.step(conn)
            # PRAGMA takes no parameters; the version is an int we control.
            conn.execute(f"PRAGMA user_version = {int(migration.version)}")
            conn.execute("COMMIT")
        except (sqlite3.Error, StoreError) as exc:
            # Some errors (disk full, I/O) end the transaction on their own.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(
                f"schema migration to version {migration.version} failed: {exc}"
            ) from exc
        current = migration.version
    return current


def _check_numbering(migrations: Sequence[Migration]) -> None:
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise ValueError(
                f"migration versions must run 1, 2, 3, ...; found {migration.version} "
                f"at position {expected}"
            )
