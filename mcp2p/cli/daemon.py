"""Talking to the local daemon's API: where it listens, and one call with its errors.

``call_daemon`` returns None when no daemon answers, so a command can fall
back to working in this process (``--no-daemon`` skips the call).
"""

from __future__ import annotations

from typing import Any

from mcp2p.cli.exits import EXIT_DAEMON, EXIT_USAGE, CliError
from mcp2p.config import Config


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
