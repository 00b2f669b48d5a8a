"""Operations endpoints over real HTTP: health, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Route

from actors.http.app import build_app
from actors.http.auth import build_auth
from actors.http.events import ShutdownSignal
from actors.service import open_service
from tests.fake_upstream import FakeUpstream, Script
from tests.http.conftest import (
    ApiServer,
    OpenApiServer,
    chat_body,
    fake_settings,
    make_config,
    wait_for_status,
    wait_until,
)

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``GET /metrics`` parsed: sample value by (sample name, sorted labels)."""
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_healthz_and_readyz(api_server: ApiServer) -> None:
    async with api_server.client() as client:
        health = await client.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready"}


async def test_metrics_count_jobs_latency_errors_and_the_tree(
    open_api_server: OpenApiServer, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("ok", Script.text("fine answer"))
    fake_upstream.script("bad", Script.status(400, message="bad request upstream"))
    fake_upstream.script("hang", Script.stream().content("x").hang())
    async with open_api_server(**fake_settings(fake_upstream)) as server, server.client() as client:
        headers = server.auth()
        ids = {}
        for model in ("ok", "bad"):
            created = await client.post("/v1/jobs", json=chat_body(model=model), headers=headers)
            ids[model] = created.json()["id"]
            await wait_for_status(client, ids[model], headers)
        assert (await client.get(f"/v1/jobs/{ids['bad']}", headers=headers)).json()[
            "status"
        ] == "error"
        hanging = await client.post("/v1/jobs", json=chat_body(model="hang"), headers=headers)
        await wait_for_status(client, hanging.json()["id"], headers, ("streaming",))

        async def one_stream_running() -> dict[Any, float] | None:
            found = await scrape(client)
            return found if found[("troupe_active_streams", ())] == 1 else None

        samples = await wait_until(one_stream_running)
        text = (await client.get("/metrics")).text

    for name in (
        "troupe_jobs_started_total",
        "troupe_jobs_finished_total",
        "troupe_upstream_first_token_seconds",
        "troupe_upstream_errors_total",
        "troupe_actor_mailbox_depth",
        "troupe_actor_restarts_total",
        "troupe_active_streams",
    ):
        assert name in text, name
    assert samples[("troupe_jobs_started_total", ())] == 3
    assert samples[("troupe_jobs_finished_total", (("status", "complete"),))] == 1
    assert samples[("troupe_jobs_finished_total", (("status", "error"),))] == 1
    assert samples[("troupe_upstream_first_token_seconds_count", ())] >= 2
    errors = {
        labels: value
        for (name, labels), value in samples.items()
        if name == "troupe_upstream_errors_total"
    }
    assert sum(errors.values()) == 1
    registry = (("path", "service/registry"),)
    assert samples[("troupe_actor_mailbox_depth", registry)] >= 0
    assert samples[("troupe_actor_restarts_total", registry)] == 0


async def test_openapi_is_3_1_and_lists_every_served_route(
    api_server: ApiServer, tmp_path: Path
) -> None:
    async with api_server.client() as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    assert document["info"]["title"]
    documented = {
        (path, method)
        for path, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }

    # The routes the app really serves, read from the Starlette app itself.
    config = make_config(tmp_path / "app")
    async with open_service(config) as service:
        app = build_app(service, build_auth(config)[0], ShutdownSignal())
    served = {
        (route.path, method.lower())
        for route in app.routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    assert served
    assert documented == served
