"""The addressing plan and multicast routes of a `Topology` (pure).

`plan_of(t)` gives every interface's name and addresses exactly as `build`
will make them in a `Network` (``eth0``, ``eth1``, ... per node in link
order; each switch, then each switch-less link, takes the next default
subnet of `mcp2p.lab.net.addressing` unless it names one).

`multicast_routes` gives the routes every router gets (with smcrouted): an
ASM prefix in ``groups`` gets (*,G/LEN) routes from every interface to all
the others (`Router.forward_multicast_all`); an SSM prefix (inside
232.0.0.0/8 or ff30::/12, e.g. ff3e::/32) gets, for each subnet that holds
a host, a (S/LEN,G/LEN) route from the interface facing that subnet (its
reverse path) to all the others. A datagram crosses as many routers as its
TTL minus one allows.
"""

from __future__ import annotations

import ipaddress

from mcp2p.lab.net.addressing import default_subnets
from mcp2p.lab.net.topology import (
    MRoute,
    Plan,
    Port,
    Segment,
    Topology,
    TopologyError,
    group_prefix,
    is_ssm,
    segments_of,
)

__all__ = ["multicast_routes", "plan_of"]


def plan_of(t: Topology) -> Plan:
    """Interface names and addresses, in the order `Network` assigns them."""
    members, of_link = segments_of(t)
    nets: dict[str, tuple[str, str]] = {}
    index = 0
    for n in t.nodes:  # build() adds nodes in this order; each switch takes a subnet
        if n.kind == "switch":
            d4, d6 = default_subnets(index)
            nets[n.name] = (n.subnet or d4, n.subnet6 or d6)
            index += 1
    next_host: dict[str, int] = {}
    ifcount: dict[str, int] = {}
    ports: dict[str, list[Port]] = {n.name: [] for n in t.nodes}
    for i, link in enumerate(t.links):
        seg = of_link[i]
        if seg not in nets:  # a link without a switch: its own subnet
            nets[seg] = default_subnets(index)
            index += 1
        net4, net6 = ipaddress.IPv4Network(nets[seg][0]), ipaddress.IPv6Network(nets[seg][1])
        for me, peer in ((link.a, link.b), (link.b, link.a)):
            ifname = f"eth{ifcount.get(me, 0)}"
            ifcount[me] = ifcount.get(me, 0) + 1
            ip4 = ip6 = None
            if t.kind(me) != "switch":
                k = next_host.get(seg, 1)
                next_host[seg] = k + 1
                if k >= net4.num_addresses - 1:
                    raise TopologyError(f"subnet {net4} of {seg} is full")
                ip4 = f"{net4.network_address + k}/{net4.prefixlen}"
                ip6 = f"{net6.network_address + k}/{net6.prefixlen}"
            ports[me].append(Port(me, ifname, i, seg, peer, ip4, ip6))
    segments = {
        s: Segment(
            s,
            str(ipaddress.IPv4Network(nets[s][0])),
            str(ipaddress.IPv6Network(nets[s][1])),
            tuple(members[s]),
        )
        for s in members
        if s in nets
    }
    return Plan({k: tuple(v) for k, v in ports.items()}, segments)


def _reverse_paths(t: Topology, plan: Plan, router: str) -> dict[str, str]:
    """segment -> the router's interface on the shortest path to it."""
    via: dict[str, str] = {p.segment: p.ifname for p in plan.ports[router]}
    frontier = list(via)
    seen_routers = {router}
    while frontier:
        nxt = []
        for seg in frontier:
            for r in plan.segments[seg].members:
                if t.kind(r) != "router" or r in seen_routers:
                    continue
                seen_routers.add(r)
                for p in plan.ports[r]:
                    if p.segment not in via:
                        via[p.segment] = via[seg]
                        nxt.append(p.segment)
        frontier = nxt
    return via


def multicast_routes(t: Topology, plan: Plan | None = None) -> dict[str, list[MRoute]]:
    """Every router's smcroute routes (see the module docstring)."""
    plan = plan or t.plan()
    out: dict[str, list[MRoute]] = {}
    sources = [s for s in plan.segments.values() if any(t.kind(m) == "host" for m in s.members)]
    for r in t.routers:
        names = [p.ifname for p in plan.ports[r]]
        routes: list[MRoute] = []
        via = _reverse_paths(t, plan, r)
        for g in t.groups:
            if not is_ssm(g):
                for iif in names:
                    oifs = tuple(n for n in names if n != iif)
                    if oifs:
                        routes.append(MRoute(iif, None, g, oifs))
                continue
            v6 = group_prefix(g).version == 6
            for seg in sources:
                rpf = via.get(seg.name)
                oifs = tuple(n for n in names if n != rpf)
                if rpf is not None and oifs:
                    routes.append(MRoute(rpf, seg.net6 if v6 else seg.net4, g, oifs))
        out[r] = routes
    return out
