"""Bad tokens against real servers: every one gets 401, fast, and lets no one in.

Three servers, one per way of checking tokens: an HMAC secret (``HS256``), a PEM public
key (``RS256``) and an auth provider's JWKS (``RS256`` by ``kid``), each with the seed
app's session cookie enabled. Against each, a corpus of tokens that must not open
anything: forged (another key, a stripped, flipped or borrowed signature, an embedded
or remote key, a made-up ``kid``), expired, not yet valid, of a wrong algorithm
(``none`` in any case, ``HS512``, ``PS256``, and both directions of the RS/HS
confusion), with bad claims, oversized and malformed. Each goes as ``Authorization:
Bearer`` and as the session cookie (and, when it looks like a JWT, as a Bearer beside a
good cookie), to the v1 and the seed routes, with the victim's real job in the path.

Every answer must be 401 in the route family's error shape, name no token, and come
within :data:`SLOWEST`; the median within :data:`MEDIAN`. Afterwards the victim's job
still streams and nobody has a job they did not make. A token past the server's 16 KiB
request head (1 MB) is refused by the HTTP layer as 431, as fast.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import attrs
import httpx
import jwt
import orjson
import trio

from actors.http.auth import jwt_header
from tests.fake_upstream import FakeUpstream, Script
from tests.http.conftest import ApiServer, chat_body, make_config, run_api_server
from tests.http.jwks import JwksServer, SigningKey, hs256_with_public_key
from tests.http.test_api_fuzz import error_shape_problem, expected_error_shape
from tests.reliability.figures import Figure, Figures, sized
from tests.reliability.test_hostile_requests import Probe, raw_exchange

SLOWEST: Final = 0.5
"""Seconds the slowest refusal may take: 100 ms is plenty on an idle machine."""
MEDIAN: Final = 0.05
SECRET: Final = "tokens-test-secret-0123456789abcdef-0123456789"
SESSION: Final = "__session"
VICTIM: Final = ("alice", "w1")
ROUNDS: Final = sized(1, 5)
"""How many times the corpus goes to each server (the expiry times move each round)."""
ROUTES_PER_TOKEN: Final = sized(3, 10)
"""Each bad token goes to this many of the ten routes, a different few for each token:
all of them under ``make soak``."""

PROVIDER = SigningKey.rsa("provider-1")
ATTACKER = SigningKey.rsa("provider-1")  # another key under the provider's kid
ATTACKER_EC = SigningKey.ec("attacker-ec")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs_token(
    payload: bytes | dict[str, Any], secret: str, *, algorithm: str = "HS256", **header: Any
) -> str:
    """A token whose signature is an HMAC (SHA-256, or SHA-512 for ``HS512``) with
    ``secret``, over exactly these bytes.

    Written by hand so that any header and any payload, even one that is not JSON,
    can be signed with any secret; PyJWT would refuse (or warn about) some of them.
    """
    head = {"alg": algorithm, "typ": "JWT", **header}
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    signing_input = f"{_b64(orjson.dumps(head))}.{_b64(body)}"
    digest = hashlib.sha512 if algorithm == "HS512" else hashlib.sha256
    mac = hmac.new(secret.encode(), signing_input.encode(), digest).digest()
    return f"{signing_input}.{_b64(mac)}"


def rs_token(
    payload: bytes | dict[str, Any], key: SigningKey, algorithm: str = "RS256", **header: Any
) -> str:
    """A token signed with ``key`` over exactly these payload bytes, with any header
    (PyJWT would refuse to write some of them, such as a ``kid`` that is a number)."""
    head = {"alg": algorithm, "typ": "JWT", "kid": key.kid, **header}
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    signing_input = f"{_b64(orjson.dumps(head))}.{_b64(body)}"
    signer = jwt.get_algorithm_by_name(algorithm)
    return f"{signing_input}.{_b64(signer.sign(signing_input.encode(), key.private))}"


def unsigned(payload: dict[str, Any], alg: str) -> str:
    """``alg: none`` (in any spelling), with no signature."""
    return f"{_b64(orjson.dumps({'alg': alg, 'typ': 'JWT'}))}.{_b64(orjson.dumps(payload))}."


def claims(**changes: Any) -> dict[str, Any]:
    """The victim's claims, valid for 10 minutes; ``changes`` override (None drops one)."""
    now = int(time.time())
    base = {"sub": VICTIM[0], "workspace": VICTIM[1], "iat": now, "exp": now + 600}
    merged = {**base, **changes}
    return {key: value for key, value in merged.items() if value is not None}


