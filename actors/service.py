"""The service: :func:`open_service` starts the supervision tree, :class:`Service` is its facade.

::

    service (supervisor, ONE_FOR_ONE)
    ├── store      StoreKeeper: opens the store first, answers health pings
    ├── webhooks   WebhookSender: delivers the webhook outbox (only with webhook_url)
    ├── notifier   Notifier
    ├── persister  Persister: every running job's new deltas, one write per tick
    ├── registry   JobRegistry: the one authority on job lifecycle
    ├── leases     LeaseKeeper: this node's leases, other nodes' dead jobs (shared store only)
    ├── streams    supervisor of per-job StreamActors (dynamic, TEMPORARY)
    └── sweeper    Sweeper: timeouts and retention, on trio's clock

A token goes from the upstream to the job's stream actor, into the job's log,
and from there to its followers; the persister stores it beside that path.
The facade asks the actors for lifecycle changes and reads finished jobs and
lists straight from the store; the HTTP adapter and the CLI use nothing else.

On a store several processes share (Redis), each runs this tree as one node
(``node_id``): any node serves any job, and the store keeps the caps exact
across them (see :mod:`actors.jobs.registry`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import structlog
import trio

from actors.api import ChatRequest, JobView
from actors.clock import TrioWallClock
from actors.config import ServiceConfig
from actors.dependencies import (
    NOTIFIER,
    REGISTRY,
    SERVICE,
    STORE,
    ServiceDependencies,
    new_node_id,
)
from actors.errors import (
    MissingApiKey,
    ServiceError,
    ServiceRestarting,
    StoreUnavailable,
    UserKeyNotAllowed,
)
from actors.jobs.cluster import LeaseKeeper
from actors.jobs.following import JobFollower, NotificationFollower
from actors.jobs.passthrough import Passthrough
from actors.jobs.persister import Persister
from actors.jobs.registry import JobRegistry
from actors.messages import (
    AbortJob,
    BeginDrain,
    CreateJob,
    DeleteNotification,
    ForegroundStarted,
    InterruptAll,
    JobPolled,
    ListNotifications,
    MarkAllRead,
    MarkRead,
    MuteThread,
    Ping,
    Sweep,
    SweepResult,
)
from actors.model import Job, JobStatus, Notification, Owner
from actors.notifications.notifier import Notifier
from actors.notifications.webhooks import WebhookSender
from actors.store_keeper import StoreKeeper
from actors.stores import Store, StoreError, StoreFactory
from actors.stores.protocol import ClusterStore
from actors.sweeper import Sweeper
from actors.upstream import OpenAICompatibleUpstream, SimulatedUpstream, Upstream
from runtime import (
    ActorCrashed,
    ActorRef,
    ActorSnapshot,
    ActorStopped,
    ActorSystem,
    AskTimeout,
    ChildSpec,
    MailboxFull,
    Strategy,
    SupervisorSpec,
    open_system,
)

__all__ = ["Service", "build_upstream", "check_api_key", "open_service"]

log = structlog.get_logger("troupe.service")

# How long a facade call waits for an actor before giving up.
_ASK_TIMEOUT = 30.0


@contextlib.contextmanager
def _store_answers() -> Iterator[None]:
    """Turn a store failure into :class:`StoreUnavailable`, which callers expect."""
    try:
        yield
    except StoreError as error:
        raise StoreUnavailable("the store does not answer; try again later") from error


def build_upstream(config: ServiceConfig) -> Upstream:
    """The upstream client the configuration asks for, sending OpenRouter's
    attribution headers (``HTTP-Referer``, ``X-Title``) where they are set."""
    if config.upstream == "openai":
        attribution = {"HTTP-Referer": config.upstream_referer, "X-Title": config.upstream_title}
        return OpenAICompatibleUpstream(
            config.upstream_base_url,
            config.upstream_api_key,
            idle_timeout=config.upstream_idle_timeout,
            connect_timeout=config.upstream_connect_timeout,
            # An event longer than a whole answer may be could never be kept.
            max_event_chars=config.max_answer_chars,
            read_interval=config.upstream_read_interval,
            extra_headers={name: value for name, value in attribution.items() if value},
        )
    return SimulatedUpstream(config.simulated_tokens_per_second)


def check_api_key(config: ServiceConfig, user_key: str | None) -> None:
    """Check that a request can reach the upstream with the key it brings (or none).

    A user's key is used when the configuration allows user keys or the server has
    no key of its own. Raises :class:`UserKeyNotAllowed` for a user's key the
    configuration refuses, and :class:`MissingApiKey` when the upstream is real,
    the server has no key and the request brought none: never a silent switch to
    the simulated model.
    """
    server_key = config.upstream_api_key is not None
    if user_key is not None and server_key and not config.allow_user_api_keys:
        raise UserKeyNotAllowed("this server does not accept per-request API keys")
    if config.upstream == "openai" and not server_key and user_key is None:
        raise MissingApiKey("the server has no upstream key; send your own as a Bearer token")


def service_spec(deps: ServiceDependencies, *, shared: bool) -> SupervisorSpec:
    """The service supervisor and its static children, in start order; ``shared``:
    the store is one several nodes share."""
    webhooks = (
        []
        if deps.config.webhook_url is None
        else [ChildSpec("webhooks", functools.partial(WebhookSender, deps))]
    )
    leases = [ChildSpec("leases", functools.partial(LeaseKeeper, deps))] if shared else []
    return SupervisorSpec(
        strategy=Strategy.ONE_FOR_ONE,
        max_restarts=10,
        within=60.0,
        children=[
            ChildSpec("store", functools.partial(StoreKeeper, deps)),
            *webhooks,
            ChildSpec("notifier", functools.partial(Notifier, deps)),
            ChildSpec("persister", functools.partial(Persister, deps)),
            ChildSpec("registry", functools.partial(JobRegistry, deps)),
            *leases,
            ChildSpec("streams", SupervisorSpec(max_restarts=1_000_000, within=1.0)),
            ChildSpec("sweeper", functools.partial(Sweeper, deps)),
        ],
    )


class Service:
    """The in-process API of the background-streaming service.

    Every method is scoped by an :class:`Owner`: a job or notification of
    another owner behaves exactly like a missing one. Methods wait for the
    actors (at most 30 s) and may be cancelled; a cancelled call may still
    take effect. Any of them but :meth:`follow_notifications` may raise
    :class:`StoreUnavailable` while the store does not answer.

    ``node_id`` names this process among those sharing a store.
    """

    def __init__(self, system: ActorSystem, deps: ServiceDependencies, store: Store) -> None:
        self.system = system
        self.config = deps.config
        self.metrics = deps.metrics
        self.node_id = deps.node_id
        self._deps = deps
        self._store = store
        self._cluster = store if isinstance(store, ClusterStore) else None
        registry, notifier = system.lookup(REGISTRY), system.lookup(NOTIFIER)
        assert registry is not None and notifier is not None
        self._registry = registry
        self._notifier = notifier

    async def _ask(self, actor: ActorRef, message: object) -> Any:
        """``actor``'s reply to ``message``; raises the reply if it is a ServiceError, and
        :class:`ServiceRestarting` if the actor crashed or stopped before it answered."""
        try:
            reply = await actor.ask(message, timeout=_ASK_TIMEOUT)
        except (ActorCrashed, ActorStopped) as error:
            raise ServiceRestarting(f"{actor.path} is restarting; try again") from error
        if isinstance(reply, ServiceError):
            raise reply
        return reply

    # -- jobs --------------------------------------------------------------------

    async def start_job(self, owner: Owner, request: ChatRequest) -> Job:
        """Start streaming ``request`` in the background and return the new job.

        Raises :class:`ServerBusy` at the global cap (or while shutting down),
        :class:`TooManyJobs` at the per-user cap, and what :func:`check_api_key`
        raises.
        """
        check_api_key(self.config, request.api_key)
        job: Job = await self._ask(self._registry, CreateJob(owner, request))
        return job

    async def start_foreground(self, owner: Owner, request: ChatRequest) -> ForegroundStarted:
        """Start streaming ``request`` straight through to the caller, recorded as a job.

        Returns the job (``foreground``) and its passthrough: its head says how the
        upstream answered, its body is the upstream's bytes unchanged, with no retry.
        The caller reads the body to its end or closes the reader; until then the
        stream waits for it. A call that fails or is cancelled closes the reader, so a
        job it may have started runs on unread, recorded, to its end. Closing the
        reader does not stop the job: abort it for that, as a client's Stop does. The
        job's deltas are stored like any job's; its tool calls and images when it ends.

        Raises :class:`ForegroundBusy` at the foreground cap, :class:`ServerBusy`
        while shutting down, and what :func:`check_api_key` raises.
        """
        check_api_key(self.config, request.api_key)
        passthrough = Passthrough()
        try:
            started: ForegroundStarted = await self._ask(
                self._registry, CreateJob(owner, request, passthrough)
            )
        except BaseException:
            # The job may have started all the same: with its reader closed, its
            # stream never waits for a reader who is not coming.
            passthrough.close_reader()
            raise
        return started

    async def get_job(
        self,
        owner: Owner,
        job_id: str,
        offset: int = 0,
        reasoning_offset: int = 0,
        *,
        watching: bool = False,
    ) -> JobView | None:
        """The job with its content from ``offset`` on and its reasoning from
        ``reasoning_offset`` on, or None if it is not the owner's.

        Read straight from the store, never queued behind the actors: a running
        job shows what is stored of it, which is all any follower has seen.
        With ``watching`` (a status poll of someone looking at the job), a
        running job counts as watched for ``watch_window`` seconds: if it ends
        meanwhile, it notifies nobody. The registry is told without waiting;
        when its mailbox is full, this poll is not counted (the next one is).
        On a shared store the poll counts on every node, whichever runs the job.
        """
        with _store_answers():
            job = await self._store.get_job(job_id, owner)
        if job is None:
            return None
        if watching and not job.status.is_terminal:
            with contextlib.suppress(MailboxFull, ActorStopped):
                self._registry.tell_nowait(JobPolled(job_id))
            if self._cluster is not None and self.config.watch_window > 0:
                # The poll was answered; a lost mark only risks a notification.
                with contextlib.suppress(StoreError):
                    await self._cluster.mark_watched(job_id, self.config.watch_window)
        return JobView.of(job, offset, reasoning_offset)

    async def abort_job(self, owner: Owner, job_id: str) -> bool:
        """Abort a running job; closes the upstream response. Idempotent.

        Returns True if this call aborted it; False if it is missing, not the
        owner's, or already finished. On a shared store it aborts a job running on
        any node.
        """
        aborted: bool = await self._ask(self._registry, AbortJob(owner, job_id))
        return aborted

    async def list_jobs(self, owner: Owner, status: JobStatus | None = None) -> list[JobView]:
        """The owner's jobs, newest first, without their content."""
        # Summaries: the lengths, never the content itself, of every job.
        with _store_answers():
            summaries = await self._store.list_job_summaries(owner, status)
        return [
            attrs.evolve(
                JobView.of(s.job),
                offset=s.content_length,
                content_length=s.content_length,
                reasoning_offset=s.reasoning_length,
                reasoning_length=s.reasoning_length,
            )
            for s in summaries
        ]

    def follow(self, owner: Owner, job_id: str, after_seq: int | None = None) -> JobFollower:
        """An async iterator of the job's events: snapshot, deltas after ``after_seq``, status.

        Iterating raises :class:`JobNotFound` if the job is not the owner's. On a shared
        store it follows a job running on any node.
        """
        return JobFollower(self._registry, self._store, owner, job_id, after_seq, self._cluster)

    async def sweep(self) -> SweepResult:
        """Run a sweep now (timeouts and retention), as the sweeper does periodically."""
        result: SweepResult = await self._ask(self._registry, Sweep())
        return result

    # -- notifications -------------------------------------------------------------

    async def list_notifications(
        self, owner: Owner, unread_only: bool = False, limit: int = 50
    ) -> list[Notification]:
        found: list[Notification] = await self._ask(
            self._notifier, ListNotifications(owner, unread_only, limit)
        )
        return found

    async def mark_read(self, owner: Owner, notification_id: str) -> bool:
        done: bool = await self._ask(self._notifier, MarkRead(owner, notification_id))
        return done

    async def mark_all_read(self, owner: Owner) -> int:
        count: int = await self._ask(self._notifier, MarkAllRead(owner))
        return count

    async def delete_notification(self, owner: Owner, notification_id: str) -> bool:
        done: bool = await self._ask(self._notifier, DeleteNotification(owner, notification_id))
        return done

    def follow_notifications(self, owner: Owner) -> NotificationFollower:
        """An async iterator of the owner's new notifications, live, until closed."""
        return NotificationFollower(self._notifier, owner)

    async def mute_thread(self, owner: Owner, thread_id: str, muted: bool = True) -> None:
        """Mute (or unmute) a thread: jobs in a muted thread notify nobody."""
        await self._ask(self._notifier, MuteThread(owner, thread_id, muted))

    # -- operations ------------------------------------------------------------------

    def snapshot(self) -> ActorSnapshot:
        """The runtime's live tree, for operators."""
        return self.system.snapshot()

    async def ready(self) -> bool:
        """True when the tree runs and the store answers. Waits at most a second
        longer than a store command may take."""
        keeper = self.system.lookup(STORE)
        if keeper is None:
            return False
        try:
            answered: bool = await keeper.ask(
                Ping(), timeout=self.config.redis_command_timeout + 1.0
            )
        except (ActorStopped, ActorCrashed, AskTimeout):
            return False
        return answered

    async def drain(self, timeout: float) -> int:
        """Refuse new jobs, let running ones finish for up to ``timeout`` seconds,
        then stop the rest as errors (their partial content kept). Returns how
        many were interrupted."""
        running: int = await self._registry.ask(BeginDrain(), timeout=_ASK_TIMEOUT)
        with trio.move_on_after(timeout):
            while running:
                await trio.sleep(0.05)
                running = await self._registry.ask(BeginDrain(), timeout=_ASK_TIMEOUT)
        interrupted: int = await self._registry.ask(
            InterruptAll("interrupted: server shut down"), timeout=None
        )
        if interrupted:
            log.warning("interrupted running jobs at shutdown", count=interrupted)
        return interrupted


