"""The ``mcp2p`` command: talks to the local daemon's API, or works in-process.

``mcp2p search PATTERN`` asks the daemon when one answers on its API port
(the daemon then searches the network from its own node); otherwise it
runs the expanding-ring search itself, as a client-only node.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.error
import urllib.request
from typing import Any

from mcp2p import __version__
from mcp2p.config import CONFIG_ENV, Config, find_config, load_config, parse_override
from mcp2p.errors import ConfigError

EXIT_NOT_FOUND = 1
EXIT_ERROR = 2


def api_url(config: Config) -> str | None:
    port = config.api.port
    if port == 0:
        try:
            port = int((config.node.state_dir / "api.port").read_text().strip())
        except (OSError, ValueError):
            return None
    return f"http://127.0.0.1:{port}"


def call_daemon(
    config: Config, path: str, body: Any = None, timeout: float = 60, method: str | None = None
) -> Any:
    """The daemon's JSON answer, or None when no daemon listens."""
    base = api_url(config)
    if base is None:
        return None
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        base + path, data=data, headers={"content-type": "application/json"}, method=method
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read()).get("error", str(e))
        except ValueError:
            message = str(e)
        raise SystemExit(f"mcp2p: the daemon refused the request: {message}") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None


def search_in_process(config: Config, body: dict[str, Any], wait: float) -> dict[str, Any]:
    """Run the search with a client-only node in this process."""
    from twisted.internet import defer, task

    from mcp2p.api.service import search_options

    out: dict[str, Any] = {}

    async def run(reactor: Any) -> None:
        method, kwargs = search_options(body, config.discovery.ring_schedule)
        if method == "query":
            from mcp2p.discovery.query import QueryNode

            node = QueryNode(
                reactor, config.discovery, str(config.node.interface), config.node.interface6
            )
            multicast_replies = kwargs.get("reply_mode", config.discovery.reply_mode) != "unicast"
            node.start(listen_group=multicast_replies)
            try:
                result = await node.search(**kwargs)
            finally:
                await node.stop()
        else:
            result = await sap_listen(reactor, config, kwargs, wait)
        out.update(result.to_json())

    def main(reactor: Any) -> Any:
        return defer.ensureDeferred(run(reactor))

    try:
        task.react(main)
    except SystemExit as e:
        if e.code:
            raise
    return out


async def sap_listen(reactor: Any, config: Config, kwargs: dict[str, Any], wait: float) -> Any:
    """Listen to the SAP group for ``wait`` seconds and search what was heard."""
    import socket
    import time

    from twisted.internet import defer, task

    from mcp2p import multicast
    from mcp2p.discovery.methods import directory_result
    from mcp2p.discovery.sap import SAPDirectory, SAPProtocol

    directory = SAPDirectory(
        floor=config.sap.cache_timeout,
        bandwidth_limit_bps=config.sap.bandwidth_limit,
        min_interval=config.sap.min_interval,
    )
    protocol = SAPProtocol(directory, reactor, b"", str(config.sap.group))
    iface = str(config.node.interface)
    port = multicast.listen(reactor, protocol, config.sap.port, socket.AF_INET, iface)
    multicast.join(port, config.sap.group, iface)
    started = time.monotonic()
    try:
        await task.deferLater(reactor, wait, lambda: None)
    finally:
        await defer.maybeDeferred(port.stopListening)
    result = directory_result(
        directory.search(pattern=kwargs["pattern"], content_id=kwargs["content_id"])
    )
    result.reason = "listened"
    result.elapsed = time.monotonic() - started
    return result


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def print_result(result: dict[str, Any], as_json: bool) -> int:
    rows = []
    for s in result["servers"]:
        for f in s["files"]:
            rows.append((s, f))
    if as_json:
        for s, f in rows:
            line = dict(f)
            line.update(
                node_id=s["node_id"],
                address=s["address"],
                distance=s["distance"],
                rtt=s["rtt"],
            )
            print(json.dumps(line))
    else:
        if rows:
            print(
                f"{'CONTENT ID':<16}  {'SIZE':>10}  {'HOPS':>4}  {'NODE':<12}  "
                f"{'ADDRESS':<15}  NAME"
            )
        for s, f in rows:
            hops = "-" if s["distance"] is None else str(s["distance"])
            print(
                f"{f['content_id'][:16]}  {human_size(f['size']):>10}  {hops:>4}  "
                f"{s['node_id'][:12]}  {s['address']:<15}  {f['name']}"
            )
        rings = ", ".join(str(h) for h in result.get("hop_limits", []))
        print(
            f"{len(rows)} files from {len(result['servers'])} nodes"
            + (
                f"; rings with hop limits {rings}, {result['query_bytes']} query bytes"
                if rings
                else ""
            )
            + f"; {result['elapsed']:.2f} s ({result['reason']})",
            file=sys.stderr,
        )
    return 0 if rows else EXIT_NOT_FOUND


