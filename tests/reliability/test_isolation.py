"""Tenant isolation as a property, over HTTP, on a real server.

Four owners, who share a user (``ana`` in two workspaces) or a workspace (``ana`` and
``ben`` in ``w1``), make random operations through every route that names a job, a
notification or a thread: create (``POST /v1/jobs``, the seed's stream route in the
background and in the foreground), poll (``GET /v1/jobs/{id}?offset=``, the seed's
status), follow (``/events``, with and without ``Last-Event-ID``), abort (v1 and seed),
list, notifications (list, read, read-all, delete, live events) and mute. Every owner
uses the same few thread names. Each id an operation names is the owner's own, another
owner's, or one that does not exist. The properties:

- no response ever holds another owner's job id, content, notification id or
  notification (a scan of every body, once every id is known);
- a foreign id answers exactly what a missing one does: status, content type, body
  (with the id swapped);
- nothing one owner does changes another's data: another's abort, read, read-all,
  delete or mute (of the same thread name) has no effect, so every job not aborted by
  its owner completes, and every job that ought to notify its owner does, once;
- lists hold exactly the owner's jobs.

And a foreign id is answered in the same timing class as a missing one: medians of
interleaved requests, against a job whose content (2 MB) makes a hit show.
"""

from __future__ import annotations

import random
import re
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import orjson
import pytest
import trio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from actors.config import StoreName
from tests.fake_upstream import FakeUpstream, Script
from tests.http.conftest import (
    ApiServer,
    chat_body,
    fake_settings,
    make_config,
    read_sse,
    run_api_server,
    wait_for_status,
)
from tests.reliability.figures import Figure, Figures, sized

OWNERS = (("ana", "w1"), ("ana", "w2"), ("ben", "w1"), ("cy", "w3"))
THREADS = ("t-1", "t-2", "t-3")  # every owner uses the same thread names
# Content markers: the simulated model quotes the question, so each job's content holds
# its marker, which names the owner: "mk<owner>x<job>q".
MARKER = re.compile(r"mk(\d+)x\d+q")
HEX_ID = re.compile(r"[0-9a-f]{32}")
EXAMPLES = sized(12, 150)
STEPS = sized(30, 60)


def marker(owner: int, job: int) -> str:
    return f"mk{owner}x{job}q"


@attrs.define
class JobModel:
    id: str
    owner: int
    thread: str
    message: str
    created_at_step: int
    aborted: bool = False  # by its owner: the only one who can
    watched: bool = False  # followed or read in the foreground: it may notify nobody


@attrs.define
class Seen:
    """One response, kept for the scan: who asked, and the ids the request named."""

    owner: int
    named: frozenset[str]
    text: str
    what: str


