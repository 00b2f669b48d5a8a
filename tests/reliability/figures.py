"""What each reliability test tried and what it cost, one row per test.

Every test in ``tests/reliability`` records a :class:`Figure` through the ``figures``
fixture; the run's summary prints them all as one Markdown table (the README's
reliability section is that table). ``make test`` runs the small sizes; ``make soak``
sets ``TROUPE_SOAK=1`` and the tests take their large ones (:func:`sized`).
``TROUPE_FIGURES=PATH`` also writes the rows to ``PATH`` as JSON.
"""

from __future__ import annotations

import os
from typing import Final

import attrs

__all__ = ["SOAK", "Figure", "Figures", "sized"]

SOAK: Final = os.environ.get("TROUPE_SOAK", "") == "1"
"""True under ``make soak``: run the large version of each test."""


def sized(quick: int, soak: int) -> int:
    """``soak`` under ``make soak``, else ``quick``."""
    return soak if SOAK else quick


@attrs.frozen
class Figure:
    """One test's row in the reliability table.

    ``lost`` counts what should have survived and did not (deltas, jobs,
    notifications, acknowledged writes; ``what_lost`` names the unit); the tests
    assert it is 0, so a table with a non-zero figure never comes from a passing run.
    ``recovery_s`` is the longest time from a fault to the service being whole again
    (``None`` when the fault needs no recovery, such as a refused request).
    """

    test: str
    injected: str
    times: int
    jobs: int
    lost: int = 0
    what_lost: str = "deltas"
    recovery_s: float | None = None
    clock: str = "real"
    """``"real"``, or ``"virtual"`` for a test under trio's MockClock."""

    def row(self) -> str:
        """The figure as a Markdown table row."""
        if self.recovery_s is None:
            recovery = "-"
        else:
            recovery = f"{self.recovery_s:.3f} s" + (
                " (virtual)" if self.clock == "virtual" else ""
            )
        return (
            f"| {self.test} | {self.injected} | {self.times:,} | {self.jobs:,} "
            f"| {self.lost} {self.what_lost} | {recovery} |"
        )


HEADER: Final = (
    "| test | injected | times | jobs | lost | longest recovery |\n|---|---|---|---|---|---|"
)


@attrs.define
class Figures:
    """The rows recorded during one pytest run."""

    rows: list[Figure] = attrs.Factory(list)

    def record(self, figure: Figure) -> None:
        """Keep ``figure`` for the run's summary."""
        self.rows.append(figure)

    def table(self) -> str:
        """Every row so far, under the header, as Markdown."""
        return "\n".join([HEADER, *(figure.row() for figure in self.rows)])
