"""Who is calling: :class:`Principal`, :class:`Authenticator` and :class:`AuthError`."""

from __future__ import annotations

from typing import Any, Final, Protocol

import attrs
from starlette.requests import HTTPConnection

from actors.model import Owner

__all__ = ["MAX_IDENTITY_CHARS", "AuthError", "Authenticator", "Principal", "identity"]

MAX_IDENTITY_CHARS: Final = 200
"""Longest user or workspace id accepted from a token or a gateway's header."""


class AuthError(Exception):
    """The request names no valid caller; the message says why, without echoing a credential."""


@attrs.frozen
class Principal:
    """An authenticated caller: whose jobs it sees, and whether it may see the actor tree."""

    owner: Owner
    admin: bool = False


class Authenticator(Protocol):
    """Tells who made a request."""

    async def authenticate(self, request: HTTPConnection) -> Principal:
        """The caller of ``request``.

        Raises :class:`AuthError` when it carries no valid identity. A checkpoint; it
        may wait on the network (an auth provider's keys), never on another request.
        """
        ...


def identity(value: Any, source: str) -> str:
    """``value`` as a user or workspace id, read from ``source`` (a claim or a header).

    Raises :class:`AuthError` unless it is a non-blank string of at most
    :data:`MAX_IDENTITY_CHARS` characters.
    """
    if not isinstance(value, str) or not value.strip():
        raise AuthError(f"{source} must be a non-empty string")
    if len(value) > MAX_IDENTITY_CHARS:
        raise AuthError(f"{source} is longer than {MAX_IDENTITY_CHARS} characters")
    return value
