"""An incremental decoder for the client side of a Server-Sent Events stream.

We parse SSE ourselves rather than through a helper library because the upstream
contract depends on details such helpers hide or get wrong: comments must surface
(``: OPENROUTER PROCESSING`` proves liveness for the idle timeout), bytes arrive split at
arbitrary points (inside a line, a CRLF pair or a UTF-8 sequence), and the decoder must
work on raw chunks fed from whatever reads the socket.

Rules (after the WHATWG event-stream format):

- lines end in ``\\r\\n``, ``\\n`` or ``\\r``; a blank line ends an event;
- ``data:value`` and ``data: value`` are the same (one leading space is dropped);
  several ``data`` lines of one event are joined with ``"\\n"``;
- a line starting with ``:`` is a comment, reported at once as an :class:`SSEComment`;
- ``event``, ``id``, ``retry`` and unknown fields are ignored;
- a blank line after no ``data`` line dispatches nothing.

One leniency: at end of input (:meth:`SSEDecoder.finish`) an event whose lines were all
complete but that lacks its closing blank line is still dispatched, so that a final
``data: [DONE]\\n`` counts. A last line cut off without its line break is dropped, as the
format requires, because that is what a truncated connection looks like.
"""

from __future__ import annotations

import codecs
import re

import attrs

__all__ = ["SSEComment", "SSEDecoder", "SSEItem", "SSEMessage"]

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


@attrs.frozen
class SSEMessage:
    """A dispatched event: its ``data`` lines joined with ``"\\n"``."""

    data: str


@attrs.frozen
class SSEComment:
    """A comment line, without the leading ``:`` and one optional space."""

    text: str


SSEItem = SSEMessage | SSEComment


class SSEDecoder:
    """Turns a byte stream, fed in arbitrary pieces, into SSE messages and comments.

    Feeding the same bytes split at any points yields the same items in the same order.
    The decoder never blocks and never raises on malformed input; invalid UTF-8 is
    replaced with U+FFFD.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # The line not ended yet, in pieces: joined once, when it ends, so that a long
        # line costs its length and not its length times its pieces.
        self._partial: list[str] = []
        self._partial_chars = 0
        # A chunk ending in "\r" may be the first half of "\r\n"; the "\n" opening the
        # next chunk must then not count as a second (blank) line.
        self._after_cr = False
        self._at_start = True
        self._data_lines: list[str] = []
        self._data_chars = 0
        self._has_data = False

    @property
    def pending(self) -> int:
        """Characters held for the event being read: its data lines so far and the line
        not ended yet. The decoder keeps whatever it is fed; a caller that must bound
        its memory checks this after each :meth:`feed`."""
        return self._partial_chars + self._data_chars

    def feed(self, chunk: bytes) -> list[SSEItem]:
        """Decode the next piece of the stream; return the items it completed, in order."""
        text = self._text.decode(chunk)
        if self._at_start and text:
            self._at_start = False
            text = text.removeprefix("\ufeff")
        return self._consume(text)

    def finish(self) -> list[SSEItem]:
        """Signal end of input; return an event that was complete but for its blank line.

        The decoder is reset and may be reused for a new stream afterwards.
        """
        items = self._consume(self._text.decode(b"", final=True))
        # The cut-off last line (no line break) is dropped on purpose: see module docs.
        if self._has_data:
            items.append(SSEMessage("\n".join(self._data_lines)))
        self._reset()
        return items

    def _consume(self, text: str) -> list[SSEItem]:
        items: list[SSEItem] = []
        if self._after_cr and text:
            self._after_cr = False
            if text[0] == "\n":
                text = text[1:]
        start = 0
        for match in _LINE_BREAK.finditer(text):
            line = text[start : match.start()]
            if self._partial:
                self._partial.append(line)
                line = "".join(self._partial)
                self._partial = []
                self._partial_chars = 0
            self._line(line, items)
            start = match.end()
        rest = text[start:]
        if rest:
            self._partial.append(rest)
            self._partial_chars += len(rest)
        elif text.endswith("\r"):
            self._after_cr = True
        return items

    def _line(self, line: str, items: list[SSEItem]) -> None:
        if not line:
            if self._has_data:
                items.append(SSEMessage("\n".join(self._data_lines)))
            self._data_lines = []
            self._data_chars = 0
            self._has_data = False
            return
        if line[0] == ":":
            items.append(SSEComment(line[1:].removeprefix(" ")))
            return
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        if name == "data":
            self._data_lines.append(value)
            self._data_chars += len(value)
            self._has_data = True
        # "event", "id", "retry" and unknown fields carry nothing the upstream contract uses.
