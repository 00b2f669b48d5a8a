"""A seeded fault injector: it crashes the service's actors at random moments.

An :class:`Injector` draws everything from its own ``random.Random``: when to strike
next, what (a :class:`Kind`), which stream, and how (a :class:`Way`):

- :attr:`Way.TASK`: a task of the actor raises now, so the actor dies wherever it is,
  in the middle of a handler too (between a store write and the next, say);
- :attr:`Way.MESSAGE`: a message it does not handle, so it dies at that message,
  after what was queued before it.

The ``service`` supervisor itself is crashed the way an OTP supervisor dies: its
children are crashed until it passes its restart intensity and gives up, and the root
restarts it with new actors at the old paths.

The injector keeps to what the tree survives by design, so that what breaks is a bug,
not an order to die: the root allows one restart in 5 s (the ``service`` supervisor and
the HTTP adapter share it), so those two faults come ``root_gap`` seconds apart; the
``service`` supervisor allows 10 restarts of its children in 60 s, so crashes of single
children stay under ``service_budget`` in any 60 s, and only an escalation goes past.
Every kind it is given is struck at least once (as soon as the limits allow), in an
order drawn from the seed; with ``roots_first``, the root's children come first, so
that a short run has the time to strike both.

After each fault it waits for the crashed actor to be back (or, for a stream, gone:
streams are temporary), then asks ``ready()`` every 10 ms: the fault's ``recovery`` is
the time from the crash to the first yes.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import attrs
import trio

from actors.dependencies import NOTIFIER, PERSISTER, REGISTRY, SERVICE, STORE, STREAMS, SWEEPER
from runtime import ActorStopped, ActorSystem, MailboxFull
from runtime.cell import ActorCell
from runtime.snapshot import ActorState

__all__ = ["HTTP", "ChaosCrash", "Fault", "Injector", "Kind", "Way"]

HTTP: Final = "http"
"""Where the tests (and ``serve``) spawn the HTTP adapter: a child of the root."""


class Kind(enum.Enum):
    """What a fault crashes."""

    REGISTRY = "registry"
    NOTIFIER = "notifier"
    PERSISTER = "persister"
    STORE_KEEPER = "store keeper"
    SWEEPER = "sweeper"
    STREAM = "stream actor"
    SERVICE = "service supervisor"
    HTTP_ADAPTER = "HTTP adapter"


class Way(enum.Enum):
    """How an actor is crashed (see the module docs)."""

    TASK = "task"
    MESSAGE = "message"


_PATHS: Final = {
    Kind.REGISTRY: REGISTRY,
    Kind.NOTIFIER: NOTIFIER,
    Kind.PERSISTER: PERSISTER,
    Kind.STORE_KEEPER: STORE,
    Kind.SWEEPER: SWEEPER,
    Kind.HTTP_ADAPTER: HTTP,
}
_SERVICE_CHILDREN: Final = (
    Kind.STORE_KEEPER,
    Kind.NOTIFIER,
    Kind.PERSISTER,
    Kind.REGISTRY,
    Kind.SWEEPER,
)
_ROOT_CHILDREN: Final = (Kind.SERVICE, Kind.HTTP_ADAPTER)
# The service supervisor's intensity (actors.service.service_spec): more than 10
# restarts of its children within 60 s and it gives up.
_SERVICE_MAX_RESTARTS: Final = 10
_SERVICE_WINDOW: Final = 60.0
# How long the injector waits for a crashed actor to be back before it calls the
# fault unrecovered (recovery None); far above any restart the tests see.
_BACK_LIMIT: Final = 30.0
_PROBE_INTERVAL: Final = 0.01


class ChaosCrash(Exception):
    """Raised in an actor by the injector (:attr:`Way.TASK`)."""


@attrs.frozen
class _Unhandled:
    """A message no actor of the service handles (:attr:`Way.MESSAGE`)."""


@attrs.define
class Fault:
    """One fault: ``at`` is trio's clock when the crash was dealt (for an escalation,
    the last crash of it), ``crashes`` how many crashes it took, ``recovery`` the
    seconds from ``at`` until ``ready()`` said yes (None if it never did)."""

    kind: Kind
    path: str
    way: Way
    at: float
    crashes: int = 1
    recovery: float | None = None
    came_back: bool = True
    """False if the crashed actor was not back (or a stream not gone) within 30 s."""

    def __str__(self) -> str:
        recovery = "never" if self.recovery is None else f"{self.recovery:.3f} s"
        return (
            f"{self.at:9.3f} {self.kind.value} {self.path} by {self.way.value} "
            f"x{self.crashes}, ready after {recovery}"
        )


class Injector:
    """Crashes actors of ``system`` at random moments until :meth:`stop`; see the module docs.

    ``kinds`` are what it may strike; ``mean_gap`` the mean seconds between faults
    (exponentially distributed); ``ready`` answers whether the service is ready.
    """

    def __init__(
        self,
        system: ActorSystem,
        rng: random.Random,
        kinds: Sequence[Kind],
        *,
        ready: Callable[[], Awaitable[bool]],
        mean_gap: float,
        root_gap: float = 6.0,
        service_budget: int = 6,
        roots_first: bool = False,
    ) -> None:
        if service_budget >= _SERVICE_MAX_RESTARTS:
            raise ValueError("service_budget must stay under the service's intensity")
        self.faults: list[Fault] = []
        self._system = system
        self._rng = rng
        self._kinds = list(kinds)
        self._ready = ready
        self._mean_gap = mean_gap
        self._root_gap = root_gap
        self._service_budget = service_budget
        # Restarts of the service's children in its current run, on trio's clock.
        self._service_restarts: deque[float] = deque()
        self._last_root_fault = -float("inf")
        self._stopping = trio.Event()
        # The kinds not struck yet, in the order they are due.
        self._pending = list(self._kinds)
        rng.shuffle(self._pending)
        if roots_first:
            self._pending.sort(key=lambda kind: kind not in _ROOT_CHILDREN)
        self._all_struck = trio.Event()

    @property
    def crashes(self) -> int:
        """How many crashes were dealt, an escalation's each counted."""
        return sum(fault.crashes for fault in self.faults)

    async def wait_all_struck(self) -> None:
        """Wait until every kind it was given has been struck at least once."""
        await self._all_struck.wait()

    def stop(self) -> None:
        """Deal no more faults; :meth:`run` returns once the current one has recovered."""
        self._stopping.set()

    async def run(self) -> None:
        """Deal faults until :meth:`stop`."""
        while not self._stopping.is_set():
            with trio.move_on_after(self._rng.expovariate(1.0 / self._mean_gap)):
                await self._stopping.wait()
            if self._stopping.is_set():
                return
            kind = self._choose()
            if kind is None:
                continue
            fault = await self._strike(kind)
            if fault is not None:
                self.faults.append(fault)
                if kind in self._pending:
                    self._pending.remove(kind)
                    if not self._pending:
                        self._all_struck.set()
                if fault.came_back:
                    await self._measure_recovery(fault)

    # -- choosing ------------------------------------------------------------------

    def _choose(self) -> Kind | None:
        """The next kind: the first not struck yet that may be struck now, else any
        that may; None if none may."""
        allowed = [kind for kind in self._kinds if self._allowed(kind)]
        for kind in self._pending:
            if kind in allowed:
                return kind
        return self._rng.choice(allowed) if allowed else None

    def _allowed(self, kind: Kind) -> bool:
        now = trio.current_time()
        if kind in _ROOT_CHILDREN:
            return now - self._last_root_fault > self._root_gap
        if kind is Kind.STREAM:
            return bool(self._streams())
        self._forget_old_restarts(now)
        return len(self._service_restarts) < self._service_budget

    def _forget_old_restarts(self, now: float) -> None:
        # A restart exactly a window old still counts for the supervisor: keep it.
        while self._service_restarts and self._service_restarts[0] < now - _SERVICE_WINDOW:
            self._service_restarts.popleft()

    def _streams(self) -> list[str]:
        """The paths of the running stream actors, in start order."""
        node = self._system.snapshot().find(STREAMS)
        if node is None:
            return []
        return [child.path for child in node.children if child.state is ActorState.RUNNING]

    # -- striking ------------------------------------------------------------------

    async def _strike(self, kind: Kind) -> Fault | None:
        if kind is Kind.SERVICE:
            return await self._escalate()
        if kind is Kind.STREAM:
            streams = self._streams()
            if not streams:
                return None
            path = self._rng.choice(streams)
        else:
            path = _PATHS[kind]
        way = self._rng.choice([Way.TASK, Way.MESSAGE])
        restarts = self._restarts(path)
        if not self._crash(path, way):
            return None
        fault = Fault(kind, path, way, trio.current_time())
        if kind in _ROOT_CHILDREN:
            self._last_root_fault = fault.at
        elif kind is not Kind.STREAM:
            self._service_restarts.append(fault.at)
        fault.came_back = await self._back(path, restarts, gone=kind is Kind.STREAM)
        return fault

    def _crash(self, path: str, way: Way) -> bool:
        """Crash the actor at ``path``; False if it is not there to crash."""
        cell = self._system.cell_at(path)
        if not isinstance(cell, ActorCell) or cell.state is not ActorState.RUNNING:
            return False
        if way is Way.TASK:
            try:
                cell.start_task(_raise, ChaosCrash(f"chaos: crash {path}"), name="chaos")
            except RuntimeError:  # between two runs
                return False
            return True
        ref = self._system.lookup(path)
        if ref is None:
            return False
        try:
            ref.tell_nowait(_Unhandled())
        except (MailboxFull, ActorStopped):
            return False
        return True

    async def _escalate(self) -> Fault | None:
        """Crash children of ``service`` until it gives up and the root restarts it."""
        node = self._system.snapshot().find(SERVICE)
        if node is None or node.state is not ActorState.RUNNING:
            return None
        before = node.restarts
        crashes = 0
        while self._restarts(SERVICE) == before:
            kind = self._rng.choice(_SERVICE_CHILDREN)
            path = _PATHS[kind]
            restarts = self._restarts(path)
            if self._crash(path, Way.TASK):
                crashes += 1
                await self._back(path, restarts, gone=False, or_service_restarted=before)
            else:
                await trio.sleep(_PROBE_INTERVAL)
        at = trio.current_time()
        # A new run of the supervisor: its children's restarts start over.
        self._service_restarts.clear()
        self._last_root_fault = at
        return Fault(Kind.SERVICE, SERVICE, Way.TASK, at, crashes)

    def _restarts(self, path: str) -> int:
        node = self._system.snapshot().find(path)
        return -1 if node is None else node.restarts

    async def _back(
        self, path: str, restarts: int, *, gone: bool, or_service_restarted: int | None = None
    ) -> bool:
        """Wait until the actor at ``path`` runs again after a restart (``gone``: until
        it is gone). False if that takes longer than ``_BACK_LIMIT``."""
        with trio.move_on_after(_BACK_LIMIT):
            while True:
                node = self._system.snapshot().find(path)
                if gone and node is None:
                    return True
                if (
                    not gone
                    and node is not None
                    and node.restarts > restarts
                    and node.state is ActorState.RUNNING
                ):
                    return True
                if (
                    or_service_restarted is not None
                    and self._restarts(SERVICE) != or_service_restarted
                ):
                    return True
                await trio.sleep(_PROBE_INTERVAL)
        return False

    async def _measure_recovery(self, fault: Fault) -> None:
        with trio.move_on_after(_BACK_LIMIT):
            # A probe, not a wait for an event: readiness is only known by asking.
            while True:
                if await self._ready():
                    fault.recovery = trio.current_time() - fault.at
                    return
                await trio.sleep(_PROBE_INTERVAL)


async def _raise(error: ChaosCrash) -> None:
    raise error
