"""Running Twisted work in this process (the ``--no-daemon`` paths, ``keys``).

One reactor run per command, ended cleanly by Ctrl-C; errors become one line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mcp2p.cli.exits import EXIT_FAILED, EXIT_USAGE, CliError
from mcp2p.errors import ConfigError


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
