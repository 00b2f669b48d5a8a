"""The v1 jobs API over real HTTP: create, poll with offsets (content and reasoning), list,
abort, keys and caps."""

from __future__ import annotations

from datetime import UTC, datetime

import trio

from actors.api import JobView
from actors.model import Job, JobStatus
from tests.fake_upstream import FakeUpstream, Script
from tests.http.conftest import (
    SERVER_API_KEY,
    ApiServer,
    OpenApiServer,
    chat_body,
    fake_settings,
    wait_for_status,
    wait_until,
)

JOB_KEYS = {
    "id",
    "thread_id",
    "message_id",
    "model",
    "status",
    "started_at",
    "completed_at",
    "error",
    "chunks_received",
    "last_seq",
    "finish_reason",
    "usage",
    "generation_id",
    "offset",
    "content_delta",
    "content_length",
    "reasoning_offset",
    "reasoning",
    "reasoning_length",
    "tool_calls",
    "images",
    "foreground",
}
ANSWER = "The quick brown fox jumps over the lazy dog"
HANG = "hanging-model"


def hang_script() -> Script:
    return Script.stream().content("first ").hang()


async def test_post_returns_202_with_location_and_the_job(api_server: ApiServer) -> None:
    async with api_server.client() as client:
        response = await client.post(
            "/v1/jobs",
            json=chat_body(thread_id="t-7", message_id="m-7", model="sim"),
            headers=api_server.auth(),
        )
        assert response.status_code == 202
        job = response.json()
        assert set(job) == JOB_KEYS
        assert response.headers["location"] == f"/v1/jobs/{job['id']}"
        assert job["thread_id"] == "t-7"
        assert job["message_id"] == "m-7"
        assert job["model"] == "sim"
        assert job["status"] in ("queued", "streaming", "complete")
        assert job["completed_at"] is None or job["status"] == "complete"

        located = await client.get(response.headers["location"], headers=api_server.auth())
        assert located.status_code == 200
        assert located.json()["id"] == job["id"]


