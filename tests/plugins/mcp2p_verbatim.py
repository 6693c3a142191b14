"""A drop-in block code for the tests: the plain code under another name.

Copied into a daemon's ``[node] plugins_dir`` and named by ``[fetching] code``
or ``mcp2p get --code verbatim``, it shows that a code found only there is
valid in the config, the CLI and a Subscribe, and that a fetch uses it.
"""

from twisted.plugin import IPlugin
from zope.interface import implementer

from mcp2p.core.blockcode import PlainCode
from mcp2p.interfaces import IBlockCode, IBlockCodePlugin


class VerbatimCode(PlainCode):
    name = "verbatim"


@implementer(IPlugin, IBlockCodePlugin)
class _VerbatimPlugin:
    name = "verbatim"

    def make(self) -> IBlockCode:
        return VerbatimCode()


verbatim = _VerbatimPlugin()
