"""troupe's background-streaming service for LLM responses, built on :mod:`runtime`.

``open_service(config)`` starts the supervision tree and returns the
:class:`Service` facade; see the README for a tour.
"""

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
