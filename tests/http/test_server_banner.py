"""What the server says when it starts: where answers come from, how callers are
identified, and a development token only when it checks tokens with the dev secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt
import pytest
import trio
from structlog.testing import capture_logs

from actors.http.auth import TokenAuthority, load_secret
from actors.http.server import _announce, serve
from tests.http.conftest import make_config
from tests.http.jwks import SigningKey

PEM = SigningKey.rsa("banner").pem()


async def start(config_overrides: dict[str, Any], tmp_path: Path) -> list[dict[str, Any]]:
    """Start the server, announce it, stop it; the log entries of all that."""
    config = make_config(tmp_path, **config_overrides)
    stop = trio.Event()

    def ready(addresses: list[str], tokens: TokenAuthority | None) -> None:
        _announce(config)(addresses, tokens)
        stop.set()

    with capture_logs() as logged:
        await serve(config, stop=stop, on_ready=ready)
    return logged


@pytest.mark.parametrize(
    ("overrides", "upstream", "auth", "level"),
    [
        (
            {"jwt_secret": None},
            "upstream: simulated model (answers are made up locally; set upstream_api_key "
            "or upstream_base_url for a real upstream)",
            "auth: JWT (HS256, the development secret in {data_dir}) as Bearer",
            "warning",
        ),
        (
            {"upstream": "openai", "upstream_base_url": "http://127.0.0.1:9/v1"},
            "upstream: http://127.0.0.1:9/v1 with no server key: each request must bring "
            "its user's own key",
            "auth: JWT (HS256, jwt_secret) as Bearer",
            "info",
        ),
        (
            {
                "upstream": "openai",
                "upstream_base_url": "http://127.0.0.1:9/v1",
                "upstream_api_key": "sk-server",
                "jwt_secret": None,
                "jwt_public_key": PEM,
                "jwt_cookie": "__session",
            },
            "upstream: http://127.0.0.1:9/v1 with the server's key, or a user's own",
            "auth: JWT (RS256, ES256, jwt_public_key) as Bearer or the __session cookie",
            "info",
        ),
        (
            {"auth_mode": "trusted_headers", "trusted_proxies": ("10.0.0.0/8",)},
            "upstream: simulated model (answers are made up locally; set upstream_api_key "
            "or upstream_base_url for a real upstream)",
            "auth: x-user-id header from 10.0.0.0/8",
            "warning",
        ),
    ],
)
async def test_the_banner_says_where_answers_come_from_and_who_may_call(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    overrides: dict[str, Any],
    upstream: str,
    auth: str,
    level: str,
) -> None:
    logged = await start(overrides, tmp_path)
    printed = capsys.readouterr().out.splitlines()

    assert printed[0].startswith("troupe listening on http://127.0.0.1:")
    assert printed[1:4] == [
        f"store: memory in {tmp_path}",
        upstream,
        auth.format(data_dir=tmp_path),
    ]
    dev_secret = "development secret" in auth
    assert len(printed) == (6 if dev_secret else 4)
    if dev_secret:
        assert printed[4] == "development token (user dev, workspace dev, valid 7 days):"
        secret = load_secret(make_config(tmp_path, jwt_secret=None))
        assert jwt.decode(printed[5], secret, algorithms=["HS256"])["sub"] == "dev"
    said = {entry["event"]: entry for entry in logged if entry["event"] in ("upstream", "auth")}
    assert said["upstream"] == {
        "event": "upstream",
        "log_level": level,
        "summary": upstream.removeprefix("upstream: "),
    }
    assert said["auth"] == {
        "event": "auth",
        "log_level": "warning" if dev_secret else "info",
        "summary": auth.removeprefix("auth: ").format(data_dir=tmp_path),
    }
