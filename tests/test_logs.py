"""Logs are JSON lines on stderr, with secret-named fields redacted."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
import pytest
import structlog

from actors.logs import configure_logging


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    """stderr captured; call :func:`configure_logging` in the test itself, where
    ``sys.stderr`` is the capture of the test's own phase."""
    runtime_log = logging.getLogger("runtime")
    handlers, propagate, level = runtime_log.handlers, runtime_log.propagate, runtime_log.level
    yield capsys
    structlog.reset_defaults()
    runtime_log.handlers, runtime_log.propagate = handlers, propagate
    runtime_log.setLevel(level)


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    captured = capsys.readouterr()
    assert captured.out == ""
    return [orjson.loads(line) for line in captured.err.splitlines()]


def test_a_log_line_is_one_json_object_with_level_and_time(
    json_logs: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info")
    structlog.get_logger("t").info("job finished", job_id="j1")
    [line] = lines(json_logs)
    assert line["event"] == "job finished"
    assert line["job_id"] == "j1"
    assert line["level"] == "info"
    assert isinstance(line["timestamp"], str)


@pytest.mark.parametrize("field", ["api_key", "Authorization", "jwt_secret", "upstream_token"])
def test_secret_named_fields_never_reach_the_output(
    json_logs: pytest.CaptureFixture[str], field: str
) -> None:
    configure_logging("info")
    structlog.get_logger("t").warning("oops", **{field: "sk-very-secret"})
    [line] = lines(json_logs)
    assert line[field] == "[redacted]"
    assert "sk-very-secret" not in orjson.dumps(line).decode()


def test_lines_below_the_level_are_dropped(json_logs: pytest.CaptureFixture[str]) -> None:
    configure_logging("warning")
    log = structlog.get_logger("t")
    log.info("quiet")
    log.warning("loud")
    assert [line["event"] for line in lines(json_logs)] == ["loud"]


def test_the_runtimes_stdlib_records_come_out_as_json_lines_too(
    json_logs: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info")
    logging.getLogger("runtime").warning("%r did not stop; cancelled it", "service/x")
    logging.getLogger("runtime").debug("below the level")
    [line] = lines(json_logs)
    assert line["event"] == "'service/x' did not stop; cancelled it"
    assert line["level"] == "warning"
