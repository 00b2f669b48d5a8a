"""The Redis store: jobs, their deltas, notifications and the webhook outbox in one
Redis server that several troupe processes share (a
:class:`~actors.stores.protocol.ClusterStore`), through ``coredis``.

**Layout.** Every key starts with the configured prefix (``troupe:`` by default), so
deployments can share a server. ``{id}`` is a job's, notification's or webhook
event's id; ``{owner}`` is ``<bytes in user_id>:<user_id>:<workspace_id>``, which no
two owners share.

=================================  ======  ==================================================
key                                type    holds
=================================  ======  ==================================================
``job:{id}``                       hash    the job's fields; a running job's output only as
                                           it was created, a finished job's whole
``deltas:{id}``                    stream  the job's deltas: entry ``{seq}-0`` with fields
                                           ``c`` (content) and ``r`` (reasoning); once the
                                           job ends, the end marker ``{last_seq}-1``
``owner-jobs:{owner}``             zset    the owner's job ids, by ``started_at``
``status:{status}``                zset    the ids of the jobs in that status, by
                                           ``started_at``
``running:bg``, ``running:fg``     set     running background, foreground job ids
``running-user:{user_id}``         set     the user's running background job ids
``lease:{id}``                     string  the node holding the job's lease, expiring (PX)
``watched:{id}``                   string  there while someone watches the job (PX)
``finished``                       zset    finished job ids, by ``completed_at``
``finished-index``                 hash    finished job id: ``{status}:{owner}``, to find
                                           its index entries once it has expired
``notification:{id}``              hash    the notification's fields
``owner-notifications:{owner}``    zset    the owner's notification ids, by ``created_at``
``notification-of:{job id}``       string  the id of the job's one notification
``muted:{owner}``                  set     the owner's muted thread ids
``webhook:{id}``                   hash    a queued webhook event's fields
``outbox``, ``outbox-created``     zset    queued event ids, by ``next_attempt_at``, by
                                           ``created_at``
``webhook-endpoints-disabled``     hash    url: when it answered ``410 Gone``
``channel:{name}``                 pubsub  what :meth:`RedisStore.publish` sends
=================================  ======  ==================================================

Times are integer microseconds since the epoch (UTC), as decimal text in hashes and
as sorted-set scores (exact up to the year 2255). Usage, tool calls, images and
notification actions are JSON.

**Writes** are Lua scripts, each one atomic: the scripts compute the keys they touch,
so the store needs one Redis server (with replicas if you like), not Redis Cluster.
A job's terminal update joins its output into its hash, ends its stream with the end
marker, takes it out of the running sets, drops its lease and sets ``PEXPIREAT`` on
its keys at ``completed_at`` + ``retention``: finished jobs disappear without a sweep.
Their index entries go lazily: a listing that meets one drops it, each job that
finishes drops up to two of the oldest expired ones, and
:meth:`RedisStore.delete_finished_before` drops every one it deletes.

**Connections.** Commands share one connection, multiplexed, and reach the server in
the order they are made. They run in the store's own task, so a caller's
cancellation never cuts one in half (the command completes, its result is dropped);
each has ``command_timeout`` to answer. The store's *live reader*, a task of its own
on a connection of its own, follows with one ``XREAD BLOCK`` every job stream that a
:meth:`RedisStore.read_live` of this process waits on, and keeps the last deltas of
each in memory for the next reads; each subscription opens a connection too. None
of them holds up the other commands. A connection that fails is replaced by the next
command, so the store works again as soon as Redis is back. Every failure of the
backend is a :class:`~actors.stores.protocol.StoreError` naming the server (never its
password).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, final
from urllib.parse import urlsplit

import attrs
import coredis
import orjson
import outcome
import structlog
import trio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from coredis.exceptions import RedisError
from coredis.retry import NoRetryPolicy

from actors import codec
from actors.model import (
    Delta,
    Job,
    JobStatus,
    Notification,
    NotificationAction,
    NotificationType,
    Owner,
    Usage,
    WebhookEvent,
)
from actors.stores.protocol import (
    Admission,
    JobSummary,
    Limits,
    OutboxSummary,
    StoreError,
    as_utc,
    check_batches,
    check_limit,
    new_deltas_in_order,
)
from actors.stores.redis_scripts import JOB_FIELDS, NOTIFICATION_FIELDS, SCRIPTS

__all__ = ["RedisStore", "RedisStoreStatistics"]

T = TypeVar("T")

log = structlog.get_logger("troupe.stores.redis")

_Actions = tuple[NotificationAction, ...]
_Client = coredis.Redis[bytes]
_Entry = tuple[Any, Any]
"""A stream entry: its id and its fields (a mapping from coredis, a flat list from
a script), all bytes."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

_BACKEND_ERRORS = (RedisError, OSError, trio.TooSlowError, BaseExceptionGroup)
"""What a command can fail with when the server is unreachable, slow or refuses it
(OSError covers TimeoutError); each becomes a StoreError."""

# The live reader's XREAD blocks this long (ms), a flush tick: a job that starts to be
# followed waits at most that long before the reader reads its stream too. The block
# costs a quiet process 20 empty reads a second, and a busy one nothing (its read
# returns at the next flush). Waking the reader with CLIENT UNBLOCK would not spare
# the bound: sent on another connection, the unblock can reach the server before the
# XREAD it means to cut short, which then blocks its whole time.
_LIVE_BLOCK_MS = 50
# The deltas the live reader keeps of each job, newest: a follower no further behind
# is served from memory. Also the most it reads of one stream per XREAD.
_LIVE_TAIL = 64
# A job no read of this process has asked for in this many of the reads' timeouts
# leaves the live reader.
_LIVE_IDLE_TIMEOUTS = 3


