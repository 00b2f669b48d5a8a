"""How a supervisor is configured: strategies, restart types and child specs."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from runtime.actor import Actor

__all__ = ["Backoff", "ChildSpec", "Restart", "Strategy", "SupervisorSpec"]


class Strategy(enum.Enum):
    """Which children restart when one of them must (OTP's ``strategy``)."""

    ONE_FOR_ONE = "one_for_one"
    """Only the child that exited."""
    ONE_FOR_ALL = "one_for_all"
    """Every child: the others are stopped in reverse start order, then all start again."""
    REST_FOR_ONE = "rest_for_one"
    """The child that exited and every child started after it."""


class Restart(enum.Enum):
    """When a child that exited is started again (OTP's ``restart``)."""

    PERMANENT = "permanent"
    """Always."""
    TRANSIENT = "transient"
    """Only after a crash; a normal stop is final."""
    TEMPORARY = "temporary"
    """Never; the child is removed when it exits."""


@attrs.frozen
class Backoff:
    """Exponential delay before a restart.

    The n-th restart inside the supervisor's intensity window waits
    ``min(maximum, initial * multiplier ** (n - 1))`` seconds on trio's clock.
    """

    initial: float = 0.1
    maximum: float = 10.0
    multiplier: float = 2.0

    def delay(self, nth_restart: int) -> float:
        return float(min(self.maximum, self.initial * self.multiplier ** max(0, nth_restart - 1)))


def _child_specs(children: Iterable[ChildSpec]) -> tuple[ChildSpec, ...]:
    return tuple(children)


@attrs.frozen
class SupervisorSpec:
    """A supervisor: its strategy, restart intensity and initial children.

    More than ``max_restarts`` restarts within ``within`` seconds make the
    supervisor stop every child in reverse start order and fail upward with
    :class:`~runtime.errors.SupervisorGaveUp`.
    """

    strategy: Strategy = Strategy.ONE_FOR_ONE
    max_restarts: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    within: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))
    children: tuple[ChildSpec, ...] = attrs.field(default=(), converter=_child_specs)
    backoff: Backoff | None = None


@attrs.frozen
class ChildSpec:
    """One child of a supervisor.

    ``factory`` is any callable returning a fresh :class:`~runtime.actor.Actor`
    (a class, a ``functools.partial``…), called on every (re)start, or a
    :class:`SupervisorSpec` for a nested supervisor. ``shutdown`` is the grace
    time in seconds for the child's ``on_stop`` before it is cancelled; ``None``
    means 5 s for an actor and no limit for a supervisor, as in OTP.
    """

    name: str = attrs.field()
    factory: Callable[[], Actor] | SupervisorSpec = attrs.field()
    restart: Restart = Restart.PERMANENT
    shutdown: float | None = None
    mailbox_size: int = attrs.field(default=1000, validator=attrs.validators.ge(1))

    @name.validator
    def _check_name(self, _attribute: Any, value: str) -> None:
        if not value or "/" in value:
            raise ValueError(f"child name must be non-empty and contain no '/': {value!r}")

    @property
    def grace(self) -> float:
        if self.shutdown is not None:
            return self.shutdown
        return math.inf if isinstance(self.factory, SupervisorSpec) else 5.0
