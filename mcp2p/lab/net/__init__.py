"""Emulated networks built from Linux network namespaces, and lab topologies.

Nodes are hosts, routers (IPv4/IPv6 forwarding plus `smcrouted` for static
multicast routes) and switches (a Linux bridge in its own namespace); links
are veth pairs, optionally shaped (rate, loss). Requires root and the
`ip`, `tc`, `nft`, `ethtool` and `smcrouted` tools. Processes are killed by
pid (SIGTERM, then SIGKILL after a timeout), never by name::

    with Network() as net:
        a, b = net.chain(2)            # a -- r1 -- r2 -- b, 239/8 + ff05::/16
        b.popen([...])                 # killed by pid on exit
        a.run([...]); a.counters(net["r1"])

One module per job:

- `process`: running tools and processes, stopping them by pid (`LabError`)
- `namespaces`: our namespaces' names; orphans reaped, exit and SIGTERM hooks
- `detached`: networks left up after their process exits, taken down later
- `addressing`: the lab's address blocks, addresses on a segment
- `nodes`: `Node`, `Host`, `Switch` and their `Interface`s
- `router`: `Router`, forwarding and smcrouted's multicast routes
- `link`: `Link`, a veth pair and its shaping (tc rate, nftables loss)
- `network`: `Network`, assembling nodes and links, up, down, detach
- `counters`: interface counters, before and after

Lab topologies, described as data and made real in a `Network`:

- `topology`: `Topology` and its node and link specs, checked when made
- `topoini`: the ini form (`parse`, `load`, `to_ini`)
- `plan`: every interface's name and address, every router's multicast routes
- `shapes`: the built-ins `star`, `chain`, `tree`
- `build`: `build` a `Topology` in a `Network`; `daemon_ini` for its hosts
- `cli`: ``python -m mcp2p.lab topo SPEC up|down|status|show``
"""

from mcp2p.lab.net.build import build, daemon_ini
from mcp2p.lab.net.counters import counter_delta, namespace_counters
from mcp2p.lab.net.detached import destroy_detached, detached_networks
from mcp2p.lab.net.link import Link
from mcp2p.lab.net.namespaces import NS_PREFIX, reap_orphans
from mcp2p.lab.net.network import Network
from mcp2p.lab.net.nodes import Host, Interface, Node, Switch
from mcp2p.lab.net.plan import multicast_routes
from mcp2p.lab.net.process import LabError, missing_requirements, process_start_time
from mcp2p.lab.net.router import Router
from mcp2p.lab.net.shapes import BUILTINS, builtin, chain, star, tree
from mcp2p.lab.net.topoini import format_loss, format_rate, load, parse, to_ini
from mcp2p.lab.net.topology import (
    DEFAULT_GROUPS,
    LinkSpec,
    MRoute,
    NodeSpec,
    Plan,
    Port,
    Segment,
    Topology,
    TopologyError,
    is_ssm,
)

__all__ = [
    "BUILTINS",
    "DEFAULT_GROUPS",
    "NS_PREFIX",
    "Host",
    "Interface",
    "LabError",
    "Link",
    "LinkSpec",
    "MRoute",
    "Network",
    "Node",
    "NodeSpec",
    "Plan",
    "Port",
    "Router",
    "Segment",
    "Switch",
    "Topology",
    "TopologyError",
    "build",
    "builtin",
    "chain",
    "counter_delta",
    "daemon_ini",
    "destroy_detached",
    "detached_networks",
    "format_loss",
    "format_rate",
    "is_ssm",
    "load",
    "missing_requirements",
    "multicast_routes",
    "namespace_counters",
    "parse",
    "process_start_time",
    "reap_orphans",
    "star",
    "to_ini",
    "tree",
]
