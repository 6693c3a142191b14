"""decode_manifest's receiver limits: a manifest over a CN's [fetching]
max_piece_length or max_file_size is refused before its hashes are read."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from mcp2p.errors import ProtocolError
from mcp2p.wire.manifest import decode_manifest, encode_manifest, sign_manifest
from mcp2p.wire.merkle import merkle_root

KEY = Ed25519PrivateKey.generate()


def manifest(size: int, piece_length: int) -> bytes:
    pieces = max(1, -(-size // piece_length))
    hashes = [os.urandom(32) for _ in range(pieces)]
    return encode_manifest(
        sign_manifest(merkle_root(hashes), "f", size, piece_length, 1024, hashes, KEY)
    )


def test_a_tebibyte_in_gibibyte_pieces_is_refused_by_a_16_mib_limit() -> None:
    data = manifest(1 << 40, 1 << 30)
    assert decode_manifest(data).size == 1 << 40  # the format allows it
    with pytest.raises(ProtocolError, match="pieces of 1073741824 bytes, over the limit"):
        decode_manifest(data, max_piece_length=16 << 20)


@given(
    size=st.integers(0, 1 << 24),
    piece_length=st.sampled_from([1024, 4096, 65536, 1 << 20]),
    max_size=st.integers(0, 1 << 24),
    max_piece_length=st.sampled_from([1024, 65536, 1 << 20]),
)
def test_limits_hold_exactly(
    size: int, piece_length: int, max_size: int, max_piece_length: int
) -> None:
    data = manifest(size, piece_length)
    if size <= max_size and piece_length <= max_piece_length:
        m = decode_manifest(data, max_piece_length=max_piece_length, max_size=max_size)
        assert (m.size, m.piece_length) == (size, piece_length)
    else:
        with pytest.raises(ProtocolError, match="over the limit"):
            decode_manifest(data, max_piece_length=max_piece_length, max_size=max_size)


def test_a_piece_count_that_disagrees_with_the_size_is_refused() -> None:
    data = bytearray(manifest(10_000, 1024))  # 10 pieces
    count_at = 4 + 32 + 1 + 1 + 8 + 4 + 2
    data[count_at : count_at + 4] = (11).to_bytes(4, "big")
    with pytest.raises(ProtocolError, match="11 piece hashes for a layout of 10 pieces"):
        decode_manifest(bytes(data))
