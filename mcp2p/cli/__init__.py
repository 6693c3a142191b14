"""The ``mcp2p`` command: talks to the local daemon's API, or works in-process.

``mcp2p search WHAT`` asks the daemon when one answers on its API port
(the daemon then searches the network from its own node); otherwise it
runs the expanding-ring search itself, as a client-only node. ``mcp2p get``
likewise fetches through the daemon or in this process.

WHAT is read as: 64 hex digits, a content id; 8-63 hex digits, a content
id prefix (as git abbreviates object names: SNs answer with the files whose
id starts with those digits), and only when no node offers such an id, a
file name; anything else, a file name (``get``: exact) or a name pattern
(``search``: fnmatch, no case). ``get`` refuses an ambiguous prefix and
lists the candidates. A name is a label, not a vote: when several content
ids answer to it, ``get`` takes the one trusted nodes offer ([trust] policy),
else lists the candidates and stops, unless ``--pick`` says how to choose.
``mcp2p trust`` manages the state directory's known_nodes.

Every usage error is one line ``mcp2p: ...`` on stderr and exit code 2,
found by argparse before any network work; the other exit codes are
``EXIT_CODES``, shown by ``mcp2p --help``.

One module per job: ``command`` (``main``), ``args`` (the parser and
argument types), ``exits`` (exit codes, ``CliError``), ``daemon`` (the
daemon's API), ``run`` (Twisted work in this process), ``what`` (how WHAT is
read), ``output`` (tables, JSON lines, progress), and one module per
subcommand: ``search``, ``get``, ``status``, ``keys``, ``trust``,
``example`` (``config --example``).
"""

from mcp2p.cli.args import parser
from mcp2p.cli.command import check_plugin_names, main
from mcp2p.cli.daemon import api_url, call_daemon
from mcp2p.cli.example import EXAMPLE_PATHS, example_config
from mcp2p.cli.exits import (
    EXIT_AMBIGUOUS,
    EXIT_CODES,
    EXIT_DAEMON,
    EXIT_ERROR,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
)
from mcp2p.cli.get import fetch_body, get_in_process
from mcp2p.cli.output import Progress, human_size, print_result
from mcp2p.cli.search import search_in_process
from mcp2p.cli.what import FULL_ID, ID_PREFIX, search_attempts

__all__ = [
    "EXAMPLE_PATHS",
    "EXIT_AMBIGUOUS",
    "EXIT_CODES",
    "EXIT_DAEMON",
    "EXIT_ERROR",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "FULL_ID",
    "ID_PREFIX",
    "CliError",
    "Progress",
    "api_url",
    "call_daemon",
    "check_plugin_names",
    "example_config",
    "fetch_body",
    "get_in_process",
    "human_size",
    "main",
    "parser",
    "print_result",
    "search_attempts",
    "search_in_process",
]
