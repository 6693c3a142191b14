"""The plugin registry: which discovery methods and block codes exist, by name.

Plugins are found with ``twisted.plugin.getPlugins(I...Plugin, mcp2p.plugins)``:
the modules of this package (``builtin``, ``codes``), of any ``mcp2p/plugins``
directory on ``sys.path``, and of the configured ``[node] plugins_dir`` once
``add_dir`` has added it. Config validation, the API's request checks and the
CLI ask ``names(kind)`` for what is valid, so a drop-in's name is as good as
a built-in one. The registry lives in ``__init__`` so that the plugin scan,
which imports every module of the package, never imports it as a plugin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.plugin import getPlugins, pluginPackagePaths

from mcp2p.interfaces import IBlockCode, IBlockCodePlugin, IDiscoveryMethodPlugin

__path__.extend(pluginPackagePaths(__name__))
__all__ = ["AUTO_CODE", "AUTO_CODES", "KINDS", "add_dir", "code_by_name", "get", "names"]

# kind -> the interface its plugins provide; the kind is also the config's word for it.
KINDS: dict[str, Any] = {
    "discovery": IDiscoveryMethodPlugin,  # [discovery] methods, search --method
    "code": IBlockCodePlugin,  # [fetching] code, get --code, a Subscribe's code
}

# (kind, search path) -> name -> plugin: a scan imports modules and reads
# dropin.cache files, and a subscriber names a code per Subscribe.
_found: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}


def add_dir(path: Path) -> None:
    """Make the drop-in directory ``path`` (``[node] plugins_dir``) part of the search."""
    if path.is_dir() and str(path) not in __path__:
        __path__.append(str(path))


def _plugins(kind: str) -> dict[str, Any]:
    if kind not in KINDS:
        raise ValueError(f"no plugin kind {kind!r} (have {', '.join(KINDS)})")
    import mcp2p.plugins

    key = (kind, tuple(__path__))
    if key not in _found:
        found: dict[str, Any] = {}
        for plugin in getPlugins(KINDS[kind], mcp2p.plugins):
            name = getattr(plugin, "name", None)
            if isinstance(name, str) and name:
                found.setdefault(name, plugin)  # the first on the path wins
        _found[key] = found
    return _found[key]


# ``[fetching] code = auto`` (the default): the code each mode does best with,
# measured by the lab (issue 11): RaptorQ for a multicast session, where one
# repair symbol serves every CN that lost any symbol of its piece (at 8 CNs and
# 5% loss: 1.20x the file sent and 0.9x UFTP's time, where the plain code sent
# 1.59x and took 2.8x), and the plain code for a unicast one, whose one CN gains
# nothing from coding and whose SN then encodes nothing.
AUTO_CODE = "auto"
AUTO_CODES = {"multicast": "raptorq", "unicast": "plain"}


def names(kind: str) -> tuple[str, ...]:
    """The names of the plugins of ``kind`` ("discovery" or "code"), sorted;
    for "code", ``auto`` first (a choice by mode, see `code_by_name`)."""
    found = tuple(sorted(_plugins(kind)))
    return (AUTO_CODE, *found) if kind == "code" else found


def get(kind: str, name: str) -> Any:
    """The plugin of ``kind`` called ``name``; ``ValueError`` naming the ones there are."""
    plugins = _plugins(kind)
    if name not in plugins:
        raise ValueError(f"no {kind} plugin named {name!r} (have {', '.join(sorted(plugins))})")
    return plugins[name]


def code_by_name(name: str, mode: str | None = None) -> IBlockCode:
    """A fresh block code of the plugin called ``name`` (``ValueError`` if none);
    ``auto`` is the code of ``mode`` (multicast or unicast) in AUTO_CODES."""
    if name == AUTO_CODE:
        if mode not in AUTO_CODES:
            raise ValueError(f"code auto needs a mode (multicast or unicast), not {mode!r}")
        name = AUTO_CODES[mode]
    code: IBlockCode = get("code", name).make()
    return code
