"""troupe's background-streaming service for LLM responses, built on :mod:`runtime`.

``open_service(config)`` starts the supervision tree and returns the
:class:`Service` facade; see the README for a tour.

The names below are handed on lazily, so importing a subpackage (say
``actors.client``) loads only what that subpackage needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from actors.api import ChatRequest, DeltaEvent, JobEvent, JobView, SnapshotEvent, StatusEvent
    from actors.config import ConfigError, ServiceConfig, load_config
    from actors.errors import (
        JobNotFound,
        ServerBusy,
        ServiceError,
        TooManyJobs,
        UserKeyNotAllowed,
    )
    from actors.model import Job, JobStatus, Notification, Owner, Usage
    from actors.service import Service, open_service

# Each public name, and the module that defines it.
_HOMES = {
    "ChatRequest": "actors.api",
    "DeltaEvent": "actors.api",
    "JobEvent": "actors.api",
    "JobView": "actors.api",
    "SnapshotEvent": "actors.api",
    "StatusEvent": "actors.api",
    "ConfigError": "actors.config",
    "ServiceConfig": "actors.config",
    "load_config": "actors.config",
    "JobNotFound": "actors.errors",
    "ServerBusy": "actors.errors",
    "ServiceError": "actors.errors",
    "TooManyJobs": "actors.errors",
    "UserKeyNotAllowed": "actors.errors",
    "Job": "actors.model",
    "JobStatus": "actors.model",
    "Notification": "actors.model",
    "Owner": "actors.model",
    "Usage": "actors.model",
    "Service": "actors.service",
    "open_service": "actors.service",
}

__all__ = [
    "ChatRequest",
    "ConfigError",
    "DeltaEvent",
    "Job",
    "JobEvent",
    "JobNotFound",
    "JobStatus",
    "JobView",
    "Notification",
    "Owner",
    "ServerBusy",
    "Service",
    "ServiceConfig",
    "ServiceError",
    "SnapshotEvent",
    "StatusEvent",
    "TooManyJobs",
    "Usage",
    "UserKeyNotAllowed",
    "load_config",
    "open_service",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'actors' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
