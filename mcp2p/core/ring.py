"""The expanding-ring search as a state machine that does no I/O.

It is fed events (``start``, ``offer``, ``ring_timeout``) with the current
time and returns actions (``SendQuery``, ``ArmTimer``, ``Finished``); the
protocol in ``mcp2p.discovery.query`` turns actions into datagrams and
DelayedCalls. States:

- IDLE: made, nothing sent yet.
- RINGING: ring ``index`` sent with hop limit ``schedule[index]``, timer armed.
- DONE: enough answers, schedule exhausted, or cancelled; every later event is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mcp2p.wire.query import Offer
from mcp2p.wire.types import FileOffer

MAX_KNOWN = 64


@dataclass(frozen=True)
class SendQuery:
    hop_limit: int
    known: tuple[bytes, ...]


@dataclass(frozen=True)
class ArmTimer:
    delay: float


@dataclass(frozen=True)
class Finished:
    reason: str  # "enough", "exhausted" or "cancelled"


Action = SendQuery | ArmTimer | Finished


@dataclass
class ServerRecord:
    """What the CN knows of one SN: the topology map's row."""

    node_id: bytes
    public_key: bytes
    address: str
    distance: int | None  # hop limit of the smallest ring that reached it (None: unknown)
    rtt: float  # from sending that ring to the first offer at that distance
    files: dict[bytes, FileOffer] = field(default_factory=dict)
    truncated: bool = False
    complete: bool = False  # its last reply datagram (without ``more``) arrived


class RingSearch:
    """One search: rings of growing hop limit until ``enough`` SNs answered."""

    def __init__(
        self,
        schedule: tuple[int, ...],
        timeout: float,
        enough: int,
        exclude: tuple[bytes, ...] = (),
    ) -> None:
        if not schedule or any(b <= a for a, b in zip(schedule, schedule[1:], strict=False)):
            raise ValueError("schedule must be a non-empty increasing list of hop limits")
        if enough < 1 or timeout <= 0:
            raise ValueError("enough must be >= 1 and timeout > 0")
        self.schedule = schedule
        self.timeout = timeout
        self.enough = enough
        self.state = "IDLE"
        self.index = -1
        self.servers: dict[bytes, ServerRecord] = {}
        self.sent_at: dict[int, float] = {}  # hop limit -> time that ring was sent
        self.queries_sent = 0
        self.reason = ""
        self.exclude = tuple(exclude)[:MAX_KNOWN]  # nodes that must stay silent

    @property
    def hop_limit(self) -> int:
        return self.schedule[self.index]

    def start(self, now: float) -> list[Action]:
        if self.state != "IDLE":
            return []
        self.state = "RINGING"
        return self._next_ring(now)

    def _next_ring(self, now: float) -> list[Action]:
        self.index += 1
        if self.index >= len(self.schedule):
            return self._finish("exhausted")
        self.sent_at[self.hop_limit] = now
        self.queries_sent += 1
        known = (self.exclude + tuple(self.servers))[:MAX_KNOWN]
        return [SendQuery(self.hop_limit, known), ArmTimer(self.timeout)]

    def offer(self, offer: Offer, address: str, now: float) -> list[Action]:
        """An OFFER arrived from ``address``; returns Finished once enough SNs answered."""
        if self.state != "RINGING" or offer.hop_limit not in self.sent_at:
            return []
        if offer.node_id in self.exclude:
            return []  # late, or answers a ring we never sent: not evidence of distance
        sent = self.sent_at[offer.hop_limit]
        record = self.servers.get(offer.node_id)
        if record is None:
            record = ServerRecord(
                offer.node_id, offer.public_key, address, offer.hop_limit, now - sent
            )
            self.servers[offer.node_id] = record
        elif offer.public_key != record.public_key:
            return []  # a second key for one node id: keep the first, ignore the impostor
        elif record.distance is None or offer.hop_limit < record.distance:
            record.distance, record.rtt, record.address = offer.hop_limit, now - sent, address
        for f in offer.files:
            record.files[f.content_id] = f
        record.truncated = record.truncated or offer.truncated
        record.complete = record.complete or not offer.more
        if sum(r.complete for r in self.servers.values()) >= self.enough:
            return self._finish("enough")
        return []

    def ring_timeout(self, now: float) -> list[Action]:
        if self.state != "RINGING":
            return []
        # A reply whose last datagram was lost still counts once its ring is over.
        for record in self.servers.values():
            record.complete = True
        if len(self.servers) >= self.enough:
            return self._finish("enough")
        return self._next_ring(now)

    def cancel(self) -> list[Action]:
        if self.state == "DONE":
            return []
        return self._finish("cancelled")

    def _finish(self, reason: str) -> list[Action]:
        self.state = "DONE"
        self.reason = reason
        return [Finished(reason)]
