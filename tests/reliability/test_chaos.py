"""Chaos in-process: actors crash at random moments while jobs stream, and nothing is lost.

A seeded :class:`~tests.reliability.chaos.Injector` crashes the registry, the notifier,
the persister, the store keeper, the sweeper, stream actors and the ``service``
supervisor itself (and, over HTTP, the HTTP adapter) while clients start jobs on the
simulated model, follow some of them (leaving and resuming from the last seq they saw),
and abort some. Then, for every job in the store:

- it is terminal, and none waited for the sweeper's timeout to get there;
- a ``complete`` job holds the upstream's text exactly; an ``error`` or ``aborted`` one
  a prefix of it; a job whose upstream fails halfway is never ``complete``; a job whose
  abort was answered True is ``aborted``;
- a ``complete`` or ``error`` job has exactly one notification, of its kind (at most one
  if a follower may have watched it end), and an ``aborted`` one none;
- every follower saw seqs 1, 2, ... once each, with no gap, ending with the status the
  store has, and its deltas joined are the stored content;

and the service is whole: ready again within a second of every fault, and a job started
after the chaos completes exactly.

``test_chaos_in_process`` runs 200 jobs under trio's mock clock, so a seed's run is
fast and repeats exactly; ``test_chaos_over_http`` runs a smaller set through a real
server on SQLite, on the real clock, where readiness is ``GET /readyz``. Each test prints its seed;
``TROUPE_CHAOS_SEED=<seed>`` runs that seed only.
"""

from __future__ import annotations

import functools
import os
import random
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import attrs
import httpx
import orjson
import pytest
import trio
from trio.testing import MockClock

from actors import (
    ChatRequest,
    DeltaEvent,
    JobStatus,
    JobView,
    Notification,
    Owner,
    Service,
    ServiceConfig,
    StatusEvent,
    open_service,
)
from actors.errors import ServiceError
from actors.http.adapter import GetAddresses, HttpAdapter
from actors.http.auth import TokenAuthority, build_auth
from actors.model import NotificationType
from actors.upstream import SimulatedUpstream
from actors.upstream.simulated import SIMULATE_ERROR_PARAM
from runtime import ActorCrashed, ActorStopped, AskTimeout
from tests.reliability.bodies import OneChunk
from tests.reliability.chaos import HTTP, Injector, Kind
from tests.reliability.figures import SOAK, Figure, Figures, sized
from tests.service.kit import simulated_answer

SEED_VARIABLE: Final = "TROUPE_CHAOS_SEED"

# What a facade call may raise while the actor it asks is crashed or restarting: the
# client tries again, as an HTTP client does after a 5xx.
FACADE_FAILURES: Final = (ActorCrashed, ActorStopped, AskTimeout, ServiceError)

UPSTREAM_ERROR: Final = "chaos: the upstream failed halfway"
RECOVERY_BOUND: Final = 1.0
OWNERS: Final = 6


def chaos_seeds(quick: list[int], soak: list[int]) -> list[int]:
    """The seeds to run: ``TROUPE_CHAOS_SEED`` alone when set, else the size's set."""
    chosen = os.environ.get(SEED_VARIABLE, "").strip()
    if chosen:
        return [int(chosen)]
    return soak if SOAK else quick


# -- the plan: what the clients will do, drawn from the seed ---------------------------


@attrs.frozen
class PlannedJob:
    """One client's job: who starts it when, and what the client does with it."""

    index: int
    owner: Owner
    start_at: float
    fails: bool
    """The upstream fails halfway (the simulated model's ``simulate_error``)."""
    abort_after: float | None
    """Seconds after its creation at which the client aborts it, if it does."""
    follow: bool

    @property
    def prompt(self) -> str:
        # The simulated model quotes it: every job has an answer of its own.
        return f"chaos job number {self.index}"

    @property
    def message_id(self) -> str:
        return f"message-{self.index}"

    @property
    def params(self) -> dict[str, Any]:
        return {SIMULATE_ERROR_PARAM: UPSTREAM_ERROR} if self.fails else {}

    def request(self) -> ChatRequest:
        return ChatRequest(
            model="chaos",
            messages=[{"role": "user", "content": self.prompt}],
            thread_id=f"thread-{self.index}",
            message_id=self.message_id,
            params=self.params,
        )


