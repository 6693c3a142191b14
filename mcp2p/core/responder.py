"""The SN's side of a query, as decisions without I/O.

For each QUERY heard: match it against the catalog, stay silent when the
query lists this node as known, delay the answer at random (RFC 6762
style reply-implosion control), cancel it if OFFERs overheard on the group
already gave the CN enough answers, and pack the files into OFFER
datagrams within a byte budget: to a unicast address at most
``AMPLIFICATION`` times the query's own size (no amplification towards a
spoofed source), to the group at most ``MAX_GROUP_DATAGRAMS`` full
datagrams. A token bucket caps the offers per second.

Each pending reply is keyed by (request id, hop limit); states of a key:
- PENDING: scheduled, its delay not yet over.
- SENT / SUPPRESSED: done; remembered for ``MEMORY`` seconds so that a
  repeated datagram of the same ring is not answered twice.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mcp2p.core.pacing import TokenBucket
from mcp2p.wire.query import (
    MAX_DATAGRAM,
    Offer,
    Query,
    encode,
    file_offer_size,
    offer_overhead,
)
from mcp2p.wire.types import FileOffer

AMPLIFICATION = 3
MAX_GROUP_DATAGRAMS = 8
MEMORY = 30.0
MANY_ANSWERS = 8  # a query wanting more answers than this stretches the delay
REANSWER_AFTER = 0.4  # a ring that still does not list us this long after we answered: lost


@dataclass(frozen=True)
class Schedule:
    """Answer after ``delay`` seconds by calling ``Responder.due(key)``."""

    key: tuple[bytes, int]
    delay: float


@dataclass(frozen=True)
class Send:
    """Send ``data``; ``to`` is (host, port) for unicast, None for the group with ``hop_limit``."""

    data: bytes
    to: tuple[str, int] | None
    hop_limit: int


@dataclass
class _Pending:
    query: Query
    source: tuple[str, int]
    query_size: int
    files: list[FileOffer]
    overheard: set[bytes]


class Responder:
    """Decides whether, when and what to answer."""

    def __init__(
        self,
        node_id: bytes,
        public_key: bytes,
        lookup: Callable[[Query], Sequence[FileOffer]],
        rng: random.Random,
        delay_min: float,
        delay_max: float,
        answer_rate: float,
        answer_burst: int,
    ) -> None:
        self.node_id = node_id
        self.public_key = public_key
        self.lookup = lookup
        self.rng = rng
        self.delay_min = delay_min
        self.delay_max = delay_max
        self.bucket = TokenBucket(rate=answer_rate, burst=answer_burst)
        self.pending: dict[tuple[bytes, int], _Pending] = {}
        self.answered: dict[bytes, float] = {}  # request id -> when we last answered it
        self.done: dict[tuple[bytes, int], float] = {}  # key -> when it was settled
        self.counters = {
            "queries": 0,
            "known_silent": 0,
            "no_match": 0,
            "suppressed": 0,
            "rate_limited": 0,
            "truncated": 0,
            "offers_sent": 0,
            "duplicate": 0,
        }

    def query(self, query: Query, source: tuple[str, int], size: int, now: float) -> list[Schedule]:
        """A QUERY of ``size`` bytes arrived from ``source``."""
        self._forget(now)
        self.counters["queries"] += 1
        key = (query.request_id, query.hop_limit)
        if key in self.pending or key in self.done:
            self.counters["duplicate"] += 1
            return []
        if self.node_id in query.known:
            self.counters["known_silent"] += 1
            self.done[key] = now
            return []
        last = self.answered.get(query.request_id)
        if last is not None and now - last < REANSWER_AFTER:
            # Our answer to an earlier ring is probably still on its way.
            self.counters["duplicate"] += 1
            self.done[key] = now
            return []
        files = list(self.lookup(query))
        if not files:
            self.counters["no_match"] += 1
            self.done[key] = now
            return []
        self.pending[key] = _Pending(query, source, size, files, set())
        return [Schedule(key, self._delay(query))]

    def _delay(self, query: Query) -> float:
        high = self.delay_max
        if query.answers_wanted > MANY_ANSWERS:
            high *= min(4.0, query.answers_wanted / MANY_ANSWERS)
        return self.rng.uniform(self.delay_min, max(self.delay_min, high))

    def overheard(self, offer: Offer, now: float) -> None:
        """Another SN's OFFER seen on the group: enough of them make ours redundant."""
        if offer.node_id == self.node_id:
            return
        for (request_id, _hop), pending in self.pending.items():
            if request_id == offer.request_id and offer.files:
                pending.overheard.add(offer.node_id)

    def due(self, key: tuple[bytes, int], now: float) -> list[Send]:
        """The delay of ``key`` is over: the datagrams to send, if any."""
        pending = self.pending.pop(key, None)
        if pending is None:
            return []
        self.done[key] = now
        query = pending.query
        if query.reply_to is None and len(pending.overheard) >= query.answers_wanted:
            self.counters["suppressed"] += 1
            return []
        if not self.bucket.take(now):
            self.counters["rate_limited"] += 1
            return []
        if query.reply_to is None:
            budget = MAX_DATAGRAM * MAX_GROUP_DATAGRAMS
            to = None
        else:
            budget = AMPLIFICATION * pending.query_size
            # Reply to where the query came from, never to an address it names.
            to = (pending.source[0], query.reply_to[1])
        offers = pack(
            query.request_id, self.node_id, self.public_key, query.hop_limit, pending.files, budget
        )
        if offers and offers[-1].truncated:
            self.counters["truncated"] += 1
        self.answered[query.request_id] = now
        self.counters["offers_sent"] += len(offers)
        return [Send(encode(o), to, query.hop_limit) for o in offers]

    def cancel_all(self) -> list[tuple[bytes, int]]:
        keys = list(self.pending)
        self.pending.clear()
        return keys

    def _forget(self, now: float) -> None:
        if len(self.done) > 256 or len(self.answered) > 256:
            self.done = {k: t for k, t in self.done.items() if now - t < MEMORY}
            self.answered = {k: t for k, t in self.answered.items() if now - t < MEMORY}


