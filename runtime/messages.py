"""Messages the runtime itself delivers to actors."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from runtime.ref import ActorRef

__all__ = ["Terminated"]


@attrs.frozen
class Terminated:
    """Sent to every watcher when ``ref`` has stopped for good.

    ``reason`` is ``"normal"`` (it stopped itself), ``"shutdown"`` (its
    supervisor stopped it), ``"crashed"`` or ``"killed"`` (it outlived its
    shutdown grace time). ``error`` is the exception of the last crash, if any.
    """

    ref: ActorRef
    reason: str
    error: BaseException | None = attrs.field(default=None, eq=False)
