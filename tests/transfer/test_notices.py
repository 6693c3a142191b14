"""Sent notices on the wire: the first sequence number and 8 bytes a packet,
split under AMP's value limit, wrapping at 2^32, and malformed ones refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp2p.errors import ProtocolError
from mcp2p.transfer.control import CHUNK, DIGEST, SEQ_MASK, pack_notices, unpack_notices


@given(st.integers(0, SEQ_MASK), st.integers(0, 3 * CHUNK // DIGEST))
def test_pack_then_unpack_gives_every_notice_once_in_order(first: int, count: int) -> None:
    digests = b"".join(n.to_bytes(DIGEST, "big") for n in range(count))
    chunks = pack_notices(first, digests)
    assert all(len(chunk) <= CHUNK for _, chunk in chunks)
    out = [notice for start, chunk in chunks for notice in unpack_notices(start, chunk)]
    assert out == [((first + n) & SEQ_MASK, n.to_bytes(DIGEST, "big")) for n in range(count)]


def test_numbers_wrap_at_32_bits() -> None:
    assert unpack_notices(SEQ_MASK, b"a" * 8 + b"b" * 8) == [(SEQ_MASK, b"a" * 8), (0, b"b" * 8)]


@pytest.mark.parametrize("first,digests", [(-1, b""), (SEQ_MASK + 1, b""), (0, b"x" * 7)])
def test_malformed_notices_are_a_protocol_error(first: int, digests: bytes) -> None:
    with pytest.raises(ProtocolError):
        unpack_notices(first, digests)


def test_packing_refuses_a_partial_digest() -> None:
    with pytest.raises(ValueError):
        pack_notices(0, b"x" * 9)
