"""The two built-in discovery methods, as IDiscoveryMethod providers.

``QueryMethod`` is the hop-limited expanding-ring query: the node answers
queries for what it shares and searches the network. ``SAPMethod``
announces what it shares with SAP/SDP and searches the directory of what
it heard.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from mcp2p import multicast
from mcp2p.core.ring import ServerRecord
from mcp2p.discovery.query import QueryNode, SearchResult
from mcp2p.discovery.sap import SAPAnnouncer, SAPDirectory, SAPProtocol
from mcp2p.interfaces import IDiscoveryMethod
from mcp2p.wire.sap import SAPPacket, encode_sap
from mcp2p.wire.sdp import Announcement, encode_sdp


@implementer(IDiscoveryMethod)
class QueryMethod:
    name = "query"

    def __init__(self, node: Any) -> None:
        self.node = node
        c = node.config
        self.query = QueryNode(
            node.reactor,
            c.discovery,
            str(c.node.interface),
            c.node.interface6,
            node_id=node.identity.node_id,
            public_key=node.identity.public_key,
            lookup=node.serving.lookup,
        )

    def start(self) -> None:
        self.query.start(listen_group=True)

    def stop(self) -> Any:
        return self.query.stop()

    def search(self, pattern: str | None, content_id: bytes | None, **options: Any) -> Any:
        return self.query.search(pattern=pattern, content_id=content_id, **options)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.query.counters)
        if self.query.responder is not None:
            out.update(self.query.responder.counters)
        return out


@implementer(IDiscoveryMethod)
class SAPMethod:
    name = "sap"

    def __init__(self, node: Any) -> None:
        self.node = node
        c = node.config
        self.directory = SAPDirectory()
        self.protocol = SAPProtocol(self.directory, node.reactor, own_node_id=node.identity.node_id)
        self.port: Any = None
        self.announcer = SAPAnnouncer(
            clock=node.reactor,
            send=self._send,
            directory=self.directory,
            bandwidth_limit=c.sap.bandwidth_limit,
            min_interval=c.sap.min_interval,
        )
        self.group = c.sap.group
        self.interface = str(c.node.interface)
        self.expiry: Any = None

    def _send(self, data: bytes) -> None:
        if self.port is None:
            return
        try:
            self.port.write(data, (str(self.group), self.node.config.sap.port))
        except OSError:
            self.protocol.send_errors += 1

    def start(self) -> None:
        c = self.node.config
        self.port = multicast.listen(
            self.node.reactor, self.protocol, c.sap.port, socket.AF_INET, self.interface
        )
        multicast.join(self.port, self.group, self.interface)
        multicast.set_hop_limit(self.port, socket.AF_INET, c.sap.ttl)
        self.node.serving.catalog.subscribe(lambda entries: self.refresh())
        self.refresh()

    def refresh(self) -> None:
        c = self.node.config
        ident = self.node.identity
        origin = ipaddress.ip_address(self.interface)
        self.announcer.set_announcements(
            [
                Announcement(
                    offer=o,
                    node_id=ident.node_id,
                    public_key=ident.public_key,
                    origin=origin,
                    ttl=c.sap.ttl,
                    version=1,
                )
                for o in self.node.serving.offers()
            ]
        )

    def stop(self) -> Any:
        self.announcer.stop()
        port, self.port = self.port, None
        return defer.maybeDeferred(port.stopListening) if port is not None else None

    def search(self, pattern: str | None, content_id: bytes | None, **options: Any) -> Any:
        started = time.monotonic()
        self.directory.expire(self.node.reactor.seconds())
        servers: dict[bytes, ServerRecord] = {}
        for a in self.directory.search(pattern=pattern, content_id=content_id):
            if a.node_id == self.node.identity.node_id:
                continue
            record = servers.setdefault(
                a.node_id, ServerRecord(a.node_id, a.public_key, str(a.origin), None, 0.0)
            )
            record.files[a.offer.content_id] = a.offer
        return defer.succeed(
            SearchResult(
                servers=list(servers.values()),
                reason="directory",
                rings=0,
                hop_limits=[],
                query_bytes=0,
                elapsed=time.monotonic() - started,
            )
        )

    def stats(self) -> dict[str, Any]:
        return {
            "received": self.protocol.received,
            "malformed": self.protocol.dropped,
            "directory": len(self.directory),
            "announcements": len(self.announcer.announcements),
        }


def packet_for(a: Announcement, delete: bool = False) -> bytes:
    return encode_sap(SAPPacket(delete=delete, msg_id_hash=0, origin=a.origin, payload=encode_sdp(a)))
