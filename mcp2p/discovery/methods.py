"""The two built-in discovery methods, as IDiscoveryMethod providers.

``QueryMethod`` is the hop-limited expanding-ring query: the node answers
queries for what it shares and searches the network. ``SAPMethod``
announces what it shares with SAP/SDP and searches the directory of what
it heard.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import time
from typing import Any

from twisted.internet import defer, task
from zope.interface import implementer

from mcp2p import multicast
from mcp2p.core.ring import ServerRecord
from mcp2p.discovery.query import QueryNode, SearchResult
from mcp2p.interfaces import IDiscoveryMethod


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
    """Announces the catalog on the IPv4 SAP group and searches what it heard."""

    name = "sap"
    EXPIRE_EVERY = 60.0

    def __init__(self, node: Any) -> None:
        from mcp2p.discovery.sap import SAPAnnouncer, SAPDirectory, SAPProtocol

        self.node = node
        c = node.config.sap
        self.interface = str(node.config.node.interface)
        self.group = c.group
        scope = str(c.group)
        self.directory = SAPDirectory(
            floor=c.cache_timeout,
            bandwidth_limit_bps=c.bandwidth_limit,
            min_interval=c.min_interval,
            max_per_source=c.max_per_source,
            max_entries=c.max_entries,
        )
        self.protocol = SAPProtocol(self.directory, node.reactor, node.identity.node_id, scope)
        self.announcer = SAPAnnouncer(
            node.reactor,
            self.protocol.sender(scope, c.port),
            random.Random(),
            node_id=node.identity.node_id,
            public_key=node.identity.public_key,
            private_key=node.identity.private_key,
            origin=ipaddress.ip_address(self.interface),
            ttl=c.ttl,
            bandwidth_limit_bps=c.bandwidth_limit,
            min_interval=c.min_interval,
            directory=self.directory,
            scope=scope,
        )
        self.port: Any = None
        self.expiry = task.LoopingCall(self._expire)
        self.expiry.clock = node.reactor

    def _expire(self) -> None:
        self.directory.expire(self.node.reactor.seconds())

    def start(self) -> None:
        c = self.node.config.sap
        self.port = multicast.listen(
            self.node.reactor, self.protocol, c.port, socket.AF_INET, self.interface
        )
        multicast.join(self.port, self.group, self.interface)
        multicast.set_hop_limit(self.port, socket.AF_INET, c.ttl)
        self.node.serving.catalog.subscribe(self._catalog_changed)
        self.announcer.set_offers(self.node.serving.offers())
        self.announcer.start()
        self.expiry.start(self.EXPIRE_EVERY, now=False)

    def _catalog_changed(self, entries: Any) -> None:
        if self.port is not None:
            self.announcer.set_offers(self.node.serving.offers())

    def stop(self) -> Any:
        if self.expiry.running:
            self.expiry.stop()
        port, self.port = self.port, None
        if port is None:
            return None
        self.announcer.stop()  # sends the deletions, so before the port closes
        self.node.serving.catalog.unsubscribe(self._catalog_changed)
        return defer.maybeDeferred(port.stopListening)

    def search(self, pattern: str | None, content_id: bytes | None, **options: Any) -> Any:
        started = time.monotonic()
        self._expire()
        result = directory_result(
            self.directory.search(pattern=pattern, content_id=content_id),
            exclude=self.node.identity.node_id,
        )
        result.elapsed = time.monotonic() - started
        return defer.succeed(result)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.protocol.stats())
        out.update(self.announcer.stats())
        return out


def directory_result(announcements: Any, exclude: bytes | None = None) -> SearchResult:
    """SAP directory entries as a SearchResult (distance unknown: None)."""
    servers: dict[bytes, ServerRecord] = {}
    for a in announcements:
        if a.node_id == exclude:
            continue
        record = servers.setdefault(
            a.node_id, ServerRecord(a.node_id, a.public_key, str(a.origin), None, 0.0)
        )
        record.files[a.offer.content_id] = a.offer
        record.complete = True
    return SearchResult(list(servers.values()), "directory", 0, [], 0, 0.0)
