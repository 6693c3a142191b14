"""Block and piece writes and their verification: the CN's per-packet path.

``write_blocks`` (a batch from the receiver), ``write_block`` and
``write_piece`` (a block code's output) store data and hash each piece when
its last block comes; a piece that fails is forgotten (its blocks wanted
again) and never written from memory.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable

from mcp2p.transfer.store.common import Buffer, PieceEvent, StoreError
from mcp2p.transfer.store.progress import ProgressRecords
from mcp2p.wire.merkle import hash_piece


class PieceWriter(ProgressRecords):
    """The layer of ``PartialFile`` that takes blocks and pieces in."""

    def write_block(self, index: int, data: Buffer) -> PieceEvent | None:
        """Store block ``index``; a ``PieceEvent`` when it completes its piece.

        ``ValueError`` for an index out of range or a length that is not the
        block's; ``None`` (counted) for a block already held.
        """
        if not 0 <= index < self._nblocks:
            raise ValueError(f"block {index} is outside 0..{self._nblocks - 1}")
        if self._fd < 0:
            raise StoreError(errno.EBADF, f"{self.part_path} is closed", str(self.part_path))
        if self._written[index]:
            self._duplicates += 1
            return None
        piece, block = divmod(index, self._bpp)
        start = block * self._block_length
        end = start + self._block_length
        if end > self._piece_length:
            end = self._piece_length
        base = piece * self._piece_length
        if base + end > self._size:
            end = self._size - base
        length = end - start
        if len(data) != length:
            raise ValueError(f"block {index} must be {length} bytes, got {len(data)}")
        buffer = self._buffers.get(piece)
        if buffer is None:
            buffer = self._buffer_for(piece)
        if buffer is not None:
            buffer[start:end] = data
        else:
            self._write_all(memoryview(data), base + start)
            self._dirty_blocks += 1
        self._written[index] = 1
        self._written_blocks += 1
        left = self._left[piece] - 1
        self._left[piece] = left
        if left:
            return None
        return self._check_piece(piece)

    def write_blocks(
        self, items: Iterable[tuple[int, int, Buffer]]
    ) -> tuple[list[PieceEvent], int]:
        """Store ``(piece, block in piece, data)`` blocks: the pieces they
        completed, and how many were refused (no such block, wrong length).

        ``write_block`` for a batch, inlined (this is the per-packet path): a
        batch is mostly runs of blocks of one piece, so what depends on the
        piece alone (its range, its last block's length, its buffer) is
        looked up once per run."""
        if self._fd < 0:
            raise StoreError(errno.EBADF, f"{self.part_path} is closed", str(self.part_path))
        events: list[PieceEvent] = []
        bad = duplicates = wrote = 0
        bpp, last, last_blocks = self._bpp, self._last_piece, self._last_blocks
        block_length, piece_length, size = self._block_length, self._piece_length, self._size
        written, left, buffers = self._written, self._left, self._buffers
        # The piece of the run (None: no run; never -1, an index an SN may send), its
        # blocks, its first block's index, its last block's length and its buffer.
        current: int | None = None
        blocks = first = tail = 0
        view: memoryview | None = None
        for piece, block, data in items:
            if piece != current:
                if not 0 <= piece <= last:
                    bad += 1
                    continue
                current, first = piece, piece * bpp
                if piece < last:
                    blocks, tail = bpp, piece_length - (bpp - 1) * block_length
                else:
                    blocks = last_blocks
                    tail = size - piece * piece_length - (blocks - 1) * block_length
                view = buffers.get(piece)
            if not 0 <= block < blocks:
                bad += 1
                continue
            index = first + block
            if written[index]:
                duplicates += 1
                continue
            length = len(data)
            if length != (block_length if block < blocks - 1 else tail):
                bad += 1
                continue
            if view is None:
                view = self._buffer_for(piece)
                if view is None:  # assembled on disk
                    event = self.write_block(index, data)
                    if event is not None:
                        events.append(event)
                    continue
            start = block * block_length
            view[start : start + length] = data
            written[index] = 1
            wrote += 1
            remaining = left[piece] - 1
            left[piece] = remaining
            if not remaining:
                self._written_blocks += wrote
                wrote = 0
                current, view = None, None  # its buffer goes back
                events.append(self._check_piece(piece))
        self._written_blocks += wrote
        self._duplicates += duplicates
        return events, bad

    def write_piece(self, piece: int, data: Buffer) -> PieceEvent | None:
        """Store a whole piece (a block code's output), verified before it is written.

        ``None`` (counted as a duplicate) if the piece is already verified; a
        piece that does not verify touches nothing on disk.
        """
        size = self.layout.piece_size(piece)
        if len(data) != size:
            raise ValueError(f"piece {piece} must be {size} bytes, got {len(data)}")
        if self._verified[piece]:
            self._duplicates += 1
            return None
        if hash_piece(data) != self._hashes[piece]:
            self._bad_pieces += 1
            return PieceEvent(piece, False)
        buffer = self._buffers.pop(piece, None)
        if buffer is not None:
            self._recycle(buffer)
        self._write_all(memoryview(data), piece * self._piece_length)
        blocks = self.layout.piece_blocks(piece)
        self._written_blocks += self._left[piece]
        self._written[blocks.start : blocks.stop] = b"\x01" * len(blocks)
        self._piece_verified(piece)
        return PieceEvent(piece, True)

    def _check_piece(self, piece: int) -> PieceEvent:
        """All blocks of ``piece`` are in: read it back and hash it."""
        offset = piece * self._piece_length
        size = min(self._piece_length, self._size - offset)
        buffer = self._buffers.pop(piece, None)
        if buffer is not None:
            # In memory: hashed there, written once if good, never if bad.
            data = buffer[:size]
            good = hash_piece(data) == self._hashes[piece]
            try:
                if good:
                    self._write_all(data, offset)
            except StoreError:
                self._forget(piece)  # none of it is held: all wanted again
                raise
            finally:
                data.release()
                self._recycle(buffer)
        else:
            good = hash_piece(self._read(offset, size)) == self._hashes[piece]
        if good:
            self._piece_verified(piece)
            return PieceEvent(piece, True)
        self._bad_pieces += 1
        self._forget(piece)
        return PieceEvent(piece, False)

    def forget(self, piece: int) -> None:
        """Drop the written but unverified blocks of ``piece``: they are wanted again
        (the CN learned that one of the SNs that sent them lies)."""
        if not self.is_verified(piece):
            self._forget(piece)

    def _forget(self, piece: int) -> None:
        buffer = self._buffers.pop(piece, None)
        if buffer is not None:
            self._recycle(buffer)
        blocks = self.layout.piece_blocks(piece)
        self._written[blocks.start : blocks.stop] = bytes(len(blocks))
        self._left[piece] = len(blocks)
