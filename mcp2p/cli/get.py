"""``mcp2p get``: a fetch through the daemon (followed by polling), or in this process."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mcp2p.cli.daemon import call_daemon
from mcp2p.cli.exits import EXIT_DAEMON, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CliError
from mcp2p.cli.output import Progress
from mcp2p.cli.run import _failure, _react
from mcp2p.config import Config


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
