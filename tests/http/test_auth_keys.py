"""The JWKS cache on trio's mock clock, its provider an httpx mock transport:
coalesced fetches, the refetch interval, the fetch timeout, and which keys it keeps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import jwt
import orjson
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import ec
from structlog.testing import capture_logs
from trio.testing import MockClock

from actors.config import ConfigError
from actors.http.auth import AuthError
from actors.http.auth.keys import JWKS_FETCH_TIMEOUT, JwksKeys, public_keys
from tests.http.jwks import SigningKey

URL = "https://auth.example.test/.well-known/jwks.json"
ALGORITHMS = ("RS256", "ES256")
RSA_KEY = SigningKey.rsa("rsa-1")
EC_KEY = SigningKey.ec("ec-1")


class Provider:
    """Answers each fetch with ``answer()`` after ``delay`` seconds; counts fetches."""

    def __init__(self, *keys: dict[str, Any], delay: float = 0.0) -> None:
        self.keys = list(keys)
        self.delay = delay
        self.fetches = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.fetches += 1
        await trio.sleep(self.delay)
        return httpx.Response(200, json={"keys": self.keys})

    def cache(self, *, min_interval: float = 5.0) -> JwksKeys:
        return JwksKeys(
            URL, ALGORITHMS, min_interval=min_interval, transport=httpx.MockTransport(self.handle)
        )


async def test_concurrent_askers_share_one_fetch(autojump_clock: MockClock) -> None:
    provider = Provider(RSA_KEY.jwk(), delay=1.0)
    keys = provider.cache()
    found: list[set[str]] = []

    async def ask() -> None:
        found.append(set(await keys.keys_for("rsa-1")))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(ask)
    assert found == [{"RS256"}] * 10
    assert provider.fetches == 1


async def test_an_unknown_kid_fetches_again_only_after_the_interval(
    autojump_clock: MockClock,
) -> None:
    provider = Provider(RSA_KEY.jwk())
    keys = provider.cache(min_interval=5.0)
    await keys.keys_for("rsa-1")
    fetched_at = trio.current_time()
    provider.keys.append(EC_KEY.jwk())  # the provider rotates a key in

    await trio.sleep(4.9)
    for _ in range(20):
        with pytest.raises(AuthError, match="unknown signing key"):
            await keys.keys_for("ec-1")
    assert provider.fetches == 1

    await trio.sleep_until(fetched_at + 5.0)
    assert set(await keys.keys_for("ec-1")) == {"ES256"}
    assert provider.fetches == 2
    # A known kid never fetches.
    assert set(await keys.keys_for("rsa-1")) == {"RS256"}
    assert provider.fetches == 2


async def test_a_provider_that_does_not_answer_fails_after_the_timeout(
    autojump_clock: MockClock,
) -> None:
    provider = Provider(RSA_KEY.jwk(), delay=float("inf"))
    keys = provider.cache()
    with capture_logs() as logged, pytest.raises(AuthError, match="keys are unavailable"):
        await keys.keys_for("rsa-1")
    assert trio.current_time() == JWKS_FETCH_TIMEOUT
    assert logged == [
        {
            "event": "jwks fetch failed",
            "log_level": "warning",
            "url": URL,
            "reason": f"no answer within {JWKS_FETCH_TIMEOUT} s",
        }
    ]


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (lambda request: httpx.Response(503), "HTTP 503"),
        (lambda request: httpx.Response(200, text="<html>"), "the answer is not JSON"),
        (lambda request: httpx.Response(200, json={"kids": []}), "the answer is not a JWK set"),
    ],
)
async def test_a_failed_fetch_keeps_the_keys_held_and_says_why(
    autojump_clock: MockClock, answer: Callable[[httpx.Request], httpx.Response], reason: str
) -> None:
    good = True

    def handle(request: httpx.Request) -> httpx.Response:
        if good:
            return httpx.Response(200, json={"keys": [RSA_KEY.jwk()]})
        return answer(request)

    keys = JwksKeys(URL, ALGORITHMS, min_interval=5.0, transport=httpx.MockTransport(handle))
    await keys.keys_for("rsa-1")
    good = False
    await trio.sleep(5.0)
    with capture_logs() as logged, pytest.raises(AuthError, match="unavailable"):
        await keys.keys_for("ec-1")
    assert [entry["reason"] for entry in logged] == [reason]
    assert set(await keys.keys_for("rsa-1")) == {"RS256"}


async def test_a_cancelled_fetch_does_not_hold_back_the_next(autojump_clock: MockClock) -> None:
    provider = Provider(RSA_KEY.jwk(), delay=1.0)
    keys = provider.cache(min_interval=5.0)
    with trio.move_on_after(0.5):
        await keys.keys_for("rsa-1")
    assert provider.fetches == 1
    # Not refused for the next five seconds: the cancelled fetch did not end.
    assert set(await keys.keys_for("rsa-1")) == {"RS256"}
    assert provider.fetches == 2
    assert trio.current_time() == 1.5


def _public_jwk(key: Any, **fields: Any) -> dict[str, Any]:
    algorithm = "RS256" if fields.pop("rsa", False) else "ES256"
    jwk: dict[str, Any] = orjson.loads(jwt.get_algorithm_by_name(algorithm).to_jwk(key))
    return {**jwk, **fields}


async def test_only_signing_keys_that_fit_an_allowed_algorithm_are_kept(
    autojump_clock: MockClock,
) -> None:
    other_rsa = SigningKey.rsa("unused")
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    provider = Provider(
        RSA_KEY.jwk(),
        EC_KEY.jwk(),
        {name: value for name, value in EC_KEY.jwk().items() if name != "alg"} | {"kid": "no-alg"},
        {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0", "kid": "hmac"},
        _public_jwk(other_rsa.private, rsa=True, kid="private"),
        {**other_rsa.jwk(), "kid": "encryption", "use": "enc"},
        {**other_rsa.jwk(), "kid": "labelled-es256", "alg": "ES256"},
        {**other_rsa.jwk(), "kid": "labelled-hs256", "alg": "HS256"},
        _public_jwk(p384, kid="p-384"),
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
    )
    keys = provider.cache()
    assert set(await keys.keys_for("rsa-1")) == {"RS256"}
    assert set(await keys.keys_for("ec-1")) == {"ES256"}
    assert set(await keys.keys_for("no-alg")) == {"ES256"}
    refused = ["hmac", "private", "encryption", "labelled-es256", "labelled-hs256", "p-384"]
    for kid in [*refused, "broken"]:
        with pytest.raises(AuthError, match="unknown signing key"):
            await keys.keys_for(kid)
    with pytest.raises(AuthError, match="names no signing key"):
        await keys.keys_for(None)
    assert provider.fetches == 1


async def test_a_pem_key_serves_only_the_algorithms_it_fits() -> None:
    pem = RSA_KEY.pem()
    assert set(await public_keys(pem, ALGORITHMS).keys_for(None)) == {"RS256"}
    assert set(await public_keys(EC_KEY.pem(), ALGORITHMS).keys_for("any")) == {"ES256"}
    with pytest.raises(ConfigError, match="fits none of the algorithms ES256") as refused:
        public_keys(pem, ("ES256",))
    assert refused.value.setting == "jwt_public_key"
    with pytest.raises(ConfigError, match="not a PEM public key"):
        public_keys("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----", ALGORITHMS)
    # A PEM kept on one line with escaped newlines, as deployment tools hold it.
    escaped = public_keys(pem.replace("\n", "\\n"), ALGORITHMS)
    assert set(await escaped.keys_for(None)) == {"RS256"}


async def test_a_key_set_past_its_max_age_is_fetched_again_and_a_withdrawn_key_refused(
    autojump_clock: MockClock,
) -> None:
    provider = Provider(RSA_KEY.jwk(), EC_KEY.jwk())
    keys = JwksKeys(URL, ALGORITHMS, max_age=600.0, transport=httpx.MockTransport(provider.handle))
    await keys.keys_for("rsa-1")
    provider.keys = [EC_KEY.jwk()]  # the provider withdraws the RSA key

    await trio.sleep(599.0)
    assert set(await keys.keys_for("rsa-1")) == {"RS256"}
    assert provider.fetches == 1

    await trio.sleep(1.0)
    with pytest.raises(AuthError, match="unknown signing key"):
        await keys.keys_for("rsa-1")
    assert provider.fetches == 2
    assert set(await keys.keys_for("ec-1")) == {"ES256"}
    assert provider.fetches == 2
