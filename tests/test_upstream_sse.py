"""The client-side SSE decoder: framing, field rules, and independence from read sizes."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given

from actors.upstream.sse import SSEComment, SSEDecoder, SSEItem, SSEMessage


def decode(*chunks: bytes) -> list[SSEItem]:
    decoder = SSEDecoder()
    items: list[SSEItem] = []
    for chunk in chunks:
        items += decoder.feed(chunk)
    return items + decoder.finish()


def test_one_event_per_blank_line() -> None:
    assert decode(b"data: one\n\ndata: two\n\n") == [SSEMessage("one"), SSEMessage("two")]


def test_crlf_and_lone_cr_line_endings() -> None:
    assert decode(b"data: a\r\n\r\ndata: b\r\rdata: c\n\n") == [
        SSEMessage("a"),
        SSEMessage("b"),
        SSEMessage("c"),
    ]


def test_crlf_split_between_reads_is_one_line_break() -> None:
    assert decode(b"data: a\r", b"\n", b"\r", b"\n") == [SSEMessage("a")]


def test_data_with_or_without_the_space() -> None:
    assert decode(b"data:x\n\ndata: y\n\ndata:  z\n\n") == [
        SSEMessage("x"),
        SSEMessage("y"),
        SSEMessage(" z"),
    ]


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert decode(b'data: {\ndata:  "a": 1\ndata\ndata: }\n\n') == [SSEMessage('{\n "a": 1\n\n}')]


def test_comments_are_reported_as_comments_at_once() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b": OPENROUTER PROCESSING\n") == [SSEComment("OPENROUTER PROCESSING")]
    assert decoder.feed(b":ping\n\n") == [SSEComment("ping")]
    assert decoder.finish() == []


def test_event_id_retry_and_unknown_fields_are_ignored() -> None:
    stream = b"event: delta\nid: 7\nretry: 1000\nfoo: bar\ndata: payload\n\nid: 8\n\n"
    assert decode(stream) == [SSEMessage("payload")]


def test_blank_line_without_data_dispatches_nothing() -> None:
    assert decode(b"\n\n\r\n: c\n\n") == [SSEComment("c")]


def test_utf8_split_inside_a_character() -> None:
    encoded = "data: héllo ✓\n\n".encode()
    cut = encoded.index("✓".encode()) + 1
    assert decode(encoded[:cut], encoded[cut:]) == [SSEMessage("héllo ✓")]


def test_leading_byte_order_mark_is_dropped() -> None:
    assert decode(b"\xef\xbb\xbfdata: x\n\n") == [SSEMessage("x")]


def test_finish_delivers_a_complete_event_missing_its_blank_line() -> None:
    assert decode(b"data: [DONE]\n") == [SSEMessage("[DONE]")]


def test_finish_drops_a_line_cut_off_without_line_break() -> None:
    assert decode(b'data: {"choices": [{"del') == []


def test_decoder_is_reusable_after_finish() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: a\n")
    assert decoder.finish() == [SSEMessage("a")]
    assert decoder.feed(b"data: b\n\n") == [SSEMessage("b")]


_line_text = st.text(
    st.characters(exclude_characters="\r\n", exclude_categories=("Cs",)), max_size=12
)  # lone surrogates cannot be encoded to UTF-8 bytes


@st.composite
def sse_streams(draw: st.DrawFn) -> tuple[bytes, list[SSEItem]]:
    """A stream encoded with varied but valid spellings, and the items it must yield."""
    ending = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    expected: list[SSEItem] = []
    lines: list[str] = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            text = draw(_line_text)
            spaced = text.startswith(" ") or draw(st.booleans())
            lines.append((": " if spaced else ":") + text)
            expected.append(SSEComment(text))
            continue
        values = draw(st.lists(_line_text, min_size=1, max_size=3))
        for value in values:
            if draw(st.booleans()):
                lines.append(draw(st.sampled_from(["event: delta", "id: 42", "retry: 10"])))
            spaced = value.startswith(" ") or draw(st.booleans())
            lines.append(("data: " if spaced else "data:") + value)
        lines.append("")
        expected.append(SSEMessage("\n".join(values)))
    return "".join(line + ending for line in lines).encode(), expected


@given(sse_streams(), st.lists(st.integers(0, 10_000), max_size=8))
def test_any_split_into_reads_yields_the_same_items(
    case: tuple[bytes, list[SSEItem]], cuts: list[int]
) -> None:
    stream, expected = case
    points = sorted({cut % (len(stream) + 1) for cut in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert decode(*pieces) == expected
    assert decode(stream) == expected