async def test_get_with_offset_returns_only_the_new_part(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("m", Script.text(ANSWER))
    async with open_api_server(**fake_settings(fake_upstream)) as server, server.client() as client:
        headers = server.auth()
        created = await client.post("/v1/jobs", json=chat_body(model="m"), headers=headers)
        job_id = created.json()["id"]
        done = await wait_for_status(client, job_id, headers)
        assert done["status"] == "complete"
        assert done["content_delta"] == ANSWER
        assert done["content_length"] == len(ANSWER)
        assert done["offset"] == 0

        for offset in (1, 10, len(ANSWER) - 3, len(ANSWER)):
            part = await client.get(f"/v1/jobs/{job_id}?offset={offset}", headers=headers)
            assert part.status_code == 200
            body = part.json()
            assert body["content_delta"] == ANSWER[offset:]
            assert body["content_length"] == len(ANSWER)
            assert body["offset"] == offset

        bad = await client.get(f"/v1/jobs/{job_id}?offset=-1", headers=headers)
        assert bad.status_code == 422
        assert bad.json()["error"]["code"] == "invalid_request"


async def test_reasoning_offset_returns_only_the_new_reasoning(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    thought = "Weigh the fox against the dog"
    script = Script.stream().reasoning("Weigh the fox ").reasoning("against the dog")
    fake_upstream.script("r", script.content(ANSWER).finish().usage().done())
    async with open_api_server(**fake_settings(fake_upstream)) as server, server.client() as client:
        headers = server.auth()
        created = await client.post("/v1/jobs", json=chat_body(model="r"), headers=headers)
        job_id = created.json()["id"]
        done = await wait_for_status(client, job_id, headers)
        assert done["status"] == "complete"
        assert (done["reasoning_offset"], done["reasoning"]) == (0, thought)
        assert done["reasoning_length"] == len(thought)

        for reasoning_offset in (1, 10, len(thought) - 3, len(thought)):
            part = await client.get(
                f"/v1/jobs/{job_id}?reasoning_offset={reasoning_offset}", headers=headers
            )
            assert part.status_code == 200
            body = part.json()
            assert body["reasoning"] == thought[reasoning_offset:]
            assert body["reasoning_offset"] == reasoning_offset
            assert body["reasoning_length"] == len(thought)
            assert (body["offset"], body["content_delta"]) == (0, ANSWER)

        both = (
            await client.get(f"/v1/jobs/{job_id}?offset=4&reasoning_offset=6", headers=headers)
        ).json()
        assert (both["content_delta"], both["reasoning"]) == (ANSWER[4:], thought[6:])
        beyond = (
            await client.get(f"/v1/jobs/{job_id}?reasoning_offset=1000", headers=headers)
        ).json()
        assert (beyond["reasoning_offset"], beyond["reasoning"]) == (len(thought), "")

        for raw in ("-1", "x", ""):
            bad = await client.get(f"/v1/jobs/{job_id}?reasoning_offset={raw}", headers=headers)
            assert bad.status_code == 422
            assert bad.json()["error"]["code"] == "invalid_request"
            assert "reasoning_offset" in bad.json()["error"]["message"]


def test_a_view_gives_reasoning_from_its_offset_clamped_to_the_length() -> None:
    job = Job(
        id="j",
        user_id="u",
        workspace_id="w",
        thread_id="t",
        message_id="m",
        model="model",
        status=JobStatus.COMPLETE,
        started_at=datetime(2026, 1, 2, tzinfo=UTC),
        reasoning="0123456789",
    )
    view = JobView.of(job, reasoning_offset=4)
    assert (view.reasoning_offset, view.reasoning, view.reasoning_length) == (4, "456789", 10)
    past_the_end = JobView.of(job, reasoning_offset=99)
    assert (past_the_end.reasoning_offset, past_the_end.reasoning) == (10, "")


async def test_offsets_while_streaming_add_up_to_the_whole_answer(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("m", Script.text(ANSWER, delay=0.01))
    async with open_api_server(**fake_settings(fake_upstream)) as server, server.client() as client:
        headers = server.auth()
        created = await client.post("/v1/jobs", json=chat_body(model="m"), headers=headers)
        job_id = created.json()["id"]
        received = ""
        with trio.fail_after(5):
            while True:
                poll = await client.get(
                    f"/v1/jobs/{job_id}?offset={len(received)}", headers=headers
                )
                body = poll.json()
                received += body["content_delta"]
                assert body["content_length"] == len(received)
                if body["status"] == "complete":
                    break
                await trio.sleep(0.005)
        assert received == ANSWER


async def test_list_filters_by_status_and_rejects_an_unknown_one(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("fast", Script.text(ANSWER))
    fake_upstream.script(HANG, hang_script())
    async with open_api_server(**fake_settings(fake_upstream)) as server, server.client() as client:
        headers = server.auth()
        post = client.post
        fast = (await post("/v1/jobs", json=chat_body(model="fast"), headers=headers)).json()
        await wait_for_status(client, fast["id"], headers)
        aborted = (await post("/v1/jobs", json=chat_body(model=HANG), headers=headers)).json()
        await client.post(f"/v1/jobs/{aborted['id']}/abort", headers=headers)
        running = (await post("/v1/jobs", json=chat_body(model=HANG), headers=headers)).json()
        await wait_for_status(client, running["id"], headers, ("streaming",))

        everything = await client.get("/v1/jobs", headers=headers)
        assert everything.status_code == 200
        assert [job["id"] for job in everything.json()["jobs"]] == [
            running["id"],
            aborted["id"],
            fast["id"],
        ]
        for status, expected in (
            ("complete", fast),
            ("aborted", aborted),
            ("streaming", running),
        ):
            listed = await client.get(f"/v1/jobs?status={status}", headers=headers)
            assert listed.status_code == 200
            jobs = listed.json()["jobs"]
            assert [job["id"] for job in jobs] == [expected["id"]]
            assert jobs[0]["status"] == status
        assert (await client.get("/v1/jobs?status=error", headers=headers)).json() == {"jobs": []}

        unknown = await client.get("/v1/jobs?status=finished", headers=headers)
        assert unknown.status_code == 422
        assert unknown.json()["error"]["code"] == "invalid_request"
        assert "status" in unknown.json()["error"]["message"]

        others = await client.get("/v1/jobs", headers=server.auth("bob"))
        assert others.json() == {"jobs": []}


async def test_abort_is_idempotent_and_owner_scoped(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script(HANG, hang_script())
    async with open_api_server(**fake_settings(fake_upstream)) as server, server.client() as client:
        headers = server.auth()
        job = (await client.post("/v1/jobs", json=chat_body(model=HANG), headers=headers)).json()
        await wait_for_status(client, job["id"], headers, ("streaming",))

        stranger = await client.post(f"/v1/jobs/{job['id']}/abort", headers=server.auth("bob"))
        assert stranger.status_code == 404
        assert stranger.json()["error"]["code"] == "not_found"
        other_workspace = await client.post(
            f"/v1/jobs/{job['id']}/abort", headers=server.auth("alice", "w2")
        )
        assert other_workspace.status_code == 404

        first = await client.post(f"/v1/jobs/{job['id']}/abort", headers=headers)
        assert first.status_code == 200
        assert first.json()["aborted"] is True
        assert first.json()["job"]["status"] == "aborted"
        assert first.json()["job"]["id"] == job["id"]

        second = await client.post(f"/v1/jobs/{job['id']}/abort", headers=headers)
        assert second.status_code == 200
        assert second.json()["aborted"] is False
        assert second.json()["job"]["status"] == "aborted"

        missing = await client.post("/v1/jobs/no-such-job/abort", headers=headers)
        assert missing.status_code == 404


async def test_user_key_is_refused_when_the_server_has_a_key_and_disallows_them(
    open_api_server: OpenApiServer,
) -> None:
    settings = {"upstream_api_key": SERVER_API_KEY, "allow_user_api_keys": False}
    async with open_api_server(**settings) as server, server.client() as client:
        headers = {**server.auth(), "X-Upstream-Api-Key": "sk-user-own"}
        response = await client.post("/v1/jobs", json=chat_body(), headers=headers)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "user_key_not_allowed"
        assert "sk-user-own" not in response.text
        listed = await client.get("/v1/jobs", headers=server.auth())
        assert listed.json() == {"jobs": []}


async def test_user_key_when_allowed_goes_upstream_as_bearer(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("m", Script.text(ANSWER))
    settings = fake_settings(fake_upstream, allow_user_api_keys=True)
    async with open_api_server(**settings) as server, server.client() as client:
        own = {**server.auth(), "X-Upstream-Api-Key": "sk-user-own"}
        job = (await client.post("/v1/jobs", json=chat_body(model="m"), headers=own)).json()
        done = await wait_for_status(client, job["id"], server.auth())
        assert done["status"] == "complete"
        assert fake_upstream.requests[-1].headers["authorization"] == "Bearer sk-user-own"
        assert "sk-user-own" not in str(done)

        plain = server.auth()
        job = (await client.post("/v1/jobs", json=chat_body(model="m"), headers=plain)).json()
        await wait_for_status(client, job["id"], plain)
        assert fake_upstream.requests[-1].headers["authorization"] == "Bearer sk-server-test"


async def test_per_user_cap_answers_429(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script(HANG, hang_script())
    settings = fake_settings(fake_upstream, max_jobs_per_user=2, max_concurrent_jobs=10)
    async with open_api_server(**settings) as server, server.client() as client:
        alice = server.auth()
        body = chat_body(model=HANG)
        first = await client.post("/v1/jobs", json=body, headers=alice)
        second = await client.post("/v1/jobs", json=body, headers=alice)
        assert (first.status_code, second.status_code) == (202, 202)

        refused = await client.post("/v1/jobs", json=body, headers=alice)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_jobs"
        listed = await client.get("/v1/jobs", headers=alice)
        assert len(listed.json()["jobs"]) == 2

        bob = await client.post("/v1/jobs", json=body, headers=server.auth("bob"))
        assert bob.status_code == 202

        # A finished job frees its slot.
        await client.post(f"/v1/jobs/{first.json()['id']}/abort", headers=alice)
        again = await client.post("/v1/jobs", json=body, headers=alice)
        assert again.status_code == 202


async def test_global_cap_answers_503_with_retry_after(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script(HANG, hang_script())
    settings = fake_settings(fake_upstream, max_jobs_per_user=5, max_concurrent_jobs=2)
    async with open_api_server(**settings) as server, server.client() as client:
        body = chat_body(model=HANG)
        for user in ("alice", "bob"):
            accepted = await client.post("/v1/jobs", json=body, headers=server.auth(user))
            assert accepted.status_code == 202

        busy = await client.post("/v1/jobs", json=body, headers=server.auth("carol"))
        assert busy.status_code == 503
        assert busy.json()["error"]["code"] == "server_busy"
        assert int(busy.headers["retry-after"]) > 0
        carol = await client.get("/v1/jobs", headers=server.auth("carol"))
        assert carol.json() == {"jobs": []}

        # The refused request never reached the upstream.
        async def both_streaming() -> bool:
            return len(fake_upstream.requests) == 2

        await wait_until(both_streaming)
        await trio.sleep(0.05)
        assert len(fake_upstream.requests) == 2


async def test_a_background_job_keeps_its_merged_tool_calls_and_its_images(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    image = "data:image/png;base64,iVBORw0KGgo="
    fake_upstream.script(
        "m",
        Script.stream()
        .content("Two calls and a picture.")
        .tool_call(0, id="call_a", name="weather")
        .tool_call(1, id="call_b", name="time")
        .tool_call(0, arguments='{"city": ')
        .tool_call(1, arguments='{"tz": "UTC"}')
        .tool_call(0, arguments='"Oslo"}')
        .image(image)
        .finish("tool_calls")
        .done(),
    )
    async with open_api_server(**fake_settings(fake_upstream)) as server, server.client() as client:
        started = await client.post("/v1/jobs", json=chat_body(model="m"), headers=server.auth())
        job = await wait_for_status(client, started.json()["id"], server.auth())

    assert (job["status"], job["foreground"]) == ("complete", False)
    assert job["content_delta"] == "Two calls and a picture."
    assert job["tool_calls"] == [
        {
            "id": "call_a",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
        },
        {
            "id": "call_b",
            "type": "function",
            "function": {"name": "time", "arguments": '{"tz": "UTC"}'},
        },
    ]
    assert job["images"] == [{"type": "image_url", "image_url": {"url": image}}]
