"""A link: a veth pair between two nodes, and its shaping (rate, loss).

Shaping (see DESIGN.md 9): `rate` is a ``tc tbf`` qdisc on the sending end
of a link, `loss` an nftables ``netdev`` ingress chain on the receiving end
(so it also applies to traffic a router forwards or a bridge switches);
shaped veths get GRO/GSO/TSO turned off with ethtool so both act per
packet. `Network.link` makes the veth pair itself.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from mcp2p.lab.net.addressing import Subnet
from mcp2p.lab.net.process import LabError, run_tool

if TYPE_CHECKING:
    from mcp2p.lab.net.network import Network
    from mcp2p.lab.net.nodes import Interface, Node

__all__ = ["Link"]


class Link:
    """A veth pair between two nodes, optionally shaped."""

    def __init__(self, net: Network, a: Interface, b: Interface, subnet: Subnet) -> None:
        self.net = net
        self.a = a
        self.b = b
        self.subnet = subnet
        self.rate: dict[str, int | None] = {}
        self.loss: dict[str, float | None] = {}
        self._offloads_off = False
        self._udp_segmentation_on = True

    def __repr__(self) -> str:
        return f"<Link {self.a.node.name}:{self.a.name} -- {self.b.node.name}:{self.b.name}>"

    @property
    def ends(self) -> tuple[Interface, Interface]:
        return (self.a, self.b)

    def other(self, iface: Interface) -> Interface:
        if iface is self.a:
            return self.b
        if iface is self.b:
            return self.a
        raise LabError(f"{iface!r} is not an end of {self!r}")

    def end(self, node: Node | str) -> Interface:
        name = node if isinstance(node, str) else node.name
        for iface in self.ends:
            if iface.node.name == name:
                return iface
        raise LabError(f"{name} is not on {self!r}")

    def _select(self, node: Node | str | None) -> tuple[Interface, ...]:
        return self.ends if node is None else (self.end(node),)

    def _offloads(self) -> None:
        if self._offloads_off:
            return
        for iface in self.ends:
            # Some veth features are fixed; ethtool then complains but the
            # ones that matter (gro/gso/tso) are off. Best effort.
            run_tool(
                iface.node.exec_args(
                    ["ethtool", "-K", iface.name, "gro", "off", "gso", "off", "tso", "off"]
                ),
                check=False,
            )
        self._offloads_off = True

    def _udp_segmentation(self, on: bool) -> None:
        """A veth carries a UDP GSO burst (up to 64 datagrams of an SN's
        UDP_SEGMENT send) as one packet, so a loss rule would drop whole
        bursts: while the link drops, the kernel cuts bursts into datagrams
        before it (tx-udp-segmentation off), and loss hits datagrams one by
        one, as on a wire. Without loss, bursts cross whole, as a receiving
        NIC's GRO would hand them on."""
        if self._udp_segmentation_on == on:
            return
        for iface in self.ends:
            run_tool(
                iface.node.exec_args(
                    ["ethtool", "-K", iface.name, "tx-udp-segmentation", "on" if on else "off"]
                ),
                check=False,
            )
        self._udp_segmentation_on = on

    def set_rate(
        self, rate: int | None, *, src: Node | str | None = None, queue_ms: int = 50
    ) -> None:
        """Limit traffic sent by `src` (both directions if None) to `rate` bit/s
        with a tbf qdisc; None removes the limit."""
        for iface in self._select(src):
            node = iface.node
            if rate is None:
                run_tool(
                    ["tc", "-n", node.ns, "qdisc", "del", "dev", iface.name, "root"], check=False
                )
            else:
                if rate <= 0:
                    raise LabError("rate must be positive (bit/s)")
                self._offloads()
                burst = max(3200, rate // 8 // 100)  # 10 ms worth, at least 2 frames
                run_tool([
                    "tc", "-n", node.ns, "qdisc", "replace", "dev", iface.name, "root",
                    "tbf", "rate", f"{rate}bit", "burst", str(burst),
                    "latency", f"{queue_ms}ms",
                ])  # fmt: skip
            self.rate[node.name] = rate

    def set_loss(
        self, loss: float | None, *, dst: Node | str | None = None, proto: str | None = "udp"
    ) -> None:
        """Drop a random fraction `loss` of packets received by `dst` (both
        ends if None), only `proto` ("udp", "tcp", ...; None: all). Uses an
        nftables netdev ingress chain, so forwarded and bridged traffic is
        affected too. Resolution 1/10000. None or 0 removes it."""
        for iface in self._select(dst):
            node = iface.node
            table = f"mcp2p_loss_{iface.name}"
            script = f"add table netdev {table}\ndelete table netdev {table}\n"
            if loss:
                if not 0 < loss <= 1:
                    raise LabError("loss is a fraction in (0, 1]")
                self._offloads()
                n = round(loss * 10000)
                match = f"meta l4proto {proto} " if proto else ""
                script += (
                    f"table netdev {table} {{\n"
                    f"  chain ingress {{\n"
                    f'    type filter hook ingress device "{iface.name}" priority 0;\n'
                    f"    {match}numgen random mod 10000 < {n} counter drop\n"
                    f"  }}\n}}\n"
                )
            run_tool(node.exec_args(["nft", "-f", "-"]), input=script)
            self.loss[node.name] = loss or None
        self._udp_segmentation(not any(self.loss.values()))

    def loss_drops(self, dst: Node | str) -> int:
        """Packets dropped so far by the loss rule at `dst`'s end."""
        iface = self.end(dst)
        cp = run_tool(
            iface.node.exec_args(
                ["nft", "-j", "list", "table", "netdev", f"mcp2p_loss_{iface.name}"]
            ),
            check=False,
        )
        if cp.returncode != 0:
            return 0
        for item in json.loads(cp.stdout).get("nftables", []):
            rule = item.get("rule")
            if rule:
                for expr in rule.get("expr", []):
                    if "counter" in expr:
                        return int(expr["counter"]["packets"])
        return 0
