"""Interface counters: what crossed each link end, read with ``ip -s``.

A link end's transmitted bytes and packets come from its root qdisc where it
has one (a shaped link's tbf: ``tc -s``), else from the interface. The
interface counts a UDP GSO burst (one ``sendmsg`` of up to 64 datagrams,
which a veth carries whole) as one packet with one set of headers, so it
undercounts a GSO sender by 42 bytes a datagram (about 3% of a 1400-byte
block); the qdisc counts every datagram with its headers, as a wire would
(``qdisc_pkt_len``). The interface's own figures stay in ``tx_bytes_link``
and ``tx_packets_link``.

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

__all__ = [
    "counter_delta",
    "link_counters",
    "link_stats",
    "namespace_counters",
    "qdisc_tx",
    "with_qdisc",
]


def link_stats(stats64: dict[str, Any]) -> dict[str, int]:
    """rx/tx bytes and packets from one interface's ``stats64`` (``ip -s -j``)."""
    return {
        "rx_bytes": stats64["rx"]["bytes"],
        "tx_bytes": stats64["tx"]["bytes"],
        "rx_packets": stats64["rx"]["packets"],
        "tx_packets": stats64["tx"]["packets"],
    }


def qdisc_tx(ns: str) -> dict[str, tuple[int, int]]:
    """(bytes, packets) sent by the root qdisc of each interface of namespace
    ``ns`` that has a real one (not ``noqueue``); {} if ``tc`` says nothing."""
    cp = run_tool(["tc", "-n", ns, "-s", "-j", "qdisc", "show"], check=False)
    if cp.returncode != 0 or not cp.stdout.strip():
        return {}
    out: dict[str, tuple[int, int]] = {}
    for entry in json.loads(cp.stdout):
        if entry.get("root") and entry.get("kind") != "noqueue" and "bytes" in entry:
            out[entry["dev"]] = (int(entry["bytes"]), int(entry["packets"]))
    return out


def with_qdisc(stats: dict[str, int], qdisc: tuple[int, int] | None) -> dict[str, int]:
    """``stats`` with tx bytes and packets from the root qdisc when there is
    one (every datagram with its headers), the interface's kept as ``*_link``."""
    out = dict(stats)
    out["tx_bytes_link"], out["tx_packets_link"] = stats["tx_bytes"], stats["tx_packets"]
    if qdisc is not None:
        out["tx_bytes"], out["tx_packets"] = qdisc
    return out


def link_counters(net: Network) -> dict[str, dict[str, int]]:
    """Counters of every link end of ``net``, keyed ``"node:ifname"``."""
    out: dict[str, dict[str, int]] = {}
    for node in list(net.nodes.values()):
        names = {iface.name for iface in node.interfaces.values()}
        if not names:
            continue
        cp = node.ip("-s", "-j", "link", "show")
        qdiscs = qdisc_tx(node.ns)
        for entry in json.loads(cp.stdout):
            name = entry.get("ifname")
            if name in names:
                stats = link_stats(entry["stats64"])
                out[f"{node.name}:{name}"] = with_qdisc(stats, qdiscs.get(name))
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
    qdiscs = qdisc_tx(ns)
    out: dict[str, dict[str, int]] = {}
    for entry in json.loads(cp.stdout):
        name = entry.get("ifname")
        if name == "lo" or (wanted is not None and name not in wanted):
            continue
        out[name] = with_qdisc(link_stats(entry["stats64"]), qdiscs.get(name))
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
