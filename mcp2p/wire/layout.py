"""How a file is cut: pieces (the unit verified) and blocks (the unit sent).

Pieces are ``piece_length`` bytes (the last may be shorter; an empty file
has one empty piece, as in ``mcp2p.wire.merkle``). Each piece is cut into
blocks of ``block_length`` bytes (the last block of a piece may be
shorter). Every piece but the last has the same number of blocks,
``blocks_per_piece``, so a block's global index is
``piece * blocks_per_piece + block_in_piece``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    size: int
    piece_length: int
    block_length: int

    def __post_init__(self) -> None:
        if self.size < 0 or self.piece_length < 1 or self.block_length < 1:
            raise ValueError("size must be >= 0, piece and block lengths >= 1")
        if self.block_length > self.piece_length:
            raise ValueError("block_length must not exceed piece_length")

    @property
    def pieces(self) -> int:
        return max(1, -(-self.size // self.piece_length))

    @property
    def blocks_per_piece(self) -> int:
        return -(-self.piece_length // self.block_length)

    def piece_size(self, piece: int) -> int:
        self._check_piece(piece)
        return min(self.piece_length, self.size - piece * self.piece_length)

    def piece_offset(self, piece: int) -> int:
        self._check_piece(piece)
        return piece * self.piece_length

    def blocks_in_piece(self, piece: int) -> int:
        """Blocks of ``piece``: 1 for an empty file's only piece."""
        return max(1, -(-self.piece_size(piece) // self.block_length))

    @property
    def blocks(self) -> int:
        last = self.pieces - 1
        return last * self.blocks_per_piece + self.blocks_in_piece(last)

    def block_index(self, piece: int, block: int) -> int:
        if not 0 <= block < self.blocks_in_piece(piece):
            raise ValueError(f"piece {piece} has no block {block}")
        return piece * self.blocks_per_piece + block

    def locate(self, index: int) -> tuple[int, int]:
        """(piece, block in piece) of global block ``index``."""
        if not 0 <= index < self.blocks:
            raise ValueError(f"block {index} is outside 0..{self.blocks - 1}")
        return divmod(index, self.blocks_per_piece)

    def block_span(self, index: int) -> tuple[int, int]:
        """(file offset, length) of global block ``index``."""
        piece, block = self.locate(index)
        start = block * self.block_length
        length = min(self.block_length, self.piece_size(piece) - start)
        return piece * self.piece_length + start, max(0, length)

    def piece_blocks(self, piece: int) -> range:
        """Global indices of the blocks of ``piece``."""
        first = piece * self.blocks_per_piece
        return range(first, first + self.blocks_in_piece(piece))

    def _check_piece(self, piece: int) -> None:
        if not 0 <= piece < self.pieces:
            raise ValueError(f"piece {piece} is outside 0..{self.pieces - 1}")
