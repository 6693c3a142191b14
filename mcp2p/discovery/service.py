"""DiscoveryService: runs the discovery methods the config enables."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from mcp2p import plugins
from mcp2p.interfaces import IDiscoveryMethod

if TYPE_CHECKING:
    from mcp2p.discovery.methods import DiscoveryHost
    from mcp2p.interfaces import Clock

_log = Logger()

MAX_PEERS = 64  # nodes remembered from search results, the most recently heard


def make_methods(names: Iterable[str], host: DiscoveryHost) -> dict[str, IDiscoveryMethod]:
    """The methods ``[discovery] methods`` names, each made by its plugin for ``host``."""
    return {name: plugins.get("discovery", name).make(host) for name in names}


class DiscoveryService(Service):
    name = "discovery"  # type: ignore[assignment]

    def __init__(self, methods: Mapping[str, IDiscoveryMethod], clock: Clock) -> None:
        """``methods``: by name, as `make_methods` makes them; ``clock`` dates the peers."""
        self.clock = clock
        self.methods = dict(methods)
        # node id -> what the latest search that found it said (for the status page)
        self.peers: OrderedDict[bytes, dict[str, Any]] = OrderedDict()

    def startService(self) -> None:
        super().startService()
        for name, method in self.methods.items():
            method.start()
            _log.info("discovery method {name} started", name=name)

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        return defer.gatherResults(
            [defer.maybeDeferred(m.stop) for m in self.methods.values()], consumeErrors=True
        )

    def search(self, method: str, **kwargs: Any) -> defer.Deferred[Any]:
        if method not in self.methods:
            return defer.fail(ValueError(f"discovery method {method!r} is not enabled here"))
        d = self.methods[method].search(**kwargs)
        return d.addCallback(self._remember, method)

    def _remember(self, result: Any, method: str) -> Any:
        now = self.clock.seconds()
        for server in getattr(result, "servers", ()):
            self.peers.pop(server.node_id, None)
            self.peers[server.node_id] = {
                "node_id": server.node_id.hex(),
                "address": server.address,
                "distance": server.distance,
                "rtt": server.rtt,
                "files": len(server.files),
                "method": method,
                "seen": now,
            }
        while len(self.peers) > MAX_PEERS:
            self.peers.popitem(last=False)
        return result

    def stats(self) -> dict[str, Any]:
        return {name: m.stats() for name, m in self.methods.items()}
