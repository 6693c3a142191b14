"""Finding the ini file, reading it and layering the command line on top.

Each value remembers where it came from (the file, the command line, or the
default) so that an error names it.
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mcp2p.config.checks import _check_plugins, _check_together, _error
from mcp2p.config.schema import RENAMED, SCHEMA
from mcp2p.config.sections import SECTIONS, Config
from mcp2p.errors import ConfigError

# Where a config is looked for when none is named, in order (see find_config).
CONFIG_ENV = "MCP2P_CONFIG"
DEFAULT_LOCATIONS = ("./mcp2p.ini", "./etc/mcp2p.ini", "/etc/mcp2p/mcp2p.ini")


def config_from_string(
    text: str,
    source: str = "<string>",
    base_dir: Path | None = None,
    overrides: Iterable[tuple[str, str, str]] = (),
) -> Config:
    """Parse and validate ``text``; ``overrides`` are (section, key, value) triples
    (the command line's), applied on top of the file and validated the same way."""
    base = (base_dir or Path.cwd()).resolve()
    parser = configparser.ConfigParser(interpolation=None, strict=True, default_section="\0")
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(text, source=source)
    except configparser.Error as e:
        raise ConfigError(f"{source}: " + " ".join(str(e).split())) from None

    raw: dict[str, dict[str, str]] = {}
    origin: dict[tuple[str, str], str] = {}
    plugins: dict[str, dict[str, str]] = {}
    for name in parser.sections():
        if name.startswith("plugin:") and len(name) > len("plugin:"):
            plugins[name[len("plugin:") :]] = dict(parser[name])
            continue
        if name not in SCHEMA:
            allowed = ", ".join(f"[{s}]" for s in SCHEMA) + ", [plugin:NAME]"
            raise ConfigError(f"{source}: unknown section [{name}]: expected one of {allowed}")
        for key, value in parser[name].items():
            if (name, key) in RENAMED:
                raise ConfigError(
                    f"{source}: [{name}] {key} is no longer read: use {RENAMED[(name, key)]}"
                )
            if key not in SCHEMA[name]:
                raise ConfigError(
                    f"{source}: [{name}] unknown key {key!r} = {value!r}: expected one of "
                    + ", ".join(SCHEMA[name])
                )
            raw.setdefault(name, {})[key] = value
            origin[(name, key)] = source
    for section, key, value in overrides:
        if (section, key) in RENAMED:
            raise ConfigError(
                f"command line: {section}.{key} is no longer read: use {RENAMED[(section, key)]}"
            )
        if section not in SCHEMA or key not in SCHEMA[section]:
            raise ConfigError(f"command line: unknown option {section}.{key}")
        raw.setdefault(section, {})[key] = value
        origin[(section, key)] = "command line"

    sections: dict[str, Any] = {}
    for section, options in SCHEMA.items():
        values: dict[str, Any] = {}
        for key, option in options.items():
            value = raw.get(section, {}).get(key, option.default)
            try:
                values[key] = option.parse(value, base)
            except ValueError as e:
                where = origin.get((section, key), f"{source} (default)")
                raise _error(where, section, key, value, str(e)) from None
        sections[section] = SECTIONS[section](**values)
    config = Config(source=source, base_dir=base, sections=sections, plugins=plugins)
    _check_together(config, origin)
    _check_plugins(config, raw, origin)
    return config


def find_config(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """Where the config is: ``--config``, ``$MCP2P_CONFIG``, then DEFAULT_LOCATIONS.

    Raises ConfigError naming every place looked at when none exists.
    """
    env = os.environ if environ is None else environ
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"{explicit}: config file not found (named by --config)")
        return path
    if env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found (named by ${CONFIG_ENV})")
        return path
    for candidate in DEFAULT_LOCATIONS:
        if Path(candidate).is_file():
            return Path(candidate)
    raise ConfigError(
        "no config file: give --config FILE or set $MCP2P_CONFIG (looked in "
        + ", ".join(DEFAULT_LOCATIONS)
        + ")"
    )


def load_config(path: Path, overrides: Iterable[tuple[str, str, str]] = ()) -> Config:
    """Read the file at ``path``; relative paths in it are relative to its directory."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config: {e}") from None
    return config_from_string(
        text, source=str(path), base_dir=Path(path).resolve().parent, overrides=overrides
    )


def parse_override(text: str) -> tuple[str, str, str]:
    """``section.key=value`` from the command line, as a triple."""
    m = re.fullmatch(r"([a-z0-9_]+)\.([a-z0-9_]+)=(.*)", text, re.DOTALL)
    if not m:
        raise ConfigError(f"command line: {text!r}: expected SECTION.KEY=VALUE")
    return m.group(1), m.group(2), m.group(3)
