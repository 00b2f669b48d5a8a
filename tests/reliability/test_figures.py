"""The figures table itself: its rows say what the tests measured."""

from __future__ import annotations

from tests.reliability.figures import HEADER, Figure, Figures


def test_a_figure_is_one_markdown_row_with_its_units() -> None:
    figure = Figure("kill -9", "SIGKILL mid-stream", 5, 250, recovery_s=1.25)
    assert figure.row() == "| kill -9 | SIGKILL mid-stream | 5 | 250 | 0 deltas | 1.250 s |"
    virtual = Figure("chaos", "actor crashes", 1200, 200, 0, "jobs", 0.5, "virtual")
    assert virtual.row().endswith("| 0 jobs | 0.500 s (virtual) |")
    assert Figure("tokens", "forged tokens", 3, 0, what_lost="").row().endswith("| - |")


def test_the_table_is_the_header_then_each_row_in_order() -> None:
    found = Figures()
    first, second = Figure("a", "x", 1, 1), Figure("b", "y", 2, 2)
    found.record(first)
    found.record(second)
    assert found.table().splitlines() == [*HEADER.splitlines(), first.row(), second.row()]