def cmd_search(config: Config, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"method": args.method}
    if re.fullmatch(r"[0-9a-fA-F]{64}", args.what):
        body["content_id"] = args.what.lower()
    else:
        body["pattern"] = args.what
    if args.method == "query":
        for key in ("answers", "max_hops", "timeout", "reply_mode"):
            if getattr(args, key) is not None:
                body[key] = getattr(args, key)
    result = None if args.no_daemon else call_daemon(config, "/api/search", body)
    if result is None:
        result = search_in_process(config, body, args.wait)
    return print_result(result, args.json)


class Progress:
    """Prints fetch events: a one-line progress bar on a terminal, or JSON lines."""

    def __init__(self, as_json: bool, stream: Any = None) -> None:
        self.as_json = as_json
        self.stream = stream or sys.stdout
        self.name = ""
        self.tty = self.stream.isatty()
        self.last_len = 0

    def __call__(self, event: dict[str, Any]) -> None:
        if self.as_json:
            print(json.dumps(event), file=self.stream, flush=True)
            return
        kind = event.get("event")
        if kind == "manifest":
            self.name = event["name"]
            self._line(
                f"{self.name}: {human_size(event['size'])}, {event['pieces']} pieces, "
                f"{event['verified']} already verified",
                final=True,
            )
        elif kind == "progress":
            total = max(event["total"], 1)
            eta = "-" if event["eta"] is None else f"{event['eta']:.0f}s"
            sources = ", ".join(
                f"{s['node'][:8]} {'?' if s['distance'] is None else s['distance']} hop "
                f"{s['mode']}" + ("" if s["state"] == "active" else f" ({s['state']})")
                for s in event["sources"]
            )
            self._line(
                f"{self.name} {human_size(event['bytes'])}/{human_size(event['total'])} "
                f"{100 * event['bytes'] / total:5.1f}% {event['rate'] / 1e6:6.1f} MB/s "
                f"ETA {eta} [{sources}]",
                final=not self.tty,
            )
        elif kind == "source_dropped":
            self._line(f"dropped {event['source']['node']}: {event['reason']}", final=True)
        elif kind == "done":
            rate = event["bytes"] / max(event["elapsed"], 1e-9) / 1e6
            self._line(
                f"done: {event['path']} ({event['elapsed']:.1f} s, {rate:.1f} MB/s)", final=True
            )
        elif kind == "failed":
            self._line(f"failed: {event['error']}", final=True)

    def _line(self, text: str, final: bool) -> None:
        if self.tty:
            pad = max(0, self.last_len - len(text))
            self.stream.write("\r" + text + " " * pad + ("\n" if final else ""))
            self.last_len = 0 if final else len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def fetch_body(args: argparse.Namespace) -> dict[str, Any]:
    from pathlib import Path

    body: dict[str, Any] = {"target": args.what, "out_dir": str(Path(args.output).resolve())}
    for key in ("mode", "sources", "code"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    if args.rate is not None:
        from mcp2p.config import parse_rate

        try:
            body["rate"] = parse_rate(args.rate)
        except ValueError as e:
            raise SystemExit(f"mcp2p: --rate {args.rate!r}: expected {e}") from None
    return body


def cmd_get(config: Config, args: argparse.Namespace) -> int:
    import time

    body = fetch_body(args)
    show = Progress(args.json)
    started = None if args.no_daemon else call_daemon(config, "/api/fetch", body)
    if started is None:
        return get_in_process(config, body, show)
    tid, since = started["id"], 0
    try:
        while True:
            state = call_daemon(config, f"/api/transfers/{tid}?since={since}", timeout=10)
            if state is None:
                print("mcp2p: the daemon stopped answering", file=sys.stderr)
                return EXIT_ERROR
            for event in state["events"]:
                show(event)
            since = state["next"]
            if state["state"] != "running":
                return 0 if state["state"] == "done" else EXIT_ERROR
            time.sleep(0.25)
    except KeyboardInterrupt:
        call_daemon(config, f"/api/transfers/{tid}", method="DELETE", timeout=5)
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return 130


def get_in_process(config: Config, body: dict[str, Any], show: Progress) -> int:
    from pathlib import Path

    from twisted.internet import defer, task

    from mcp2p.api.service import fetch_options
    from mcp2p.discovery.query import QueryNode
    from mcp2p.transfer.fetch import Fetch
    from mcp2p.trust.keys import load_or_create

    outcome: dict[str, Any] = {}

    async def run(reactor: Any) -> None:
        options = fetch_options(body)
        identity = load_or_create(config.node.state_dir)
        node = QueryNode(
            reactor, config.discovery, str(config.node.interface), config.node.interface6
        )
        node.start(listen_group=config.discovery.reply_mode == "multicast")
        out_dir = options.pop("out_dir", Path(body["out_dir"]))
        fetch = Fetch(
            reactor,
            config,
            identity,
            node.search,
            body["target"],
            out_dir,
            on_event=show,
            **options,
        )
        try:
            outcome["path"] = await fetch.run()
        except Exception as e:  # noqa: BLE001 - reported as one line
            show({"event": "failed", "error": str(e)})
            outcome["error"] = str(e)
        finally:
            await node.stop()

    try:
        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            return EXIT_ERROR
    return 0 if "path" in outcome else EXIT_ERROR


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    status = call_daemon(config, "/api/status", timeout=5)
    if status is None:
        print(f"mcp2p: no daemon answers at {api_url(config)}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(status, indent=2))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mcp2p",
        description="Find and share files over multicast. The config is --config FILE, "
        f"else ${CONFIG_ENV}, else ./mcp2p.ini, else ./etc/mcp2p.ini, else "
        "/etc/mcp2p/mcp2p.ini.",
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
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "search",
        help="find files on the network",
        description="Find files by name pattern (fnmatch, case-insensitive) or content id.",
    )
    s.add_argument("what", help="a name pattern such as '*.iso', or a 64-hex-digit content id")
    s.add_argument(
        "--method",
        choices=("query", "sap"),
        default="query",
        help="hop-limited query (default), or the SAP announcement directory",
    )
    s.add_argument("--json", action="store_true", help="print JSON lines, one per file and node")
    s.add_argument("--answers", type=int, help="stop after this many nodes answered")
    s.add_argument("--max-hops", type=int, help="largest hop limit to try")
    s.add_argument("--timeout", type=float, help="seconds to wait per ring")
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
        type=float,
        default=5.0,
        help="without a daemon, seconds to listen for SAP announcements",
    )
    s.set_defaults(func=cmd_search)
    g = sub.add_parser(
        "get",
        help="fetch a file",
        description="Find a file by name or content id, fetch it from the nodes that have it, "
        "verify it and put it in the output directory. Interrupted, it resumes.",
    )
    g.add_argument("what", help="a file name (exact) or a 64-hex-digit content id")
    g.add_argument("-o", "--output", default=".", help="directory to put the file in")
    g.add_argument("--json", action="store_true", help="print progress events as JSON lines")
    g.add_argument(
        "--mode",
        choices=("multicast", "unicast"),
        help="data by multicast (default from config) or unicast",
    )
    g.add_argument("--rate", help="wanted rate in bit/s, e.g. 100M")
    g.add_argument("--sources", type=int, help="SNs to use at once")
    g.add_argument("--code", choices=("plain", "raptorq"), help="block code")
    g.add_argument(
        "--no-daemon", action="store_true", help="fetch from this process even when a daemon runs"
    )
    g.set_defaults(func=cmd_get)
    st = sub.add_parser("status", help="show the local daemon's status")
    st.set_defaults(func=cmd_status)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        overrides = [parse_override(item) for item in args.set]
        config = load_config(find_config(args.config), overrides)
    except ConfigError as e:
        print(f"mcp2p: {e}", file=sys.stderr)
        return EXIT_ERROR
    return int(args.func(config, args))


if __name__ == "__main__":
    sys.exit(main())