def plan_jobs(seed: int, count: int, spread: float, job_seconds: float) -> list[PlannedJob]:
    """``count`` jobs started over ``spread`` seconds; a tenth fail upstream, a tenth are
    aborted at a random point, about one in seven is followed."""
    rng = random.Random(f"plan-{seed}")
    owners = [Owner(f"chaos-user-{k}", "chaos-workspace") for k in range(OWNERS)]
    return [
        PlannedJob(
            index=index,
            owner=rng.choice(owners),
            start_at=rng.uniform(0.0, spread),
            fails=rng.random() < 0.1,
            abort_after=rng.uniform(0.0, job_seconds) if rng.random() < 0.1 else None,
            follow=rng.random() < 0.15,
        )
        for index in range(count)
    ]


# -- what the clients saw ---------------------------------------------------------------


@attrs.define
class Followed:
    """What one follower saw of its job, across all its connections."""

    deltas: list[tuple[int, str]] = attrs.Factory(list)
    status: JobStatus | None = None
    final_seq: int | None = None
    connections: int = 0
    stuck: bool = False

    @property
    def last_seq(self) -> int:
        return self.deltas[-1][0] if self.deltas else 0


@attrs.define
class Ledger:
    """What the clients were told: the jobs they created, the aborts answered True,
    what their followers saw, and how many calls failed under the chaos."""

    created: dict[str, PlannedJob] = attrs.Factory(dict)
    aborted: set[str] = attrs.Factory(set)
    followed: dict[str, Followed] = attrs.Factory(dict)
    failed_calls: Counter[str] = attrs.Factory(Counter)
    """Calls that failed and were tried again, by what they got."""


@attrs.define
class Losses:
    """Everything that should have survived and did not, by kind, with the details."""

    jobs: list[str] = attrs.Factory(list)
    deltas: list[str] = attrs.Factory(list)
    notifications: list[str] = attrs.Factory(list)

    @property
    def count(self) -> int:
        return len(self.jobs) + len(self.deltas) + len(self.notifications)

    def report(self) -> str:
        lines = [*self.jobs, *self.deltas, *self.notifications]
        return "\n".join(lines[:40]) + (f"\n... {len(lines) - 40} more" if len(lines) > 40 else "")


# -- the checks ----------------------------------------------------------------------


async def final_state(
    service: Service, plans: list[PlannedJob]
) -> tuple[dict[str, tuple[PlannedJob, JobView]], list[Notification], list[str]]:
    """Every job in the store of the plan's owners with its whole content, by id; their
    notifications; and the ids of jobs no plan explains."""
    by_message = {plan.message_id: plan for plan in plans}
    jobs: dict[str, tuple[PlannedJob, JobView]] = {}
    strangers: list[str] = []
    notes: list[Notification] = []
    for owner in sorted({plan.owner for plan in plans}, key=lambda o: o.user_id):
        for summary in await service.list_jobs(owner):
            view = await service.get_job(owner, summary.id)
            assert view is not None
            plan = by_message.get(view.message_id)
            if plan is None or plan.owner != owner:
                strangers.append(view.id)
            else:
                jobs[view.id] = (plan, view)
        notes += await service.list_notifications(owner, False, 100_000)
    return jobs, notes, strangers


async def wait_all_terminal(service: Service, plans: list[PlannedJob], limit: float) -> None:
    """Wait (at most ``limit`` seconds) until every job of the plan's owners is terminal."""
    owners = {plan.owner for plan in plans}
    with trio.move_on_after(limit):
        while True:
            try:
                views = [view for owner in owners for view in await service.list_jobs(owner)]
            except FACADE_FAILURES:
                views = []
            if views and all(view.status.is_terminal for view in views):
                return
            await trio.sleep(0.25)


