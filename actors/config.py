"""The service's settings: one frozen :class:`ServiceConfig`, loaded by :func:`load_config`.

Settings come from three layers, each overriding the one before it:

1. the defaults declared on :class:`ServiceConfig`;
2. an optional TOML file whose top-level keys are the field names (a flat table);
3. environment variables, ``TROUPE_`` followed by the upper-cased field name
   (``TROUPE_JOB_TIMEOUT``). ``OPENROUTER_API_KEY`` stands in for
   ``TROUPE_UPSTREAM_API_KEY`` when that one is unset.

An environment variable set to the empty string counts as unset, so a blank entry in a
deployment template does not override the file.

The upstream is chosen like this: ``upstream`` set in the file or the environment always
wins; otherwise a configured API key or ``upstream_base_url`` (from any layer) selects
``"openai"``, and with neither the service runs the ``"simulated"`` model and says so
when it starts. With ``"openai"`` and no server key, each request must bring its user's
own key.

Every problem is a :class:`ConfigError` whose message names the setting as the user wrote it
(the TOML key or the environment variable) and the bad value. Secrets (the upstream API key
and the JWT secret) never appear in a message, a repr or ``str()`` of the config.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Literal, get_args, get_origin

import attrs
from cattrs import Converter
from cattrs.errors import AttributeValidationNote, ClassValidationError, ForbiddenExtraKeysError

from actors import codec
from actors.codec import WrongType

__all__ = [
    "ENV_PREFIX",
    "HMAC_ALGORITHMS",
    "PUBLIC_KEY_ALGORITHMS",
    "AuthMode",
    "ConfigError",
    "LogLevel",
    "ServiceConfig",
    "StoreName",
    "UpstreamName",
    "env_var_name",
    "load_config",
]

ENV_PREFIX: Final = "TROUPE_"
"""Prefix of the environment variables that set :class:`ServiceConfig` fields."""

OPENROUTER_KEY_VAR: Final = "OPENROUTER_API_KEY"

StoreName = Literal["memory", "sqlite", "redis"]
UpstreamName = Literal["simulated", "openai"]
LogLevel = Literal["debug", "info", "warning", "error"]
AuthMode = Literal["jwt", "trusted_headers"]

HMAC_ALGORITHMS: Final = frozenset({"HS256", "HS384", "HS512"})
"""JWT algorithms keyed by a shared secret (``jwt_secret``)."""
PUBLIC_KEY_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
"""JWT algorithms keyed by a public key (``jwt_public_key`` or ``jwt_jwks_url``)."""

_SECRET: Final = "secret"


class ConfigError(Exception):
    """A setting is unknown, malformed or out of range, or the config file is unusable.

    ``str(error)`` is one readable line (several problems are joined with ``"; "``) naming
    the setting and, except for secrets, the bad value. ``setting`` is the name of the
    first offending setting as the user wrote it (field name or environment variable),
    or ``None`` when the problem is the file itself.
    """

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class _InvalidValue(ConfigError):
    """A field validator's complaint, kept apart so the loader can relabel it with the
    environment variable the value came from."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}", setting=field_name)
        self.field_name = field_name
        self.problem = problem


_Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _at_least(bound: float) -> _Validator:
    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not value >= bound:  # written this way so NaN fails too
            raise _InvalidValue(attribute.name, f"must be >= {bound} (got {value!r})")

    return check


def _above(bound: float) -> _Validator:
    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not value > bound:
            raise _InvalidValue(attribute.name, f"must be > {bound} (got {value!r})")

    return check


def _zero_or_at_least(bound: int) -> _Validator:
    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not (value == 0 or value >= bound):
            raise _InvalidValue(attribute.name, f"must be 0 or >= {bound} (got {value!r})")

    return check


def _between(low: int, high: int) -> _Validator:
    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not low <= value <= high:
            raise _InvalidValue(attribute.name, f"must be between {low} and {high} (got {value!r})")

    return check


def _one_of(choices: Any) -> _Validator:
    allowed: tuple[str, ...] = get_args(choices)

    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in allowed:
            listed = ", ".join(repr(choice) for choice in allowed)
            raise _InvalidValue(attribute.name, f"must be one of {listed} (got {value!r})")

    return check


