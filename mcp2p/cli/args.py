"""The command line: argparse's parser, its help, and the type of each argument.

Every usage error is one line ``mcp2p: ...`` on stderr and exit code 2,
found here before any network work.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from mcp2p import __version__
from mcp2p.cli.example import EXAMPLE_PATHS, cmd_config
from mcp2p.cli.exits import EXIT_CODES, EXIT_USAGE
from mcp2p.cli.get import cmd_get
from mcp2p.cli.keys import cmd_keys
from mcp2p.cli.search import cmd_search
from mcp2p.cli.status import cmd_status
from mcp2p.cli.trust import cmd_trust
from mcp2p.config import CONFIG_ENV

MAX_WHAT_BYTES = 255


class _Help(argparse.HelpFormatter):
    """Wraps descriptions as usual but keeps the exit code table as it is."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("exit codes:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line ``mcp2p: ...`` and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"mcp2p: {message} (see {self.prog} --help)\n")


def int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in {low}..{high}")
        return value

    return parse


def seconds_in(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not a number of seconds") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{raw} is not in {low:g}..{high:g} seconds")
        return value

    return parse


def rate(raw: str) -> int:
    from mcp2p.config import parse_rate

    try:
        return parse_rate(raw)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{raw!r}: expected {e}") from None


def what(raw: str) -> str:
    try:
        size = len(raw.encode("utf-8"))
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not valid UTF-8") from None
    if not raw.strip():
        raise argparse.ArgumentTypeError("give a name, a name pattern or a content id, not nothing")
    if size > MAX_WHAT_BYTES or "\x00" in raw:
        raise argparse.ArgumentTypeError(f"at most {MAX_WHAT_BYTES} bytes and no NUL")
    return raw


def out_dir(raw: str) -> Path:
    path = Path(raw).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{raw} is not a directory")
    return path


def absolute(raw: str) -> str:
    if not Path(raw).is_absolute() or "\n" in raw:
        raise argparse.ArgumentTypeError(f"{raw!r} is not an absolute path")
    return raw


def node_id_arg(raw: str) -> bytes:
    from mcp2p.trust.records import parse_node_id

    try:
        return parse_node_id(raw)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def hex_bytes(length: int, what: str) -> Callable[[str], bytes]:
    def parse(raw: str) -> bytes:
        if not re.fullmatch(rf"[0-9a-fA-F]{{{2 * length}}}", raw.strip()):
            raise argparse.ArgumentTypeError(f"{what} is {2 * length} hex digits")
        return bytes.fromhex(raw.strip())

    return parse


