"""The argv prefixes that start this installation's own ``twistd mcp2p`` and ``mcp2p``.

Both go through the running interpreter (see `mcp2p.twistd`),
never through a script in some ``bin/`` directory: a script's ``#!`` line
names the interpreter it was installed with, which may belong to another
checkout or not exist at all (issue 9: a committed virtualenv ran the
original checkout's code from every clone).
"""

from __future__ import annotations

import sys

TWISTD: tuple[str, ...] = (sys.executable, "-m", "mcp2p.twistd")
MCP2P: tuple[str, ...] = (sys.executable, "-m", "mcp2p")


def twistd_node(ini: str) -> list[str]:
    """argv of a foreground node on ``ini``, without a pid file."""
    return [*TWISTD, "--pidfile=", "-n", "mcp2p", "--config", ini]
