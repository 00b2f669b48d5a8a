"""Every response carries a request id, and the access log line names it."""

from __future__ import annotations

import structlog
import trio.testing
from structlog.testing import capture_logs

from tests.http.conftest import ApiServer


async def test_a_request_id_is_made_up_or_echoed_and_logged(api_server: ApiServer) -> None:
    async with api_server.client() as client:
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logged:
            made_up = await client.get("/healthz")
            echoed = await client.get("/healthz", headers={"X-Request-ID": "trace-42"})
            # The access line is written after the response went out.
            await trio.testing.wait_all_tasks_blocked()
    assert len(made_up.headers["x-request-id"]) == 32
    assert echoed.headers["x-request-id"] == "trace-42"
    requests = [entry for entry in logged if entry["event"] == "request"]
    assert [entry["request_id"] for entry in requests] == [
        made_up.headers["x-request-id"],
        "trace-42",
    ]
    assert all(entry["status"] == 200 and entry["path"] == "/healthz" for entry in requests)
