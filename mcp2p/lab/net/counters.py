"""Interface counters: what crossed each link end, read with ``ip -s``.

`Network.link_counters` reads every link end of a network (one ``ip -s``
per node), `namespace_counters` the interfaces of a namespace by name (for
a network of an earlier process, see `mcp2p.lab.net.detached`), and
`counter_delta` subtracts two readings.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from mcp2p.lab.net.namespaces import NS_PREFIX
from mcp2p.lab.net.process import LabError, run_tool

if TYPE_CHECKING:
    from mcp2p.lab.net.network import Network

__all__ = ["counter_delta", "link_counters", "link_stats", "namespace_counters"]


def link_stats(stats64: dict[str, Any]) -> dict[str, int]:
    """rx/tx bytes and packets from one interface's ``stats64`` (``ip -s -j``)."""
    return {
        "rx_bytes": stats64["rx"]["bytes"],
        "tx_bytes": stats64["tx"]["bytes"],
        "rx_packets": stats64["rx"]["packets"],
        "tx_packets": stats64["tx"]["packets"],
    }


def link_counters(net: Network) -> dict[str, dict[str, int]]:
    """Counters of every link end of ``net``, keyed ``"node:ifname"``."""
    out: dict[str, dict[str, int]] = {}
    for node in list(net.nodes.values()):
        names = {iface.name for iface in node.interfaces.values()}
        if not names:
            continue
        cp = node.ip("-s", "-j", "link", "show")
        for entry in json.loads(cp.stdout):
            if entry.get("ifname") in names:
                out[f"{node.name}:{entry['ifname']}"] = link_stats(entry["stats64"])
    return out


def namespace_counters(ns: str, ifnames: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
    """rx/tx bytes and packets of the interfaces in namespace ``ns`` (all but
    ``lo`` if ``ifnames`` is None), keyed by interface name; {} if ``ns`` is
    gone. For networks of an earlier process (see `destroy_detached`)."""
    if not ns.startswith(NS_PREFIX):
        raise LabError(f"not one of our namespaces: {ns!r}")
    cp = run_tool(["ip", "-n", ns, "-s", "-j", "link", "show"], check=False)
    if cp.returncode != 0 or not cp.stdout.strip():
        return {}
    wanted = set(ifnames) if ifnames is not None else None
    out: dict[str, dict[str, int]] = {}
    for entry in json.loads(cp.stdout):
        name = entry.get("ifname")
        if name == "lo" or (wanted is not None and name not in wanted):
            continue
        out[name] = link_stats(entry["stats64"])
    return out


def counter_delta(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
) -> dict[str, dict[str, int]]:
    """``after - before`` per link end and counter (ends in both only)."""
    return {
        end: {k: after[end][k] - before[end].get(k, 0) for k in after[end]}
        for end in after
        if end in before
    }
