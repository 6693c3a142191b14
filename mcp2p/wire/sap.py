"""RFC 2974 Session Announcement Protocol packets (the header around an SDP payload).

Pure: no Twisted, no I/O.  ``decode_sap`` turns any bytes into a
``SAPPacket`` or raises ``ProtocolError``.  Encrypted (E) and compressed (C)
packets are refused: mcp2p never sends them and RFC 2974 does not recommend
them.  Authentication data is skipped by its length, not verified.  The
payload type may be present or absent (then the payload starts ``v=0``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from mcp2p.errors import ProtocolError
from mcp2p.wire.types import IPAddress

SAP_PORT = 9875
SDP_PAYLOAD_TYPE = "application/sdp"
MAX_PAYLOAD_TYPE_LEN = 255

_VERSION = 1
_FLAG_A = 0x10  # originating source is IPv6
_FLAG_R = 0x08  # reserved: sent as 0, ignored on receipt
_FLAG_T = 0x04  # deletion
_FLAG_E = 0x02  # encrypted
_FLAG_C = 0x01  # zlib-compressed


@dataclass(frozen=True)
class SAPPacket:
    """One SAP datagram: ``delete`` is the T bit; the A bit follows ``origin``."""

    delete: bool
    msg_id_hash: int
    origin: IPAddress
    payload: bytes
    payload_type: str = SDP_PAYLOAD_TYPE

    def __post_init__(self) -> None:
        if not isinstance(self.delete, bool):
            raise ValueError("delete must be a bool")
        if (
            not isinstance(self.msg_id_hash, int)
            or isinstance(self.msg_id_hash, bool)
            or not 0 <= self.msg_id_hash <= 0xFFFF
        ):
            raise ValueError(f"msg_id_hash must be in [0, 65535], got {self.msg_id_hash!r}")
        if not isinstance(self.origin, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            raise ValueError("origin must be an IP address")
        if isinstance(self.origin, ipaddress.IPv6Address) and self.origin.scope_id:
            raise ValueError("origin must not carry an IPv6 scope id")
        if not isinstance(self.payload, bytes):
            raise ValueError("payload must be bytes")
        if not isinstance(self.payload_type, str):
            raise ValueError("payload_type must be str")
        _check_payload_type(self.payload_type)


def _check_payload_type(payload_type: str) -> None:
    # A MIME type is printable ASCII without NUL.  An omitted field decodes as
    # application/sdp (the payload starts "v=0"), so "" is never a type.
    if not 1 <= len(payload_type) <= MAX_PAYLOAD_TYPE_LEN:
        raise ValueError(f"payload_type must be 1-{MAX_PAYLOAD_TYPE_LEN} characters")
    if not all(0x21 <= ord(c) <= 0x7E for c in payload_type):
        raise ValueError(f"payload_type {payload_type!r} is not printable ASCII")
    if payload_type.startswith("v=0"):
        raise ValueError("payload_type must not start with 'v=0' (that marks an SDP payload)")


def encode_sap(p: SAPPacket) -> bytes:
    """The datagram for ``p``, without authentication data.

    The optional payload type field is left out exactly when RFC 2974
    section 6 lets every listener notice: an ``application/sdp`` payload that
    starts with ``v=0`` (not a MIME type).  Any other payload keeps it.  Sent,
    the field made Wireshark note "Invalid SDP line (no '=' delimiter)" on
    every packet: its SAP dissector skips the type only while building a
    tree, so each tree-less pass (``tshark -z expert``, statistics, the GUI's
    first pass) handed SDP ``application/sdp<NUL>v=0`` as the first line.
    """
    flags = (_VERSION << 5) | (_FLAG_T if p.delete else 0)
    if p.origin.version == 6:
        flags |= _FLAG_A
    implicit = p.payload_type == SDP_PAYLOAD_TYPE and p.payload.startswith(b"v=0")
    return b"".join(
        (
            bytes((flags, 0)),
            p.msg_id_hash.to_bytes(2, "big"),
            p.origin.packed,
            b"" if implicit else p.payload_type.encode("ascii") + b"\x00",
            p.payload,
        )
    )


def decode_sap(data: bytes) -> SAPPacket:
    """Parse one SAP datagram; ``ProtocolError`` for anything we cannot use."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError("SAP datagram must be bytes")
    data = bytes(data)
    if len(data) < 4:
        raise ProtocolError(f"SAP datagram too short ({len(data)} bytes)")
    flags, auth_words = data[0], data[1]
    version = flags >> 5
    if version != _VERSION:
        raise ProtocolError(f"SAP version {version} is not 1")
    if flags & _FLAG_E:
        raise ProtocolError("encrypted SAP packets are not supported")
    if flags & _FLAG_C:
        raise ProtocolError("compressed SAP packets are not supported")
    msg_id_hash = int.from_bytes(data[2:4], "big")
    addr_len = 16 if flags & _FLAG_A else 4
    pos = 4 + addr_len
    if len(data) < pos:
        raise ProtocolError("SAP datagram truncated in the originating source")
    raw_origin = data[4:pos]
    origin: IPAddress = (
        ipaddress.IPv6Address(raw_origin) if addr_len == 16 else ipaddress.IPv4Address(raw_origin)
    )
    pos += 4 * auth_words
    if len(data) < pos:
        raise ProtocolError("SAP datagram truncated in the authentication data")
    rest = data[pos:]
    if rest.startswith(b"v=0"):
        payload_type, payload = SDP_PAYLOAD_TYPE, rest
    else:
        nul = rest.find(b"\x00", 0, MAX_PAYLOAD_TYPE_LEN + 1)
        if nul < 0:
            raise ProtocolError("SAP payload type is not NUL-terminated")
        try:
            payload_type = rest[:nul].decode("ascii")
        except UnicodeDecodeError as e:
            raise ProtocolError("SAP payload type is not ASCII") from e
        payload = rest[nul + 1 :]
    try:
        return SAPPacket(
            delete=bool(flags & _FLAG_T),
            msg_id_hash=msg_id_hash,
            origin=origin,
            payload=payload,
            payload_type=payload_type,
        )
    except ValueError as e:
        raise ProtocolError(f"bad SAP packet: {e}") from e
