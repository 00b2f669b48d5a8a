"""Per-user rate limits on the routes that start jobs: one token bucket per user.

``POST /v1/jobs`` and the seed's ``POST /api/openrouter/stream`` take a token from
their caller's bucket before they read the body: one bucket per user id, across
workspaces, as ``max_jobs_per_user`` counts. A bucket holds up to
``rate_limit_burst`` tokens and gains ``rate_limit_per_user`` a second; a request
that finds it empty is refused with 429 and ``Retry-After``, and costs the server
no more than its authentication. Other users' buckets are untouched, so their
requests go on at their usual latency.

The limit is per process. On several processes (a shared store behind a load
balancer) each keeps its own buckets, so a user may start up to that many times
the rate; put a limit at the load balancer for an exact global one.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Final, final

import attrs
import trio

from actors.config import ServiceConfig

__all__ = ["DEFAULT_MAX_BUCKETS", "RateLimiter", "RateLimiterStatistics", "retry_after"]

DEFAULT_MAX_BUCKETS: Final = 100_000
"""Most buckets kept at once (about 200 bytes each)."""

# Clock differences are floats: a caller that waited exactly the wait it was told
# may find a hair less than a token, which counts as one.
_EPSILON: Final = 1e-9


@attrs.define
class _Bucket:
    tokens: float
    updated: float
    """trio's clock when ``tokens`` was last brought up to date."""


@attrs.frozen
class RateLimiterStatistics:
    """``buckets``: users with a bucket in memory (the others' would be full)."""

    buckets: int


@final
class RateLimiter:
    """A token bucket per key (a user id), on trio's clock.

    Each key starts with ``burst`` tokens and gains ``rate`` a second, up to
    ``burst``. Memory is bounded: a bucket left untouched for ``burst / rate``
    seconds is full again, exactly like a new one, so it is dropped; and past
    ``max_buckets`` the bucket touched longest ago is dropped, which lets its
    user start over with a full bucket (lenient, never stricter). Per process:
    see the module's docs. Create and use it inside ``trio.run``.

    Raises :class:`ValueError` unless ``rate`` is finite and above 0 and
    ``burst`` and ``max_buckets`` are at least 1.
    """

    def __init__(self, rate: float, burst: int, *, max_buckets: int = DEFAULT_MAX_BUCKETS) -> None:
        if not 0 < rate < math.inf:
            raise ValueError(f"rate must be finite and above 0 (got {rate!r})")
        if burst < 1 or max_buckets < 1:
            raise ValueError(f"burst and max_buckets must be >= 1 (got {burst}, {max_buckets})")
        self._rate = rate
        self._burst = float(burst)
        self._max_buckets = max_buckets
        # How long an untouched bucket takes to be full again, from empty.
        self._idle = burst / rate
        # Least recently touched first: the idle ones are at the front.
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    @classmethod
    def for_config(cls, config: ServiceConfig) -> RateLimiter | None:
        """The limiter ``config`` asks for, or None when ``rate_limit_per_user`` is 0
        (or infinite): no limit."""
        if not 0 < config.rate_limit_per_user < math.inf:
            return None
        return cls(config.rate_limit_per_user, config.rate_limit_burst)

    def take_nowait(self, key: str) -> float:
        """Take a token from ``key``'s bucket.

        Returns 0.0 when one was taken. Otherwise takes nothing and returns the
        seconds until a token will be there (above 0, at most ``1 / rate``).
        Never blocks and is not a checkpoint.
        """
        now = trio.current_time()
        self._drop_idle(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self._burst, now)
            if len(self._buckets) > self._max_buckets:
                self._buckets.popitem(last=False)
        else:
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
            bucket.updated = now
            self._buckets.move_to_end(key)
        if bucket.tokens >= 1.0 - _EPSILON:
            bucket.tokens = max(0.0, bucket.tokens - 1.0)
            return 0.0
        return (1.0 - bucket.tokens) / self._rate

    def statistics(self) -> RateLimiterStatistics:
        """How many buckets are in memory, idle ones dropped first."""
        self._drop_idle(trio.current_time())
        return RateLimiterStatistics(buckets=len(self._buckets))

    def _drop_idle(self, now: float) -> None:
        """Drop the buckets untouched for ``burst / rate`` seconds: they are full."""
        buckets = self._buckets
        while buckets:
            oldest = next(iter(buckets.values()))
            if now - oldest.updated < self._idle:
                return
            buckets.popitem(last=False)


def retry_after(wait: float) -> int:
    """``wait`` seconds as a ``Retry-After`` value: whole seconds, rounded up, at least 1,
    so that a client that waits that long finds a token."""
    return max(1, math.ceil(wait))
