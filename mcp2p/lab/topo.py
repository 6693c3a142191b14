"""Lab topologies: a small ini description, three built-ins, and ``topo up|down``.

For experiments::

    from mcp2p.lab.net import Network
    from mcp2p.lab.topo import build, chain, daemon_ini, load, star, tree

    t = star(8, rate=100_000_000, loss=0.01)    # or load("etc/lab/tree.ini")
    with Network() as net:                      # a fresh, empty Network
        nodes = build(t, net)                   # name -> Host / Router / Switch
        nodes["sn"].ping(nodes["cn3"].addr())
        ini = daemon_ini(t, "cn3", root / "cn3", discovery={"methods": "query"})

A `Topology` is pure data (frozen dataclasses, no I/O): `parse` / `load`
read the ini form, `to_ini` writes it, `Topology.plan()` gives every
interface's name and addresses exactly as `build` will make them, and
`multicast_routes` the routes every router gets. `build` makes it real in
a `mcp2p.lab.netns.Network`; `daemon_ini` writes a complete mcp2p ini for a
host.

The ini form (``;`` and ``#`` start comments)::

    [topology]
    name = tree                     ; also the directory name for `topo up`
    groups = 239.0.0.0/8, 232.0.0.0/8, ff05::/16, ff15::/16, ff3e::/32
    [host sn]
    [router r1]
    [switch lan1]                   ; a bridge: one subnet for its segment
    snooping = no                   ; IGMP/MLD snooping (default no: flood)
    subnet = 10.99.0.0/24           ; optional; default the next 10.77.x.0/24
    subnet6 = fd99::/64             ; optional; default the next fd77:0:0:x::/64
    [link sn-r1]                    ; or any label with  a = sn  and  b = r1
    rate = 100M                     ; bit/s, both directions (tc tbf)
    loss = 1%                       ; UDP dropped arriving at the b end
    loss_a = 0.5%                   ; ... at the a end (loss_b = same as loss)

Node names are letters, digits and ``_`` (no ``-``: ``a-b`` names a
link). Every node has a link; no switch-to-switch links; two nodes share
at most one link; the routers must not form a cycle and every host must
reach every other (through switches and routers: hosts never forward).

Multicast (on every router, with smcrouted): an ASM prefix in ``groups``
gets (*,G/LEN) routes from every interface to all the others
(`Router.forward_multicast_all`); an SSM prefix (inside 232.0.0.0/8 or
ff30::/12, e.g. ff3e::/32) gets, for each subnet that holds a host, a
(S/LEN,G/LEN) route from the interface facing that subnet (its reverse
path) to all the others. A datagram crosses as many routers as its TTL
minus one allows.

Built-ins (the shipped ``etc/lab/{star,chain,tree}.ini`` are exactly the
defaults, see `BUILTINS`)::

    star(n=4, rate=100_000_000, loss=0.0)
        switch sw; hosts sn, cn1..cnN on it; rate on every link; loss
        into each CN (not into the SN)            (like transfer.StarLab)
    chain(k=3, rate=100_000_000, loss=0.0)
        segments (switches) s1..sk in a row joined by routers r1..r(k-1):
        h0 and h1 on s1, hi on si, so hi is i hops from h0 (behind i-1
        routers: a datagram from h0 needs TTL i); loss into h1..hk
    tree(per_subnet=2, rate=100_000_000, loss=0.01)
        root subnet: sn, cn1..cnP, routers r1 and r2;
        r1 -> lan1 (P CNs), r2 -> lan2 (P CNs, router r3), r3 -> lan3 (P CNs);
        loss on the links r1->lan1 and r3->lan3 (into the switch, so the
        whole subnet sees the same drops); lan3 is 2 routers from the SN

The command line (also ``python -m mcp2p.lab topo ...``)::

    topo SPEC up [--daemons] [--dir DIR]    build, write DIR/NAME/HOST/node.ini, exit
    topo SPEC status                         hosts, addresses, processes, link counters
    topo SPEC down                           kill our pids, delete the namespaces
    topo SPEC show                           the topology and its addresses (no root)

SPEC is an ini file or a built-in: ``star``, ``star:8``, ``chain:3``,
``tree``, ``tree:1`` (with ``--rate 10M --loss 5%`` for built-ins). ``up``
leaves the network (and with ``--daemons`` a ``twistd -n mcp2p`` per host)
running after it exits: `Network.detach` records the namespaces and the
pids with their start times, and ``down`` (any later process) kills only
those processes that still are the ones started, by pid.
"""

