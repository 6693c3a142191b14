"""Data packets: RFC 3550 RTP with a small mcp2p payload header (DESIGN.md 5.4).

Layout (network byte order, 22 bytes of headers, then the payload)::

    size  field
    1     V=2, P=0, X=0, CC=0         (always 0x80)
    1     M=0, PT=96 (dynamic)        (always 0x60)
    2     sequence number
    4     timestamp
    4     SSRC = the session id
    1     flags
    1     reserved, 0
    4     piece
    4     symbol: block in piece (plain code) or encoding symbol id (RaptorQ)
    n     payload

No padding, extension, CSRCs or marker: the decoder refuses them, so the
encoding is canonical and tshark still decodes the first 12 bytes as RTP.

``pack_header`` is the sender's fast path (one precompiled struct, no
dataclass); ``packet_digest`` is the short hash of a whole datagram that
authenticates it (DESIGN.md 5.3).

Digest lists: the SN sends the digests of the packets it is about to send in
list packets, on the data path ahead of those packets, once for all its
receivers (a multicast group's every CN). A list is an RTP packet of payload
type 97 with the same header, where the timestamp is the (32-bit, extended)
sequence number of the first packet it covers, ``piece`` the number of
packets it covers and ``symbol`` 0, followed by their digests in sequence
order, 8 bytes each. A list is trusted when its ``list_hash`` (16 bytes of
SHA-256 over the whole list packet) came over the CN's TLS channel: 16
bytes per list per subscriber instead of 8 bytes per packet per subscriber.

Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from mcp2p.errors import ProtocolError
from mcp2p.wire.types import _check_int

PAYLOAD_TYPE = 96
LIST_PAYLOAD_TYPE = 97  # a digest list (see above)
RTP_VERSION = 2
HEADER_LEN = 22
DIGEST_LEN = 8
LIST_HASH_LEN = 16
# The largest UDP payload over IPv4 (65535 - 20 - 8), less our headers.
MAX_PAYLOAD = 65507 - HEADER_LEN

_FIRST = RTP_VERSION << 6  # 0x80: P=0, X=0, CC=0
_FIRST_TWO = (_FIRST << 8) | PAYLOAD_TYPE  # 0x8060: ... and M=0, PT=96
_LIST_FIRST_TWO = (_FIRST << 8) | LIST_PAYLOAD_TYPE  # 0x8061: a digest list
# The sender's struct: the two constant bytes as one u16, the reserved byte as a pad.
_PACK = struct.Struct("!HHIIBxII")
# The receiver's struct: every byte read, so a bad one can be named.
_UNPACK = struct.Struct("!BBHIIBBII")
assert _PACK.size == _UNPACK.size == HEADER_LEN

_pack = _PACK.pack
_unpack_from = _UNPACK.unpack_from
# The receiver's batch path (``split_header``): the two constant bytes as one u16
# and the reserved byte read, so one comparison each checks them.
FIRST_TWO = _FIRST_TWO
LIST_FIRST_TWO = _LIST_FIRST_TWO
FAST_HEADER = struct.Struct("!HHIIBBII")
assert FAST_HEADER.size == HEADER_LEN
_fast_from = FAST_HEADER.unpack_from


@dataclass(frozen=True, slots=True)
class DataPacket:
    seq: int
    timestamp: int
    ssrc: int
    piece: int
    symbol: int
    flags: int
    payload: bytes

    def __post_init__(self) -> None:
        _check_int("seq", self.seq, 0, 0xFFFF)
        _check_int("timestamp", self.timestamp, 0, 0xFFFFFFFF)
        _check_int("ssrc", self.ssrc, 0, 0xFFFFFFFF)
        _check_int("piece", self.piece, 0, 0xFFFFFFFF)
        _check_int("symbol", self.symbol, 0, 0xFFFFFFFF)
        _check_int("flags", self.flags, 0, 0xFF)
        if not isinstance(self.payload, bytes):
            raise ValueError(f"payload must be bytes, not {type(self.payload).__name__}")
        if len(self.payload) > MAX_PAYLOAD:
            raise ValueError(f"payload is {len(self.payload)} bytes, at most {MAX_PAYLOAD}")


def pack_header(
    seq: int, timestamp: int, ssrc: int, piece: int, symbol: int, flags: int = 0
) -> bytes:
    """The 22 header bytes; append the payload to get the datagram.

    No checks beyond the struct's own (``struct.error`` for a value that
    does not fit its field): the caller masks ``seq`` to 16 bits.
    """
    return _pack(_FIRST_TWO, seq, timestamp, ssrc, flags, piece, symbol)


def encode_packet(p: DataPacket) -> bytes:
    return _pack(_FIRST_TWO, p.seq, p.timestamp, p.ssrc, p.flags, p.piece, p.symbol) + p.payload


def decode_packet(data: bytes) -> DataPacket:
    """The packet in ``data``, or ProtocolError; never any other exception."""
    if len(data) < HEADER_LEN:
        raise ProtocolError(f"truncated: {len(data)} bytes, an RTP data packet has {HEADER_LEN}+")
    if len(data) - HEADER_LEN > MAX_PAYLOAD:
        raise ProtocolError(f"datagram of {len(data)} bytes is too large")
    first, second, seq, timestamp, ssrc, flags, reserved, piece, symbol = _unpack_from(data)
    if first != _FIRST:
        if first >> 6 != RTP_VERSION:
            raise ProtocolError(f"RTP version {first >> 6}, expected {RTP_VERSION}")
        raise ProtocolError(f"RTP padding, extension or CSRCs set ({first:#04x})")
    if second != PAYLOAD_TYPE:
        if second & 0x80:
            raise ProtocolError("RTP marker bit set")
        raise ProtocolError(f"payload type {second}, expected {PAYLOAD_TYPE}")
    if reserved:
        raise ProtocolError(f"reserved byte is {reserved}, must be 0")
    return DataPacket(seq, timestamp, ssrc, piece, symbol, flags, bytes(data[HEADER_LEN:]))


def split_header(data: bytes | bytearray | memoryview) -> tuple[int, int, int, int] | None:
    """(timestamp, ssrc, piece, symbol) of a well-formed data packet, else None.

    The receiver's per-packet check, with no object per packet beyond the
    tuple: it accepts exactly what ``decode_packet`` accepts (``decode_packet``
    says why a packet is refused)."""
    if len(data) < HEADER_LEN or len(data) - HEADER_LEN > MAX_PAYLOAD:
        return None
    first_two, _seq, timestamp, ssrc, _flags, reserved, piece, symbol = _fast_from(data)
    if first_two != _FIRST_TWO or reserved:
        return None
    return timestamp, ssrc, piece, symbol


def packet_digest(data: bytes | bytearray | memoryview) -> bytes:
    """The first 8 bytes of SHA-256 of the whole datagram (headers and payload).

    SHA-256, not BLAKE3 (which names pieces and files): a datagram is short,
    and OpenSSL's SHA-256 with the CPU's SHA instructions takes 1.3 µs for
    1424 bytes here where the blake3 package takes 2.3, on every packet at
    both ends. Second preimages stay 2^64 work, against notices that live
    seconds."""
    return hashlib.sha256(data).digest()[:DIGEST_LEN]


def packet_digests(packets: Iterable[bytes]) -> list[bytes]:
    """``packet_digest`` of each of a burst's datagrams, in one pass (the sender's)."""
    sha256 = hashlib.sha256
    return [sha256(p).digest()[:DIGEST_LEN] for p in packets]


def make_packets(
    seq0: int, ssrc: int, symbols: list[tuple[int, int, bytes]]
) -> tuple[list[bytes], bytes]:
    """The sender's data packets for ``symbols`` ((piece, symbol, payload)),
    numbered from ``seq0``, and their digests joined (``packet_digest`` each,
    DIGEST_LEN bytes). The pure-Python twin of ``mcp2p._speedups.make_packets``,
    which the session uses where it was built."""
    packets = [
        pack_header(seq & 0xFFFF, seq & 0xFFFFFFFF, ssrc, piece, symbol) + payload
        for seq, (piece, symbol, payload) in enumerate(symbols, seq0)
    ]
    return packets, b"".join(packet_digests(packets))


def pack_list(first: int, ssrc: int, digests: bytes) -> bytes:
    """The list packet of the packets ``first``, ``first`` + 1, ... whose
    digests are ``digests`` (joined, DIGEST_LEN bytes each)."""
    count, rest = divmod(len(digests), DIGEST_LEN)
    if rest or not count or count * DIGEST_LEN > MAX_PAYLOAD:
        raise ValueError(f"a list of {len(digests)} bytes of digests")
    return _pack(_LIST_FIRST_TWO, first & 0xFFFF, first & 0xFFFFFFFF, ssrc, 0, count, 0) + digests


def split_list(data: bytes | bytearray | memoryview) -> tuple[int, int, int] | None:
    """(ssrc, first sequence number, count) of a well-formed list packet, else None."""
    if not HEADER_LEN + DIGEST_LEN <= len(data) <= HEADER_LEN + MAX_PAYLOAD:
        return None
    first_two, seq, first, ssrc, flags, reserved, count, symbol = _fast_from(data)
    if first_two != _LIST_FIRST_TWO or flags or reserved or symbol or seq != first & 0xFFFF:
        return None
    if len(data) != HEADER_LEN + count * DIGEST_LEN:
        return None
    return ssrc, first, count


def list_hash(data: bytes | bytearray | memoryview) -> bytes:
    """What the SN's TLS channel says of a list packet: SHA-256 of all of it, 16 bytes."""
    return hashlib.sha256(data).digest()[:LIST_HASH_LEN]


def list_notices(data: bytes | bytearray | memoryview) -> list[tuple[int, bytes]]:
    """(sequence number, digest) of each packet of a list that ``split_list`` accepted."""
    _, _, first, *_ = _fast_from(data)
    raw = bytes(data[HEADER_LEN:])
    return [
        ((first + k) & 0xFFFFFFFF, raw[i : i + DIGEST_LEN])
        for k, i in enumerate(range(0, len(raw), DIGEST_LEN))
    ]
