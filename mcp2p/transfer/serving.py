"""ServingService: what this node shares, and the sessions that stream it.

The catalog lives here (it is what the SN serves). Each content gets a
session plan the first time it is offered: a random 32-bit session id
(the RTP SSRC) and a random group from the SSM or ASM pool; the plan stays
the same for the daemon's lifetime so every OFFER and SAP announcement of
that content agrees, and the multicast session that runs for it uses it.

CNs reach the service over the TLS control channel (``ControlServer``);
this class is its ``ServingSide``: manifests, subscriptions, wanted-map
updates, loss reports. One multicast session per (content, block code) is
shared by all its multicast subscribers; each unicast subscriber gets its
own session.

Budgets per peer ([serving], issue 12): a node id holds at most
``subscriptions_per_node`` subscriptions; a wanted map is checked against
the content's unit count when decoded and may hold at most
``max_wanted_ranges`` ranges sent since its last replacement; a loss report
names only packets this session sent and still remembers (others are a
lie: refused), so nothing is expanded beyond the session's sequence ring; a
subscriber that sends neither loss reports nor wanted updates for
``report_timeout`` seconds is unsubscribed. A multicast subscriber whose
loss over ``slow_window`` is at least ``slow_loss`` and four times the
other subscribers' (median) is moved out of the shared session (DESIGN.md
5.6): its subscription ends with ``MOVED``, and its node's next multicast
subscription to that content gets a session of its own on another group,
so one slow receiver (or a liar) cannot hold the others back. Each refusal
is counted and logged in summary.

IPv6 (DESIGN.md 5.7): with ``[node] interface6`` set, the node also serves
IPv6: its IPv6 address (the first global one of that interface) is the
source of its IPv6 SSM sessions, its data goes out of a second data port
bound to that address, and the control channel listens there too. A CN's
Subscribe names the family it receives multicast on (absent: 4), and gets
a session of that family: each content has a plan per family (the IPv6
group from the ff3e::/32 or ff15::/16 part of the pool), and a shared
session per (content, code, family). OFFERs by query carry the IPv4 plan
(the group there is informational: the Subscribe reply is what a CN
joins); SAP announcements on ``[sap] group6`` carry the IPv6 plan.

Who may subscribe at all is ``[serving] subscribers`` under ``[trust]
policy`` (`mcp2p.trust.policy.admit`), judged on the node id and key the CN
proved over TLS: ``refused_subscriber`` counts the refusals.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import statistics
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from mcp2p import multicast
from mcp2p.core.collision import CollisionRule
from mcp2p.core.groups import random_group
from mcp2p.core.wanted import RangeSet
from mcp2p.errors import ProtocolError
from mcp2p.transfer.control import (
    MAX_LISTS_PER_NOTICE,
    ChannelLimits,
    ControlServer,
    NotShared,
    Refused,
    Summary,
    UnknownList,
    UnknownSubscription,
    joined_token,
)
from mcp2p.transfer.encoding import EncodeWorkers
from mcp2p.transfer.hostqueue import HostQueue
from mcp2p.transfer.session import Session, Subscriber, set_dscp
from mcp2p.wire.layout import Layout
from mcp2p.wire.manifest import encode_manifest, sign_manifest
from mcp2p.wire.query import Query
from mcp2p.wire.types import FileOffer

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorMulticast, IReactorProcess, IReactorTCP

    from mcp2p.catalog import Catalog
    from mcp2p.config import NodeSection, ServingSection
    from mcp2p.trust.keys import NodeIdentity

    class IServingReactor(IReactorTime, IReactorTCP, IReactorMulticast, IReactorProcess):
        """What serving uses of the reactor: time, the control channel's TCP
        ports, the UDP ports sessions send from and monitors listen on, and
        the encode workers' processes."""


_log = Logger()
MOVE_TRIES = 64  # random draws for a free ASM group before giving up on a move
MOVED = "moved: far slower than the other receivers; subscribe again for a session of its own"
SLOW_MIN_SAMPLE = 50  # packets a subscriber's window needs to be judged
SLOW_FACTOR = 4  # a slow subscriber loses this many times the others' median loss
SLOW_HOLD = 600.0  # seconds a node moved out stays on sessions of its own for that content
SLOW_NODES = 1024  # (node, content) pairs remembered as slow, the oldest forgotten first
_VARINT_MORE = bytes(range(0x80, 0x100))  # varint bytes that are not a varint's last
MAX_RECEIVED = 1 << 32  # packets one loss report may say were received
EXPECT_FOR = 2.0  # seconds an offer sent to a host makes a new session wait for it
MAX_EXPECTED = 4096  # (content, host) offers remembered, the oldest forgotten first


