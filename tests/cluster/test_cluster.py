"""Several troupe processes on one Redis act as one service, behind nginx too.

Real processes (``examples/server.py``), a real ``redis-server`` and nginx with the
shipped ``examples/nginx.conf``, all on free ports of 127.0.0.1 (see
:mod:`tests.cluster.harness`). The upstream is the in-process fake, so a test sees
when a node closes its upstream request; the caps test runs the simulated model at
a pace that keeps every job running until it is aborted.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import trio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.cluster.harness import (
    FRONT,
    LEASE_PERIOD,
    Cluster,
    Connection,
    Followed,
    chat_body,
    follow,
    follow_to_end,
    open_cluster,
    wait_until,
    watch_notifications,
)
from tests.fake_upstream import FakeUpstream, Script
from tests.redis_server import RedisServer

NODE_LOST: Final = "interrupted: node lost"
STORE_UNAVAILABLE: Final = "store unavailable"
DETECTION_SLACK: Final = 1.5
"""Seconds allowed past two lease periods for a dead node's job to reach a follower:
the store's reads and the follower's wake-up, on a busy machine."""
WORDS: Final = 60
TOKEN_DELAY: Final = 0.05
"""The fake answer: 60 words, 50 ms apart (3 s), so a kill after the first deltas
lands mid-stream."""
ANSWER: Final = " ".join(f"w{i}" for i in range(WORDS))
LONG_ANSWER: Final = " ".join(f"l{i}" for i in range(4 * WORDS))
"""12 s of tokens: it outlasts an outage longer than ``store_outage_grace``."""


def _hanging(words: int) -> Script:
    """``words`` tokens, then an open stream that sends nothing more."""
    script = Script.stream()
    for i in range(words):
        script = script.content(f"h{i} ")
    return script.hang()


async def _notifications(client: httpx.AsyncClient, job_id: str) -> list[dict[str, Any]]:
    answer = await client.get("/v1/notifications")
    assert answer.status_code == 200, answer.text
    return [n for n in answer.json()["notifications"] if n["job_id"] == job_id]


async def _one_notification(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    """Wait for the job's notification; after a lease period more, it must be alone."""
    found: list[dict[str, Any]] = []

    async def poll() -> None:
        found[:] = await _notifications(client, job_id)

    with trio.fail_after(10):
        while not found:
            await trio.sleep(0.05)
            await poll()
    await trio.sleep(LEASE_PERIOD)
    await poll()
    assert len(found) == 1, found
    assert found[0]["type"] == "ai.background.error", found[0]
    return found[0]


async def _start(client: httpx.AsyncClient, **body: str) -> httpx.Response:
    created = await client.post("/v1/jobs", json=chat_body(**body))
    assert created.status_code == 202, created.text
    return created


# -- nginx -------------------------------------------------------------------------------


@pytest.mark.parametrize("on_owner", [False, True], ids=["follower-elsewhere", "follower-on-owner"])
async def test_through_nginx_a_follower_resumes_after_kill_9_of_its_node(
    tmp_path: Path, on_owner: bool
) -> None:
    """Start and follow a job through nginx, SIGKILL the node serving the follower,
    resume through nginx with Last-Event-ID. If that node did not own the job, the
    joined text is the upstream's exactly; if it did, the job ends "interrupted: node
    lost" with what was stored, and one notification."""
    async with FakeUpstream.serve() as fake:
        fake.script("fake", Script.text(ANSWER, delay=TOKEN_DELAY))
        async with (
            open_cluster(tmp_path, fake.base_url, nginx=True) as cluster,
            cluster.client(FRONT) as front,
        ):
            created = await _start(front)
            job_id = created.json()["id"]
            owner = cluster.serving(created)
            async with trio.open_nursery() as nursery:
                # nginx picks the node; connect again until it is the one this case wants.
                for _ in range(12):
                    record = Followed()
                    connection: Connection = await nursery.start(follow, front, job_id, record)
                    served_by = cluster.serving(connection.response)
                    if (served_by is owner) == on_owner:
                        break
                    connection.scope.cancel()
                else:
                    pytest.fail("nginx never sent the follower where this case needs it")
                await wait_until(lambda: len(record.deltas) >= 3, "three deltas")
                served_by.kill()
            assert record.breaks == 1 and record.status is None, record

            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    connection = await nursery.start(follow, front, job_id, record)
            assert cluster.serving(connection.response) is not served_by
            assert record.status is not None and record.snapshots == 2, record
            job = (await front.get(f"/v1/jobs/{job_id}")).json()
            if on_owner:
                assert record.status["status"] == "error", record.status
                assert record.status["error"] == NODE_LOST, record.status
                assert job["status"] == "error" and job["error"] == NODE_LOST, job
                assert job["content_delta"] == record.text, (job, record.text)
                assert ANSWER.startswith(record.text) and record.text != ANSWER
                await _one_notification(front, job_id)
            else:
                assert record.status["status"] == "complete", record.status
                assert record.text == ANSWER
                assert job["status"] == "complete" and job["content_delta"] == ANSWER, job


