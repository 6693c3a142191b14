"""Discovery at internet scale: the query and SAP on generated topologies.

Pure computation (no sockets, no files, no clocks): the lab's discovery
experiment (`mcp2p.lab.experiments.discovery`) measures the two methods on
a handful of emulated nodes; this module extends the same question to
10^3-10^6 nodes with the project's own core code:

- the query: every sampled search drives the real expanding-ring state
  machine, `mcp2p.core.ring.RingSearch`, with the same ring schedule and
  ring timeout as a daemon, and with OFFERs (real `mcp2p.wire.query.Offer`
  objects) arriving after a round trip proportional to the hop distance
  of the nearest holder, found by one BFS from the searcher;
- SAP: each announcement's interval is the RFC 2974 rule of
  `mcp2p.core.sapinterval.announcement_interval` for the scope's total
  number of announcements, and a newly started directory hears a given
  announcement at `equilibrium_phase` of an interval (the same renewal
  model the announcer uses to place first repeats), plus whole jittered
  intervals for each copy lost on the way;
- the datagram sizes come from the real encoders (`mcp2p.wire.query`,
  `mcp2p.wire.sdp`, `mcp2p.wire.sap`), plus UDP, IP and Ethernet headers,
  so bytes compare with the lab's link counters.

Topology model ("an AS of LANs"): ``n`` peers sit on LANs of ``lan_size``
peers, one LAN per router; the routers form either a random recursive
tree (``tree``) or a Barabasi-Albert graph with two links per new router
(``ba``: hubs and cycles, internet-like degrees). A datagram sent with hop
limit ``h`` reaches the sender's LAN, and every router up to ``h - 1``
router hops away; a router ``d`` hops away delivers it to its LAN if
``d <= h - 2``. So a peer on a LAN ``d`` router hops away answers ring
``d + 2`` (``1`` on the same LAN), as in the emulation where a node behind
one router answers ring 2. "Links" are the router-router links plus one
shared segment per LAN.

Files: node ``i`` shares ``files_per_node`` files out of a catalog of
``catalog_factor * files_per_node`` names whose popularity is Zipf
(exponent ``zipf``): file ``j`` is on each node with probability
``min(1, files_per_node * w_j)``. Two kinds of search: a *rare* file (one
copy, on a node drawn uniformly) and a *popular* one (drawn from the same
Zipf, so requests follow what is shared).

Where this differs from the emulation (and so from reality):

- no loss unless ``loss`` is set, then independent per link; no queueing,
  no congestion, no rate limits on links;
- no CPU: a daemon's catalog look-up, decoding, reply delay jitter beyond
  the configured uniform range, and the SAP directory's cost with many
  entries are not modelled (the emulation has all of them);
- uniform per-hop delay (``hop_delay``) on every link, both ways;
- perfect multicast: every router forwards along a shortest-path tree and
  each link carries a datagram at most once (the emulation's smcroute
  static routes on a tree topology do the same; real PIM adds joins,
  prunes and asserts, and most of the internet forwards no multicast);
- one SAP scope covering the whole network (global scope, TTL 255): every
  link carries every announcement. mcp2p's default ``[sap] ttl`` is 15,
  which would make many overlapping TTL scopes instead;
- the RFC's 4000 bit/s and 300 s minimum interval, where the emulation
  runs SAP at a configured speed-up (limit times k, minimum interval over
  k) so its minutes fit in the lab's budget;
- steady state: every announcer is past its first batch and knows the
  scope's size; the announcer's reconsideration and jitter are folded into
  the equilibrium phase;
- query load per link is per search; bytes per minute assume
  ``searches_per_node_hour`` searches from each node, spread evenly.
"""

from __future__ import annotations

