"""``twistd mcp2p``: command-line options and the service they make."""

from __future__ import annotations

import sys
from typing import Any

from twisted.python import usage

from mcp2p.config import CONFIG_ENV, Config, find_config, load_config, parse_override
from mcp2p.errors import ConfigError


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run an mcp2p node: share the configured directories, answer queries, announce "
        f"with SAP. The config is --config FILE, else ${CONFIG_ENV}, else ./mcp2p.ini, "
        "else ./etc/mcp2p.ini, else /etc/mcp2p/mcp2p.ini. Options given here override the "
        "file; every option of etc/mcp2p.ini can be set with --set SECTION.KEY=VALUE."
    )
    optParameters = [
        ["config", "c", None, "the ini file to read"],
        ["interface", "i", None, "IPv4 address of the multicast interface ([node] interface)"],
        ["state-dir", "d", None, "state directory ([node] state_dir)"],
        ["api-port", None, None, "local API port on 127.0.0.1 ([api] port)"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self.overrides: list[tuple[str, str, str]] = []
        self.shares: list[str] = []
        self.config: Config | None = None

    def opt_set(self, value: str) -> None:
        """Override one option of the ini file: SECTION.KEY=VALUE (repeatable)."""
        try:
            self.overrides.append(parse_override(value))
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

    def opt_share(self, value: str) -> None:
        """A directory to share instead of [share] paths (repeatable)."""
        self.shares.append(value)

    def postOptions(self) -> None:  # noqa: N802
        extra = []
        if self["interface"]:
            extra.append(("node", "interface", self["interface"]))
        if self["state-dir"]:
            extra.append(("node", "state_dir", self["state-dir"]))
        if self["api-port"]:
            extra.append(("api", "port", self["api-port"]))
        if self.shares:
            extra.append(("share", "paths", ", ".join(self.shares)))
        try:
            self.config = load_config(find_config(self["config"]), extra + self.overrides)
        except ConfigError as e:
            # One line, no traceback, no usage text: the operator fixes the file.
            print(f"mcp2p: {e}", file=sys.stderr)
            raise SystemExit(2) from None


def makeService(options: Options, reactor: Any = None) -> Any:  # noqa: N802
    from mcp2p.app import build

    assert options.config is not None
    try:
        return build(options.config, reactor)
    except (ConfigError, ValueError, OSError) as e:
        print(f"mcp2p: {options.config.source}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
