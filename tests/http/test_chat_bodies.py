"""Chat bodies with attachments: content parts, their checks, and the two body caps."""

from __future__ import annotations

import base64
import re
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.http.schemas import (
    DATA_URL_PATTERN,
    ChatMessage,
    InvalidBody,
    check_messages,
)
from tests.fake_upstream import FakeUpstream
from tests.http.conftest import ApiServer, OpenApiServer, fake_settings, wait_until
from tests.http.test_api_errors import post_chunked

CHAT_ROUTES = ["/v1/jobs", "/api/openrouter/stream"]
PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()


def pdf_part(size: int, filename: str = "report.pdf") -> dict[str, Any]:
    """A file part carrying ``size`` bytes as a PDF data URL."""
    data = base64.b64encode(b"%PDF-1.7\n" + b"\x8a" * (size - 9)).decode()
    return {
        "type": "file",
        "file": {"filename": filename, "file_data": f"data:application/pdf;base64,{data}"},
    }


def chat_on(route: str, content: Any, model: str = "m") -> dict[str, Any]:
    """A body for ``route`` (v1 or the seed's background stream) asking ``content``."""
    messages = [{"role": "user", "content": content}]
    if route == "/v1/jobs":
        return {"model": model, "messages": messages, "thread_id": "t", "message_id": "m"}
    return {
        "model": model,
        "messages": messages,
        "modalities": ["text"],
        "stream": True,
        "_background": True,
        "_threadId": "t",
        "_messageId": "m",
    }


def started(route: str, response: httpx.Response) -> None:
    """Assert that ``route`` answered ``response`` by starting a job."""
    assert response.status_code == (202 if route == "/v1/jobs" else 200), response.text[:500]


# -- accepted ---------------------------------------------------------------------


