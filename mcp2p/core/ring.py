"""The expanding-ring search as a state machine that does no I/O.

It is fed events (``start``, ``offer``, ``ring_timeout``) with the current
time and returns actions (``SendQuery``, ``ArmTimer``, ``Finished``); the
protocol in ``mcp2p.discovery.query`` turns actions into datagrams and
DelayedCalls. States:

- IDLE: made, nothing sent yet.
- RINGING: ring ``index`` sent with hop limit ``schedule[index]``, timer armed.
- DONE: enough answers, schedule exhausted, or cancelled; every later event is ignored.

Address validation (issue 12): an SN answers a querier it cannot yet tell
receives at its address with a reply no larger than the query, ending in a
cookie. When that reply was cut short (``truncated``), the search asks
that SN again at once, on the same ring, with the cookie (a follow-up:
``SendQuery.follow_up``), and waits for the whole reply before counting
the SN as answered; a ring whose follow-ups are still unanswered when it
times out is given one more timeout. Every query carries the cookies the
search holds (those handed in at start, from earlier searches, and those
received), so an SN that validated us before answers in full at once.

Repeats: an SN heard in an earlier search (``expected``, with the hop
limit it was found at) answers a ring that reaches it within ms. When
one has not been heard ``retry`` seconds into such a ring, its query or
its answer was lost: the ring's query goes once more (``SendQuery.repeat``,
``known`` silencing the SNs heard), instead of the ring waiting out its
whole timeout. Rings that reach no expected SN send no repeat (a new
CN's searches cost what they did); one whose expected SN lacks what is
asked for sends one datagram more.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mcp2p.wire.query import MAX_COOKIES, Offer
from mcp2p.wire.types import FileOffer

MAX_KNOWN = 64
MAX_FOLLOWUPS = 2  # follow-ups with a cookie per SN and search


@dataclass(frozen=True)
class SendQuery:
    hop_limit: int
    known: tuple[bytes, ...]
    cookies: tuple[tuple[bytes, bytes], ...] = ()
    follow_up: bool = False  # the same ring again, for SNs that gave us a cookie
    repeat: bool = False  # the same ring again, for expected SNs not heard yet


@dataclass(frozen=True)
class ArmTimer:
    delay: float


@dataclass(frozen=True)
class ArmRetry:
    """Call ``retry(now, index)`` after ``delay`` seconds."""

    delay: float
    index: int


@dataclass(frozen=True)
class Finished:
    reason: str  # "enough", "exhausted" or "cancelled"


Action = SendQuery | ArmTimer | ArmRetry | Finished


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
    awaiting: bool = False  # its reply was cut short for want of a cookie: asked again
    followups: int = 0


class RingSearch:
    """One search: rings of growing hop limit until ``enough`` SNs answered."""

    def __init__(
        self,
        schedule: tuple[int, ...],
        timeout: float,
        enough: int,
        exclude: tuple[bytes, ...] = (),
        cookies: dict[bytes, bytes] | None = None,
        expected: dict[bytes, int] | None = None,
        retry: float = 0.0,
    ) -> None:
        if not schedule or any(b <= a for a, b in zip(schedule, schedule[1:], strict=False)):
            raise ValueError("schedule must be a non-empty increasing list of hop limits")
        if enough < 1 or timeout <= 0:
            raise ValueError("enough must be >= 1 and timeout > 0")
        if not 0 <= retry < timeout:
            raise ValueError("retry must be >= 0 (0: never) and below the timeout")
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
        self.cookies: dict[bytes, bytes] = dict(cookies or {})  # node id -> its cookie for us
        self.new_cookies: dict[bytes, bytes] = {}  # received during this search
        self.followups_sent = 0
        self.extended: set[int] = set()  # rings given one more timeout for follow-ups
        # node id -> the hop limit an earlier search found it at (excluded ones never count)
        self.expected = {n: d for n, d in (expected or {}).items() if n not in self.exclude}
        self.retry_after = retry
        self.repeated: set[int] = set()  # rings whose query went twice
        self.repeats_sent = 0

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
        known = self._known()
        actions: list[Action] = [
            SendQuery(self.hop_limit, known, self._cookies(known)),
            ArmTimer(self.timeout),
        ]
        if self.retry_after and self._awaited():
            actions.append(ArmRetry(self.retry_after, self.index))
        return actions

    def _awaited(self) -> bool:
        """An expected SN that this ring reaches has not been heard."""
        hop = self.hop_limit
        return any(d <= hop and n not in self.servers for n, d in self.expected.items())

    def retry(self, now: float, index: int) -> list[Action]:
        """``ArmRetry``'s time for ring ``index``: its query once more if an
        expected SN it reaches is still silent (once a ring, and not once
        the search moved on)."""
        if self.state != "RINGING" or index != self.index or index in self.repeated:
            return []
        if not self._awaited():
            return []
        self.repeated.add(index)
        self.repeats_sent += 1
        known = self._known()
        return [SendQuery(self.hop_limit, known, self._cookies(known), repeat=True)]

    def _known(self) -> tuple[bytes, ...]:
        """SNs that must stay silent: excluded, or whose whole reply we have."""
        heard = tuple(n for n, r in self.servers.items() if not r.awaiting)
        return (self.exclude + heard)[:MAX_KNOWN]

    def _cookies(self, known: tuple[bytes, ...]) -> tuple[tuple[bytes, bytes], ...]:
        """The cookies worth sending: SNs we wait for first, then the most recent."""
        silent = set(known)
        waiting = [n for n, r in self.servers.items() if r.awaiting and n in self.cookies]
        others = [n for n in reversed(self.cookies) if n not in silent and n not in waiting]
        chosen = (waiting + others)[:MAX_COOKIES]
        return tuple((n, self.cookies[n]) for n in chosen)

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
        actions: list[Action] = []
        if offer.cookie is not None:
            self.cookies.pop(offer.node_id, None)
            self.cookies[offer.node_id] = self.new_cookies[offer.node_id] = offer.cookie
        elif record.awaiting:
            # The reply to our follow-up: the cut-short one's flag no longer holds.
            record.awaiting = record.truncated = False
        record.truncated = record.truncated or offer.truncated
        if offer.cookie is not None and offer.truncated and record.followups < MAX_FOLLOWUPS:
            record.awaiting = True
            record.followups += 1
            self.followups_sent += 1
            known = self._known()
            actions.append(SendQuery(offer.hop_limit, known, self._cookies(known), True))
        record.complete = record.complete or (not offer.more and not record.awaiting)
        if sum(r.complete for r in self.servers.values()) >= self.enough:
            return self._finish("enough")
        return actions

    def ring_timeout(self, now: float) -> list[Action]:
        if self.state != "RINGING":
            return []
        if self.index not in self.extended and any(r.awaiting for r in self.servers.values()):
            # Follow-ups sent late in the ring: one more timeout for their replies.
            self.extended.add(self.index)
            return [ArmTimer(self.timeout)]
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
