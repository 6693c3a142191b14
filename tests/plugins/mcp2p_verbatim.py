"""A drop-in block code for the tests: the plain code under another name.

Copied into a daemon's ``[node] plugins_dir`` and named by ``[fetching] code``
or ``mcp2p get --code verbatim``, it shows that a code found only there is
valid in the config, the CLI and a Subscribe, and that a fetch uses it: the
SN logs "verbatim code encoding ..." each time a session makes its encoder.
"""

from typing import Any

from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from mcp2p.core.blockcode import PlainCode, PlainEncoder
from mcp2p.interfaces import IBlockCode, IBlockCodePlugin
from mcp2p.wire.layout import Layout

_log = Logger()


class VerbatimCode(PlainCode):
    name = "verbatim"

    def encoder(self, layout: Layout, read: Any) -> PlainEncoder:
        _log.info(
            "verbatim code encoding {size} bytes in {blocks} blocks",
            size=layout.size,
            blocks=layout.blocks,
        )
        return super().encoder(layout, read)


@implementer(IPlugin, IBlockCodePlugin)
class _VerbatimPlugin:
    name = "verbatim"

    def make(self) -> IBlockCode:
        return VerbatimCode()


verbatim = _VerbatimPlugin()
