"""Authentication as deployments have it, over real HTTP: an auth provider's session
cookie checked against its JWKS, a PEM public key, a gateway's trusted headers, and
the user's own upstream key in ``Authorization: Bearer`` (bring your own key)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt
import trio
from structlog.testing import capture_logs

from tests.fake_upstream import FakeUpstream, Script
from tests.http.conftest import (
    SERVER_API_KEY,
    OpenApiServer,
    chat_body,
    fake_settings,
    wait_for_status,
)
from tests.http.jwks import ISSUER, JwksServer, SigningKey, claims, hs256_with_public_key

SESSION = "__session"
PROVIDER_KEY = SigningKey.rsa("provider-1")
ROTATED_KEY = SigningKey.rsa("provider-2")
EC_KEY = SigningKey.ec("provider-ec")
# Other keys under the provider's kids.
FORGER_KEYS = {PROVIDER_KEY: SigningKey.rsa(PROVIDER_KEY.kid), EC_KEY: SigningKey.ec(EC_KEY.kid)}
FORGER_KEY = FORGER_KEYS[PROVIDER_KEY]
USER_KEY = "sk-or-v1-0123456789abcdef-users-own-key"
SEED_BODY = {
    "model": "hang",
    "messages": [{"role": "user", "content": "hi"}],
    "_background": True,
    "_threadId": "thread-1",
    "_messageId": "message-1",
}
UNAUTHENTICATED = {"error": "Authentication required"}


def session(token: str) -> dict[str, str]:
    """The seed app's browser sends nothing but its auth provider's session cookie."""
    return {"Cookie": f"{SESSION}={token}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def provider_settings(jwks: JwksServer, **overrides: Any) -> dict[str, Any]:
    """A server that checks the provider's session tokens, workspace from ``org_id``."""
    return {
        "jwt_secret": None,
        "jwt_jwks_url": jwks.url,
        "jwt_cookie": SESSION,
        "workspace_claim": "org_id",
        **overrides,
    }


async def assert_refused(
    client: httpx.AsyncClient, headers: dict[str, str], *, secret: str | None = None
) -> str:
    """Every route family answers 401 in its own shape, none showing ``secret``; the v1
    message, which says why."""
    v1 = await client.get("/v1/jobs", headers=headers)
    assert v1.status_code == 401, v1.text
    assert v1.headers["www-authenticate"].startswith("Bearer")
    assert v1.json()["error"]["code"] == "unauthorized"
    status = await client.get("/api/jobs/some-job/status", headers=headers)
    assert (status.status_code, status.json()) == (401, UNAUTHENTICATED)
    abort = await client.post("/api/jobs/some-job/abort", headers=headers)
    assert (abort.status_code, abort.json()) == (401, {**UNAUTHENTICATED, "aborted": False})
    stream = await client.post("/api/openrouter/stream", json=SEED_BODY, headers=headers)
    assert (stream.status_code, stream.json()) == (
        401,
        {"error": "Authentication required for background streaming"},
    )
    if secret is not None:
        for response in (v1, status, abort, stream):
            assert secret not in response.text
    message: str = v1.json()["error"]["message"]
    return message


