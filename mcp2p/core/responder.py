"""The SN's side of a query, as decisions without I/O.

For each QUERY heard: match it against the catalog, stay silent when the
query lists this node as known, delay the answer at random (RFC 6762
style reply-implosion control: it spreads SNs apart, 20-120 ms before an
offer to the group, which other SNs overhear, a few ms of jitter before one
to the CN's own address, which none does; a query for what
a pending answer already answers, another CN of a burst asking for the
same file, is answered at that one's time, and one for what this SN
answered less than TOGETHER_WINDOW ago at once: the delay chose it then),
cancel it if OFFERs overheard on the group already gave the CN enough
answers, and pack the files into OFFER datagrams within a byte budget.

No amplification (issue 12). Toward a unicast address the reply is at most
the query's own size until the querier proved it receives there: that
small reply carries a cookie (``cookie``: HMAC-SHA256 of the address and
a ``COOKIE_WINDOW`` time window under this node's secret, as DNS cookies,
RFC 7873); a query that names it, under our node id, gets the whole reply
(at most ``MAX_GROUP_DATAGRAMS`` full datagrams). A spoofed query thus
sends its victim at most its own size per SN answering it. To the group
the reply is at most ``GROUP_FACTOR`` times the query's size, sent with
the query's hop limit capped at ``max_hop_limit`` (the largest ring).

Bounded work: a token bucket per source address (a bounded table of
them) and then a global one are taken before the catalog is looked up, so
a flood from one source costs a few look-ups per second and leaves the
global budget to the others; a token bucket caps the offers per second.

Each pending reply is keyed by (request id, hop limit, address validated,
repeat); states of a key:
- PENDING: scheduled, its delay not yet over.
- SENT / SUPPRESSED: done; remembered for ``MEMORY`` seconds so that a
  repeated datagram of the same ring is not answered twice.
A ring's query sent again on purpose (``repeat``: the CN did not hear an
SN that answered it before) is a new key, answered even right after the
first (``known`` silences the SNs it did hear).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import random
import struct
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mcp2p.core.pacing import TokenBucket
from mcp2p.wire.query import (
    COOKIE_LEN,
    GROUP_FACTOR,
    MAX_DATAGRAM,
    Offer,
    Query,
    encode,
    file_offer_size,
    offer_overhead,
)
from mcp2p.wire.types import FileOffer

AMPLIFICATION = 1  # unvalidated unicast reply bytes per query byte
MAX_GROUP_DATAGRAMS = 8  # the most datagrams of one reply (validated or to the group)
COOKIE_WINDOW = 300.0  # a cookie is accepted in its window and the next one
SOURCE_RATE = 10.0  # queries per second looked up for one source address
SOURCE_BURST = 30
MAX_SOURCES = 1024  # source buckets kept (least recently used dropped)
LOOKUP_FACTOR = 4  # global look-ups per second: this times answer_rate
MEMORY = 30.0
MANY_ANSWERS = 8  # a query wanting more answers than this stretches the delay
# The longest delay before an offer to the CN's own address (reply_to). The
# random delay is there so that SNs hear each other's offers on the group and
# stay silent once the CN has enough (RFC 6762 7.4); an offer sent to the CN
# alone is heard by no other SN, so waiting 20-120 ms for one suppresses
# nothing and only delays the fetch: a multicast session waits for its last
# CN, so every fetch waited for a draw, 70 ms on average. A few milliseconds
# of jitter still keep many SNs' offers from reaching the CN in one instant
# (RFC 6762 6: a responder that need not wait for others answers within 10 ms).
UNICAST_JITTER = 0.01
# A ring that still does not list us this long after we answered: our answer
# was lost. A ring that follows a lost answer comes ring_timeout (0.3 s) after
# the one we answered, so at least 0.3 - reply_delay_max (0.12) = 0.18 s after
# our answer; a ring sent before our answer arrived comes less than a round
# trip after it. 0.1 s is above the round trips of a multicast scope and below
# 0.18 s: a lost offer costs its CN one ring, not two (with 0.4 s the next ring
# was always taken for a crossing, and the CN waited a second ring timeout).
REANSWER_AFTER = 0.1
# An SN whose answer went out, not suppressed, was one the random delay chose
# for that question: another CN of the same burst asking it within this long
# is answered at once (the lab's CNs start up to 0.1 s apart; one whose offer
# was lost asks again a ring timeout, 0.3 s, later).
TOGETHER_WINDOW = 0.5
MAX_RECENT = 64  # questions answered recently, remembered for that (the oldest dropped)


# A pending or settled reply: (request id, hop limit, address validated, repeat).
ReplyKey = tuple[bytes, int, bool, bool]


@dataclass(frozen=True)
class Schedule:
    """Answer after ``delay`` seconds by calling ``Responder.due(key)``."""

    key: ReplyKey
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
    validated: bool = False
    due_at: float = 0.0  # when its delay is over


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
        *,
        secret: bytes | None = None,
        max_hop_limit: int = 255,
        source_rate: float = SOURCE_RATE,
        source_burst: int = SOURCE_BURST,
        max_sources: int = MAX_SOURCES,
    ) -> None:
        self.node_id = node_id
        self.public_key = public_key
        self.lookup = lookup
        self.rng = rng
        self.delay_min = delay_min
        self.delay_max = delay_max
        self.bucket = TokenBucket(rate=answer_rate, burst=answer_burst)
        self.lookups = TokenBucket(
            rate=answer_rate * LOOKUP_FACTOR, burst=answer_burst * LOOKUP_FACTOR
        )
        self.secret = os.urandom(32) if secret is None else secret
        self.max_hop_limit = max_hop_limit
        self.source_rate = source_rate
        self.source_burst = source_burst
        self.max_sources = max_sources
        self.sources: OrderedDict[str, TokenBucket] = OrderedDict()
        self.pending: dict[ReplyKey, _Pending] = {}
        # request id -> (when we last answered it, whether that answer was whole)
        self.answered: dict[bytes, tuple[float, bool]] = {}
        self.done: dict[ReplyKey, float] = {}  # key -> when it was settled
        # what recent answers were about (``_subject``) -> when the last went
        self.recent: OrderedDict[tuple[bytes | None, str | None, str | None], float] = OrderedDict()
        self.counters = {
            "queries": 0,
            "known_silent": 0,
            "no_match": 0,
            "suppressed": 0,
            "rate_limited": 0,
            "truncated": 0,
            "offers_sent": 0,
            "duplicate": 0,
            "source_limited": 0,
            "lookup_limited": 0,
            "cookies_sent": 0,
            "validated": 0,
            "bad_cookie": 0,
            "too_small": 0,
            "answered_together": 0,
        }

    # -- address validation

    def cookie(self, host: str, now: float, window: int | None = None) -> bytes:
        """The cookie for ``host`` in the current (or given) time window."""
        if window is None:
            window = int(now // COOKIE_WINDOW)
        msg = struct.pack("!q", window) + host.encode("ascii", "replace")
        return hmac.new(self.secret, msg, hashlib.sha256).digest()[:COOKIE_LEN]

    def validated(self, query: Query, host: str, now: float) -> bool:
        """Whether ``query`` carries a cookie we gave ``host`` in this window or the last."""
        for node_id, cookie in query.cookies:
            if node_id != self.node_id:
                continue
            window = int(now // COOKIE_WINDOW)
            for w in (window, window - 1):
                if hmac.compare_digest(cookie, self.cookie(host, now, w)):
                    return True
            self.counters["bad_cookie"] += 1
        return False

    def _source_allows(self, host: str, now: float) -> bool:
        bucket = self.sources.get(host)
        if bucket is None:
            bucket = TokenBucket(rate=self.source_rate, burst=self.source_burst)
            self.sources[host] = bucket
            while len(self.sources) > self.max_sources:
                self.sources.popitem(last=False)
        else:
            self.sources.move_to_end(host)
        return bucket.take(now)

    def query(self, query: Query, source: tuple[str, int], size: int, now: float) -> list[Schedule]:
        """A QUERY of ``size`` bytes arrived from ``source``."""
        self._forget(now)
        self.counters["queries"] += 1
        if self.node_id in query.known:
            self.counters["known_silent"] += 1
            return []
        # Fairness first: one source's flood spends its own bucket, not the others'.
        if not self._source_allows(source[0], now):
            self.counters["source_limited"] += 1
            return []
        validated = query.reply_to is not None and self.validated(query, source[0], now)
        key = (query.request_id, query.hop_limit, validated, query.repeat)
        if key in self.pending or key in self.done:
            self.counters["duplicate"] += 1
            return []
        last = None if query.repeat else self.answered.get(query.request_id)
        if last is not None and now - last[0] < REANSWER_AFTER and (last[1] or not validated):
            # Our answer to an earlier ring is probably still on its way.
            self.counters["duplicate"] += 1
            self.done[key] = now
            return []
        if not self.lookups.take(now):
            self.counters["lookup_limited"] += 1
            return []
        files = list(self.lookup(query))
        if not files:
            self.counters["no_match"] += 1
            self.done[key] = now
            return []
        delay = self._together(query, now)
        if delay is None:
            delay = self._delay(query)
        self.pending[key] = _Pending(query, source, size, files, set(), validated, now + delay)
        return [Schedule(key, delay)]

    def _together(self, query: Query, now: float) -> float | None:
        """The time left of a pending answer to the same question (another CN
        of a burst asking for one file), if there is one: answered with it;
        0 if an answer to it went out less than TOGETHER_WINDOW ago. Pending
        answers are few, bounded by the look-up bucket."""
        subject = _subject(query)
        for other in self.pending.values():
            if _subject(other.query) == subject:
                self.counters["answered_together"] += 1
                return max(0.0, other.due_at - now)
        sent = self.recent.get(subject)
        if sent is not None and now - sent < TOGETHER_WINDOW:
            self.counters["answered_together"] += 1
            return 0.0
        return None

    def files_of(self, key: ReplyKey) -> list[FileOffer]:
        """The files a pending answer will offer ([] if none is pending)."""
        pending = self.pending.get(key)
        return pending.files if pending is not None else []

    def _delay(self, query: Query) -> float:
        """Random: reply_delay_min..max before an offer to the group, which
        other SNs overhear; 0..UNICAST_JITTER (at most reply_delay_max) before
        one to the CN's address. Stretched up to 4x when many answers are
        wanted."""
        if query.reply_to is None:
            low, high = self.delay_min, self.delay_max
        else:
            low, high = 0.0, min(UNICAST_JITTER, self.delay_max)
        if query.answers_wanted > MANY_ANSWERS:
            high *= min(4.0, query.answers_wanted / MANY_ANSWERS)
        return self.rng.uniform(low, max(low, high))

    def overheard(self, offer: Offer, now: float) -> None:
        """Another SN's OFFER seen on the group: enough of them make ours redundant."""
        if offer.node_id == self.node_id:
            return
        for (request_id, _hop, _valid, _repeat), pending in self.pending.items():
            if request_id == offer.request_id and offer.files:
                pending.overheard.add(offer.node_id)

    def due(self, key: ReplyKey, now: float) -> list[Send]:
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
        cookie = None
        full = MAX_DATAGRAM * MAX_GROUP_DATAGRAMS
        if query.reply_to is None:
            budget = min(full, GROUP_FACTOR * pending.query_size)
            to = None
        else:
            # Reply to where the query came from, never to an address it names.
            to = (pending.source[0], query.reply_to[1])
            if pending.validated:
                budget = full
                self.counters["validated"] += 1
            else:
                budget = AMPLIFICATION * pending.query_size
                cookie = self.cookie(pending.source[0], now)
        offers = pack(
            query.request_id,
            self.node_id,
            self.public_key,
            query.hop_limit,
            pending.files,
            budget,
            cookie,
        )
        if not offers:
            self.counters["too_small"] += 1
            return []
        if offers[-1].truncated:
            self.counters["truncated"] += 1
        if cookie is not None:
            self.counters["cookies_sent"] += 1
        whole = cookie is None or not offers[-1].truncated
        self.answered[query.request_id] = (now, whole)
        subject = _subject(query)
        self.recent.pop(subject, None)
        self.recent[subject] = now
        if len(self.recent) > MAX_RECENT:
            self.recent.popitem(last=False)
        self.counters["offers_sent"] += len(offers)
        hop_limit = min(query.hop_limit, self.max_hop_limit)
        return [Send(encode(o), to, hop_limit) for o in offers]

    def cancel_all(self) -> list[ReplyKey]:
        keys = list(self.pending)
        self.pending.clear()
        return keys

    def _forget(self, now: float) -> None:
        if len(self.done) > 256 or len(self.answered) > 256:
            self.done = {k: t for k, t in self.done.items() if now - t < MEMORY}
            self.answered = {k: t for k, t in self.answered.items() if now - t[0] < MEMORY}


def _subject(query: Query) -> tuple[bytes | None, str | None, str | None]:
    """What ``query`` asks for: queries with the same subject get the same files."""
    return query.content_id, query.content_id_prefix, query.pattern


def pack(
    request_id: bytes,
    node_id: bytes,
    public_key: bytes,
    hop_limit: int,
    files: Sequence[FileOffer],
    budget: int,
    cookie: bytes | None = None,
) -> list[Offer]:
    """Files into OFFERs of at most MAX_DATAGRAM bytes each and ``budget`` bytes in all.

    The last OFFER says ``truncated`` when some files did not fit, and every
    other one says ``more``; ``cookie`` (if any) ends the last one. Nothing
    is sent when even an empty OFFER exceeds the budget.
    """
    overhead = offer_overhead()
    if cookie is not None:
        # Room for the cookie in whichever datagram ends up last.
        overhead += COOKIE_LEN
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
    if cookie is not None and offers:
        offers[-1] = dataclasses.replace(offers[-1], cookie=cookie)
    # Every datagram but the last says more follow, so the CN waits for the whole reply.
    return [dataclasses.replace(o, more=True) for o in offers[:-1]] + offers[-1:]
