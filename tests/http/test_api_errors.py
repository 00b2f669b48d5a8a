"""Rejected requests over real HTTP: status, the one error shape, and no side effects; and
the one table from service errors to HTTP answers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import h11
import httpx
import orjson
import pytest
import trio
from starlette.requests import Request
from starlette.responses import Response

import actors.errors
from actors.errors import ServerBusy, ServiceError
from actors.http.errors import SERVICE_ERRORS, answer_for, service_error_handler
from tests.http.conftest import ApiServer, OpenApiServer, chat_body

MAX_BODY = 300_000


@pytest.fixture
async def small_body_server(open_api_server: OpenApiServer) -> AsyncIterator[ApiServer]:
    """A server whose body caps (chat routes and the others) are easy to exceed."""
    async with open_api_server(max_body_bytes=MAX_BODY, max_chat_body_bytes=MAX_BODY) as server:
        yield server


async def post_chunked(
    server: ApiServer,
    path: str,
    *,
    chunk_size: int,
    max_chunks: int = 1000,
    method: str = "POST",
) -> tuple[int, Any, int]:
    """POST (or ``method``) an endless chunked body (no Content-Length) over a raw socket,
    reading the answer meanwhile; stop sending once it is there. Returns (status, JSON
    body, chunks sent).

    httpx sends the whole body before it reads the answer, and a server that answers
    early and closes the connection makes it lose that answer.
    """
    host, port = server.base_url.removeprefix("http://").split(":")
    client = h11.Connection(h11.CLIENT)
    head = h11.Request(
        method=method,
        target=path,
        headers=[
            ("host", host),
            ("authorization", f"Bearer {server.token()}"),
            ("content-type", "application/json"),
            ("transfer-encoding", "chunked"),
        ],
    )
    answer: dict[str, Any] = {}
    sent = 0
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(client.send(head))

        async def read_answer() -> None:
            body = bytearray()
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    client.receive_data(await stream.receive_some())
                elif isinstance(event, h11.Response):
                    answer["status"] = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    answer["body"] = orjson.loads(body)
                    return

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_answer)
                while "body" not in answer and sent < max_chunks:
                    try:
                        await stream.send_all(client.send(h11.Data(data=b" " * chunk_size)))
                    except trio.BrokenResourceError:
                        break  # it answered and closed; the reader has the answer
                    sent += 1
                    await trio.sleep(0.001)
    return answer["status"], answer["body"], sent


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    """Check the status and that the body is exactly the error shape; return the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    message = body["error"]["message"]
    assert isinstance(message, str)
    assert message
    return message


async def assert_no_jobs(client: httpx.AsyncClient, server: ApiServer) -> None:
    listed = await client.get("/v1/jobs", headers=server.auth())
    assert listed.json() == {"jobs": []}