def pack(
    request_id: bytes,
    node_id: bytes,
    public_key: bytes,
    hop_limit: int,
    files: Sequence[FileOffer],
    budget: int,
) -> list[Offer]:
    """Files into OFFERs of at most MAX_DATAGRAM bytes each and ``budget`` bytes in all.

    The last OFFER says ``truncated`` when some files did not fit, and every
    other one says ``more``. Nothing is sent when even an empty OFFER exceeds
    the budget.
    """
    overhead = offer_overhead()
    offers: list[Offer] = []
    batch: list[FileOffer] = []
    size = overhead
    spent = 0
    truncated = False
    for f in files:
        extra = file_offer_size(f)
        if overhead + extra > MAX_DATAGRAM:
            truncated = True  # can never fit in a datagram: skip it
            continue
        if size + extra > MAX_DATAGRAM or len(batch) == 255:
            offers.append(Offer(request_id, node_id, public_key, hop_limit, tuple(batch)))
            spent += size
            batch, size = [], overhead
        if spent + size + extra > budget:
            truncated = True
            break
        batch.append(f)
        size += extra
    if batch:
        offers.append(Offer(request_id, node_id, public_key, hop_limit, tuple(batch)))
    if truncated:
        if offers:
            offers[-1] = dataclasses.replace(offers[-1], truncated=True)
        elif overhead <= budget:
            offers.append(Offer(request_id, node_id, public_key, hop_limit, (), True))
    # Every datagram but the last says more follow, so the CN waits for the whole reply.
    return [dataclasses.replace(o, more=True) for o in offers[:-1]] + offers[-1:]
