"""merge_tool_calls: streamed tool-call fragments joined into whole calls."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from actors.upstream import merge_tool_calls


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_fragments_of_one_index_join_and_arguments_concatenate_in_order() -> None:
    fragments = [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "weather"}},
        {"index": 0, "function": {"arguments": '{"city"'}},
        {"index": 0, "function": {"arguments": ': "Paris"'}},
        {"index": 0, "function": {"arguments": "}"}},
    ]

    assert merge_tool_calls(fragments) == [call("call_1", "weather", '{"city": "Paris"}')]


def test_interleaved_calls_are_kept_apart_and_ordered_by_index() -> None:
    fragments = [
        {"index": 1, "id": "call_b", "type": "function", "function": {"name": "b"}},
        {"index": 0, "id": "call_a", "type": "function", "function": {"name": "a"}},
        {"index": 1, "function": {"arguments": "[1"}},
        {"index": 0, "function": {"arguments": "{}"}},
        {"index": 1, "function": {"arguments": "]"}},
    ]

    assert merge_tool_calls(fragments) == [call("call_a", "a", "{}"), call("call_b", "b", "[1]")]


def test_unindexed_fragments_continue_the_last_call_unless_they_bring_a_new_id() -> None:
    fragments: list[dict[str, Any]] = [
        {"id": "call_1", "function": {"name": "first", "arguments": '{"x"'}},
        {"function": {"arguments": ": 1}"}},
        {"id": "call_2", "type": "function", "function": {"name": "second", "arguments": "{}"}},
    ]

    assert merge_tool_calls(fragments) == [
        call("call_1", "first", '{"x": 1}'),
        call("call_2", "second", "{}"),
    ]


def test_missing_and_malformed_fields_give_empty_strings_and_the_default_type() -> None:
    fragments: list[dict[str, Any]] = [
        {"index": 0, "id": 7, "type": None, "function": "not an object"},
        {"index": 0, "function": {"name": ["x"], "arguments": 3}},
        {"index": True, "function": {"arguments": "ok"}},  # a bool is no index
    ]

    assert merge_tool_calls(fragments) == [call("", "", "ok")]
    assert merge_tool_calls([]) == []


fragment_pieces = st.lists(
    st.tuples(st.integers(0, 3), st.text(max_size=5)), min_size=1, max_size=30
)


@given(fragment_pieces)
def test_each_call_gets_exactly_its_own_pieces_and_the_input_is_left_alone(
    pieces: list[tuple[int, str]],
) -> None:
    fragments = [
        {"index": index, "id": f"call_{index}", "function": {"name": f"f{index}", "arguments": p}}
        for index, p in pieces
    ]
    before = copy.deepcopy(fragments)

    merged = merge_tool_calls(fragments)

    indexes = sorted({index for index, _ in pieces})
    assert merged == [
        call(f"call_{i}", f"f{i}", "".join(p for index, p in pieces if index == i)) for i in indexes
    ]
    assert fragments == before
