"""The built-in discovery methods, offered as plugins like any third-party one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.plugin import IPlugin
from zope.interface import implementer

from mcp2p.interfaces import IDiscoveryMethod, IDiscoveryMethodPlugin

if TYPE_CHECKING:
    from mcp2p.app import Node


@implementer(IPlugin, IDiscoveryMethodPlugin)
class _QueryPlugin:
    name = "query"

    def make(self, node: Node) -> IDiscoveryMethod:
        from mcp2p.discovery.methods import QueryMethod

        return QueryMethod(node)


@implementer(IPlugin, IDiscoveryMethodPlugin)
class _SAPPlugin:
    name = "sap"

    def make(self, node: Node) -> IDiscoveryMethod:
        from mcp2p.discovery.methods import SAPMethod

        return SAPMethod(node)


query = _QueryPlugin()
sap = _SAPPlugin()
