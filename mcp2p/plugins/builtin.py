"""The built-in discovery methods, offered as plugins like any third-party one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.plugin import IPlugin
from zope.interface import implementer

from mcp2p.interfaces import IDiscoveryMethod, IDiscoveryMethodPlugin

if TYPE_CHECKING:
    from mcp2p.discovery.methods import DiscoveryHost


@implementer(IPlugin, IDiscoveryMethodPlugin)
class _QueryPlugin:
    name = "query"

    def make(self, host: DiscoveryHost) -> IDiscoveryMethod:
        from mcp2p.discovery.methods import QueryMethod

        config = host.config
        serving = host.serving
        return QueryMethod(
            host.reactor,
            config.discovery,
            config.node,
            host.identity,
            serving.lookup,
            serving.offered,
        )


@implementer(IPlugin, IDiscoveryMethodPlugin)
class _SAPPlugin:
    name = "sap"

    def make(self, host: DiscoveryHost) -> IDiscoveryMethod:
        from mcp2p.discovery.methods import SAPMethod

        config, serving = host.config, host.serving
        return SAPMethod(
            host.reactor, config.sap, config.node, host.identity, serving.offers, serving.catalog
        )


query = _QueryPlugin()
sap = _SAPPlugin()
