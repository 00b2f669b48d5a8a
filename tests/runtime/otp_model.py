"""A pure-Python reference model of one OTP supervisor, for property tests.

It knows nothing of trio or actors: it is told which child exited, how, and
when, and it says which children run afterwards, how often each has been
started, and whether the supervisor gave up. The rules are OTP's
(``supervisor.erl``):

* ``PERMANENT`` children are restarted after any exit, ``TRANSIENT`` ones only
  after a crash, ``TEMPORARY`` ones never: they are dropped.
* Every restart decision counts once toward the intensity; more than
  ``max_restarts`` of them within ``within`` seconds and the supervisor stops
  all its children and gives up instead of restarting.
* ``ONE_FOR_ONE`` restarts the exited child; ``ONE_FOR_ALL`` every running
  child; ``REST_FOR_ONE`` the exited child and the running children started
  after it. Temporary siblings stopped by such a restart are dropped.

A restart at ``t`` counts at ``now`` if ``now - within <= t``, as OTP's
``add_restart`` keeps it. One choice is the runtime's, where OTP differs:

* A ``TRANSIENT`` child that stopped normally stays stopped for the rest of the
  supervisor's run, even when a ``ONE_FOR_ALL`` or ``REST_FOR_ONE`` sibling
  restart follows. OTP keeps such a child in its list and starts it again with
  the group.
"""

from __future__ import annotations

import attrs

from runtime.spec import Restart, Strategy

__all__ = ["ModelChild", "SupervisorModel"]


@attrs.frozen
class ModelChild:
    """One child spec: its name and restart type."""

    name: str
    restart: Restart


@attrs.define
class SupervisorModel:
    """The state of one supervisor whose children all started once, in order.

    ``running`` lists the live children in start order; ``starts`` counts the
    starts of every child, the first included; ``gave_up`` is final.
    """

    strategy: Strategy
    max_restarts: int
    within: float
    children: tuple[ModelChild, ...]
    running: list[str] = attrs.field(init=False)
    starts: dict[str, int] = attrs.field(init=False)
    gave_up: bool = attrs.field(init=False, default=False)
    _restart_times: list[float] = attrs.field(init=False, factory=list)

    def __attrs_post_init__(self) -> None:
        self.running = [child.name for child in self.children]
        self.starts = {child.name: 1 for child in self.children}

    def restarts(self, name: str) -> int:
        """How many times ``name`` has been restarted."""
        return self.starts[name] - 1

    def child_exited(self, name: str, *, crashed: bool, now: float) -> None:
        """Apply the exit of the running child ``name`` at time ``now``.

        ``crashed`` is False for a normal stop. Raises :class:`ValueError` if
        ``name`` is not running, as no such exit can happen.
        """
        if name not in self.running:
            raise ValueError(f"{name!r} is not running")
        if not self._is_restarted(name, crashed=crashed):
            self.running.remove(name)
            return
        self._restart_times = [t for t in self._restart_times if t >= now - self.within]
        self._restart_times.append(now)
        if len(self._restart_times) > self.max_restarts:
            self.gave_up = True
            self.running = []
            return
        group = self._restart_group(name)
        for sibling in group:
            if sibling != name and self._restart_type(sibling) is Restart.TEMPORARY:
                self.running.remove(sibling)
        for member in group:
            if member in self.running:
                self.starts[member] += 1

    def _is_restarted(self, name: str, *, crashed: bool) -> bool:
        restart = self._restart_type(name)
        if restart is Restart.PERMANENT:
            return True
        if restart is Restart.TRANSIENT:
            return crashed
        return False

    def _restart_group(self, name: str) -> list[str]:
        if self.strategy is Strategy.ONE_FOR_ONE:
            return [name]
        if self.strategy is Strategy.ONE_FOR_ALL:
            return list(self.running)
        return self.running[self.running.index(name) :]

    def _restart_type(self, name: str) -> Restart:
        return next(child.restart for child in self.children if child.name == name)
