"""Checks over the parsed values: options that bind each other, and plugin names.

A single value's parser cannot see these: ``reply_delay_max`` against
``reply_delay_min``, or whether the plugin a name asks for exists once
``[node] plugins_dir`` is known. Errors name where the value came from.
"""

from __future__ import annotations

from collections.abc import Mapping

from mcp2p.config.schema import SCHEMA
from mcp2p.config.sections import Config
from mcp2p.errors import ConfigError


def _error(source: str, section: str, key: str, value: str, allowed: str) -> ConfigError:
    return ConfigError(f"{source}: [{section}] {key} = {value!r}: expected {allowed}")


def _check_plugins(
    config: Config,
    raw: Mapping[str, Mapping[str, str]],
    origin: Mapping[tuple[str, str], str],
) -> None:
    """Every plugin the config names exists, built in or in ``[node] plugins_dir``."""
    from mcp2p import plugins

    plugins.add_dir(config.node.plugins_dir)
    named = [
        ("discovery", "methods", "discovery", "discovery", config.discovery.methods),
        ("fetching", "code", "code", "block code", (config.fetching.code,)),
    ]
    for section, key, kind, what, values in named:
        have = plugins.names(kind)
        for value in values:
            if value not in have:
                where = origin.get((section, key), f"{config.source} (default)")
                written = raw.get(section, {}).get(key, SCHEMA[section][key].default)
                allowed = f"one of {', '.join(have)} (or a {what} plugin in [node] plugins_dir)"
                raise _error(where, section, key, written, allowed)


def _check_together(config: Config, origin: Mapping[tuple[str, str], str]) -> None:
    """Rules that tie two options together; the error names the command line
    when it set either option."""

    def where(*keys: str) -> str:
        if any(origin.get(("discovery", k)) == "command line" for k in keys):
            return "command line"
        return config.source

    d = config.discovery
    if d.reply_delay_max < d.reply_delay_min:
        raise _error(
            where("reply_delay_max", "reply_delay_min"),
            "discovery",
            "reply_delay_max",
            str(d.reply_delay_max),
            f"a number >= reply_delay_min ({d.reply_delay_min:g})",
        )
    if d.ring_timeout <= d.reply_delay_max:
        raise _error(
            where("ring_timeout", "reply_delay_max"),
            "discovery",
            "ring_timeout",
            str(d.ring_timeout),
            f"a number > reply_delay_max ({d.reply_delay_max:g}), or answers miss their ring",
        )
