"""Connections per source address, on loopback with real TLS (issue 12).

Today an SN accepted every TCP connection: 1,006 idle ones (systemd's usual
1,024 file limit) locked honest CNs out. Here 50 idle connections come from
127.0.0.2; the SN keeps ``connections_per_address`` of them, closes the
others at accept, and an honest CN on 127.0.0.1 still gets its manifest.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols import amp

from mcp2p.transfer.control import ChannelLimits, ControlServer, GetManifest
from mcp2p.transfer.serving import ServingService
from mcp2p.trust.gate import TrustGate
from mcp2p.trust.keys import load_or_create
from mcp2p.trust.tls import VerifiedClientEndpoint, default_max_connections, tls_server_factory
from mcp2p.wire.merkle import merkle_root
from tests.nodes import node_config

ATTACKERS = 50
PER_ADDRESS = 16


class Idle(Protocol):
    def __init__(self) -> None:
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class Catalog:
    def __init__(self, entry: Any) -> None:
        self.entry = entry

    def get(self, content_id: bytes) -> Any:
        return self.entry if content_id == self.entry.content_id else None


@pytest_twisted.ensureDeferred
async def test_idle_connections_from_one_address_leave_room_for_honest_cns(
    tmp_path: Path,
) -> None:
    from mcp2p.catalog import CatalogEntry

    config = node_config(tmp_path, 1, 1, serving={"connections_per_address": str(PER_ADDRESS)})
    sn = load_or_create(tmp_path / "sn")
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 1000)
    hashes = (b"\x01" * 32,)
    entry = CatalogEntry(merkle_root(hashes), str(path), "f.bin", 1000, 0, 0, 0, 1 << 16, hashes)
    trust = TrustGate.from_config(config, reactor)
    service = ServingService(
        reactor, config.serving, config.node, sn, trust, Catalog(entry), random.Random(1)
    )
    limits = ChannelLimits.from_config(config.serving)
    factory = Factory.forProtocol(lambda: ControlServer(service, service.counters, limits))
    port = reactor.listenTCP(
        0,
        tls_server_factory(
            sn,
            factory,
            reactor,
            per_address=config.serving.connections_per_address,
            counters=service.counters,
        ),
        interface="127.0.0.1",
    )
    number = port.getHost().port
    idle: list[Idle] = []
    honest: Any = None
    try:
        for _ in range(ATTACKERS):
            endpoint = TCP4ClientEndpoint(
                reactor, "127.0.0.1", number, bindAddress=("127.0.0.2", 0)
            )
            idle.append(await endpoint.connect(Factory.forProtocol(Idle)))
        # The SN closes those over the cap at once.
        closed = [p for p in idle if p.lost.called]
        for _ in range(200):
            closed = [p for p in idle if p.lost.called]
            if len(closed) >= ATTACKERS - PER_ADDRESS:
                break
            await deferLater(0.01)
        assert len(closed) == ATTACKERS - PER_ADDRESS
        assert service.counters["refused_address"] == ATTACKERS - PER_ADDRESS
        # An honest CN from another address is served meanwhile.
        endpoint = VerifiedClientEndpoint(
            reactor,
            TCP4ClientEndpoint(reactor, "127.0.0.1", number),
            load_or_create(tmp_path / "cn"),
            sn.node_id,
        )
        honest = await endpoint.connect(Factory.forProtocol(amp.AMP))
        reply = await honest.callRemote(GetManifest, content_id=entry.content_id, offset=0)
        assert reply["total"] > 0
        print(
            f"{ATTACKERS} idle connections from 127.0.0.2: {PER_ADDRESS} kept, "
            f"{len(closed)} refused; honest manifest {reply['total']} bytes; "
            f"max_connections by default {default_max_connections()}"
        )
    finally:
        if honest is not None:
            honest.transport.loseConnection()
        for p in idle:
            if p.transport is not None:
                p.transport.abortConnection()
        await port.stopListening()
        await deferLater(0.05)


def deferLater(seconds: float) -> defer.Deferred[None]:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)