from __future__ import annotations

import argparse
import configparser
import ipaddress
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcp2p.commands import MCP2P, twistd_node
from mcp2p.config import parse_rate
from mcp2p.lab.net import (
    LabError,
    Network,
    Node,
    Router,
    destroy_detached,
    missing_requirements,
    namespace_counters,
    process_start_time,
)

__all__ = [
    "BUILTINS",
    "DEFAULT_GROUPS",
    "LinkSpec",
    "MRoute",
    "NodeSpec",
    "Plan",
    "Port",
    "Segment",
    "Topology",
    "TopologyError",
    "build",
    "builtin",
    "chain",
    "daemon_ini",
    "format_loss",
    "format_rate",
    "is_ssm",
    "load",
    "main",
    "multicast_routes",
    "parse",
    "star",
    "to_ini",
    "tree",
]

DEFAULT_GROUPS: tuple[str, ...] = (
    "239.0.0.0/8",  # ASM: mcp2p's query and SAP groups, its ASM pool
    "232.0.0.0/8",  # SSM (IPv4)
    "ff05::/16",  # ASM, site-local scope
    "ff15::/16",  # ASM, site-local transient: mcp2p's IPv6 query group, ASM pool
    "ff3e::/32",  # SSM (IPv6, global scope)
)
DEFAULT_DIR = Path("/tmp/mcp2p-lab-topo")
KINDS = ("host", "router", "switch")
DAEMON_TIMEOUT = 90.0  # seconds for all of `up --daemons`' daemons to answer
STOP_TIMEOUT = 10.0  # seconds `down` gives processes after SIGTERM, then SIGKILL

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
_SSM4 = ipaddress.IPv4Network("232.0.0.0/8")
_SSM6 = ipaddress.IPv6Network("ff30::/12")


class TopologyError(ValueError):
    """A topology description that cannot be built; the message is one line."""


# --------------------------------------------------------------------------
# the description


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
        return _plan(self)


def _check(t: Topology) -> None:
    if not _NAME_RE.match(t.name):
        raise TopologyError(f"bad topology name {t.name!r}: letters, digits and _")
    for g in t.groups:
        _group(g)
    seen: set[str] = set()
    for n in t.nodes:
        if not _NAME_RE.match(n.name):
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


def _segments_of(t: Topology) -> tuple[dict[str, list[str]], dict[int, str]]:
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
    members, _ = _segments_of(t)
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


