"""A lab topology as pure data: nodes, links, multicast prefixes, checked.

A `Topology` is frozen dataclasses with no I/O, checked when made (raises
`TopologyError`, one line). Node names are letters, digits and ``_`` (no
``-``: ``a-b`` names a link). Every node has a link; no switch-to-switch
links; two nodes share at most one link; the routers must not form a cycle
and every host must reach every other (through switches and routers: hosts
never forward).

`Topology.plan()` (see `mcp2p.lab.net.plan`) gives every interface's name
and addresses as `mcp2p.lab.net.build.build` makes them; `Port`, `Segment`,
`Plan` and `MRoute` are its answer's types. The ini form is
`mcp2p.lab.net.topoini`, the built-ins `mcp2p.lab.net.shapes`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_GROUPS",
    "KINDS",
    "NAME_RE",
    "LinkSpec",
    "MRoute",
    "NodeSpec",
    "Plan",
    "Port",
    "Segment",
    "Topology",
    "TopologyError",
    "group_prefix",
    "is_ssm",
    "segments_of",
]

DEFAULT_GROUPS: tuple[str, ...] = (
    "239.0.0.0/8",  # ASM: mcp2p's query and SAP groups, its ASM pool
    "232.0.0.0/8",  # SSM (IPv4)
    "ff05::/16",  # ASM, site-local scope
    "ff15::/16",  # ASM, site-local transient: mcp2p's IPv6 query group, ASM pool
    "ff3e::/32",  # SSM (IPv6, global scope)
)
KINDS = ("host", "router", "switch")

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
_SSM4 = ipaddress.IPv4Network("232.0.0.0/8")
_SSM6 = ipaddress.IPv6Network("ff30::/12")


class TopologyError(ValueError):
    """A topology description that cannot be built; the message is one line."""


@dataclass(frozen=True)
class NodeSpec:
    """A host, router or switch. ``snooping``/``subnet``/``subnet6``: switches only."""

    name: str
    kind: str
    snooping: bool = False
    subnet: str | None = None
    subnet6: str | None = None


@dataclass(frozen=True)
class LinkSpec:
    """A link between nodes ``a`` and ``b``: ``rate`` bit/s each way (None:
    unshaped), ``loss_a``/``loss_b`` the fraction of UDP dropped arriving
    at that end."""

    a: str
    b: str
    rate: int | None = None
    loss_a: float = 0.0
    loss_b: float = 0.0


@dataclass(frozen=True)
class Port:
    """One end of a link as `build` makes it."""

    node: str
    ifname: str
    link: int  # index into Topology.links
    segment: str
    peer: str
    ip4: str | None  # "10.77.0.1/24"; None on a switch port
    ip6: str | None


@dataclass(frozen=True)
class Segment:
    """An IP subnet: a switch's, or a link's that has no switch on it."""

    name: str  # the switch's name, or "a-b"
    net4: str
    net6: str
    members: tuple[str, ...]  # the hosts and routers with an address on it


@dataclass(frozen=True)
class Plan:
    """Interface names and addresses, in the order `Network` assigns them."""

    ports: dict[str, tuple[Port, ...]]  # node name -> its ports, eth0 first
    segments: dict[str, Segment]

    def address(self, node: str, family: int = 4) -> str:
        """The node's first address (no prefix length), as ``Node.addr()``."""
        for port in self.ports.get(node, ()):
            a = port.ip4 if family == 4 else port.ip6
            if a:
                return a.split("/")[0]
        raise TopologyError(f"{node} has no IPv{family} address")


@dataclass(frozen=True)
class MRoute:
    """One smcroute ``mroute``: (*,G) if ``source`` is None, else (S/LEN,G)."""

    iif: str
    source: str | None
    group: str
    oifs: tuple[str, ...]


@dataclass(frozen=True)
class Topology:
    """Nodes, links and the multicast prefixes routers forward. Checked on
    creation (raises `TopologyError`)."""

    name: str
    nodes: tuple[NodeSpec, ...]
    links: tuple[LinkSpec, ...]
    groups: tuple[str, ...] = DEFAULT_GROUPS
    _kinds: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_kinds", {n.name: n.kind for n in self.nodes})
        _check(self)

    def kind(self, name: str) -> str:
        try:
            return self._kinds[name]
        except KeyError:
            raise TopologyError(f"{self.name}: no node named {name!r}") from None

    def names(self, kind: str) -> list[str]:
        return [n.name for n in self.nodes if n.kind == kind]

    @property
    def hosts(self) -> list[str]:
        return self.names("host")

    @property
    def routers(self) -> list[str]:
        return self.names("router")

    @property
    def switches(self) -> list[str]:
        return self.names("switch")

    def node(self, name: str) -> NodeSpec:
        self.kind(name)
        return next(n for n in self.nodes if n.name == name)

    def link_between(self, a: str, b: str) -> LinkSpec:
        for link in self.links:
            if {link.a, link.b} == {a, b}:
                return link
        raise TopologyError(f"{self.name}: no link between {a} and {b}")

    def plan(self) -> Plan:
        """Every interface's name and addresses as `build` makes them."""
        from mcp2p.lab.net.plan import plan_of  # plan.py builds on these types

        return plan_of(self)


