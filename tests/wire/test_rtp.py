"""RTP data packets: exact bytes, round trips, and a decoder that only raises ProtocolError."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp2p.errors import ProtocolError
from mcp2p.wire.rtp import (
    DIGEST_LEN,
    HEADER_LEN,
    MAX_PAYLOAD,
    PAYLOAD_TYPE,
    DataPacket,
    decode_packet,
    encode_packet,
    pack_header,
    packet_digest,
    packet_digests,
)

u32 = st.integers(0, 0xFFFFFFFF)
packets = st.builds(
    DataPacket,
    seq=st.integers(0, 0xFFFF),
    timestamp=u32,
    ssrc=u32,
    piece=u32,
    symbol=u32,
    flags=st.integers(0, 0xFF),
    payload=st.binary(max_size=1500),
)

EXAMPLE = DataPacket(
    seq=0x1234,
    timestamp=0x01020304,
    ssrc=0xA0B0C0D0,
    piece=7,
    symbol=0x10000,
    flags=0x5A,
    payload=b"hello",
)
EXAMPLE_BYTES = (
    bytes.fromhex(
        "80 60 1234 01020304 a0b0c0d0"  # RTP: V=2, PT=96, seq, timestamp, SSRC
        "5a 00 00000007 00010000"  # mcp2p: flags, reserved, piece, symbol
    )
    + b"hello"
)


def test_exact_bytes() -> None:
    assert HEADER_LEN == 22
    assert PAYLOAD_TYPE == 96
    assert encode_packet(EXAMPLE) == EXAMPLE_BYTES
    assert decode_packet(EXAMPLE_BYTES) == EXAMPLE


def test_rtp_fields_where_rfc3550_puts_them() -> None:
    """What tshark reads: V, P, X, CC, M, PT, sequence, timestamp, SSRC."""
    first, second, seq, timestamp, ssrc = struct.unpack("!BBHII", EXAMPLE_BYTES[:12])
    assert first >> 6 == 2 and first & 0x3F == 0
    assert second >> 7 == 0 and second & 0x7F == 96
    assert (seq, timestamp, ssrc) == (EXAMPLE.seq, EXAMPLE.timestamp, EXAMPLE.ssrc)


@given(packets)
def test_round_trip(p: DataPacket) -> None:
    data = encode_packet(p)
    assert len(data) == HEADER_LEN + len(p.payload)
    assert decode_packet(data) == p


@given(packets)
def test_pack_header_matches_encode(p: DataPacket) -> None:
    header = pack_header(p.seq, p.timestamp, p.ssrc, p.piece, p.symbol, p.flags)
    assert header + p.payload == encode_packet(p)


def test_pack_header_default_flags() -> None:
    assert pack_header(1, 2, 3, 4, 5)[12] == 0


def test_pack_header_refuses_values_that_do_not_fit() -> None:
    with pytest.raises(struct.error):
        pack_header(0x10000, 0, 0, 0, 0)


@given(st.binary(max_size=64))
def test_decode_arbitrary_bytes(data: bytes) -> None:
    try:
        p = decode_packet(data)
    except ProtocolError:
        return
    assert encode_packet(p) == data


@given(packets, st.integers(0, HEADER_LEN - 1), st.integers(1, 255))
def test_any_changed_header_byte_decodes_differently_or_not_at_all(
    p: DataPacket, index: int, xor: int
) -> None:
    data = bytearray(encode_packet(p))
    data[index] ^= xor
    try:
        q = decode_packet(bytes(data))
    except ProtocolError:
        return
    assert q != p


@pytest.mark.parametrize(
    ("first", "second", "reserved", "why"),
    [
        (0x40, 0x60, 0, "version"),
        (0xC0, 0x60, 0, "version"),
        (0xA0, 0x60, 0, "padding"),
        (0x90, 0x60, 0, "extension"),
        (0x81, 0x60, 0, "CSRC"),
        (0x80, 0xE0, 0, "marker"),
        (0x80, 0x61, 0, "payload type"),
        (0x80, 0x60, 1, "reserved"),
    ],
)
def test_decode_refuses(first: int, second: int, reserved: int, why: str) -> None:
    data = bytearray(EXAMPLE_BYTES)
    data[0], data[1], data[13] = first, second, reserved
    with pytest.raises(ProtocolError):
        decode_packet(bytes(data))


def test_decode_truncated() -> None:
    for n in range(HEADER_LEN):
        with pytest.raises(ProtocolError, match="truncated"):
            decode_packet(EXAMPLE_BYTES[:n])
    assert decode_packet(EXAMPLE_BYTES[:HEADER_LEN]).payload == b""


def test_decode_too_large() -> None:
    with pytest.raises(ProtocolError):
        decode_packet(EXAMPLE_BYTES[:HEADER_LEN] + bytes(MAX_PAYLOAD + 1))


@pytest.mark.parametrize(
    "field, value",
    [
        ("seq", 0x10000),
        ("seq", -1),
        ("timestamp", 1 << 32),
        ("ssrc", 1 << 32),
        ("piece", -1),
        ("symbol", 1 << 32),
        ("flags", 256),
        ("seq", True),
        ("payload", "text"),
        ("payload", bytes(MAX_PAYLOAD + 1)),
    ],
)
def test_packet_validates(field: str, value: object) -> None:
    fields = {
        "seq": 0,
        "timestamp": 0,
        "ssrc": 0,
        "piece": 0,
        "symbol": 0,
        "flags": 0,
        "payload": b"",
    }
    fields[field] = value
    with pytest.raises(ValueError):
        DataPacket(**fields)  # type: ignore[arg-type]


@given(st.binary(max_size=200))
def test_packet_digest(data: bytes) -> None:
    digest = packet_digest(data)
    assert len(digest) == DIGEST_LEN == 8
    assert digest == hashlib.sha256(data).digest()[:8]
    assert packet_digests([data, data + b"x"]) == [digest, packet_digest(data + b"x")]


def test_packet_digest_covers_header_and_payload() -> None:
    digests = {packet_digest(EXAMPLE_BYTES)}
    for i in range(len(EXAMPLE_BYTES)):
        data = bytearray(EXAMPLE_BYTES)
        data[i] ^= 1
        digests.add(packet_digest(bytes(data)))
    assert len(digests) == len(EXAMPLE_BYTES) + 1