class Admission(Protocol):
    """Who may subscribe: ``[serving] subscribers`` under ``[trust] policy``
    (the node's `mcp2p.trust.gate.TrustGate`)."""

    @property
    def policy(self) -> str: ...  # [trust] policy, as the refusal's log line names it

    def admission(self, node_id: bytes, public_key: bytes) -> str | None: ...

    def admission_of(self, node_id: bytes, public_key: bytes) -> defer.Deferred[str]: ...


class ServingService(Service):
    name = "serving"  # type: ignore[assignment]

    def __init__(
        self,
        reactor: IServingReactor,
        serving: ServingSection,
        node: NodeSection,
        identity: NodeIdentity,
        trust: Admission,
        catalog: Catalog,
        rng: random.Random | None = None,
    ) -> None:
        """Serves ``catalog`` as ``identity`` (its key signs the manifests and
        the control channel's certificate) under ``serving`` ([serving]), on
        ``node``'s interface and interface6 ([node]); ``trust`` says who may
        subscribe. The catalog is this service's: it starts and stops it."""
        self.reactor = reactor
        self.config = serving
        self.interface = str(node.interface)
        self.interface6 = node.interface6  # "": IPv4 only
        self.identity = identity
        self.trust = trust
        self.catalog = catalog
        self.rng = rng or random.Random()
        self.plans: dict[bytes, tuple[int, Any]] = {}
        self.plans6: dict[bytes, tuple[int, Any]] = {}  # IPv6 plans, with interface6
        self.address6 = ""  # this node's IPv6 address on interface6 ("": IPv4 only)
        self.data_port6: Any = None
        self.control_port6: Any = None
        self.ready: defer.Deferred[None] = defer.Deferred()
        self.manifests: dict[bytes, bytes] = {}
        # multicast, by (content, code, IP version)
        self.sessions: dict[tuple[bytes, str, int], Session] = {}
        self.unicast: set[Session] = set()
        self.subscriptions: dict[int, Subscriber] = {}
        self.next_subscription = 1
        self.control_port: Any = None
        self.data_port: Any = None
        # each data port's queue on this host, by IP version: its sessions share it
        self.host_queues: dict[int, HostQueue] = {}
        self.counters = {
            "connections": 0,
            "rejected": 0,
            "bad_commands": 0,
            "subscriptions": 0,
            "sessions": 0,
            "collisions": 0,
            "move_failed": 0,
            "refused_address": 0,
            "refused_full": 0,
            "box_too_large": 0,
            "write_stalled": 0,
            "idle_closed": 0,
            "refused_node": 0,
            "refused_ranges": 0,
            "refused_loss": 0,
            "silent_dropped": 0,
            "slow_moved": 0,
            "refused_subscriber": 0,
            "lists_resent": 0,
            "lists_unknown": 0,
        }
        self.solo: set[Session] = set()  # multicast sessions of one moved-out subscriber
        self.heard: dict[int, float] = {}  # subscription -> last report or wanted update
        self.wanted_ranges: dict[int, int] = {}  # subscription -> ranges since a replacement
        self.loss: dict[Session, tuple[float, dict[int, list[int]]]] = {}  # slow_window stats
        self.slow: OrderedDict[tuple[bytes, bytes], float] = OrderedDict()  # -> until
        self.checker: task.LoopingCall | None = None
        self.monitors: dict[Session, Any] = {}
        self.contents: dict[Session, Any] = {}  # the catalog entry each live session streams
        # processes that make RaptorQ repair symbols (``Session._prefetch``), started when needed
        self.encode_workers = (
            EncodeWorkers(reactor, serving.encode_workers) if serving.encode_workers else None
        )
        self.ended: dict[str, int] = {}  # the sums of the ended sessions' counters
        # (content id, host) -> when an offer of it went to that host (``offered``)
        self.expected: OrderedDict[tuple[bytes, str], float] = OrderedDict()

    def startService(self) -> None:
        super().startService()
        s = self.config
        iface = self.interface
        from twisted.internet.protocol import Factory

        from mcp2p.trust.tls import tls_server_factory

        limits = ChannelLimits.from_config(s)
        factory = Factory.forProtocol(
            lambda: ControlServer(self, self.counters, limits, self.reactor)
        )
        from mcp2p.listening import listen_or_exit

        tls = tls_server_factory(
            self.identity,
            factory,
            self.reactor,
            handshake_timeout=s.handshake_timeout,
            per_address=s.connections_per_address,
            max_connections=s.max_connections,
            counters=self.counters,
        )
        self.control_port = listen_or_exit(
            # Twisted's own annotations refuse its TLS wrapping factory as listenTCP's.
            lambda: self.reactor.listenTCP(s.control_port, tls, interface=iface),  # type: ignore[arg-type]
            "[serving] control_port",
        )
        self.data_port = self._data_port(socket.AF_INET, iface, "")
        self.host_queues[4] = HostQueue.of(self.data_port)
        interface6 = self.interface6
        if interface6:
            self.address6 = multicast.interface_address6(interface6)
            # The same port number on IPv6, so an OFFER's control_port holds for both.
            number = int(self.control_port.getHost().port)
            self.control_port6 = listen_or_exit(
                lambda: self.reactor.listenTCP(number, tls, interface=self.address6),  # type: ignore[arg-type]
                "[serving] control_port (IPv6)",
            )
            self.data_port6 = self._data_port(socket.AF_INET6, interface6, self.address6)
            self.host_queues[6] = HostQueue.of(self.data_port6)
            _log.info(
                "serving IPv6 too: sessions from {address} on {interface}",
                address=self.address6,
                interface=interface6,
            )
        d = self.catalog.start()

        def scanned(_: Any) -> None:
            _log.info("sharing {files} files", files=len(self.catalog))
            if not self.ready.called:
                self.ready.callback(None)

        def failed(f: Any) -> None:
            _log.failure("first scan of the shared directories failed", f)
            if not self.ready.called:
                self.ready.callback(None)

        d.addCallbacks(scanned, failed)

    def _data_port(self, family: int, interface: str, bind: str) -> Any:
        """The UDP port sessions of ``family`` send from (bound to ``bind``)."""
        s = self.config
        port = multicast.listen(
            self.reactor, _Silent(), 0, family, interface, multiple=False, bind=bind
        )
        multicast.set_hop_limit(port, family, s.ttl)
        multicast.set_buffers(port, send=4 << 20)
        set_dscp(port, family, s.dscp)
        return port

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        if self.checker is not None and self.checker.running:
            self.checker.stop()
        for session in list(self.sessions.values()) + list(self.unicast) + list(self.solo):
            session.end("node stopping")
        ports = [
            p
            for p in (self.control_port, self.data_port, self.control_port6, self.data_port6)
            if p is not None
        ]
        self.control_port = self.data_port = self.control_port6 = self.data_port6 = None
        workers = [self.encode_workers.stop()] if self.encode_workers is not None else []
        return defer.gatherResults(
            workers
            + [defer.maybeDeferred(self.catalog.stop)]
            + [defer.maybeDeferred(p.stopListening) for p in ports],
            consumeErrors=True,
        )

    # -- ServingSide: what the control channel asks for

    def manifest_bytes(self, content_id: bytes) -> bytes:
        entry = self.catalog.get(content_id)
        if entry is None:
            raise NotShared(content_id.hex())
        data = self.manifests.get(content_id)
        if data is None:
            data = encode_manifest(
                sign_manifest(
                    entry.content_id,
                    entry.name,
                    entry.size,
                    entry.piece_length,
                    self.block_length(entry),
                    entry.piece_hashes,
                    self.identity.private_key,
                )
            )
            self.manifests[content_id] = data
        return data

    def block_length(self, entry: Any) -> int:
        return min(self.config.block_length, entry.piece_length)

    def subscribe(
        self,
        client: ControlServer,
        content_id: bytes,
        mode: str,
        port: int,
        rate: int,
        code: str,
        wanted: bytes,
        more: bool,
        family: int | None = None,
        lists: int | None = None,
        drained: bool | None = None,
        joined: str | None = None,
    ) -> Any:
        """`_subscribe`'s answer once [serving] subscribers admits the CN: a dict,
        or a Deferred of one when the key servers must be asked first."""
        kw = dict(
            content_id=content_id,
            mode=mode,
            port=port,
            rate=rate,
            code=code,
            wanted=wanted,
            more=more,
            family=family,
            lists=lists,
            drained=drained,
            joined=joined,
        )
        node_id, key = client.peer_node_id or b"", client.peer_public_key or b""
        why = self.trust.admission(node_id, key)
        if why is None:
            d = self.trust.admission_of(node_id, key)
            return d.addCallback(lambda why: self._admitted(why, client, kw))
        return self._admitted(why, client, kw)

    def _admitted(self, why: str, client: ControlServer, kw: dict[str, Any]) -> dict[str, Any]:
        if why:
            s = self.config
            listed = s.subscribers if isinstance(s.subscribers, str) else "a list"
            Summary(self.counters, "refused_subscriber")(
                "node {node} may not subscribe: {why} ([serving] subscribers = {subscribers}, "
                "[trust] policy = {policy})",
                node=(client.peer_node_id or b"").hex()[:12],
                why=why,
                subscribers=listed,
                policy=self.trust.policy,
            )
            raise Refused(f"this node may not subscribe here: {why}")
        return self._subscribe(client, **kw)

    def _subscribe(
        self,
        client: ControlServer,
        content_id: bytes,
        mode: str,
        port: int,
        rate: int,
        code: str,
        wanted: bytes,
        more: bool,
        family: int | None = None,
        lists: int | None = None,
        drained: bool | None = None,
        joined: str | None = None,
    ) -> dict[str, Any]:
        from mcp2p.plugins import code_by_name

        entry = self.catalog.get(content_id)
        if entry is None:
            raise NotShared(content_id.hex())
        if mode not in ("multicast", "unicast"):
            raise Refused(f"mode must be multicast or unicast, not {mode!r}")
        try:
            block_code = code_by_name(code, mode)
        except (KeyError, ValueError):
            raise Refused(f"no block code named {code!r}") from None
        if mode == "unicast" and not 1 <= port <= 65535:
            raise Refused("unicast mode needs the CN's UDP port")
        if lists is not None and lists < 1:
            raise Refused(f"lists must be at least 1, not {lists}")
        version = self._family(family)
        s = self.config
        node_id = client.peer_node_id or b""
        held = sum(1 for x in self.subscriptions.values() if x.client.peer_node_id == node_id)
        if held >= s.subscriptions_per_node:
            Summary(self.counters, "refused_node")(
                "node {node} asked for more than [serving] subscriptions_per_node = {limit} "
                "subscriptions: refused",
                node=node_id.hex()[:12],
                limit=s.subscriptions_per_node,
            )
            raise Refused(f"this node already holds {held} subscriptions here, the most allowed")
        layout = Layout(entry.size, entry.piece_length, self.block_length(entry))
        wanted_set = RangeSet.decode(wanted, limit=block_code.units(layout))
        ranges = self._count_ranges(wanted, 0)
        if rate < 0:
            raise Refused(f"rate must be a bit/s count, or 0 for the SN's default, not {rate}")
        ceiling = self.ceiling(rate)
        granted = min(max(rate or s.rate, s.min_rate), s.max_rate)  # a new session's start
        now = self.reactor.seconds()
        session: Session
        fresh = False  # a new shared multicast session: it may gather its CNs
        if mode == "multicast" and self.slow.get((node_id, content_id), 0.0) > now:
            # Moved out of the shared session for being far slower: one of its own.
            source = self._source(version) if s.group_mode == "ssm" else ""
            group = self._free_group(s.ssm_pool if source else s.asm_pool, version)
            session = self._session(
                entry,
                layout,
                block_code,
                self._new_session_id(),
                (group, s.data_port),
                granted,
                group,
                source,
                version,
            )
            self.solo.add(session)
            if not source:
                self._monitor(session)
        elif mode == "multicast":
            key = (content_id, block_code.name, version)
            shared = self.sessions.get(key)
            if shared is not None and shared.state != "ENDED":
                session = shared
            else:
                fresh = True
                session_id, group = self._plan(content_id, version)
                if block_code.name != "plain":
                    session_id = self._new_session_id()
                source = self._source(version) if s.group_mode == "ssm" else ""
                session = self._session(
                    entry,
                    layout,
                    block_code,
                    session_id,
                    (str(group), s.data_port),
                    granted,
                    str(group),
                    source,
                    version,
                )
                self.sessions[key] = session
                if not source:
                    self._monitor(session)
        else:
            transport: Any = client.transport
            host = transport.getPeer().host
            # Sent back to where the control channel came from, in its family.
            peer_version = 6 if ":" in host else 4
            if peer_version == 6 and self.data_port6 is None:
                raise Refused("unicast over IPv6 needs [node] interface6 on this SN")
            session = self._session(
                entry,
                layout,
                block_code,
                self._new_session_id(),
                (host, port),
                granted,
                version=peer_version,
            )
            self.unicast.add(session)
        sub = Subscriber(
            self.next_subscription,
            client,
            session,
            ceiling=ceiling,
            lists=min(lists or 1, MAX_LISTS_PER_NOTICE),
            drained=bool(drained),
        )
        self.next_subscription += 1
        self.subscriptions[sub.id] = sub
        self.counters["subscriptions"] += 1
        self.heard[sub.id] = now
        self.wanted_ranges[sub.id] = ranges
        session.add(sub, wanted_set)
        if mode == "multicast":
            host = _host_of(client)
            if fresh:
                session.gather(self._expected_hosts(content_id, now), s.gather)
            self.expected.pop((content_id, host), None)
            session.arrived(host)
            if joined == joined_token(session.group, session.source, session.destination[1]):
                session.joined(sub.id)  # in the group already: no Joined round trip to wait for
        self._start_checker()
        peer = (client.peer_node_id or b"").hex()[:12]
        _log.info(
            "subscription {sub} from {peer}: {name} by {mode}, session {sid:08x}, "
            "at most {ceiling} bit/s, now {rate}",
            sub=sub.id,
            peer=peer,
            name=entry.name,
            mode=mode,
            sid=session.session_id,
            ceiling=ceiling,
            rate=session.rates.rate,
        )
        if 0 < rate < s.min_rate:
            _log.info(
                "subscription {sub} from {peer} asked for {rate} bit/s, below [serving] "
                "min_rate: sending at up to {min_rate} bit/s (the reply's rate says so)",
                sub=sub.id,
                peer=peer,
                rate=rate,
                min_rate=s.min_rate,
            )
        return {
            "subscription": sub.id,
            "session_id": session.session_id,
            "group": session.group,
            "source": session.source,
            "port": session.destination[1],
            "block_length": layout.block_length,
            "rate": int(session.rates.rate),
            "code": block_code.name,
        }

    def ceiling(self, rate: int) -> int:
        """The most a subscriber asking for ``rate`` bit/s (0: no wish) is sent.

        A user's --rate is a ceiling the SN honours (DESIGN.md 5.6), within
        [serving] max_rate. Below min_rate the SN grants min_rate rather than
        refuse: a session slower than that is what the operator ruled out, and
        the CN would rather have the file a little fast than not at all; the
        reply's rate tells the CN, and the log says so.
        """
        s = self.config
        if rate == 0:
            return int(s.max_rate)
        return int(min(max(rate, s.min_rate), s.max_rate))

    def _family(self, family: int | None) -> int:
        """The IP version a Subscribe asks for (absent: 4), if this node serves it."""
        if family in (None, 0, 4):
            return 4
        if family != 6:
            raise Refused(f"family must be 4 or 6, not {family}")
        if self.data_port6 is None:
            raise Refused("this node serves IPv4 only (no [node] interface6)")
        return 6

    def _source(self, version: int) -> str:
        """This node's address as the source of its SSM sessions of ``version``."""
        return self.interface if version == 4 else self.address6

    def _new_session_id(self) -> int:
        used = {p[0] for p in list(self.plans.values()) + list(self.plans6.values())} | {
            x.session_id
            for x in list(self.sessions.values()) + list(self.unicast) + list(self.solo)
        }
        while True:
            sid = self.rng.getrandbits(32)
            if sid and sid not in used:
                return sid

    def _session(
        self,
        entry: Any,
        layout: Layout,
        code: Any,
        session_id: int,
        destination: tuple[str, int],
        rate: int,
        group: str = "",
        source: str = "",
        version: int = 4,
    ) -> Session:
        s = self.config
        self.counters["sessions"] += 1
        session = Session(
            self.reactor,
            session_id=session_id,
            layout=layout,
            code=code,
            path=entry.path,
            destination=destination,
            port=self.data_port6 if version == 6 else self.data_port,
            rate=rate,
            min_rate=s.min_rate,
            max_rate=s.max_rate,
            grace=s.grace,
            on_end=self._session_ended,
            rng=self.rng,
            group=group,
            source=source,
            scheduler=s.scheduler,
            workers=self.encode_workers,
            host_queue=self.host_queues.get(version),
        )
        self.contents[session] = entry
        return session

    def _monitor(self, session: Session) -> None:
        """Listen on an ASM session's group for other sessions (DESIGN.md 5.7)."""
        group = ipaddress.ip_address(session.group)
        family = multicast.family_of(group)
        iface = self._interface(group.version)
        port = multicast.listen(
            self.reactor,
            _Monitor(self.reactor, session, self._collided),
            session.destination[1],
            family,
            iface,
        )
        multicast.join(port, group, iface)
        self.monitors[session] = port

    def _interface(self, version: int) -> str:
        """What multicast joins name as the interface: the IPv4 address, or
        the IPv6 interface's name."""
        return self.interface if version == 4 else self.interface6

    def _collided(self, session: Session) -> None:
        """ASM ``session`` heard another session on its group and must move."""
        self.counters["collisions"] += 1
        self._move(session)

    def _move(self, session: Session) -> None:
        s = self.config
        version = ipaddress.ip_address(session.group).version
        iface = self.interface if version == 4 else self.interface6
        taken = {x.group for x in self.sessions.values()}
        for _ in range(MOVE_TRIES):
            group = random_group(s.asm_pool, version, self.rng)
            if str(group) not in taken:
                break
        else:
            # Our own sessions hold (nearly) every group of the pool: moving
            # cannot help, and an unbounded search here froze the reactor
            # (the lab's 100 sessions on a /28). Stay; receivers drop the
            # other session's packets by SSRC.
            self.counters["move_failed"] += 1
            if self.counters["move_failed"] == 1:  # once, not once per collision
                _log.warn(
                    "session {sid:08x} hears another session on {group} but every group "
                    "of the ASM pool is in use here: staying (counted in move_failed)",
                    sid=session.session_id,
                    group=session.group,
                )
            return
        port = self.monitors.get(session)
        if port is not None:
            multicast.leave(port, ipaddress.ip_address(session.group), iface)
            multicast.join(port, group, iface)
        session.move(str(group))

    def _session_ended(self, session: Session) -> None:
        self.contents.pop(session, None)
        for name, count in session.counters.items():
            self.ended[name] = self.ended.get(name, 0) + count
        port = self.monitors.pop(session, None)
        if port is not None:
            port.stopListening()
        self.unicast.discard(session)
        self.solo.discard(session)
        self.loss.pop(session, None)
        for key, value in list(self.sessions.items()):
            if value is session:
                del self.sessions[key]
        for sid, sub in list(self.subscriptions.items()):
            if sub.session is session:
                self._forget(sid)

    def _forget(self, subscription: int) -> None:
        self.subscriptions.pop(subscription, None)
        self.heard.pop(subscription, None)
        self.wanted_ranges.pop(subscription, None)

    def _subscription(self, client: ControlServer, subscription: int) -> Subscriber:
        sub = self.subscriptions.get(subscription)
        if sub is None or sub.client is not client:
            raise UnknownSubscription(str(subscription))
        return sub

    def update_wanted(
        self, client: ControlServer, subscription: int, wanted: bytes, replace: bool
    ) -> None:
        sub = self._subscription(client, subscription)
        units = sub.session.units
        before = 0 if replace else self.wanted_ranges.get(sub.id, 0)
        self._count_ranges(wanted, before)  # before decoding
        wanted_set = RangeSet.decode(wanted, limit=units)  # O(bytes): at most 64 KiB
        self.wanted_ranges[sub.id] = before + len(wanted_set.ranges())
        self.heard[sub.id] = self.reactor.seconds()
        sub.session.set_wanted(sub, wanted_set, replace)

    def joined(self, client: ControlServer, subscription: int) -> None:
        """The CN of ``subscription`` is in its session's group (Joined)."""
        sub = self._subscription(client, subscription)
        self.heard[sub.id] = self.reactor.seconds()
        sub.session.joined(sub.id)

    def _count_ranges(self, wanted: bytes, before: int) -> int:
        """``before`` plus the ranges encoded in ``wanted``, or ``Refused`` past
        [serving] max_wanted_ranges: counted on the bytes, before decoding
        (each range is two varints, and a varint ends in one byte < 0x80)."""
        limit = self.config.max_wanted_ranges
        total = before + (len(wanted.translate(None, _VARINT_MORE)) + 1) // 2
        if total > limit:
            Summary(self.counters, "refused_ranges")(
                "a wanted map of {total} ranges, over [serving] max_wanted_ranges = {limit}: "
                "refused",
                total=total,
                limit=limit,
            )
            raise Refused(f"wanted map of {total} ranges, more than the {limit} allowed")
        return total

    def report_loss(
        self, client: ControlServer, subscription: int, lost: bytes, received: int
    ) -> int:
        sub = self._subscription(client, subscription)
        if not 0 <= received <= MAX_RECEIVED:
            raise ProtocolError(f"received must be within 0..{MAX_RECEIVED}, not {received}")
        session = sub.session
        lost_set = RangeSet.decode(lost, limit=1 << 32)  # O(bytes): at most 64 KiB
        last = lost_set.last()
        if last is not None and session.seq <= 0xFFFFFFFF and last >= session.seq:
            Summary(self.counters, "refused_loss")(
                "a loss report names packet {last}, but session {sid:08x} sent only {sent}: "
                "refused",
                last=last,
                sid=session.session_id,
                sent=session.seq,
            )
            raise ProtocolError(f"loss report names packet {last}, never sent")
        # Only what the session still remembers can be sent again: at most its ring.
        oldest = max(0, session.seq - len(session.seq_units))
        if lost_set and (lost_set.first() or 0) < oldest:
            lost_set.remove_range(0, oldest)
        self.heard[sub.id] = now = self.reactor.seconds()
        rate = session.report_loss(sub, lost_set, received)
        if session.group and sub.id in self.subscriptions:
            self._judge(session, sub.id, len(lost_set), received, now)
        return rate

    # -- slow receivers and silent subscribers

    def _judge(self, session: Session, sub_id: int, lost: int, received: int, now: float) -> None:
        """Count ``sub_id``'s loss; at the end of each slow_window, move out a
        subscriber far slower than the others (DESIGN.md 5.6)."""
        s = self.config
        since, window = self.loss.get(session) or (now, {})
        self.loss[session] = (since, window)
        w = window.setdefault(sub_id, [0, 0])
        w[0] += lost
        w[1] += received
        if now - since < s.slow_window:
            return
        del self.loss[session]
        losses = {
            k: v[0] / (v[0] + v[1])
            for k, v in window.items()
            if v[0] + v[1] >= SLOW_MIN_SAMPLE and k in session.subscribers
        }
        if len(losses) < 2:
            return
        for k, loss in losses.items():
            others = statistics.median(v for o, v in losses.items() if o != k)
            if loss >= s.slow_loss and loss >= SLOW_FACTOR * others:
                self._move_out(session, session.subscribers[k], loss, others)

    def _move_out(self, session: Session, sub: Subscriber, loss: float, others: float) -> None:
        entry = self.contents.get(session)
        node_id = sub.client.peer_node_id or b""
        if entry is not None:
            key = (node_id, entry.content_id)
            self.slow.pop(key, None)
            self.slow[key] = self.reactor.seconds() + SLOW_HOLD
            while len(self.slow) > SLOW_NODES:
                self.slow.popitem(last=False)
        Summary(self.counters, "slow_moved")(
            "subscription {sub} of node {node} lost {loss:.0%} of session {sid:08x}, the "
            "others {others:.0%}: moved to a session of its own",
            sub=sub.id,
            node=node_id.hex()[:12],
            loss=loss,
            sid=session.session_id,
            others=others,
        )
        self._end_subscription(sub, MOVED)

    def _end_subscription(self, sub: Subscriber, reason: str) -> None:
        self._forget(sub.id)
        try:
            sub.client.session_ended(sub.id, reason)
        except Exception:  # a closed channel changes nothing here
            pass
        sub.session.remove(sub.id)

    def _start_checker(self) -> None:
        if self.checker is None:
            self.checker = task.LoopingCall(self._check_silent)
            self.checker.clock = self.reactor
        if not self.checker.running:
            timeout = self.config.report_timeout
            self.checker.start(min(1.0, timeout / 4), now=False)

    def _check_silent(self) -> None:
        """Unsubscribe whoever sent neither loss reports nor wanted updates
        for [serving] report_timeout: it does not read, or is gone."""
        timeout = self.config.report_timeout
        now = self.reactor.seconds()
        for sid, sub in list(self.subscriptions.items()):
            if now - self.heard.get(sid, now) > timeout:
                Summary(self.counters, "silent_dropped")(
                    "subscription {sub} of node {node} sent no report for {timeout}s: ended",
                    sub=sid,
                    node=(sub.client.peer_node_id or b"").hex()[:12],
                    timeout=timeout,
                )
                self._end_subscription(sub, "no reports")
        if not self.subscriptions and self.checker is not None and self.checker.running:
            self.checker.stop()

    def _free_group(self, pool: Any, version: int = 4) -> str:
        taken = {x.group for x in list(self.sessions.values()) + list(self.solo)}
        for _ in range(MOVE_TRIES):
            group = str(random_group(pool, version, self.rng))
            if group not in taken:
                return group
        raise Refused("no free multicast group left for a session of its own")

    def digest_list(self, client: ControlServer, subscription: int, first: int) -> bytes:
        """A digest list the subscriber missed on the data path (UnknownList
        when its session no longer keeps it)."""
        sub = self._subscription(client, subscription)
        packet = sub.session.digest_list(first)
        if packet is None:
            self.counters["lists_unknown"] += 1
            raise UnknownList(f"no list starting at {first}")
        self.counters["lists_resent"] += 1
        return packet

    def unsubscribe(self, client: ControlServer, subscription: int) -> None:
        sub = self._subscription(client, subscription)
        self._forget(subscription)
        sub.session.remove(sub.id)

    def disconnected(self, client: ControlServer) -> None:
        for sid, sub in list(self.subscriptions.items()):
            if sub.client is client:
                self._forget(sid)
                sub.session.remove(sub.id)

    def _plan(self, content_id: bytes, version: int = 4) -> tuple[int, Any]:
        plans = self.plans6 if version == 6 else self.plans
        plan = plans.get(content_id)
        if plan is None:
            s = self.config
            pool = s.ssm_pool if s.group_mode == "ssm" else s.asm_pool
            try:
                group = random_group(pool, version, self.rng)
            except ValueError as e:  # the operator's pools leave out this family
                raise Refused(str(e)) from None
            plan = (self._new_session_id(), group)
            plans[content_id] = plan
        return plan

    def offer_for(self, entry: Any, version: int = 4) -> FileOffer:
        """The OFFER of ``entry``'s session of IP ``version`` (6 needs interface6)."""
        s = self.config
        session, group = self._plan(entry.content_id, version)
        source = ipaddress.ip_address(self._source(version))
        return FileOffer(
            content_id=entry.content_id,
            name=entry.name,
            size=entry.size,
            block_length=min(s.block_length, entry.piece_length),
            piece_length=entry.piece_length,
            session_id=session,
            group=group,
            source=source if s.group_mode == "ssm" else None,
            port=s.data_port,
            rate=s.rate,
            control_port=self._control_port(),
        )

    def _control_port(self) -> int:
        if self.control_port is not None:
            return int(self.control_port.getHost().port)
        return self.config.control_port or 1

    def offered(self, host: str, content_ids: Sequence[bytes]) -> None:
        """The query responder sent ``host`` an offer of these files: it may
        subscribe soon (a new multicast session of one of them waits for it,
        see ``Session.gather``). Kept EXPECT_FOR seconds, MAX_EXPECTED at most."""
        now = self.reactor.seconds()
        expected = self.expected
        ids = set(content_ids[:MAX_EXPECTED])
        for content_id in ids:
            expected.pop((content_id, host), None)
            expected[(content_id, host)] = now
        while len(expected) > MAX_EXPECTED:
            expected.popitem(last=False)
        for (content_id, _, _), session in self.sessions.items():
            # Only a session that sent nothing yet can wait: the subscribers'
            # hosts are looked at for those alone, not on every query.
            if (
                content_id in ids
                and not session.seq
                and host not in (_host_of(s.client) for s in session.subscribers.values())
            ):
                session.expect(host)  # still gathering: it waits for this one too

    def _expected_hosts(self, content_id: bytes, now: float) -> list[str]:
        """The hosts offered ``content_id`` in the last EXPECT_FOR seconds that
        have not subscribed to it since, the first offered first."""
        expected = self.expected
        while expected:
            key = next(iter(expected))
            if now - expected[key] <= EXPECT_FOR:
                break
            del expected[key]
        return [host for (cid, host) in expected if cid == content_id]

    def lookup(self, query: Query) -> Sequence[FileOffer]:
        """The files matching a QUERY, as offers."""
        if query.content_id is not None:
            entry = self.catalog.get(query.content_id)
            return [] if entry is None else [self.offer_for(entry)]
        if query.content_id_prefix is not None:
            return [self.offer_for(e) for e in self.catalog.match_prefix(query.content_id_prefix)]
        assert query.pattern is not None
        return [self.offer_for(e) for e in self.catalog.match(query.pattern)]

    def live_sessions(self) -> list[Session]:
        """The sessions not yet ended, multicast first."""
        return [x for x in self.sessions.values() if x.state != "ENDED"] + [
            x for x in list(self.solo) + list(self.unicast) if x.state != "ENDED"
        ]

    def session_totals(self) -> dict[str, int]:
        """Each session counter (packets, bytes, send errors...) summed over
        every session this node ran, ended or live."""
        out = dict(self.ended)
        for session in self.live_sessions():
            for key, value in session.counters.items():
                out[key] = out.get(key, 0) + value
        return out

    def offers(self, version: int = 4) -> list[FileOffer]:
        """Every shared file's offer, its session of IP ``version``."""
        return [self.offer_for(e, version) for e in self.catalog.entries()]


class _Monitor(DatagramProtocol):
    """Listens on an ASM session's group: another SSRC there means a collision.

    What to do about it is `core.collision.CollisionRule`'s decision; this
    reads the SSRCs and calls ``collided(session)`` when the rule says move.
    """

    noisy = False

    def __init__(
        self, clock: IReactorTime, session: Session, collided: Callable[[Session], None]
    ) -> None:
        self.clock = clock
        self.session = session
        self.collided = collided
        self.rule = CollisionRule()

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if len(data) < 12 or self.session.state == "ENDED":
            return
        ssrc = int.from_bytes(data[8:12], "big")
        if self.rule.hear(ssrc, self.session.session_id, self.clock.seconds()) == "move":
            self.collided(self.session)


class _Silent(DatagramProtocol):
    """The data port only sends; anything arriving on it is ignored."""

    noisy = False

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        pass


def _host_of(client: Any) -> str:
    """The host a control channel comes from ("" if its transport cannot say)."""
    try:
        return str(client.transport.getPeer().host)
    except Exception:
        return ""
