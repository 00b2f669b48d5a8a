"""The resume benchmark's quick case: a finished 1,000-delta job replays exactly on
Redis and on SQLite, over HTTP and from the store. Nothing here asserts a time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"

QUICK_REPLAYS = {"over HTTP": 4, "store call": 20}
"""A tenth of the full run's replays, by a word of each benchmark's name."""


def test_quick_case_replays_exactly_on_redis_and_sqlite(tmp_path: Path) -> None:
    report = tmp_path / "resume.json"
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "resume_bench.py"), "--quick", "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=55,
        cwd=ROOT,
        check=False,
    )
    # Every replay is checked by the benchmark itself (all deltas, in order, the
    # upstream's text): a wrong one fails the run.
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads(report.read_text())["results"]
    assert len(results) == len(QUICK_REPLAYS)
    for found, (word, replays) in zip(results, QUICK_REPLAYS.items(), strict=True):
        assert word in found["name"]
        assert (found["troupe"]["label"], found["baseline"]["label"]) == ("Redis", "SQLite")
        for side in (found["troupe"], found["baseline"]):
            assert side["n"] == replays, found["name"]
            assert len(side["seconds"]) == 3, found["name"]