def _check(t: Topology) -> None:
    if not NAME_RE.match(t.name):
        raise TopologyError(f"bad topology name {t.name!r}: letters, digits and _")
    for g in t.groups:
        group_prefix(g)
    seen: set[str] = set()
    for n in t.nodes:
        if not NAME_RE.match(n.name):
            raise TopologyError(f"bad node name {n.name!r}: a letter, then letters, digits, _")
        if n.kind not in KINDS:
            raise TopologyError(f"{n.name}: unknown kind {n.kind!r} (one of {', '.join(KINDS)})")
        if n.name in seen:
            raise TopologyError(f"duplicate node name {n.name!r}")
        seen.add(n.name)
        if n.kind != "switch" and (n.snooping or n.subnet or n.subnet6):
            raise TopologyError(f"{n.name}: snooping and subnets are for switches")
        for value, cls in ((n.subnet, ipaddress.IPv4Network), (n.subnet6, ipaddress.IPv6Network)):
            if value is not None:
                try:
                    cls(value)
                except ValueError as e:
                    raise TopologyError(f"{n.name}: bad subnet {value!r}: {e}") from None
    pairs: set[frozenset[str]] = set()
    linked: set[str] = set()
    for link in t.links:
        label = f"link {link.a}-{link.b}"
        for end in (link.a, link.b):
            if end not in t._kinds:
                raise TopologyError(f"{label}: unknown node {end!r}")
        if link.a == link.b:
            raise TopologyError(f"{label}: a node cannot link to itself")
        if t._kinds[link.a] == t._kinds[link.b] == "switch":
            raise TopologyError(f"{label}: switch-to-switch links are not supported")
        pair = frozenset((link.a, link.b))
        if pair in pairs:
            raise TopologyError(f"{label}: duplicate link between {link.a} and {link.b}")
        pairs.add(pair)
        linked.update(pair)
        if link.rate is not None and not 8000 <= link.rate <= 10**12:
            raise TopologyError(f"{label}: rate {link.rate} bit/s is not in [8000, 1e12]")
        for loss in (link.loss_a, link.loss_b):
            if not 0 <= loss <= 1:
                raise TopologyError(f"{label}: loss {loss} is not a fraction in [0, 1]")
    unlinked = [n.name for n in t.nodes if n.name not in linked]
    if unlinked:
        raise TopologyError(f"no link to {', '.join(unlinked)}")
    _check_shape(t)


def segments_of(t: Topology) -> tuple[dict[str, list[str]], dict[int, str]]:
    """segment -> its hosts and routers; link index -> segment."""
    members: dict[str, list[str]] = {s: [] for s in t.switches}
    of_link: dict[int, str] = {}
    for i, link in enumerate(t.links):
        ka, kb = t._kinds[link.a], t._kinds[link.b]
        if ka == "switch" or kb == "switch":
            seg, other = (link.a, link.b) if ka == "switch" else (link.b, link.a)
            members[seg].append(other)
        else:
            seg = f"{link.a}-{link.b}"
            members[seg] = [link.a, link.b]
        of_link[i] = seg
    return members, of_link


def _check_shape(t: Topology) -> None:
    """Routers without cycles (static (*,G) routes would loop); all hosts
    connected through switches and routers."""
    members, _ = segments_of(t)
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for seg, nodes in members.items():
        find("s:" + seg)
        for node in nodes:
            if t._kinds[node] != "router":
                continue
            ra, rb = find("s:" + seg), find("r:" + node)
            if ra == rb:
                raise TopologyError(
                    f"the routers form a cycle through {node} and {seg}: not supported "
                    "(static (*,G) multicast routes would loop)"
                )
            parent[ra] = rb
    where: dict[str, str] = {}
    for seg, nodes in members.items():
        for node in nodes:
            if t._kinds[node] == "host":
                where.setdefault(find("s:" + seg), node)
    if len(where) > 1:
        a, b = sorted(where.values())[:2]
        raise TopologyError(f"not connected: {a} cannot reach {b} (hosts do not forward)")


def group_prefix(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as e:
        raise TopologyError(f"bad group prefix {text!r}: {e}") from None
    if not net.is_multicast:
        raise TopologyError(f"group prefix {text!r} is not multicast (224/4 or ff00::/8)")
    return net


def is_ssm(group: str) -> bool:
    """True for a prefix inside the SSM ranges 232.0.0.0/8 or ff30::/12."""
    net = group_prefix(group)
    if isinstance(net, ipaddress.IPv4Network):
        return net.subnet_of(_SSM4)
    return net.subnet_of(_SSM6)
