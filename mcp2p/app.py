"""Builds the daemon's MultiService from a validated Config: the one place that
wires the parts together (magic-wormhole's ``_boss.py`` is the model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from twisted.application.service import MultiService

from mcp2p.catalog import Catalog
from mcp2p.config import Config
from mcp2p.trust.keys import NodeIdentity, load_or_create

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from mcp2p.api.service import APIService, IAPIReactor
    from mcp2p.discovery.query import IDiscoveryReactor, QueryNode, SearchResult
    from mcp2p.discovery.service import DiscoveryService
    from mcp2p.transfer.fetch import IFetchReactor
    from mcp2p.transfer.fetching import FetchingService
    from mcp2p.transfer.serving import IServingReactor, ServingService
    from mcp2p.trust.gate import TrustGate
    from mcp2p.trust.keyclient import IHTTPReactor
    from mcp2p.trust.keyserver import KeyService

    class INodeReactor(
        IAPIReactor, IServingReactor, IFetchReactor, IDiscoveryReactor, IHTTPReactor
    ):
        """The daemon's reactor: what each of its parts uses of it, together."""


@dataclass(frozen=True)
class Node:
    """The parts of one daemon, as ``build`` made them: a record for whoever
    holds the daemon (the twistd plugin's start line, tests). No part reads
    another through it: each was handed what it uses, in the order ``build``
    states."""

    reactor: INodeReactor
    config: Config
    identity: NodeIdentity
    trust: TrustGate  # [trust] policy over STATE/known_nodes
    serving: ServingService
    discovery: DiscoveryService
    fetching: FetchingService
    api: APIService
    keys: KeyService | None = None  # the key server, when [keys] serve = yes


@dataclass(frozen=True)
class PluginHost:
    """What a discovery plugin's ``make(host)`` is handed (a
    `mcp2p.discovery.methods.DiscoveryHost`): the reactor, the whole config (a
    plugin reads its own ``[plugin:NAME]`` section), this node's identity, and
    the serving side, all made before discovery."""

    reactor: INodeReactor
    config: Config
    identity: NodeIdentity
    serving: ServingService


class NodeService(MultiService):
    """What ``build`` returns: the daemon's services, started in the order
    ``build`` added them and stopped in reverse, and ``node``, the record of
    its parts."""

    def __init__(self, node: Node) -> None:
        super().__init__()
        self.node = node
        for service in (node.serving, node.discovery, node.fetching, node.api, node.keys):
            if service is not None:
                service.setServiceParent(self)


def add_plugin_dir(config: Config) -> None:
    """Make the configured drop-in directory part of the ``mcp2p.plugins`` package."""
    from mcp2p import plugins

    plugins.add_dir(config.node.plugins_dir)


