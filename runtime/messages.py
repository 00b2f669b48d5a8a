"""Messages the runtime itself delivers to actors."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from runtime.ref import ActorRef

__all__ = ["ExitReason", "Terminated"]


class ExitReason(enum.Enum):
    """How a run of an actor or supervisor ended."""

    NORMAL = "normal"
    """It stopped itself: ``context.stop()``."""
    SHUTDOWN = "shutdown"
    """Its supervisor stopped it, or, for a supervisor, it gave up."""
    CRASHED = "crashed"
    """A hook, a handler or a task of it raised, or it failed to start."""
    KILLED = "killed"
    """It outlived its shutdown grace time and was cancelled."""

    @property
    def abnormal(self) -> bool:
        """True for a crash or a kill: what a ``TRANSIENT`` child restarts after."""
        return self in (ExitReason.CRASHED, ExitReason.KILLED)


@attrs.frozen
class Terminated:
    """Sent to every watcher when ``ref`` has stopped for good.

    ``reason`` says how its last run ended (see :class:`ExitReason`): a child
    that stopped or crashed by itself keeps that reason even when its
    supervisor was shutting down, as OTP's ``sup_stop_race``. ``error`` is the
    exception of that run, if any (:class:`~runtime.errors.SupervisorGaveUp`
    for a supervisor that gave up).
    """

    ref: ActorRef
    reason: ExitReason
    error: BaseException | None = attrs.field(default=None, eq=False)
