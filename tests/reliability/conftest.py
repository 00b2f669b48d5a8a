"""The ``figures`` fixture, and the table of every figure at the end of the run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import attrs
import pytest

from tests.reliability.figures import SOAK, Figures

_FIGURES = pytest.StashKey[Figures]()


def _figures(config: pytest.Config) -> Figures:
    return config.stash.setdefault(_FIGURES, Figures())


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    """The run's figures: ``figures.record(Figure(...))`` adds this test's row."""
    return _figures(request.config)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    found = _figures(config)
    if not found.rows:
        return
    size = "soak sizes (TROUPE_SOAK=1)" if SOAK else "test sizes"
    terminalreporter.section(f"reliability figures, {size}")
    terminalreporter.write_line(found.table())
    target = os.environ.get("TROUPE_FIGURES")
    if target:
        rows = [attrs.asdict(figure) for figure in found.rows]
        Path(target).write_text(json.dumps(rows, indent=2) + "\n")