async def post_job(
    client: httpx.AsyncClient,
    server: ApiServer,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> httpx.Response:
    return await client.post("/v1/jobs", headers={**server.auth(), **(headers or {})}, **kwargs)


async def test_non_json_is_400_invalid_json(small_body_server: ApiServer) -> None:
    server = small_body_server
    async with server.client() as client:
        for content in (b"{not json", b"", b"\xff\xfe"):
            response = await post_job(
                client, server, content=content, headers={"content-type": "application/json"}
            )
            assert_error(response, 400, "invalid_json")
        await assert_no_jobs(client, server)


async def test_unknown_field_is_422_naming_it(small_body_server: ApiServer) -> None:
    server = small_body_server
    async with server.client() as client:
        response = await post_job(client, server, json=chat_body(temprature=0.2))
        assert "temprature" in assert_error(response, 422, "invalid_request")
        nested = chat_body()
        nested["messages"][0]["colour"] = "blue"
        response = await post_job(client, server, json=nested)
        assert "colour" in assert_error(response, 422, "invalid_request")
        await assert_no_jobs(client, server)


async def test_wrong_type_and_missing_field_are_422(small_body_server: ApiServer) -> None:
    server = small_body_server
    async with server.client() as client:
        wrong_type = {**chat_body(), "messages": "hello"}
        message = assert_error(
            await post_job(client, server, json=wrong_type), 422, "invalid_request"
        )
        assert "messages" in message

        not_a_string = {**chat_body(), "thread_id": 42}
        message = assert_error(
            await post_job(client, server, json=not_a_string), 422, "invalid_request"
        )
        assert "thread_id" in message

        missing = chat_body()
        del missing["message_id"]
        message = assert_error(await post_job(client, server, json=missing), 422, "invalid_request")
        assert "message_id" in message

        not_an_object = assert_error(
            await post_job(client, server, json=[chat_body()]), 422, "invalid_request"
        )
        assert "object" in not_an_object
        await assert_no_jobs(client, server)


async def test_bad_messages_are_422(small_body_server: ApiServer) -> None:
    server = small_body_server
    async with server.client() as client:
        cases: list[tuple[list[dict[str, Any]], str]] = [
            ([], "messages"),
            ([{"role": "user", "content": "hi"}] * 257, "256"),
            ([{"role": "user", "content": "ok"}, {"role": "wizard", "content": "hi"}], "role"),
            ([{"role": "user", "content": 7}], "messages[0].content"),
        ]
        for messages, named in cases:
            response = await post_job(client, server, json={**chat_body(), "messages": messages})
            assert named in assert_error(response, 422, "invalid_request")

        blank = await post_job(client, server, json=chat_body(thread_id="  "))
        assert "thread_id" in assert_error(blank, 422, "invalid_request")
        long_model = await post_job(client, server, json=chat_body(model="m" * 201))
        assert "model" in assert_error(long_model, 422, "invalid_request")

        # Content has no cap of its own, only the body's: past the 200,000 characters
        # it once had, a message is accepted.
        ok = [{"role": "user", "content": "x" * (MAX_BODY - 1000)}]
        accepted = await post_job(client, server, json={**chat_body(), "messages": ok})
        assert accepted.status_code == 202
        listed = await client.get("/v1/jobs", headers=server.auth())
        assert [job["id"] for job in listed.json()["jobs"]] == [accepted.json()["id"]]


async def test_body_over_the_cap_is_413(small_body_server: ApiServer) -> None:
    server = small_body_server
    async with server.client() as client:
        declared = await post_job(
            client,
            server,
            content=b" " * (MAX_BODY + 1),
            headers={"content-type": "application/json"},
        )
        assert_error(declared, 413, "payload_too_large")

        status, body, chunks_sent = await post_chunked(server, "/v1/jobs", chunk_size=10_000)
        assert status == 413
        assert body == {
            "error": {
                "code": "payload_too_large",
                "message": f"the body may be at most {MAX_BODY} bytes",
            }
        }
        # It answered once the cap was crossed, without waiting for the rest of the body.
        assert chunks_sent < 3 * MAX_BODY // 10_000
        await assert_no_jobs(client, server)


async def test_unknown_route_is_404_in_the_error_shape(api_server: ApiServer) -> None:
    async with api_server.client() as client:
        for path in ("/nope", "/v1/jobs/a/b/c", "/v2/jobs"):
            response = await client.get(path, headers=api_server.auth())
            assert path in assert_error(response, 404, "not_found")


async def test_wrong_method_is_405_in_the_error_shape(api_server: ApiServer) -> None:
    async with api_server.client() as client:
        cases = [
            ("DELETE", "/v1/jobs", {"GET", "POST"}),
            ("PUT", "/v1/jobs/x", {"GET"}),
            ("GET", "/v1/jobs/x/abort", {"POST"}),
            ("POST", "/v1/notifications", {"GET"}),
            ("GET", "/v1/notifications/x", {"DELETE"}),
            ("GET", "/v1/threads/t/mute", {"PUT"}),
            ("POST", "/healthz", {"GET"}),
            ("GET", "/api/openrouter/stream", {"POST"}),
        ]
        for method, path, allowed in cases:
            response = await client.request(method, path, headers=api_server.auth())
            assert_error(response, 405, "method_not_allowed")
            listed = {name.strip() for name in response.headers["allow"].split(",")}
            assert listed - {"HEAD"} == allowed, (method, path, listed)
        await assert_no_jobs(client, api_server)


async def test_missing_job_is_404_in_the_error_shape(api_server: ApiServer) -> None:
    async with api_server.client() as client:
        response = await client.get("/v1/jobs/does-not-exist", headers=api_server.auth())
        assert_error(response, 404, "not_found")


# -- the table from service errors to HTTP -------------------------------------------


def _request(path: str) -> Request:
    return Request({"type": "http", "method": "GET", "path": path, "headers": []})


def test_every_service_error_has_an_answer_in_the_table() -> None:
    declared = {getattr(actors.errors, name) for name in actors.errors.__all__}
    raised = {cls for cls in declared if issubclass(cls, ServiceError) and cls is not ServiceError}
    assert raised
    assert set(SERVICE_ERRORS) <= raised
    # An error the table does not list answers as its nearest listed base.
    for cls in raised - set(SERVICE_ERRORS):
        base = next(base for base in cls.__mro__[1:] if base in SERVICE_ERRORS)
        assert answer_for(cls("x")) == SERVICE_ERRORS[base]


async def test_a_service_error_answers_in_the_shape_of_its_route_family() -> None:
    class Overloaded(ServerBusy):
        """A subclass answers as its nearest listed base."""

    error = Overloaded("the server runs 20 jobs")
    v1 = await service_error_handler(_request("/v1/jobs"), error)
    assert v1.status_code == 503
    assert v1.headers["retry-after"] == "5"
    assert orjson.loads(bytes(v1.body)) == {
        "error": {"code": "server_busy", "message": "the server runs 20 jobs"}
    }
    seed = await service_error_handler(_request("/api/openrouter/stream"), error)
    assert seed.status_code == 503
    assert "retry-after" not in seed.headers
    assert orjson.loads(bytes(seed.body)) == {"error": "Server busy, try again later"}


async def test_a_service_error_the_table_does_not_list_is_a_500() -> None:
    class Unlisted(ServiceError):
        pass

    assert answer_for(Unlisted("x")) is None
    v1 = await service_error_handler(_request("/v1/jobs/j"), Unlisted("secret detail"))
    assert_error_body(v1, 500, "internal_error")
    seed = await service_error_handler(_request("/api/jobs/j/status"), Unlisted("secret detail"))
    assert seed.status_code == 500
    assert orjson.loads(bytes(seed.body)) == {"error": "Internal server error"}
    assert b"secret detail" not in bytes(v1.body) + bytes(seed.body)


def assert_error_body(response: Response, status: int, code: str) -> None:
    assert response.status_code == status
    body = orjson.loads(bytes(response.body))
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