def check(
    jobs: dict[str, tuple[PlannedJob, JobView]],
    notes: list[Notification],
    strangers: list[str],
    ledger: Ledger,
    expected: dict[int, str],
) -> Losses:
    """Every invariant of the module docs over the final state; what broke, by kind."""
    losses = Losses()
    losses.jobs += [
        f"job {job_id}: in the store, but no client asked for it" for job_id in strangers
    ]
    for job_id, plan in ledger.created.items():
        if job_id not in jobs:
            losses.jobs.append(f"job {job_id} (plan {plan.index}): created, then gone")
    by_job: dict[str, list[Notification]] = {}
    for note in notes:
        by_job.setdefault(note.job_id, []).append(note)
    for job_id in by_job.keys() - jobs.keys():
        losses.notifications.append(f"notification for job {job_id}, which no client has")
    for job_id, (plan, view) in sorted(jobs.items(), key=lambda item: item[1][0].index):
        text = expected[plan.index]
        name = f"job {job_id} (plan {plan.index}, {view.status.value}, error {view.error!r})"
        check_job(name, plan, view, text, job_id in ledger.aborted, losses)
        check_notifications(
            name, view, by_job.get(job_id, []), watched=job_id in ledger.followed, losses=losses
        )
        followed = ledger.followed.get(job_id)
        if followed is not None:
            check_follower(name, view, followed, losses)
    return losses


def check_job(
    name: str, plan: PlannedJob, view: JobView, text: str, aborted: bool, losses: Losses
) -> None:
    if not view.status.is_terminal:
        losses.jobs.append(f"{name}: never ended")
        return
    if view.error == "Job timed out":
        losses.jobs.append(f"{name}: stuck until the sweeper timed it out")
    if view.status is JobStatus.COMPLETE:
        if plan.fails:
            losses.jobs.append(f"{name}: complete, though its upstream failed")
        elif view.content != text:
            losses.deltas.append(f"{name}: content {view.content!r} is not the upstream's")
    elif not text.startswith(view.content):
        losses.deltas.append(f"{name}: content {view.content!r} is no prefix of the upstream's")
    if view.chunks_received != view.last_seq:
        losses.deltas.append(
            f"{name}: {view.chunks_received} deltas stored, last seq {view.last_seq}"
        )
    if aborted and view.status is not JobStatus.ABORTED:
        losses.jobs.append(f"{name}: its abort was answered True")


_KIND_OF: Final = {
    JobStatus.COMPLETE: NotificationType.COMPLETE,
    JobStatus.ERROR: NotificationType.ERROR,
}


def check_notifications(
    name: str, view: JobView, notes: list[Notification], *, watched: bool, losses: Losses
) -> None:
    kind = _KIND_OF.get(view.status)
    if kind is None:
        if notes:
            losses.notifications.append(f"{name}: {len(notes)} notifications, none due")
        return
    if len(notes) > 1 or (not notes and not watched):
        losses.notifications.append(f"{name}: {len(notes)} notifications, one due")
    if any(note.type is not kind for note in notes):
        losses.notifications.append(f"{name}: notified {[n.type.value for n in notes]}")


def check_follower(name: str, view: JobView, followed: Followed, losses: Losses) -> None:
    seqs = [seq for seq, _ in followed.deltas]
    if followed.stuck:
        losses.deltas.append(f"{name}: its follower never got the status (saw {seqs[-5:]})")
        return
    if seqs != list(range(1, len(seqs) + 1)):
        duplicated = [seq for seq, count in Counter(seqs).items() if count > 1]
        losses.deltas.append(f"{name}: follower saw seqs out of order, duplicated {duplicated}")
    if "".join(content for _, content in followed.deltas) != view.content:
        losses.deltas.append(f"{name}: follower's deltas are not the stored content")
    if (followed.status, followed.final_seq) != (view.status, view.last_seq):
        losses.deltas.append(
            f"{name}: follower's status {followed.status} at {followed.final_seq}, "
            f"stored {view.status} at {view.last_seq}"
        )


def record_figure(
    figures: Figures,
    test: str,
    injector: Injector,
    jobs: int,
    losses: Losses,
    clock: str,
) -> float | None:
    """Record the run's row; return the longest recovery."""
    struck: Counter[str] = Counter()
    for fault in injector.faults:
        struck[fault.kind.value] += 1
    kinds = [f"{kind} {count}" for kind, count in sorted(struck.items())]
    recoveries = [fault.recovery for fault in injector.faults if fault.recovery is not None]
    longest = max(recoveries, default=None)
    figures.record(
        Figure(
            test=test,
            injected="crashes at random moments: " + ", ".join(kinds),
            times=injector.crashes,
            jobs=jobs,
            lost=losses.count,
            what_lost="deltas, jobs or notifications",
            recovery_s=longest,
            clock=clock,
        )
    )
    return longest


