"""The keys that check a token's signature, by the token's ``kid`` and algorithm.

Three sources: an HMAC secret and a PEM public key (:class:`StaticKeys`), and an
auth provider's JWKS (:class:`JwksKeys`), fetched with httpx and cached by ``kid``.
Only keys of the kind an algorithm needs are ever offered for it, so a token cannot
choose how it is checked: no public key serves as an HMAC secret, no RSA key checks
an ``ES256`` signature.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final, Protocol, final

import httpx
import jwt
import orjson
import structlog
import trio
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from actors.config import ConfigError
from actors.http.auth.principal import AuthError

__all__ = ["JwksKeys", "KeySource", "StaticKeys", "key_fits", "public_keys"]

log = structlog.get_logger("troupe.auth")

_CURVES: Final = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}

JWKS_FETCH_TIMEOUT: Final = 5.0
JWKS_MAX_AGE: Final = 3600.0
"""How long a fetched key set is trusted before the next token makes it fetched again,
so that a key the provider withdrew stops being accepted."""
"""Longest a JWKS fetch may take before it counts as failed (seconds)."""


class KeySource(Protocol):
    """Where the verification keys come from."""

    async def keys_for(self, kid: str | None) -> Mapping[str, Any]:
        """The keys that may check a token naming ``kid``, by algorithm.

        Raises :class:`AuthError` when there are none. A checkpoint.
        """
        ...


def key_fits(algorithm: str, key: object) -> bool:
    """Whether ``key`` (a cryptography public key) is the kind ``algorithm`` verifies with."""
    if algorithm.startswith(("RS", "PS")):
        return isinstance(key, rsa.RSAPublicKey)
    if algorithm in _CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == _CURVES[algorithm]
    if algorithm == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False


@final
class StaticKeys:
    """One key for every token, whatever its ``kid``: an HMAC secret or a PEM public key."""

    def __init__(self, by_algorithm: Mapping[str, Any]) -> None:
        self._by_algorithm = dict(by_algorithm)

    def __repr__(self) -> str:
        return f"<StaticKeys {sorted(self._by_algorithm)}>"

    async def keys_for(self, kid: str | None) -> Mapping[str, Any]:
        await trio.lowlevel.checkpoint()
        return self._by_algorithm


def public_keys(pem: str, algorithms: tuple[str, ...]) -> StaticKeys:
    """The PEM public key ``pem``, offered for those of ``algorithms`` it fits.

    Raises :class:`ConfigError` (naming ``jwt_public_key``) if it is not a PEM public
    key, or fits none of ``algorithms``.
    """
    # Deployment tools often hold a PEM on one line, with its newlines escaped.
    text = pem.replace("\\n", "\n").strip()
    try:
        key = serialization.load_pem_public_key(text.encode())
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(
            "jwt_public_key: not a PEM public key", setting="jwt_public_key"
        ) from None
    fitting = {algorithm: key for algorithm in algorithms if key_fits(algorithm, key)}
    if not fitting:
        raise ConfigError(
            f"jwt_public_key: the key fits none of the algorithms {', '.join(algorithms)}"
            " (set jwt_algorithms)",
            setting="jwt_public_key",
        )
    return StaticKeys(fitting)


class _FetchFailed(Exception):
    """The JWKS could not be fetched or read; the message says why."""


@final
class JwksKeys:
    """An auth provider's signing keys, from its JWKS URL, cached by ``kid``.

    The set is fetched when a token names a ``kid`` it does not hold (the first
    token, or one signed with a rotated-in key). Concurrent askers share one fetch;
    two fetches are at least ``min_interval`` seconds apart, so tokens with made-up
    ``kid`` values cannot make it hammer the provider: within that time an unknown
    ``kid`` is refused without asking. A set older than ``max_age`` seconds is
    fetched again at the next token, so a withdrawn key stops working. A fetch that
    fails (no answer within
    ``timeout`` seconds, a non-200 answer, not a JWK set) keeps the keys already
    held and is logged as a warning. A key that fits none of ``algorithms``, a
    private key and a key not meant for signatures are left out.
    """

    def __init__(
        self,
        url: str,
        algorithms: tuple[str, ...],
        *,
        min_interval: float = 5.0,
        max_age: float = JWKS_MAX_AGE,
        timeout: float = JWKS_FETCH_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._url = url
        self._algorithms = algorithms
        self._min_interval = min_interval
        self._max_age = max(max_age, min_interval)
        self._timeout = timeout
        self._transport = transport
        self._keys: dict[str, dict[str, Any]] = {}
        self._fetching: trio.Event | None = None
        self._fetched_at = -math.inf
        self._failed = False

    def __repr__(self) -> str:
        return f"<JwksKeys {self._url} kids={sorted(self._keys)}>"

    async def keys_for(self, kid: str | None) -> Mapping[str, Any]:
        """The keys of ``kid``, fetching the set again if it is unknown and the last
        fetch is ``min_interval`` old, or if the set is ``max_age`` old.

        Raises :class:`AuthError` if ``kid`` is None or still unknown, or the set
        cannot be fetched. Waits at most ``timeout`` seconds for the provider.
        """
        if kid is None:
            await trio.lowlevel.checkpoint()
            raise AuthError("invalid token: it names no signing key (kid)")
        found = self._keys.get(kid)
        if found is not None and trio.current_time() - self._fetched_at < self._max_age:
            await trio.lowlevel.checkpoint()
            return found
        while True:
            if self._fetching is not None:
                await self._fetching.wait()
            elif trio.current_time() - self._fetched_at >= self._min_interval:
                await self._fetch()
            else:
                await trio.lowlevel.checkpoint()
                if self._failed:
                    raise AuthError("the auth provider's signing keys are unavailable")
                raise AuthError("invalid token: unknown signing key")
            found = self._keys.get(kid)
            if found is not None:
                return found

    async def _fetch(self) -> None:
        """Fetch the set once, for every asker; on failure keep the keys held."""
        self._fetching = done = trio.Event()
        try:
            try:
                self._keys = await self._download()
                self._failed = False
            except _FetchFailed as error:
                self._failed = True
                log.warning("jwks fetch failed", url=self._url, reason=str(error))
            # Only a fetch that ended counts against the interval: after a cancelled
            # one, the next asker fetches at once.
            self._fetched_at = trio.current_time()
        finally:
            self._fetching = None
            done.set()

    async def _download(self) -> dict[str, dict[str, Any]]:
        """The usable keys of the set at the URL, by ``kid``; raises :class:`_FetchFailed`."""
        with trio.move_on_after(self._timeout):
            try:
                async with httpx.AsyncClient(
                    timeout=self._timeout, transport=self._transport
                ) as client:
                    response = await client.get(self._url, headers={"Accept": "application/json"})
            except httpx.HTTPError as error:
                raise _FetchFailed(f"{type(error).__name__}: {error}") from None
            if response.status_code != 200:
                raise _FetchFailed(f"HTTP {response.status_code}")
            try:
                document = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                raise _FetchFailed("the answer is not JSON") from None
            return self._usable(document)
        raise _FetchFailed(f"no answer within {self._timeout} s")

    def _usable(self, document: Any) -> dict[str, dict[str, Any]]:
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise _FetchFailed("the answer is not a JWK set")
        usable: dict[str, dict[str, Any]] = {}
        for jwk in document["keys"]:
            if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
                continue
            if jwk.get("use", "sig") != "sig":
                continue
            fitting: dict[str, Any] = {}
            for algorithm in self._algorithms:
                if jwk.get("alg", algorithm) != algorithm:
                    continue
                try:
                    key = jwt.PyJWK(jwk, algorithm).key
                except (jwt.PyJWTError, ValueError):
                    continue
                if key_fits(algorithm, key):
                    fitting[algorithm] = key
            if fitting:
                usable[jwk["kid"]] = fitting
        return usable
