"""Making a `Topology` real: `build` it in a `Network`, `daemon_ini` for its hosts.

For experiments::

    from mcp2p.lab.net import Network, build, chain, daemon_ini, load, star, tree

    t = star(8, rate=100_000_000, loss=0.01)    # or load("etc/lab/tree.ini")
    with Network() as net:                      # a fresh, empty Network
        nodes = build(t, net)                   # name -> Host / Router / Switch
        nodes["sn"].ping(nodes["cn3"].addr())
        ini = daemon_ini(t, "cn3", root / "cn3", discovery={"methods": "query"})
"""

from __future__ import annotations

from pathlib import Path

from mcp2p.lab.net.addressing import default_subnets
from mcp2p.lab.net.network import Network
from mcp2p.lab.net.nodes import Node
from mcp2p.lab.net.plan import multicast_routes
from mcp2p.lab.net.process import LabError
from mcp2p.lab.net.router import Router
from mcp2p.lab.net.topology import Topology, TopologyError

__all__ = ["build", "daemon_ini"]


def daemon_ini(topology: Topology, host_name: str, root: Path, **overrides: dict[str, str]) -> str:
    """A complete mcp2p ini for ``host_name`` whose files live under ``root``
    (``root/state``, ``root/share``, ``root/downloads``): ``node.interface``
    is the host's IPv4 address, the API on a free port (written to
    ``state/api.port``), discovery and serving at mcp2p's defaults.
    ``overrides`` maps a section to options that replace or add to these,
    e.g. ``discovery={"methods": "query"}``, ``node={"interface6": "eth0"}``."""
    from mcp2p.lab.daemons import ini_text, node_sections

    if topology.kind(host_name) != "host":
        raise TopologyError(f"{host_name} is a {topology.kind(host_name)}, not a host")
    sections = dict(overrides)
    sections["discovery"] = {"methods": "query, sap", **overrides.get("discovery", {})}
    head = f"# mcp2p daemon on host {host_name} of lab topology {topology.name}\n\n"
    interface = topology.plan().address(host_name)
    return head + ini_text(node_sections(interface, Path(root), **sections))


def build(topology: Topology, net: Network) -> dict[str, Node]:
    """Make ``topology`` in ``net`` (a fresh `mcp2p.lab.net.Network`):
    nodes, links with rate and loss, unicast routes, multicast routes on
    every router; waits until every interface is ready. Returns name ->
    `Host` / `Router` / `Switch`. Addresses are those of ``topology.plan()``
    (checked)."""
    if not isinstance(net, Network):
        raise TypeError("build() wants a mcp2p.lab.net.Network")
    if net.nodes:
        raise LabError("build() wants an empty Network (the plan's subnets start at 10.77.0.0)")
    plan = topology.plan()
    nodes: dict[str, Node] = {}
    for spec in topology.nodes:
        if spec.kind == "host":
            nodes[spec.name] = net.add_host(spec.name)
        elif spec.kind == "router":
            nodes[spec.name] = net.add_router(spec.name)
        else:
            seg = plan.segments.get(spec.name)
            net4, net6 = (seg.net4, seg.net6) if seg else default_subnets(0)
            nodes[spec.name] = net.add_switch(
                spec.name, subnet=net4, subnet6=net6, snooping=spec.snooping
            )
    ports = {(p.link, p.node): p for ps in plan.ports.values() for p in ps}
    for i, ls in enumerate(topology.links):
        pa, pb = ports[(i, ls.a)], ports[(i, ls.b)]
        seg = plan.segments[pa.segment]
        p2p = "switch" not in (topology.kind(ls.a), topology.kind(ls.b))
        link = net.link(
            nodes[ls.a], nodes[ls.b],
            subnet=seg.net4 if p2p else None, subnet6=seg.net6 if p2p else None,
            rate=ls.rate, ifnames=(pa.ifname, pb.ifname),
        )  # fmt: skip
        if ls.loss_a:
            link.set_loss(ls.loss_a, dst=nodes[ls.a])
        if ls.loss_b:
            link.set_loss(ls.loss_b, dst=nodes[ls.b])
    net.route()
    for node in nodes.values():
        node.wait_ready()
    for name, node_ports in plan.ports.items():
        for p in node_ports:
            iface = nodes[name].interfaces[p.ifname]
            got = (str(iface.ip4) if iface.ip4 else None, str(iface.ip6) if iface.ip6 else None)
            if got != (p.ip4, p.ip6):
                raise LabError(f"{name}:{p.ifname} got {got}, the plan says {(p.ip4, p.ip6)}")
    for rname, routes in multicast_routes(topology, plan).items():
        router = nodes[rname]
        assert isinstance(router, Router)
        for r in routes:
            router.forward_multicast(r.group, r.iif, list(r.oifs), source=r.source, apply=False)
        router.apply_multicast()
    return nodes