def assert_recovered(injector: Injector, bound: float) -> None:
    faults = "\n".join(str(fault) for fault in injector.faults)
    assert all(fault.came_back for fault in injector.faults), faults
    slow = [f for f in injector.faults if f.recovery is None or f.recovery > bound]
    assert not slow, f"not ready within {bound} s:\n{faults}"


def judge(
    figures: Figures,
    test: str,
    clock: str,
    kinds: tuple[Kind, ...],
    injector: Injector,
    ledger: Ledger,
    expected: dict[int, str],
    found: tuple[dict[str, tuple[PlannedJob, JobView]], list[Notification], list[str]],
    canary: tuple[JobStatus, bool],
) -> Counter[JobStatus]:
    """Print the run, record its figure and assert every invariant: each of ``kinds``
    struck, nothing lost, ready again within the bound after every fault, and a job
    started after the chaos ``canary`` completing exactly. Returns the jobs' statuses."""
    jobs, notes, strangers = found
    print("\n".join(str(fault) for fault in injector.faults))
    statuses = Counter(view.status for _, view in jobs.values())
    print(f"jobs: {dict(statuses)}, failed calls: {dict(ledger.failed_calls)}")
    losses = check(jobs, notes, strangers, ledger, expected)
    record_figure(figures, test, injector, len(jobs), losses, clock)
    assert {f.kind for f in injector.faults} == set(kinds)
    assert losses.count == 0, f"{test}:\n{losses.report()}"
    assert_recovered(injector, RECOVERY_BOUND)
    assert canary == (JobStatus.COMPLETE, True)
    return statuses


# -- in process, on the mock clock ---------------------------------------------------

JOBS: Final = sized(200, 1000)
# 5 tokens a second: a job streams for about 10 virtual seconds, so faults land
# mid-stream; jobs start over SPREAD seconds, so about 30 stream at once.
TOKENS_PER_SECOND: Final = 5.0
JOB_SECONDS: Final = 10.0
SPREAD: Final = 300.0 if SOAK else 60.0
# Far below the job timeout (300 s): a job not ended by then is stuck.
SETTLE: Final = 120.0
FOLLOW_LIMIT: Final = 200.0
IN_PROCESS_KINDS: Final = (
    Kind.REGISTRY,
    Kind.NOTIFIER,
    Kind.PERSISTER,
    Kind.STORE_KEEPER,
    Kind.SWEEPER,
    Kind.STREAM,
    Kind.SERVICE,
)


def _job_rng(seed: int, plan: PlannedJob) -> random.Random:
    return random.Random(f"client-{seed}-{plan.index}")


async def create_in_process(service: Service, plan: PlannedJob, ledger: Ledger) -> str:
    """Start the planned job, trying again while the registry is down."""
    while True:
        try:
            job = await service.start_job(plan.owner, plan.request())
        except FACADE_FAILURES as failure:
            ledger.failed_calls[type(failure).__name__] += 1
            await trio.sleep(0.1)
            continue
        ledger.created[job.id] = plan
        return job.id


async def follow_in_process(
    service: Service, owner: Owner, job_id: str, followed: Followed, rng: random.Random
) -> None:
    """Follow the job to its status, leaving after a random number of events and
    resuming from the last seq seen, as a client whose connection breaks does."""
    with trio.move_on_after(FOLLOW_LIMIT) as limit:
        while followed.status is None:
            followed.connections += 1
            events_left = rng.randint(1, 30)
            follower = service.follow(owner, job_id, followed.last_seq)
            try:
                async for event in follower:
                    if isinstance(event, DeltaEvent):
                        followed.deltas.append((event.seq, event.content))
                    elif isinstance(event, StatusEvent):
                        followed.status, followed.final_seq = event.status, event.last_seq
                        return
                    events_left -= 1
                    if events_left == 0:
                        break
            except FACADE_FAILURES:
                pass
            finally:
                await follower.aclose()
            await trio.sleep(rng.uniform(0.0, 0.5))
    followed.stuck = limit.cancelled_caught


