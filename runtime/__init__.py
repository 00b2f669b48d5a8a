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
    SupervisorGaveUp,
)
from runtime.messages import Terminated
from runtime.ref import ActorRef, SupervisorRef
from runtime.snapshot import ActorSnapshot
from runtime.spec import Backoff, ChildSpec, Restart, Strategy, SupervisorSpec
from runtime.system import ActorSystem, open_system

__all__ = [
    "Actor",
    "ActorContext",
    "ActorCrashed",
    "ActorRef",
    "ActorSnapshot",
    "ActorStopped",
    "ActorSystem",
    "AskTimeout",
    "Backoff",
    "ChildSpec",
    "MailboxFull",
    "NameTaken",
    "Restart",
    "Strategy",
    "SupervisorGaveUp",
    "SupervisorRef",
    "SupervisorSpec",
    "Terminated",
    "open_system",
]
