"""The one exception type an upstream raises when a completion did not finish properly."""

from __future__ import annotations

__all__ = ["RETRYABLE_STATUSES", "UpstreamError", "is_retryable_status"]

# 408 Request Timeout, 429 Too Many Requests and every 5xx are transient by nature;
# 400/401/402/403/404 describe the request or the account and would fail again.
RETRYABLE_STATUSES = frozenset({408, 429})


class UpstreamError(Exception):
    """A streaming completion failed.

    Attributes:
        code: a short machine string. One of ``"http_<status>"`` (non-2xx answer),
            ``"stream_error"`` (a top-level ``{"error": ...}`` object inside a 200 stream),
            ``"finish_error"`` (``finish_reason == "error"``), ``"truncated"`` (EOF before
            ``[DONE]`` and before any ``finish_reason``), ``"idle_timeout"`` (no event within
            the idle timeout), ``"connection_error"`` (transport failure), ``"bad_chunk"``
            (a data line that is not a JSON object), ``"event_too_large"`` (an event
            grew past the client's limit before it ended) or ``"no_api_key"``.
        message: human-readable text. It never contains the API key: every message built
            from an upstream answer has the key redacted before it gets here.
        status: the HTTP status of the answer, or ``None`` when there was none.
        retryable: the failure is transient, so a fresh attempt may succeed. An upstream
            retries such failures itself while that is safe (before the first token), so a
            caller seeing this flag on a raised error must not assume it may start over
            without duplicating output.
        retry_after: the delay in seconds the upstream asked for (``Retry-After``), if any.
        body: for a non-2xx answer, its body as the upstream sent it, with the API key
            redacted; None for every other failure.
        content_type: that answer's ``Content-Type``, if it had one.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.body = body
        self.content_type = content_type

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"UpstreamError(code={self.code!r}, message={self.message!r}, "
            f"status={self.status!r}, retryable={self.retryable!r})"
        )


def is_retryable_status(status: int) -> bool:
    """Return whether an HTTP status is worth another attempt (408, 429 or any 5xx)."""
    return status in RETRYABLE_STATUSES or 500 <= status <= 599
