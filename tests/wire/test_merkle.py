"""The content id's Merkle tree: known vectors and properties."""

from __future__ import annotations

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp2p.wire.merkle import (
    hash_node,
    hash_piece,
    hash_pieces,
    merkle_root,
    piece_count,
    piece_hashes,
)

leaf = st.binary(min_size=32, max_size=32)
leaves = st.lists(leaf, min_size=1, max_size=70)


def b3(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


def reference_root(nodes: list[bytes]) -> bytes:
    """The same tree, defined recursively (RFC 6962 shape): the left subtree
    holds the largest power of two strictly below n leaves."""
    if len(nodes) == 1:
        return nodes[0]
    k = 1
    while k * 2 < len(nodes):
        k *= 2
    return b3(b"\x01" + reference_root(nodes[:k]) + reference_root(nodes[k:]))


def test_leaf_and_node_are_prefixed_blake3() -> None:
    assert hash_piece(b"") == b3(b"\x00")
    assert hash_piece(b"abc") == b3(b"\x00abc")
    assert hash_node(b"L" * 32, b"R" * 32) == b3(b"\x01" + b"L" * 32 + b"R" * 32)


def test_known_vectors() -> None:
    assert hash_piece(b"").hex() == (
        "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213"
    )
    a, b, c = (b3(b"\x00" + x) for x in (b"a", b"b", b"c"))
    assert merkle_root([a, b, c]) == b3(b"\x01" + b3(b"\x01" + a + b) + c)
    assert merkle_root([a, b, c]).hex() == (
        "6c62dd52a0971b7d00a7cead004e0c3f3c0766e3f5359a0f8297768d2b02d03c"
    )
    five = hash_pieces([bytes([i]) for i in range(5)])
    assert merkle_root(five).hex() == (
        "667f5c8d18ce7aa303848f8a0c385849aecfcb96b12e3dc8470435cffcfa3e84"
    )


@given(leaves)
def test_matches_recursive_definition(ls: list[bytes]) -> None:
    root = merkle_root(ls)
    assert len(root) == 32
    assert root == reference_root(ls)
    assert merkle_root(tuple(ls)) == root  # deterministic, any sequence


@given(leaf)
def test_single_leaf_is_its_own_root(x: bytes) -> None:
    # An odd node is promoted unchanged, so a one-piece file's content id is
    # its leaf hash; leaves and nodes stay apart by their prefixes.
    assert merkle_root([x]) == x


@given(leaves, st.data())
def test_root_depends_on_every_leaf(ls: list[bytes], data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(ls) - 1))
    other = data.draw(leaf.filter(lambda v: v != ls[i]))
    changed = list(ls)
    changed[i] = other
    assert merkle_root(changed) != merkle_root(ls)


@given(leaves, st.data())
def test_root_depends_on_order(ls: list[bytes], data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(ls) - 1))
    j = data.draw(st.integers(0, len(ls) - 1))
    swapped = list(ls)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    assert (merkle_root(swapped) == merkle_root(ls)) == (ls[i] == ls[j])


@given(leaves, leaf)
def test_appending_a_leaf_changes_the_root(ls: list[bytes], extra: bytes) -> None:
    assert merkle_root([*ls, extra]) != merkle_root(ls)


def test_bad_leaves_are_refused() -> None:
    with pytest.raises(ValueError):
        merkle_root([])
    with pytest.raises(ValueError):
        merkle_root([b"x" * 31])
    with pytest.raises(ValueError):
        merkle_root(["x" * 32])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("size", "piece_length", "count"),
    [(0, 1, 1), (1, 1, 1), (1, 4, 1), (4, 4, 1), (5, 4, 2), (8, 4, 2), (9, 4, 3)],
)
def test_piece_count(size: int, piece_length: int, count: int) -> None:
    assert piece_count(size, piece_length) == count


@given(
    st.binary(max_size=3000),
    st.integers(1, 700),
    st.lists(st.integers(1, 400), min_size=1, max_size=20),
)
def test_piece_hashes_of_a_stream(data: bytes, piece_length: int, reads: list[int]) -> None:
    # A reader that returns short reads of varying length must not change
    # the hashes: they are those of the pieces cut from the whole.
    pos = 0
    calls = 0

    def read(n: int) -> bytes:
        nonlocal pos, calls
        take = min(n, reads[calls % len(reads)])
        calls += 1
        out = data[pos : pos + take]
        pos += len(out)
        return out

    got = piece_hashes(read, len(data), piece_length)
    pieces = [data[i : i + piece_length] for i in range(0, len(data), piece_length)] or [b""]
    assert got == [hash_piece(p) for p in pieces]
    assert len(got) == piece_count(len(data), piece_length)


def test_short_stream_raises_eof() -> None:
    chunks = [b"abc"]
    with pytest.raises(EOFError):
        piece_hashes(lambda n: chunks.pop() if chunks else b"", 10, 4)


def test_check_can_abort() -> None:
    class Stop(Exception):
        pass

    def check() -> None:
        raise Stop()

    with pytest.raises(Stop):
        piece_hashes(lambda n: b"x" * n, 10, 4, check)
