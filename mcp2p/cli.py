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
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from mcp2p import __version__
from mcp2p.config import CONFIG_ENV, Config, find_config, load_config, parse_override
from mcp2p.core.display import display_name, display_path, display_text
from mcp2p.errors import ConfigError

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_AMBIGUOUS = 3
EXIT_DAEMON = 4
EXIT_FAILED = 5
EXIT_INTERRUPTED = 130
EXIT_ERROR = EXIT_DAEMON  # the name mcp2p.lab uses for "no daemon answered"

EXIT_CODES = """exit codes:
  0    done: files found, file fetched, status shown
  1    not found: no node offers what was asked for
  2    usage error: a bad option, value or config file (one line on stderr)
  3    ambiguous: a content id prefix, or a name trust does not settle, matches
       several files (they are listed; give a content id or --pick)
  4    the daemon refused the request, its API token is unreadable, or no daemon answers
  5    the search or the transfer failed (the reason is on stderr)
  130  interrupted (Ctrl-C); get resumes where it stopped when run again"""

FULL_ID = re.compile(r"[0-9a-fA-F]{64}")
ID_PREFIX = re.compile(r"[0-9a-fA-F]{8,63}")
MAX_WHAT_BYTES = 255

# (section, key) of the example config's paths, and an installed node's values.
EXAMPLE_PATHS = {
    ("node", "state_dir"): ("--state-dir", "/var/lib/mcp2p"),
    ("share", "paths"): ("--share", "/var/lib/mcp2p/share"),
    ("fetching", "download_dirs"): ("--download-dir", "/var/lib/mcp2p/downloads"),
    ("node", "plugins_dir"): ("--plugins-dir", "/etc/mcp2p/plugins"),
}


