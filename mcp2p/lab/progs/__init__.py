"""Small programs the lab runs inside namespaces, one module each.

Each is run as ``[sys.executable, "-m", "mcp2p.lab.progs.NAME", ARGS...]``
(`command`) with positional arguments, and prints what its caller parses
(one JSON document or line, or a number). They import the standard library
and, where they talk to a daemon, `mcp2p.api.client` or `mcp2p.cli` only, so
they start fast; every loop in them is bounded in count or time.

- `api_call`: one call to a daemon's local API (`mcp2p.lab.daemons.Daemon.api`);
- `ping`: ICMP echo where iputils is not installed (`mcp2p.lab.net`);
- `at_go`: wait for a start file, then exec a command (`mcp2p.lab.peers`);
- `tcp_sender`, `tcp_receiver`: the plain TCP peer (`mcp2p.lab.peers`);
- `cn_cli`: a CN's ``mcp2p`` CLI started at a signal (`mcp2p.lab.transfer`);
- `forger`: forged multicast data packets (`mcp2p.lab.experiments.control`);
- `sap_poller`: when SAP names appear (`mcp2p.lab.experiments.discovery`);
- `fetch_driver`: many fetches through one API (`mcp2p.lab.experiments.groups`).
"""

from __future__ import annotations

import sys

__all__ = ["command"]


def command(name: str, *args: str) -> list[str]:
    """The argv that runs program ``name`` with ``args`` in this interpreter."""
    return [sys.executable, "-m", f"{__name__}.{name}", *args]
