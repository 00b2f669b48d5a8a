"""troupe's actor runtime for trio, with OTP-grade supervision.

Start with :func:`open_system`, subclass :class:`Actor`, and talk to actors
through their :class:`ActorRef`. See the README for a tour.
"""

from runtime.actor import Actor, ActorContext
from runtime.errors import (
    ActorCrashed,
    ActorStopped,
    AskTimeout,
    MailboxFull,
    NameTaken,
    StartFailed,
    SupervisorGaveUp,
)
from runtime.messages import ExitReason, Terminated
from runtime.ref import ActorRef, SupervisorRef
from runtime.snapshot import ActorSnapshot, ActorState
from runtime.spec import Backoff, ChildSpec, Restart, Strategy, SupervisorSpec
from runtime.system import ActorSystem, open_system

__all__ = [
    "Actor",
    "ActorContext",
    "ActorCrashed",
    "ActorRef",
    "ActorSnapshot",
    "ActorState",
    "ActorStopped",
    "ActorSystem",
    "AskTimeout",
    "Backoff",
    "ChildSpec",
    "ExitReason",
    "MailboxFull",
    "NameTaken",
    "Restart",
    "StartFailed",
    "Strategy",
    "SupervisorGaveUp",
    "SupervisorRef",
    "SupervisorSpec",
    "Terminated",
    "open_system",
]