def _group(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as e:
        raise TopologyError(f"bad group prefix {text!r}: {e}") from None
    if not net.is_multicast:
        raise TopologyError(f"group prefix {text!r} is not multicast (224/4 or ff00::/8)")
    return net


def is_ssm(group: str) -> bool:
    """True for a prefix inside the SSM ranges 232.0.0.0/8 or ff30::/12."""
    net = _group(group)
    if isinstance(net, ipaddress.IPv4Network):
        return net.subnet_of(_SSM4)
    return net.subnet_of(_SSM6)


# --------------------------------------------------------------------------
# addresses and routes (pure)


def _subnet(i: int) -> tuple[str, str]:
    """The netns default subnets for the i-th subnet of a Network."""
    return f"10.{77 + i // 256}.{i % 256}.0/24", f"fd77:0:{i // 256:x}:{i % 256:x}::/64"


def _plan(t: Topology) -> Plan:
    members, of_link = _segments_of(t)
    nets: dict[str, tuple[str, str]] = {}
    index = 0
    for n in t.nodes:  # build() adds nodes in this order; each switch takes a subnet
        if n.kind == "switch":
            d4, d6 = _subnet(index)
            nets[n.name] = (n.subnet or d4, n.subnet6 or d6)
            index += 1
    next_host: dict[str, int] = {}
    ifcount: dict[str, int] = {}
    ports: dict[str, list[Port]] = {n.name: [] for n in t.nodes}
    for i, link in enumerate(t.links):
        seg = of_link[i]
        if seg not in nets:  # a link without a switch: its own subnet
            nets[seg] = _subnet(index)
            index += 1
        net4, net6 = ipaddress.IPv4Network(nets[seg][0]), ipaddress.IPv6Network(nets[seg][1])
        for me, peer in ((link.a, link.b), (link.b, link.a)):
            ifname = f"eth{ifcount.get(me, 0)}"
            ifcount[me] = ifcount.get(me, 0) + 1
            ip4 = ip6 = None
            if t._kinds[me] != "switch":
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
            v6 = _group(g).version == 6
            for seg in sources:
                rpf = via.get(seg.name)
                oifs = tuple(n for n in names if n != rpf)
                if rpf is not None and oifs:
                    routes.append(MRoute(rpf, seg.net6 if v6 else seg.net4, g, oifs))
        out[r] = routes
    return out


# --------------------------------------------------------------------------
# the ini form


def _loss(raw: str) -> float:
    text = raw.strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ValueError("a fraction (0.01) or a percentage (1%) in [0, 1]") from None
    if not 0 <= value <= 1:
        raise ValueError("a fraction (0.01) or a percentage (1%) in [0, 1]")
    return round(value, 6)


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "yes", "true", "on"):
        return True
    if value in ("0", "no", "false", "off"):
        return False
    raise ValueError("one of yes, no")


