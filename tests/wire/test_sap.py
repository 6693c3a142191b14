"""SAP packets (RFC 2974 section 6): layout, round trips and hostile input."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp2p.errors import ProtocolError
from mcp2p.wire.sap import SAPPacket, decode_sap, encode_sap

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address

SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=x\r\nt=0 0\r\n"

payload_types = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=255
).filter(lambda t: not t.startswith("v=0"))

packets = st.builds(
    SAPPacket,
    delete=st.booleans(),
    msg_id_hash=st.integers(0, 0xFFFF),
    origin=st.ip_addresses(),
    payload=st.binary(max_size=1500),
    payload_type=st.just("application/sdp") | payload_types,
)


@given(packets)
def test_round_trip(p: SAPPacket) -> None:
    assert decode_sap(encode_sap(p)) == p


@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_protocol_error(data: bytes) -> None:
    try:
        decode_sap(data)
    except ProtocolError:
        pass


@given(packets, st.integers(0, 2000), st.integers(0, 255))
def test_corrupted_packets_raise_only_protocol_error(p: SAPPacket, i: int, b: int) -> None:
    data = bytearray(encode_sap(p))
    data[i % len(data)] = b
    try:
        decode_sap(bytes(data))
    except ProtocolError:
        pass


def test_layout_ipv4_announcement() -> None:
    # The SDP follows the header: its "v=0" says the payload type was omitted.
    p = SAPPacket(False, 0xBEEF, V4("192.0.2.10"), SDP)
    data = encode_sap(p)
    assert data[:8] == bytes([0x20, 0, 0xBE, 0xEF, 192, 0, 2, 10])
    assert data[8:] == SDP


def test_layout_ipv6_deletion() -> None:
    p = SAPPacket(True, 1, V6("2001:db8::1"), b"v=0\r\no=- 1 1 IN IP6 2001:db8::1\r\n")
    data = encode_sap(p)
    assert data[0] == 0x20 | 0x10 | 0x04  # V=1, A (IPv6), T (deletion)
    assert data[4:20] == V6("2001:db8::1").packed
    assert data[20:] == p.payload
    assert decode_sap(data) == p


@pytest.mark.parametrize(
    ("payload", "payload_type"),
    [
        (b"o=- 1 1 IN IP4 192.0.2.1\r\n", "application/sdp"),  # RFC 2974 deletion
        (b"", "application/sdp"),
        (b" v=0\r\n", "application/sdp"),
        (SDP, "application/x-sdp-like"),
    ],
)
def test_payload_type_is_sent_unless_the_payload_starts_v0(
    payload: bytes, payload_type: str
) -> None:
    p = SAPPacket(True, 7, V4("192.0.2.1"), payload, payload_type)
    data = encode_sap(p)
    assert data[8:] == payload_type.encode() + b"\x00" + payload
    assert decode_sap(data) == p


def test_payload_type_may_be_omitted_before_sdp() -> None:
    data = bytes([0x20, 0, 0, 7]) + V4("192.0.2.1").packed + SDP
    p = decode_sap(data)
    assert p.payload_type == "application/sdp"
    assert p.payload == SDP


def test_payload_type_present_before_sdp_is_accepted() -> None:
    # What other announcers send (and mcp2p did): the same packet either way.
    header = bytes([0x20, 0, 0, 7]) + V4("192.0.2.1").packed
    with_type = decode_sap(header + b"application/sdp\x00" + SDP)
    assert with_type == decode_sap(header + SDP) == SAPPacket(False, 7, V4("192.0.2.1"), SDP)


def test_authentication_data_is_skipped_by_its_length() -> None:
    auth = bytes([0x20 | 0x10, 0xAA, 0xBB, 3])  # V=1, P set, 3 padding bytes (one word)
    data = bytes([0x20, 2, 0, 7]) + V4("192.0.2.1").packed + auth + b"\x00" * 4 + SDP
    assert decode_sap(data).payload == SDP


def test_reserved_bit_is_ignored() -> None:
    data = bytearray(encode_sap(SAPPacket(False, 9, V4("192.0.2.1"), SDP)))
    data[0] |= 0x08
    assert decode_sap(bytes(data)) == SAPPacket(False, 9, V4("192.0.2.1"), SDP)


def test_other_payload_types_pass_through() -> None:
    p = SAPPacket(False, 9, V4("192.0.2.1"), b"<xml/>", "application/x-foo")
    assert decode_sap(encode_sap(p)) == p


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x20\x00\x00",
        bytes([0x20, 0, 0, 1, 192, 0, 2]),  # truncated IPv4 source
        bytes([0x30, 0, 0, 1]) + b"\x00" * 15,  # truncated IPv6 source
        bytes([0x00, 0, 0, 1, 192, 0, 2, 1]) + SDP,  # SAPv0
        bytes([0x40, 0, 0, 1, 192, 0, 2, 1]) + SDP,  # version 2
        bytes([0xE0, 0, 0, 1, 192, 0, 2, 1]) + SDP,  # version 7
        bytes([0x22, 0, 0, 1, 192, 0, 2, 1]) + SDP,  # encrypted
        bytes([0x21, 0, 0, 1, 192, 0, 2, 1]) + SDP,  # compressed
        bytes([0x20, 5, 0, 1, 192, 0, 2, 1]) + b"\x00" * 19,  # auth runs off the end
        bytes([0x20, 0, 0, 1, 192, 0, 2, 1]) + b"application/sdp",  # no NUL
        bytes([0x20, 0, 0, 1, 192, 0, 2, 1]) + b"x" * 300 + b"\x00",  # type too long
        bytes([0x20, 0, 0, 1, 192, 0, 2, 1]) + b"\x00" + SDP,  # empty type
        bytes([0x20, 0, 0, 1, 192, 0, 2, 1]) + "tÿpe".encode() + b"\x00",  # not ASCII
        bytes([0x20, 0, 0, 1, 192, 0, 2, 1]) + b"a b\x00",  # space in type
    ],
)
def test_refused(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_sap(data)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"msg_id_hash": -1},
        {"msg_id_hash": 0x10000},
        {"msg_id_hash": True},
        {"delete": 1},
        {"origin": "192.0.2.1"},
        {"origin": V6("fe80::1%eth0")},
        {"payload": "text"},
        {"payload_type": ""},
        {"payload_type": "a\x00b"},
        {"payload_type": "v=0"},
        {"payload_type": "x" * 256},
    ],
)
def test_packet_validates(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "delete": False,
        "msg_id_hash": 1,
        "origin": V4("192.0.2.1"),
        "payload": SDP,
    }
    fields.update(kwargs)
    with pytest.raises(ValueError):
        SAPPacket(**fields)  # type: ignore[arg-type]
