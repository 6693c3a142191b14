"""Value types shared by several wire formats (QUERY/OFFER, SAP/SDP).

Constructors validate every field and raise ``ValueError``; decoders turn
that into ``ProtocolError`` so a peer's bad value is a counted drop.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

CONTENT_ID_LEN = 32
NODE_ID_LEN = 16
PUBLIC_KEY_LEN = 32
REQUEST_ID_LEN = 8
MAX_NAME_BYTES = 255
MIN_BLOCK_LENGTH = 16
MAX_BLOCK_LENGTH = 65000
MAX_PIECE_LENGTH = 1 << 30
MAX_SIZE = (1 << 63) - 1
MAX_RATE = (1 << 63) - 1


def check_name(name: str) -> str:
    """A file name as a label: 1-255 UTF-8 bytes, no NUL, no slash, no control chars."""
    if not isinstance(name, str):
        raise ValueError(f"name must be str, not {type(name).__name__}")
    raw = name.encode("utf-8", "strict")
    if not 1 <= len(raw) <= MAX_NAME_BYTES:
        raise ValueError(f"name must be 1-{MAX_NAME_BYTES} UTF-8 bytes, got {len(raw)}")
    if any(ord(c) < 0x20 or c in "/\x7f" for c in name):
        raise ValueError(f"name {name!r} contains a slash or a control character")
    if name in (".", ".."):
        raise ValueError(f"name {name!r} is not a file name")
    return name


def _check_int(field: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{field} must be an integer in [{low}, {high}], got {value!r}")


def _check_bytes(field: str, value: bytes, length: int) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        raise ValueError(f"{field} must be {length} bytes")


@dataclass(frozen=True)
class FileOffer:
    """One file an SN offers: enough for a CN to choose it and subscribe.

    ``group``/``source``/``port``/``session_id`` describe the session the SN
    will stream it on (``source`` set means SSM); ``control_port`` is the SN's
    TLS control channel; ``rate`` is in bit/s.
    """

    content_id: bytes
    name: str
    size: int
    block_length: int
    piece_length: int
    session_id: int
    group: IPAddress
    source: IPAddress | None
    port: int
    rate: int
    control_port: int

    def __post_init__(self) -> None:
        _check_bytes("content_id", self.content_id, CONTENT_ID_LEN)
        check_name(self.name)
        _check_int("size", self.size, 0, MAX_SIZE)
        _check_int("block_length", self.block_length, MIN_BLOCK_LENGTH, MAX_BLOCK_LENGTH)
        _check_int("piece_length", self.piece_length, self.block_length, MAX_PIECE_LENGTH)
        _check_int("session_id", self.session_id, 0, 0xFFFFFFFF)
        if not isinstance(self.group, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            raise ValueError("group must be an IP address")
        if not self.group.is_multicast:
            raise ValueError(f"group {self.group} is not a multicast address")
        if self.source is not None:
            if not isinstance(self.source, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
                raise ValueError("source must be an IP address or None")
            if self.source.version != self.group.version:
                raise ValueError("source and group must be of the same IP version")
            if self.source.is_multicast or self.source.is_unspecified:
                raise ValueError(f"source {self.source} is not a unicast address")
        _check_int("port", self.port, 1, 0xFFFF)
        _check_int("rate", self.rate, 0, MAX_RATE)
        _check_int("control_port", self.control_port, 1, 0xFFFF)
