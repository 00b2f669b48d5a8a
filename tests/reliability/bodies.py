"""Request bodies for httpx that a cut connection cannot turn into a warning."""

from __future__ import annotations

import httpx
import trio

__all__ = ["OneChunk"]


class OneChunk(httpx.AsyncByteStream):
    """A request body sent as one chunk, and iterated without an async generator.

    httpx iterates its own bodies with one. When the server answers before it has read
    the whole body (a 413), or the connection is cut while the body is being sent,
    that generator is left to the garbage collector, which trio reports as a
    ResourceWarning, in whichever test is running when the collector runs.
    """

    def __init__(self, content: bytes) -> None:
        self._content = content

    def __aiter__(self) -> _Chunks:  # type: ignore[override]
        return _Chunks([self._content] if self._content else [])


class _Chunks:
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        await trio.lowlevel.checkpoint()
        if not self._chunks:
            raise StopAsyncIteration
        return self._chunks.pop()
