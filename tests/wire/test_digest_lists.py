"""Digest lists on the wire (wire.rtp): an RTP packet of payload type 97 whose
timestamp is the first packet's 32-bit sequence number, ``piece`` the count,
then 8 bytes a packet; numbers wrap at 2^32; anything else is refused; its
hash covers every byte."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp2p.errors import ProtocolError
from mcp2p.wire.rtp import (
    DIGEST_LEN,
    HEADER_LEN,
    LIST_HASH_LEN,
    MAX_PAYLOAD,
    decode_packet,
    list_hash,
    list_notices,
    pack_list,
    split_header,
    split_list,
)

SEQ = 0xFFFFFFFF


@given(st.integers(0, SEQ), st.integers(0, SEQ), st.integers(1, 300))
def test_pack_then_split_gives_every_digest_once_in_order(first: int, ssrc: int, n: int) -> None:
    digests = b"".join(k.to_bytes(DIGEST_LEN, "big") for k in range(n))
    packet = pack_list(first, ssrc, digests)
    assert len(packet) == HEADER_LEN + n * DIGEST_LEN
    assert split_list(packet) == (ssrc, first, n)
    assert list_notices(packet) == [
        ((first + k) & SEQ, k.to_bytes(DIGEST_LEN, "big")) for k in range(n)
    ]
    assert len(list_hash(packet)) == LIST_HASH_LEN


def test_numbers_wrap_at_32_bits() -> None:
    packet = pack_list(SEQ, 1, b"a" * 8 + b"b" * 8)
    assert list_notices(packet) == [(SEQ, b"a" * 8), (0, b"b" * 8)]


def test_a_list_is_no_data_packet_and_a_data_packet_no_list() -> None:
    packet = pack_list(5, 1, b"a" * 8)
    assert split_header(packet) is None
    with pytest.raises(ProtocolError):
        decode_packet(packet)
    data = bytearray(packet)
    data[1] = 96  # the data payload type: a well-formed data packet, no list
    assert split_list(bytes(data)) is None


@given(st.binary(max_size=200))
def test_split_list_refuses_garbage_without_raising(data: bytes) -> None:
    parsed = split_list(data)
    if parsed is not None:  # then it is exactly a list packet of its count
        assert pack_list(parsed[1], parsed[0], data[HEADER_LEN:]) == data


@pytest.mark.parametrize(
    "change",
    [
        lambda p: p[:-1],  # a partial digest
        lambda p: p + b"x" * 8,  # more digests than the count
        lambda p: p[:HEADER_LEN],  # none
        lambda p: p[:2] + b"\x00\x06" + p[4:],  # a 16-bit number that is not the first's
        lambda p: p[:12] + b"\x01" + p[13:],  # flags
        lambda p: p[:13] + b"\x01" + p[14:],  # the reserved byte
        lambda p: p[:18] + b"\x00\x00\x00\x01" + p[22:],  # a symbol
    ],
)
def test_malformed_lists_are_refused(change: object) -> None:
    packet = pack_list(5, 1, b"a" * 16)
    assert split_list(change(packet)) is None  # type: ignore[operator]


def test_the_hash_covers_every_byte() -> None:
    packet = pack_list(5, 1, b"a" * 16)
    for i in range(len(packet)):
        changed = bytearray(packet)
        changed[i] ^= 1
        assert list_hash(bytes(changed)) != list_hash(packet)


@pytest.mark.parametrize("digests", [b"", b"x" * 9, b"x" * (MAX_PAYLOAD + 8)])
def test_packing_refuses_what_is_no_list(digests: bytes) -> None:
    with pytest.raises(ValueError):
        pack_list(0, 1, digests)
