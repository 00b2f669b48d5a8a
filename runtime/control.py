"""The messages a supervisor understands; one place for the whole protocol."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from runtime.spec import ChildSpec

if TYPE_CHECKING:
    from runtime.cell import Cell, Exit

__all__ = ["ChildExited", "StartChild", "StopChild", "WhichChildren"]


@attrs.frozen
class StartChild:
    """Ask: start a child from ``spec``; the reply is its ref."""

    spec: ChildSpec


@attrs.frozen
class StopChild:
    """Ask: stop the child ``name`` for good and forget it; the reply is a bool."""

    name: str


@attrs.frozen
class WhichChildren:
    """Ask: the refs of the live children in start order."""


@attrs.frozen
class ChildExited:
    """Tell, from the runtime: run ``run_id`` of ``cell`` ended with ``exit``."""

    cell: Cell
    run_id: int
    exit: Exit
