"""The ini file, read into a typed, frozen, validated configuration.

Every option is declared once in ``SCHEMA`` with its parser, default and a
one-line description; ``etc/mcp2p.ini`` documents the same options (a test
keeps the two in step). An unknown section or key, or a bad value, raises
``ConfigError`` whose message is one line naming file, section, key, value
and what is allowed (Tahoe-LAFS ``validate_config`` is the model).

Plugin settings live in ``[plugin:NAME]`` sections and are passed through
as strings for the plugin to validate.

One module per job, every public name importable from here:

- ``parsers``: the value parsers (sizes, rates, ranges, groups, paths, plugin names, ...)
- ``schema``: ``SCHEMA`` (every option with its parser, default and help) and ``RENAMED``
- ``sections``: the typed frozen section dataclasses, ``SECTIONS`` and ``Config``
- ``load``: finding, reading and layering the ini file and the command line
- ``checks``: the rules that tie options together, and plugin names that must exist
"""

from __future__ import annotations

from mcp2p.config.load import (
    CONFIG_ENV,
    DEFAULT_LOCATIONS,
    config_from_string,
    find_config,
    load_config,
    parse_override,
)
from mcp2p.config.parsers import UNIX_PATH_MAX, parse_rate
from mcp2p.config.schema import RENAMED, SCHEMA, Option, Parser
from mcp2p.config.sections import (
    SECTIONS,
    APISection,
    Config,
    DiscoverySection,
    FetchingSection,
    IPAddress,
    IPNetwork,
    KeysSection,
    NodeSection,
    SAPSection,
    ServingSection,
    ShareSection,
    TrustSection,
)
from mcp2p.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_LOCATIONS",
    "RENAMED",
    "SCHEMA",
    "SECTIONS",
    "UNIX_PATH_MAX",
    "APISection",
    "Config",
    "ConfigError",
    "DiscoverySection",
    "FetchingSection",
    "IPAddress",
    "IPNetwork",
    "KeysSection",
    "NodeSection",
    "Option",
    "Parser",
    "SAPSection",
    "ServingSection",
    "ShareSection",
    "TrustSection",
    "config_from_string",
    "find_config",
    "load_config",
    "parse_override",
    "parse_rate",
]
