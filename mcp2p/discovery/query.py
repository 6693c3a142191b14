"""Query/offer plumbing: sockets that feed ``RingSearch`` and ``Responder``.

A ``QueryNode`` owns, per address family in use, a socket joined to the
query group (where QUERYs, and OFFERs in multicast-reply mode, arrive) and
an ephemeral unicast socket (queries leave from it, unicast OFFERs come
back to it). The protocols only translate: decode, feed the core, turn its
actions into writes and DelayedCalls.

The node keeps the cookies SNs gave it (``cookies``, by node id, for
``COOKIE_WINDOW`` seconds, at most ``MAX_COOKIE_CACHE``) and hands them to
each search, so an SN that validated this node's address answers its next
searches in full at once (``mcp2p.core.ring`` does the follow-ups). It
also keeps the SNs its searches heard and at which hop limit (``heard``,
HEARD_WINDOW seconds): a ring that reaches one and has not heard it
RETRY_AFTER into its timeout sends its query once more (a lost query or
offer then costs 0.1 s, not the ring's 0.3).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import random
import socket
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from mcp2p import multicast
from mcp2p.core.display import display_text
from mcp2p.core.responder import (
    COOKIE_WINDOW,
    UNICAST_JITTER,
    ReplyKey,
    Responder,
    Schedule,
    Send,
)
from mcp2p.core.ring import ArmRetry, ArmTimer, Finished, RingSearch, SendQuery, ServerRecord
from mcp2p.errors import ProtocolError
from mcp2p.logsummary import summary_level
from mcp2p.wire.query import (
    Offer,
    Query,
    decode,
    encode,
    padding_for,
)
from mcp2p.wire.types import FileOffer, IPAddress

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorMulticast, IReactorTime

    from mcp2p.config import DiscoverySection

    class IDiscoveryReactor(IReactorTime, IReactorMulticast):
        """What discovery uses of the reactor: time, and multicast ports."""


_log = Logger()

MAX_COOKIE_CACHE = 64
# A ring that reaches an SN heard in the last HEARD_WINDOW seconds (at most
# MAX_HEARD remembered) sends its query once more when that SN is still
# silent RETRY_AFTER of the ring's timeout in (0.1 s of 0.3): an offer to
# our address comes within 10 ms, so the query or the offer was lost.
# Only offers to our address come that soon (within UNICAST_JITTER, four
# times that when many answers are wanted): offers to the group wait 20-120
# ms, and a ring timeout under MIN_RETRY / RETRY_AFTER leaves no room.
HEARD_WINDOW = 300.0
MAX_HEARD = 64
RETRY_AFTER = 1 / 3
MIN_RETRY = 4 * UNICAST_JITTER + 0.01


@dataclass
class SearchResult:
    """What a finished search found, and what it cost."""

    servers: list[ServerRecord]
    reason: str
    rings: int
    hop_limits: list[int]
    query_bytes: int
    elapsed: float

    def to_json(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "rings": self.rings,
            "hop_limits": self.hop_limits,
            "query_bytes": self.query_bytes,
            "elapsed": self.elapsed,
            "servers": [server_json(s) for s in self.servers],
        }


def server_json(s: ServerRecord) -> dict[str, Any]:
    return {
        "node_id": s.node_id.hex(),
        "public_key": s.public_key.hex(),
        "address": s.address,
        "distance": s.distance,
        "rtt": s.rtt,
        "truncated": s.truncated,
        "files": [file_json(f) for f in s.files.values()],
    }


def file_json(f: FileOffer) -> dict[str, Any]:
    return {
        "content_id": f.content_id.hex(),
        "name": f.name,
        "size": f.size,
        "block_length": f.block_length,
        "piece_length": f.piece_length,
        "session_id": f.session_id,
        "group": str(f.group),
        "source": None if f.source is None else str(f.source),
        "port": f.port,
        "rate": f.rate,
        "control_port": f.control_port,
    }


class _Datagrams(DatagramProtocol):
    """Decodes every datagram and hands it to the QueryNode; counts what it drops."""

    noisy = False

    def __init__(self, node: QueryNode, family: int, kind: str) -> None:
        self.node = node
        self.family = family
        self.kind = kind  # "group" or "unicast"

    def datagramReceived(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.node.counters["received"] += 1
        try:
            message = decode(data)
        except ProtocolError as e:
            self.node.counters["malformed"] += 1
            malformed = self.node.counters["malformed"]
            # Warn on the 1st, 2nd, 4th, 8th... drop so a flood cannot fill the log.
            _log.emit(
                summary_level(malformed),
                "dropped malformed datagram from {host}:{port} on the {kind} socket"
                " ({malformed} so far): {error}",
                host=addr[0],
                port=addr[1],
                kind=self.kind,
                malformed=malformed,
                error=str(e),
            )
            return
        self.node.received(message, (addr[0], addr[1]), len(data), self)


class _Search:
    def __init__(self, node: QueryNode, ring: RingSearch, query: Query, pad: int) -> None:
        self.node = node
        self.ring = ring
        self.query = query
        self.pad = pad
        self.deferred: defer.Deferred[SearchResult] = defer.Deferred(self._cancelled)
        self.timer: Any = None
        self.retry_timer: Any = None
        self.started = node.clock.seconds()
        self.query_bytes = 0
        self.hop_limits: list[int] = []
        self.mode = "unicast"

    def _cancelled(self, d: Any) -> None:
        self.apply(self.ring.cancel())

    def apply(self, actions: Sequence[Any]) -> None:
        for action in actions:
            if isinstance(action, SendQuery):
                if action.follow_up:
                    self.node.counters["followups"] += 1
                elif action.repeat:
                    self.node.counters["repeats"] += 1
                else:
                    self.hop_limits.append(action.hop_limit)
                self.query_bytes += self.node.send_query(self, action)
            elif isinstance(action, ArmTimer):
                self.timer = self.node.clock.callLater(action.delay, self.on_timer)
            elif isinstance(action, ArmRetry):
                self.retry_timer = self.node.clock.callLater(
                    action.delay, self.on_retry, action.index
                )
            elif isinstance(action, Finished):
                self.finish(action.reason)

    def on_timer(self) -> None:
        self.timer = None
        self.apply(self.ring.ring_timeout(self.node.clock.seconds()))

    def on_retry(self, index: int) -> None:
        self.retry_timer = None
        self.apply(self.ring.retry(self.node.clock.seconds(), index))

    def finish(self, reason: str) -> None:
        for timer in (self.timer, self.retry_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self.timer = self.retry_timer = None
        self.node.searches.pop(self.query.request_id, None)
        self.node.keep_cookies(self.ring.new_cookies)
        self.node.keep_heard(self.ring.servers.values())
        result = SearchResult(
            servers=sorted(self.ring.servers.values(), key=lambda s: (s.distance, s.rtt)),
            reason=reason,
            rings=len(self.hop_limits),
            hop_limits=self.hop_limits,
            query_bytes=self.query_bytes,
            elapsed=self.node.clock.seconds() - self.started,
        )
        _log.info(
            "search {request} done ({reason}): {servers} servers after {rings} rings, "
            "{nbytes} query bytes",
            request=self.query.request_id.hex(),
            reason=reason,
            servers=len(result.servers),
            rings=result.rings,
            nbytes=result.query_bytes,
        )
        if reason != "cancelled":
            self.deferred.callback(result)


class QueryNode:
    """The query side of one node: a responder (when it shares) and its searches."""

    def __init__(
        self,
        reactor: IDiscoveryReactor,
        discovery: DiscoverySection,
        interface: str,
        interface6: str = "",
        node_id: bytes | None = None,
        public_key: bytes | None = None,
        lookup: Callable[[Query], Sequence[FileOffer]] | None = None,
        rng: random.Random | None = None,
        offered: Callable[[str, Sequence[bytes]], object] | None = None,
    ) -> None:
        self.reactor = reactor
        # (host, content ids): told of each query this node will answer with
        # an offer to that host (the serving side expects it to subscribe soon)
        self.offered = offered
        self.clock = reactor
        self.d = discovery
        self.interface = interface
        self.interface6 = interface6
        self.node_id = node_id
        self.rng = rng or random.Random()
        self.responder: Responder | None = None
        if lookup is not None:
            assert node_id is not None and public_key is not None
            self.responder = Responder(
                node_id,
                public_key,
                lookup,
                self.rng,
                discovery.reply_delay_min,
                discovery.reply_delay_max,
                discovery.answer_rate,
                discovery.answer_burst,
                max_hop_limit=max(discovery.ring_schedule),
                source_rate=discovery.source_rate,
                source_burst=discovery.source_burst,
            )
        self.groups: list[IPAddress] = [
            g for g in discovery.query_groups if g.version == 4 or interface6
        ]
        self.group_ports: dict[int, Any] = {}
        self.unicast_ports: dict[int, Any] = {}
        self.searches: dict[bytes, _Search] = {}
        self.replies: dict[ReplyKey, Any] = {}
        # node id -> (its cookie for our address, when it came)
        self.cookies: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()
        # node id -> (the hop limit a search found it at, when): expected by the next
        self.heard: OrderedDict[bytes, tuple[int, float]] = OrderedDict()
        self.counters = {
            "received": 0,
            "malformed": 0,
            "offers_received": 0,
            "stray": 0,
            "searches": 0,
            "followups": 0,
            "repeats": 0,
            "send_errors": 0,
        }

    # -- life cycle

    def start(self, listen_group: bool = True) -> None:
        """Open the sockets; ``listen_group`` False makes a CN that only takes unicast offers."""
        for family in {multicast.family_of(g) for g in self.groups}:
            iface = self.interface if family == socket.AF_INET else self.interface6
            if listen_group:
                port = multicast.listen(
                    self.reactor,
                    _Datagrams(self, family, "group"),
                    self.d.query_port,
                    family,
                    iface,
                )
                for g in self.groups:
                    if multicast.family_of(g) == family:
                        multicast.join(port, g, iface)
                self.group_ports[family] = port
            self.unicast_ports[family] = multicast.listen(
                self.reactor,
                _Datagrams(self, family, "unicast"),
                0,
                family,
                iface,
                multiple=False,
            )

    def stop(self) -> defer.Deferred[Any]:
        for search in list(self.searches.values()):
            search.deferred.cancel()
        for call in self.replies.values():
            if call.active():
                call.cancel()
        self.replies.clear()
        if self.responder is not None:
            self.responder.cancel_all()
        ports = list(self.group_ports.values()) + list(self.unicast_ports.values())
        self.group_ports.clear()
        self.unicast_ports.clear()
        return defer.gatherResults(
            [defer.maybeDeferred(p.stopListening) for p in ports], consumeErrors=True
        )

    # -- incoming

    def received(self, message: Query | Offer, addr: tuple[str, int], size: int, via: Any) -> None:
        now = self.clock.seconds()
        if isinstance(message, Query):
            if via.kind != "group" or self.responder is None:
                self.counters["stray"] += 1
                return
            _log.debug(
                "query {request} heard from {host} (hop limit {hops}, {what})",
                request=message.request_id.hex(),
                host=addr[0],
                hops=message.hop_limit,
                what=display_text(
                    message.pattern
                    or message.content_id_prefix
                    or (message.content_id or b"").hex()
                ),
            )
            for action in self.responder.query(message, addr, size, now):
                self._schedule(action, via.family)
                if self.offered is not None and message.reply_to is not None:
                    files = self.responder.files_of(action.key)
                    self.offered(addr[0], [f.content_id for f in files])
            return
        self.counters["offers_received"] += 1
        if self.responder is not None and via.kind == "group":
            self.responder.overheard(message, now)
        if message.node_id == self.node_id:
            return
        search = self.searches.get(message.request_id)
        if search is not None:
            search.apply(search.ring.offer(message, addr[0], now))

    def _schedule(self, action: Schedule, family: int) -> None:
        def fire() -> None:
            self.replies.pop(action.key, None)
            assert self.responder is not None
            sends = self.responder.due(action.key, self.clock.seconds())
            for send in sends:
                self._send_offer(send, family)
            if sends:
                to = sends[0].to
                _log.info(
                    "offer for query {request} sent to {to} (hop limit {hops}): "
                    "{datagrams} datagrams, {nbytes} bytes",
                    request=action.key[0].hex(),
                    to="the group" if to is None else f"{to[0]}:{to[1]}",
                    hops=action.key[1],
                    datagrams=len(sends),
                    nbytes=sum(len(send.data) for send in sends),
                )

        self.replies[action.key] = self.clock.callLater(action.delay, fire)

    def _send_offer(self, send: Send, family: int) -> None:
        port = self.group_ports.get(family)
        if port is None:
            return
        if send.to is None:
            multicast.set_hop_limit(port, family, send.hop_limit)
            for g in self.groups:
                if multicast.family_of(g) == family:
                    self._write(port, send.data, (str(g), self.d.query_port))
        else:
            self._write(port, send.data, send.to)

    def _write(self, port: Any, data: bytes, to: tuple[str, int]) -> None:
        try:
            port.write(data, to)
        except OSError as e:  # EAGAIN, unreachable: a lost datagram, not a crash
            self.counters["send_errors"] += 1
            failed = self.counters["send_errors"]
            # Warn on the 1st, 2nd, 4th, 8th... failure: replies go where queries say.
            _log.emit(
                summary_level(failed),
                "could not send {nbytes} bytes to {to} ({failed} so far): {error}",
                nbytes=len(data),
                to=to,
                failed=failed,
                error=str(e),
            )

    # -- searching

    def search(
        self,
        pattern: str | None = None,
        content_id: bytes | None = None,
        answers: int | None = None,
        schedule: tuple[int, ...] | None = None,
        timeout: float | None = None,
        reply_mode: str | None = None,
        rate: int = 0,
        exclude: tuple[bytes, ...] = (),
        content_id_prefix: str | None = None,
    ) -> defer.Deferred[SearchResult]:
        """Run an expanding-ring search; the Deferred fires with a SearchResult.

        Give one of ``pattern``, ``content_id`` and ``content_id_prefix``
        (8-63 lowercase hex digits: SNs answer with the files whose id starts
        with them; ValueError otherwise, as for a bad pattern).
        """
        mode = reply_mode or self.d.reply_mode
        if mode == "multicast" and not self.group_ports:
            raise ValueError("multicast replies need the group sockets: start(listen_group=True)")
        answers = answers or self.d.answers_wanted
        self.counters["searches"] += 1
        query = Query(
            request_id=os.urandom(8),
            hop_limit=1,
            content_id=content_id,
            pattern=pattern,
            content_id_prefix=content_id_prefix,
            answers_wanted=min(answers, 255),
            rate=rate,
            reply_to=None,
        )
        ring = RingSearch(
            schedule or self.d.ring_schedule,
            timeout or self.d.ring_timeout,
            answers,
            exclude,
            cookies=self._live_cookies() if mode == "unicast" else None,
            expected=self._expected(),
            retry=self._retry(mode, timeout or self.d.ring_timeout),
        )
        # Pattern and prefix queries may match several files: room for their offers.
        pad = self.d.query_padding if content_id is None else 0
        search = _Search(self, ring, query, pad)
        search.mode = mode
        self.searches[query.request_id] = search
        search.apply(ring.start(self.clock.seconds()))
        return search.deferred

    def _live_cookies(self) -> dict[bytes, bytes]:
        now = self.clock.seconds()
        for node_id, (_cookie, when) in list(self.cookies.items()):
            if now - when >= COOKIE_WINDOW:
                del self.cookies[node_id]
        return {node_id: cookie for node_id, (cookie, _when) in self.cookies.items()}

    @staticmethod
    def _retry(mode: str, timeout: float) -> float:
        """Seconds into a ring before asking an expected SN again (0: never)."""
        retry = timeout * RETRY_AFTER
        return retry if mode == "unicast" and retry >= MIN_RETRY else 0.0

    def _expected(self) -> dict[bytes, int]:
        """The SNs searches heard in the last HEARD_WINDOW seconds, with the hop
        limit each was found at: a ring reaching one waits RETRY_AFTER of its
        timeout for it before asking again."""
        now = self.clock.seconds()
        for node_id, (_distance, when) in list(self.heard.items()):
            if now - when >= HEARD_WINDOW:
                del self.heard[node_id]
        return {node_id: distance for node_id, (distance, _when) in self.heard.items()}

    def keep_heard(self, servers: Iterable[ServerRecord]) -> None:
        """Remember the SNs a search heard (the most recent MAX_HEARD)."""
        now = self.clock.seconds()
        for server in servers:
            if server.distance is None:
                continue
            self.heard.pop(server.node_id, None)
            self.heard[server.node_id] = (server.distance, now)
        while len(self.heard) > MAX_HEARD:
            self.heard.popitem(last=False)

    def keep_cookies(self, cookies: dict[bytes, bytes]) -> None:
        """Remember cookies SNs gave us, the most recent MAX_COOKIE_CACHE."""
        now = self.clock.seconds()
        for node_id, cookie in cookies.items():
            self.cookies.pop(node_id, None)
            self.cookies[node_id] = (cookie, now)
        while len(self.cookies) > MAX_COOKIE_CACHE:
            self.cookies.popitem(last=False)

    def send_query(self, search: _Search, action: SendQuery) -> int:
        sent = 0
        for family, uport in self.unicast_ports.items():
            reply_to = None
            if search.mode == "unicast":
                # Unspecified: the SN replies to the query's source address.
                host = "0.0.0.0" if family == socket.AF_INET else "::"
                reply_to = (ipaddress.ip_address(host), uport.getHost().port)
            q = Query(
                request_id=search.query.request_id,
                hop_limit=action.hop_limit,
                content_id=search.query.content_id,
                pattern=search.query.pattern,
                content_id_prefix=search.query.content_id_prefix,
                answers_wanted=search.query.answers_wanted,
                rate=search.query.rate,
                reply_to=reply_to,
                known=action.known,
                cookies=action.cookies if reply_to is not None else (),
                repeat=action.repeat,
            )
            q = dataclasses.replace(q, padding=padding_for(q, search.pad))
            data = encode(q)
            multicast.set_hop_limit(uport, family, action.hop_limit)
            for g in self.groups:
                if multicast.family_of(g) == family:
                    self._write(uport, data, (str(g), self.d.query_port))
                    sent += len(data)
        return sent