class CliError(Exception):
    """Ends the command with ``mcp2p: message`` on stderr and ``code``."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# -- the daemon's API -----------------------------------------------------------


def api_url(config: Config) -> str | None:
    """Where the running daemon's API is asked: ``[api] unix_socket`` when it
    exists, else http://127.0.0.1:PORT, PORT the one the daemon wrote to its
    state directory (it may have been started with another port than the
    config file says, ``--set api.port=0``), else ``[api] port``."""
    from mcp2p.api.client import ApiClient

    client = ApiClient.for_config(config)
    return client.where if client is not None else None


def call_daemon(
    config: Config, path: str, body: Any = None, timeout: float = 60, method: str | None = None
) -> Any:
    """The daemon's JSON answer, or None when no daemon listens.

    Over TCP the request carries the token of ``STATE_DIR/api.token``. A
    refusal raises CliError: exit 2 for a request the daemon found invalid
    (HTTP 400), else 4; so does a token this user cannot read.
    """
    from mcp2p.api.client import ApiClient, NoDaemon, NotADaemon, Refused, TokenUnreadable

    client = ApiClient.for_config(config)
    if client is None:
        return None
    try:
        return client.call(method or ("GET" if body is None else "POST"), path, body, timeout)
    except NoDaemon:
        return None
    except TokenUnreadable as e:
        raise CliError(
            f"{e}: run as the daemon's user, or use [api] unix_socket", EXIT_DAEMON
        ) from None
    except Refused as e:
        if e.status == 401:
            raise CliError(
                f"the daemon refused the API token in {client.token_path} (HTTP 401): it is "
                "wrong or stale; is this the daemon's config, and its state directory?",
                EXIT_DAEMON,
            ) from None
        code = EXIT_USAGE if e.status == 400 else EXIT_DAEMON
        raise CliError(f"the daemon refused the request: {e.message}", code) from None
    except NotADaemon as e:
        raise CliError(str(e), EXIT_DAEMON) from None


# -- search ---------------------------------------------------------------------

Keep = Callable[[dict[str, Any]], bool]


def _prefix_keep(prefix: str) -> Keep:
    return lambda f: str(f["content_id"]).startswith(prefix)


def search_attempts(what: str, method: str) -> list[tuple[dict[str, Any], Keep | None]]:
    """The searches ``mcp2p search WHAT`` tries in turn, each with a filter of its files."""
    if FULL_ID.fullmatch(what):
        return [({"method": method, "content_id": what.lower()}, None)]
    if not ID_PREFIX.fullmatch(what):
        return [({"method": method, "pattern": what}, None)]
    prefix = what.lower()
    if method == "sap":
        # The SAP directory is already here: list it once, keep ids then names.
        import fnmatch

        folded = what.casefold()

        def by_id_or_name(f: dict[str, Any]) -> bool:
            return str(f["content_id"]).startswith(prefix) or fnmatch.fnmatchcase(
                str(f["name"]).casefold(), folded
            )

        return [({"method": "sap", "pattern": "*"}, by_id_or_name)]
    if method != "query":
        # A plugin's method knows patterns, not prefixes: the digits are a name.
        return [({"method": method, "pattern": what}, None)]
    # An SN's offer is only a claim: keep what really starts with the prefix.
    return [
        ({"method": "query", "content_id_prefix": prefix}, _prefix_keep(prefix)),
        ({"method": "query", "pattern": what}, None),
    ]


def keep_files(result: dict[str, Any], keep: Keep | None) -> dict[str, Any]:
    if keep is None:
        return result
    servers = []
    for s in result["servers"]:
        files = [f for f in s["files"] if keep(f)]
        if files:
            servers.append({**s, "files": files})
    return {**result, "servers": servers}


def count_files(result: dict[str, Any]) -> int:
    return sum(len(s["files"]) for s in result["servers"])


def search_in_process(
    config: Config,
    attempts: list[tuple[dict[str, Any], Keep | None]],
    wait: float,
) -> dict[str, Any]:
    """Run the searches in turn with a client-only node in this process.

    The first one that finds a file ends it (the reactor runs once: every
    attempt is made in the same run).
    """

    from twisted.internet import defer

    from mcp2p.api.service import BadRequest, search_options

    try:
        planned = [
            (search_options(body, config.discovery.ring_schedule), keep) for body, keep in attempts
        ]
    except BadRequest as e:
        raise CliError(str(e), EXIT_USAGE) from None
    for (method, _), _ in planned:
        if method not in ("query", "sap"):
            raise CliError(
                f"--method {method} runs inside a daemon (its plugin is made for a node): "
                "start one with this config, or leave out --no-daemon",
                EXIT_USAGE,
            )
    out: dict[str, Any] = {}
    errors: list[Exception] = []

    async def run(reactor: Any) -> None:
        try:
            for (method, kwargs), keep in planned:
                if method == "query":
                    from mcp2p.app import build_client

                    mode = kwargs.get("reply_mode", config.discovery.reply_mode)
                    client = build_client(config, reactor, listen_group=mode != "unicast")
                    try:
                        result = await client.search(**kwargs)
                    finally:
                        await client.stop()
                else:
                    result = await sap_listen(reactor, config, kwargs, wait)
                out.clear()
                out.update(keep_files(result.to_json(), keep))
                if count_files(out):
                    break
        except defer.CancelledError:
            out.clear()  # interrupted
        except Exception as e:  # reported in one line below
            errors.append(e)

    _react(run)
    if errors:
        raise _failure(errors[0], "search")
    if not out:
        raise CliError("interrupted", EXIT_INTERRUPTED)
    return out


def _react(run: Callable[[Any], Any]) -> None:
    """Run ``run(reactor)`` to completion (or Ctrl-C) in this process's one reactor run.

    Ctrl-C stops the reactor: ``run`` is cancelled (CancelledError at its
    await) before the reactor shuts down, so it closes its sockets and
    leaves no coroutine behind to fail at exit.
    """
    from twisted.internet import defer, task

    def main(reactor: Any) -> Any:
        d = defer.ensureDeferred(run(reactor))

        def cancel() -> None:
            if not d.called:
                d.cancel()

        reactor.addSystemEventTrigger("before", "shutdown", cancel)
        return d.addErrback(lambda f: f.trap(defer.CancelledError))

    try:
        task.react(main)
    except SystemExit as e:
        if e.code not in (0, None):
            raise CliError(f"stopped with code {e.code}", EXIT_FAILED) from None


def _failure(error: Exception, what: str) -> CliError:
    from twisted.internet.error import CannotListenError

    if isinstance(error, ConfigError):  # e.g. multicast.InterfaceError
        return CliError(str(error), EXIT_USAGE)
    if isinstance(error, CannotListenError):
        reason = getattr(error.socketError, "strerror", None) or str(error.socketError)
        return CliError(
            f"{what} failed: cannot listen on {error.interface or '*'}:{error.port} ({reason})",
            EXIT_FAILED,
        )
    return CliError(f"{what} failed: {error}", EXIT_FAILED)


async def sap_listen(reactor: Any, config: Config, kwargs: dict[str, Any], wait: float) -> Any:
    """Listen to the SAP group for ``wait`` seconds and search what was heard."""
    from mcp2p.app import build_client

    client = build_client(config, reactor, query=False)
    return await client.listen_sap(kwargs["pattern"], kwargs["content_id"], wait)


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def print_result(result: dict[str, Any], as_json: bool, what: str = "") -> int:
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
                f"{s['node_id'][:12]}  {s['address']:<15}  {display_name(str(f['name']))}"
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
        ids = {f["content_id"] for _, f in rows}
        if (
            ID_PREFIX.fullmatch(what)
            and len(ids) > 1
            and all(i.startswith(what.lower()) for i in ids)
        ):
            print(
                f"mcp2p: {len(ids)} files have a content id starting with {what.lower()}; "
                "give mcp2p get more digits (--json shows whole ids)",
                file=sys.stderr,
            )
        if not rows and what:
            print(f"mcp2p: not found: {not_found_text(what)}", file=sys.stderr)
    return EXIT_OK if rows else EXIT_NOT_FOUND


def not_found_text(what: str) -> str:
    if FULL_ID.fullmatch(what):
        return f"no node offers content id {what.lower()}"
    if ID_PREFIX.fullmatch(what):
        return (
            f"no node offers a file whose content id starts with {what.lower()}, "
            f"nor one named {what!r}"
        )
    return f"no node offers a file matching {what!r}"


def cmd_search(config: Config, args: argparse.Namespace) -> int:
    attempts = search_attempts(args.what, args.method)
    if args.method == "query":
        for body, _ in attempts:
            for key in ("answers", "max_hops", "timeout", "reply_mode"):
                if getattr(args, key) is not None:
                    body[key] = getattr(args, key)
    result = None
    if not args.no_daemon:
        for body, keep in attempts:
            answer = call_daemon(config, "/api/search", body)
            if answer is None:  # no daemon: search from here
                break
            result = keep_files(answer, keep)
            if count_files(result):
                break
    if result is None:
        result = search_in_process(config, attempts, args.wait)
        if args.method == "sap" and not count_files(result):
            print(sap_hint(config, args.wait), file=sys.stderr)
    return print_result(result, args.json, args.what)


def sap_hint(config: Config, wait: float) -> str:
    """Why a daemon-less SAP search may hear nothing: RFC 2974 spaces the
    repeats of one announcement at least [sap] min_interval apart."""
    return (
        f"mcp2p: no daemon runs here, so this search only heard the SAP group for "
        f"{wait:g} s, and nodes repeat each announcement every {config.sap.min_interval:g} s "
        "or more ([sap] min_interval); a running daemon keeps the directory of what it "
        "heard (start one with make run or twistd mcp2p), or use the query (the default method)"
    )


class Progress:
    """Prints fetch events: a one-line progress bar on a terminal, or JSON lines.

    Failures go to stderr as ``mcp2p: ...`` (with the candidates of an
    ambiguous prefix); ``exit_code()`` maps the events seen to the exit code.
    """

    def __init__(self, as_json: bool, stream: Any = None, errors: Any = None) -> None:
        self.as_json = as_json
        self.stream = stream or sys.stdout
        self.errors = errors or sys.stderr
        self.name = ""
        self.tty = self.stream.isatty()
        self.last_len = 0
        self.outcome = ""  # done, not_found, ambiguous, failed
        self.candidates: list[dict[str, Any]] = []

    def exit_code(self) -> int:
        return {
            "done": EXIT_OK,
            "not_found": EXIT_NOT_FOUND,
            "ambiguous": EXIT_AMBIGUOUS,
            "usage": EXIT_USAGE,
        }.get(self.outcome, EXIT_FAILED)

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind in ("done", "not_found", "ambiguous") or (kind == "failed" and not self.outcome):
            self.outcome = str(kind)
        if kind == "ambiguous":
            self.candidates = list(event.get("candidates", []))
        if self.as_json:
            print(json.dumps(event), file=self.stream, flush=True)
            return
        if kind == "manifest":
            self.name = display_name(str(event["name"]))
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
            reason = display_text(str(event["reason"]))
            self._line(f"dropped {event['source']['node']}: {reason}", final=True)
        elif kind == "done":
            rate = event["bytes"] / max(event["elapsed"], 1e-9) / 1e6
            self._line(
                f"done: {display_path(event['path'])} ({event['elapsed']:.1f} s, {rate:.1f} MB/s)",
                final=True,
            )
        elif kind == "failed":
            if self.tty and self.last_len:
                self._line("", final=True)
            print(f"mcp2p: {display_text(str(event['error']))}", file=self.errors, flush=True)
            for c in self.candidates:
                nodes = ", ".join(n[:12] for n in c["nodes"])
                more = ""
                if "trust" in c:  # a name's candidates: who vouches, how near
                    hops = "?" if c.get("hops") is None else c["hops"]
                    more = f"; {c['trust']}, {c.get('trusted', 0)} trusted; {hops} hops"
                print(
                    f"  {c['content_id']}  {human_size(c['size']):>10}  "
                    f"{display_name(str(c['name']))}  "
                    f"(nodes {nodes}{more})",
                    file=self.errors,
                    flush=True,
                )

    def _line(self, text: str, final: bool) -> None:
        if self.tty:
            pad = max(0, self.last_len - len(text))
            self.stream.write("\r" + text + " " * pad + ("\n" if final else ""))
            self.last_len = 0 if final else len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def fetch_body(args: argparse.Namespace) -> dict[str, Any]:
    """The /api/fetch body; no out_dir without -o (the daemon then uses its first
    download dir)."""
    body: dict[str, Any] = {"target": args.what}
    if args.output is not None:
        body["out_dir"] = str(args.output)
    for key in ("mode", "sources", "code", "rate", "pick"):
        if getattr(args, key, None) is not None:
            body[key] = getattr(args, key)
    return body


def cmd_get(config: Config, args: argparse.Namespace) -> int:
    import time

    if args.output is not None:
        try:
            # As the user who runs the command: the daemon does not make directories.
            args.output.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CliError(
                f"-o {args.output}: cannot make the directory ({e.strerror})", EXIT_USAGE
            ) from None
    body = fetch_body(args)
    show = Progress(args.json)
    started = None if args.no_daemon else call_daemon(config, "/api/fetch", body)
    if started is None:
        if "out_dir" not in body:  # this process writes as the user: here
            body["out_dir"] = str(Path.cwd())
        return get_in_process(config, body, show)
    tid, since = started["id"], 0
    try:
        while True:
            state = call_daemon(config, f"/api/transfers/{tid}?since={since}", timeout=10)
            if state is None:
                raise CliError("the daemon stopped answering", EXIT_DAEMON)
            for event in state["events"]:
                show(event)
            since = state["next"]
            if state["state"] != "running":
                return EXIT_OK if state["state"] == "done" else show.exit_code()
            time.sleep(0.25)
    except KeyboardInterrupt:
        call_daemon(config, f"/api/transfers/{tid}", method="DELETE", timeout=5)
        print("\nmcp2p: interrupted: run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


def get_in_process(config: Config, body: dict[str, Any], show: Progress) -> int:
    from twisted.internet import defer

    from mcp2p.api.service import BadRequest, fetch_options

    try:
        options = fetch_options(body)
    except BadRequest as e:
        raise CliError(str(e), EXIT_USAGE) from None
    outcome: dict[str, Any] = {}

    async def run(reactor: Any) -> None:
        from mcp2p.app import build_client
        from mcp2p.transfer.fetch import Fetch, FetchError

        client = None
        try:
            client = build_client(config, reactor)
            out_dir = options.pop("out_dir", Path(body["out_dir"]))
            fetch = Fetch(
                reactor,
                config,
                client.identity,
                client.search,
                body["target"],
                out_dir,
                on_event=show,
                **options,
            )
            outcome["path"] = await fetch.run()
        except defer.CancelledError:
            pass  # interrupted
        except FetchError as e:
            outcome["error"] = str(e)
            show({"event": "failed", "error": str(e)})
        except Exception as e:  # reported as one line
            failure = _failure(e, "fetch")
            outcome["error"] = str(failure)
            if failure.code == EXIT_USAGE:
                show.outcome = "usage"
            show({"event": "failed", "error": str(failure)})
        finally:
            if client is not None:
                await client.stop()

    _react(run)
    if "path" in outcome:
        return EXIT_OK
    if "error" in outcome:
        return show.exit_code()
    print("\nmcp2p: interrupted: run the same command again to resume", file=sys.stderr)
    return EXIT_INTERRUPTED


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    status = call_daemon(config, "/api/status", timeout=5)
    if status is None:
        raise CliError(f"no daemon answers at {api_url(config)}", EXIT_DAEMON)
    if args.url:
        # The browser's way in (over TCP, even when this command used the socket):
        # the page trades the token for a cookie and drops it from the address.
        from mcp2p.api.client import ApiClient, TokenUnreadable

        client = ApiClient.for_config(config, tcp=True)
        if client is None:
            raise CliError("the daemon's API port is unknown ([api] port = 0)", EXIT_DAEMON)
        try:
            print(client.login_url())
        except TokenUnreadable as e:
            raise CliError(
                f"{e}: run as the daemon's user, or use [api] unix_socket", EXIT_DAEMON
            ) from None
        return EXIT_OK
    print(json.dumps(status, indent=2))
    return EXIT_OK


# -- keys -----------------------------------------------------------------------


def cmd_keys(config: Config, args: argparse.Namespace) -> int:
    """``mcp2p keys publish|lookup|revoke``: talk HKP to ``[keys] servers``."""
    import time

    from mcp2p.trust import keyclient, records

    client_servers = config.keys.servers
    if not client_servers:
        raise CliError("no key server configured: set [keys] servers = ADDRESS[:PORT]", EXIT_USAGE)
    result: dict[str, Any] = {}

    async def run(reactor: Any) -> None:
        client = keyclient.client_for(config.keys, reactor)
        try:
            if args.action == "lookup":
                answer = await client.fetch(args.node_id)
                result["answer"] = answer
            else:
                result["posted"] = await client.publish(result["record"])
        except keyclient.LookupFailed as e:
            result["failed"] = str(e)

    if args.action in ("publish", "revoke"):
        from mcp2p.trust.keys import KEY_FILE, load_or_create

        key_file = config.node.state_dir / KEY_FILE
        if not key_file.exists():
            raise CliError(f"no node key at {key_file}: start the daemon once to make it", 1)
        try:
            identity = load_or_create(config.node.state_dir)
        except (OSError, ValueError) as e:
            raise CliError(f"cannot read {key_file}: {e}", EXIT_FAILED) from None
        now = int(time.time())
        try:
            if args.action == "revoke":
                result["record"] = records.make_revocation(identity, now)
            else:
                result["record"] = records.make_record(
                    identity, now, lifetime=int(args.days * 86400), labels=args.label
                )
        except ValueError as e:
            raise CliError(f"cannot make the record: {e}", EXIT_USAGE) from None
    _react(run)
    if "failed" in result:
        raise CliError(f"no key server answered: {result['failed']}", EXIT_FAILED)
    if args.action == "lookup":
        answer = result["answer"]
        record = answer.record
        if record is None:
            print(f"no record for {args.node_id.hex()} (server {answer.server or '?'})")
            return EXIT_NOT_FOUND
        state = "valid"
        if record.revoked or record.expired(time.time()):
            state = "revoked" if record.revoked else "expired"
        print(
            json.dumps(
                {
                    "node_id": record.node_id.hex(),
                    "key": record.public_key.hex(),
                    "labels": list(record.labels),
                    "issued": record.issued,
                    "expires": record.expires,
                    "state": state,
                    "server": answer.server,
                    "endpoint": str(answer.endpoint),
                },
                indent=2,
            )
        )
        return EXIT_OK if state == "valid" else EXIT_NOT_FOUND
    endpoint, code, text = result["posted"]
    if code != 200:
        raise CliError(f"{endpoint} refused the record (HTTP {code}): {text}", EXIT_FAILED)
    print(f"{endpoint}: {text}")
    return EXIT_OK


def node_id_arg(raw: str) -> bytes:
    from mcp2p.trust.records import parse_node_id

    try:
        return parse_node_id(raw)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# -- trust ----------------------------------------------------------------------


def _when(t: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def cmd_trust(config: Config, args: argparse.Namespace) -> int:
    """``mcp2p trust list|add|remove|show``: STATE/known_nodes, edited in place
    (a running daemon reads it again at its next decision)."""
    import time

    from mcp2p.trust.known import KnownNodes, entry_to_json
    from mcp2p.trust.policy import KnownError, forget, remember

    known = KnownNodes(config.node.state_dir)
    policy = config.trust.policy
    if args.action == "show" and args.node is None:
        from mcp2p.trust.keys import load_or_create

        identity = load_or_create(config.node.state_dir)
        node, key = identity.node_id.hex(), identity.public_key.hex()
        print(json.dumps({"node_id": node, "key": key}, indent=2))
        print(f"on another node: mcp2p trust add {node} {key}", file=sys.stderr)
        return EXIT_OK
    try:
        state, bad = known.read()
        if bad:
            print(f"mcp2p: {known.path}: {bad} lines skipped (not entries)", file=sys.stderr)
        if args.action == "list":
            nodes = sorted(state.nodes.values(), key=lambda n: (n.first_seen, n.node_id))
            if args.json:
                for n in nodes:
                    print(json.dumps(entry_to_json(n)))
                return EXIT_OK
            print(f"# {known.path}: {len(nodes)} nodes, [trust] policy = {policy}")
            for n in nodes:
                print(
                    f"{n.node_id.hex()}  {n.origin:<8}  {_when(n.first_seen)}  "
                    f"{n.address or '-':<21}  {display_text(n.label) or '-'}  "
                    f"{len(n.names)} names"
                )
            return EXIT_OK
        if args.action == "add":
            from mcp2p.trust.keys import node_id_of

            if node_id_of(args.key) != args.node_id:
                raise CliError(
                    f"that key's node id is {node_id_of(args.key).hex()}, not "
                    f"{args.node_id.hex()}: check both (mcp2p trust show prints a node's own)",
                    EXIT_USAGE,
                )
            now = time.time()
            known.update(
                lambda st: remember(
                    st,
                    args.node_id,
                    args.key,
                    now,
                    address=args.address or "",
                    label=args.label,
                    origin="operator",
                )
            )
            print(f"trusted {args.node_id.hex()} ({known.path}, [trust] policy = {policy})")
            return EXIT_OK
        matches = state.find(args.node)
        if not matches:
            print(f"mcp2p: no known node {args.node!r} in {known.path}", file=sys.stderr)
            return EXIT_NOT_FOUND
        if len(matches) > 1:
            print(f"mcp2p: {args.node!r} names {len(matches)} known nodes:", file=sys.stderr)
            for n in matches:
                print(f"  {n.node_id.hex()}  {display_text(n.label)}", file=sys.stderr)
            return EXIT_AMBIGUOUS
        [entry] = matches
        if args.action == "remove":
            known.update(lambda st: forget(st, entry.node_id))
            print(f"removed {entry.node_id.hex()} from {known.path}")
            return EXIT_OK
        shown = entry_to_json(entry)
        shown["first_seen_at"], shown["last_seen_at"] = (
            _when(entry.first_seen),
            _when(entry.last_seen),
        )
        print(json.dumps(shown, indent=2))
        return EXIT_OK
    except KnownError as e:
        raise CliError(str(e), EXIT_FAILED) from None


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


# -- config ---------------------------------------------------------------------


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


# -- argument parsing -------------------------------------------------------------


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


if __name__ == "__main__":
    sys.exit(main())
