"""Identity from a gateway's headers, for deployments whose proxy authenticates users."""

from __future__ import annotations

import ipaddress
from typing import final

import trio
from starlette.requests import HTTPConnection

from actors.config import ServiceConfig
from actors.http.auth.principal import AuthError, Principal, identity
from actors.model import Owner

__all__ = ["TrustedHeaders"]


@final
class TrustedHeaders:
    """The caller is named by ``trusted_user_header`` and ``trusted_workspace_header``.

    The headers are honoured only from a peer inside ``trusted_proxies``: anyone
    else could set them. Without a workspace header (or with an empty one) the
    workspace is the user's own. Nobody is an admin this way.
    """

    def __init__(self, config: ServiceConfig) -> None:
        self._proxies = tuple(
            ipaddress.ip_network(network, strict=False) for network in config.trusted_proxies
        )
        self._user_header = config.trusted_user_header
        self._workspace_header = config.trusted_workspace_header

    def __repr__(self) -> str:
        return f"<TrustedHeaders from {', '.join(str(p) for p in self._proxies)}>"

    async def authenticate(self, request: HTTPConnection) -> Principal:
        """The user and workspace the gateway named.

        Raises :class:`AuthError` if the peer is not a trusted proxy, names no user, or
        gives either header more than once.
        """
        await trio.lowlevel.checkpoint()
        if request.client is None or not self._trusted(request.client.host):
            raise AuthError("the caller is not a trusted proxy")
        # A gateway that adds its header to the client's own instead of replacing it
        # would otherwise let the client choose who it is.
        for name in (self._user_header, self._workspace_header):
            if len(request.headers.getlist(name)) > 1:
                raise AuthError(f"the {name} header is given more than once")
        user = identity(request.headers.get(self._user_header), f"the {self._user_header} header")
        # A gateway's template often sends the header empty for a user with no
        # organisation: that is the user's own workspace, like no header at all.
        named = request.headers.get(self._workspace_header, "").strip()
        workspace = identity(named, f"the {self._workspace_header} header") if named else user
        return Principal(Owner(user, workspace))

    def _trusted(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        # An IPv4 peer on a dual-stack socket shows as ::ffff:a.b.c.d.
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._proxies)
