"""JWT authentication: where a request's token is, and what makes it valid.

A token comes from ``Authorization: Bearer <value>`` when the value is a JWT, else
from the ``jwt_cookie`` cookie (the seed app's auth provider keeps its session token
in ``__session``). A Bearer value that is not a JWT is the user's own upstream key:
never an identity (see :func:`bearer_value`, :func:`jwt_header`).

Tokens are checked with ``jwt_secret``, ``jwt_public_key`` or the keys at
``jwt_jwks_url`` (:mod:`.keys`). With none of them, a development secret is
generated once and kept in the data directory (:func:`load_secret`), so
``make serve`` works with no set-up and ``troupe token`` mints tokens the running
server accepts; only such an HMAC secret can mint (:class:`TokenAuthority`).
"""

from __future__ import annotations

import base64
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, final

import jwt
import orjson
import trio
from starlette.requests import HTTPConnection

from actors.config import ServiceConfig
from actors.http.auth.keys import KeySource
from actors.http.auth.principal import AuthError, Principal, identity
from actors.model import Owner

__all__ = [
    "DEV_SECRET_FILE",
    "JwtAuthenticator",
    "TokenAuthority",
    "bearer_value",
    "jwt_header",
    "load_secret",
    "uses_dev_secret",
]

DEV_SECRET_FILE: Final = "jwt-secret"

_BASE64URL: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def uses_dev_secret(config: ServiceConfig) -> bool:
    """Whether tokens are checked with the generated development secret."""
    return (
        config.auth_mode == "jwt"
        and config.jwt_secret is None
        and config.jwt_public_key is None
        and config.jwt_jwks_url is None
    )


def load_secret(config: ServiceConfig) -> str:
    """The configured secret, or the development secret in ``data_dir`` (created if missing)."""
    if config.jwt_secret:
        return config.jwt_secret
    path = Path(config.data_dir) / DEV_SECRET_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    # Exclusive create: two processes starting at once agree on one secret.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as file:
        file.write(secret)
    return secret


@final
class TokenAuthority:
    """Mints tokens signed with an HMAC secret.

    The user and workspace go in ``user_claim`` and ``workspace_claim``, and ``iss``
    and ``aud`` are set when given, so that a server configured with the same
    settings accepts the tokens.
    """

    def __init__(
        self,
        secret: str,
        algorithm: str = "HS256",
        *,
        user_claim: str = "sub",
        workspace_claim: str = "workspace",
        issuer: str | None = None,
        audience: str | None = None,
    ) -> None:
        self._secret = secret
        self._algorithm = algorithm
        self._user_claim = user_claim
        self._workspace_claim = workspace_claim
        self._issuer = issuer
        self._audience = audience

    @classmethod
    def for_config(cls, config: ServiceConfig) -> TokenAuthority | None:
        """What mints tokens a server with ``config`` accepts: None unless its tokens
        are checked with an HMAC secret (the configured one, or the development
        secret, which this creates in ``data_dir`` if missing)."""
        if (
            config.auth_mode != "jwt"
            or config.jwt_public_key is not None
            or config.jwt_jwks_url is not None
        ):
            return None
        return cls(
            load_secret(config),
            config.token_algorithms[0],
            user_claim=config.user_claim,
            workspace_claim=config.workspace_claim,
            issuer=config.jwt_issuer,
            audience=config.jwt_audience,
        )

    def __repr__(self) -> str:
        return "<TokenAuthority>"

    def mint(
        self, user_id: str, workspace_id: str, ttl: float = 3600.0, admin: bool = False
    ) -> str:
        now = int(time.time())
        claims: dict[str, object] = {
            "sub": user_id,
            self._user_claim: user_id,
            self._workspace_claim: workspace_id,
            "iat": now,
            "exp": now + int(ttl),
        }
        if self._issuer is not None:
            claims["iss"] = self._issuer
        if self._audience is not None:
            claims["aud"] = self._audience
        if admin:
            claims["admin"] = True
        return jwt.encode(claims, self._secret, algorithm=self._algorithm)


def bearer_value(authorization: str | None) -> str | None:
    """The value of an ``Authorization: Bearer <value>`` header; None for another scheme."""
    if authorization is None:
        return None
    scheme, _, value = authorization.partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        return None
    return value


