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


def _finite_at_least_zero(owner: str) -> Callable[[Any, attrs.Attribute[Any], float], None]:
    def check(_instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{owner}.{attribute.name} must be a number, got {value!r}")
        if not (0 <= value < math.inf):
            raise ValueError(
                f"{owner}.{attribute.name} must be finite and at least 0, got {value!r}"
            )

    return check


def _int_at_least(owner: str, minimum: int) -> Callable[[Any, attrs.Attribute[Any], int], None]:
    def check(_instance: Any, attribute: attrs.Attribute[Any], value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{owner}.{attribute.name} must be an integer, got {value!r}")
        if value < minimum:
            raise ValueError(f"{owner}.{attribute.name} must be at least {minimum}, got {value!r}")

    return check


@attrs.frozen
class Backoff:
    """Exponential delay before a restart.

    The n-th restart inside the supervisor's intensity window waits
    ``min(maximum, initial * multiplier ** (n - 1))`` seconds on trio's clock.
    ``initial`` and ``maximum`` are finite and at least 0, ``multiplier`` at
    least 1; anything else is a :class:`ValueError` naming the field.
    """

    initial: float = attrs.field(default=0.1, validator=_finite_at_least_zero("Backoff"))
    maximum: float = attrs.field(default=10.0, validator=_finite_at_least_zero("Backoff"))
    multiplier: float = attrs.field(default=2.0, validator=_finite_at_least_zero("Backoff"))

    def __attrs_post_init__(self) -> None:
        if self.multiplier < 1:
            raise ValueError(f"Backoff.multiplier must be at least 1, got {self.multiplier!r}")

    def delay(self, nth_restart: int) -> float:
        return float(min(self.maximum, self.initial * self.multiplier ** max(0, nth_restart - 1)))


def _child_specs(children: Iterable[ChildSpec]) -> tuple[ChildSpec, ...]:
    return tuple(children)


def _check_within(_instance: Any, _attribute: Any, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"SupervisorSpec.within must be a number, got {value!r}")
    if not (0 < value < math.inf):
        raise ValueError(f"SupervisorSpec.within must be finite and above 0, got {value!r}")


def _check_unique_names(_instance: Any, _attribute: Any, children: tuple[ChildSpec, ...]) -> None:
    seen: set[str] = set()
    for child in children:
        if not isinstance(child, ChildSpec):
            raise TypeError(f"SupervisorSpec.children must hold ChildSpecs, got {child!r}")
        if child.name in seen:
            raise ValueError(f"SupervisorSpec.children has two children named {child.name!r}")
        seen.add(child.name)


@attrs.frozen
class SupervisorSpec:
    """A supervisor: its strategy, restart intensity and static children.

    The defaults are OTP's: one restart within 5 seconds. More than
    ``max_restarts`` restarts within ``within`` seconds make the supervisor
    give up: it stops every child in reverse start order and exits with
    reason ``shutdown``, carrying :class:`~runtime.errors.SupervisorGaveUp`.
    ``max_restarts`` is an integer of at least 0; ``within`` is finite and
    above 0; child names are unique. Anything else is a :class:`ValueError`
    (or :class:`TypeError` for a wrong type) naming the field.

    ``children`` are the *static* children: they are started in order on
    every run of the supervisor. Children added later with
    :meth:`~runtime.ref.SupervisorRef.start_child` are *dynamic*: they take
    part in this run's group restarts, but a restart of the supervisor itself
    by its parent starts the static children only, as OTP does.
    """

    strategy: Strategy = attrs.field(default=Strategy.ONE_FOR_ONE)
    max_restarts: int = attrs.field(default=1, validator=_int_at_least("SupervisorSpec", 0))
    within: float = attrs.field(default=5.0, validator=_check_within)
    children: tuple[ChildSpec, ...] = attrs.field(
        default=(), converter=_child_specs, validator=_check_unique_names
    )
    backoff: Backoff | None = None

    @strategy.validator
    def _check_strategy(self, _attribute: Any, value: Strategy) -> None:
        if not isinstance(value, Strategy):
            raise TypeError(f"SupervisorSpec.strategy must be a Strategy, got {value!r}")


@attrs.frozen
class ChildSpec:
    """One child of a supervisor.

    ``factory`` is any callable returning a fresh :class:`~runtime.actor.Actor`
    (a class, a ``functools.partial``…), called on every (re)start, or a
    :class:`SupervisorSpec` for a nested supervisor. ``shutdown`` is the grace
    time in seconds for the child to stop (its ``on_stop`` included) before it
    is cancelled: finite and at least 0, or ``math.inf`` for a supervisor.
    ``None`` means 5 s for an actor and ``math.inf`` for a supervisor, as in
    OTP; a supervisor's stop is still bounded, by its children's own limits.
    ``mailbox_size`` is at least 1. Anything else is a :class:`ValueError`
    naming the field.
    """

    name: str = attrs.field()
    factory: Callable[[], Actor] | SupervisorSpec = attrs.field()
    restart: Restart = attrs.field(default=Restart.PERMANENT)
    shutdown: float | None = attrs.field(default=None)
    mailbox_size: int = attrs.field(default=1000, validator=_int_at_least("ChildSpec", 1))

    @name.validator
    def _check_name(self, _attribute: Any, value: str) -> None:
        if not isinstance(value, str) or not value or "/" in value:
            raise ValueError(f"ChildSpec.name must be non-empty and contain no '/': {value!r}")

    @factory.validator
    def _check_factory(self, _attribute: Any, value: Any) -> None:
        if not isinstance(value, SupervisorSpec) and not callable(value):
            raise TypeError(f"ChildSpec.factory must be callable or a SupervisorSpec: {value!r}")

    @restart.validator
    def _check_restart(self, _attribute: Any, value: Restart) -> None:
        if not isinstance(value, Restart):
            raise TypeError(f"ChildSpec.restart must be a Restart, got {value!r}")

    @shutdown.validator
    def _check_shutdown(self, _attribute: Any, value: float | None) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"ChildSpec.shutdown must be a number or None, got {value!r}")
        if value == math.inf and isinstance(self.factory, SupervisorSpec):
            return
        if not (0 <= value < math.inf):
            raise ValueError(
                "ChildSpec.shutdown must be finite and at least 0 "
                f"(math.inf only for a supervisor), got {value!r}"
            )

    @property
    def is_supervisor(self) -> bool:
        return isinstance(self.factory, SupervisorSpec)

    @property
    def grace(self) -> float:
        """The shutdown grace time in seconds, defaults applied."""
        if self.shutdown is not None:
            return float(self.shutdown)
        return math.inf if self.is_supervisor else 5.0
