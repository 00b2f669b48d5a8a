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
* ``ONE_FOR_ONE`` restarts the exited child; ``ONE_FOR_ALL`` every child;
  ``REST_FOR_ONE`` the exited child and the children started after it.
  Temporary siblings stopped by such a restart are dropped.
* ``ONE_FOR_ALL`` and ``REST_FOR_ONE`` restart every *kept* spec of the
  group, running or not: a ``TRANSIENT`` child that stopped normally stays in
  the list and starts again with its group (OTP's
  ``restart_multiple_children``).
* Starting stops at the first child that fails to start; the restart is then
  tried again from that child, as one more restart (OTP's ``try_again``).
* A supervisor that gives up exits with reason ``shutdown``.

A restart at ``t`` counts at ``now`` if ``now - within <= t``, as OTP's
``add_restart`` keeps it.
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

    ``kept`` lists the kept specs in start order, ``running`` the live
    children in start order; ``starts`` counts the start attempts of every
    child, the first and failed ones included; ``gave_up`` is final.
    ``fail_next_start`` names the children whose next start fails, once each.
    """

    strategy: Strategy
    max_restarts: int
    within: float
    children: tuple[ModelChild, ...]
    kept: list[str] = attrs.field(init=False)
    running: list[str] = attrs.field(init=False)
    starts: dict[str, int] = attrs.field(init=False)
    gave_up: bool = attrs.field(init=False, default=False)
    fail_next_start: set[str] = attrs.field(init=False, factory=set)
    _restart_times: list[float] = attrs.field(init=False, factory=list)

    def __attrs_post_init__(self) -> None:
        self.kept = [child.name for child in self.children]
        self.running = list(self.kept)
        self.starts = {child.name: 1 for child in self.children}

    def restarts(self, name: str) -> int:
        """How many times ``name`` has been restarted, failed attempts included."""
        return self.starts[name] - 1

    def child_exited(self, name: str, *, crashed: bool, now: float) -> None:
        """Apply the exit of the running child ``name`` at time ``now``.

        ``crashed`` is False for a normal stop. Raises :class:`ValueError` if
        ``name`` is not running, as no such exit can happen.
        """
        if name not in self.running:
            raise ValueError(f"{name!r} is not running")
        self.running.remove(name)
        if not self._is_restarted(name, crashed=crashed):
            if self._restart_type(name) is Restart.TEMPORARY:
                self.kept.remove(name)
            return
        while True:
            self._restart_times = [t for t in self._restart_times if t >= now - self.within]
            self._restart_times.append(now)
            if len(self._restart_times) > self.max_restarts:
                self.gave_up = True
                self.running = []
                return
            group = self._restart_group(name)
            for sibling in group:
                if sibling in self.running:
                    self.running.remove(sibling)
                if sibling != name and self._restart_type(sibling) is Restart.TEMPORARY:
                    self.kept.remove(sibling)
            failed = None
            for member in [m for m in group if m in self.kept]:
                self.starts[member] += 1
                if member in self.fail_next_start:
                    self.fail_next_start.discard(member)
                    failed = member
                    break
                self.running.append(member)
            self.running.sort(key=self.kept.index)
            if failed is None:
                return
            name = failed

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
            return list(self.kept)
        return self.kept[self.kept.index(name) :]

    def _restart_type(self, name: str) -> Restart:
        return next(child.restart for child in self.children if child.name == name)
