"""The live-jobs benchmark: its quick case runs correct on every system (SQLite, one
and two processes on a Redis it starts itself, the bare relay), and its checks catch
the faults they are there to catch. Nothing here asserts a time."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"

QUICK_JOBS, QUICK_TOKENS = 20, 20
SYSTEMS = {"sqlite": 1, "redis-1": 1, "redis-2": 2, "relay": 1}
"""Every system the benchmark measures, with its server processes."""


@pytest.fixture
def follower(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``benchmarks/jobs_follower.py``, imported as the benchmark's processes import it."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("jobs_follower")


def _sse(event: str, data: object, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\r\n" if event_id is not None else ""
    return f"{head}event: {event}\r\ndata: {json.dumps(data)}\r\n\r\n".encode()


def _delta(seq: int, *tokens: int) -> bytes:
    content = "".join(f"{token}:{1_000_000 * token}|" for token in tokens)
    return _sse("delta", {"seq": seq, "content": content}, seq)


def _complete(last_seq: int) -> bytes:
    return _sse("status", {"status": "complete", "last_seq": last_seq})


def test_quick_case_is_complete_and_exact_on_every_system(tmp_path: Path) -> None:
    report = tmp_path / "jobs.json"
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "jobs_bench.py"), "--quick", "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=55,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(report.read_text())
    assert set(document["rungs"]) == set(SYSTEMS)
    for system, rungs in document["rungs"].items():
        assert len(rungs) == 1, system
        rung = rungs[0]
        assert rung["n"] == QUICK_JOBS, system
        assert rung["processes"] == SYSTEMS[system], system
        assert rung["complete"] == QUICK_JOBS, (system, rung["problems"])
        assert rung["exact"] == QUICK_JOBS, (system, rung["problems"])
        assert rung["problems"] == [], system
        assert rung["tokens_delivered"] == QUICK_JOBS * QUICK_TOKENS, system
        assert rung["poll_failures"] == 0, system
        # Redis served the Redis systems, and only those.
        assert (rung["redis_commands"] > 0) == system.startswith("redis"), system
    assert document["held"] == dict.fromkeys(SYSTEMS, QUICK_JOBS)
    reprinted = subprocess.run(
        [sys.executable, str(BENCHMARKS / "jobs_bench.py"), "--report", str(report)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        check=False,
    )
    assert reprinted.returncode == 0, reprinted.stderr
    assert f"every system at N = {QUICK_JOBS}" in reprinted.stdout
    assert "2 processes on Redis held 1.00x the jobs of 1" in reprinted.stdout


def test_an_exact_stream_passes_even_cut_mid_event(follower: ModuleType) -> None:
    checker = follower.StreamChecker([])
    stream = _sse("snapshot", {"id": "j"}) + _delta(1, 1) + _delta(2, 2, 3) + _complete(2)
    for start in range(0, len(stream), 7):
        checker.feed(stream[start : start + 7], 2_000_000)
    assert checker.verdict(3)
    assert checker.deltas == 2
    assert checker.tokens.lags == [1000, 0, -1000]


@pytest.mark.parametrize(
    ("stream", "tokens", "problem"),
    [
        (_delta(1, 1) + _delta(1, 1) + _delta(2, 2) + _complete(2), 2, "duplicate"),
        (_delta(1, 1) + _delta(3, 2) + _complete(3), 2, "gap"),
        (_delta(1, 1) + _delta(2, 3) + _complete(2), 3, "gap: token 3"),
        (_delta(1, 1) + _delta(2, 2, 1) + _complete(2), 2, "duplicate: token 1"),
        (_delta(1, 1) + _delta(2, 2), 2, "no status event"),
        (_delta(1, 1) + _complete(1), 2, "1 of 2 tokens"),
        (_delta(1, 1) + _complete(2), 1, "last_seq"),
        (_delta(1, 1) + _sse("status", {"status": "error", "last_seq": 1}), 1, "ended error"),
    ],
    ids=["dup-delta", "gap-delta", "gap-token", "dup-token", "no-status", "short", "seq", "error"],
)
def test_a_faulty_stream_fails_with_its_fault_named(
    follower: ModuleType, stream: bytes, tokens: int, problem: str
) -> None:
    checker = follower.StreamChecker([])
    checker.feed(stream, 0)
    assert not checker.verdict(tokens)
    assert any(problem in found for found in checker.tokens.problems), checker.tokens.problems