class _GivenStore:
    """A store the caller of :func:`open_service` made, and closes."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def get(self) -> Store:
        await trio.lowlevel.checkpoint()
        return self._store

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


@asynccontextmanager
async def open_service(
    config: ServiceConfig, *, upstream: Upstream | None = None, store: Store | None = None
) -> AsyncIterator[Service]:
    """Run the service for the duration of the ``async with`` block.

    ``upstream`` replaces the configured upstream client, ``store`` the configured
    store (tests, embedding; the caller closes it). On start, jobs a previous
    process left running become errors ("interrupted: server restarted") with
    their partial content and a notification; on a store several nodes share,
    they are left to their nodes, and a dead node's jobs end "interrupted: node
    lost". On exit, running jobs drain for ``config.drain_timeout`` seconds,
    then the rest are recorded as interrupted, and the tree stops. Raises
    :class:`~actors.stores.StoreError` if the store cannot be opened.
    """
    stores = StoreFactory(config) if store is None else _GivenStore(store)
    own_upstream = upstream is None
    client = build_upstream(config) if upstream is None else upstream
    node_id = config.node_id or new_node_id()
    try:
        opened = await stores.get()
        async with open_system() as system:
            deps = ServiceDependencies(config, stores, client, TrioWallClock(), node_id=node_id)
            shared = isinstance(opened, ClusterStore)
            log.info("service starting", node_id=node_id, store=config.store, shared=shared)
            await system.spawn_supervisor(service_spec(deps, shared=shared), name=SERVICE)
            service = Service(system, deps, opened)
            deps.metrics.watch_tree(system.snapshot)
            try:
                yield service
            finally:
                with trio.CancelScope(shield=True):
                    try:
                        await service.drain(config.drain_timeout)
                    except ActorStopped:
                        log.warning("the service stopped before it could drain its jobs")
    finally:
        with trio.CancelScope(shield=True):
            if own_upstream:
                await client.aclose()
            await stores.aclose()