import bisect
import dataclasses
import ipaddress
import math
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from mcp2p.core.ring import ArmTimer, Finished, RingSearch, SendQuery
from mcp2p.core.sapinterval import (
    DEFAULT_BANDWIDTH_LIMIT_BPS,
    DEFAULT_MIN_INTERVAL,
    announcement_interval,
    equilibrium_phase,
    jittered,
)
from mcp2p.wire.query import Offer, Query, encode, padding_for
from mcp2p.wire.sap import AUTH_LEN, SAPPacket, encode_sap
from mcp2p.wire.sdp import Announcement, encode_sdp
from mcp2p.wire.types import FileOffer

__all__ = [
    "KINDS",
    "SimParams",
    "Topology",
    "bfs_distances",
    "make_topology",
    "query_sizes",
    "ring_links",
    "sap_ad_size",
    "search_time",
    "simulate",
]

KINDS = ("tree", "ba")
ETH_OVERHEAD = 14  # veth counters count the Ethernet header
UDP_IP4 = 28
RING_SCHEDULE = (1, 2, 3, 4, 6, 8, 16, 32)  # the daemon's default [discovery] ring_schedule
RING_TIMEOUT = 0.3
REPLY_DELAY = (0.02, 0.12)
QUERY_PADDING = 400


@dataclass
class Topology:
    """Routers ``0..routers-1`` (``adj``: neighbour lists); peer ``i`` is on router ``i // lan``."""

    kind: str
    peers: int
    lan: int
    adj: list[list[int]]

    @property
    def routers(self) -> int:
        return len(self.adj)

    @property
    def router_links(self) -> int:
        return sum(len(a) for a in self.adj) // 2

    @property
    def links(self) -> int:
        """Router-router links plus one segment per LAN."""
        return self.router_links + self.routers

    def router_of(self, peer: int) -> int:
        return peer // self.lan


