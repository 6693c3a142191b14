"""``mcp2p status``: the daemon's status as JSON, or the status page's login address."""

from __future__ import annotations

import argparse
import json

from mcp2p.cli.daemon import api_url, call_daemon
from mcp2p.cli.exits import EXIT_DAEMON, EXIT_OK, CliError
from mcp2p.config import Config


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
