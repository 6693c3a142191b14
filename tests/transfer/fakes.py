"""Stand-ins for the two things an SN's session and serving service write to,
shared by the transfer unit tests: the data port (datagrams kept, no socket
behind it, so no GSO) and the SN's end of one CN's control channel."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mcp2p.catalog import CatalogEntry
from mcp2p.core.wanted import RangeSet
from mcp2p.transfer.control import unpack_notices
from mcp2p.trust.keys import node_id_of


class DataPort:
    """Keeps each datagram written, with its address."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))

    def stopListening(self) -> None:
        pass

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [addr for _, addr in self.sent]


class _Peer:
    def __init__(self, host: str) -> None:
        self.host = host


class _Transport:
    def __init__(self, host: str) -> None:
        self.host = host

    def getPeer(self) -> _Peer:
        return _Peer(self.host)


class Channel:
    """The SN's end of one CN's control channel, as a session and the serving
    service use it: a peer with a node key of its own (as TLS proved it) and a
    host, and what was written to it. ``broken``: the channel is closed, and
    telling it of an end or a move raises."""

    def __init__(self, host: str = "127.0.0.2", broken: bool = False) -> None:
        key = Ed25519PrivateKey.generate().public_key()
        self.peer_public_key = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.peer_node_id = node_id_of(self.peer_public_key)
        self.transport = _Transport(host)
        self.broken = broken
        self.notices: list[tuple[int, bytes]] = []  # (sequence number, digest)
        self.ended: list[tuple[int, str]] = []  # (subscription, reason)
        self.moved: list[tuple[int, str]] = []  # (subscription, group)

    def send_notices(self, subscription: int, first: int, digests: bytes) -> None:
        self.notices += unpack_notices(first, digests)

    def session_ended(self, subscription: int, reason: str) -> None:
        if self.broken:
            raise ConnectionError("channel closed")
        self.ended.append((subscription, reason))

    def session_moved(self, subscription: int, group: str) -> None:
        if self.broken:
            raise ConnectionError("channel closed")
        self.moved.append((subscription, group))


def subscribe_args(entry: CatalogEntry, block: int, **kw: Any) -> dict[str, Any]:
    """A Subscribe's arguments for all of ``entry`` (multicast, plain code,
    blocks of ``block`` bytes), ``kw`` replacing any of them."""
    args: dict[str, Any] = dict(
        content_id=entry.content_id,
        mode="multicast",
        port=0,
        rate=0,
        code="plain",
        wanted=RangeSet.full(-(-entry.size // block)).encode(),
        more=False,
    )
    args.update(kw)
    return args