# -- any node serves any job -----------------------------------------------------------


async def test_abort_from_c_closes_the_upstream_request_at_a(tmp_path: Path) -> None:
    """A job started on A and followed on B is aborted from C: A closes its upstream
    request, B's follower gets the status, and aborting again from any node is a no-op."""
    async with FakeUpstream.serve() as fake:
        fake.script("fake", _hanging(5))
        async with (
            open_cluster(tmp_path, fake.base_url) as cluster,
            cluster.client("a") as a,
            cluster.client("b") as b,
            cluster.client("c") as c,
        ):
            job_id = (await _start(a)).json()["id"]
            record = Followed()
            async with trio.open_nursery() as nursery:
                await nursery.start(follow, b, job_id, record)
                await wait_until(lambda: len(record.deltas) == 5, "the deltas on B")
                # Any node answers for the running job: a poll from an offset, the seed's route.
                polled = (await c.get(f"/v1/jobs/{job_id}", params={"offset": 3})).json()
                assert polled["content_delta"] == record.text[3:], polled
                seed = (await b.get(f"/api/jobs/{job_id}/status")).json()
                assert (seed["status"], seed["content"]) == ("streaming", record.text), seed
                (request,) = fake.requests
                assert not request.client_disconnected.is_set()
                asked_at = trio.current_time()
                aborted = await c.post(f"/v1/jobs/{job_id}/abort")
                assert aborted.status_code == 200, aborted.text
                assert aborted.json()["aborted"] is True, aborted.json()
                with trio.fail_after(5):
                    await request.client_disconnected.wait()
                closed_after = trio.current_time() - asked_at
            print(f"an abort on C closed the upstream request at A in {closed_after * 1000:.0f} ms")
            assert record.status is not None and record.status["status"] == "aborted"
            assert record.text == "".join(f"h{i} " for i in range(5))
            for client in (a, b, c):
                again = await client.post(f"/v1/jobs/{job_id}/abort")
                assert again.status_code == 200, again.text
                assert again.json()["aborted"] is False, again.json()
                assert again.json()["job"]["status"] == "aborted"
                assert again.json()["job"]["content_delta"] == record.text
            assert len(fake.requests) == 1


async def test_a_node_killed_mid_stream_is_found_by_another(tmp_path: Path) -> None:
    """SIGKILL A while it streams a job that B follows: within two lease periods B's
    follower gets "interrupted: node lost", the job keeps what was stored, and its
    owner gets one notification, pushed live to its followers on B and on C."""
    async with FakeUpstream.serve() as fake:
        fake.script("fake", _hanging(8))
        async with (
            open_cluster(tmp_path, fake.base_url) as cluster,
            cluster.client("a") as a,
            cluster.client("b") as b,
            cluster.client("c") as c,
        ):
            live: dict[str, list[dict[str, Any]]] = {"b": [], "c": []}
            record = Followed()
            async with trio.open_nursery() as nursery:
                for name, client in (("b", b), ("c", c)):
                    await nursery.start(watch_notifications, client, live[name])
                job_id = (await _start(a)).json()["id"]
                await nursery.start(follow, b, job_id, record)
                await wait_until(lambda: len(record.deltas) == 8, "the deltas on B")
                killed_at = trio.current_time()
                cluster.nodes["a"].kill()
                await wait_until(lambda: record.status is not None, "the status on B", 10)
                detected = trio.current_time() - killed_at
                await wait_until(lambda: all(live.values()), "the notification, live")
                notification = await _one_notification(b, job_id)
                nursery.cancel_scope.cancel()
            print(f"node loss reached a follower on another node {detected:.2f} s after kill -9")
            assert detected < 2 * LEASE_PERIOD + DETECTION_SLACK, detected
            assert record.status is not None
            assert (record.status["status"], record.status["error"]) == ("error", NODE_LOST)
            job = (await c.get(f"/v1/jobs/{job_id}")).json()
            assert (job["status"], job["error"]) == ("error", NODE_LOST), job
            assert job["content_delta"] == record.text == "".join(f"h{i} " for i in range(8))
            assert live == {"b": [notification], "c": [notification]}, live


