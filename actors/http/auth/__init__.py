"""Authentication: who is calling, from a JWT or from a trusted gateway's headers.

* :mod:`.tokens`: ``auth_mode="jwt"``, a JWT in ``Authorization: Bearer`` or a
  session cookie, checked with an HMAC secret, a PEM public key or a JWKS;
* :mod:`.keys`: those keys, the JWKS fetched and cached by ``kid``;
* :mod:`.trusted`: ``auth_mode="trusted_headers"``;
* :mod:`.principal`: what they all answer.

:func:`build_auth` picks them from the configuration.
"""

from __future__ import annotations

from actors.config import ServiceConfig
from actors.http.auth.keys import JwksKeys, StaticKeys, public_keys
from actors.http.auth.principal import Authenticator, AuthError, Principal
from actors.http.auth.tokens import (
    JwtAuthenticator,
    TokenAuthority,
    bearer_value,
    jwt_header,
    load_secret,
    uses_dev_secret,
)
from actors.http.auth.trusted import TrustedHeaders

__all__ = [
    "AuthError",
    "Authenticator",
    "Principal",
    "TokenAuthority",
    "bearer_value",
    "build_auth",
    "jwt_header",
    "load_secret",
    "uses_dev_secret",
]


def build_auth(config: ServiceConfig) -> tuple[Authenticator, TokenAuthority | None]:
    """The authenticator ``config`` asks for, and what mints tokens it accepts.

    The second is None unless tokens are checked with an HMAC secret (the configured
    one, or the development secret, which this creates in ``data_dir`` if missing).
    Raises :class:`~actors.config.ConfigError` for an unusable ``jwt_public_key``.
    """
    if config.auth_mode == "trusted_headers":
        return TrustedHeaders(config), None
    algorithms = config.token_algorithms
    if config.jwt_jwks_url is not None:
        jwks = JwksKeys(
            config.jwt_jwks_url, algorithms, min_interval=config.jwt_jwks_refetch_interval
        )
        return JwtAuthenticator(config, jwks), None
    if config.jwt_public_key is not None:
        return JwtAuthenticator(config, public_keys(config.jwt_public_key, algorithms)), None
    tokens = TokenAuthority.for_config(config)
    keys = StaticKeys({algorithm: load_secret(config) for algorithm in algorithms})
    return JwtAuthenticator(config, keys), tokens