@attrs.define
class World:
    """The model of what each owner did, and every response the server gave."""

    server: ApiServer
    client: httpx.AsyncClient
    jobs: dict[str, JobModel] = attrs.field(factory=dict)
    notifications: dict[str, int] = attrs.field(factory=dict)  # id -> owner
    notified_jobs: dict[str, str] = attrs.field(factory=dict)  # notification id -> job id
    read_by_owner: set[str] = attrs.field(factory=set)
    deleted_by_owner: set[str] = attrs.field(factory=set)
    read_all: set[int] = attrs.field(factory=set)
    # (owner, thread) -> [(step, muted)], in order
    mutes: defaultdict[tuple[int, str], list[tuple[int, bool]]] = attrs.field(
        factory=lambda: defaultdict(list)
    )
    seen: list[Seen] = attrs.field(factory=list)
    operations: int = 0
    foreign_checks: int = 0
    step: int = 0
    next_missing: int = 0
    next_job: int = 0

    def headers(self, owner: int) -> dict[str, str]:
        user, workspace = OWNERS[owner]
        return self.server.auth(user, workspace)

    def owned(self, owner: int) -> list[JobModel]:
        return [job for job in self.jobs.values() if job.owner == owner]

    def missing_id(self) -> str:
        # The shape of a real id (32 hex digits), never issued: uuid4 has a 4 at 12.
        self.next_missing += 1
        return f"{self.next_missing:032x}"

    async def request(
        self,
        owner: int,
        method: str,
        url: str,
        named: Iterable[str] = (),
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send a request as ``owner`` (``headers`` added) and keep its response for the
        scan; ``named`` are the ids the request names, which its answer may repeat."""
        response = await self.client.request(
            method, url, headers={**self.headers(owner), **(headers or {})}, **kwargs
        )
        self.operations += 1
        self.seen.append(Seen(owner, frozenset(named), response.text, f"{method} {url}"))
        return response

    async def same_as_missing(
        self, owner: int, method: str, template: str, foreign: str, **kwargs: Any
    ) -> httpx.Response:
        """Send ``template`` with a foreign id, then with a missing one: the answers must
        be the same but for the id."""
        missing = self.missing_id()
        got = await self.request(owner, method, template.format(foreign), [foreign], **kwargs)
        expected = await self.request(owner, method, template.format(missing), [missing], **kwargs)
        self.foreign_checks += 1
        assert got.status_code == expected.status_code, (template, got.text, expected.text)
        assert got.headers.get("content-type") == expected.headers.get("content-type")
        assert got.content.replace(foreign.encode(), b"<id>") == expected.content.replace(
            missing.encode(), b"<id>"
        ), (template, got.text, expected.text)
        return got


def job_fields_match(world: World, owner: int, job: Any, *, seed: bool = False) -> None:
    """A job object returned to ``owner``: its own, with its own thread and message."""
    key_id, key_thread, key_message = (
        ("id", "threadId", "messageId") if seed else ("id", "thread_id", "message_id")
    )
    model = world.jobs.get(job[key_id])
    assert model is not None and model.owner == owner, (owner, job)
    assert (job[key_thread], job[key_message]) == (model.thread, model.message), job


# -- operations -------------------------------------------------------------------------


def pick_job(world: World, data: st.DataObject, owner: int) -> tuple[str, str]:
    """An id for a job operation: ``("own" | "foreign" | "missing", id)``."""
    jobs = [(job.id, job.owner) for job in world.jobs.values()]  # in the order created
    return pick(world, data, owner, jobs, "job")


def pick_notification(world: World, data: st.DataObject, owner: int) -> tuple[str, str]:
    """An id for a notification operation, as :func:`pick_job`."""
    return pick(world, data, owner, list(world.notifications.items()), "notification")


def pick(
    world: World, data: st.DataObject, owner: int, known: list[tuple[str, int]], what: str
) -> tuple[str, str]:
    """Draw whose id to name, then which: always the same draws, whatever exists (which
    depends on how the server's work raced the operations), so that hypothesis can
    replay an example. A missing one when there is none of the kind drawn."""
    kind = data.draw(st.sampled_from(WHOSE), label=f"whose {what}")
    index = data.draw(st.integers(min_value=0, max_value=10**6), label=f"which {what}")
    pool = [id_ for id_, holder in known if (holder == owner) == (kind == "own")]
    if kind == "missing" or not pool:
        return "missing", world.missing_id()
    return kind, pool[index % len(pool)]


async def create(world: World, data: st.DataObject, owner: int) -> None:
    thread = data.draw(st.sampled_from(THREADS), label="thread")
    route = data.draw(st.sampled_from(["v1", "seed", "foreground"]), label="route")
    index = world.next_job
    world.next_job += 1
    text = f"question {marker(owner, index)}"
    message = f"m-{index}"
    if route == "v1":
        body = chat_body(text, thread_id=thread, message_id=message)
        response = await world.request(owner, "POST", "/v1/jobs", json=body)
        if response.status_code == 429:  # the per-user cap or rate limit: nothing started
            return
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
    else:
        body = {
            "model": "test-model",
            "messages": [{"role": "user", "content": text}],
            "_threadId": thread,
            "_messageId": message,
            "_background": route == "seed",
        }
        response = await world.request(owner, "POST", "/api/openrouter/stream", json=body)
        if response.status_code == 429:
            return
        assert response.status_code == 200, response.text
        job_id = response.json()["jobId"] if route == "seed" else response.headers["x-job-id"]
    world.jobs[job_id] = JobModel(
        job_id, owner, thread, message, world.step, watched=route == "foreground"
    )
    if route == "v1":
        job_fields_match(world, owner, response.json())


async def poll(world: World, data: st.DataObject, owner: int) -> None:
    kind, job_id = pick_job(world, data, owner)
    offset = data.draw(st.sampled_from([0, 3, 40, 10**6]), label="offset")
    seed = data.draw(st.booleans(), label="seed route")
    template = "/api/jobs/{}/status" if seed else "/v1/jobs/{}?offset=" + str(offset)
    if kind == "own":
        response = await world.request(owner, "GET", template.format(job_id), [job_id])
        assert response.status_code == 200, response.text
        job_fields_match(world, owner, response.json(), seed=seed)
    elif kind == "foreign":
        await world.same_as_missing(owner, "GET", template, job_id)
    else:
        response = await world.request(owner, "GET", template.format(job_id), [job_id])
        assert response.status_code == 404, response.text


async def follow(world: World, data: st.DataObject, owner: int) -> None:
    kind, job_id = pick_job(world, data, owner)
    after = data.draw(st.sampled_from([None, 0, 2, 10**6]), label="Last-Event-ID")
    resume = {} if after is None else {"Last-Event-ID": str(after)}
    template = "/v1/jobs/{}/events"
    # Another's or a missing job's stream is refused before it starts: a plain request
    # reads all of it.
    if kind == "foreign":
        await world.same_as_missing(owner, "GET", template, job_id, headers=resume)
        return
    if kind == "missing":
        response = await world.request(owner, "GET", template.format(job_id), headers=resume)
        assert response.status_code == 404, response.text
        return
    world.jobs[job_id].watched = True
    headers = {**world.headers(owner), **resume}
    async with world.client.stream("GET", template.format(job_id), headers=headers) as response:
        assert response.status_code == 200
        read = await read_sse(response, until=lambda event: event.event == "status")
    world.operations += 1
    text = "\n".join(event.data for event in read.events)
    world.seen.append(Seen(owner, frozenset([job_id]), text, f"GET {template}"))
    snapshot = read.named("snapshot")
    assert len(snapshot) == 1, read.events
    job_fields_match(world, owner, snapshot[0].json())
    assert len(read.named("status")) == 1, read.events


async def abort(world: World, data: st.DataObject, owner: int) -> None:
    kind, job_id = pick_job(world, data, owner)
    seed = data.draw(st.booleans(), label="seed route")
    template = "/api/jobs/{}/abort" if seed else "/v1/jobs/{}/abort"
    if kind == "foreign":
        await world.same_as_missing(owner, "POST", template, job_id)
        return
    response = await world.request(owner, "POST", template.format(job_id), [job_id])
    if kind == "missing":
        assert response.status_code == (200 if seed else 404), response.text
        return
    assert response.status_code == 200, response.text
    answer = response.json()
    if answer["aborted"]:
        world.jobs[job_id].aborted = True
    if not seed:
        job_fields_match(world, owner, answer["job"])


async def list_jobs(world: World, data: st.DataObject, owner: int) -> None:
    status = data.draw(st.sampled_from([None, "complete", "streaming", "aborted"]), label="status")
    query = "" if status is None else f"?status={status}"
    response = await world.request(owner, "GET", f"/v1/jobs{query}")
    assert response.status_code == 200, response.text
    listed = response.json()["jobs"]
    for job in listed:
        job_fields_match(world, owner, job)
    if status is None:
        assert {job["id"] for job in listed} == {job.id for job in world.owned(owner)}


async def list_notifications(world: World, data: st.DataObject, owner: int) -> None:
    await fetch_notifications(world, owner, unread=data.draw(st.booleans(), label="unread"))


async def fetch_notifications(world: World, owner: int, *, unread: bool = False) -> list[Any]:
    """``owner``'s notifications (at most 500), each checked by :func:`learn_notification`."""
    query = "?limit=500" + ("&unread=1" if unread else "")
    response = await world.request(owner, "GET", f"/v1/notifications{query}")
    assert response.status_code == 200, response.text
    listed: list[Any] = response.json()["notifications"]
    for notification in listed:
        learn_notification(world, owner, notification)
    return listed


def learn_notification(world: World, owner: int, notification: Any) -> None:
    """A notification shown to ``owner``: it must be about one of ``owner``'s jobs."""
    nid, job_id = notification["id"], notification["job_id"]
    model = world.jobs.get(job_id)
    assert model is not None and model.owner == owner, (owner, notification)
    assert notification["thread_id"] == model.thread, notification
    assert [a["message_id"] for a in notification["actions"]] == [model.message], notification
    assert world.notifications.setdefault(nid, owner) == owner, notification
    assert world.notified_jobs.setdefault(nid, job_id) == job_id, notification


async def _on_notification(
    world: World, data: st.DataObject, owner: int, method: str, template: str, ok: int
) -> str | None:
    """``method`` on a notification picked for ``owner``: a foreign one must answer as a
    missing one; an own one that is not deleted ``ok``, else 404. Returns the id when
    it was ``ok``."""
    kind, nid = pick_notification(world, data, owner)
    if kind == "foreign":
        await world.same_as_missing(owner, method, template, nid)
        return None
    response = await world.request(owner, method, template.format(nid), [nid])
    if kind == "own" and nid not in world.deleted_by_owner:
        assert response.status_code == ok, response.text
        return nid
    assert response.status_code == 404, response.text
    return None


async def read_notification(world: World, data: st.DataObject, owner: int) -> None:
    nid = await _on_notification(world, data, owner, "POST", "/v1/notifications/{}/read", 200)
    if nid is not None:
        world.read_by_owner.add(nid)


async def delete_notification(world: World, data: st.DataObject, owner: int) -> None:
    nid = await _on_notification(world, data, owner, "DELETE", "/v1/notifications/{}", 204)
    if nid is not None:
        world.deleted_by_owner.add(nid)


async def read_all(world: World, data: st.DataObject, owner: int) -> None:
    response = await world.request(owner, "POST", "/v1/notifications/read-all")
    assert response.status_code == 200, response.text
    world.read_all.add(owner)


async def mute(world: World, data: st.DataObject, owner: int) -> None:
    thread = data.draw(st.sampled_from(THREADS), label="thread")
    muted = data.draw(st.booleans(), label="muted")
    response = await world.request(
        owner, "PUT", f"/v1/threads/{thread}/mute", json={"muted": muted}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"thread_id": thread, "muted": muted}
    world.mutes[owner, thread].append((world.step, muted))


OPERATIONS = {
    "create": create,
    "poll": poll,
    "follow": follow,
    "abort": abort,
    "list": list_jobs,
    "notifications": list_notifications,
    "read": read_notification,
    "delete": delete_notification,
    "read-all": read_all,
    "mute": mute,
}
# Creating more often than the rest, so that there is something to name. Hypothesis
# leans to the first choices, so the operations come first, and foreign ids first.
WEIGHTED = [*sorted(OPERATIONS), "create", "create"]
WHOSE = ["foreign", "foreign", "own", "missing"]


# -- the checks at the end of an example -------------------------------------------------


def expected_notifications(world: World, job: JobModel, status: str) -> int | None:
    """How many notifications ``job`` must have made: 0 or 1, or None when it depends on
    how its end raced a mute or a follower."""
    if status == "aborted":
        return 0
    if job.watched:
        return None
    history = world.mutes.get((job.owner, job.thread), [])
    before = [muted for step, muted in history if step < job.created_at_step]
    after = [muted for step, muted in history if step >= job.created_at_step]
    state = before[-1] if before else False
    if any(muted != state for muted in after):
        return None
    return 0 if state else 1


async def live_notifications(world: World) -> None:
    """Every owner follows its notifications live while every owner finishes a job: each
    stream shows its owner's own, and nobody else's."""
    reads: dict[int, list[Any]] = {}
    ready = [trio.Event() for _ in OWNERS]
    started: dict[int, str] = {}
    all_started = trio.Event()

    async def listen(owner: int) -> None:
        async with world.client.stream(
            "GET", "/v1/notifications/events", headers=world.headers(owner)
        ) as response:
            assert response.status_code == 200
            ready[owner].set()
            await all_started.wait()
            read = await read_sse(
                response, until=lambda e: orjson.loads(e.data).get("job_id") == started[owner]
            )
        reads[owner] = read.events

    async with trio.open_nursery() as nursery:
        for owner in range(len(OWNERS)):
            nursery.start_soon(listen, owner)
        for event in ready:
            await event.wait()
        for owner in range(len(OWNERS)):
            thread = f"live-{owner}"  # never muted
            body = chat_body(f"live {marker(owner, 10**6)}", thread_id=thread, message_id="live")
            response = await world.request(owner, "POST", "/v1/jobs", json=body)
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]
            started[owner] = job_id
            world.jobs[job_id] = JobModel(job_id, owner, thread, "live", world.step)
        all_started.set()
    for owner, events in reads.items():
        world.operations += 1
        text = "\n".join(event.data for event in events)
        world.seen.append(Seen(owner, frozenset(), text, "GET /v1/notifications/events"))
        for event in events:
            assert event.event == "notification", event
            learn_notification(world, owner, event.json())


async def check_the_end(world: World) -> int:
    """Wait for every job to end, then check statuses, notifications and the scan.

    Returns the number of leaks (asserted to be 0 before it returns)."""
    statuses: dict[str, str] = {}
    for job in list(world.jobs.values()):
        final = await wait_for_status(world.client, job.id, world.headers(job.owner))
        statuses[job.id] = final["status"]
        # Nobody but its owner stops a job: whatever others aborted completed.
        assert final["status"] == ("aborted" if job.aborted else "complete"), (job, final)

    # On one process a job's notification is stored before its end: all are there now.
    listed = {owner: await fetch_notifications(world, owner) for owner in range(len(OWNERS))}
    for owner, found in listed.items():
        per_job = Counter(n["job_id"] for n in found)
        for job in world.owned(owner):
            expected = expected_notifications(world, job, statuses[job.id])
            deleted = any(world.notified_jobs.get(nid) == job.id for nid in world.deleted_by_owner)
            assert per_job[job.id] <= 1, (job, found)
            if expected is not None and not deleted:
                assert per_job[job.id] == expected, (job, expected, found)
        ids = {n["id"] for n in found}
        for nid, holder in world.notifications.items():
            if holder != owner:
                continue
            # Another's delete removes nothing; the owner's own does.
            assert (nid in ids) == (nid not in world.deleted_by_owner), nid
        if owner not in world.read_all:
            for notification in found:
                is_read = notification["read_at"] is not None
                # Another's read or read-all marks nothing.
                assert is_read == (notification["id"] in world.read_by_owner), notification

    # The scan: every response against every id and marker of the other owners.
    owner_of = {job.id: job.owner for job in world.jobs.values()}
    owner_of.update(world.notifications)
    leaks = []
    for seen in world.seen:
        for found_owner in MARKER.findall(seen.text):
            if int(found_owner) != seen.owner:
                leaks.append((seen.what, f"content of owner {found_owner}"))
        for token in HEX_ID.findall(seen.text):
            other = owner_of.get(token)
            if other is not None and other != seen.owner and token not in seen.named:
                leaks.append((seen.what, f"id {token} of owner {other}"))
    assert not leaks, leaks
    return len(leaks)


@asynccontextmanager
async def isolation_server(store: StoreName) -> AsyncIterator[ApiServer]:
    with tempfile.TemporaryDirectory(prefix="isolation-") as directory:
        config = make_config(
            Path(directory),
            store=store,
            # Jobs last about 50 ms, so operations meet them running and ended.
            simulated_tokens_per_second=1000.0,
            max_jobs_per_user=50,
            max_concurrent_jobs=500,
            log_level="warning",
        )
        async with run_api_server(config) as server:
            yield server


@pytest.fixture
def totals(figures: Figures) -> Iterator[Counter[str]]:
    """The property's totals over all its examples (hypothesis hands every example the
    same fixture value), recorded as its figure once they are all done."""
    found: Counter[str] = Counter()
    yield found
    if found["examples"] == 0:
        return  # the test failed before an example ended: nothing to record
    figures.record(
        Figure(
            test="tenant isolation (test_isolation.py)",
            injected=(
                f"random operations of 4 owners on every job, notification and thread "
                f"route, {found['examples']} examples; {found['foreign']} foreign ids "
                "answered as missing ones"
            ),
            times=found["operations"],
            jobs=found["jobs"],
            lost=found["leaks"],
            what_lost="leaks",
        )
    )


@settings(
    max_examples=EXAMPLES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    # An example takes about a second: shrinking one would outlast the test's timeout.
    # A failure shows its example's every draw as it was, and replays first next run.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(data=st.data(), store=st.sampled_from(["sqlite", "memory"]))
async def test_no_owner_sees_or_touches_another_owners_data(
    totals: Counter[str], data: st.DataObject, store: StoreName
) -> None:
    async with isolation_server(store) as server, server.client() as client:
        world = World(server, client)
        # Every owner starts with a job, so that there are ids to name from the start.
        for step in range(STEPS):
            world.step = step
            if step < len(OWNERS):
                owner, name = step, "create"
            else:
                owner = data.draw(st.integers(0, len(OWNERS) - 1), label="owner")
                name = data.draw(st.sampled_from(WEIGHTED), label="operation")
            await OPERATIONS[name](world, data, owner)
        world.step = STEPS
        await live_notifications(world)
        leaks = await check_the_end(world)
        assert leaks == 0
    totals["examples"] += 1
    totals["operations"] += world.operations
    totals["foreign"] += world.foreign_checks
    totals["jobs"] += len(world.jobs)
    totals["leaks"] += leaks


# -- timing ------------------------------------------------------------------------------

BIG_CONTENT_WORDS = 200_000  # about 2 MB of content: a hit costs what sending it costs
TIMING_ROUNDS = sized(60, 600)
# A foreign id's median latency and a missing one's are within this factor of each
# other on every route, while the owner's own poll of the same job (a hit) is more than
# HIT_FACTOR times a miss: a foreign id answered the way a hit is would be caught.
TIMING_FACTOR = 1.5
HIT_FACTOR = 2.0
TIMED_ROUTES = {
    "GET /v1/jobs/{id}": ("GET", "/v1/jobs/{}"),
    "GET /api/jobs/{id}/status": ("GET", "/api/jobs/{}/status"),
    "GET /v1/jobs/{id}/events": ("GET", "/v1/jobs/{}/events"),
    "POST /v1/jobs/{id}/abort": ("POST", "/v1/jobs/{}/abort"),
}


async def test_a_foreign_id_is_answered_in_the_same_time_as_a_missing_one(
    tmp_path: Path, figures: Figures
) -> None:
    """Requests of the three kinds are interleaved in a shuffled order, round after
    round, and each is compared with the missing id's of its round, so that the
    machine's load weighs on both alike; medians, not means, so that a stall of the
    machine does not count."""
    text = " ".join(f"w{index % 1000}" for index in range(BIG_CONTENT_WORDS))
    samples: dict[tuple[str, str], list[float]] = defaultdict(list)
    async with FakeUpstream.serve() as fake:
        fake.script("big-model", Script.text(text, chunk_size=5000))
        config = make_config(tmp_path, store="sqlite", log_level="warning", **fake_settings(fake))
        async with run_api_server(config) as server, server.client() as client:
            ana, ben = server.auth("ana", "w1"), server.auth("ben", "w1")
            created = await client.post("/v1/jobs", json=chat_body(model="big-model"), headers=ben)
            assert created.status_code == 202, created.text
            job_id = created.json()["id"]
            done = await wait_for_status(client, job_id, ben, timeout=20)
            assert done["content_length"] == len(text)

            rng = random.Random(1)
            missing_index = 0
            for _ in range(TIMING_ROUNDS):
                round_: list[tuple[str, str, str, str, dict[str, str], int]] = []
                for name, (method, template) in TIMED_ROUTES.items():
                    missing_index += 1
                    missing = f"{missing_index:032x}"
                    round_.append((name, "foreign", method, template.format(job_id), ana, 404))
                    round_.append((name, "missing", method, template.format(missing), ana, 404))
                round_.append(("GET /v1/jobs/{id}", "hit", "GET", f"/v1/jobs/{job_id}", ben, 200))
                rng.shuffle(round_)
                for name, kind, method, url, headers, status in round_:
                    started = time.perf_counter()
                    response = await client.request(method, url, headers=headers)
                    samples[name, kind].append(time.perf_counter() - started)
                    assert response.status_code == status, response.text

    def ratio(name: str, kind: str) -> float:
        """The median, over the rounds, of ``kind``'s latency over a missing id's in the
        same round: a round's load weighs on both alike."""
        pairs = zip(samples[name, kind], samples[name, "missing"], strict=True)
        return statistics.median(got / missing for got, missing in pairs)

    report, worst = [], 1.0
    for name in TIMED_ROUTES:
        foreign = ratio(name, "foreign")
        worst = max(worst, foreign, 1 / foreign)
        report.append(f"{name}: foreign / missing {foreign:.2f}")
    hit = ratio("GET /v1/jobs/{id}", "hit")
    report.append(f"hit / missing {hit:.2f}")
    # The measurement tells a hit from a miss, else the comparison would prove nothing.
    assert hit > HIT_FACTOR, report
    assert worst < TIMING_FACTOR, report
    figures.record(
        Figure(
            test="foreign vs missing id timing (test_isolation.py)",
            injected=(
                f"foreign and missing ids, interleaved, on 4 routes, against a 2 MB job; "
                f"worst median ratio {worst:.2f} (a hit {hit:.1f}x a miss)"
            ),
            times=sum(len(values) for values in samples.values()),
            jobs=1,
            lost=0,
            what_lost="leaks",
        )
    )