# -- caps --------------------------------------------------------------------------------


_CAPS_USERS: Final = ("ann", "ben", "cat", "dan")


async def _burst(
    cluster: Cluster, requests: list[tuple[str, str]]
) -> list[tuple[str, httpx.Response]]:
    """Send every ``(user, node)`` creation at once; return each user's answer."""
    answers: list[tuple[str, httpx.Response]] = []
    clients = {(user, node): cluster.client(node, user) for user, node in set(requests)}

    async def create(user: str, node: str, index: int) -> None:
        body = chat_body(thread=f"t{index}")
        answers.append((user, await clients[user, node].post("/v1/jobs", json=body)))

    try:
        async with trio.open_nursery() as nursery:
            for index, (user, node) in enumerate(requests):
                nursery.start_soon(create, user, node, index)
    finally:
        for client in clients.values():
            await client.aclose()
    return answers


@settings(
    max_examples=3,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_caps_hold_under_concurrent_creation_across_processes(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """Bursts of concurrent creations from several users on every node admit exactly
    what the caps allow: never more (in total, or for a user), and no fewer. Aborts
    on any node between bursts free their slots."""
    max_jobs = data.draw(st.integers(2, 8), label="max_concurrent_jobs")
    per_user = data.draw(st.integers(1, 3), label="max_jobs_per_user")
    nodes = ("a", "b")
    settings_env = {
        "TROUPE_MAX_CONCURRENT_JOBS": str(max_jobs),
        "TROUPE_MAX_JOBS_PER_USER": str(per_user),
        # The first token comes after 1,000 s: every job runs until it is aborted.
        "TROUPE_SIMULATED_TOKENS_PER_SECOND": "0.001",
    }
    workdir = tmp_path_factory.mktemp("caps")
    async with open_cluster(workdir, None, nodes=len(nodes), settings=settings_env) as cluster:
        running: dict[str, list[str]] = {user: [] for user in _CAPS_USERS}
        for burst_no in range(3):
            requests = data.draw(
                st.lists(
                    st.tuples(st.sampled_from(_CAPS_USERS), st.sampled_from(nodes)),
                    min_size=1,
                    max_size=16,
                ),
                label=f"burst {burst_no}",
            )
            asked = {user: sum(1 for u, _ in requests if u == user) for user in _CAPS_USERS}
            # Slots only fill during a burst, so whatever the order, exactly this many fit.
            expected = min(
                max_jobs, sum(min(per_user, len(running[u]) + asked[u]) for u in _CAPS_USERS)
            )
            refused = []
            for user, answer in await _burst(cluster, requests):
                if answer.status_code == 202:
                    running[user].append(answer.json()["id"])
                else:
                    refused.append((user, answer))
            total = sum(len(jobs) for jobs in running.values())
            assert total == expected, (total, expected, requests)
            for user, answer in refused:
                # A refusal names a cap that was full then, and slots only filled since.
                if answer.status_code == 429:
                    assert len(running[user]) == per_user, (user, answer.text)
                else:
                    assert answer.status_code == 503, answer.text
                    assert "retry-after" in answer.headers and total == max_jobs
            for user, jobs in running.items():
                assert len(jobs) <= per_user, (user, jobs)
                # Every node counts the same running jobs.
                for node in nodes:
                    async with cluster.client(node, user) as client:
                        listed = await client.get("/v1/jobs", params={"status": "streaming"})
                    assert sorted(job["id"] for job in listed.json()["jobs"]) == sorted(jobs)
            # Free some slots, from any node, for the next burst.
            for user, jobs in running.items():
                for job_id in list(jobs):
                    if data.draw(st.booleans(), label=f"abort one of {user}'s jobs"):
                        node = data.draw(st.sampled_from(nodes), label="on node")
                        async with cluster.client(node, user) as client:
                            answer = await client.post(f"/v1/jobs/{job_id}/abort")
                        assert answer.json()["aborted"] is True, answer.text
                        jobs.remove(job_id)


# -- losing Redis ------------------------------------------------------------------------


OUTAGE_GRACE: Final = 2.0
"""The nodes' ``store_outage_grace`` in the Redis restart test."""


async def _until_answer(
    client: httpx.AsyncClient, path: str, check: Callable[[httpx.Response], bool]
) -> httpx.Response:
    """Poll ``GET path`` until ``check`` holds for its answer; return that answer."""
    with trio.fail_after(10):
        while True:
            answer = await client.get(path)
            if check(answer):
                return answer
            await trio.sleep(0.05)


def _status(code: int) -> Callable[[httpx.Response], bool]:
    return lambda answer: answer.status_code == code


async def test_a_redis_restart_mid_stream_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """Redis (append-only) restarts mid-stream on the same port. While it is down,
    readiness and new jobs answer 503; a stream goes on through an outage shorter
    than ``store_outage_grace`` and completes, and one that outlasts it ends "store
    unavailable" at once for its followers. Every acknowledged job, and every delta a
    follower was sent, is there after the restarts."""
    redis = RedisServer(tmp_path / "redis", appendonly=True)
    redis.directory.mkdir()
    await trio.to_thread.run_sync(redis.start)
    settings_env = {"TROUPE_STORE_OUTAGE_GRACE": str(OUTAGE_GRACE)}
    try:
        async with FakeUpstream.serve() as fake:
            fake.script("fake", Script.text(ANSWER, delay=TOKEN_DELAY))
            fake.script("long", Script.text(LONG_ANSWER, delay=TOKEN_DELAY))
            async with (
                open_cluster(
                    tmp_path, fake.base_url, nodes=2, settings=settings_env, redis=redis
                ) as cluster,
                cluster.client("a") as a,
                cluster.client("b") as b,
            ):
                # An outage shorter than the grace: the stream goes on.
                short = (await _start(a)).json()["id"]
                across = Followed()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(follow_to_end, b, short, across)
                    await wait_until(lambda: len(across.deltas) >= 5, "deltas on B")
                    down_at = trio.current_time()
                    await trio.to_thread.run_sync(redis.stop)
                    await _until_answer(a, "/readyz", _status(503))
                    refused = await b.post("/v1/jobs", json=chat_body(thread="t2"))
                    assert refused.status_code == 503, refused.text
                    assert "retry-after" in refused.headers
                    await trio.sleep_until(down_at + OUTAGE_GRACE / 2)
                    await trio.to_thread.run_sync(redis.start)
                    outage = trio.current_time() - down_at
                    assert outage < OUTAGE_GRACE, f"the short outage took {outage:.2f} s"
                await _until_answer(a, "/readyz", _status(200))
                assert across.status is not None and across.status["status"] == "complete"
                assert across.text == ANSWER, across
                print(f"a follower on B: {across.breaks} breaks, {across.refusals} refusals")

                # An outage past the grace, while tokens keep coming: the job ends, and
                # its end is stored once Redis is back.
                cut = (await _start(a, model="long", thread="t3")).json()["id"]
                local = Followed()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(follow_to_end, a, cut, local)
                    await wait_until(lambda: len(local.deltas) >= 5, "deltas on A")
                    down_at = trio.current_time()
                    await trio.to_thread.run_sync(redis.stop)
                    await wait_until(lambda: local.status is not None, "the end", 10)
                    ended_after = trio.current_time() - down_at
                    with trio.fail_after(5):  # the ended job's upstream request is closed
                        await fake.requests[-1].client_disconnected.wait()
                    await trio.to_thread.run_sync(redis.start)
                print(f"a stream cut off from Redis ended {ended_after:.2f} s after it stopped")
                # The persister tries the store again at most a second apart.
                assert OUTAGE_GRACE <= ended_after < OUTAGE_GRACE + 1.0 + DETECTION_SLACK
                assert local.status is not None
                assert (local.status["status"], local.status["error"]) == (
                    "error",
                    STORE_UNAVAILABLE,
                )

                for client in (a, b):
                    job = (await client.get(f"/v1/jobs/{short}")).json()
                    assert (job["status"], job["content_delta"]) == ("complete", ANSWER), job
                    answer = await _until_answer(
                        client, f"/v1/jobs/{cut}", lambda got: got.json()["status"] != "streaming"
                    )
                    job = answer.json()
                    assert (job["status"], job["error"]) == ("error", STORE_UNAVAILABLE), job
                    # Everything the follower was sent, and nothing the upstream did not send.
                    assert job["content_delta"].startswith(local.text), (job, local.text)
                    assert LONG_ANSWER.startswith(job["content_delta"]), job
    finally:
        redis.stop()