@attrs.frozen
class Scheme:
    """How one server checks tokens: ``sign`` makes a valid one from payload bytes or
    claims (with extra header fields), ``forge`` one signed with a key it does not hold."""

    name: str
    sign: Callable[..., str]
    forge: Callable[..., str]


def bad_tokens(scheme: Scheme) -> dict[str, str]:
    """Tokens ``scheme``'s server must refuse, by what is wrong with them."""
    now = int(time.time())
    good = scheme.sign(claims())
    head, payload, signature = good.split(".")
    admin = _b64(orjson.dumps(claims(admin=True)))
    bobs = scheme.sign(claims(sub="bob"))
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    tokens = {
        # forged
        "signed with another key": scheme.forge(claims()),
        "admin claim, signed with another key": scheme.forge(claims(admin=True)),
        "signature stripped": f"{head}.{payload}.",
        "signature flipped": f"{head}.{payload}.{flipped}",
        "signature truncated": f"{head}.{payload}.{signature[:10]}",
        "payload swapped for an admin one": f"{head}.{admin}.{signature}",
        "signature of another user's token": f"{head}.{payload}.{bobs.split('.')[2]}",
        "embedded jwk": rs_token(claims(), ATTACKER, jwk=ATTACKER.jwk()),
        "remote key (jku)": rs_token(claims(), ATTACKER, jku="http://127.0.0.1:9/jwks.json"),
        "remote key (x5u)": rs_token(claims(), ATTACKER, x5u="http://127.0.0.1:9/cert.pem"),
        "kid path traversal": hs_token(claims(), "", kid="../../../../dev/null"),
        "kid injection": hs_token(claims(), "x", kid="' OR '1'='1"),
        # times
        "expired an hour ago": scheme.sign(claims(exp=now - 3600)),
        "expired past the leeway": scheme.sign(claims(exp=now - 120)),
        "expired in 1970": scheme.sign(claims(exp=1)),
        "not yet valid": scheme.sign(claims(nbf=now + 600)),
        "issued in the future": scheme.sign(claims(iat=now + 600)),
        "no exp": scheme.sign(claims(exp=None)),
        "exp not a number": scheme.sign(claims(exp="tomorrow")),
        "exp infinite": scheme.sign(b'{"sub": "alice", "workspace": "w1", "exp": 1e400}'),
        "exp NaN": scheme.sign(b'{"sub": "alice", "workspace": "w1", "exp": NaN}'),
        "nbf infinite": scheme.sign(
            f'{{"sub": "alice", "exp": {now + 600}, "nbf": Infinity}}'.encode()
        ),
        # wrong algorithm
        "alg none": unsigned(claims(), "none"),
        "alg None": unsigned(claims(), "None"),
        "alg NONE": unsigned(claims(), "NONE"),
        "alg nOnE": unsigned(claims(), "nOnE"),
        "alg none with a signature": unsigned(claims(), "none") + signature,
        "HS512": _hs512(claims()),
        "PS256": rs_token(claims(), PROVIDER, "PS256"),
        "RS512": rs_token(claims(), PROVIDER, "RS512"),
        "ES256 of an unknown key": rs_token(claims(), ATTACKER_EC, "ES256"),
        "HS256 keyed with the public PEM": hs256_with_public_key(PROVIDER, claims()),
        "critical extension": scheme.sign(claims(), crit=["x-unknown"], **{"x-unknown": 1}),
        "unencoded payload (b64 false)": scheme.sign(claims(), b64=False, crit=["b64"]),
        "kid a number": scheme.sign(claims(), kid=5),
        # claims
        "sub a number": scheme.sign(claims(sub=42)),
        "sub empty": scheme.sign(claims(sub="")),
        "sub blank": scheme.sign(claims(sub="   ")),
        "sub too long": scheme.sign(claims(sub="a" * 201)),
        "no sub": scheme.sign(claims(sub=None)),
        "workspace a list": scheme.sign(claims(workspace=["w1"])),
        "payload a list": scheme.sign(b'["alice"]'),
        "payload a string": scheme.sign(b'"alice"'),
        "payload not JSON": scheme.sign(b"alice"),
        # oversized (the HTTP layer takes heads up to 16 KiB)
        "12 KB, signed with another key": scheme.forge(claims(pad="p" * 9_000)),
        "12 KB header": scheme.forge(claims(), pad="p" * 9_000),
        # malformed
        "two segments": f"{head}.{payload}",
        "four segments": f"{good}.{signature}",
        "five segments (JWE)": f"{good}.{payload}.{signature}",
        "empty segments": "..",
        "header not base64": f"!!!.{payload}.{signature}",
        "header not JSON": f"{_b64(b'not json')}.{payload}.{signature}",
        "header a list": f"{_b64(b'[1]')}.{payload}.{signature}",
        "header without alg": f"{_b64(b'{}')}.{payload}.{signature}",
        "alg a number": f"{_b64(orjson.dumps({'alg': 256}))}.{payload}.{signature}",
        "payload not base64": f"{head}.%%%.{signature}",
        "standard base64": f"{head}+/.{payload}.{signature}",
        "with a space": f"{head}. {payload}.{signature}",
        "non-ASCII": f"{head}.\u00e9\u00e9.{signature}",
        "just dots": "...",
    }
    if scheme.name.startswith("HS"):
        # The provider's own key and algorithm, at a server that takes only HMAC.
        tokens["RS256 at an HMAC server"] = rs_token(claims(), PROVIDER)
    return tokens


