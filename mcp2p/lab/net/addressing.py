"""The lab's address blocks, and handing out addresses on one segment.

Addresses come from private test blocks that exist only inside our
namespaces: the i-th subnet of a `Network` is 10.77.i.0/24 (then
10.78.x.0/24, ...) and fd77:0:0:i::/64, unless given. On a segment the
ends get .1, .2, ... in the order they are linked (switches get none).
`mcp2p.lab.net.plan` predicts the same addresses without making anything.
"""

from __future__ import annotations

import ipaddress

from mcp2p.lab.net.process import LabError

__all__ = ["MAX_SUBNETS", "Subnet", "default_subnets"]

MAX_SUBNETS = 256 * 100


def default_subnets(i: int) -> tuple[str, str]:
    """The IPv4 and IPv6 subnets a `Network` gives its i-th segment."""
    return f"10.{77 + i // 256}.{i % 256}.0/24", f"fd77:0:{i // 256:x}:{i % 256:x}::/64"


class Subnet:
    """One IPv4 /24-ish and one IPv6 /64 shared by the ends on a segment."""

    def __init__(self, net4: ipaddress.IPv4Network, net6: ipaddress.IPv6Network) -> None:
        self.net4 = net4
        self.net6 = net6
        self._next = 1

    def allocate(self) -> tuple[ipaddress.IPv4Interface, ipaddress.IPv6Interface]:
        n = self._next
        if n >= self.net4.num_addresses - 1:
            raise LabError(f"subnet {self.net4} is full")
        self._next += 1
        a4 = ipaddress.IPv4Interface(f"{self.net4.network_address + n}/{self.net4.prefixlen}")
        a6 = ipaddress.IPv6Interface(f"{self.net6.network_address + n}/{self.net6.prefixlen}")
        return a4, a6
