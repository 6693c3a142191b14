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
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import defer, task
from zope.interface import implementer

from mcp2p import multicast
from mcp2p.core.ring import ServerRecord
from mcp2p.discovery.query import QueryNode, SearchResult
from mcp2p.interfaces import IDiscoveryMethod

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from mcp2p.config import Config, DiscoverySection, NodeSection, SAPSection
    from mcp2p.discovery.query import IDiscoveryReactor
    from mcp2p.discovery.sap import SAPDirectory
    from mcp2p.trust.keys import NodeIdentity
    from mcp2p.wire.query import Query
    from mcp2p.wire.types import FileOffer, IPAddress


class CatalogChanges(Protocol):
    """Tells of the catalog's changes (`mcp2p.catalog.Catalog`): SAPMethod
    announces again after each one."""

    def subscribe(self, callback: Callable[[Any], object]) -> None: ...

    def unsubscribe(self, callback: Callable[[Any], object]) -> None: ...


class Serving(Protocol):
    """The serving side as the built-in methods use it (ServingService):
    ``offers(4 or 6)`` (the IP version of the sessions) for SAP, ``lookup``
    for the query responder and ``offered`` for what it sent to whom, and its
    catalog's changes."""

    @property
    def catalog(self) -> CatalogChanges: ...

    def offers(self, version: int = 4) -> list[FileOffer]: ...

    def lookup(self, query: Query) -> Sequence[FileOffer]: ...

    def offered(self, host: str, content_ids: Sequence[bytes]) -> None: ...


class DiscoveryHost(Protocol):
    """What a discovery plugin's ``make(host)`` is handed (`mcp2p.app.PluginHost` is
    one): the reactor, the whole config (a plugin reads its own
    ``[plugin:NAME]`` section), this node's identity, and the serving side."""

    @property
    def reactor(self) -> Any: ...

    @property
    def config(self) -> Config: ...

    @property
    def identity(self) -> NodeIdentity: ...

    @property
    def serving(self) -> Serving: ...


def query_node(
    reactor: IDiscoveryReactor,
    discovery: DiscoverySection,
    node: NodeSection,
    identity: NodeIdentity | None = None,
    lookup: Callable[[Query], Sequence[FileOffer]] | None = None,
    offered: Callable[[str, Sequence[bytes]], object] | None = None,
) -> QueryNode:
    """The QueryNode of ``[discovery]`` on ``[node]``'s interfaces: a searcher,
    and a responder too when given this node's ``identity`` and the catalog's
    ``lookup`` (the daemon's)."""
    return QueryNode(
        reactor,
        discovery,
        str(node.interface),
        node.interface6,
        node_id=identity.node_id if identity else None,
        public_key=identity.public_key if identity else None,
        lookup=lookup,
        offered=offered,
    )


def sap_directory(sap: SAPSection) -> SAPDirectory:
    """An empty directory of SAP announcements bounded by ``[sap]``."""
    from mcp2p.discovery.sap import SAPDirectory

    return SAPDirectory(
        floor=sap.cache_timeout,
        bandwidth_limit_bps=sap.bandwidth_limit,
        min_interval=sap.min_interval,
        max_per_source=sap.max_per_source,
        max_entries=sap.max_entries,
    )


@implementer(IDiscoveryMethod)
class QueryMethod:
    name = "query"

    def __init__(
        self,
        reactor: IDiscoveryReactor,
        discovery: DiscoverySection,
        node: NodeSection,
        identity: NodeIdentity,
        lookup: Callable[[Query], Sequence[FileOffer]],
        offered: Callable[[str, Sequence[bytes]], object] | None = None,
    ) -> None:
        """Answers queries with ``lookup`` (the serving side's) as ``identity``,
        telling ``offered`` (the serving side's) of each host it will offer files."""
        self.query = query_node(reactor, discovery, node, identity, lookup, offered)

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


class _Scope:
    """One SAP group this node announces on and listens to, with its socket."""

    def __init__(
        self,
        reactor: IDiscoveryReactor,
        sap: SAPSection,
        identity: NodeIdentity,
        directory: SAPDirectory,
        group: IPAddress,
        family: int,
        interface: str,
        origin: str,
        version: int,
    ) -> None:
        from mcp2p.discovery.sap import SAPAnnouncer, SAPProtocol

        self.group = group
        self.family = family
        self.interface = interface
        self.version = version  # IP version of the sessions announced here
        scope = str(group)
        self.protocol = SAPProtocol(directory, reactor, identity.node_id, scope)
        self.announcer = SAPAnnouncer(
            reactor,
            self.protocol.sender(scope, sap.port),
            random.Random(),
            node_id=identity.node_id,
            public_key=identity.public_key,
            private_key=identity.private_key,
            origin=ipaddress.ip_address(origin),
            ttl=sap.ttl,
            bandwidth_limit_bps=sap.bandwidth_limit,
            min_interval=sap.min_interval,
            directory=directory,
            scope=scope,
        )
        self.port: Any = None


