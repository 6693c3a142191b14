"""RFC 2974 Session Announcement Protocol packets (the header around an SDP payload).

Pure: no Twisted, no I/O.  ``decode_sap`` turns any bytes into a
``SAPPacket`` or raises ``ProtocolError``.  Encrypted (E) and compressed (C)
packets are refused: mcp2p never sends them and RFC 2974 does not recommend
them.  The payload type may be present or absent (then the payload starts
``v=0``).

Authentication (RFC 2974 section 7, issue 12): mcp2p signs every
announcement and deletion with the node's Ed25519 key.  The authentication
data is the RFC's subheader: one byte (version 1, padding bit set,
authentication type 2, which the RFC leaves unassigned: Wireshark shows it
as "Unknown (2)" and decodes the SDP after it without a note), the 64-byte
signature, then 3 bytes of padding whose last holds their count: 68 bytes,
17 words.  The signature covers the whole packet as sent without
authentication data (authentication length 0), after the domain prefix
``SIGNED_PREFIX``.  Other authentication data is kept, for the caller to
refuse.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

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

AUTH_ED25519 = 2  # authentication type: not assigned by RFC 2974 (0 PGP, 1 CMS)
SIGNATURE_LEN = 64
SIGNED_PREFIX = b"mcp2p SAP v1\0"
_AUTH_PAD = 3  # 1 + 64 + 3 = 68 bytes, a multiple of 4
_AUTH_HEADER = 0x20 | 0x10 | AUTH_ED25519  # V=1, P=1, type
AUTH_LEN = 1 + SIGNATURE_LEN + _AUTH_PAD


@dataclass(frozen=True)
class SAPPacket:
    """One SAP datagram: ``delete`` is the T bit; the A bit follows ``origin``."""

    delete: bool
    msg_id_hash: int
    origin: IPAddress
    payload: bytes
    payload_type: str = SDP_PAYLOAD_TYPE
    auth: bytes = b""  # authentication data, a multiple of 4 bytes (at most 1020)

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
        if not isinstance(self.auth, bytes) or len(self.auth) % 4 or len(self.auth) > 1020:
            raise ValueError("auth must be bytes, a multiple of 4 long, at most 1020")


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
            bytes((flags, len(p.auth) // 4)),
            p.msg_id_hash.to_bytes(2, "big"),
            p.origin.packed,
            p.auth,
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
    auth_start = pos
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
            auth=data[auth_start : auth_start + 4 * auth_words],
        )
    except ValueError as e:
        raise ProtocolError(f"bad SAP packet: {e}") from e


def _signed_bytes(p: SAPPacket) -> bytes:
    return SIGNED_PREFIX + encode_sap(replace(p, auth=b""))


def sign_sap(p: SAPPacket, key: Ed25519PrivateKey) -> SAPPacket:
    """``p`` with mcp2p's authentication data: an Ed25519 signature by ``key``."""
    signature = key.sign(_signed_bytes(p))
    auth = bytes([_AUTH_HEADER]) + signature + bytes(_AUTH_PAD - 1) + bytes([_AUTH_PAD])
    return replace(p, auth=auth)


def verify_sap(p: SAPPacket, public_key: bytes) -> bool:
    """Whether ``p`` carries mcp2p's authentication data, signed by ``public_key``."""
    auth = p.auth
    if len(auth) != AUTH_LEN or auth[0] != _AUTH_HEADER:
        return False
    if auth[1 + SIGNATURE_LEN :] != bytes(_AUTH_PAD - 1) + bytes([_AUTH_PAD]):
        return False
    try:
        key = Ed25519PublicKey.from_public_bytes(public_key)
        key.verify(auth[1 : 1 + SIGNATURE_LEN], _signed_bytes(p))
    except (InvalidSignature, ValueError):
        return False
    return True