async def client_in_process(service: Service, seed: int, plan: PlannedJob, ledger: Ledger) -> None:
    rng = _job_rng(seed, plan)
    await trio.sleep(plan.start_at)
    job_id = await create_in_process(service, plan, ledger)
    async with trio.open_nursery() as nursery:
        if plan.follow:
            followed = ledger.followed[job_id] = Followed()
            nursery.start_soon(follow_in_process, service, plan.owner, job_id, followed, rng)
        if plan.abort_after is not None:
            await trio.sleep(plan.abort_after)
            try:
                if await service.abort_job(plan.owner, job_id):
                    ledger.aborted.add(job_id)
            except FACADE_FAILURES as failure:
                ledger.failed_calls[type(failure).__name__] += 1


def seed_trio_scheduler(seed: int) -> None:
    """Make trio's scheduling order a function of ``seed``: trio shuffles each batch of
    runnable tasks with a random generator of its own, which only this reaches."""
    trio._core._run._r.seed(seed)


@pytest.mark.parametrize("seed", chaos_seeds(quick=[1, 2, 3, 4, 5], soak=list(range(1, 11))))
async def test_chaos_in_process(
    autojump_clock: MockClock, tmp_path: Path, figures: Figures, seed: int
) -> None:
    print(f"chaos seed {seed} (run it alone with {SEED_VARIABLE}={seed})")
    seed_trio_scheduler(seed)
    plans = plan_jobs(seed, JOBS, SPREAD, JOB_SECONDS)
    expected = {plan.index: await simulated_answer(plan.prompt) for plan in plans}
    config = ServiceConfig(
        store="memory",
        data_dir=tmp_path,
        max_concurrent_jobs=JOBS + 10,
        max_jobs_per_user=JOBS,
        sweep_interval=5.0,
        drain_timeout=0.0,
    )
    ledger = Ledger()
    async with open_service(config, upstream=SimulatedUpstream(TOKENS_PER_SECOND)) as service:
        injector = Injector(
            service.system,
            random.Random(f"faults-{seed}"),
            IN_PROCESS_KINDS,
            ready=service.ready,
            mean_gap=1.0,
            # A restart of the service ends every running job: a few a run.
            root_gap=20.0,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(injector.run)
            async with trio.open_nursery() as clients:
                for plan in plans:
                    clients.start_soon(client_in_process, service, seed, plan, ledger)
            injector.stop()
        await wait_all_terminal(service, plans, SETTLE)
        jobs, notes, strangers = await final_state(service, plans)
        canary = await canary_in_process(service, plans[0].owner)

    statuses = judge(
        figures,
        f"chaos in-process, seed {seed}",
        "virtual",
        IN_PROCESS_KINDS,
        injector,
        ledger,
        expected,
        (jobs, notes, strangers),
        canary,
    )
    # The chaos must have left every kind of ending to check.
    assert statuses[JobStatus.COMPLETE] and statuses[JobStatus.ERROR], statuses
    assert statuses[JobStatus.ABORTED], statuses
    assert any(f.status is JobStatus.COMPLETE for f in ledger.followed.values())


async def canary_in_process(service: Service, owner: Owner) -> tuple[JobStatus, bool]:
    """A job started after the chaos: its status, and whether its content is exact."""
    plan = PlannedJob(10**6, owner, 0.0, False, None, False)
    job = await service.start_job(owner, plan.request())
    with trio.fail_after(SETTLE):
        while True:
            view = await service.get_job(owner, job.id)
            assert view is not None
            if view.status.is_terminal:
                return view.status, view.content == await simulated_answer(plan.prompt)
            await trio.sleep(0.5)


# -- over HTTP, on the real clock -----------------------------------------------------

HTTP_JOBS: Final = sized(30, 150)
HTTP_TOKENS_PER_SECOND: Final = 20.0
HTTP_SPREAD: Final = 40.0 if SOAK else 7.0
HTTP_JOB_SECONDS: Final = 2.5
HTTP_FOLLOW_LIMIT: Final = 30.0
HTTP_SETTLE: Final = 20.0
# The root restarts at most once in 5 s: the HTTP adapter's and the service
# supervisor's faults keep that far apart, with room for a loaded machine.
HTTP_ROOT_GAP: Final = 6.0
HTTP_KINDS: Final = (*IN_PROCESS_KINDS, Kind.HTTP_ADAPTER)
JWT_SECRET: Final = "chaos-tests-jwt-secret-0123456789abcdef"


def free_port() -> int:
    """A port nothing listens on now: the adapter binds it again after each restart,
    as a server on a fixed port does."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@attrs.define
class HttpClients:
    """What every HTTP client of the test shares: the client, the tokens and the ledger."""

    client: httpx.AsyncClient
    tokens: TokenAuthority
    ledger: Ledger

    def request(
        self, method: str, path: str, owner: Owner | None, body: Any = None, **headers: str
    ) -> httpx.Request:
        """A request as ``owner`` (None: no token), with ``body`` as JSON if given."""
        content = b"" if body is None else orjson.dumps(body)
        if body is not None:
            headers["Content-Type"] = "application/json"
        if owner is not None:
            token = self.tokens.mint(owner.user_id, owner.workspace_id)
            headers["Authorization"] = f"Bearer {token}"
        request = self.client.build_request(method, path, headers=headers, content=content)
        request.stream = OneChunk(content)
        return request


async def retrying(clients: HttpClients, request: Callable[[], httpx.Request]) -> httpx.Response:
    """Send ``request()`` until the server answers below 500 (and not 429), as a client
    does while the server restarts its actors."""
    while True:
        try:
            response = await clients.client.send(request())
        except httpx.TransportError as error:
            clients.ledger.failed_calls[type(error).__name__] += 1
        else:
            if response.status_code < 500 and response.status_code != 429:
                return response
            clients.ledger.failed_calls[str(response.status_code)] += 1
        await trio.sleep(0.05)


async def create_over_http(clients: HttpClients, plan: PlannedJob) -> str:
    body = {
        "model": "chaos",
        "messages": [{"role": "user", "content": plan.prompt}],
        "thread_id": f"thread-{plan.index}",
        "message_id": plan.message_id,
        "params": plan.params,
    }
    response = await retrying(
        clients, lambda: clients.request("POST", "/v1/jobs", plan.owner, body)
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    clients.ledger.created[job_id] = plan
    return job_id


def parse_sse(lines: list[str]) -> Iterator[tuple[str, str]]:
    """The complete events among ``lines`` as (name, data); comments are skipped."""
    name, data = "message", []
    for line in lines:
        if line == "":
            if data:
                yield name, "\n".join(data)
            name, data = "message", []
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)


async def follow_over_http(
    clients: HttpClients, plan: PlannedJob, job_id: str, followed: Followed, rng: random.Random
) -> None:
    """Follow the job's event stream to its status, leaving after a random number of
    events and resuming with ``Last-Event-ID``, through every crash of the server."""
    with trio.move_on_after(HTTP_FOLLOW_LIMIT) as limit:
        while followed.status is None:
            followed.connections += 1
            events_left = rng.randint(1, 30)
            request = clients.request(
                "GET",
                f"/v1/jobs/{job_id}/events",
                plan.owner,
                **{"Last-Event-ID": str(followed.last_seq)},
            )
            try:
                response = await clients.client.send(request, stream=True)
                try:
                    if response.status_code == 200:
                        events_left = await read_events(response, followed, events_left)
                finally:
                    await response.aclose()
            except httpx.TransportError:
                pass
            await trio.sleep(rng.uniform(0.0, 0.2))
    followed.stuck = limit.cancelled_caught


async def read_events(response: httpx.Response, followed: Followed, events_left: int) -> int:
    """Read deltas into ``followed`` until the status, or until ``events_left`` events
    were read (then leave, by cancelling: breaking out of httpx's iterator would leave
    its generators to the garbage collector)."""
    pending: list[str] = []
    with trio.CancelScope() as scope:
        async for line in response.aiter_lines():
            if scope.cancel_called:
                continue  # lines already buffered before the cancellation lands
            pending.append(line)
            if line != "":
                continue
            for name, data in parse_sse(pending):
                event = orjson.loads(data)
                if name == "delta":
                    followed.deltas.append((event["seq"], event["content"]))
                    events_left -= 1
                elif name == "status":
                    followed.status = JobStatus(event["status"])
                    followed.final_seq = event["last_seq"]
                    scope.cancel()
            pending.clear()
            if events_left <= 0:
                scope.cancel()
    return events_left


async def client_over_http(clients: HttpClients, seed: int, plan: PlannedJob) -> None:
    rng = _job_rng(seed, plan)
    await trio.sleep(plan.start_at)
    job_id = await create_over_http(clients, plan)
    async with trio.open_nursery() as nursery:
        if plan.follow:
            followed = clients.ledger.followed[job_id] = Followed()
            nursery.start_soon(follow_over_http, clients, plan, job_id, followed, rng)
        if plan.abort_after is not None:
            await trio.sleep(plan.abort_after)
            response = await retrying(
                clients, lambda: clients.request("POST", f"/v1/jobs/{job_id}/abort", plan.owner)
            )
            assert response.status_code == 200, response.text
            if response.json()["aborted"]:
                clients.ledger.aborted.add(job_id)


async def http_ready(clients: HttpClients) -> bool:
    try:
        response = await clients.client.send(clients.request("GET", "/readyz", None))
    except httpx.TransportError:
        return False
    return response.status_code == 200


@pytest.mark.parametrize("seed", chaos_seeds(quick=[1], soak=[1, 2, 3]))
async def test_chaos_over_http(tmp_path: Path, figures: Figures, seed: int) -> None:
    print(f"chaos seed {seed} (run it alone with {SEED_VARIABLE}={seed})")
    plans = plan_jobs(seed, HTTP_JOBS, HTTP_SPREAD, HTTP_JOB_SECONDS)
    expected = {plan.index: await simulated_answer(plan.prompt) for plan in plans}
    config = ServiceConfig(
        store="sqlite",
        data_dir=tmp_path,
        upstream="simulated",
        simulated_tokens_per_second=HTTP_TOKENS_PER_SECOND,
        max_concurrent_jobs=HTTP_JOBS + 10,
        max_jobs_per_user=HTTP_JOBS,
        sweep_interval=0.5,
        drain_timeout=0.0,
        watch_window=0.0,
        host="127.0.0.1",
        port=free_port(),
        jwt_secret=JWT_SECRET,
    )
    auth, tokens = build_auth(config)
    assert tokens is not None
    ledger = Ledger()
    async with open_service(config) as service:
        adapter = await service.system.spawn(
            functools.partial(HttpAdapter, service, auth, config.host, config.port, keepalive=1.0),
            name=HTTP,
        )
        [base_url] = await adapter.ask(GetAddresses())
        async with (
            httpx.AsyncClient(base_url=base_url, timeout=10.0) as client,
            httpx.AsyncClient(base_url=base_url, timeout=2.0) as probe,
        ):
            clients = HttpClients(client, tokens, ledger)
            probes = HttpClients(probe, tokens, Ledger())
            injector = Injector(
                service.system,
                random.Random(f"faults-{seed}"),
                HTTP_KINDS,
                ready=functools.partial(http_ready, probes),
                mean_gap=0.5,
                root_gap=HTTP_ROOT_GAP,
                roots_first=True,
            )
            async with trio.open_nursery() as nursery:
                async with trio.open_nursery() as workers:
                    for plan in plans:
                        workers.start_soon(client_over_http, clients, seed, plan)
                    # Once jobs stream, so that the first fault finds some.
                    await trio.sleep(1.0)
                    nursery.start_soon(injector.run)
                # The second of the root's children may wait for its gap.
                with trio.move_on_after(2 * HTTP_ROOT_GAP):
                    await injector.wait_all_struck()
                injector.stop()
            await wait_all_terminal(service, plans, HTTP_SETTLE)
            jobs, notes, strangers = await final_state(service, plans)
            canary = await canary_in_process(service, plans[0].owner)

    judge(
        figures,
        f"chaos over HTTP, seed {seed}",
        "real",
        HTTP_KINDS,
        injector,
        ledger,
        expected,
        (jobs, notes, strangers),
        canary,
    )