@implementer(IDiscoveryMethod)
class SAPMethod:
    """Announces the catalog on the SAP groups and searches what it heard.

    IPv4: ``[sap] group``. With ``[node] interface6`` also IPv6: ``[sap]
    group6`` (RFC 2974's scope address, ff15::2:7ffe by default), announcing
    the IPv6 sessions (their group, and this node's IPv6 address as source
    and origin). Both scopes feed one directory.
    """

    name = "sap"
    EXPIRE_EVERY = 60.0

    def __init__(
        self,
        reactor: IDiscoveryReactor,
        sap: SAPSection,
        node: NodeSection,
        identity: NodeIdentity,
        offers: Callable[[int], list[FileOffer]],
        catalog: CatalogChanges,
    ) -> None:
        """Announces ``offers(4)`` (and ``offers(6)`` with ``[node]
        interface6``) as ``identity``, again after each change ``catalog``
        tells of."""
        self.reactor = reactor
        self.sap = sap
        self.node_id = identity.node_id
        self.offers = offers
        self.catalog = catalog
        self.interface = str(node.interface)
        self.group = sap.group
        self.directory = sap_directory(sap)

        def scope(
            group: IPAddress, family: int, interface: str, origin: str, version: int
        ) -> _Scope:
            return _Scope(
                reactor, sap, identity, self.directory, group, family, interface, origin, version
            )

        self.scopes = [scope(sap.group, socket.AF_INET, self.interface, self.interface, 4)]
        if node.interface6:
            address6 = multicast.interface_address6(node.interface6)
            self.scopes.append(scope(sap.group6, socket.AF_INET6, node.interface6, address6, 6))
        # The IPv4 scope's, as before (tests and stats read them).
        self.protocol = self.scopes[0].protocol
        self.announcer = self.scopes[0].announcer
        self.port: Any = None
        self.expiry = task.LoopingCall(self._expire)
        self.expiry.clock = reactor

    def _expire(self) -> None:
        self.directory.expire(self.reactor.seconds())

    def start(self) -> None:
        c = self.sap
        try:
            for scope in self.scopes:
                scope.port = multicast.listen(
                    self.reactor, scope.protocol, c.port, scope.family, scope.interface
                )
                multicast.join(scope.port, scope.group, scope.interface)
                multicast.set_hop_limit(scope.port, scope.family, c.ttl)
        except BaseException:
            for scope in self.scopes:
                if scope.port is not None:
                    scope.port.stopListening()
                    scope.port = None
            raise
        self.port = self.scopes[0].port
        self.catalog.subscribe(self._catalog_changed)
        for scope in self.scopes:
            scope.announcer.set_offers(self._offers(scope))
            scope.announcer.start()
        self.expiry.start(self.EXPIRE_EVERY, now=False)

    def _offers(self, scope: _Scope) -> list[FileOffer]:
        return self.offers(scope.version)

    def _catalog_changed(self, entries: Any) -> None:
        if self.port is not None:
            for scope in self.scopes:
                scope.announcer.set_offers(self._offers(scope))

    def stop(self) -> Any:
        if self.expiry.running:
            self.expiry.stop()
        self.port = None
        ports = [scope.port for scope in self.scopes if scope.port is not None]
        if not ports:
            return None
        for scope in self.scopes:
            scope.announcer.stop()  # sends the deletions, so before the port closes
            scope.port = None
        self.catalog.unsubscribe(self._catalog_changed)
        return defer.gatherResults(
            [defer.maybeDeferred(p.stopListening) for p in ports], consumeErrors=True
        )

    def search(self, pattern: str | None, content_id: bytes | None, **options: Any) -> Any:
        started = time.monotonic()
        self._expire()
        result = directory_result(
            self.directory.search(pattern=pattern, content_id=content_id),
            exclude=self.node_id,
        )
        result.elapsed = time.monotonic() - started
        return defer.succeed(result)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for scope in self.scopes:
            for key, value in {**scope.protocol.stats(), **scope.announcer.stats()}.items():
                out[key] = out.get(key, 0) + value
        # The directory is one for all scopes: counted once.
        out.update(refused=self.directory.refused, directory=len(self.directory))
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