@pytest.mark.parametrize("route", CHAT_ROUTES)
@pytest.mark.parametrize(
    "file_bytes",
    [pytest.param(512 * 1024, id="512KiB-pdf"), pytest.param(15_000_000, id="20MB-part")],
)
async def test_attachments_reach_the_upstream_unchanged(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream, route: str, file_bytes: int
) -> None:
    content = [
        {"type": "text", "text": "Summarise the attachments"},
        pdf_part(file_bytes),
        {"type": "image_url", "image_url": {"url": PNG, "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]

    async def sent() -> bool:
        return bool(fake_upstream.requests)

    settings = fake_settings(fake_upstream)
    async with open_api_server(**settings) as server, server.client(timeout=60.0) as client:
        response = await client.post(route, json=chat_on(route, content), headers=server.auth())
        started(route, response)
        await wait_until(sent, timeout=30.0)

    messages = fake_upstream.requests[-1].json["messages"]
    assert messages == [{"role": "user", "content": content}]


# -- refused ----------------------------------------------------------------------


def data_url(payload: str, head: str = "data:application/pdf;base64,") -> dict[str, Any]:
    return {"type": "file", "file": {"filename": "a.pdf", "file_data": head + payload}}


BAD_PARTS: list[tuple[Any, str]] = [
    ("just text", "messages[0].content[1]: must be an object"),
    ({"type": "audio", "audio": {}}, "messages[0].content[1].type: must be one of"),
    ({"text": "no type"}, "messages[0].content[1].type: must be one of"),
    ({"type": "text"}, "messages[0].content[1].text: must be a string"),
    ({"type": "text", "text": 7}, "messages[0].content[1].text: must be a string"),
    ({"type": "image_url", "image_url": "https://x.y/a.png"}, "content[1].image_url: must be an"),
    ({"type": "image_url", "image_url": {}}, "messages[0].content[1].image_url.url: must be a"),
    (
        {"type": "image_url", "image_url": {"url": "ftp://x.y/a.png"}},
        "messages[0].content[1].image_url.url: must be an http(s) URL",
    ),
    (
        {"type": "image_url", "image_url": {"url": PNG, "detail": "ultra"}},
        "messages[0].content[1].image_url.detail: must be one of auto, low, high",
    ),
    ({"type": "file", "file": {"file_data": PNG}}, "messages[0].content[1].file.filename"),
    ({"type": "file", "file": {"filename": "a"}}, "messages[0].content[1].file.file_data"),
    (data_url("QUJD", head="data:application/pdf,"), "content[1].file.file_data: must be data:"),
    (data_url("QUJD", head="data:pdf;base64,"), "content[1].file.file_data: must be data:"),
    (data_url("QUJDRA"), "messages[0].content[1].file.file_data: must be data:"),
    (data_url("QU=JDRA="), "messages[0].content[1].file.file_data: must be data:"),
    (data_url("Q==="), "messages[0].content[1].file.file_data: must be data:"),
    (data_url("QUJD\u00e9ABC"), "messages[0].content[1].file.file_data: must be data:"),
    (
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "https://x.y/a.pdf"}},
        "messages[0].content[1].file.file_data: must be data:",
    ),
]


@pytest.mark.parametrize("route", CHAT_ROUTES)
async def test_bad_parts_are_refused_naming_the_field(api_server: ApiServer, route: str) -> None:
    async with api_server.client() as client:
        for part, named in BAD_PARTS:
            content = [{"type": "text", "text": "look"}, part]
            response = await client.post(
                route, json=chat_on(route, content), headers=api_server.auth()
            )
            if route == "/v1/jobs":
                assert response.status_code == 422, (part, response.text)
                message = response.json()["error"]["message"]
            else:
                assert response.status_code == 400, (part, response.text)
                message = response.json()["error"]
            assert named in message, (part, message)
        listed = await client.get("/v1/jobs", headers=api_server.auth())
        assert listed.json() == {"jobs": []}


@pytest.mark.parametrize("route", CHAT_ROUTES)
async def test_a_body_over_the_chat_cap_is_413(api_server: ApiServer, route: str) -> None:
    cap = api_server.config.max_chat_body_bytes
    assert cap == 25 * 1024 * 1024
    status, body, chunks = await post_chunked(api_server, route, chunk_size=1024 * 1024)
    message = f"the body may be at most {cap} bytes"
    if route == "/v1/jobs":
        assert body == {"error": {"code": "payload_too_large", "message": message}}
    else:
        assert body == {"error": message}
    assert status == 413
    # Answered once the cap was crossed, without waiting for the rest of the body.
    assert chunks < 50


async def test_other_routes_keep_the_small_cap(api_server: ApiServer) -> None:
    cap = api_server.config.max_body_bytes
    status, body, chunks = await post_chunked(
        api_server, "/v1/threads/x/mute", chunk_size=64 * 1024, method="PUT"
    )
    assert status == 413
    assert body == {
        "error": {"code": "payload_too_large", "message": f"the body may be at most {cap} bytes"}
    }
    # Refused once past its own cap (1 MiB), long before the chat cap.
    assert chunks * 64 * 1024 < 3 * cap


# -- the check and the document agree ---------------------------------------------

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


@given(
    st.one_of(
        st.from_regex(DATA_URL_PATTERN, fullmatch=True),
        st.builds(
            "".join,
            st.lists(
                st.sampled_from(["data:", "image/png", "a/b", ";base64,", ",", "\n", "é"])
                | st.text(_ALPHABET, max_size=9),
                max_size=8,
            ),
        ),
    )
)
def test_a_data_url_is_accepted_exactly_when_the_documented_pattern_matches(url: str) -> None:
    message = ChatMessage(
        role="user", content=[{"type": "file", "file": {"filename": "f", "file_data": url}}]
    )
    try:
        check_messages([message])
        accepted = True
    except InvalidBody:
        accepted = False
    assert accepted == (re.fullmatch(DATA_URL_PATTERN, url) is not None)
