"""The piece buffers: a window of pieces in flight gathered in memory.

A piece's blocks are gathered in one buffer and the piece is hashed there
when its last block comes: a piece that verifies is written with one
``pwrite``, one that does not never touches the disk. At most
``BUFFER_BYTES`` of buffers are held; when a new piece needs one beyond
that, the buffer touched longest ago is spilled: its blocks are written
where they belong and the piece goes on on disk (read back into a buffer
when its next block comes, or read back and hashed on disk when it
completes there). Pieces larger than a quarter of the window are assembled
on disk, block by block. Buffers freed are kept for reuse, up to the window.

Blocks held in memory are not recorded (the progress file's ``written`` map
marks only blocks on disk): after a crash they are wanted again, at most the
window. ``close`` spills them first, so a clean stop keeps them.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from mcp2p.transfer.store.common import ManifestLike, StoreError, _store_error
from mcp2p.transfer.store.dirs import _Files
from mcp2p.transfer.store.state import PieceState

BUFFER_BYTES = 32 << 20  # pieces in flight held in memory, at most (bytes)


class BufferWindow(PieceState):
    """The layer of ``PartialFile`` that holds pieces in flight in memory."""

    def __init__(
        self,
        manifest: ManifestLike,
        files: _Files,
        fd: int,
        verified: bytearray,
        clock: Callable[[], float],
    ) -> None:
        super().__init__(manifest, files, fd, verified, clock)
        # piece -> its buffer (blocks gathered in memory), oldest touched first. A buffer
        # is a memoryview of a bytearray: a block is copied into a memoryview slice
        # once, where a bytearray slice assignment copies a view's bytes twice.
        self._buffers: dict[int, memoryview] = {}
        self._spare: list[memoryview] = []  # buffers to reuse (at most the window)
        self._max_buffers = (
            BUFFER_BYTES // self._piece_length if 4 * self._piece_length <= BUFFER_BYTES else 0
        )
        self._spilled = 0

    def _buffer_for(self, piece: int) -> memoryview | None:
        """A buffer for ``piece`` (its blocks on disk read in), or None: assemble
        it on disk (a large piece, or no window)."""
        if not self._max_buffers:
            return None
        while len(self._buffers) >= self._max_buffers:
            self._spill(next(iter(self._buffers)))
        buffer = self._spare.pop() if self._spare else memoryview(bytearray(self._piece_length))
        blocks = self.layout.piece_blocks(piece)
        if self._written.find(1, blocks.start, blocks.stop) != -1:
            size = self.layout.piece_size(piece)
            offset = piece * self._piece_length
            try:
                got = os.preadv(self._fd, [buffer[:size]], offset)
            except OSError as exc:
                self._spare.append(buffer)
                raise _store_error(exc, "read", self.part_path) from exc
            if got != size:
                self._spare.append(buffer)
                raise StoreError(
                    errno.EIO, f"{self.part_path} is shorter than expected", str(self.part_path)
                )
        self._buffers[piece] = buffer
        return buffer

    def _spill(self, piece: int) -> None:
        """Write the blocks ``piece`` holds in memory to the part file; it goes on on disk."""
        buffer = self._buffers.pop(piece)
        blocks = self.layout.piece_blocks(piece)
        written = self._written
        view = buffer
        base = piece * self._piece_length
        size = self.layout.piece_size(piece)
        start = written.find(1, blocks.start, blocks.stop)
        while start != -1:
            stop = written.find(0, start, blocks.stop)
            if stop == -1:
                stop = blocks.stop
            a = (start - blocks.start) * self._block_length
            b = min((stop - blocks.start) * self._block_length, size)
            self._write_all(view[a:b], base + a)
            self._dirty_blocks += stop - start
            start = written.find(1, stop, blocks.stop)
        self._spilled += 1
        self._recycle(buffer)

    def _recycle(self, buffer: memoryview) -> None:
        if len(self._spare) + len(self._buffers) < self._max_buffers:
            self._spare.append(buffer)

    def _on_disk(self) -> bytearray:
        """``_written`` without the blocks held only in memory."""
        if not self._buffers:
            return self._written
        written = bytearray(self._written)
        for piece in self._buffers:
            blocks = self.layout.piece_blocks(piece)
            written[blocks.start : blocks.stop] = bytes(len(blocks))
        return written

    @property
    def buffered(self) -> tuple[int, int]:
        """(pieces held in memory now, pieces spilled to disk so far)."""
        return len(self._buffers), self._spilled
