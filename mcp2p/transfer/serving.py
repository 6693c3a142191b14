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
"""

from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from mcp2p import multicast
from mcp2p.core.groups import random_group
from mcp2p.core.layout import Layout
from mcp2p.core.wanted import RangeSet
from mcp2p.errors import ProtocolError
from mcp2p.transfer.control import ControlServer, NotShared, Refused, UnknownSubscription
from mcp2p.transfer.session import Session, Subscriber, set_dscp
from mcp2p.wire.manifest import encode_manifest, sign_manifest
from mcp2p.wire.query import Query
from mcp2p.wire.types import FileOffer

_log = Logger()
MOVE_TRIES = 64  # random draws for a free ASM group before giving up on a move


class ServingService(Service):
    name = "serving"  # type: ignore[assignment]

    def __init__(self, node: Any, catalog: Any, rng: random.Random | None = None) -> None:
        self.node = node
        self.catalog = catalog
        self.rng = rng or random.Random()
        self.plans: dict[bytes, tuple[int, Any]] = {}
        self.ready: defer.Deferred[None] = defer.Deferred()
        self.manifests: dict[bytes, bytes] = {}
        self.sessions: dict[tuple[bytes, str], Session] = {}  # multicast, by (content, code)
        self.unicast: set[Session] = set()
        self.subscriptions: dict[int, Subscriber] = {}
        self.next_subscription = 1
        self.control_port: Any = None
        self.data_port: Any = None
        self.counters = {
            "connections": 0,
            "rejected": 0,
            "bad_commands": 0,
            "subscriptions": 0,
            "sessions": 0,
            "collisions": 0,
            "move_failed": 0,
        }
        self.monitors: dict[Session, Any] = {}
        self.contents: dict[Session, Any] = {}  # the catalog entry each live session streams
        self.ended: dict[str, int] = {}  # the sums of the ended sessions' counters

    def startService(self) -> None:  # noqa: N802
        super().startService()
        s = self.node.config.serving
        iface = str(self.node.config.node.interface)
        from twisted.internet.protocol import Factory

        from mcp2p.trust.tls import tls_server_factory

        factory = Factory.forProtocol(lambda: ControlServer(self, self.counters))
        from mcp2p.app import listen_or_exit

        self.control_port = listen_or_exit(
            lambda: self.node.reactor.listenTCP(
                s.control_port,
                tls_server_factory(self.node.identity, factory, self.node.reactor),
                interface=iface,
            ),
            "[serving] control_port",
        )
        self.data_port = multicast.listen(
            self.node.reactor, _Silent(), 0, socket.AF_INET, iface, multiple=False
        )
        multicast.set_hop_limit(self.data_port, socket.AF_INET, s.ttl)
        multicast.set_buffers(self.data_port, send=4 << 20)
        set_dscp(self.data_port, socket.AF_INET, s.dscp)
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

    def stopService(self) -> defer.Deferred[Any]:  # noqa: N802
        super().stopService()
        for session in list(self.sessions.values()) + list(self.unicast):
            session.end("node stopping")
        ports = [p for p in (self.control_port, self.data_port) if p is not None]
        self.control_port = self.data_port = None
        return defer.gatherResults(
            [defer.maybeDeferred(self.catalog.stop)]
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
                    self.node.identity.private_key,
                )
            )
            self.manifests[content_id] = data
        return data

    def block_length(self, entry: Any) -> int:
        return min(self.node.config.serving.block_length, entry.piece_length)

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
    ) -> dict[str, Any]:
        from mcp2p.core.blockcode import code_by_name

        entry = self.catalog.get(content_id)
        if entry is None:
            raise NotShared(content_id.hex())
        try:
            block_code = code_by_name(code)
        except (KeyError, ValueError):
            raise Refused(f"no block code named {code!r}") from None
        if mode not in ("multicast", "unicast"):
            raise Refused(f"mode must be multicast or unicast, not {mode!r}")
        if mode == "unicast" and not 1 <= port <= 65535:
            raise Refused("unicast mode needs the CN's UDP port")
        layout = Layout(entry.size, entry.piece_length, self.block_length(entry))
        wanted_set = RangeSet.decode(wanted, limit=block_code.units(layout))
        s = self.node.config.serving
        if rate < 0:
            raise Refused(f"rate must be a bit/s count, or 0 for the SN's default, not {rate}")
        ceiling = self.ceiling(rate)
        granted = min(max(rate or s.rate, s.min_rate), s.max_rate)  # a new session's start
        if mode == "multicast":
            key = (content_id, block_code.name)
            session = self.sessions.get(key)
            if session is None or session.state == "ENDED":
                session_id, group = self._plan(content_id)
                if block_code.name != "plain":
                    session_id = self._new_session_id()
                source = str(self.node.config.node.interface) if s.group_mode == "ssm" else ""
                session = self._session(
                    entry,
                    layout,
                    block_code,
                    session_id,
                    (str(group), s.data_port),
                    granted,
                    str(group),
                    source,
                )
                self.sessions[key] = session
                if not source:
                    self._monitor(session)
        else:
            transport: Any = client.transport
            host = transport.getPeer().host
            session = self._session(
                entry, layout, block_code, self._new_session_id(), (host, port), granted
            )
            self.unicast.add(session)
        sub = Subscriber(self.next_subscription, client, session, ceiling=ceiling)
        self.next_subscription += 1
        self.subscriptions[sub.id] = sub
        self.counters["subscriptions"] += 1
        session.add(sub, wanted_set)
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
        s = self.node.config.serving
        if rate == 0:
            return int(s.max_rate)
        return int(min(max(rate, s.min_rate), s.max_rate))

    def _new_session_id(self) -> int:
        used = {p[0] for p in self.plans.values()} | {
            x.session_id for x in list(self.sessions.values()) + list(self.unicast)
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
    ) -> Session:
        s = self.node.config.serving
        self.counters["sessions"] += 1
        session = Session(
            self.node.reactor,
            session_id=session_id,
            layout=layout,
            code=code,
            path=entry.path,
            destination=destination,
            port=self.data_port,
            rate=rate,
            min_rate=s.min_rate,
            max_rate=s.max_rate,
            grace=s.grace,
            on_end=self._session_ended,
            rng=self.rng,
            group=group,
            source=source,
            scheduler=s.scheduler,
        )
        self.contents[session] = entry
        return session

    def _monitor(self, session: Session) -> None:
        """Listen on an ASM session's group for other sessions (DESIGN.md 5.7)."""
        iface = str(self.node.config.node.interface)
        port = multicast.listen(
            self.node.reactor,
            _Monitor(self, session),
            session.destination[1],
            socket.AF_INET,
            iface,
        )
        multicast.join(port, ipaddress.ip_address(session.group), iface)
        self.monitors[session] = port

    def _move(self, session: Session) -> None:
        s = self.node.config.serving
        iface = str(self.node.config.node.interface)
        taken = {x.group for x in self.sessions.values()}
        for _ in range(MOVE_TRIES):
            group = random_group(s.asm_pool, 4, self.rng)
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
        for key, value in list(self.sessions.items()):
            if value is session:
                del self.sessions[key]
        for sid, sub in list(self.subscriptions.items()):
            if sub.session is session:
                del self.subscriptions[sid]

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
        sub.session.set_wanted(sub, RangeSet.decode(wanted, limit=units), replace)

    def report_loss(
        self, client: ControlServer, subscription: int, lost: bytes, received: int
    ) -> int:
        sub = self._subscription(client, subscription)
        if received < 0:
            raise ProtocolError("received must not be negative")
        return sub.session.report_loss(sub, RangeSet.decode(lost, limit=1 << 32), received)

    def unsubscribe(self, client: ControlServer, subscription: int) -> None:
        sub = self._subscription(client, subscription)
        del self.subscriptions[subscription]
        sub.session.remove(sub.id)

    def disconnected(self, client: ControlServer) -> None:
        for sid, sub in list(self.subscriptions.items()):
            if sub.client is client:
                del self.subscriptions[sid]
                sub.session.remove(sub.id)

    def _plan(self, content_id: bytes) -> tuple[int, Any]:
        plan = self.plans.get(content_id)
        if plan is None:
            s = self.node.config.serving
            pool = s.ssm_pool if s.group_mode == "ssm" else s.asm_pool
            plan = (self._new_session_id(), random_group(pool, 4, self.rng))
            self.plans[content_id] = plan
        return plan

    def offer_for(self, entry: Any) -> FileOffer:
        s = self.node.config.serving
        session, group = self._plan(entry.content_id)
        source = ipaddress.ip_address(self.node.config.node.interface)
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
        return self.node.config.serving.control_port or 1

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
            x for x in self.unicast if x.state != "ENDED"
        ]

    def session_totals(self) -> dict[str, int]:
        """Each session counter (packets, bytes, send errors...) summed over
        every session this node ran, ended or live."""
        out = dict(self.ended)
        for session in self.live_sessions():
            for key, value in session.counters.items():
                out[key] = out.get(key, 0) + value
        return out

    def offers(self) -> list[FileOffer]:
        return [self.offer_for(e) for e in self.catalog.entries()]