async def test_a_session_cookie_from_the_providers_jwks_opens_the_seed_routes(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("hang", Script.stream().content("so far").hang())
    async with (
        JwksServer.serve(PROVIDER_KEY) as jwks,
        open_api_server(**fake_settings(fake_upstream), **provider_settings(jwks)) as server,
        server.client() as client,
    ):
        assert server.tokens is None  # nothing here can mint the provider's tokens
        member = session(PROVIDER_KEY.sign(claims("user_1", org_id="org_1")))
        started = await client.post("/api/openrouter/stream", json=SEED_BODY, headers=member)
        assert started.status_code == 200, started.text
        url = f"/api/jobs/{started.json()['jobId']}"

        status = await client.get(f"{url}/status", headers=member)
        assert status.status_code == 200
        assert status.json()["status"] == "streaming"
        # The workspace is the organisation; the same user outside it is someone else.
        for elsewhere in (claims("user_1", org_id="org_2"), claims("user_1")):
            other = await client.get(f"{url}/status", headers=session(PROVIDER_KEY.sign(elsewhere)))
            assert other.status_code == 404

        aborted = await client.post(f"{url}/abort", headers=member)
        assert aborted.json() == {"aborted": True}
        assert jwks.fetches == 1


async def test_a_token_without_an_organisation_works_in_the_users_own_workspace(
    open_api_server: OpenApiServer,
) -> None:
    async with (
        JwksServer.serve(PROVIDER_KEY) as jwks,
        open_api_server(**provider_settings(jwks)) as server,
        server.client() as client,
    ):
        personal = bearer(PROVIDER_KEY.sign(claims("user_1")))
        created = await client.post("/v1/jobs", json=chat_body(), headers=personal)
        assert created.status_code == 202, created.text
        as_org = bearer(PROVIDER_KEY.sign(claims("user_1", org_id="user_1")))
        same = await client.get(f"/v1/jobs/{created.json()['id']}", headers=as_org)
        assert same.status_code == 200


async def test_a_rotated_in_key_is_fetched_and_refetches_are_rate_limited(
    open_api_server: OpenApiServer,
) -> None:
    interval = 1.0
    settings = {"jwt_jwks_refetch_interval": interval}
    async with (
        JwksServer.serve(PROVIDER_KEY) as jwks,
        open_api_server(**provider_settings(jwks, **settings)) as server,
        server.client() as client,
    ):
        first = await client.get("/v1/jobs", headers=session(PROVIDER_KEY.sign(claims())))
        assert first.status_code == 200
        fetched_at = trio.current_time()
        jwks.keys.append(ROTATED_KEY.jwk())

        # Made-up kids within the interval: refused, and the provider is not asked.
        for n in range(10):
            made_up = SigningKey(f"made-up-{n}", "RS256", FORGER_KEY.private)
            token = made_up.sign(claims())
            message = await assert_refused(client, session(token), secret=token)
            assert message == "invalid token: unknown signing key"
        assert trio.current_time() < fetched_at + interval, "the test ran too slowly"
        assert jwks.fetches == 1

        await trio.sleep_until(fetched_at + interval)
        rotated = await client.get("/v1/jobs", headers=session(ROTATED_KEY.sign(claims())))
        assert rotated.status_code == 200, rotated.text
        assert jwks.fetches == 2


async def test_concurrent_requests_with_a_new_key_share_one_fetch(
    open_api_server: OpenApiServer,
) -> None:
    async with (
        JwksServer.serve(PROVIDER_KEY) as jwks,
        open_api_server(**provider_settings(jwks)) as server,
        server.client() as client,
    ):
        jwks.delay = 0.3
        statuses: list[int] = []

        async def ask(user: str) -> None:
            token = PROVIDER_KEY.sign(claims(user))
            statuses.append((await client.get("/v1/jobs", headers=session(token))).status_code)

        async with trio.open_nursery() as nursery:
            for n in range(10):
                nursery.start_soon(ask, f"user_{n}")
        assert statuses == [200] * 10
        assert jwks.fetches == 1


async def test_a_jwks_that_cannot_be_fetched_is_401_and_a_warning(
    open_api_server: OpenApiServer,
) -> None:
    interval = 0.2
    async with (
        JwksServer.serve(PROVIDER_KEY) as jwks,
        open_api_server(**provider_settings(jwks, jwt_jwks_refetch_interval=interval)) as server,
        server.client() as client,
    ):
        jwks.status = 503
        token = PROVIDER_KEY.sign(claims())
        with capture_logs() as logged:
            message = await assert_refused(client, session(token), secret=token)
        assert message == "the auth provider's signing keys are unavailable"
        failures = [entry for entry in logged if entry["event"] == "jwks fetch failed"]
        assert failures == [
            {
                "event": "jwks fetch failed",
                "log_level": "warning",
                "url": jwks.url,
                "reason": "HTTP 503",
            }
        ]
        assert token not in repr(logged)

        jwks.status = 200
        await trio.sleep(interval)
        recovered = await client.get("/v1/jobs", headers=session(token))
        assert recovered.status_code == 200


def bad_tokens() -> dict[str, tuple[str, str]]:
    """Tokens the provider's server must refuse, by what is wrong, with the reason it gives."""
    now = int(time.time())
    no_kid = jwt.encode(claims(), PROVIDER_KEY.private, algorithm="RS256")
    no_exp = {key: value for key, value in claims().items() if key != "exp"}
    # An RS256 token naming the provider's EC key: a key of the wrong type.
    wrong_type = SigningKey(EC_KEY.kid, "RS256", FORGER_KEY.private)
    return {
        "forged": (FORGER_KEY.sign(claims()), "invalid token: bad signature"),
        "expired": (PROVIDER_KEY.sign(claims(exp=now - 120)), "token expired"),
        "not yet valid": (PROVIDER_KEY.sign(claims(nbf=now + 600)), "token not yet valid"),
        "issued in the future": (PROVIDER_KEY.sign(claims(iat=now + 600)), "token not yet valid"),
        "wrong issuer": (
            PROVIDER_KEY.sign(claims(iss="https://evil.example")),
            "invalid token: wrong issuer",
        ),
        "wrong audience": (
            PROVIDER_KEY.sign(claims(aud="another-app")),
            "invalid token: wrong audience",
        ),
        "no audience": (PROVIDER_KEY.sign(claims()), "invalid token: no aud claim"),
        "alg none": (
            jwt.encode(claims(aud="troupe"), None, "none", headers={"kid": PROVIDER_KEY.kid}),
            "invalid token: its algorithm is not accepted",
        ),
        "HS256 with the public key": (
            hs256_with_public_key(PROVIDER_KEY, claims(aud="troupe")),
            "invalid token: its algorithm is not accepted",
        ),
        "key of the wrong type": (
            wrong_type.sign(claims(aud="troupe")),
            "invalid token: no signing key of its algorithm",
        ),
        "no kid": (no_kid, "invalid token: it names no signing key (kid)"),
        "no exp": (PROVIDER_KEY.sign({**no_exp, "aud": "troupe"}), "invalid token: no exp claim"),
        "empty organisation": (
            PROVIDER_KEY.sign(claims(aud="troupe", org_id="")),
            "the org_id claim must be a non-empty string",
        ),
    }


async def test_bad_tokens_are_refused_in_the_header_and_in_the_cookie(
    open_api_server: OpenApiServer,
) -> None:
    async with JwksServer.serve(PROVIDER_KEY, EC_KEY) as jwks:
        settings = provider_settings(jwks, jwt_issuer=ISSUER, jwt_audience="troupe")
        async with open_api_server(**settings) as server, server.client() as client:
            good = PROVIDER_KEY.sign(claims(aud="troupe"))
            assert (await client.get("/v1/jobs", headers=session(good))).status_code == 200
            assert (await client.get("/v1/jobs", headers=bearer(good))).status_code == 200

            for why, (token, reason) in bad_tokens().items():
                for headers in (
                    bearer(token),
                    session(token),
                    # A bad token in the header is refused even with a good cookie.
                    {**bearer(token), **session(good)},
                ):
                    assert await assert_refused(client, headers, secret=token) == reason, why
            assert jwks.fetches == 1


async def test_a_pem_public_key_checks_tokens_without_a_jwks(
    open_api_server: OpenApiServer,
) -> None:
    for key in (PROVIDER_KEY, EC_KEY):
        settings = {"jwt_secret": None, "jwt_public_key": key.pem(), "jwt_cookie": SESSION}
        async with open_api_server(**settings) as server, server.client() as client:
            assert server.tokens is None
            good = key.sign(claims())
            assert (await client.get("/v1/jobs", headers=bearer(good))).status_code == 200
            assert (await client.get("/v1/jobs", headers=session(good))).status_code == 200

            other = EC_KEY if key is PROVIDER_KEY else PROVIDER_KEY
            refused = {
                "another key type": (other.sign(claims()), "no signing key of its algorithm"),
                "HS256 with the public key": (
                    hs256_with_public_key(key, claims()),
                    "its algorithm is not accepted",
                ),
                "forged": (FORGER_KEYS[key].sign(claims()), "bad signature"),
            }
            for why, (token, reason) in refused.items():
                message = await assert_refused(client, session(token), secret=token)
                assert message == f"invalid token: {reason}", why


async def test_an_es256_provider_key_from_the_jwks_is_accepted(
    open_api_server: OpenApiServer,
) -> None:
    async with (
        JwksServer.serve(EC_KEY) as jwks,
        open_api_server(**provider_settings(jwks)) as server,
        server.client() as client,
    ):
        response = await client.get("/v1/jobs", headers=session(EC_KEY.sign(claims())))
        assert response.status_code == 200, response.text


async def test_trusted_headers_name_the_caller_when_the_peer_is_a_trusted_proxy(
    open_api_server: OpenApiServer,
) -> None:
    async with (
        open_api_server(auth_mode="trusted_headers") as server,
        server.client() as client,
    ):
        assert server.tokens is None
        alice = {"X-User-Id": "alice", "X-Workspace-Id": "w1"}
        created = await client.post("/v1/jobs", json=chat_body(), headers=alice)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        status = await client.get(f"/api/jobs/{job_id}/status", headers=alice)
        assert status.status_code == 200

        # Without a workspace header (or with an empty one) the workspace is the user's.
        for own in ({"X-User-Id": "alice"}, {"X-User-Id": "alice", "X-Workspace-Id": ""}):
            elsewhere = await client.get(f"/api/jobs/{job_id}/status", headers=own)
            assert elsewhere.status_code == 404

        for missing in ({}, {"X-Workspace-Id": "w1"}, {"X-User-Id": ""}):
            message = await assert_refused(client, missing)
            assert message == "the x-user-id header must be a non-empty string"
        too_long = await assert_refused(client, {"X-User-Id": "a" * 201})
        assert too_long == "the x-user-id header is longer than 200 characters"


async def test_trusted_headers_from_a_peer_outside_the_trusted_proxies_are_401(
    open_api_server: OpenApiServer,
) -> None:
    settings = {"auth_mode": "trusted_headers", "trusted_proxies": ("10.0.0.0/8",)}
    async with open_api_server(**settings) as server, server.client() as client:
        alice = {"X-User-Id": "alice", "X-Workspace-Id": "w1"}
        assert await assert_refused(client, alice) == "the caller is not a trusted proxy"


async def test_the_seed_route_sends_the_users_own_bearer_key_upstream_and_never_shows_it(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("hang", Script.stream().content("thinking").hang())
    settings = fake_settings(fake_upstream, jwt_cookie=SESSION)
    with capture_logs() as logged:
        async with open_api_server(**settings) as server, server.client() as client:
            headers = {**session(server.token()), **bearer(USER_KEY)}
            started = await client.post("/api/openrouter/stream", json=SEED_BODY, headers=headers)
            assert started.status_code == 200, started.text
            job_id = started.json()["jobId"]
            await wait_for_status(client, job_id, server.auth(), ("streaming",))
            assert fake_upstream.requests[-1].headers["authorization"] == f"Bearer {USER_KEY}"

            seen = [
                await client.get(f"/api/jobs/{job_id}/status", headers=session(server.token())),
                await client.get(f"/v1/jobs/{job_id}", headers=server.auth()),
                await client.get("/v1/system/actors", headers=server.auth(admin=True)),
            ]
            assert [response.status_code for response in seen] == [200, 200, 200]
            assert "service/streams/" in seen[2].text  # the stream holding the key is listed
            for response in seen:
                assert USER_KEY not in response.text
    assert any(entry["event"] == "request" for entry in logged)
    assert USER_KEY not in repr(logged)


async def test_the_seed_route_uses_the_server_key_for_a_user_key_it_does_not_allow(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("m", Script.text("Hello"))
    settings = fake_settings(fake_upstream, jwt_cookie=SESSION, allow_user_api_keys=False)
    async with open_api_server(**settings) as server, server.client() as client:
        headers = {**session(server.token()), **bearer(USER_KEY)}
        body = {**SEED_BODY, "model": "m"}
        started = await client.post("/api/openrouter/stream", json=body, headers=headers)
        assert started.status_code == 200, started.text
        await wait_for_status(client, started.json()["jobId"], server.auth())
        assert fake_upstream.requests[-1].headers["authorization"] == f"Bearer {SERVER_API_KEY}"

        # The v1 API says no instead.
        v1 = await client.post(
            "/v1/jobs", json=chat_body(), headers={**server.auth(), "X-Upstream-Api-Key": USER_KEY}
        )
        assert v1.status_code == 403


async def test_a_real_upstream_with_no_key_anywhere_is_401_missing_key(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("m", Script.text("Hello"))
    settings = fake_settings(fake_upstream, jwt_cookie=SESSION, upstream_api_key=None)
    async with open_api_server(**settings) as server, server.client() as client:
        body = {**SEED_BODY, "model": "m"}
        cookie = session(server.token())
        missing = await client.post("/api/openrouter/stream", json=body, headers=cookie)
        assert (missing.status_code, missing.json()) == (
            401,
            {"error": "Missing OpenRouter API key"},
        )
        assert fake_upstream.requests == []

        own = await client.post(
            "/api/openrouter/stream", json=body, headers={**cookie, **bearer(USER_KEY)}
        )
        assert own.status_code == 200, own.text
        await wait_for_status(client, own.json()["jobId"], server.auth())
        assert fake_upstream.requests[-1].headers["authorization"] == f"Bearer {USER_KEY}"
