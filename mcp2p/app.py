"""Builds the daemon's MultiService from a validated Config: the one place that
wires the parts together (magic-wormhole's ``_boss.py`` is the model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService

from mcp2p.catalog import Catalog
from mcp2p.config import Config
from mcp2p.trust.keys import NodeIdentity, load_or_create

if TYPE_CHECKING:
    from mcp2p.api.service import APIService
    from mcp2p.discovery.service import DiscoveryService
    from mcp2p.transfer.fetching import FetchingService
    from mcp2p.transfer.serving import ServingService
    from mcp2p.trust.gate import TrustGate
    from mcp2p.trust.keyserver import KeyService


@dataclass
class Node:
    """What every service of one daemon shares.

    The services take the node and read each other through it, so ``build``
    sets them in this order, each before the next is made: trust, serving,
    discovery, fetching, api (then keys). A service read before ``build`` set
    it raises AttributeError.
    """

    reactor: Any
    config: Config
    identity: NodeIdentity
    trust: TrustGate = field(init=False)  # [trust] policy over STATE/known_nodes
    serving: ServingService = field(init=False)
    discovery: DiscoveryService = field(init=False)
    fetching: FetchingService = field(init=False)
    api: APIService = field(init=False)
    keys: KeyService | None = None  # the key server, when [keys] serve = yes


def add_plugin_dir(config: Config) -> None:
    """Make the configured drop-in directory part of the ``mcp2p.plugins`` package."""
    from mcp2p import plugins

    plugins.add_dir(config.node.plugins_dir)


def build(config: Config, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    from mcp2p.api.service import APIService
    from mcp2p.discovery.service import DiscoveryService
    from mcp2p.transfer.fetching import FetchingService
    from mcp2p.transfer.serving import ServingService
    from mcp2p.trust.gate import TrustGate

    add_plugin_dir(config)
    config.node.state_dir.mkdir(parents=True, exist_ok=True)
    for path in config.share.paths:
        path.mkdir(parents=True, exist_ok=True)
    node = Node(reactor, config, load_or_create(config.node.state_dir))
    node.trust = TrustGate.from_config(config, reactor)
    catalog = Catalog(
        reactor,
        config.node.state_dir,
        list(config.share.paths),
        config.share.piece_length,
        config.share.rescan_interval,
        watch=True,
    )
    top = MultiService()
    node.serving = ServingService(node, catalog)
    node.discovery = DiscoveryService(node)
    node.fetching = FetchingService(node)
    node.api = APIService(node)
    for service in (node.serving, node.discovery, node.fetching, node.api):
        service.setServiceParent(top)
    if config.keys.serve:
        from mcp2p.trust.keyserver import KeyService

        node.keys = KeyService(node)
        node.keys.setServiceParent(top)
    top.node = node  # type: ignore[attr-defined]
    return top
