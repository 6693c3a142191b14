"""The content id: the root of a BLAKE3 Merkle tree over a file's pieces.

Leaves and inner nodes are hashed under different one-byte prefixes, so a
leaf can never be passed off as an inner node (or the reverse):

- leaf  = BLAKE3(0x00 || piece bytes)
- inner = BLAKE3(0x01 || left || right)

A level of odd length promotes its last node unchanged to the next level,
so a one-piece file's root is its single leaf. The empty file has one empty
piece, so every file has a root. The number of leaves is fixed by the size
and piece length in the manifest, which a verifier checks before the root.

Pure: no Twisted, no I/O beyond the ``read`` callable it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import blake3

HASH_LEN = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"

# Bytes fed to BLAKE3 per call when hashing a piece incrementally: large
# enough that the per-call cost (and, in a thread, the GIL hand-off) vanishes,
# small enough that a 1 GiB piece length does not mean a 1 GiB buffer.
CHUNK = 1 << 20

Buffer = bytes | bytearray | memoryview


def piece_count(size: int, piece_length: int) -> int:
    """Pieces in a file of ``size`` bytes: at least one (the empty file has one empty piece)."""
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    if piece_length < 1:
        raise ValueError(f"piece_length must be >= 1, got {piece_length}")
    return max(1, -(-size // piece_length))


def hash_piece(data: Buffer) -> bytes:
    """The leaf hash of one piece."""
    hasher = blake3.blake3(LEAF_PREFIX)
    hasher.update(data)
    return hasher.digest()


def hash_node(left: bytes, right: bytes) -> bytes:
    """The hash of an inner node from its two children."""
    return blake3.blake3(NODE_PREFIX + left + right).digest()


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The 32-byte root over ``leaves`` (leaf hashes, in piece order).

    Raises ``ValueError`` for no leaves (every file has at least one piece)
    or a leaf that is not 32 bytes.
    """
    if not leaves:
        raise ValueError("a Merkle tree needs at least one leaf")
    for leaf in leaves:
        if not isinstance(leaf, bytes) or len(leaf) != HASH_LEN:
            raise ValueError(f"every leaf must be {HASH_LEN} bytes")
    level = list(leaves)
    while len(level) > 1:
        paired = [hash_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


content_id = merkle_root


def piece_hashes(
    read: Callable[[int], Buffer],
    size: int,
    piece_length: int,
    check: Callable[[], object] | None = None,
) -> list[bytes]:
    """Leaf hashes of a ``size``-byte stream read with ``read(n)``, in piece order.

    ``read(n)`` returns at most ``n`` bytes (a ``memoryview`` into a reused
    buffer is fine); an empty result before ``size`` bytes raises
    ``EOFError``: the stream is shorter than it said. ``check``, if given,
    is called between chunks so a caller can abort a long hash by raising.
    """
    hashes = []
    for index in range(piece_count(size, piece_length)):
        remaining = min(piece_length, size - index * piece_length)
        hasher = blake3.blake3(LEAF_PREFIX)
        while remaining > 0:
            if check is not None:
                check()
            chunk = read(min(remaining, CHUNK))
            if not chunk:
                raise EOFError(f"stream ended {remaining} bytes short in piece {index}")
            hasher.update(chunk)
            remaining -= len(chunk)
        hashes.append(hasher.digest())
    return hashes


def hash_pieces(pieces: Iterable[Buffer]) -> list[bytes]:
    """Leaf hashes of pieces already in memory (tests, small files)."""
    return [hash_piece(piece) for piece in pieces]
