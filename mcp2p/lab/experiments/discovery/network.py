"""Experiment 2's emulated network: a searcher and sharing nodes at given
hop distances (a switch, then a chain of smcroute routers), their shares,
their daemons, and the bytes on every link."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mcp2p.lab.daemons import Daemon, start_all
from mcp2p.lab.net import Host, Network, Router, counter_delta

READY_TIMEOUT = 120.0


class DiscoveryLab:
    """Searcher ``s``, sharers ``n1..`` at the given ring distances."""

    def __init__(self, net: Network, root: Path, rings: list[int]) -> None:
        self.net = net
        self.root = root
        self.rings = rings
        self.s = net.add_host("s")
        routers = [net.add_router(f"r{i + 1}") for i in range(max(rings) - 1)]
        self.sharers: list[Host] = []
        ring1 = [i for i, r in enumerate(rings) if r == 1]
        hosts = {i: net.add_host(f"n{i + 1}") for i in range(len(rings))}
        if ring1:
            sw = net.add_switch("sw")
            net.link(self.s, sw)
            for i in ring1:
                net.link(hosts[i], sw)
            if routers:
                net.link(routers[0], sw)
        else:
            net.link(self.s, routers[0])
        for left, right in zip(routers, routers[1:], strict=False):
            net.link(left, right)
        for i, r in enumerate(rings):
            if r >= 2:
                net.link(hosts[i], routers[r - 2])
        net.route()
        for node in net.nodes.values():
            node.wait_ready()
        for router in routers:
            router.forward_multicast_all(["239.0.0.0/8"])
        self.sharers = [hosts[i] for i in range(len(rings))]
        self.routers: list[Router] = routers
        self.made: dict[str, int] = {}
        self.daemons: list[Daemon] = []
        far = max(range(len(rings)), key=lambda i: rings[i])
        self.far = self.sharers[far]

    def target(self, index: int = 0) -> str:
        return f"{self.far.name}-{index:06d}.dat"

    def share(self, files: int) -> None:
        """Make every sharer's share hold exactly ``files`` tiny files."""
        for h in self.sharers:
            d = self.root / h.name / "share"
            d.mkdir(parents=True, exist_ok=True)
            have = self.made.get(h.name, 0)
            for i in range(have, files):
                (d / f"{h.name}-{i:06d}.dat").write_bytes(f"{h.name} {i}\n".encode())
            for i in range(files, have):
                (d / f"{h.name}-{i:06d}.dat").unlink(missing_ok=True)
            self.made[h.name] = files

    def links(self) -> list[tuple[str, str, str]]:
        """(name, end a, end b) of every link, ends as in `Network.link_counters`."""
        out = []
        for link in self.net.links:
            a, b = link.ends
            name = f"{a.node.name}-{b.node.name}"
            out.append((name, f"{a.node.name}:{a.name}", f"{b.node.name}:{b.name}"))
        return out

    def link_bytes(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
        delta = counter_delta(before, after)
        return {
            name: delta.get(a, {}).get("tx_bytes", 0) + delta.get(b, {}).get("tx_bytes", 0)
            for name, a, b in self.links()
        }

    def start(self, sections: dict[str, dict[str, str]], files: int) -> Daemon:
        """Start every sharer (waits for its scan) and the searcher; returns the searcher."""
        self.stop()
        pairs: list[tuple[Daemon, str | None]] = []
        for h in self.sharers:
            pairs.append((Daemon(h, self.root / h.name, **sections), f"sharing {files} files"))
        searcher = Daemon(self.s, self.root / "s", **sections)
        pairs.append((searcher, "sharing 0 files"))
        start_all(pairs, timeout=READY_TIMEOUT)
        self.daemons = [d for d, _ in pairs]
        return searcher

    def start_sharers(self, sections: dict[str, dict[str, str]], files: int) -> None:
        self.stop()
        pairs: list[tuple[Daemon, str | None]] = [
            (Daemon(h, self.root / h.name, **sections), f"sharing {files} files")
            for h in self.sharers
        ]
        start_all(pairs, timeout=READY_TIMEOUT)
        self.daemons = [d for d, _ in pairs]

    def stop(self) -> None:
        for d in self.daemons:
            d.stop()
        self.daemons = []
