"""The README's runtime example runs and prints what the README says it prints."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest
import trio
import trio.testing

README = Path(__file__).resolve().parents[2] / "README.md"
HEADING = "## The runtime in 30 lines"


def readme_section() -> str:
    """The text under HEADING, up to the next heading of the same or a higher level."""
    lines = README.read_text(encoding="utf-8").splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.rstrip() == HEADING) + 1
    in_code = False
    for end in range(start, len(lines)):
        line = lines[end]
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(r"#{1,2} ", line):
            break
    else:
        end = len(lines)
    return "".join(lines[start:end])


def fenced_blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", section, re.DOTALL | re.MULTILINE)


def test_the_readme_has_the_runtime_section_with_code_and_output() -> None:
    section = readme_section()
    assert fenced_blocks(section, "python")
    assert fenced_blocks(section, "text")


async def test_the_readme_example_runs_and_prints_the_documented_output(
    autojump_clock: trio.testing.MockClock, capsys: pytest.CaptureFixture[str]
) -> None:
    section = readme_section()
    code = fenced_blocks(section, "python")[0]
    expected = fenced_blocks(section, "text")[0]
    module = types.ModuleType("readme_example")
    # Run as an imported module, so its ``trio.run`` guard stays off and the
    # test's own trio run drives ``main``.
    exec(compile(code, f"{README.name}:{HEADING}", "exec"), module.__dict__)
    await module.main()
    assert capsys.readouterr().out == expected