def _hs512(payload: dict[str, Any]) -> str:
    """``HS512`` with the server's own secret: a right key, an algorithm it does not take."""
    return hs_token(payload, SECRET, algorithm="HS512")


def _authorizations(good: str) -> dict[str, str]:
    """Authorization values that carry no token at all, or one in the wrong scheme."""
    return {
        "empty Authorization": "",
        "Bearer alone": "Bearer",
        "Basic": "Basic YWxpY2U6cGFzc3dvcmQ=",
        "Token scheme": f"Token {good}",
        "two tokens": f"Bearer {good} {good}",
        "Bearer with a tab": f"Bearer\t{good}",
    }


# -- servers --------------------------------------------------------------------------


@asynccontextmanager
async def token_servers(
    tmp_path: Path, fake: FakeUpstream
) -> AsyncIterator[list[tuple[Scheme, ApiServer]]]:
    """The three servers, each with the session cookie, streaming from ``fake``."""
    common = {
        "upstream": "openai",
        "upstream_base_url": fake.base_url,
        "upstream_api_key": "sk-tokens-test",
        "jwt_cookie": SESSION,
        "store": "memory",
        # The victim's job streams (silently) for the whole corpus, soak size too.
        "upstream_idle_timeout": 3600.0,
        "job_timeout": 3600.0,
    }
    hmac_scheme = Scheme(
        "HS256 secret",
        lambda payload, **header: hs_token(payload, SECRET, **header),
        lambda payload, **header: hs_token(payload, SECRET[::-1], **header),
    )
    rsa_scheme = Scheme(
        "RS256 PEM",
        lambda payload, **header: rs_token(payload, PROVIDER, **header),
        lambda payload, **header: rs_token(payload, ATTACKER, **header),
    )
    jwks_scheme = attrs.evolve(rsa_scheme, name="RS256 JWKS")
    async with JwksServer.serve(PROVIDER) as jwks:
        pem = {"jwt_secret": None, "jwt_public_key": PROVIDER.pem()}
        provider = {"jwt_secret": None, "jwt_jwks_url": jwks.url}
        async with (
            run_api_server(make_config(tmp_path / "hs", **common, jwt_secret=SECRET)) as hs,
            run_api_server(make_config(tmp_path / "rs", **common, **pem)) as rs,
            run_api_server(make_config(tmp_path / "jwks", **common, **provider)) as jw,
        ):
            opened = time.monotonic()
            yield [(hmac_scheme, hs), (rsa_scheme, rs), (jwks_scheme, jw)]
            # Made-up kids never make the server hammer the provider: the first fetch,
            # then at most one a refetch interval.
            interval = jw.config.jwt_jwks_refetch_interval
            assert jwks.fetches <= 2 + (time.monotonic() - opened) / interval, jwks.fetches


# -- the corpus ---------------------------------------------------------------------------


