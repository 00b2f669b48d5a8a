"""Wall-clock time that advances with trio's clock.

Records need real UTC timestamps (they outlive the process), and tests need
time to move with ``trio.testing.MockClock``. :class:`TrioWallClock` gives
both: it reads the wall clock once and from then on adds trio's elapsed time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import trio

__all__ = ["TrioWallClock"]


class TrioWallClock:
    """``now()`` is the UTC time at creation plus the trio time elapsed since.

    Create it inside ``trio.run``.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._wall_start = start or datetime.now(UTC)
        self._trio_start = trio.current_time()

    def now(self) -> datetime:
        return self._wall_start + timedelta(seconds=trio.current_time() - self._trio_start)
