"""The exceptions the runtime raises to its callers."""

from __future__ import annotations

__all__ = [
    "ActorCrashed",
    "ActorStopped",
    "AskTimeout",
    "MailboxFull",
    "NameTaken",
    "RuntimeErrorBase",
    "SupervisorGaveUp",
]


class RuntimeErrorBase(Exception):
    """Base of every error the runtime raises on purpose."""


class AskTimeout(RuntimeErrorBase, TimeoutError):
    """An :meth:`ActorRef.ask` got no reply within its timeout.

    The message names the target, the message type and the timeout. The actor
    may still handle the message later; its reply is then dropped.
    """


class ActorCrashed(RuntimeErrorBase):
    """The handler raised while handling an ask; ``__cause__`` is what it raised."""


class ActorStopped(RuntimeErrorBase):
    """The actor stopped for good before it could take or answer the message."""


class MailboxFull(RuntimeErrorBase):
    """:meth:`ActorRef.tell_nowait` found no room in the mailbox."""


class NameTaken(RuntimeErrorBase, ValueError):
    """Another live actor already has this path."""


class SupervisorGaveUp(RuntimeErrorBase):
    """A supervisor saw more restarts than its intensity allows and stopped.

    It propagates to the parent supervisor as a crash of that child; from the
    root it leaves :func:`open_system` in the embedding program.
    """

    def __init__(self, path: str, restarts: int, within: float, last_failure: str | None) -> None:
        self.path = path
        self.restarts = restarts
        self.within = within
        self.last_failure = last_failure
        super().__init__(
            f"supervisor {path or '<root>'!r} gave up after {restarts} restarts within "
            f"{within:g}s; last failure: {last_failure}"
        )
