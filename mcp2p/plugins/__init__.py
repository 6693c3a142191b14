"""Plugins of mcp2p, found with ``twisted.plugin.getPlugins(I..., mcp2p.plugins)``.

Modules on any ``mcp2p/plugins`` directory of ``sys.path`` are searched, and
``mcp2p.app`` adds the configured ``plugins_dir`` drop-in directory.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__: list[str] = []