@attrs.define
class Tally:
    """What the corpus met: requests tried, refusals that let someone in or came in the
    wrong form, and every refusal's time."""

    tried: int = 0
    turn: int = 0
    """Where the next token's routes start in the list of routes."""
    slowest: tuple[float, str] = (0.0, "")
    let_in: list[str] = attrs.Factory(list)
    wrong: list[str] = attrs.Factory(list)
    seconds: list[float] = attrs.Factory(list)


def _routes(job_id: str) -> list[tuple[str, str, Any]]:
    seed = {
        "model": "victim",
        "messages": [{"role": "user", "content": "hi"}],
        "_background": True,
        "_threadId": "t",
        "_messageId": "m",
    }
    return [
        ("GET", "/v1/jobs", None),
        ("POST", "/v1/jobs", chat_body(model="victim")),
        ("GET", f"/v1/jobs/{job_id}", None),
        ("GET", f"/v1/jobs/{job_id}/events", None),
        ("POST", f"/v1/jobs/{job_id}/abort", None),
        ("GET", "/v1/notifications", None),
        ("GET", "/v1/system/actors", None),
        ("POST", "/api/openrouter/stream", seed),
        ("GET", f"/api/jobs/{job_id}/status", None),
        ("POST", f"/api/jobs/{job_id}/abort", None),
    ]


async def _refused(
    client: httpx.AsyncClient,
    why: str,
    headers: dict[str, bytes] | list[tuple[bytes, bytes]],
    token: str,
    job_id: str,
    tally: Tally,
) -> None:
    """Each of the routes ``tally`` is due to try next refuses ``headers``: 401, its
    family's shape, no token shown, fast."""
    routes = _routes(job_id)
    tally.turn = start = (tally.turn + 1) % len(routes)
    for method, path, body in (routes * 2)[start : start + ROUTES_PER_TOKEN]:
        started = time.perf_counter()
        # Streamed: a token let in on an event stream would otherwise wait for its end.
        async with client.stream(method, path, headers=headers, json=body) as response:
            if response.status_code == 401:
                await response.aread()
        tally.seconds.append(time.perf_counter() - started)
        tally.tried += 1
        where = f"{why} on {method} {path}"
        tally.slowest = max(tally.slowest, (tally.seconds[-1], where))
        if response.status_code != 401:
            (tally.let_in if response.status_code < 400 else tally.wrong).append(
                f"{where}: {response.status_code}"
            )
            continue
        shape = expected_error_shape(method, str(response.request.url))
        problem = error_shape_problem(401, response.content, shape)
        if problem is not None:
            tally.wrong.append(f"{where}: {problem}")
        if shape == "v1" and not response.headers.get("www-authenticate", "").startswith("Bearer"):
            tally.wrong.append(f"{where}: no WWW-Authenticate")
        if len(token) > 8 and token in response.text:
            tally.wrong.append(f"{where}: the token is in the answer")


async def run_corpus(scheme: Scheme, server: ApiServer, job_id: str, tally: Tally) -> None:
    good = scheme.sign(claims())
    cookie_good = {"Cookie": f"{SESSION}={good}".encode()}
    async with server.client() as client:
        # The good token opens what the bad ones must not: the victim's job, say.
        seen = await client.get(
            f"/api/jobs/{job_id}/status", headers={"Cookie": cookie_good["Cookie"]}
        )
        assert seen.status_code == 200, (scheme.name, seen.text)
        for why, token in bad_tokens(scheme).items():
            encoded = token.encode("utf-8")
            forms: list[dict[str, bytes]] = [
                {"Authorization": b"Bearer " + encoded},
                {"Cookie": f"{SESSION}=".encode() + encoded},
            ]
            if jwt_header(token) is not None:
                # A bad token in Authorization is refused even beside a good cookie.
                forms.append({"Authorization": b"Bearer " + encoded, **cookie_good})
            for headers in forms:
                await _refused(client, f"{scheme.name}: {why}", headers, token, job_id, tally)
        for why, value in _authorizations(good).items():
            headers = {"Authorization": value.encode()}
            await _refused(client, f"{scheme.name}: {why}", headers, good, job_id, tally)


