"""The exceptions the runtime raises to its callers."""

from __future__ import annotations

__all__ = [
    "ActorCrashed",
    "ActorStopped",
    "AskTimeout",
    "MailboxFull",
    "NameTaken",
    "RuntimeErrorBase",
    "StartFailed",
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
    """The name is in use: a live actor has this path, or the supervisor keeps
    a child spec of that name (running or not), as OTP's ``already_started`` and
    ``already_present``."""


class StartFailed(RuntimeErrorBase):
    """A child could not be started; ``__cause__`` is why.

    ``path`` is the child that failed. For a supervisor whose static child
    failed to start (OTP's ``{shutdown, {failed_to_start_child, Id, Reason}}``),
    ``failed_child`` is that child's name and ``__cause__`` the child's own
    :class:`StartFailed`; for an actor whose ``on_start`` raised, it is None and
    ``__cause__`` is what ``on_start`` raised.
    """

    def __init__(self, path: str, failed_child: str | None = None, reason: str = "") -> None:
        self.path = path
        self.failed_child = failed_child
        where = f"{path!r}" if failed_child is None else f"{path!r}: child {failed_child!r}"
        super().__init__(f"failed to start {where}" + (f": {reason}" if reason else ""))


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
