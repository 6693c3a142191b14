"""``main``: parse the command line, read the config, run the subcommand, return its exit code."""

from __future__ import annotations

import argparse
import sys

from mcp2p.cli.args import parser
from mcp2p.cli.exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, CliError
from mcp2p.config import find_config, load_config, parse_override
from mcp2p.errors import ConfigError


def check_plugin_names(args: argparse.Namespace) -> None:
    """--method and --code name plugins: valid names are known once load_config
    has added the config's [node] plugins_dir (argparse's choices come too early)."""
    from mcp2p import plugins

    for option, kind in (("method", "discovery"), ("code", "code")):
        value = getattr(args, option, None)
        if value is not None and value not in plugins.names(kind):
            have = ", ".join(plugins.names(kind))
            raise CliError(f"--{option} {value}: expected one of {have}", EXIT_USAGE)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        config = None
        if args.needs_config:
            overrides = [parse_override(item) for item in args.set]
            config = load_config(find_config(args.config), overrides)
            check_plugin_names(args)
        return int(args.func(config, args))
    except ConfigError as e:
        print(f"mcp2p: {e}", file=sys.stderr)
        return EXIT_USAGE
    except CliError as e:
        print(f"mcp2p: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("\nmcp2p: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (mcp2p search ... | head): no traceback for that.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
