"""``mcp2p config --example``: the example configuration, its paths set for an installed node."""

from __future__ import annotations

import argparse
import re
import sys

from mcp2p.cli.exits import EXIT_FAILED, EXIT_OK, CliError
from mcp2p.config import Config

# (section, key) of the example config's paths, and an installed node's values.
EXAMPLE_PATHS = {
    ("node", "state_dir"): ("--state-dir", "/var/lib/mcp2p"),
    ("share", "paths"): ("--share", "/var/lib/mcp2p/share"),
    ("fetching", "download_dirs"): ("--download-dir", "/var/lib/mcp2p/downloads"),
    ("node", "plugins_dir"): ("--plugins-dir", "/etc/mcp2p/plugins"),
}


def example_config(values: dict[tuple[str, str], str] | None = None) -> str:
    """The example config shipped in the package; ``values`` replace (section, key)'s value.

    Every other line, comments included, stays as it is.
    """
    from importlib import resources

    text = resources.files("mcp2p").joinpath("data", "mcp2p.ini").read_text(encoding="utf-8")
    if not values:
        return text
    out: list[str] = []
    section = ""
    replaced: set[tuple[str, str]] = set()
    skipping = False  # the continuation lines of a replaced value
    for line in text.splitlines(keepends=True):
        if skipping and line.strip() and line[0] in " \t" and not line.lstrip().startswith("#"):
            continue
        skipping = False
        header = re.fullmatch(r"\s*\[([^\]]+)\]\s*", line)
        if header:
            section = header.group(1).strip()
        else:
            option = re.fullmatch(r"([A-Za-z0-9_]+)(\s*[=:]\s*).*?(\r?\n?)", line, re.DOTALL)
            if option and (section, option.group(1)) in values:
                key = (section, option.group(1))
                line = option.group(1) + option.group(2) + values[key] + (option.group(3) or "\n")
                replaced.add(key)
                skipping = True
        out.append(line)
    missing = sorted(set(values) - replaced)
    if missing:
        raise CliError(
            "the example config lacks " + ", ".join(f"[{s}] {k}" for s, k in missing),
            EXIT_FAILED,
        )
    return "".join(out)


def cmd_config(config: Config | None, args: argparse.Namespace) -> int:
    values = None
    if not args.raw:
        values = {
            key: getattr(args, flag[2:].replace("-", "_"))
            for key, (flag, _) in EXAMPLE_PATHS.items()
        }
    sys.stdout.write(example_config(values))
    return EXIT_OK