class _Monitor(DatagramProtocol):
    """Listens on an ASM session's group: another SSRC there means a collision.

    Of two mcp2p sessions that hear each other, only the one with the lower
    SSRC moves (both moving would double the moves and could collide
    again); the other moves too if the foreign SSRC is still heard
    `PERSIST` seconds later (a sender that never moves). For `HOLDOFF`
    seconds after a move, what arrives is ignored: datagrams of the old
    group still queued in the socket would otherwise move the session once
    per datagram (a move storm, seen in the lab with small pools).
    """

    noisy = False
    HOLDOFF = 0.5
    PERSIST = 2.0

    def __init__(self, serving: ServingService, session: Session) -> None:
        self.serving = serving
        self.session = session
        self.quiet_until = 0.0
        self.heard: dict[int, tuple[float, float]] = {}  # ssrc -> (first, last) heard

    def datagramReceived(self, data: bytes, addr: Any) -> None:  # noqa: N802
        if len(data) < 12 or self.session.state == "ENDED":
            return
        ssrc = int.from_bytes(data[8:12], "big")
        if ssrc == self.session.session_id:
            return
        now = self.serving.node.reactor.seconds()
        if now < self.quiet_until:
            return
        first, last = self.heard.get(ssrc, (now, now))
        if now - last > self.PERSIST:  # an old collision: this is a new one
            first = now
        self.heard[ssrc] = (first, now)
        if ssrc < self.session.session_id and now - first < self.PERSIST:
            return  # the other session yields; give it time to
        self.serving.counters["collisions"] += 1
        self.quiet_until = now + self.HOLDOFF
        self.heard.clear()
        self.serving._move(self.session)


class _Silent(DatagramProtocol):
    """The data port only sends; anything arriving on it is ignored."""

    noisy = False

    def datagramReceived(self, data: bytes, addr: Any) -> None:  # noqa: N802
        pass
