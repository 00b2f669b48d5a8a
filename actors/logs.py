"""Structured logs: JSON lines on stderr, with the request id bound per request.

Fields whose names look secret are replaced before rendering, so an API key
or token passed to a logger by mistake never reaches the output.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Final

import structlog

__all__ = ["configure_logging", "is_secret_name"]

# A field is secret when its name holds one of these, in any case. "token" is not
# followed by "s": counts of tokens (``prompt_tokens``, ``completion_tokens``) are what
# an operator reads the logs for.
_SECRET_NAME: Final = re.compile(
    r"api[-_]?key|authorization|cookie|credential|password|secret|token(?!s)", re.IGNORECASE
)


def is_secret_name(name: str) -> bool:
    """Whether a log field called ``name`` holds a secret, and is replaced by the logs.

    ``api_key``, ``jwt_secret``, ``accessToken``, ``Authorization`` and
    ``session_cookie`` do; ``prompt_tokens`` and ``completion_tokens`` do not.
    """
    return _SECRET_NAME.search(name) is not None


def _redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if is_secret_name(key):
            event[key] = "[redacted]"
    return event


class _ToStructlog(logging.Handler):
    """Hands stdlib log records (the runtime's) on to structlog, so they come
    out in the same form and through the same redaction as the service's."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            structlog.get_logger(record.name).log(record.levelno, record.getMessage())
        except Exception:
            self.handleError(record)


def configure_logging(level: str = "info", *, json: bool = True) -> None:
    """Send structlog output to stderr at ``level``, as JSON lines or, with
    ``json=False``, as readable console lines; the runtime's stdlib ``logging``
    records go the same way."""
    runtime_log = logging.getLogger("runtime")
    runtime_log.handlers = [_ToStructlog()]
    runtime_log.propagate = False
    runtime_log.setLevel(logging.getLevelNamesMapping()[level.upper()])
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
