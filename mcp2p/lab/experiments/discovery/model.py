"""Experiment 2's pure parts: the parameter checks, the daemons' config
sections for each method, and the SAP timing of a point (RFC 2974's
interval at the lab's speed-up); no namespaces, no I/O."""

from __future__ import annotations

from typing import Any

from mcp2p.core.sapinterval import (
    DEFAULT_BANDWIDTH_LIMIT_BPS,
    DEFAULT_MIN_INTERVAL,
    announcement_interval,
)
from mcp2p.lab import sim

# the [discovery] section of every daemon measuring the query method
QUERY_DISCOVERY = {"methods": "query", "answers_wanted": "1"}


def check(p: dict[str, Any]) -> None:
    """Refuse parameters the run cannot measure, before any namespace is built."""
    rings = [int(r) for r in p["rings"]]
    if not rings or any(not 1 <= r <= 8 for r in rings):
        raise ValueError("rings must list hop distances in 1..8")
    for key in ("files", "sap_files", "sim_files", "sim_peers"):
        if any(int(x) < 1 for x in p[key]):
            raise ValueError(f"{key} must be >= 1")
    if max(p["files"], default=0) > 100_000 or max(p["sap_files"], default=0) > 100_000:
        raise ValueError("at most 100000 files per emulated node")
    if not 1 <= float(p["sap_speedup"]) <= 3000:
        raise ValueError("sap_speedup must be in [1, 3000]")
    if p["sap_timeout"] <= 0 or p["idle"] <= 0 or p["sap_targets"] < 1:
        raise ValueError("sap_timeout, idle and sap_targets must be > 0")
    for kind in p["sim_kinds"]:
        if kind not in sim.KINDS:
            raise ValueError(f"sim_kinds: {kind!r} is not one of {sim.KINDS}")
    if any(int(n) > 2_000_000 for n in p["sim_peers"]):
        raise ValueError("at most 2,000,000 simulated nodes")


def sap_sections(k: float) -> dict[str, dict[str, str]]:
    """The daemons' config sections for SAP at ``k`` x RFC 2974's rate."""
    return {
        "discovery": {"methods": "sap"},
        "sap": {
            "bandwidth_limit": str(int(DEFAULT_BANDWIDTH_LIMIT_BPS * k)),
            "min_interval": f"{max(0.1, DEFAULT_MIN_INTERVAL / k):g}",
        },
    }


def sap_point(files: int, nodes: int, ad: int, k: float) -> dict[str, Any]:
    """The head of a SAP point: ``nodes`` sharers announcing ``files`` files
    each, ``ad`` bytes an announcement, at ``k`` x RFC 2974: the interval the
    RFC's rule gives, and ``batch_wait``, how long to let every announcer send
    its first batch (at the whole limit, one slot per ad) with a margin."""
    limit = DEFAULT_BANDWIDTH_LIMIT_BPS * k
    ads = nodes * files
    return {
        "method": "sap",
        "files": files,
        "nodes": nodes,
        "ads": ads,
        "ad_size": ad,
        "speedup": k,
        "limit": limit,
        "min_interval": DEFAULT_MIN_INTERVAL / k,
        "interval": announcement_interval(ad, ads, limit, DEFAULT_MIN_INTERVAL / k),
        "batch_wait": files * 8.0 * ad / limit * 1.2 + 1.0,
    }