async def refuse_doubled_identities(tmp_path: Path, fake: FakeUpstream, tally: Tally) -> None:
    """Behind a gateway (``trusted_headers``), a user or workspace header given twice is
    refused: a gateway that appends its header to the client's own would otherwise let
    the client pick who it is."""
    config = make_config(
        tmp_path / "trusted",
        store="memory",
        upstream="openai",
        upstream_base_url=fake.base_url,
        upstream_api_key="sk-tokens-test",
        jwt_secret=None,
        auth_mode="trusted_headers",
    )
    async with run_api_server(config) as server, server.client() as client:
        victim = {"X-User-Id": VICTIM[0], "X-Workspace-Id": VICTIM[1]}
        created = await client.post("/v1/jobs", json=chat_body(model="victim"), headers=victim)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        doubled = {
            "user header twice": [("X-User-Id", "mallory"), ("X-User-Id", VICTIM[0])],
            "workspace header twice": [
                ("X-User-Id", VICTIM[0]),
                ("X-Workspace-Id", "elsewhere"),
                ("X-Workspace-Id", VICTIM[1]),
            ],
        }
        for why, pairs in doubled.items():
            headers = [(name.encode(), value.encode()) for name, value in pairs]
            await _refused(client, f"trusted headers: {why}", headers, "", job_id, tally)
        assert (await client.get(f"/v1/jobs/{job_id}", headers=victim)).status_code == 200


async def test_bad_tokens_get_401_fast_and_open_nothing(tmp_path: Path, figures: Figures) -> None:
    tally = Tally()
    oversized: list[float] = []
    async with FakeUpstream.serve() as fake:
        fake.script("victim", Script.stream().content("the victim's answer").hang())
        async with token_servers(tmp_path, fake) as servers:
            jobs: list[str] = []
            for scheme, server in servers:
                async with server.client() as client:
                    own = {"Authorization": f"Bearer {scheme.sign(claims())}"}
                    created = await client.post(
                        "/v1/jobs", json=chat_body(model="victim"), headers=own
                    )
                    assert created.status_code == 202, created.text
                    jobs.append(created.json()["id"])
            for _ in range(ROUNDS):
                for (scheme, server), job_id in zip(servers, jobs, strict=True):
                    await run_corpus(scheme, server, job_id, tally)
                    # A megabyte of token, as Bearer and as cookie: the HTTP layer says 431.
                    megabyte = scheme.forge(claims(pad="p" * 1_000_000))
                    for header in (f"Bearer {megabyte}", f"{SESSION}={megabyte}"):
                        name = "Authorization" if header.startswith("Bearer") else "Cookie"
                        probe = Probe(
                            "oversized", "GET", f"/api/jobs/{job_id}/status", ((name, header),)
                        )
                        with trio.fail_after(10):
                            answer = await raw_exchange(server.base_url, probe, {})
                        oversized.append(answer.seconds)
                        tally.tried += 1
                        if answer.status not in (401, 431):
                            tally.let_in.append(f"1 MB {name}: {answer.status}")
            await refuse_doubled_identities(tmp_path, fake, tally)
            for (scheme, server), job_id in zip(servers, jobs, strict=True):
                async with server.client() as client:
                    own = {"Authorization": f"Bearer {scheme.sign(claims())}"}
                    job = (await client.get(f"/v1/jobs/{job_id}", headers=own)).json()
                    if job["status"] != "streaming":
                        tally.let_in.append(f"{scheme.name}: the victim's job {job['status']}")
                    listed = (await client.get("/v1/jobs", headers=own)).json()["jobs"]
                    if [j["id"] for j in listed] != [job_id]:
                        tally.let_in.append(f"{scheme.name}: the victim has jobs {listed}")

    slowest = max(tally.seconds + oversized)
    median = statistics.median(tally.seconds)
    print(
        f"\ntokens: {tally.tried} bad tokens and headers tried on {len(servers)} servers; "
        f"median {median * 1000:.1f} ms, slowest {slowest * 1000:.1f} ms "
        f"({tally.slowest[1]}: {tally.slowest[0] * 1000:.1f} ms)"
    )
    figures.record(
        Figure(
            test="tokens",
            injected="forged, expired, not-yet-valid, alg none / HS-RS confusion, bad-claim, "
            "oversized and malformed tokens, as Bearer and as cookie, on v1 and seed routes "
            "(HS256, RS256 PEM and JWKS servers); identity headers given twice",
            times=tally.tried,
            jobs=len(jobs),
            lost=len(tally.let_in),
            what_lost="tokens let in",
        )
    )
    assert not tally.let_in, "\n".join(tally.let_in[:40])
    assert not tally.wrong, "\n".join(tally.wrong[:40])
    assert slowest < SLOWEST, slowest
    assert median < MEDIAN, median
