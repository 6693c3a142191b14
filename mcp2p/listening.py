"""Listening on a port the config names, or stopping the daemon with one line.

A leaf module: the services that listen (serving, API, key server) use it,
and it imports nothing of mcp2p above ``mcp2p.multicast``.
"""

from __future__ import annotations

import errno
import sys
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from mcp2p import multicast

_log = Logger(namespace="mcp2p.app")


def listen_or_exit(listen: Any, option: str) -> Any:
    """Run ``listen()``; a port that cannot be had stops the daemon with one line (exit 2).

    Only EADDRINUSE means another program has the port; EADDRNOTAVAIL means
    the address is not on this host, i.e. a wrong ``[node] interface``.
    """
    try:
        return listen()
    except CannotListenError as e:
        code = getattr(e.socketError, "errno", None)
        reason = getattr(e.socketError, "strerror", None) or str(e.socketError)
        where = f"{e.interface or '*'}:{e.port}"
        if code == errno.EADDRINUSE:
            advice = f"another program has it; change {option}"
        elif code == errno.EADDRNOTAVAIL:
            advice = multicast.not_on_host(e.interface)
        elif code == errno.EACCES:
            advice = f"ports below 1024 need privileges; change {option}"
        else:
            advice = f"check {option} and [node] interface"
        line = f"mcp2p: cannot listen on {where} ({reason}): {advice}"
        # twistd has replaced sys.stderr by its log: the line goes to the real
        # stderr (one line for whoever started the daemon) and to the log.
        print(line, file=sys.__stderr__ or sys.stderr, flush=True)
        if sys.stderr is not sys.__stderr__:
            _log.error("{line}", line=line)
        raise SystemExit(2) from None
