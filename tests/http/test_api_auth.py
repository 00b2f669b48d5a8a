"""Authentication and ownership over real HTTP: 401s, 404 for others' jobs, the admin claim."""

from __future__ import annotations

import time

import httpx
import jwt

from actors.http.auth import TokenAuthority
from tests.fake_upstream import FakeUpstream, Script
from tests.http.conftest import (
    JWT_SECRET,
    SERVER_API_KEY,
    ApiServer,
    OpenApiServer,
    chat_body,
    fake_settings,
    wait_for_status,
)

OTHER_SECRET = "another-secret-entirely-0123456789abcdef"
PROTECTED = [
    ("GET", "/v1/jobs"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs/some-job"),
    ("POST", "/v1/jobs/some-job/abort"),
    ("GET", "/v1/jobs/some-job/events"),
    ("GET", "/v1/notifications"),
    ("POST", "/v1/notifications/some-id/read"),
    ("POST", "/v1/notifications/read-all"),
    ("DELETE", "/v1/notifications/some-id"),
    ("GET", "/v1/notifications/events"),
    ("PUT", "/v1/threads/some-thread/mute"),
    ("GET", "/v1/system/actors"),
]


def raw_token(claims: dict[str, object], secret: str = JWT_SECRET) -> str:
    now = int(time.time())
    return jwt.encode({"iat": now, "exp": now + 600, **claims}, secret, algorithm="HS256")


def bad_authorizations(server: ApiServer) -> dict[str, str | None]:
    """Authorization header values that must all be refused, by what is wrong with them."""
    return {
        "missing": None,
        "empty": "",
        "not bearer": f"Token {server.token()}",
        "bearer without token": "Bearer",
        "not a jwt": "Bearer not-a-jwt",
        "expired": f"Bearer {server.token(ttl=-60)}",
        "forged": f"Bearer {TokenAuthority(OTHER_SECRET).mint('alice', 'w1')}",
        "empty workspace": f"Bearer {raw_token({'sub': 'alice', 'workspace': ''})}",
        "workspace not a string": f"Bearer {raw_token({'sub': 'alice', 'workspace': 7})}",
        "no user": f"Bearer {raw_token({'workspace': 'w1'})}",
        "user too long": f"Bearer {raw_token({'sub': 'a' * 201, 'workspace': 'w1'})}",
        "no exp": "Bearer "
        + jwt.encode({"sub": "alice", "workspace": "w1"}, JWT_SECRET, algorithm="HS256"),
        "algorithm not allowed": "Bearer "
        + jwt.encode({"sub": "alice", "workspace": "w1", "exp": 4_000_000_000}, "k" * 64, "HS512"),
        "unsigned": "Bearer "
        + jwt.encode({"sub": "alice", "workspace": "w1", "exp": 4_000_000_000}, None, "none"),
    }


async def test_every_protected_route_answers_401_with_the_error_shape(
    api_server: ApiServer,
) -> None:
    async with api_server.client() as client:
        for why, authorization in bad_authorizations(api_server).items():
            headers = {} if authorization is None else {"Authorization": authorization}
            for method, path in PROTECTED:
                response = await client.request(method, path, headers=headers, json={})
                assert response.status_code == 401, (why, method, path, response.text)
                body = response.json()
                assert set(body) == {"error"}
                assert set(body["error"]) == {"code", "message"}
                assert body["error"]["code"] == "unauthorized"
                assert response.headers["www-authenticate"].startswith("Bearer")
                if authorization:
                    token = authorization.partition(" ")[2]
                    assert not token or token not in response.text

        listed = await client.get("/v1/jobs", headers=api_server.auth())
        assert listed.json() == {"jobs": []}


async def test_a_token_without_a_workspace_claim_names_the_users_own(
    api_server: ApiServer,
) -> None:
    async with api_server.client() as client:
        alone = {"Authorization": f"Bearer {raw_token({'sub': 'alice'})}"}
        created = await client.post("/v1/jobs", json=chat_body(), headers=alone)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        # The same job under workspace "alice", and under no other.
        own = await client.get(f"/v1/jobs/{job_id}", headers=api_server.auth("alice", "alice"))
        assert own.status_code == 200
        other = await client.get(f"/v1/jobs/{job_id}", headers=api_server.auth("alice", "w1"))
        assert other.status_code == 404


async def test_expired_token_says_so(api_server: ApiServer) -> None:
    async with api_server.client() as client:
        response = await client.get("/v1/jobs", headers=api_server.auth(ttl=-60))
    assert response.status_code == 401
    assert "expired" in response.json()["error"]["message"]


async def test_another_owners_job_is_404_never_403(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("hang", Script.stream().content("secret plans").hang())
    async with open_api_server(**fake_settings(fake_upstream)) as server, server.client() as client:
        owner = server.auth("alice", "w1")
        created = await client.post("/v1/jobs", json=chat_body(model="hang"), headers=owner)
        job_id = created.json()["id"]
        await wait_for_status(client, job_id, owner, ("streaming",))

        for user, workspace in (("bob", "w1"), ("alice", "w2"), ("bob", "w2")):
            stranger = server.auth(user, workspace)
            responses: list[httpx.Response] = [
                await client.get(f"/v1/jobs/{job_id}", headers=stranger),
                await client.get(f"/v1/jobs/{job_id}/events", headers=stranger),
                await client.post(f"/v1/jobs/{job_id}/abort", headers=stranger),
            ]
            for response in responses:
                assert response.status_code == 404
                assert response.json()["error"]["code"] == "not_found"
                assert "secret plans" not in response.text
            missing = await client.get("/v1/jobs/no-such-job", headers=stranger)
            assert responses[0].json() == missing.json()

        still = await client.get(f"/v1/jobs/{job_id}", headers=owner)
        assert still.json()["status"] == "streaming"


async def test_system_actors_needs_the_admin_claim_and_shows_no_secret(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("hang", Script.stream().content("thinking").hang())
    user_key = "sk-user-very-private-key"
    settings = fake_settings(fake_upstream, allow_user_api_keys=True)
    async with open_api_server(**settings) as server, server.client() as client:
        # A job that runs with its own key, so a stream actor holding it is in the tree.
        headers = {**server.auth(), "X-Upstream-Api-Key": user_key}
        created = await client.post("/v1/jobs", json=chat_body(model="hang"), headers=headers)
        await wait_for_status(client, created.json()["id"], server.auth(), ("streaming",))

        forbidden = await client.get("/v1/system/actors", headers=server.auth())
        assert forbidden.status_code == 403
        assert forbidden.json()["error"]["code"] == "forbidden"

        allowed = await client.get("/v1/system/actors", headers=server.auth(admin=True))
        assert allowed.status_code == 200
        tree = allowed.json()
        assert isinstance(tree, dict)
        assert "service/registry" in allowed.text
        assert "service/streams/" in allowed.text
        for secret in (SERVER_API_KEY, user_key, JWT_SECRET):
            assert secret not in allowed.text

        assert fake_upstream.requests[-1].headers["authorization"] == f"Bearer {user_key}"