def make_topology(kind: str, peers: int, lan_size: int, rng: random.Random) -> Topology:
    """``peers`` peers on LANs of ``lan_size``; routers as a ``tree`` or ``ba`` graph."""
    if kind not in KINDS:
        raise ValueError(f"topology kind must be one of {KINDS}, got {kind!r}")
    if peers < 1 or lan_size < 1:
        raise ValueError("peers and lan_size must be >= 1")
    r = max(1, -(-peers // lan_size))
    adj: list[list[int]] = [[] for _ in range(r)]
    if kind == "tree":
        for v in range(1, r):
            u = rng.randrange(v)
            adj[u].append(v)
            adj[v].append(u)
    else:
        # Barabasi-Albert, m = 2: endpoints of existing links, chosen uniformly,
        # are chosen in proportion to degree.
        ends: list[int] = []
        for v in range(1, r):
            targets = {0} if v == 1 else set()
            while len(targets) < min(2, v):
                targets.add(ends[rng.randrange(len(ends))] if ends else 0)
            for u in targets:
                adj[u].append(v)
                adj[v].append(u)
                ends += (u, v)
    return Topology(kind, peers, lan_size, adj)


def bfs_distances(topo: Topology, source: int, limit: int | None = None) -> list[int]:
    """Router hops from router ``source`` to every router (-1: beyond ``limit``)."""
    dist = [-1] * topo.routers
    dist[source] = 0
    q = deque([source])
    adj = topo.adj
    while q:
        u = q.popleft()
        du = dist[u] + 1
        if limit is not None and du > limit:
            continue
        for v in adj[u]:
            if dist[v] < 0:
                dist[v] = du
                q.append(v)
    return dist


def ttl_needed(router_hops: int, same_lan: bool) -> int:
    """The smallest hop limit that reaches a peer ``router_hops`` away."""
    return 1 if same_lan else router_hops + 2


def ring_links(per_distance: list[int], hop_limit: int) -> int:
    """Links one datagram with ``hop_limit`` crosses (perfect multicast tree).

    ``per_distance[d]``: routers ``d`` router hops from the sender's router.
    The sender's LAN, each router link into a router up to ``h - 1`` hops
    away, and the LAN of each router 1..``h - 2`` hops away.
    """

    def upto(d: int) -> int:
        return sum(per_distance[1 : max(1, d + 1)])

    return 1 + upto(hop_limit - 1) + upto(hop_limit - 2)


def _file_offer(name: str = "file-0000001.dat", i: int = 1) -> FileOffer:
    return FileOffer(
        content_id=i.to_bytes(32, "big"),
        name=name,
        size=1 << 20,
        block_length=1400,
        piece_length=1 << 20,
        session_id=i,
        group=ipaddress.ip_address("232.1.2.3"),
        source=ipaddress.ip_address("10.77.0.2"),
        port=7712,
        rate=100_000_000,
        control_port=7713,
    )


def query_sizes(name: str = "file-0000001.dat") -> tuple[int, int]:
    """(query, one-file offer) bytes on a link, as a daemon sends them in
    unicast-reply mode for a pattern (the daemon's padding rule,
    `wire.query.padding_for`: at least `ONE_OFFER_QUERY`, so that an SN that
    has not validated the searcher's address yet still answers one file at
    once; that first offer ends with the SN's 8-byte cookie)."""
    q = Query(
        request_id=b"\0" * 8,
        hop_limit=1,
        content_id=None,
        pattern=name,
        answers_wanted=1,
        reply_to=(ipaddress.ip_address("0.0.0.0"), 40000),
    )
    data = encode(dataclasses.replace(q, padding=padding_for(q, QUERY_PADDING)))
    offer = Offer(b"\0" * 8, b"\1" * 16, b"\2" * 32, 1, (_file_offer(name),), cookie=b"\3" * 8)
    return (
        len(data) + UDP_IP4 + ETH_OVERHEAD,
        len(encode(offer)) + UDP_IP4 + ETH_OVERHEAD,
    )


def sap_ad_size(name: str = "file-0000001.dat") -> int:
    """One signed SAP/SDP announcement with IP and UDP headers (what RFC 2974's
    limit counts): the node's Ed25519 signature adds 68 bytes of
    authentication data."""
    a = Announcement(
        offer=_file_offer(name),
        node_id=b"\1" * 16,
        public_key=b"\2" * 32,
        origin=ipaddress.ip_address("10.77.0.2"),
        ttl=15,
        version=1_700_000_000,
    )
    packet = SAPPacket(False, 1, a.origin, encode_sdp(a), auth=bytes(AUTH_LEN))
    return len(encode_sap(packet)) + UDP_IP4


def search_time(
    holder_ttls: list[float],
    rng: random.Random,
    *,
    schedule: tuple[int, ...] = RING_SCHEDULE,
    timeout: float = RING_TIMEOUT,
    hop_delay: float = 0.001,
    reply_delay: tuple[float, float] = REPLY_DELAY,
) -> tuple[float | None, list[int]]:
    """Run `RingSearch` (enough = 1) against holders at the given hop limits.

    ``holder_ttls``: the hop limit each holder needs (sorted or not). Each
    ring's holders within reach answer after the reply delay plus a round
    trip of ``2 * (ttl - 1) * hop_delay`` (at least one hop). Returns (time
    to the first answer or None if the schedule ran out, hop limits sent).
    """
    ring = RingSearch(schedule, timeout, 1)
    ttls = sorted(holder_ttls)
    sent: list[int] = []
    events: list[tuple[float, int, str, int]] = []  # (time, seq, kind, hop limit)
    seq = 0

    def apply(actions: list[Any], now: float) -> bool:
        nonlocal seq
        for a in actions:
            if isinstance(a, SendQuery):
                sent.append(a.hop_limit)
                n = bisect.bisect_right(ttls, a.hop_limit)
                if n:
                    # the first answer of this ring: min over holders in reach
                    best = min(
                        rng.uniform(*reply_delay) + 2 * max(1, t - 1) * hop_delay
                        for t in ttls[: min(n, 8)]
                    )
                    seq += 1
                    events.append((now + best, seq, "offer", a.hop_limit))
            elif isinstance(a, ArmTimer):
                seq += 1
                events.append((now + a.delay, seq, "timeout", 0))
            elif isinstance(a, Finished):
                return True
        return False

    if apply(ring.start(0.0), 0.0):
        return None, sent
    while events:
        events.sort()
        now, _, kind, hop = events.pop(0)
        if kind == "offer":
            offer = Offer(b"\0" * 8, b"\1" * 16, b"\2" * 32, hop, ())
            actions = ring.offer(offer, "10.0.0.1", now)
            if apply(actions, now):
                return (now if ring.reason == "enough" else None), sent
        else:
            events = [e for e in events if e[2] != "timeout"]
            if apply(ring.ring_timeout(now), now):
                return (now if ring.reason == "enough" else None), sent
    return None, sent


@dataclass
class SimParams:
    kind: str = "ba"
    peers: int = 1000
    files_per_node: int = 100
    lan_size: int = 10
    samples: int = 20
    zipf: float = 1.0
    catalog_factor: int = 10
    hop_delay: float = 0.001
    loss: float = 0.0
    searches_per_node_hour: float = 1.0
    sap_limit: float = DEFAULT_BANDWIDTH_LIMIT_BPS
    sap_min_interval: float = DEFAULT_MIN_INTERVAL
    seed: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


def _zipf_cdf(m: int, s: float) -> list[float]:
    w = [1.0 / (j**s) for j in range(1, m + 1)]
    total = sum(w)
    acc, out = 0.0, []
    for x in w:
        acc += x / total
        out.append(acc)
    return out


def _replicas(p: SimParams, j: int, m: int) -> float:
    """Probability that a node shares file ``j`` (1-based rank)."""
    h = sum(1.0 / (k**p.zipf) for k in range(1, min(m, 100_000) + 1))
    if m > 100_000:  # tail of the harmonic sum, integral approximation
        if p.zipf == 1.0:
            h += math.log(m / 100_000)
        else:
            h += (m ** (1 - p.zipf) - 100_000 ** (1 - p.zipf)) / (1 - p.zipf)
    return min(1.0, p.files_per_node * (1.0 / j**p.zipf) / h)


def simulate(p: SimParams) -> dict[str, Any]:
    """One point: time to find and bytes per minute per link, query and SAP."""
    if p.samples < 1:
        raise ValueError("samples must be >= 1")
    if not 0 <= p.loss < 1:
        raise ValueError("loss is a fraction in [0, 1)")
    t0 = time.perf_counter()
    rng = random.Random(p.seed)
    topo = make_topology(p.kind, p.peers, p.lan_size, rng)
    qsize, osize = query_sizes()
    m = max(1, p.catalog_factor * p.files_per_node)
    cdf = _zipf_cdf(min(m, 200_000), p.zipf)

    times: dict[str, list[float | None]] = {"rare": [], "popular": []}
    rings: dict[str, list[int]] = {"rare": [], "popular": []}
    bytes_per_search: dict[str, list[int]] = {"rare": [], "popular": []}
    max_radius_links: list[int] = []
    rare_ttls: list[float] = []
    for _ in range(p.samples):
        searcher = rng.randrange(p.peers)
        sr = topo.router_of(searcher)
        dist = bfs_distances(topo, sr)
        per_d: list[int] = [0] * (max(dist) + 1)
        for d in dist:
            if d >= 0:
                per_d[d] += 1
        reach = _reach_fractions(topo, per_d)
        for kind in ("rare", "popular"):
            if kind == "rare":
                count = 1
            else:
                j = min(bisect.bisect_left(cdf, rng.random()), len(cdf) - 1) + 1
                count = _binomial(rng, p.peers - 1, _replicas(p, j, m))
            ttls = []
            if count:
                # the nearest of ``count`` holders placed uniformly on the other peers
                u = rng.random()
                for hop_limit, frac in enumerate(reach, start=1):
                    if 1.0 - (1.0 - frac) ** count >= u:
                        ttls = [float(hop_limit)]
                        break
            if kind == "rare" and ttls:
                rare_ttls.append(ttls[0])
            if p.loss and ttls:
                # a query or offer lost on the way: that holder answers a later ring only
                need = ttls[0]
                while rng.random() > (1 - p.loss) ** (2 * need) and need < 255:
                    need = float(next((h for h in RING_SCHEDULE if h > need), 255))
                ttls = [need]
            found, sent = search_time(ttls, rng, hop_delay=p.hop_delay)
            times[kind].append(found)
            rings[kind].append(len(sent))
            links = sum(ring_links(per_d, h) for h in sent)
            # a unicast offer crosses the holder's LAN, the router links, the searcher's LAN
            reply_links = int(min(ttls)) if ttls and found is not None else 0
            bytes_per_search[kind].append(links * qsize + reply_links * osize)
            max_radius_links.append(ring_links(per_d, max(sent)))

    # query bytes per minute per link: every node searches at the given rate
    searches_per_min = p.peers * p.searches_per_node_hour / 60.0
    query_bpm = {
        kind: searches_per_min * _mean(bytes_per_search[kind]) / topo.links
        for kind in bytes_per_search
    }

    # SAP, one global scope
    ad = sap_ad_size()
    ads = p.peers * p.files_per_node
    interval = announcement_interval(ad, ads, p.sap_limit, p.sap_min_interval)
    rate_bps = 8.0 * ads * ad / interval  # bits/s the whole scope sends
    sap_times = []
    # a copy crosses as many links as the hop limit that reaches its announcer
    path_links = [int(r) for r in rare_ttls] or [2]
    for i in range(max(p.samples, 50)):
        heard = interval * equilibrium_phase(rng.random())
        if p.loss:
            hops = path_links[i % len(path_links)]
            for _ in range(10_000):  # each lost copy costs one more interval
                if rng.random() <= (1 - p.loss) ** hops:
                    break
                heard += jittered(interval, rng)
        sap_times.append(heard)
    sap_bpm_link = 60.0 * rate_bps / 8.0 * (ETH_OVERHEAD + ad) / ad

    def found_share(xs: list[float | None]) -> float:
        return sum(1 for x in xs if x is not None) / len(xs)

    return {
        "kind": p.kind,
        "peers": p.peers,
        "files_per_node": p.files_per_node,
        "routers": topo.routers,
        "links": topo.links,
        "lan_size": p.lan_size,
        "samples": p.samples,
        "query": {
            kind: {
                "times": [None if t is None else round(t, 4) for t in times[kind]],
                "found": found_share(times[kind]),
                "rings": rings[kind],
                "bytes_per_search": bytes_per_search[kind],
                "bytes_per_min_link": query_bpm[kind],
            }
            for kind in times
        },
        "query_size": qsize,
        "offer_size": osize,
        "sap": {
            "ad_size": ad,
            "ads": ads,
            "interval": interval,
            "rate_bps": rate_bps,
            "times": [round(t, 3) for t in sap_times],
            "bytes_per_min_link": sap_bpm_link,
            "bytes_per_min_total": sap_bpm_link * topo.links,
        },
        "largest_ring_links": max(max_radius_links),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _reach_fractions(topo: Topology, per_d: list[int]) -> list[float]:
    """Fraction of the other peers a hop limit of 1, 2, ... reaches."""
    others = max(1, topo.peers - 1)
    out = []
    lan = min(topo.lan, topo.peers) - 1
    covered = 0
    for t in range(1, len(per_d) + 2):
        if t >= 3:
            covered += per_d[t - 2]
        out.append(min(1.0, (lan + topo.lan * covered) / others))
    return out


def _binomial(rng: random.Random, n: int, prob: float) -> int:
    if prob >= 1.0:
        return n
    if prob <= 0.0:
        return 0
    mean = n * prob
    if n < 50:
        return sum(1 for _ in range(n) if rng.random() < prob)
    if mean < 30:  # Poisson
        k, t = 0, rng.expovariate(1.0)
        while t < mean:
            k += 1
            t += rng.expovariate(1.0)
        return k
    sd = math.sqrt(mean * (1 - prob))
    return max(0, min(n, round(rng.gauss(mean, sd))))


def _mean(xs: list[int]) -> float:
    return sum(xs) / len(xs) if xs else 0.0
