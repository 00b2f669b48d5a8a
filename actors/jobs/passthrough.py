"""The :class:`Passthrough`: a foreground job's upstream answer, handed to its HTTP route.

The seed's foreground path is a proxy: the upstream's status, then its body's
bytes unchanged. The job's :class:`~actors.jobs.stream.StreamActor` writes
both here as it reads them, and the route reads them out. Like a trio memory
channel, it is a concurrency primitive between two tasks, not actor state.
"""

from __future__ import annotations

import attrs
import trio

from actors.upstream import UpstreamError

__all__ = ["PIECES_BUFFERED", "Passthrough", "PassthroughHead"]

PIECES_BUFFERED = 16
"""Pieces of the body held for a slow reader; past that, the writer waits for room."""


@attrs.frozen
class PassthroughHead:
    """How the upstream answered.

    ``status`` is the 2xx status of a stream whose body follows, or the status of
    an error answer whose ``body`` (the API key redacted) and ``content_type`` are
    given here; it is None when no answer came: the upstream could not be reached,
    or the job ended before it answered.
    """

    status: int | None
    body: bytes = b""
    content_type: str | None = None


_UNREACHED = PassthroughHead(None)


class Passthrough:
    """One writer (the stream actor) and one reader (the route).

    The head is set once, by :meth:`open` or else by :meth:`close`; the body's
    pieces follow it, in order, through a channel of :data:`PIECES_BUFFERED`
    pieces. The writer waits while it is full, so a slow reader slows the
    upstream read down, as a proxy does.
    """

    def __init__(self) -> None:
        self._head: PassthroughHead | None = None
        self._head_set = trio.Event()
        self._sender, self._receiver = trio.open_memory_channel[bytes](PIECES_BUFFERED)

    def __repr__(self) -> str:
        return f"<Passthrough head={self._head!r}>"

    # -- the stream actor's side ---------------------------------------------------

    def open(self, status: int = 200) -> None:
        """Set the head of a stream whose body follows; once set, the head stays.

        Not a checkpoint; never blocks.
        """
        self._set_head(PassthroughHead(status))

    async def send(self, data: bytes) -> None:
        """Pass a piece of the body on, waiting for room in the channel.

        Once the reader has closed its end, the piece is dropped. Raises
        :class:`trio.ClosedResourceError` after :meth:`close`. A checkpoint;
        cancelled, the piece was not sent.
        """
        try:
            await self._sender.send(data)
        except trio.BrokenResourceError:
            # The reader went (a disconnect, a shutdown); the job goes on until aborted.
            await trio.lowlevel.cancel_shielded_checkpoint()

    def close(self, failure: UpstreamError | None = None) -> None:
        """End the body; set the head first if it is not set yet.

        That head is ``failure``'s answer when the upstream answered with an
        error status, or else "not reached". Idempotent; not a checkpoint.
        """
        if failure is not None and failure.status is not None and failure.body is not None:
            self._set_head(PassthroughHead(failure.status, failure.body, failure.content_type))
        else:
            self._set_head(_UNREACHED)
        self._sender.close()

    def _set_head(self, head: PassthroughHead) -> None:
        if self._head is None:
            self._head = head
            self._head_set.set()

    # -- the route's side --------------------------------------------------------------

    async def head(self) -> PassthroughHead:
        """Wait for the head and return it. Always a checkpoint."""
        await self._head_set.wait()
        assert self._head is not None
        return self._head

    async def receive_some(self) -> bytes:
        """Wait for the next piece of the body; return it joined with every piece
        already waiting behind it.

        Raises :class:`trio.EndOfChannel` once the body has ended and every piece
        was read. A checkpoint; cancelled, nothing was taken.
        """
        first = await self._receiver.receive()
        pieces = [first]
        while True:
            try:
                pieces.append(self._receiver.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        return first if len(pieces) == 1 else b"".join(pieces)

    def close_reader(self) -> None:
        """Stop reading: the writer drops every later piece instead of waiting.

        Idempotent; not a checkpoint.
        """
        self._receiver.close()
