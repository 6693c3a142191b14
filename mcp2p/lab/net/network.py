"""A `Network`: the namespaces, links and processes of one emulated network.

A `Network` owns a set of namespaces whose names all start with a prefix
unique to the instance (``mcp2p-<6 hex>-``), so parallel runs never collide.
It adds nodes (`Host`, `Router`, `Switch`), links them with veth pairs
created directly inside the two namespaces (nothing is ever created in, or
moved through, the host's own namespace), sets static unicast routes
(`route`) and builds the usual chain (`chain`).

Everything it makes is removed by `down()`: idempotent, best effort, also
run from `atexit` and on SIGTERM. `detach()` leaves it up after this
process exits instead (see `mcp2p.lab.net.detached`).

Platform note: both ends of a veth get distinct ifindexes (see `link`);
otherwise linkwatch delays the carrier by up to a second and IPv6 (incl.
multicast forwarding) silently drops traffic meanwhile. `link()` waits
until interfaces are up and have their IPv6 link-local address.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import threading
from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network
from typing import Any, TypeVar

from mcp2p.lab.net.addressing import MAX_SUBNETS, Subnet, default_subnets
from mcp2p.lab.net.counters import link_counters
from mcp2p.lab.net.detached import write_state
from mcp2p.lab.net.link import Link
from mcp2p.lab.net.namespaces import (
    NS_PREFIX,
    STATE_ROOT,
    delete_namespace,
    forget,
    list_namespaces,
    watch,
)
from mcp2p.lab.net.nodes import Host, Interface, Node, Switch, iface_addr
from mcp2p.lab.net.process import LabError
from mcp2p.lab.net.router import Router

__all__ = ["Network"]

IFNAMSIZ = 15  # longest Linux interface name

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_N = TypeVar("_N", bound=Node)


class Network:
    """A set of namespaces, links and processes that `down()` removes again.

    Use as a context manager, or call `up()` / `down()` yourself (adding a
    node also brings the network up).
    """

    def __init__(self, prefix: str | None = None) -> None:
        self.id = secrets.token_hex(3)
        self.prefix = prefix or f"{NS_PREFIX}{self.id}-"
        if not self.prefix.startswith(NS_PREFIX):
            raise LabError(f"namespace prefix must start with {NS_PREFIX!r}")
        self.state_dir = os.path.join(STATE_ROOT, self.id)
        self.nodes: dict[str, Node] = {}
        self.links: list[Link] = []
        self._subnet_index = 0
        self._next_ifindex = 100
        self._is_up = False
        self._detached: str | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"<Network {self.prefix} nodes={list(self.nodes)}>"

    def __enter__(self) -> Network:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def host(self, name: str) -> Host:
        return self._typed(name, Host)

    def router(self, name: str) -> Router:
        return self._typed(name, Router)

    def switch(self, name: str) -> Switch:
        return self._typed(name, Switch)

    def _typed(self, name: str, cls: type[_N]) -> _N:
        node = self.nodes[name]
        if not isinstance(node, cls):
            raise LabError(f"{name} is a {node.kind}, not a {cls.kind}")
        return node

    @property
    def is_up(self) -> bool:
        return self._is_up

    def up(self) -> Network:
        with self._lock:
            if self._is_up:
                return self
            os.makedirs(self.state_dir, exist_ok=False)
            with open(os.path.join(self.state_dir, "owner"), "w") as f:
                f.write(f"{os.getpid()}\n")
            self._is_up = True
            watch(self)
            return self

    def down(self) -> None:
        """Kill our processes, delete our namespaces (and so their veths).

        Idempotent and best effort: every step runs even if others fail.
        A detached network is left alone (see `detach`).
        """
        with self._lock:
            if self._detached:
                return
            forget(self)
            for node in self.nodes.values():
                with contextlib.suppress(Exception):
                    node._stop_processes()
            ours = {n.ns for n in self.nodes.values()}
            # also anything with our prefix that a failed step left behind
            ours.update(ns for ns in list_namespaces() if ns.startswith(self.prefix))
            for ns in sorted(ours):
                with contextlib.suppress(Exception):
                    delete_namespace(ns)
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self._is_up = False

    @property
    def detached(self) -> str | None:
        """The state file if `detach` was called, else None."""
        return self._detached

    def detach(self, extra: dict[str, Any] | None = None) -> str:
        """Leave everything up when this process exits; returns the state file.

        The file (``STATE_DIR/detached.json``) records the prefix, the
        namespaces, every node's interfaces and addresses, and each running
        process's pid, start time and command (plus ``extra``, which must be
        JSON). From then on `down()` (also at exit or on SIGTERM) does
        nothing and `reap_orphans()` skips this network: only
        `destroy_detached(state_file)`, from any process, removes it.
        """
        with self._lock:
            if self._detached:
                return self._detached
            if not self._is_up:
                raise LabError("cannot detach a network that is not up")
            path = write_state(self, extra)
            self._detached = path
            forget(self)
            return path

    def link_counters(self) -> dict[str, dict[str, int]]:
        """Counters of every link end, keyed ``"node:ifname"`` (one ``ip -s``
        per node). Take one before and one after a run; `counter_delta`
        gives what crossed each link end in between."""
        return link_counters(self)

    def namespaces(self) -> list[str]:
        """Namespaces with this network's prefix that exist right now."""
        return [ns for ns in list_namespaces() if ns.startswith(self.prefix)]

    # -- nodes --------------------------------------------------------------

    def _add(self, node: Node) -> Node:
        if not _NAME_RE.match(node.name):
            raise LabError(f"bad node name {node.name!r}")
        if node.name in self.nodes:
            raise LabError(f"duplicate node name {node.name!r}")
        self.up()
        self.nodes[node.name] = node  # registered first, so down() removes it
        node._create()
        return node

    def add_host(self, name: str) -> Host:
        node = self._add(Host(self, name))
        assert isinstance(node, Host)
        return node

    def add_router(self, name: str) -> Router:
        node = self._add(Router(self, name))
        assert isinstance(node, Router)
        return node

    def add_switch(
        self, name: str, *, subnet: str | None = None, subnet6: str | None = None,
        snooping: bool = False,
    ) -> Switch:  # fmt: skip
        node = self._add(Switch(self, name, self._subnet(subnet, subnet6), snooping))
        assert isinstance(node, Switch)
        return node

    def _resolve(self, node: Node | str) -> Node:
        if isinstance(node, str):
            return self.nodes[node]
        if node.net is not self:
            raise LabError(f"{node!r} belongs to another network")
        return node

    def _subnet(self, subnet: str | None, subnet6: str | None) -> Subnet:
        i = self._subnet_index
        self._subnet_index += 1
        if i >= MAX_SUBNETS:
            raise LabError("out of test subnets")
        d4, d6 = default_subnets(i)
        return Subnet(IPv4Network(subnet or d4), IPv6Network(subnet6 or d6))

    # -- links --------------------------------------------------------------

    def link(
        self,
        a: Node | str,
        b: Node | str,
        subnet: str | None = None,
        rate: int | None = None,
        loss: float | None = None,
        *,
        subnet6: str | None = None,
        ifnames: tuple[str, str] | None = None,
    ) -> Link:
        """A veth pair between `a` and `b`, addressed, up, optionally shaped.

        `subnet`/`subnet6` default to the next free 10.77.x.0/24 and
        fd77:0:0:x::/64 (on a switch: the switch's subnet). `rate` (bit/s)
        limits both sending ends, `loss` (fraction of UDP) both receiving ends.
        """
        na, nb = self._resolve(a), self._resolve(b)
        if na is nb:
            raise LabError("cannot link a node to itself")
        switches = [n for n in (na, nb) if isinstance(n, Switch)]
        if len(switches) == 2:
            raise LabError("switch-to-switch links are not supported yet")
        if switches:
            if subnet or subnet6:
                raise LabError("a switch's subnet is given to add_switch()")
            seg = switches[0].subnet
        else:
            seg = self._subnet(subnet, subnet6)
        name_a, name_b = ifnames or (na._new_ifname(), nb._new_ifname())
        for n, ifn in ((na, name_a), (nb, name_b)):
            if len(ifn) > IFNAMSIZ or ifn in n.interfaces or not _NAME_RE.match(ifn):
                raise LabError(f"bad or duplicate interface name {ifn!r} on {n.name}")
        ia, ib = Interface(na, name_a), Interface(nb, name_b)
        link = Link(self, ia, ib, seg)
        ia.link = ib.link = link
        for iface in (ia, ib):
            if not isinstance(iface.node, Switch):
                iface.ip4, iface.ip6 = seg.allocate()
        # Created directly inside the two namespaces; never in the host's.
        # Distinct ifindexes on the two ends: a veth whose ifindex equals its
        # peer's (both are 2 in fresh namespaces) gets its carrier change
        # rate-limited by linkwatch (up to 1 s), which delays IPv6 addrconf
        # and with it IPv6 (multicast) routing on that link.
        ix_a, ix_b = self._next_ifindex, self._next_ifindex + 1
        self._next_ifindex += 2
        na.ip(
            "link", "add", name_a, "index", str(ix_a), "type", "veth",
            "peer", "name", name_b, "index", str(ix_b), "netns", nb.ns,
        )  # fmt: skip
        na.interfaces[name_a] = ia
        nb.interfaces[name_b] = ib
        self.links.append(link)
        na.ip_batch(na._attach(ia))
        nb.ip_batch(nb._attach(ib))
        self._wire_gateways(ia, ib)
        na.wait_ready()
        nb.wait_ready()
        if rate is not None:
            link.set_rate(rate)
        if loss:
            link.set_loss(loss)
        return link

    def _wire_gateways(self, ia: Interface, ib: Interface) -> None:
        """Default routes for hosts and router ports on snooping switches."""
        for mine, theirs in ((ia, ib), (ib, ia)):
            me, other = mine.node, theirs.node
            if isinstance(me, Host) and isinstance(other, Router):
                me.set_default_route(mine, other.addr(theirs, 4), other.addr(theirs, 6))
            elif isinstance(me, Host) and isinstance(other, Switch):
                for n in other.neighbours():
                    if isinstance(n.node, Router):
                        me.set_default_route(mine, iface_addr(n, 4), iface_addr(n, 6))
                        break
            elif isinstance(me, Router) and isinstance(other, Switch):
                other._router_port(theirs)
                for n in other.neighbours():
                    if isinstance(n.node, Host):
                        n.node.set_default_route(n, iface_addr(mine, 4), iface_addr(mine, 6))

    def route(self) -> None:
        """Static unicast routes on every router to every subnet it does not
        touch, along shortest paths through other routers (IPv4 and IPv6)."""
        # L3 segments: subnet -> list of (node, interface) with an address there
        members: dict[IPv4Network, list[Interface]] = {}
        seg6: dict[IPv4Network, IPv6Network] = {}
        for link in self.links:
            for iface in link.ends:
                if iface.ip4 is not None:
                    members.setdefault(link.subnet.net4, []).append(iface)
                    seg6[link.subnet.net4] = link.subnet.net6
        for router in (n for n in self.nodes.values() if isinstance(n, Router)):
            # BFS over routers, remembering the first hop towards each one
            direct = {s for s, ifs in members.items() if any(i.node is router for i in ifs)}
            frontier: list[tuple[Router, Interface | None]] = [(router, None)]
            seen = {router.name}
            reach: dict[IPv4Network, Interface] = {}
            while frontier:
                nxt: list[tuple[Router, Interface | None]] = []
                for r, hop in frontier:
                    for s, ifs in members.items():
                        if not any(i.node is r for i in ifs):
                            continue
                        if s not in direct and s not in reach and hop is not None:
                            reach[s] = hop
                        for i in ifs:
                            if isinstance(i.node, Router) and i.node.name not in seen:
                                seen.add(i.node.name)
                                nxt.append((i.node, hop if hop is not None else i))
                frontier = nxt
            lines = []
            for s, hop in sorted(reach.items(), key=lambda kv: str(kv[0])):
                assert hop.ip4 is not None and hop.ip6 is not None
                lines.append(f"route replace {s} via {hop.ip4.ip}")
                lines.append(f"route replace {seg6[s]} via {hop.ip6.ip}")
            router.ip_batch(lines)

    def chain(
        self,
        n_routers: int,
        groups: Sequence[str] = ("239.0.0.0/8", "ff05::/16"),
        *,
        rate: int | None = None,
        loss: float | None = None,
        names: tuple[str, str] = ("a", "b"),
    ) -> tuple[Host, Host]:
        """host a -- r1 -- ... -- rN -- host b, one subnet per hop, unicast
        routes, and multicast for `groups` forwarded both ways on every
        router. `rate`/`loss` shape every hop. Returns (a, b); the routers
        are ``net["r1"]`` ... ``net[f"r{n}"]``."""
        a = self.add_host(names[0])
        routers = [self.add_router(f"r{i + 1}") for i in range(n_routers)]
        b = self.add_host(names[1])
        path: list[Node] = [a, *routers, b]
        for left, right in zip(path, path[1:], strict=False):
            self.link(left, right, rate=rate, loss=loss)
        self.route()
        for node in path:
            node.wait_ready()
        for r in routers:
            r.forward_multicast_all(groups)
        return a, b
