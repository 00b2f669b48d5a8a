"""The examples run as their users would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_embed_example_streams_aborts_and_notifies() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "embed.py")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "started job" in out
    assert 'You wrote: "Tell me about actors."' in out
    assert "[complete] after" in out
    assert "status aborted" in out
    assert "notification: Background response completed" in out
    assert "- ai.background.complete for job" in out
