"""``mcp2p search``: through the daemon, or in this process as a client-only node."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mcp2p.cli.daemon import call_daemon
from mcp2p.cli.exits import EXIT_INTERRUPTED, EXIT_USAGE, CliError
from mcp2p.cli.output import print_result
from mcp2p.cli.run import _failure, _react
from mcp2p.cli.what import Keep, count_files, keep_files, search_attempts
from mcp2p.config import Config


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


async def sap_listen(reactor: Any, config: Config, kwargs: dict[str, Any], wait: float) -> Any:
    """Listen to the SAP group for ``wait`` seconds and search what was heard."""
    from mcp2p.app import build_client

    client = build_client(config, reactor, query=False)
    return await client.listen_sap(kwargs["pattern"], kwargs["content_id"], wait)