@final
@attrs.frozen
class RedisStoreStatistics:
    """What :meth:`RedisStore.statistics` reports of the store's live reader."""

    live_jobs: int
    """The jobs it holds: those it reads, and those it read the end of and keeps for
    their followers' last reads."""
    live_streams: int
    """The job streams it reads."""
    live_waiters: int
    """The calls of :meth:`RedisStore.read_live` waiting on it."""


@final
class RedisStore:
    """Implements :class:`~actors.stores.protocol.ClusterStore` on a Redis server.

    Open one with :meth:`open`; :meth:`aclose` closes it. ``retention`` is how long a
    finished job is kept after its ``completed_at``. The live reader follows at most
    ``max_live_jobs`` jobs at once (see :meth:`read_live`). A subscriber more than
    ``subscription_buffer`` messages behind loses its subscription (see
    :meth:`subscribe`).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        retention: float,
        connect_timeout: float,
        command_timeout: float,
        max_live_jobs: int,
        subscription_buffer: int,
    ) -> None:
        self._url = url
        self._where = _describe_server(url)
        self._prefix = prefix
        self._retention_ms = math.ceil(retention * 1000)
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        # The longest a command takes, a new connection included.
        self._deadline = connect_timeout + command_timeout
        self._subscription_buffer = subscription_buffer
        self._client = self._new_client(command_timeout=command_timeout)
        self._scripts = {
            name: self._client.register_script(source) for name, source in SCRIPTS.items()
        }
        self._max_live_jobs = max_live_jobs
        # The jobs the live reader holds, by id.
        self._live: dict[str, _LiveJob] = {}
        # Set when a job joins the live reader: it has a stream to read again.
        self._live_joined = trio.Event()
        # Set, and replaced, when a job leaves the live reader or ends: there may be room.
        self._live_room = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._started = trio.Event()
        self._closing = trio.Event()
        self._stopped = trio.Event()
        self._commands_in_flight = 0
        self._commands_done: trio.Event | None = None
        self._closed = False

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        prefix: str = "troupe:",
        retention: float = 3600.0,
        connect_timeout: float = 5.0,
        command_timeout: float = 5.0,
        max_live_jobs: int = 10_000,
        subscription_buffer: int = 1024,
    ) -> RedisStore:
        """Connect to the server at ``url`` (``redis://``, ``rediss://`` or ``unix://``)
        and return the store once it answers.

        Starts the store's own task (a trio system task, ended by :meth:`aclose`).
        Raises :class:`StoreError` if the URL is unusable or the server does not
        answer; nothing is left running then.
        """
        store = cls(
            url,
            prefix=prefix,
            retention=retention,
            connect_timeout=connect_timeout,
            command_timeout=command_timeout,
            max_live_jobs=max_live_jobs,
            subscription_buffer=subscription_buffer,
        )
        trio.lowlevel.spawn_system_task(store._host, name=f"redis store at {store._where}")
        try:
            await store._started.wait()
            await store.ping()
        except BaseException:
            await store.aclose()
            raise
        return store

    def __repr__(self) -> str:
        return (
            f"<RedisStore {self._where} prefix={self._prefix!r}{' closed' if self._closed else ''}>"
        )

    def statistics(self) -> RedisStoreStatistics:
        """The live reader as it is now (see :meth:`read_live`)."""
        jobs = self._live.values()
        return RedisStoreStatistics(
            live_jobs=len(jobs),
            live_streams=sum(not job.ended for job in jobs),
            live_waiters=sum(job.waiters for job in jobs),
        )

    # -- plumbing -----------------------------------------------------------

    def _new_client(self, *, command_timeout: float | None) -> _Client:
        """A client of the server on a connection of its own, which it opens again
        after a failure; one for blocking reads has no command timeout (its caller
        bounds the wait)."""
        try:
            pool = coredis.ConnectionPool.from_url(
                self._url,
                decode_responses=False,
                connect_timeout=self._connect_timeout,
                stream_timeout=command_timeout,
                max_connections=1,
            )
        except (ValueError, TypeError, RedisError) as exc:
            raise StoreError(f"unusable Redis URL ({type(exc).__name__})") from None
        unix = issubclass(pool.connection_class, coredis.UnixDomainSocketConnection)
        pool.connection_class = _UnixConnection if unix else _TCPConnection
        return coredis.Redis(
            connection_pool=pool,
            decode_responses=False,
            # A timed-out script may have run: repeating it is the caller's choice.
            retry_policy=NoRetryPolicy(),
        )

    def _key(self, kind: str, name: str) -> str:
        return f"{self._prefix}{kind}:{name}"

    def _failure(self, exc: BaseException) -> StoreError:
        return StoreError(f"Redis at {self._where}: {_describe(exc)}")

    async def _host(self) -> None:
        """The store's own task: it holds the client's connections open, runs every
        command (see :meth:`_call`) and the live reader until :meth:`aclose`."""
        try:
            async with self._client, trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._read_live_streams)
                self._started.set()
                await self._closing.wait()
                if self._commands_in_flight:
                    self._commands_done = trio.Event()
                    with trio.move_on_after(self._deadline):
                        await self._commands_done.wait()
                nursery.cancel_scope.cancel()
        except BaseException as exc:  # A system task must not raise.
            _report("the Redis store's task failed", self._where, exc)
        finally:
            self._nursery = None
            self._started.set()
            self._stopped.set()

    def _running_nursery(self) -> trio.Nursery:
        if self._closed:
            raise StoreError("store is closed")
        if self._nursery is None:
            raise StoreError(f"Redis store at {self._where} has stopped")
        return self._nursery

    async def _call(self, command: Callable[[], Awaitable[T]]) -> T:
        """Run ``command`` in the store's task and return its result.

        Cancelling the caller does not cancel the command: it completes and its
        result is dropped. (Cancelling a command of the shared connection could
        cost coredis that connection's place in its pool.) A command is bounded by
        the client's timeouts. Raises :class:`StoreError` for a failure of the
        backend or a closed store.
        """
        nursery = self._running_nursery()
        result: list[outcome.Outcome[T]] = []
        done = trio.Event()
        self._commands_in_flight += 1
        nursery.start_soon(self._run, command, result, done)
        await done.wait()
        if not result:
            raise StoreError("store is closed")
        try:
            return result[0].unwrap()
        except _BACKEND_ERRORS as exc:
            raise self._failure(exc) from exc

    async def _run(
        self,
        command: Callable[[], Awaitable[T]],
        result: list[outcome.Outcome[T]],
        done: trio.Event,
    ) -> None:
        try:
            result.append(outcome.Value(await command()))
        except Exception as exc:
            result.append(outcome.Error(exc))
        finally:
            self._commands_in_flight -= 1
            if self._commands_in_flight == 0 and self._commands_done is not None:
                self._commands_done.set()
            done.set()

    async def _script(self, name: str, *args: str | int | bytes) -> Any:
        script = self._scripts[name]
        return await self._call(lambda: script(args=(self._prefix, *args)))

    async def _checkpoint(self) -> None:
        """The checkpoint of a call with nothing to send; raises once closed."""
        await trio.lowlevel.checkpoint()
        self._running_nursery()

    # -- jobs ---------------------------------------------------------------

    async def create_job(self, job: Job) -> None:
        """See :meth:`JobStore.create_job`."""
        if await self._create(job, "", Limits(0, 0, 0), "", 0) == "exists":
            raise StoreError(f"job {job.id!r} already exists")

    async def admit_job(self, job: Job, limits: Limits, node_id: str, lease: float) -> Admission:
        """See :meth:`ClusterStore.admit_job`."""
        decision = await self._create(job, "admit", limits, node_id, _milliseconds(lease))
        if decision == "exists":
            raise StoreError(f"job {job.id!r} already exists")
        return Admission(decision)

    async def _create(self, job: Job, mode: str, limits: Limits, node_id: str, lease: int) -> str:
        fields = _job_fields(job)
        expire_at = "" if job.completed_at is None else self._expire_at(job.completed_at)
        reply = await self._script(
            "create",
            mode,
            limits.max_concurrent_jobs,
            limits.max_jobs_per_user,
            limits.max_foreground_streams,
            node_id,
            lease,
            expire_at,
            *fields,
        )
        return _text(reply)

    async def get_job(self, job_id: str, owner: Owner | None = None) -> Job | None:
        """See :meth:`JobStore.get_job`."""
        row = await self._script("get", job_id, "" if owner is None else _owner_tag(owner))
        return None if row is None else _job_from_row(row)[0]

    async def list_jobs(self, owner: Owner, status: JobStatus | None = None) -> list[Job]:
        """See :meth:`JobStore.list_jobs`."""
        rows = await self._script("list", _owner_tag(owner), _status_arg(status), "1")
        return [_job_from_row(row)[0] for row in rows]

    async def list_job_summaries(
        self, owner: Owner, status: JobStatus | None = None
    ) -> list[JobSummary]:
        """See :meth:`JobStore.list_job_summaries`."""
        rows = await self._script("list", _owner_tag(owner), _status_arg(status), "0")
        return [JobSummary(*_job_from_row(row)) for row in rows]

    async def append_many(self, batches: Mapping[str, Sequence[Delta]]) -> None:
        """See :meth:`JobStore.append_many`. One script, however many jobs."""
        check_batches(batches)
        args: list[str | int] = []
        for job_id, batch in batches.items():
            # Repeats go here; what the job already has is left out by the script.
            deltas = new_deltas_in_order(batch, 0)
            if deltas:
                args += (job_id, len(deltas))
                for d in deltas:
                    args += (d.seq, d.content, d.reasoning, len(d.content), len(d.reasoning))
        if not args:
            await self._checkpoint()
            return
        await self._script("append", *args)

    async def append_deltas(self, job_id: str, deltas: Sequence[Delta]) -> None:
        """See :meth:`JobStore.append_deltas`."""
        await self.append_many({job_id: deltas})

    async def update_job(self, job: Job) -> bool:
        """See :meth:`JobStore.update_job`. Making the job terminal also does what
        :class:`ClusterStore` promises of it, in the same script."""
        values = _update_values(job)
        expire_at = "" if job.completed_at is None else self._expire_at(job.completed_at)
        present = [(name, value) for name, value in values.items() if value is not None]
        absent = [name for name, value in values.items() if value is None]
        updated = await self._script(
            "update",
            job.id,
            job.status.value,
            values["completed_at"] or "",
            expire_at,
            self._retention_ms * 1000,
            len(present),
            *(item for pair in present for item in pair),
            *absent,
        )
        return bool(updated)

    async def get_deltas(
        self, job_id: str, after_seq: int = 0, limit: int | None = None
    ) -> list[Delta]:
        """See :meth:`JobStore.get_deltas`."""
        check_limit(limit)
        key = self._key("deltas", job_id)
        # The end marker may be among the ``limit`` entries: then fewer deltas come back,
        # and there are no more.
        entries = await self._call(
            lambda: self._client.xrange(key, _after(after_seq), "+", count=limit)
        )
        return _deltas(job_id, [(e.identifier, e.field_values) for e in entries], None)[0]

    async def list_jobs_by_status(self, statuses: Collection[JobStatus]) -> list[Job]:
        """See :meth:`JobStore.list_jobs_by_status`."""
        values = sorted({s.value for s in statuses})
        if not values:
            await self._checkpoint()
            return []
        rows = await self._script("by_status", *values)
        jobs = [_job_from_row(row)[0] for row in rows]
        jobs.sort(key=lambda job: (job.started_at, job.id))
        return jobs

    async def delete_finished_before(self, cutoff: datetime) -> list[str]:
        """See :meth:`JobStore.delete_finished_before`. Jobs Redis has expired already
        are not among the ids; their index entries are dropped all the same."""
        ids = await self._script("delete_finished", _time(cutoff, "cutoff"))
        return [_text(job_id) for job_id in ids]

    async def count_active(self) -> int:
        """See :meth:`JobStore.count_active`."""
        return int(await self._script("count_active"))

    # -- the cluster's own ----------------------------------------------------

    async def renew_leases(self, node_id: str, job_ids: Collection[str], lease: float) -> set[str]:
        """See :meth:`ClusterStore.renew_leases`."""
        if not job_ids:
            await self._checkpoint()
            return set()
        lost = await self._script("renew", node_id, _milliseconds(lease), *job_ids)
        return {_text(job_id) for job_id in lost}

    async def expired_jobs(self) -> list[str]:
        """See :meth:`ClusterStore.expired_jobs`. A running job without a lease (one
        made by :meth:`create_job`) counts as expired."""
        found = await self._script("expired")
        found.sort(key=lambda pair: (int(pair[1]), pair[0]))
        return [_text(job_id) for job_id, _ in found]

    async def mark_watched(self, job_id: str, duration: float) -> None:
        """See :meth:`ClusterStore.mark_watched`. A duration under a millisecond
        marks nothing."""
        duration_ms = math.ceil(duration * 1000)
        if duration_ms <= 0:
            await self._checkpoint()
            return
        await self._script("watch", job_id, duration_ms)

    async def is_watched(self, job_id: str) -> bool:
        """See :meth:`ClusterStore.is_watched`."""
        key = self._key("watched", job_id)
        return bool(await self._call(lambda: self._client.exists([key])))

    async def read_live(
        self, job_id: str, after_seq: int, timeout: float, limit: int = 256
    ) -> tuple[list[Delta], bool]:
        """See :meth:`ClusterStore.read_live`.

        The first read of a job is one script (``XRANGE`` and the job's status). A
        read that has to wait hands the job to the store's live reader, which from
        then on reads the job's stream with those of every other job this process
        waits on, in one ``XREAD BLOCK``, and keeps its latest deltas: a read no
        further behind is served from memory, and waits there. A read that waited
        its whole ``timeout`` in vain looks at the stored job again (a job whose
        keys are gone has ended). A job leaves the reader once its end is read, or
        when no read has asked for it in three of their timeouts.

        While the reader follows ``max_live_jobs`` jobs, a read that has to wait for
        another one waits for room instead, within its timeout. If the reader's
        connection fails, every read waiting on it raises :class:`StoreError`.
        Raises ValueError for a limit below 1.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        after = max(after_seq, 0)
        deadline = trio.current_time() + timeout
        if job_id in self._live:
            await self._checkpoint()
        while True:
            # Again after each await: the job may have left the reader meanwhile.
            job = self._live.get(job_id)
            if job is None or not job.covers(after):
                found = await self._read_stored(job_id, after, limit)
                if found is not None:
                    return found
                if trio.current_time() >= deadline:
                    return [], False
                job = self._join_live(job_id, after)
                if job is None:
                    with trio.move_on_at(deadline):
                        await self._live_room.wait()
                    continue
            job.idle_at = max(job.idle_at, trio.current_time() + _LIVE_IDLE_TIMEOUTS * timeout)
            found = job.read(after, limit)
            if found is not None:
                return found
            if not await job.wait(deadline):
                # Nothing came: the job may have gone without an end (its keys lost).
                found = await self._read_stored(job_id, after, limit)
                return ([], False) if found is None else found

    async def _read_stored(
        self, job_id: str, after: int, limit: int
    ) -> tuple[list[Delta], bool] | None:
        """What :meth:`read_live` returns from the stored job right now, or None if
        it would have to wait."""
        entries, status = await self._script("live", job_id, after, limit + 1)
        deltas, ended = _deltas(job_id, entries, limit)
        if deltas or ended:
            return deltas, ended
        if status is None or JobStatus(_text(status)).is_terminal:
            return [], True
        return None

    def _join_live(self, job_id: str, after: int) -> _LiveJob | None:
        """The job as the live reader holds it, reading its stream from ``after``
        if it did not hold it yet; None if it holds ``max_live_jobs`` jobs that
        cannot leave."""
        job = self._live.get(job_id)
        if job is not None:
            return job
        if len(self._live) >= self._max_live_jobs:
            self._leave_live(trio.current_time(), for_room=True)
            if len(self._live) >= self._max_live_jobs:
                return None
        key = self._key("deltas", job_id).encode()
        job = self._live[job_id] = _LiveJob(job_id, key, b"%d-0" % after, after)
        self._live_joined.set()
        return job

    def _leave_live(self, now: float, *, for_room: bool = False) -> None:
        """Take out of the live reader the jobs nobody waits on that no read asked
        for lately, and (``for_room``) those that have ended."""
        gone = [
            job_id
            for job_id, job in self._live.items()
            if not job.waiters and (now >= job.idle_at or (for_room and job.ended))
        ]
        for job_id in gone:
            del self._live[job_id]
        if gone:
            self._wake_room()

    def _wake_room(self) -> None:
        self._live_room.set()
        self._live_room = trio.Event()

    async def _read_live_streams(self) -> None:
        """The live reader, a task of the store's for its whole life: read the streams
        of the jobs it holds in one ``XREAD BLOCK`` after another, each from the last
        entry it read, and hand what comes to each job's waiting reads.

        Runs on a connection of its own, opened when there is a job to read. If that
        fails in any way (a read that does not answer within its block and the
        command deadline included), every job leaves the reader and its waiting
        reads raise :class:`StoreError`; the connection is replaced when a job joins
        again. At the end, the waiting reads raise :class:`StoreError` too.
        """
        try:
            reading = await self._live_streams()
            while True:
                try:
                    async with self._new_client(command_timeout=None) as client:
                        while True:
                            streams = {key: job.position for key, job in reading.items()}
                            with trio.fail_after(_LIVE_BLOCK_MS / 1000 + self._deadline):
                                reply = await client.xread(
                                    streams, count=_LIVE_TAIL, block=_LIVE_BLOCK_MS
                                )
                            self._deliver_live(reading, reply)
                            reading = await self._live_streams()
                except BaseException as exc:
                    failed = _without_cancellation(exc)
                    if failed is None:
                        raise
                    # The connection may still owe the reply: it is never reused.
                    self._fail_live(self._failure(failed))
                    reading = await self._live_streams()
        finally:
            self._fail_live(StoreError("store is closed"))

    async def _live_streams(self) -> dict[bytes, _LiveJob]:
        """The jobs the live reader is to read next, by stream key, once there are
        some; meanwhile, the jobs that go idle leave."""
        while True:
            now = trio.current_time()
            self._leave_live(now)
            reading = {job.key: job for job in self._live.values() if not job.ended}
            if reading:
                return reading
            self._live_joined = trio.Event()
            # Ended jobs stay for their followers' last reads, until they go idle; one
            # still waited on is looked at again a block later.
            idle_at = min((job.idle_at for job in self._live.values()), default=math.inf)
            with trio.move_on_at(max(idle_at, now + _LIVE_BLOCK_MS / 1000)):
                await self._live_joined.wait()

    def _deliver_live(
        self, reading: Mapping[bytes, _LiveJob], reply: Mapping[bytes, Sequence[Any]] | None
    ) -> None:
        """Hand the entries of an XREAD's ``reply`` to the jobs they belong to."""
        if reply is None:
            return
        ended = False
        for key, entries in reply.items():
            job = reading[key]
            job.add([(e.identifier, e.field_values) for e in entries])
            ended |= job.ended
        if ended:
            self._wake_room()

    def _fail_live(self, error: StoreError) -> None:
        """Take every job out of the live reader, failing the reads that wait on it."""
        failed, self._live = self._live, {}
        for job in failed.values():
            job.fail(error)
        if failed:
            self._wake_room()

    async def publish(self, channel: str, message: bytes) -> None:
        """See :meth:`ClusterStore.publish`. The channel's name on the server is
        prefixed, like every key."""
        name = self._key("channel", channel)
        await self._call(lambda: self._client.publish(name, message))

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """See :meth:`ClusterStore.subscribe`.

        Entering subscribes on a connection of the subscription's own and returns
        once the server has confirmed it; raises :class:`StoreError` if it cannot.
        Iteration raises :class:`StoreError` when that connection is lost, when the
        subscriber has fallen ``subscription_buffer`` messages behind, or once the
        store is closed.
        """
        send, receive = trio.open_memory_channel[bytes](self._subscription_buffer)
        failure: list[StoreError] = []
        relay = trio.CancelScope()
        with receive:
            try:
                # In the store's task, so that leaving the block cannot turn the
                # caller's own exception into a group.
                error = await self._running_nursery().start(
                    self._relay, channel, send, failure, relay
                )
                if error is not None:
                    raise error
                yield _Messages(receive, failure)
            finally:
                relay.cancel()

    async def _relay(
        self,
        channel: str,
        send: trio.MemorySendChannel[bytes],
        failure: list[StoreError],
        scope: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[StoreError | None],
    ) -> None:
        """Pass what is published on ``channel`` to ``send`` until ``scope`` is
        cancelled. Reports a failure to subscribe through ``task_status``, a later
        one in ``failure``; closes ``send`` when it ends."""
        started = False
        client = self._new_client(command_timeout=self._command_timeout)
        try:
            with scope, send:
                async with (
                    client,
                    client.pubsub(
                        channels=[self._key("channel", channel)],
                        ignore_subscribe_messages=True,
                        retry_policy=NoRetryPolicy(),
                        subscription_timeout=self._command_timeout,
                    ) as pubsub,
                ):
                    task_status.started(None)
                    started = True
                    async for message in pubsub:
                        data = message["data"]
                        assert isinstance(data, bytes)
                        try:
                            send.send_nowait(data)
                        except trio.WouldBlock:
                            failure.append(
                                StoreError(
                                    f"subscriber of {channel!r} fell "
                                    f"{self._subscription_buffer} messages behind"
                                )
                            )
                            return
        except BaseException as exc:
            failed = _without_cancellation(exc)
            if not started:
                if failed is None:
                    raise
                task_status.started(self._failure(failed))
            # Unsubscribing from a connection that is being closed may fail; the
            # subscriber has left by then.
            elif failed is not None and not scope.cancel_called:
                failure.append(self._failure(failed))

    # -- notifications ------------------------------------------------------

    async def add_notification(
        self, n: Notification, webhooks: Sequence[WebhookEvent] = ()
    ) -> bool:
        """See :meth:`NotificationStore.add_notification`."""
        fields = _notification_fields(n)
        events = [value for event in webhooks for value in _webhook_values(event)]
        added = await self._script("add_notification", len(fields) // 2, *fields, *events)
        if added == -1:
            raise StoreError(f"notification {n.id!r} already exists")
        return bool(added)

    async def list_notifications(
        self, owner: Owner, *, unread_only: bool = False, limit: int = 50
    ) -> list[Notification]:
        """See :meth:`NotificationStore.list_notifications`."""
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        rows = await self._script(
            "list_notifications", _owner_tag(owner), "1" if unread_only else "", limit
        )
        return [_notification_from_row(row) for row in rows]

    async def get_notification(self, owner: Owner, notification_id: str) -> Notification | None:
        """See :meth:`NotificationStore.get_notification`."""
        key = self._key("notification", notification_id)
        row = await self._call(lambda: self._client.hmget(key, NOTIFICATION_FIELDS))
        if row[0] is None:
            return None
        n = _notification_from_row(list(row))
        return n if Owner(n.user_id, n.workspace_id) == owner else None

    async def mark_read(self, owner: Owner, notification_id: str, at: datetime) -> bool:
        """See :meth:`NotificationStore.mark_read`."""
        at_text = _time(at, "at")
        return bool(await self._script("mark_read", notification_id, _owner_tag(owner), at_text))

    async def mark_all_read(self, owner: Owner, at: datetime) -> int:
        """See :meth:`NotificationStore.mark_all_read`."""
        at_text = _time(at, "at")
        return int(await self._script("mark_all_read", _owner_tag(owner), at_text))

    async def delete_notification(self, owner: Owner, notification_id: str) -> bool:
        """See :meth:`NotificationStore.delete_notification`."""
        return bool(await self._script("delete_notification", notification_id, _owner_tag(owner)))

    async def set_thread_muted(self, owner: Owner, thread_id: str, muted: bool) -> None:
        """See :meth:`NotificationStore.set_thread_muted`."""
        key = self._key("muted", _owner_tag(owner))
        change = self._client.sadd if muted else self._client.srem
        await self._call(lambda: change(key, [thread_id]))

    async def is_thread_muted(self, owner: Owner, thread_id: str) -> bool:
        """See :meth:`NotificationStore.is_thread_muted`."""
        key = self._key("muted", _owner_tag(owner))
        return await self._call(lambda: self._client.sismember(key, thread_id))

    # -- webhook outbox -----------------------------------------------------

    async def enqueue_webhooks(self, events: Sequence[WebhookEvent]) -> None:
        """See :meth:`WebhookOutbox.enqueue_webhooks`."""
        values = [value for event in events for value in _webhook_values(event)]
        if not values:
            await self._checkpoint()
            return
        await self._script("enqueue", *values)

    async def take_due_webhooks(
        self, now: datetime, limit: int, lease_until: datetime
    ) -> list[WebhookEvent]:
        """See :meth:`WebhookOutbox.take_due_webhooks`."""
        now_text = _time(now, "now")
        lease_text = _time(lease_until, "lease_until")
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        rows = await self._script("take_due", now_text, limit, lease_text)
        return [_webhook_from_row(row) for row in rows]

    async def reschedule_webhook(
        self, event_id: str, attempts: int, next_attempt_at: datetime
    ) -> bool:
        """See :meth:`WebhookOutbox.reschedule_webhook`."""
        at = _time(next_attempt_at, "next_attempt_at")
        return bool(await self._script("reschedule", event_id, attempts, at))

    async def remove_webhook(self, event_id: str) -> bool:
        """See :meth:`WebhookOutbox.remove_webhook`."""
        return bool(await self._script("remove_webhook", event_id))

    async def delete_webhooks_created_before(self, cutoff: datetime) -> list[str]:
        """See :meth:`WebhookOutbox.delete_webhooks_created_before`."""
        ids = await self._script("delete_webhooks", _time(cutoff, "cutoff"))
        return [_text(event_id) for event_id in ids]

    async def webhook_outbox_summary(self) -> OutboxSummary:
        """See :meth:`WebhookOutbox.webhook_outbox_summary`."""
        reply = await self._script("outbox_summary")
        if reply[0] == 0:
            return OutboxSummary(0, None, None)
        depth, next_attempt_at, oldest = reply
        return OutboxSummary(depth, _from_time(next_attempt_at), _from_time(oldest))

    async def disable_webhook_endpoint(self, url: str, at: datetime) -> None:
        """See :meth:`WebhookOutbox.disable_webhook_endpoint`."""
        key = f"{self._prefix}webhook-endpoints-disabled"
        at_text = _time(at, "at")
        await self._call(lambda: self._client.hsetnx(key, url, at_text))

    async def webhook_endpoint_disabled_at(self, url: str) -> datetime | None:
        """See :meth:`WebhookOutbox.webhook_endpoint_disabled_at`."""
        key = f"{self._prefix}webhook-endpoints-disabled"
        at = await self._call(lambda: self._client.hget(key, url))
        return None if at is None else _from_time(at)

    # -- lifecycle ----------------------------------------------------------

    async def ping(self) -> None:
        """See :meth:`JobStore.ping`."""
        await self._call(lambda: self._client.ping())

    async def aclose(self) -> None:
        """Let the commands in flight finish (for at most the command deadline), then
        close every connection. Idempotent; afterwards every other method raises
        :class:`StoreError`. Shielded from cancellation, and bounded in time."""
        self._closed = True
        self._closing.set()
        with trio.CancelScope(shield=True), trio.move_on_after(2 * self._deadline):
            await self._stopped.wait()

    def _expire_at(self, completed_at: datetime) -> int:
        """When a job finished at ``completed_at`` expires, in epoch milliseconds."""
        return int(_time(completed_at, "completed_at")) // 1000 + self._retention_ms


class _TCPConnection(coredis.TCPConnection):
    """coredis's TCP connection, closing its message buffers however it ends."""

    async def run(self, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        try:
            await super().run(task_status=task_status)
        finally:
            _close_buffers(self)


class _UnixConnection(coredis.UnixDomainSocketConnection):
    """coredis's Unix socket connection, closing its message buffers however it ends."""

    async def run(self, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        try:
            await super().run(task_status=task_status)
        finally:
            _close_buffers(self)


def _close_buffers(connection: coredis.BaseConnection) -> None:
    # coredis leaves them open when it cannot connect, and each warns when collected.
    for value in vars(connection).values():
        if isinstance(value, MemoryObjectSendStream | MemoryObjectReceiveStream):
            value.close()


@attrs.define(eq=False)
class _LiveJob:
    """One job as the store's live reader holds it: where it has read the job's
    stream up to, the last deltas it read, and the reads waiting for more."""

    job_id: str
    key: bytes
    position: bytes
    """The id of the last entry read, where the next read starts."""
    base: int
    """The tail holds every delta with a seq above this, up to the last one read."""
    idle_at: float = -math.inf
    """When it leaves the reader, unless a read waits on it or asks for it again."""
    tail: deque[Delta] = attrs.Factory(lambda: deque(maxlen=_LIVE_TAIL))
    ended: bool = False
    failure: StoreError | None = None
    waiters: int = 0
    changed: trio.Event = attrs.Factory(trio.Event)

    def covers(self, after: int) -> bool:
        """Whether the tail holds every delta after seq ``after`` that was read."""
        return after >= self.base and self.failure is None

    def read(self, after: int, limit: int) -> tuple[list[Delta], bool] | None:
        """What :meth:`RedisStore.read_live` returns from the tail, or None if it
        would have to wait (the tail does not cover ``after``, or holds nothing
        after it and the end was not read)."""
        if not self.covers(after):
            return None
        found: list[Delta] = []
        for delta in reversed(self.tail):
            if delta.seq <= after:
                break
            found.append(delta)
        found.reverse()
        if len(found) > limit:
            return found[:limit], False
        if found or self.ended:
            return found, self.ended
        return None

    def add(self, entries: Sequence[_Entry]) -> None:
        """Take the stream entries read after :attr:`position` and wake the reads
        waiting on the job."""
        deltas, ended = _deltas(self.job_id, entries, None)
        self.ended = self.ended or ended
        for delta in deltas:
            if len(self.tail) == self.tail.maxlen:
                self.base = self.tail[0].seq
            self.tail.append(delta)
        if entries:
            self.position = entries[-1][0]
        self._wake()

    def fail(self, error: StoreError) -> None:
        """Make the reads waiting on the job, and any that would wait on it, raise
        ``error``."""
        self.failure = error
        self._wake()

    async def wait(self, deadline: float) -> bool:
        """Wait until the reader changes the job; False if ``deadline`` came first.
        Raises the :class:`StoreError` the reader failed with."""
        changed = self.changed
        self.waiters += 1
        try:
            with trio.move_on_at(deadline):
                await changed.wait()
        finally:
            self.waiters -= 1
        if self.failure is not None:
            # One exception per waiting task: they would share its traceback.
            raise StoreError(*self.failure.args)
        return changed.is_set()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


@final
class _Messages:
    """A subscription's messages: iteration ends with the :class:`StoreError` that
    ended the subscription."""

    def __init__(
        self, receive: trio.MemoryReceiveChannel[bytes], failure: list[StoreError]
    ) -> None:
        self._receive = receive
        self._failure = failure

    def __aiter__(self) -> _Messages:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise self._failure[0] if self._failure else StoreError("subscription ended") from None


def _report(what: str, server: str, exc: BaseException) -> None:
    """Log what a task of the store that ends quietly failed with, but for its
    cancellation."""
    failed = _without_cancellation(exc)
    if failed is not None:
        log.warning(what, server=server, error=_describe(failed))


def _without_cancellation(exc: BaseException) -> BaseException | None:
    """``exc`` without the ``Cancelled`` in it; None if that was all."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1]
    return None if isinstance(exc, trio.Cancelled) else exc


def _describe_server(url: str) -> str:
    """Where ``url`` points, without its credentials."""
    try:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return f"unix:{parts.path}"
        return f"{parts.hostname}:{parts.port or 6379}{parts.path}"
    except ValueError:
        return "an unparsable URL"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in exc.exceptions)
    if isinstance(exc, trio.TooSlowError):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _milliseconds(seconds: float) -> int:
    """``seconds`` in whole milliseconds, at least one (Redis refuses a PX of 0)."""
    return max(1, math.ceil(seconds * 1000))


def _text(value: bytes) -> str:
    return value.decode()


def _time(value: datetime, what: str) -> str:
    """``value`` as microseconds since the epoch; raises ValueError if it is naive."""
    return str((as_utc(value, what) - _EPOCH) // _MICROSECOND)


def _from_time(value: bytes | str) -> datetime:
    return _EPOCH + timedelta(microseconds=int(value))


def _optional_time(value: bytes | None) -> datetime | None:
    return None if value is None else _from_time(value)


def _after(after_seq: int) -> str:
    """The exclusive start of the stream entries after ``after_seq``."""
    return f"({max(after_seq, 0)}-0"


def _owner_tag(owner: Owner) -> str:
    # The user id's length in bytes, as the scripts' `owner` counts it.
    return f"{len(owner.user_id.encode())}:{owner.user_id}:{owner.workspace_id}"


def _status_arg(status: JobStatus | None) -> str:
    return "" if status is None else status.value


def _deltas(job_id: str, entries: Sequence[_Entry], limit: int | None) -> tuple[list[Delta], bool]:
    """The deltas among stream ``entries`` (at most ``limit``), and whether the end
    marker follows them."""
    found: list[Delta] = []
    for entry_id, fields in entries:
        seq, part = _text(entry_id).split("-")
        if part == "1":
            return found, True
        if len(found) == limit:
            break
        values = _field_map(fields)
        found.append(Delta(job_id, int(seq), _text(values[b"c"]), _text(values[b"r"])))
    return found, False


def _field_map(fields: Any) -> Mapping[bytes, bytes]:
    if isinstance(fields, Mapping):
        return fields
    return dict(zip(fields[::2], fields[1::2], strict=True))


def _job_fields(job: Job) -> list[str]:
    """Every field of ``job`` that is set, as the flat list of names and values a
    ``job:{id}`` hash holds."""
    values: dict[str, str | None] = {
        "id": job.id,
        "user_id": job.user_id,
        "workspace_id": job.workspace_id,
        "thread_id": job.thread_id,
        "message_id": job.message_id,
        "started_at": _time(job.started_at, "started_at"),
        "content": job.content,
        "reasoning": job.reasoning,
        "chunks_received": str(job.chunks_received),
        "last_seq": str(job.last_seq),
        "foreground": "1" if job.foreground else "0",
        "content_length": str(len(job.content)),
        "reasoning_length": str(len(job.reasoning)),
        **_update_values(job),
    }
    return [item for name, value in values.items() if value is not None for item in (name, value)]


def _update_values(job: Job) -> dict[str, str | None]:
    """The fields :meth:`RedisStore.update_job` writes, None for those to delete."""
    return {
        "status": job.status.value,
        "model": job.model,
        "tool_calls": orjson.dumps(job.tool_calls).decode(),
        "images": orjson.dumps(job.images).decode(),
        "completed_at": None
        if job.completed_at is None
        else _time(job.completed_at, "completed_at"),
        "error": job.error,
        "finish_reason": job.finish_reason,
        "usage": None if job.usage is None else codec.dumps(job.usage).decode(),
        "generation_id": job.generation_id,
    }


def _job_from_row(row: Sequence[bytes | None]) -> tuple[Job, int, int]:
    """A job read by a script (its fields, then its content and reasoning if read
    too), with its output's lengths."""
    values = dict(zip(JOB_FIELDS, row, strict=False))

    def text(name: str) -> str:
        value = values[name]
        assert value is not None, name
        return _text(value)

    def optional(name: str) -> str | None:
        value = values[name]
        return None if value is None else _text(value)

    usage = values["usage"]
    has_output = len(row) > len(JOB_FIELDS)
    job = Job(
        id=text("id"),
        user_id=text("user_id"),
        workspace_id=text("workspace_id"),
        thread_id=text("thread_id"),
        message_id=text("message_id"),
        model=text("model"),
        status=JobStatus(text("status")),
        started_at=_from_time(text("started_at")),
        content=_text(row[-2] or b"") if has_output else "",
        reasoning=_text(row[-1] or b"") if has_output else "",
        chunks_received=int(text("chunks_received")),
        last_seq=int(text("last_seq")),
        completed_at=_optional_time(values["completed_at"]),
        error=optional("error"),
        finish_reason=optional("finish_reason"),
        usage=None if usage is None else codec.loads(usage, Usage),
        generation_id=optional("generation_id"),
        tool_calls=orjson.loads(text("tool_calls")),
        images=orjson.loads(text("images")),
        foreground=text("foreground") == "1",
    )
    return job, int(text("content_length")), int(text("reasoning_length"))


def _notification_fields(n: Notification) -> list[str]:
    values = {
        "id": n.id,
        "user_id": n.user_id,
        "workspace_id": n.workspace_id,
        "thread_id": n.thread_id,
        "job_id": n.job_id,
        "type": n.type.value,
        "title": n.title,
        "body": n.body,
        "created_at": _time(n.created_at, "created_at"),
        "actions": codec.dumps(n.actions, unstructure_as=_Actions).decode(),
        "read_at": None if n.read_at is None else _time(n.read_at, "read_at"),
    }
    return [item for name, value in values.items() if value is not None for item in (name, value)]


def _notification_from_row(row: Sequence[bytes | None]) -> Notification:
    (
        notification_id,
        user_id,
        workspace_id,
        thread_id,
        job_id,
        type_,
        title,
        body,
        created_at,
        actions,
        read_at,
    ) = (None if value is None else _text(value) for value in row)
    assert notification_id and user_id and workspace_id and thread_id and job_id
    assert type_ and title is not None and body is not None and created_at and actions
    return Notification(
        id=notification_id,
        user_id=user_id,
        workspace_id=workspace_id,
        thread_id=thread_id,
        job_id=job_id,
        type=NotificationType(type_),
        title=title,
        body=body,
        created_at=_from_time(created_at),
        actions=codec.loads(actions, _Actions),
        read_at=None if read_at is None else _from_time(read_at),
    )


def _webhook_values(event: WebhookEvent) -> tuple[str, ...]:
    """The six values the scripts' ``enqueue`` takes for ``event``."""
    return (
        event.id,
        event.type,
        _time(event.created_at, "created_at"),
        event.body,
        _time(event.next_attempt_at, "next_attempt_at"),
        str(event.attempts),
    )


def _webhook_from_row(row: Sequence[bytes]) -> WebhookEvent:
    event_id, type_, created_at, body, next_attempt_at, attempts = (_text(v) for v in row)
    return WebhookEvent(
        id=event_id,
        type=type_,
        created_at=_from_time(created_at),
        body=body,
        next_attempt_at=_from_time(next_attempt_at),
        attempts=int(attempts),
    )
