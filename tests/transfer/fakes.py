"""Stand-ins for the two things an SN's session and serving service write to,
shared by the transfer unit tests: the data port (datagrams kept, no socket
behind it, so no GSO) and the SN's end of one CN's control channel."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mcp2p.catalog import CatalogEntry
from mcp2p.core.wanted import RangeSet
from mcp2p.trust.keys import node_id_of
from mcp2p.wire.rtp import LIST_PAYLOAD_TYPE, list_hash, list_notices


class DataPort:
    """Keeps each datagram written, with its address: data packets in
    ``sent``, digest lists in ``lists``."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.lists: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) > 1 and data[1] == LIST_PAYLOAD_TYPE:
            self.lists.append((data, addr))
        else:
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
        self.listed: list[tuple[int, int, int, bytes]] = []  # (subscription, first, count, hash)
        self.notices = 0  # Listed commands: one per send_lists
        self.ended: list[tuple[int, str]] = []  # (subscription, reason)
        self.moved: list[tuple[int, str]] = []  # (subscription, group)
        self.drained: list[tuple[int, int]] = []  # (subscription, last sequence number)

    def send_lists(self, subscription: int, lists: list[tuple[int, int, bytes]]) -> None:
        self.notices += 1
        self.listed += [(subscription, first, count, hash) for first, count, hash in lists]

    def send_drained(self, subscription: int, seq: int) -> None:
        if self.broken:
            raise ConnectionError("channel closed")
        self.drained.append((subscription, seq))

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


def notices_of(channel: Channel, port: DataPort) -> list[tuple[int, bytes]]:
    """(sequence number, digest) of every packet the lists named on ``channel``
    cover, from the list packets written to ``port`` (each must be there)."""
    by_hash = {list_hash(data): data for data, _ in port.lists}
    out: list[tuple[int, bytes]] = []
    for _, first, count, digest in channel.listed:
        notices = list_notices(by_hash[digest])
        assert notices[0][0] == first and len(notices) == count
        out += notices
    return out
