"""Errors the service facade raises to its callers."""

from __future__ import annotations

__all__ = [
    "ForegroundBusy",
    "JobNotFound",
    "MissingApiKey",
    "ServerBusy",
    "ServiceError",
    "ServiceRestarting",
    "StoreUnavailable",
    "TooManyJobs",
    "UserKeyNotAllowed",
]


class ServiceError(Exception):
    """Base of the errors a caller of :class:`~actors.service.Service` should expect."""


class ServerBusy(ServiceError):
    """The global cap on running jobs is reached, or the service is shutting down."""


class StoreUnavailable(ServerBusy):
    """The store does not answer (a shared store's server is down or out of reach): try
    again later. Nothing already stored is lost."""


class ServiceRestarting(ServerBusy):
    """An actor the call needed crashed or stopped under it, and its supervisor is
    restarting it: try again. Whatever the call did before is kept or undone as the
    crash left it, as after a dropped connection."""


class ForegroundBusy(ServerBusy):
    """The cap on foreground (pass-through) streams is reached."""


class MissingApiKey(ServiceError):
    """The upstream is real, the server has no key of its own, and the request brought none."""


class TooManyJobs(ServiceError):
    """This user already runs as many jobs as the per-user cap allows."""


class UserKeyNotAllowed(ServiceError):
    """The request carries its own API key, and the configuration does not allow that."""


class JobNotFound(ServiceError, LookupError):
    """No such job for this owner: a missing job and another user's look the same."""
