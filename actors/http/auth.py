"""Bearer-token authentication: HS256 JWTs with ``sub``, ``workspace`` and ``exp``.

The secret comes from ``jwt_secret`` in the configuration (``TROUPE_JWT_SECRET``).
Without one, a development secret is generated once and kept in the data
directory, so ``make serve`` works with no set-up and ``troupe token`` mints
tokens the running server accepts.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import attrs
import jwt

from actors.config import ServiceConfig
from actors.model import Owner

__all__ = ["AuthError", "Principal", "TokenAuthority", "load_secret"]

_ALGORITHM = "HS256"
DEV_SECRET_FILE = "jwt-secret"


class AuthError(Exception):
    """The request carries no valid token; the message says why, without echoing it."""


@attrs.frozen
class Principal:
    owner: Owner
    admin: bool = False


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


class TokenAuthority:
    """Mints and verifies the service's tokens."""

    def __init__(self, secret: str) -> None:
        self._secret = secret

    def __repr__(self) -> str:
        return "<TokenAuthority>"

    def mint(
        self, user_id: str, workspace_id: str, ttl: float = 3600.0, admin: bool = False
    ) -> str:
        now = int(time.time())
        claims: dict[str, object] = {
            "sub": user_id,
            "workspace": workspace_id,
            "iat": now,
            "exp": now + int(ttl),
        }
        if admin:
            claims["admin"] = True
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM)

    def verify(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization: Bearer <jwt>`` header value.

        Raises :class:`AuthError` if it is missing, malformed, forged, expired
        or lacks a user or workspace.
        """
        if not authorization:
            raise AuthError("missing bearer token")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("the Authorization header must be 'Bearer <token>'")
        try:
            claims = jwt.decode(
                token.strip(),
                self._secret,
                algorithms=[_ALGORITHM],
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidTokenError:
            raise AuthError("invalid token") from None
        user, workspace = claims.get("sub"), claims.get("workspace")
        if not isinstance(user, str) or not user or not isinstance(workspace, str) or not workspace:
            raise AuthError("the token must name a user (sub) and a workspace")
        return Principal(Owner(user, workspace), admin=claims.get("admin") is True)
