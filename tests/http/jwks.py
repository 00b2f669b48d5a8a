"""Signing keys of a pretend auth provider, and its JWKS served on 127.0.0.1.

- :class:`SigningKey`: an RSA (``RS256``) or EC (``ES256``) key pair with a ``kid``;
  ``sign(claims)`` makes a token, ``jwk()`` and ``pem()`` give its public half.
- :class:`JwksServer`: ``async with JwksServer.serve(key, ...) as jwks`` serves
  ``jwks.keys`` at ``jwks.url`` (hypercorn and Starlette) and counts the fetches;
  set ``keys``, ``status`` or ``delay`` to change what the next fetch gets.
- :func:`hs256_with_public_key`: a token signed with a public key's PEM as the HMAC
  secret, which PyJWT itself refuses to make (the HS/RS confusion attack).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import jwt
import orjson
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["JwksServer", "SigningKey", "claims", "hs256_with_public_key"]

ISSUER = "https://auth.example.test"


def claims(user: str = "user_1", **extra: Any) -> dict[str, Any]:
    """A session token's claims, as an auth provider issues them: valid for 10 minutes."""
    now = int(time.time())
    return {"sub": user, "iss": ISSUER, "iat": now, "nbf": now, "exp": now + 600, **extra}


@attrs.frozen
class SigningKey:
    kid: str
    algorithm: str
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    @classmethod
    def rsa(cls, kid: str) -> SigningKey:
        return cls(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def ec(cls, kid: str) -> SigningKey:
        return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    def sign(self, payload: dict[str, Any], **header: Any) -> str:
        """``payload`` signed with this key; ``header`` adds to or replaces ``kid``."""
        return jwt.encode(
            payload, self.private, algorithm=self.algorithm, headers={"kid": self.kid, **header}
        )

    def jwk(self) -> dict[str, Any]:
        """The public key as a JWK, with ``kid``, ``alg`` and ``use``."""
        algorithm = jwt.get_algorithm_by_name(self.algorithm)
        public: dict[str, Any] = orjson.loads(algorithm.to_jwk(self.private.public_key()))
        return {**public, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def pem(self) -> str:
        return (
            self.private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )


def _segment(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_with_public_key(key: SigningKey, payload: dict[str, Any]) -> str:
    """An HS256 token whose HMAC secret is ``key``'s public PEM, with ``key``'s kid."""
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    signing_input = f"{_segment(orjson.dumps(header))}.{_segment(orjson.dumps(payload))}"
    mac = hmac.new(key.pem().encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_segment(mac)}"


@attrs.define
class JwksServer:
    """A JWKS endpoint; ``fetches`` counts the requests it answered."""

    keys: list[dict[str, Any]]
    status: int = 200
    delay: float = 0.0
    fetches: int = 0
    url: str = ""

    @classmethod
    @asynccontextmanager
    async def serve(cls, *keys: SigningKey) -> AsyncIterator[JwksServer]:
        """Serve the public halves of ``keys`` for the duration of the block."""
        jwks = cls([key.jwk() for key in keys])
        app = Starlette(routes=[Route("/.well-known/jwks.json", jwks._answer)])
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        config.loglevel = "WARNING"
        config.graceful_timeout = 0.1
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(serve, app, config)
            jwks.url = binds[0] + "/.well-known/jwks.json"
            try:
                yield jwks
            finally:
                nursery.cancel_scope.cancel()

    async def _answer(self, request: Request) -> Response:
        self.fetches += 1
        await trio.sleep(self.delay)
        return JSONResponse({"keys": self.keys}, status_code=self.status)