def jwt_header(value: str) -> dict[str, Any] | None:
    """The header of ``value`` if it is a JWT, else None (an API key, say).

    A JWT is three base64url segments whose first decodes to a JSON object with an
    ``alg``. Nothing is verified here.
    """
    segments = value.split(".")
    if len(segments) != 3 or not segments[0]:
        return None
    if not all(_BASE64URL.issuperset(segment) for segment in segments):
        return None
    first = segments[0]
    try:
        header = orjson.loads(base64.urlsafe_b64decode(first + "=" * (-len(first) % 4)))
    except ValueError:  # binascii.Error and orjson.JSONDecodeError are ValueErrors
        return None
    if not isinstance(header, dict) or not isinstance(header.get("alg"), str):
        return None
    return header


@final
class JwtAuthenticator:
    """The caller is the subject of a verified JWT.

    The algorithm is checked against ``config.token_algorithms`` before anything
    else, never taken from the token alone; ``exp`` is required, ``nbf`` and ``iat``
    are checked when present, ``iss`` and ``aud`` when ``jwt_issuer`` and
    ``jwt_audience`` are set, all with ``jwt_leeway``. The user is the
    ``user_claim``, the workspace the ``workspace_claim`` or, without one, the user's
    own; an ``admin: true`` claim opens the operator routes.
    """

    def __init__(self, config: ServiceConfig, keys: KeySource) -> None:
        self._keys = keys
        self._algorithms = frozenset(config.token_algorithms)
        self._cookie = config.jwt_cookie
        self._issuer = config.jwt_issuer
        self._audience = config.jwt_audience
        self._leeway = config.jwt_leeway
        self._user_claim = config.user_claim
        self._workspace_claim = config.workspace_claim

    def __repr__(self) -> str:
        return f"<JwtAuthenticator {self._keys!r}>"

    async def authenticate(self, request: HTTPConnection) -> Principal:
        """The subject of the request's token (see the module docs for where it is).

        Raises :class:`AuthError` without one, or when it does not verify; a bad
        token in ``Authorization`` is refused even if the cookie holds a good one, and
        so are several ``Authorization`` headers, whatever they hold.
        Waits on the auth provider only to fetch a signing key it does not hold.
        """
        await trio.lowlevel.checkpoint()
        given = request.headers.getlist("authorization")
        # Which of several would count is up to each hop (a proxy may check the last one,
        # we would read the first), so none does: RFC 9110 allows only one.
        if len(given) > 1:
            raise AuthError("invalid token: more than one Authorization header")
        bearer = bearer_value(given[0] if given else None)
        if bearer is not None:
            header = jwt_header(bearer)
            if header is not None:
                return await self._verify(bearer, header)
        token = request.cookies.get(self._cookie) if self._cookie is not None else None
        if token:
            header = jwt_header(token)
            if header is None:
                raise AuthError("invalid token: the session cookie holds no JWT")
            return await self._verify(token, header)
        if bearer is not None:
            raise AuthError("invalid token: the bearer value is not a JWT")
        where = f" or a {self._cookie} cookie" if self._cookie is not None else ""
        raise AuthError(f"missing token: send 'Authorization: Bearer <JWT>'{where}")

    async def _verify(self, token: str, header: Mapping[str, Any]) -> Principal:
        algorithm = header["alg"]
        if algorithm not in self._algorithms:
            raise AuthError("invalid token: its algorithm is not accepted")
        kid = header.get("kid")
        key = (await self._keys.keys_for(kid if isinstance(kid, str) else None)).get(algorithm)
        if key is None:
            raise AuthError("invalid token: no signing key of its algorithm")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={"require": ["exp"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not yet valid") from None
        except jwt.InvalidIssuerError:
            raise AuthError("invalid token: wrong issuer") from None
        except jwt.InvalidAudienceError:
            raise AuthError("invalid token: wrong audience") from None
        except jwt.MissingRequiredClaimError as error:
            raise AuthError(f"invalid token: no {error.claim} claim") from None
        except jwt.InvalidSignatureError:
            raise AuthError("invalid token: bad signature") from None
        except jwt.PyJWTError:
            raise AuthError("invalid token") from None
        user = identity(claims.get(self._user_claim), f"the {self._user_claim} claim")
        named = claims.get(self._workspace_claim)
        workspace = user if named is None else identity(named, f"the {self._workspace_claim} claim")
        return Principal(Owner(user, workspace), admin=claims.get("admin") is True)
