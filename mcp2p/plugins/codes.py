"""The built-in block codes, offered as plugins like any third-party one."""

from __future__ import annotations

from twisted.plugin import IPlugin
from zope.interface import implementer

from mcp2p.interfaces import IBlockCode, IBlockCodePlugin


@implementer(IPlugin, IBlockCodePlugin)
class _PlainPlugin:
    name = "plain"

    def make(self) -> IBlockCode:
        from mcp2p.core.blockcode import PlainCode

        return PlainCode()


@implementer(IPlugin, IBlockCodePlugin)
class _RaptorQPlugin:
    name = "raptorq"

    def make(self) -> IBlockCode:
        from mcp2p.core.blockcode import RaptorQCode

        return RaptorQCode()


plain = _PlainPlugin()
raptorq = _RaptorQPlugin()