def _net(cls: Callable[[str], Any]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        return str(cls(raw.strip()))

    return parse


_KEYS: dict[str, tuple[str, ...]] = {
    "topology": ("name", "groups"),
    "host": (),
    "router": (),
    "switch": ("snooping", "subnet", "subnet6"),
    "link": ("a", "b", "rate", "loss", "loss_a", "loss_b"),
}


def parse(text: str, source: str = "<string>") -> Topology:
    """A `Topology` from its ini text; errors name ``source``, section and key."""
    cp = configparser.ConfigParser(
        interpolation=None,
        strict=True,
        default_section="\0",
        comment_prefixes=("#", ";"),
        inline_comment_prefixes=("#", ";"),
    )
    try:
        cp.read_string(text, source=source)
    except configparser.Error as e:
        raise TopologyError(f"{source}: " + " ".join(str(e).split())) from None

    def err(section: str, key: str | None, msg: str) -> TopologyError:
        where = f"[{section}] {key}: " if key else f"[{section}]: "
        return TopologyError(f"{source}: {where}{msg}")

    def value(section: str, key: str, conv: Callable[[str], Any]) -> Any:
        try:
            return conv(cp[section][key])
        except ValueError as e:
            raise err(section, key, f"{cp[section][key].strip()!r}: {e}") from None

    name: str | None = None
    groups = DEFAULT_GROUPS
    nodes: list[NodeSpec] = []
    link_sections: list[tuple[str, str]] = []
    for section in cp.sections():
        words = section.split()
        kind = words[0] if words else ""
        if kind not in _KEYS or (kind == "topology") != (len(words) == 1) or len(words) > 2:
            raise err(
                section, None,
                "unknown section: expected [topology], [host NAME], [router NAME], "
                "[switch NAME] or [link A-B]",
            )  # fmt: skip
        unknown = [k for k in cp[section] if k not in _KEYS[kind]]
        if unknown:
            allowed = ", ".join(_KEYS[kind]) or "none"
            raise err(section, unknown[0], f"unknown key (allowed in [{kind}]: {allowed})")
        if kind == "topology":
            if "name" not in cp[section]:
                raise err(section, "name", "missing")
            name = cp[section]["name"].strip()
            if not _NAME_RE.match(name):
                raise err(section, "name", f"{name!r}: a letter, then letters, digits or _")
            if "groups" in cp[section]:
                items = [g for g in re.split(r"[,\s]+", cp[section]["groups"]) if g]
                try:
                    groups = tuple(str(_group(g)) for g in items)
                except TopologyError as e:
                    raise err(section, "groups", str(e)) from None
        elif kind == "link":
            link_sections.append((section, words[1]))
        else:
            node_name = words[1]
            if not _NAME_RE.match(node_name):
                msg = f"bad node name {node_name!r}: a letter, then letters, digits or _"
                raise err(section, None, msg)
            if any(n.name == node_name for n in nodes):
                raise err(section, None, f"duplicate node name {node_name!r}")
            opts: dict[str, Any] = {}
            if "snooping" in cp[section]:
                opts["snooping"] = value(section, "snooping", _bool)
            if "subnet" in cp[section]:
                opts["subnet"] = value(section, "subnet", _net(ipaddress.IPv4Network))
            if "subnet6" in cp[section]:
                opts["subnet6"] = value(section, "subnet6", _net(ipaddress.IPv6Network))
            nodes.append(NodeSpec(node_name, kind, **opts))
    if name is None:
        raise TopologyError(f"{source}: no [topology] section (with name = ...)")
    known = {n.name for n in nodes}
    links: list[LinkSpec] = []
    pairs: dict[frozenset[str], str] = {}
    for section, label in link_sections:
        s = cp[section]
        if "a" in s or "b" in s:
            if "a" not in s or "b" not in s:
                raise err(section, "b" if "a" in s else "a", "missing (give both a and b)")
            a, b = s["a"].strip(), s["b"].strip()
        else:
            ends = label.split("-")
            if len(ends) != 2 or not all(ends):
                raise err(section, None, "name the link A-B, or give a = A and b = B")
            a, b = ends
        for key, end in (("a", a), ("b", b)):
            if end not in known:
                known_list = ", ".join(sorted(known))
                raise err(
                    section,
                    key if key in s else None,
                    f"unknown node {end!r} (nodes: {known_list})",
                )
        if a == b:
            raise err(section, None, "a node cannot link to itself")
        pair = frozenset((a, b))
        if pair in pairs:
            raise err(section, None, f"duplicate link between {a} and {b} (also [{pairs[pair]}])")
        pairs[pair] = section
        if "loss" in s and "loss_b" in s:
            raise err(section, "loss_b", "give loss or loss_b (both mean the b end)")
        rate = value(section, "rate", parse_rate) if "rate" in s else None
        loss_b_key = "loss_b" if "loss_b" in s else "loss"
        links.append(
            LinkSpec(
                a, b, rate,
                value(section, "loss_a", _loss) if "loss_a" in s else 0.0,
                value(section, loss_b_key, _loss) if loss_b_key in s else 0.0,
            )
        )  # fmt: skip
    try:
        return Topology(name, tuple(nodes), tuple(links), groups)
    except TopologyError as e:
        raise TopologyError(f"{source}: {e}") from None


def load(path: str | os.PathLike[str]) -> Topology:
    """`parse` the file at ``path``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TopologyError(f"{path}: cannot read: {e}") from None
    return parse(text, source=str(path))


def format_rate(rate: int) -> str:
    for unit, div in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if rate % div == 0:
            return f"{rate // div}{unit}"
    return str(rate)


def format_loss(loss: float) -> str:
    return f"{loss * 100:.6g}%"


def to_ini(t: Topology, comment: str = "") -> str:
    """The ini form of ``t``; `parse` gives ``t`` back."""
    lines = [f"# {line}".rstrip() for line in comment.strip().splitlines()] if comment else []
    if lines:
        lines.append("")
    lines += ["[topology]", f"name = {t.name}", f"groups = {', '.join(t.groups)}", ""]
    for n in t.nodes:
        lines.append(f"[{n.kind} {n.name}]")
        if n.snooping:
            lines.append("snooping = yes")
        if n.subnet:
            lines.append(f"subnet = {n.subnet}")
        if n.subnet6:
            lines.append(f"subnet6 = {n.subnet6}")
    lines.append("")
    for link in t.links:
        lines.append(f"[link {link.a}-{link.b}]")
        if link.rate is not None:
            lines.append(f"rate = {format_rate(link.rate)}")
        if link.loss_b:
            lines.append(f"loss = {format_loss(link.loss_b)}")
        if link.loss_a:
            lines.append(f"loss_a = {format_loss(link.loss_a)}")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


# --------------------------------------------------------------------------
# built-ins


def _shape(rate: int | None, loss: float) -> tuple[int | None, float]:
    if rate is not None and not 8000 <= rate <= 10**12:
        raise TopologyError(f"rate {rate} bit/s is not in [8000, 1e12]")
    if not 0 <= loss <= 1:
        raise TopologyError(f"loss {loss} is not a fraction in [0, 1]")
    return (int(rate) if rate is not None else None), round(float(loss), 6)


def _count(what: str, n: int, low: int = 1, high: int = 250) -> int:
    if not isinstance(n, int) or not low <= n <= high:
        raise TopologyError(f"{what} must be an integer in [{low}, {high}], not {n!r}")
    return n


def star(n: int = 4, rate: int | None = 100_000_000, loss: float = 0.0) -> Topology:
    """Switch ``sw`` with hosts ``sn`` and ``cn1``..``cnN``; ``rate`` on every
    link (both ways), ``loss`` of UDP into each CN."""
    n = _count("star: the number of CNs", n)
    rate, loss = _shape(rate, loss)
    cns = [f"cn{i}" for i in range(1, n + 1)]
    nodes = [NodeSpec("sn", "host"), *(NodeSpec(c, "host") for c in cns), NodeSpec("sw", "switch")]
    links = [LinkSpec("sw", "sn", rate), *(LinkSpec("sw", c, rate, 0.0, loss) for c in cns)]
    return Topology("star", tuple(nodes), tuple(links))


def chain(k: int = 3, rate: int | None = 100_000_000, loss: float = 0.0) -> Topology:
    """Hosts ``h0``..``hk`` where ``hi`` is i hops from ``h0``: switches
    ``s1``..``sk`` in a row, router ``ri`` between ``si`` and ``s(i+1)``;
    ``h0`` and ``h1`` on ``s1``, ``hi`` on ``si``. ``rate`` on every link,
    ``loss`` of UDP into ``h1``..``hk``."""
    k = _count("chain: the number of hops", k, 1, 64)
    rate, loss = _shape(rate, loss)
    nodes = [NodeSpec(f"h{i}", "host") for i in range(k + 1)]
    nodes += [NodeSpec(f"r{i}", "router") for i in range(1, k)]
    nodes += [NodeSpec(f"s{i}", "switch") for i in range(1, k + 1)]
    links = [LinkSpec("s1", "h0", rate), LinkSpec("s1", "h1", rate, 0.0, loss)]
    for i in range(1, k):
        links += [
            LinkSpec(f"s{i}", f"r{i}", rate),
            LinkSpec(f"r{i}", f"s{i + 1}", rate),
            LinkSpec(f"s{i + 1}", f"h{i + 1}", rate, 0.0, loss),
        ]
    return Topology("chain", tuple(nodes), tuple(links))


def tree(per_subnet: int = 2, rate: int | None = 100_000_000, loss: float = 0.01) -> Topology:
    """Four subnets: ``root`` (``sn``, P CNs, routers r1, r2), ``lan1``
    behind r1, ``lan2`` behind r2, ``lan3`` behind r3 which sits on lan2;
    P = ``per_subnet`` CNs on each (``cn1``.. in that order). ``rate`` on
    every link, ``loss`` of UDP into lan1 (from r1) and lan3 (from r3)."""
    p = _count("tree: CNs per subnet", per_subnet, 1, 60)
    rate, loss = _shape(rate, loss)
    subnets = ["root", "lan1", "lan2", "lan3"]
    cns = {s: [f"cn{i * p + j}" for j in range(1, p + 1)] for i, s in enumerate(subnets)}
    nodes = [NodeSpec("sn", "host")]
    nodes += [NodeSpec(c, "host") for s in subnets for c in cns[s]]
    nodes += [NodeSpec(r, "router") for r in ("r1", "r2", "r3")]
    nodes += [NodeSpec(s, "switch") for s in subnets]

    def hosts(sw: str) -> list[LinkSpec]:
        return [LinkSpec(sw, c, rate) for c in cns[sw]]

    links = [LinkSpec("root", "sn", rate), *hosts("root")]
    links += [LinkSpec("root", "r1", rate), LinkSpec("r1", "lan1", rate, 0.0, loss)]
    links += hosts("lan1")
    links += [LinkSpec("root", "r2", rate), LinkSpec("r2", "lan2", rate), *hosts("lan2")]
    links += [LinkSpec("lan2", "r3", rate), LinkSpec("r3", "lan3", rate, 0.0, loss)]
    links += hosts("lan3")
    return Topology("tree", tuple(nodes), tuple(links))


BUILTINS: dict[str, Callable[..., Topology]] = {"star": star, "chain": chain, "tree": tree}


def builtin(spec: str, rate: int | None = None, loss: float | None = None) -> Topology:
    """``star``, ``star:8``, ``chain:3``, ``tree:1``: a built-in with its size;
    ``rate``/``loss`` replace the built-in's defaults when given."""
    name, _, size = spec.partition(":")
    if name not in BUILTINS:
        raise TopologyError(f"{spec!r}: not an ini file nor a built-in ({', '.join(BUILTINS)})")
    args: list[int] = []
    if size:
        if not size.isdigit():
            raise TopologyError(f"{spec!r}: the size after ':' must be a number")
        args.append(int(size))
    kw: dict[str, Any] = {}
    if rate is not None:
        kw["rate"] = rate
    if loss is not None:
        kw["loss"] = loss
    return BUILTINS[name](*args, **kw)


# --------------------------------------------------------------------------
# daemon configuration


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


# --------------------------------------------------------------------------
# building it


def build(topology: Topology, net: Network) -> dict[str, Node]:
    """Make ``topology`` in ``net`` (a fresh `mcp2p.lab.netns.Network`):
    nodes, links with rate and loss, unicast routes, multicast routes on
    every router; waits until every interface is ready. Returns name ->
    `Host` / `Router` / `Switch`. Addresses are those of ``topology.plan()``
    (checked)."""
    if not isinstance(net, Network):
        raise TypeError("build() wants a mcp2p.lab.netns.Network")
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
            net4, net6 = (seg.net4, seg.net6) if seg else _subnet(0)
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


# --------------------------------------------------------------------------
# the command line


def _resolve(spec: str, rate: str | None, loss: str | None) -> Topology:
    is_file = spec.endswith(".ini") or os.sep in spec or os.path.isfile(spec)
    if is_file:
        if rate is not None or loss is not None:
            raise TopologyError("--rate and --loss are for built-ins; edit the ini file instead")
        return load(spec)
    try:
        r = parse_rate(rate) if rate is not None else None
        lo = _loss(loss) if loss is not None else None
    except ValueError as e:
        raise TopologyError(f"--rate/--loss: {e}") from None
    return builtin(spec, r, lo)


def _marker(tdir: Path) -> Path:
    return tdir / "network.json"


def _read_marker(tdir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(_marker(tdir).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise TopologyError(f"{_marker(tdir)}: unreadable: {e}") from None
    return data if isinstance(data, dict) else None


def _start_daemons(nodes: dict[str, Node], topology: Topology, tdir: Path) -> dict[str, int]:
    """``twistd -n mcp2p`` per host, logs in DIR/HOST/twistd.log; waits until
    each API answers (its port file appears)."""
    procs: dict[str, subprocess.Popen[Any]] = {}
    for h in topology.hosts:
        root = tdir / h
        (root / "state" / "api.port").unlink(missing_ok=True)
        with open(root / "twistd.log", "ab") as log:
            procs[h] = nodes[h].popen(
                twistd_node(str(root / "node.ini")),
                cwd=root, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
    deadline = time.monotonic() + DAEMON_TIMEOUT
    waiting = set(procs)
    while waiting:
        for h in sorted(waiting):
            if (tdir / h / "state" / "api.port").exists():
                waiting.discard(h)
            elif procs[h].poll() is not None or time.monotonic() > deadline:
                tail = (tdir / h / "twistd.log").read_text(errors="replace")[-2000:]
                raise LabError(
                    f"the daemon on {h} did not start; {tdir / h / 'twistd.log'}:\n{tail}"
                )
        time.sleep(0.1)
    return {h: p.pid for h, p in procs.items()}


def _up(t: Topology, spec: str, tdir: Path, daemons: bool) -> int:
    reason = missing_requirements(("ip", "tc", "nft", "ethtool", "smcrouted", "smcroutectl"))
    if reason:
        print(f"topo up: {reason}", file=sys.stderr)
        return 2
    old = _read_marker(tdir)
    if old is not None:
        if os.path.exists(str(old.get("state_file", ""))):
            print(
                f"topo up: {t.name} is already up ({_marker(tdir)}); "
                f"take it down first: python -m mcp2p.lab topo {spec} down --dir {tdir.parent}",
                file=sys.stderr,
            )
            return 1
        _marker(tdir).unlink()  # stale: its network is gone
    tdir.mkdir(parents=True, exist_ok=True)
    net = Network()
    try:
        nodes = build(t, net)
        plan = t.plan()
        for h in t.hosts:
            root = tdir / h
            (root / "share").mkdir(parents=True, exist_ok=True)
            (root / "node.ini").write_text(daemon_ini(t, h, root))
        pids = _start_daemons(nodes, t, tdir) if daemons else {}
        hosts = {
            h: {
                "ns": nodes[h].ns,
                "ip4": plan.address(h, 4),
                "ip6": plan.address(h, 6),
                "ini": str(tdir / h / "node.ini"),
                "daemon_pid": pids.get(h),
            }
            for h in t.hosts
        }
        extra = {"topology": t.name, "spec": spec, "dir": str(tdir), "hosts": hosts}
        state_file = net.detach(extra)
    except BaseException:
        net.down()
        raise
    marker = json.loads(Path(state_file).read_text())
    marker["state_file"] = state_file
    _marker(tdir).write_text(json.dumps(marker, indent=1))
    width = max(len(h) for h in t.hosts)
    print(f"topology {t.name} is up: {len(t.nodes)} namespaces named {net.prefix}NODE")
    for h, info in hosts.items():
        pid = f"  twistd pid {info['daemon_pid']}" if info["daemon_pid"] else ""
        print(f"  {h:<{width}}  {info['ip4']:<15} {info['ip6']:<22} {info['ns']}{pid}")
    first = t.hosts[0]
    mcp2p = " ".join(MCP2P)
    print(f"daemon inis: {tdir}/HOST/node.ini (share: {tdir}/HOST/share)")
    if daemons:
        print(f"daemon logs: {tdir}/HOST/twistd.log")
    print(f"enter a host:  ip netns exec {hosts[first]['ns']} bash")
    if not daemons:
        print(
            f"run a daemon:  ip netns exec {hosts[first]['ns']} "
            f"{' '.join(twistd_node(str(hosts[first]['ini'])))}"
        )
    enter = f"ip netns exec {hosts[first]['ns']}"
    print(f"use the CLI:   {enter} {mcp2p} --config {hosts[first]['ini']} status")
    print(f"take it down:  python -m mcp2p.lab topo {spec} down --dir {tdir.parent}")
    return 0


def _down(t: Topology, tdir: Path) -> int:
    marker = _read_marker(tdir)
    if marker is None:
        print(f"topo down: {t.name} is not up (no {_marker(tdir)})")
        return 0
    state_file = str(marker.get("state_file", ""))
    if os.path.exists(state_file):
        removed = destroy_detached(state_file, timeout=STOP_TIMEOUT)
    else:  # its state dir is gone: the copy in the marker says the same
        copy = tdir / "network.down.json"
        copy.write_text(json.dumps(marker))
        removed = destroy_detached(str(copy), timeout=STOP_TIMEOUT)
    _marker(tdir).unlink(missing_ok=True)
    print(f"topology {t.name} is down: removed {len(removed)} namespaces; files kept in {tdir}")
    return 0


def _status(t: Topology, tdir: Path) -> int:
    marker = _read_marker(tdir)
    if marker is None:
        print(f"{t.name} is not up (no {_marker(tdir)})")
        return 1
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(marker.get("detached_at", 0)))
    print(f"topology {marker.get('topology')}: prefix {marker.get('prefix')}, up since {since}")
    for h, info in marker.get("hosts", {}).items():
        print(f"  host {h}: {info['ip4']} {info['ip6']}  ns {info['ns']}")
    for p in marker.get("processes", []):
        alive = process_start_time(int(p["pid"])) == p.get("start")
        argv = p["argv"][4:] if p["argv"][:3] == ["ip", "netns", "exec"] else p["argv"]
        what = " ".join(argv)[:70]
        print(f"  pid {p['pid']} on {p['node']}: {'running' if alive else 'gone'}: {what}")
    print(f"  {'link end':<16} {'rx bytes':>14} {'tx bytes':>14} {'rx pkts':>10} {'tx pkts':>10}")
    missing = []
    for name, node in marker.get("nodes", {}).items():
        counters = namespace_counters(node["ns"], node["interfaces"])
        if not counters:
            missing.append(name)
        for ifname in node["interfaces"]:
            c = counters.get(ifname)
            if c:
                end = f"{name}:{ifname}"
                print(f"  {end:<16} {c['rx_bytes']:>14} {c['tx_bytes']:>14} "
                      f"{c['rx_packets']:>10} {c['tx_packets']:>10}")  # fmt: skip
    if missing:
        print(f"  missing namespaces: {', '.join(missing)}")
        return 1
    return 0


def _show(t: Topology) -> int:
    plan = t.plan()
    sys.stdout.write(to_ini(t))
    print("\n# addresses (as `up` assigns them)")
    for name, ports in plan.ports.items():
        for p in ports:
            addr = f"{p.ip4} {p.ip6}" if p.ip4 else "(switch port)"
            print(f"#   {t.kind(name):<6} {name}:{p.ifname} -> {p.peer:<8} {addr}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mcp2p.lab topo SPEC up|down|status|show``; see the module docstring."""
    p = argparse.ArgumentParser(
        prog="python -m mcp2p.lab topo",
        description="Build a lab topology and leave it up for manual play, or take it down.",
    )
    p.add_argument("spec", help="an ini file, or star[:N], chain[:K], tree[:P]")
    p.add_argument("action", choices=("up", "down", "status", "show"))
    p.add_argument("--dir", default=str(DEFAULT_DIR), help="where DIR/NAME/HOST/node.ini go")
    p.add_argument("--daemons", action="store_true", help="up: start twistd -n mcp2p per host")
    p.add_argument("--rate", help="built-ins: link rate (e.g. 10M)")
    p.add_argument("--loss", help="built-ins: loss (e.g. 5%%)")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        t = _resolve(args.spec, args.rate, args.loss)
        if args.action == "show":
            return _show(t)
        if os.geteuid() != 0:
            print(f"topo {args.action}: needs root (network namespaces)", file=sys.stderr)
            return 2
        tdir = Path(args.dir).resolve() / t.name
        if args.action == "up":
            return _up(t, args.spec, tdir, args.daemons)
        if args.action == "down":
            return _down(t, tdir)
        return _status(t, tdir)
    except (TopologyError, LabError) as e:
        print(f"topo {args.action}: {e}", file=sys.stderr)
        return 1