def host_port(raw: str) -> str:
    import ipaddress

    m = re.fullmatch(r"\[?([0-9A-Fa-f:.]+)\]?:(\d{1,5})", raw.strip())
    try:
        host = ipaddress.ip_address(m.group(1)) if m else None
    except ValueError:
        host = None
    if m is None or host is None or not 1 <= int(m.group(2)) <= 65535:
        raise argparse.ArgumentTypeError(f"{raw!r}: expected ADDRESS:PORT, e.g. 127.0.0.1:7713")
    shown = f"[{host}]" if host.version == 6 else str(host)
    return f"{shown}:{int(m.group(2))}"


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="mcp2p",
        description="Find and share files over multicast. The config is --config FILE, "
        f"else ${CONFIG_ENV}, else ./mcp2p.ini, else ./etc/mcp2p.ini, else "
        "/etc/mcp2p/mcp2p.ini.",
        epilog=EXIT_CODES,
        formatter_class=_Help,
    )
    p.add_argument("--version", action="version", version=f"mcp2p {__version__}")
    p.add_argument("-c", "--config", help="the ini file to read")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one option of the ini file (repeatable)",
    )
    sub = p.add_subparsers(
        dest="command", required=True, metavar="{search,get,status,keys,trust,config}"
    )
    p.set_defaults(needs_config=True)
    s = sub.add_parser(
        "search",
        help="find files on the network",
        description="Find files by name pattern (fnmatch, case-insensitive), content id, or "
        "content id prefix (8-63 hex digits; tried as a pattern too when no id matches).",
        epilog=EXIT_CODES,
        formatter_class=_Help,
    )
    s.add_argument(
        "what",
        type=what,
        help="a name pattern such as '*.iso', a 64-hex-digit content id, or 8+ of its digits",
    )
    s.add_argument(
        "--method",
        type=str.lower,
        default="query",
        help="hop-limited query (default), the SAP announcement directory (sap), or a "
        "discovery plugin's name (checked once the config, with its plugins_dir, is read)",
    )
    s.add_argument("--json", action="store_true", help="print JSON lines, one per file and node")
    s.add_argument("--answers", type=int_in(1, 255), help="stop after this many nodes answered")
    s.add_argument("--max-hops", type=int_in(1, 255), help="largest hop limit to try (1-255)")
    s.add_argument(
        "--timeout", type=seconds_in(0.05, 60), help="seconds to wait per ring (0.05-60)"
    )
    s.add_argument(
        "--reply-mode",
        choices=("unicast", "multicast"),
        help="ask for offers by unicast or to the group",
    )
    s.add_argument(
        "--no-daemon", action="store_true", help="search from this process even when a daemon runs"
    )
    s.add_argument(
        "--wait",
        type=seconds_in(0.1, 600),
        default=5.0,
        help="without a daemon, seconds to listen for SAP announcements (0.1-600)",
    )
    s.set_defaults(func=cmd_search)
    g = sub.add_parser(
        "get",
        help="fetch a file",
        description="Find a file by name, content id or content id prefix, fetch it from the "
        "nodes that have it, verify it and put it in the output directory. Interrupted, it "
        "resumes. 8-63 hex digits are a content id prefix first (an ambiguous one is refused "
        "with the candidates), a file name only when no node offers such an id.",
        epilog=EXIT_CODES,
        formatter_class=_Help,
    )
    g.add_argument(
        "what",
        type=what,
        help="a file name (exact), a 64-hex-digit content id, or 8+ of its digits",
    )
    g.add_argument(
        "-o",
        "--output",
        type=out_dir,
        metavar="DIR",
        help="directory to put the file in (made if missing). Through the daemon it must be "
        "one of the daemon's [fetching] download_dirs or inside one, and the default is the "
        "first of them; with --no-daemon (or no daemon running) the default is the current "
        "directory",
    )
    g.add_argument("--json", action="store_true", help="print progress events as JSON lines")
    g.add_argument(
        "--mode",
        choices=("multicast", "unicast"),
        help="data by multicast (default from config) or unicast",
    )
    g.add_argument("--rate", type=rate, help="wanted rate in bit/s, at least 8000, e.g. 100M")
    g.add_argument("--sources", type=int_in(1, 64), help="SNs to use at once (1-64)")
    g.add_argument(
        "--code",
        type=str.lower,
        help="block code: plain, raptorq or a block code plugin's name (checked once the "
        "config, with its plugins_dir, is read)",
    )
    g.add_argument(
        "--pick",
        choices=("nearest", "most", "trusted"),
        help="when the name stands for several files (different content ids) and trust does "
        "not settle it: the one offered nearest, by most nodes, or by most trusted nodes "
        "(without it the candidates are listed, exit 3)",
    )
    g.add_argument(
        "--no-daemon", action="store_true", help="fetch from this process even when a daemon runs"
    )
    g.set_defaults(func=cmd_get)
    st = sub.add_parser("status", help="show the local daemon's status")
    st.add_argument(
        "--url",
        action="store_true",
        help="print the status page's address with the login token, to open in a browser",
    )
    st.set_defaults(func=cmd_status)
    k = sub.add_parser(
        "keys",
        help="publish, look up or revoke key records on the key servers",
        description="Talk to the key servers of [keys] servers (HKP): publish this node's "
        "signed key record (from its state directory's node.key), look up a node's record, "
        "or revoke this node's key (final: no later record replaces a revocation).",
        epilog=EXIT_CODES,
        formatter_class=_Help,
    )
    ksub = k.add_subparsers(dest="action", required=True, metavar="{publish,lookup,revoke}")
    kp = ksub.add_parser("publish", help="publish this node's key record")
    kp.add_argument(
        "--label", action="append", default=[], help="a label in the record (repeatable, max 8)"
    )
    kp.add_argument("--days", type=int_in(1, 731), default=365, help="validity in days (1-731)")
    kl = ksub.add_parser("lookup", help="look up a node's key record")
    kl.add_argument("node_id", type=node_id_arg, metavar="NODEID", help="32 hex digits")
    ksub.add_parser("revoke", help="revoke this node's key (final)")
    k.set_defaults(func=cmd_keys)
    t = sub.add_parser(
        "trust",
        help="list, add, remove or show the nodes this node trusts",
        description="Manage known_nodes in the state directory ([trust] policy decides what "
        "it means: tofu records the SNs of each verified fetch there; pinned trusts only its "
        "nodes). A running daemon reads the file again when it changes. `mcp2p trust show` "
        "without NODE prints this node's own id and key, for `mcp2p trust add` elsewhere.",
        epilog=EXIT_CODES,
        formatter_class=_Help,
    )
    tsub = t.add_subparsers(dest="action", required=True, metavar="{list,add,remove,show}")
    tl = tsub.add_parser("list", help="list the known nodes")
    tl.add_argument("--json", action="store_true", help="one JSON object per node")
    ta = tsub.add_parser("add", help="trust a node (its id and public key)")
    ta.add_argument("node_id", type=hex_bytes(16, "a node id"), metavar="NODEID")
    ta.add_argument("key", type=hex_bytes(32, "a public key"), metavar="PUBKEYHEX")
    ta.add_argument("--label", help="a name for it (at most 64 printable characters)")
    ta.add_argument(
        "--address",
        type=host_port,
        help="ADDRESS:PORT of its control channel, pinned to it (another node answering "
        "there is refused)",
    )
    tr = tsub.add_parser("remove", help="forget a node")
    tr.add_argument("node", metavar="NODE", help="node id, 4+ of its first hex digits, or label")
    ts = tsub.add_parser("show", help="show a known node, or without NODE this node's own key")
    ts.add_argument("node", nargs="?", metavar="NODE", help="node id, its prefix, or label")
    t.set_defaults(func=cmd_trust)
    c = sub.add_parser(
        "config",
        help="print the example configuration",
        description="Print the example configuration shipped with mcp2p, every option with "
        "its comment, its paths set for an installed node (or as shipped, with --raw). "
        "Start from it: mcp2p config --example > /etc/mcp2p/mcp2p.ini",
    )
    c.add_argument("--example", action="store_true", required=True, help="print the example")
    c.add_argument(
        "--raw", action="store_true", help="print it unchanged (checkout-relative paths)"
    )
    for (section, key), (flag, default) in EXAMPLE_PATHS.items():
        c.add_argument(
            flag,
            type=absolute,
            default=default,
            metavar="DIR",
            help=f"[{section}] {key} (default {default})",
        )
    c.set_defaults(func=cmd_config, needs_config=False)
    return p