def build(config: Config, reactor: INodeReactor | None = None) -> NodeService:
    """The daemon of ``config`` (its directories made, its key read or made),
    not yet started. ``reactor``: the global one unless given."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = cast("INodeReactor", default_reactor)
    from mcp2p.api.parts import Parts
    from mcp2p.api.service import APIService
    from mcp2p.discovery.service import DiscoveryService, make_methods
    from mcp2p.transfer.fetching import FetchingService
    from mcp2p.transfer.serving import ServingService
    from mcp2p.trust.gate import TrustGate

    add_plugin_dir(config)
    config.node.state_dir.mkdir(parents=True, exist_ok=True)
    for path in config.share.paths:
        path.mkdir(parents=True, exist_ok=True)
    identity = load_or_create(config.node.state_dir)
    # Each part is made after the parts it is handed, and is handed all it uses.
    # 1. trust: config only
    trust = TrustGate.from_config(config, reactor)
    # 2. serving: its catalog, [serving], [node], the identity, and trust (who
    #    may subscribe)
    catalog = Catalog(
        reactor,
        config.node.state_dir,
        list(config.share.paths),
        config.share.piece_length,
        config.share.rescan_interval,
        watch=True,
    )
    serving = ServingService(reactor, config.serving, config.node, identity, trust, catalog)
    # 3. discovery: each method is handed a PluginHost and takes what it uses
    #    of it, the serving side's offers, lookup and catalog
    host = PluginHost(reactor, config, identity, serving)
    discovery = DiscoveryService(make_methods(config.discovery.methods, host), reactor)
    # 4. fetching: searches through discovery, judges sources through trust
    fetching = FetchingService(reactor, config, identity, discovery, trust)
    # 5. keys, when served: [keys] and this node's id
    keys = None
    if config.keys.serve:
        from mcp2p.trust.keyserver import KeyService

        keys = KeyService(reactor, config.keys, config.node.state_dir, identity.node_id)
    # 6. api: the local control interface over all of the above
    parts = Parts(
        reactor, identity, str(config.node.interface), serving, discovery, fetching, trust, keys
    )
    api = APIService(reactor, config.node, config.api, config.discovery.ring_schedule, parts)
    node = Node(reactor, config, identity, trust, serving, discovery, fetching, api, keys)
    return NodeService(node)


class Client:
    """A client-only node in this process (``search --no-daemon``, ``get
    --no-daemon``, the lab's probe): it searches with the query rings or by
    listening to SAP, fetches as this config's identity, and serves nothing.
    ``build_client`` makes it with its sockets open; ``stop()`` closes them.
    """

    def __init__(self, reactor: IDiscoveryReactor, config: Config, query: QueryNode) -> None:
        self.reactor = reactor
        self.config = config
        self.query = query
        self._identity: NodeIdentity | None = None

    @property
    def identity(self) -> NodeIdentity:
        """This node's keys, read (or made) in ``[node] state_dir`` when first
        asked for: a search needs none, a fetch does."""
        if self._identity is None:
            self._identity = load_or_create(self.config.node.state_dir)
        return self._identity

    def search(
        self, pattern: str | None = None, content_id: bytes | None = None, **options: Any
    ) -> Deferred[SearchResult]:
        """One expanding-ring search (options as QueryNode.search takes them)."""
        return self.query.search(pattern=pattern, content_id=content_id, **options)

    async def listen_sap(
        self, pattern: str | None, content_id: bytes | None, wait: float
    ) -> SearchResult:
        """Listen to the IPv4 SAP group for ``wait`` seconds and search what was heard."""
        import socket
        import time

        from twisted.internet import defer, task

        from mcp2p import multicast
        from mcp2p.discovery.methods import directory_result, sap_directory
        from mcp2p.discovery.sap import SAPProtocol

        sap = self.config.sap
        directory = sap_directory(sap)
        protocol = SAPProtocol(directory, self.reactor, b"", str(sap.group))
        iface = str(self.config.node.interface)
        port = multicast.listen(self.reactor, protocol, sap.port, socket.AF_INET, iface)
        multicast.join(port, sap.group, iface)
        started = time.monotonic()
        try:
            await task.deferLater(self.reactor, wait, lambda: None)
        finally:
            await defer.maybeDeferred(port.stopListening)
        result = directory_result(directory.search(pattern=pattern, content_id=content_id))
        result.reason = "listened"
        result.elapsed = time.monotonic() - started
        return result

    def stop(self) -> Deferred[Any]:
        return self.query.stop()


def build_client(
    config: Config, reactor: Any = None, listen_group: bool | None = None, query: bool = True
) -> Client:
    """A Client of ``config`` with its query sockets open (``query`` False: none,
    for a client that only listens to SAP). ``listen_group``: also take offers
    sent to the query group; by default when ``[discovery] reply_mode = multicast``."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    from mcp2p.discovery.methods import query_node

    node = query_node(reactor, config.discovery, config.node)
    if query:
        if listen_group is None:
            listen_group = config.discovery.reply_mode == "multicast"
        try:
            node.start(listen_group=listen_group)
        except BaseException:
            node.stop()  # the sockets already open (one family of two)
            raise
    return Client(reactor, config, node)
