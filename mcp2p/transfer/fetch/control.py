"""One SN's part in a fetch: its TLS control channel, its subscription
(multicast group or unicast port, the receiver), resubscribing when its
session ends, following a session that moved, the wanted sets and loss
reports sent to it, and dropping it (or failing the whole fetch, which drops
them all). ``_Handler`` routes a subscription's list hashes, moves and end here."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from mcp2p import multicast
from mcp2p.core import fetchplan
from mcp2p.core.display import display_text
from mcp2p.core.wanted import RangeSet
from mcp2p.transfer.control import (
    MAX_LISTS_PER_NOTICE,
    ControlClient,
    GetList,
    Joined,
    ReportLoss,
    Subscribe,
    UpdateWanted,
    joined_token,
)
from mcp2p.transfer.fetch.common import FetchError, Source, _log
from mcp2p.transfer.fetch.helpers import wanted_chunks
from mcp2p.transfer.fetch.state import FetchState
from mcp2p.transfer.receiver import Receiver, read_in_batches

RCVBUF = 16 << 20  # bytes of receive buffer asked for per data socket


def tcp_endpoint(reactor: Any, host: str, port: int, timeout: float) -> Any:
    """A TCP client endpoint to ``host``: an address (what discovery gives, an
    IPv6 one perhaps with its zone) is connected to as it is; only a name goes
    through HostnameEndpoint, whose resolver hands even an address to a
    thread for getaddrinfo (0.4 ms of CPU and a thread's wake-up per connect,
    on the start of a fetch)."""
    import ipaddress

    from twisted.internet.endpoints import (
        HostnameEndpoint,
        TCP4ClientEndpoint,
        TCP6ClientEndpoint,
    )

    try:
        version = ipaddress.ip_address(host.partition("%")[0]).version
    except ValueError:
        return HostnameEndpoint(reactor, host, port, timeout=timeout)
    endpoint = TCP4ClientEndpoint if version == 4 else TCP6ClientEndpoint
    return endpoint(reactor, host, port, timeout=timeout)


class SourceControl(FetchState):
    """The layer of ``Fetch`` that talks to each SN."""

    async def _connect(self, source: Source) -> ControlClient:
        from twisted.internet.protocol import Factory

        from mcp2p.trust.tls import VerifiedClientEndpoint

        self.connected.append(source)  # closed at the end, whatever became of it
        host = source.server.address
        endpoint = VerifiedClientEndpoint(
            self.reactor,
            tcp_endpoint(self.reactor, host, source.offer.control_port, timeout=10),
            self.identity,
            source.server.node_id,
        )
        self.budget.tried.add(source.server.node_id)
        try:
            client = await self._timed(endpoint.connect(Factory.forProtocol(ControlClient)))
        except Exception as e:
            raise FetchError(f"cannot reach {source.name} at {host}: {e}") from None
        source.client = client
        source.state = "connected"
        client.lost.addErrback(lambda f: None)
        client.lost.addCallback(lambda reason: self._lost(source))
        return client

    async def _start_sources(self, sources: list[Source], units: RangeSet) -> None:
        shares = fetchplan.deal(units, len(sources))
        results = await defer.DeferredList(
            [
                defer.ensureDeferred(self._subscribe(s, share))
                for s, share in zip(sources, shares, strict=True)
            ],
            consumeErrors=True,
        )
        for (ok, result), source in zip(results, sources, strict=True):
            failure: Any = result
            if not ok:
                _log.warn(
                    "subscribing to {node} failed: {error}",
                    node=source.name,
                    error=display_text(failure.getErrorMessage()),
                )
                self._drop(source, f"subscribe failed: {failure.getErrorMessage()}")
        if not any(s.state == "active" for s in self.sources):
            last = f" (last: {self.last_drop})" if self.last_drop else ""
            raise FetchError(f"no SN accepted the subscription{last}")

    async def _subscribe(self, source: Source, share: RangeSet) -> None:
        why = self.budget.over_subscribed(self.last_drop) or self.budget.over_tried(
            source.server.node_id
        )
        if why:
            raise FetchError(why)
        self.budget.subscriptions += 1
        if source.client is None:
            await self._connect(source)
        assert source.client is not None and self.manifest is not None
        source.share = share
        receiver = Receiver(
            self.reactor,
            0,
            lambda piece, symbol, payload: self._deliver(source, piece, symbol, payload),
            lambda lost, received: self._report(source, lost, received),
            deliver_many=lambda items: self._deliver_many(source, items),
            ask_list=lambda first: self._ask_list(source, first),
        )
        source.receiver = receiver
        port = 0
        family = self._family(source)
        if source.mode == "unicast":
            # The SN sends to the address our control channel comes from: its family.
            here = self._address6() if ":" in source.server.address else self.interface
            # IReactorUDP declares no default maxPacketSize; the reactors' is 8192.
            source.port = self.reactor.listenUDP(0, receiver, interface=here)  # type: ignore[call-arg]
            multicast.set_buffers(source.port, receive=RCVBUF)
            read_in_batches(source.port, receiver)
            port = source.port.getHost().port
        chunks = wanted_chunks(share, replace=False)
        more = len(chunks) > 1  # too big for one value: sent by UpdateWanted below
        joined = None  # with ``more``, the session must wait until all of it was said
        if source.mode == "multicast" and not more:
            joined = self._join_offered(source, receiver, family)
        reply = await self._timed(
            source.client.callRemote(
                Subscribe,
                content_id=self.manifest.content_id,
                mode=source.mode,
                port=port,
                rate=self.rate,
                code=self.code.name,
                wanted=b"" if more else chunks[0],
                more=more,
                family=family,
                lists=MAX_LISTS_PER_NOTICE,
                drained=True,
                joined=joined,
            )
        )
        source.subscription = reply["subscription"]
        source.rate = reply["rate"]
        receiver.ssrc = reply["session_id"]
        source.client.handlers[source.subscription] = _Handler(self, source)
        if more:
            for chunk in chunks:
                await self._timed(
                    source.client.callRemote(
                        UpdateWanted, subscription=source.subscription, wanted=chunk, replace=False
                    )
                )
        if source.mode == "multicast":
            if joined != joined_token(reply["group"], reply["source"], reply["port"]):
                if source.port is not None:  # not the session offered: its group instead
                    early, source.port = source.port, None
                    early.stopListening()  # it lets go of the receiver later: a new one
                    receiver = source.receiver = receiver.successor()
                source.port = self._join(receiver, reply["group"], reply["source"], reply["port"])
            self._joined(source)  # an SN that did not take ``joined`` waits for this
        source.state = "active"
        source.last_progress = self.reactor.seconds()
        self.event(
            "subscribed",
            source=source.to_json(),
            group=reply["group"],
            session_id=reply["session_id"],
        )

    def _session_ended(self, source: Source, reason: str) -> None:
        """The SN ended our session: subscribe to it again for what is still
        missing of its share, or drop it (`fetchplan.session_ended` says which)."""
        if self.done.called:
            return
        still = source.share.intersection(self._missing())
        action = fetchplan.session_ended(
            reason,
            bool(still),
            source.client is not None,
            source.resubscribes,
            source.blocks > source.blocks_at_resubscribe,
            bool(self.budget.over_subscribed()),
        )
        if isinstance(action, fetchplan.Resubscribe):
            source.resubscribes = action.in_a_row
            source.blocks_at_resubscribe = source.blocks
            source.state = "connected"
            if source.port is not None:
                port, source.port = source.port, None
                port.stopListening()
            before = dict(source.receiver.counters) if source.receiver is not None else {}
            self.event("resubscribe", source=source.to_json(), reason=reason, units=len(still))

            async def again() -> None:
                await self._subscribe(source, still)
                if source.receiver is not None:
                    counters = source.receiver.counters
                    for key, value in before.items():
                        merged = max if key.endswith("_max") else (lambda a, b: a + b)
                        counters[key] = merged(counters.get(key, 0), value)

            def failed(f: Any) -> None:
                self._drop(source, f"resubscribe failed: {f.getErrorMessage()}")
                self._redistribute()

            defer.ensureDeferred(again()).addErrback(failed)
            return
        self._drop(source, action.reason)
        self._redistribute()

    def _moved(self, source: Source, group: str) -> None:
        """The SN's ASM session moved: follow it to its new group."""
        if source.state != "active" or source.receiver is None or source.port is None:
            return
        import ipaddress

        try:
            if not ipaddress.ip_address(group).is_multicast:
                raise ValueError(group)
        except ValueError:
            self._drop(source, f"moved to {group!r}, not a multicast group")
            return
        port = source.port.getHost().port
        old, source.port = source.port, None
        old.stopListening()
        # Its notices and held packets stay valid on the new group.
        source.receiver = source.receiver.successor()
        source.port = self._join(source.receiver, group, "", port)
        self.event("moved", source=source.to_json(), group=group)

    def _family(self, source: Source) -> int:
        """The IP version of the group to ask ``source`` for ([fetching] family):
        auto is that of the address the SN was found at, when this node has
        IPv6 ([node] interface6), else 4."""
        try:
            return fetchplan.group_family(
                self.config.fetching.family, source.server.address, bool(self.interface6)
            )
        except ValueError as e:
            raise FetchError(str(e)) from None

    def _address6(self) -> str:
        """This node's IPv6 address on interface6 (any IPv6 address without it)."""
        return multicast.interface_address6(self.interface6) if self.interface6 else "::"

    def _join(self, receiver: Receiver, group: str, source: str, port: int) -> Any:
        import ipaddress

        g = ipaddress.ip_address(group)
        if g.version == 6 and not self.interface6:
            raise FetchError(f"the SN's session is on IPv6 group {g}: set [node] interface6")
        interface = self.interface if g.version == 4 else self.interface6
        src = ipaddress.ip_address(source) if source else None
        lport = multicast.listen_group(self.reactor, receiver, g, port, interface, src)
        multicast.set_buffers(lport, receive=RCVBUF)
        read_in_batches(lport, receiver)
        return lport

    def _join_offered(self, source: Source, receiver: Receiver, family: int) -> str | None:
        """Join the group ``source`` offered before subscribing, so that its
        session need not wait for our Joined, a round trip that under load
        took 1-14 ms of the lab's 8-CN start: the ``joined_token`` that says
        so in the Subscribe, or None where the offered group is not of
        ``family`` or cannot be joined (then the group of the reply is)."""
        offer = source.offer
        if offer.group.version != family or not offer.group.is_multicast:
            return None
        group = str(offer.group)
        src = "" if offer.source is None else str(offer.source)
        try:
            source.port = self._join(receiver, group, src, offer.port)
        except (FetchError, OSError) as e:
            _log.debug(
                "cannot join {group} offered by {node} yet: {error}",
                group=group,
                node=source.name,
                error=display_text(str(e)),
            )
            return None
        return joined_token(group, src, offer.port)

    def _joined(self, source: Source) -> None:
        """Tell the SN we are in the group: its session's first packet need not
        wait longer for us. Nothing waits for the answer; an SN that does not
        know Joined answers an error, and its session waits JOIN_DELAY."""
        assert source.client is not None
        d = source.client.callRemote(Joined, subscription=source.subscription)
        d.addErrback(
            lambda f: _log.debug(
                "{node} did not take Joined: {error}",
                node=source.name,
                error=display_text(f.getErrorMessage()),
            )
        )

    def _report(self, source: Source, lost: RangeSet, received: int) -> None:
        if source.client is None or source.state != "active":
            return
        d = source.client.callRemote(
            ReportLoss, subscription=source.subscription, lost=lost.encode(), received=received
        )
        d.addCallback(lambda r: setattr(source, "rate", r["rate"]))
        d.addErrback(lambda f: None)

    def _ask_list(self, source: Source, first: int) -> Any:
        """A digest list ``source`` sent that did not come on the data path,
        asked of it over TLS: a Deferred of the list packet."""
        if source.client is None or source.state != "active":
            raise ConnectionError("no control channel")
        d = source.client.callRemote(GetList, subscription=source.subscription, first=first)
        return d.addCallback(lambda r: r["list"])

    def _send_wanted(
        self, source: Source, units: RangeSet, replace: bool, nudge: bool = False
    ) -> None:
        if source.client is None or source.state != "active":
            return
        if not replace and units and not nudge:
            # New work: its stall clock starts now, not at its last delivery.
            # (A nudge asks again for old work: it must not restart the clock,
            # or a silent SN, nudged every stall_timeout / 2, is never dropped.)
            source.last_progress = max(source.last_progress, self.reactor.seconds())
        for chunk in wanted_chunks(units, replace):
            d = source.client.callRemote(
                UpdateWanted, subscription=source.subscription, wanted=chunk, replace=replace
            )
            d.addErrback(lambda f: None)

    def _lost(self, source: Source) -> None:
        if source.state in ("active", "connected"):
            self._drop(source, "control channel closed")
            if self.loop is not None and self.loop.running:
                self._redistribute()

    def _drop(self, source: Source, reason: str) -> None:
        if source.state == "dropped":
            return
        source.state = "dropped"
        self.last_drop = f"{source.name} {reason}"
        _log.info("source {node} dropped: {reason}", node=source.name, reason=display_text(reason))
        self.event("source_dropped", source=source.to_json(), reason=reason)
        if source.port is not None:
            port, source.port = source.port, None
            port.stopListening()
        if source.client is not None:
            client, source.client = source.client, None
            if client.transport is not None:
                client.transport.loseConnection()

    def _fail(self, error: Exception) -> None:
        """End the fetch with ``error`` (its message is the one line users see):
        every source is dropped so that nothing more is written."""
        if self.done.called:
            return
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        for source in self.sources:
            if source.state in ("active", "connected"):
                self._drop(source, "the fetch failed")
        self.done.errback(error)


class _Handler:
    """Routes a subscription's list hashes, moves and end to the fetch."""

    def __init__(self, fetch: SourceControl, source: Source) -> None:
        self.fetch = fetch
        self.source = source

    def listed(self, first: int, count: int, digest: bytes) -> None:
        if self.source.receiver is not None:
            self.source.receiver.listed(first, count, digest)

    def drained(self, seq: int) -> None:
        if self.source.receiver is not None:
            self.source.receiver.drained(seq)

    def session_moved(self, group: str) -> None:
        self.fetch._moved(self.source, group)

    def session_ended(self, reason: str) -> None:
        if self.source.share and self.source.state == "active":
            self.fetch._session_ended(self.source, reason)
