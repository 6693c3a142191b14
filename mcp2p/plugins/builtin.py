"""The built-in discovery methods, offered as plugins like any third-party one."""

from __future__ import annotations

from typing import Any

from twisted.plugin import IPlugin
from zope.interface import implementer

from mcp2p.interfaces import IDiscoveryMethod, IDiscoveryMethodPlugin


@implementer(IPlugin, IDiscoveryMethodPlugin)
class _QueryPlugin:
    name = "query"

    def make(self, node: Any) -> IDiscoveryMethod:
        from mcp2p.discovery.methods import QueryMethod

        return QueryMethod(node)


@implementer(IPlugin, IDiscoveryMethodPlugin)
class _SAPPlugin:
    name = "sap"

    def make(self, node: Any) -> IDiscoveryMethod:
        from mcp2p.discovery.methods import SAPMethod

        return SAPMethod(node)


query = _QueryPlugin()
sap = _SAPPlugin()