def _not_blank(_instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value.strip():
        raise _InvalidValue(attribute.name, f"must not be empty (got {value!r})")


def _redis_url(_instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    # The URL may hold a password: say what is wrong without echoing it.
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise _InvalidValue(attribute.name, "must be a redis://, rediss:// or unix:// URL")


def _http_url(_instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value.startswith(("http://", "https://")) or len(value.split("://", 1)[1]) == 0:
        raise _InvalidValue(attribute.name, f"must be an http:// or https:// URL (got {value!r})")


def _optional(validator: _Validator) -> _Validator:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            validator(instance, attribute, value)

    return check


def _header_name(_instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    # RFC 9110's token characters: what an HTTP field name may be made of.
    allowed = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    if not value or not set(value) <= allowed:
        raise _InvalidValue(attribute.name, f"must be an HTTP header name (got {value!r})")


def _networks(_instance: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise _InvalidValue(
                attribute.name, f"must be IP addresses or CIDR networks (got {item!r})"
            ) from None


def _algorithms(_instance: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    known = HMAC_ALGORITHMS | PUBLIC_KEY_ALGORITHMS
    for name in value:
        if name not in known:
            listed = ", ".join(sorted(known))
            raise _InvalidValue(attribute.name, f"{name!r} is not one of {listed}")


def _webhook_secret(_instance: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    # Standard Webhooks: "whsec_" and the base64 of 24 to 64 random bytes. Never echoed.
    if value is None:
        return
    if not value.startswith("whsec_"):
        raise _InvalidValue(attribute.name, "must start with 'whsec_'")
    try:
        key = base64.b64decode(value.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise _InvalidValue(attribute.name, "must be 'whsec_' followed by base64") from None
    if not 24 <= len(key) <= 64:
        raise _InvalidValue(attribute.name, "must hold 24 to 64 bytes of key")


def _secret_not_blank(_instance: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    # The value is a secret: say what is wrong without ever echoing it.
    if value is not None and not value.strip():
        raise _InvalidValue(attribute.name, "must not be empty when set")


def _secret_field(validator: Any = _secret_not_blank) -> Any:
    return attrs.field(default=None, repr=False, validator=validator, metadata={_SECRET: True})


def _strong_key(_instance: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    # HS256 keys shorter than the hash are brute-forceable (RFC 7518, section 3.2).
    _secret_not_blank(_instance, attribute, value)
    if value is not None and len(value.encode()) < 32:
        raise _InvalidValue(attribute.name, "must be at least 32 bytes long")


@attrs.frozen(kw_only=True)
class ServiceConfig:
    """Every setting of the background-streaming service, validated on construction.

    Construct it with :func:`load_config`; direct construction (keyword-only) is for tests
    and embedding and runs the same range checks, raising :class:`ConfigError` on a bad
    value. Times are in seconds. ``repr``/``str`` leave out ``upstream_api_key`` and
    ``jwt_secret``.
    """

    store: StoreName = attrs.field(default="sqlite", validator=_one_of(StoreName))
    """Job store backend: ``"memory"``, ``"sqlite"``, or ``"redis"``, which several
    processes share (see ``redis_url``)."""
    redis_url: str = attrs.field(
        default="redis://127.0.0.1:6379/0", validator=_redis_url, repr=False
    )
    """The Redis server of ``store = "redis"``. A password in it is never shown."""
    redis_prefix: str = attrs.field(default="troupe:", validator=_not_blank)
    """Prefix of every Redis key and channel, so two deployments can share one Redis."""
    redis_connect_timeout: float = attrs.field(default=5.0, validator=_above(0))
    """How long connecting to Redis may take."""
    redis_command_timeout: float = attrs.field(default=5.0, validator=_above(0))
    """How long one Redis command may take (blocking reads excepted)."""
    redis_max_live_jobs: int = attrs.field(default=10_000, validator=_at_least(1))
    """Most jobs run by other processes that this process follows live at once (one
    ``XREAD`` reads them all); a follower of one more waits until one of them ends."""
    node_id: str | None = attrs.field(default=None, validator=_optional(_not_blank))
    """This process's name among the processes sharing a store; None generates one
    when the service starts."""
    lease_period: float = attrs.field(default=5.0, validator=_above(0))
    """On a shared store: a process renews the lease on each job it streams this
    often (three times a period); a job whose lease ran out (its process died) is
    ended ``error`` "interrupted: node lost" by another process within two periods."""
    store_outage_grace: float = attrs.field(default=30.0, validator=_above(0))
    """How long running jobs keep streaming into memory while the store cannot be
    written; past it they fail with "store unavailable"."""
    data_dir: Path = Path("data")
    """Where persistent state lives (the SQLite database, a generated JWT secret).
    A relative path is relative to the working directory of the process."""
    sqlite_max_bytes: int = attrs.field(default=0, validator=_zero_or_at_least(1_048_576))
    """Largest size of the SQLite database file, at least 1 MiB; 0: no cap. At the cap
    the store is full, as on a full disk: ``/readyz`` answers 503, new jobs get 503,
    running ones keep streaming into memory for ``store_outage_grace``, until deleted
    jobs (``retention``) make room."""
    upstream: UpstreamName = attrs.field(default="simulated", validator=_one_of(UpstreamName))
    """``"openai"`` streams from an OpenAI-compatible API; ``"simulated"`` from a local model."""
    upstream_base_url: str = attrs.field(
        default="https://openrouter.ai/api/v1", validator=_http_url
    )
    """Base URL of the OpenAI-compatible API; ``/chat/completions`` is appended to it."""
    upstream_api_key: str | None = _secret_field()
    """The server's key for the upstream, sent as a Bearer token. Never shown."""
    allow_user_api_keys: bool = True
    """Whether a request's own upstream key (the seed route's non-JWT Bearer value, or
    ``X-Upstream-Api-Key``) is used when the server has a key of its own. Without a
    server key a user's key is always used. A user's key is never logged or stored."""
    upstream_referer: str | None = attrs.field(default=None, validator=_optional(_not_blank))
    """OpenRouter attribution: sent upstream as ``HTTP-Referer`` when set."""
    upstream_title: str | None = attrs.field(default=None, validator=_optional(_not_blank))
    """OpenRouter attribution: sent upstream as ``X-Title`` when set."""
    simulated_tokens_per_second: float = attrs.field(default=20.0, validator=_above(0))
    """Pace of the simulated model."""
    upstream_idle_timeout: float = attrs.field(default=60.0, validator=_above(0))
    """Longest silence tolerated from the upstream before the job fails."""
    upstream_connect_timeout: float = attrs.field(default=10.0, validator=_above(0))
    """How long connecting to the upstream and sending the request may take. The
    answer's status line and headers must then come within ``upstream_idle_timeout``:
    a head that never finishes fails the job ``idle_timeout`` at this plus that."""
    max_answer_chars: int = attrs.field(default=10_000_000, validator=_at_least(1))
    """Most characters one job's answer may hold: content and reasoning together, tool
    calls and images counted at their JSON size. An answer that runs past it ends
    ``error`` ("answer_too_large") with its text kept up to the limit, and its upstream
    request is closed. One upstream event longer than this fails ("event_too_large")
    without being kept."""
    max_concurrent_jobs: int = attrs.field(default=20, validator=_at_least(1))
    """Cap on background jobs streaming across all users; beyond it new ones are refused."""
    max_jobs_per_user: int = attrs.field(default=5, validator=_at_least(1))
    """Cap on background jobs streaming for one user."""
    max_foreground_streams: int = attrs.field(default=50, validator=_at_least(1))
    """Cap on foreground (pass-through) streams across all users; they do not count
    against the background caps, nor those against this one."""
    rate_limit_per_user: float = attrs.field(default=10.0, validator=_at_least(0))
    """Requests a second one user may make, sustained, to the routes that start jobs
    (``POST /v1/jobs``, ``POST /api/openrouter/stream``); past it they get 429 with
    ``Retry-After``. A token bucket per user, per process. 0 disables the limit."""
    rate_limit_burst: int = attrs.field(default=100, validator=_at_least(1))
    """Requests one user may make at once to those routes before ``rate_limit_per_user``
    paces them: the size of the user's bucket."""
    watch_window: float = attrs.field(default=3.0, validator=_at_least(0))
    """A status poll of a job counts as watching it for this long: a job that ends
    while its owner polls it (or follows it live) notifies nobody. 0: polls never count."""
    job_timeout: float = attrs.field(default=300.0, validator=_above(0))
    """A job still streaming after this long is aborted upstream and fails."""
    retention: float = attrs.field(default=3600.0, validator=_above(0))
    """How long a finished job is kept before the sweeper deletes it."""
    sweep_interval: float = attrs.field(default=60.0, validator=_above(0))
    """Period of the expired-job sweep."""
    drain_timeout: float = attrs.field(default=10.0, validator=_at_least(0))
    """On shutdown, how long running jobs may go on before they are cut off."""
    flush_interval: float = attrs.field(default=0.05, validator=_above(0))
    """The persister's tick: every running job's new deltas are stored together, in
    one write, this often; followers see a delta once it is stored."""
    flush_max_deltas: int = attrs.field(default=64, validator=_at_least(1))
    """Most deltas of one job in one write; the rest go in the next tick's."""
    follower_buffer: int = attrs.field(default=256, validator=_at_least(1))
    """Deltas of a running job kept in memory for its followers; a follower further
    behind reads the rest from the store."""
    upstream_read_interval: float = attrs.field(default=0.1, validator=_at_least(0))
    """After a read that had to wait, a stream pauses until its next tick of this
    period (streams are spread over four phases of it): the tokens that arrive
    meanwhile come in one read. At 20 tokens/s a job, 100 ms puts two tokens in a
    read and in a follower's write. 0 reads as they come."""
    host: str = attrs.field(default="127.0.0.1", validator=_not_blank)
    """Address the HTTP server binds."""
    port: int = attrs.field(default=8000, validator=_between(0, 65535))
    """Port the HTTP server binds; 0 lets the OS choose."""
    http_keep_alive_timeout: float = attrs.field(default=5.0, validator=_above(0))
    """How long a connection may go without a whole request: idle between two requests,
    or still sending its request line and headers. A client that sends its headers
    slowly is cut off after it."""
    http_max_header_bytes: int = attrs.field(default=16_384, validator=_at_least(1024))
    """Largest request line and header block; a larger one is answered 431 and the
    connection closed."""
    http_max_headers: int = attrs.field(default=100, validator=_at_least(1))
    """Most header fields in one request; a request with more is answered 431."""
    http_body_timeout: float = attrs.field(default=20.0, validator=_above(0))
    """A request body must arrive within this long after its headers, plus one second
    for every ``http_body_min_rate`` bytes received; one trickled in slower is answered
    408 and its connection closed."""
    http_body_min_rate: int = attrs.field(default=500, validator=_at_least(1))
    """Bytes a second that earn a request body one more second (``http_body_timeout``)."""
    http_send_timeout: float = attrs.field(default=30.0, validator=_above(0))
    """A connection whose client takes none of what is sent to it for this long (its
    receive window stays shut, or nothing is acknowledged) is closed by the kernel: a
    follower that stopped reading is dropped. Linux only (``TCP_USER_TIMEOUT``)."""
    http_send_buffer: int = attrs.field(default=262_144, validator=_at_least(4096))
    """The kernel's send buffer of one connection, in bytes (``SO_SNDBUF``, which Linux
    doubles for its bookkeeping): what may wait for a client that does not read."""
    auth_mode: AuthMode = attrs.field(default="jwt", validator=_one_of(AuthMode))
    """``"jwt"``: the caller is the subject of a verified JWT (``Authorization: Bearer``
    or the ``jwt_cookie``). ``"trusted_headers"``: the caller is named by headers that
    a gateway in ``trusted_proxies`` set after authenticating it."""
    jwt_secret: str | None = _secret_field(_strong_key)
    """HMAC key that signs and checks session tokens. When neither it, ``jwt_public_key``
    nor ``jwt_jwks_url`` is set, the server generates one and keeps it in ``data_dir``.
    Never shown."""
    jwt_public_key: str | None = attrs.field(default=None, validator=_optional(_not_blank))
    """A PEM public key (RSA, EC or Ed25519) that checks tokens signed by an auth provider."""
    jwt_jwks_url: str | None = attrs.field(default=None, validator=_optional(_http_url))
    """The auth provider's JWKS URL; keys are cached and fetched again for an unknown ``kid``."""
    jwt_jwks_refetch_interval: float = attrs.field(default=5.0, validator=_above(0))
    """Shortest time between two fetches of ``jwt_jwks_url``: within it, a token naming an
    unknown ``kid`` is refused without asking the provider, so made-up ones cannot flood it."""
    jwt_algorithms: tuple[str, ...] = attrs.field(default=(), validator=_algorithms)
    """The algorithms a token may be signed with; never taken from the token. Empty means
    ``HS256`` with ``jwt_secret`` and ``RS256, ES256`` with a public key or JWKS. In the
    environment, a comma-separated list."""
    jwt_issuer: str | None = attrs.field(default=None, validator=_optional(_not_blank))
    """When set, a token's ``iss`` must equal it."""
    jwt_audience: str | None = attrs.field(default=None, validator=_optional(_not_blank))
    """When set, a token's ``aud`` must contain it."""
    jwt_leeway: float = attrs.field(default=30.0, validator=_between(0, 300))
    """Clock skew tolerated on ``exp``, ``nbf`` and ``iat``, in seconds."""
    jwt_cookie: str | None = attrs.field(default=None, validator=_optional(_header_name))
    """A cookie a token is read from when ``Authorization`` carries no JWT (``__session``
    for the seed app's auth provider)."""
    user_claim: str = attrs.field(default="sub", validator=_not_blank)
    """The claim that names the user."""
    workspace_claim: str = attrs.field(default="workspace", validator=_not_blank)
    """The claim that names the workspace (``org_id`` for an auth provider's organisation);
    without it in a token, the workspace is the user's own (the user id)."""
    trusted_user_header: str = attrs.field(default="x-user-id", validator=_header_name)
    """In ``trusted_headers`` mode, the header naming the user."""
    trusted_workspace_header: str = attrs.field(default="x-workspace-id", validator=_header_name)
    """In ``trusted_headers`` mode, the header naming the workspace (else the user's own)."""
    trusted_proxies: tuple[str, ...] = attrs.field(
        default=("127.0.0.1/32", "::1/128"), validator=_networks
    )
    """Addresses (CIDRs) whose identity headers are honoured; any other caller gets 401."""
    max_body_bytes: int = attrs.field(default=1_048_576, validator=_at_least(1))
    """Largest accepted HTTP request body, except on the chat routes."""
    max_chat_body_bytes: int = attrs.field(default=26_214_400, validator=_at_least(1))
    """Largest accepted body on the chat routes (``POST /v1/jobs``, the seed's stream
    route), which carry attachments as data URLs: 25 MiB by default."""
    webhook_url: str | None = attrs.field(default=None, validator=_optional(_http_url))
    """Where every notification and terminal job status is POSTed (Standard Webhooks)."""
    webhook_secret: str | None = _secret_field(_webhook_secret)
    """The ``whsec_...`` key webhooks are signed with; required with ``webhook_url``."""
    webhook_timeout: float = attrs.field(default=10.0, validator=_above(0))
    """How long one webhook delivery may take before it counts as failed."""
    webhook_retry_initial: float = attrs.field(default=5.0, validator=_above(0))
    """First delay before a failed webhook is tried again; it doubles, with jitter."""
    webhook_retry_max: float = attrs.field(default=3600.0, validator=_above(0))
    """Longest delay between two tries of one webhook."""
    webhook_max_age: float = attrs.field(default=86_400.0, validator=_above(0))
    """How long a webhook is retried before it is given up (24 h)."""
    log_level: LogLevel = attrs.field(default="info", validator=_one_of(LogLevel))
    """Lowest level of log lines written."""

    def __attrs_post_init__(self) -> None:
        # Settings that only make sense together.
        if self.webhook_url is not None and self.webhook_secret is None:
            raise _InvalidValue("webhook_secret", "must be set when webhook_url is set")
        if self.jwt_public_key is not None and self.jwt_jwks_url is not None:
            raise _InvalidValue("jwt_jwks_url", "set jwt_public_key or jwt_jwks_url, not both")
        public = self.jwt_public_key is not None or self.jwt_jwks_url is not None
        chosen = set(self.jwt_algorithms)
        if public and chosen & HMAC_ALGORITHMS:
            # HS/RS confusion: a public key must never be usable as an HMAC secret.
            raise _InvalidValue(
                "jwt_algorithms", "HMAC algorithms cannot be used with a public key or JWKS"
            )
        if not public and chosen & PUBLIC_KEY_ALGORITHMS:
            raise _InvalidValue(
                "jwt_algorithms", "public-key algorithms need jwt_public_key or jwt_jwks_url"
            )
        # An HMAC key as long as the hash at least (RFC 7518, section 3.2).
        needed = max((int(name[2:]) // 8 for name in chosen & HMAC_ALGORITHMS), default=32)
        if self.jwt_secret is not None and len(self.jwt_secret.encode()) < needed:
            raise _InvalidValue("jwt_secret", f"must be at least {needed} bytes long")

    @property
    def token_algorithms(self) -> tuple[str, ...]:
        """The algorithms tokens are checked with: ``jwt_algorithms``, or the default for
        the configured key."""
        if self.jwt_algorithms:
            return self.jwt_algorithms
        if self.jwt_public_key is not None or self.jwt_jwks_url is not None:
            return ("RS256", "ES256")
        return ("HS256",)

    def with_overrides(self, **changes: Any) -> ServiceConfig:
        """Return a copy with ``changes`` applied, type-checked and validated like a file.

        Raises :class:`ConfigError` for an unknown field name, a value of the wrong type or
        a value out of range. Note that ``upstream`` is not re-derived from a new API key.
        """
        current = {field.name: getattr(self, field.name) for field in _FIELDS}
        return _build({**current, **changes}, labels={}, source=None)


_FIELDS: Final = attrs.fields(attrs.resolve_types(ServiceConfig))
_SECRET_FIELDS: Final = frozenset(field.name for field in _FIELDS if field.metadata.get(_SECRET))


def env_var_name(field_name: str) -> str:
    """Return the environment variable that sets ``field_name`` (``job_timeout`` →
    ``TROUPE_JOB_TIMEOUT``)."""
    return ENV_PREFIX + field_name.upper()


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> ServiceConfig:
    """Build the service configuration from defaults, the TOML file at ``path`` and ``env``.

    ``path`` of ``None`` reads no file. ``env`` defaults to ``os.environ``; only the
    ``TROUPE_*`` variables named after fields and ``OPENROUTER_API_KEY`` are read.
    Raises :class:`ConfigError` when the file is missing, unreadable or not TOML, holds an
    unknown key or a value of the wrong type, or when any value is out of range. Blocks
    briefly on reading the file.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    values: dict[str, Any] = {}
    labels: dict[str, str] = {}
    if path is not None:
        values.update(_read_toml(path))
    from_env = _read_env(environ)
    values.update(from_env)
    labels.update({name: env_var_name(name) for name in from_env})

    if "upstream_api_key" not in from_env:
        fallback = environ.get(OPENROUTER_KEY_VAR, "")
        if fallback:
            values["upstream_api_key"] = fallback
            labels["upstream_api_key"] = OPENROUTER_KEY_VAR

    # A key or an upstream address means a real upstream; only with neither does the
    # service run the simulated model (and says so when it starts).
    if "upstream" not in values and (
        values.get("upstream_api_key") is not None or "upstream_base_url" in values
    ):
        values["upstream"] = "openai"

    return _build(values, labels=labels, source=None if path is None else str(path))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None


_TRUE_WORDS: Final = frozenset({"1", "true", "yes"})
_FALSE_WORDS: Final = frozenset({"0", "false", "no"})


def _read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """Parse the ``TROUPE_*`` variables into values of each field's type.

    Ranges are left to the field validators; only the text-to-type step happens here.
    """
    parsed: dict[str, Any] = {}
    for field in _FIELDS:
        var = env_var_name(field.name)
        text = environ.get(var, "")
        if text == "":
            continue
        parsed[field.name] = _parse_env_text(var, text, field.type)
    return parsed


def _parse_env_text(var: str, text: str, field_type: Any) -> Any:
    stripped = text.strip()
    if field_type is bool:
        word = stripped.lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
        raise ConfigError(
            f"{var}: not a boolean (use 1/0, true/false or yes/no): {text!r}", setting=var
        )
    if field_type is int:
        try:
            return int(stripped)
        except ValueError:
            raise ConfigError(f"{var}: not an integer: {text!r}", setting=var) from None
    if field_type is float:
        try:
            return float(stripped)
        except ValueError:
            raise ConfigError(f"{var}: not a number: {text!r}", setting=var) from None
    if _is_literal(field_type):
        return stripped.lower()
    if field_type == tuple[str, ...]:
        return tuple(item.strip() for item in text.split(",") if item.strip())
    # Strings (secrets included) are taken verbatim: whitespace may be part of a key.
    return text


def _is_literal(type_: Any) -> bool:
    origin: Any = get_origin(type_)
    return origin is Literal


def _structure_path(value: Any, _type: Any) -> Path:
    if not isinstance(value, str | os.PathLike):
        raise WrongType("a path string", value)
    return Path(value)


def _structure_choice(value: Any, _type: Any) -> str:
    # Membership is the field validator's job, so its message lists the valid names.
    if not isinstance(value, str):
        raise WrongType("a string", value)
    return value.lower()


def _make_converter() -> Converter:
    # The codec's strict scalars (no ``str(1)``, no ``bool("no")``), plus paths and
    # case-insensitive choices, on a converter of its own.
    converter = codec.make_converter()
    converter.register_structure_hook(Path, _structure_path)
    converter.register_structure_hook_func(_is_literal, _structure_choice)
    return converter


_converter: Final = _make_converter()


def _build(
    values: dict[str, Any], *, labels: Mapping[str, str], source: str | None
) -> ServiceConfig:
    """Structure ``values`` into a config, turning every failure into a ConfigError.

    ``labels`` maps a field to the name its value was given under (an environment
    variable), so messages point at what the user actually wrote; ``source`` names the
    file that unknown keys came from.
    """
    try:
        return _converter.structure(values, ServiceConfig)
    except ClassValidationError as group:
        problems = [_describe(error, labels, source) for error in group.exceptions]
        messages = [message for message, _ in problems]
        raise ConfigError("; ".join(messages), setting=problems[0][1]) from None


def _describe(
    error: BaseException, labels: Mapping[str, str], source: str | None
) -> tuple[str, str | None]:
    """Return ``(message, setting)`` for one error out of a cattrs validation group.

    cattrs puts the field validators' errors from ``__init__`` in the group too.
    """
    if isinstance(error, _InvalidValue):
        label = labels.get(error.field_name, error.field_name)
        return f"{label}: {error.problem}", label
    if isinstance(error, ForbiddenExtraKeysError):
        where = f" in {source}" if source is not None else ""
        names = sorted(error.extra_fields)
        listed = ", ".join(repr(name) for name in names)
        noun = "setting" if len(names) == 1 else "settings"
        return f"unknown {noun} {listed}{where}", names[0]
    field_name = next(
        (
            note.name
            for note in getattr(error, "__notes__", ())
            if isinstance(note, AttributeValidationNote)
        ),
        None,
    )
    if field_name is None:
        return str(error), None
    label = labels.get(field_name, field_name)
    if isinstance(error, WrongType):
        shown = (
            f"a value of type {type(error.value).__name__}"
            if field_name in _SECRET_FIELDS
            else repr(error.value)
        )
        return f"{label}: expected {error.expected} (got {shown})", label
    return f"{label}: {error}", label
