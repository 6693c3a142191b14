"""The nodes of an emulated network: a namespace each, its interfaces and processes.

A `Node` is one network namespace named ``PREFIX + name``; it runs
commands and processes inside it (processes are killed by pid on
`Network.down`), answers for its interfaces and addresses, and reads their
counters. A `Host` gets default routes towards its router and a route for
224.0.0.0/4; a `Switch` is a Linux bridge ``br0`` (one subnet for its
segment). The `Router` is in `mcp2p.lab.net.router`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import shutil
import subprocess
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from mcp2p.lab.net.addressing import Subnet
from mcp2p.lab.net.counters import link_stats, qdisc_tx, with_qdisc
from mcp2p.lab.net.process import KILL_TIMEOUT, LabError, run_tool, stop_process
from mcp2p.lab.progs import command

if TYPE_CHECKING:
    from mcp2p.lab.net.link import Link
    from mcp2p.lab.net.network import Network

__all__ = ["Host", "Interface", "Node", "Switch", "iface_addr"]


class Interface:
    """One end of a link, inside `node`'s namespace."""

    def __init__(self, node: Node, name: str) -> None:
        self.node = node
        self.name = name
        self.link: Link | None = None
        self.ip4: ipaddress.IPv4Interface | None = None
        self.ip6: ipaddress.IPv6Interface | None = None

    @property
    def peer(self) -> Interface:
        assert self.link is not None
        return self.link.other(self)

    def __repr__(self) -> str:
        return f"<Interface {self.node.name}:{self.name} {self.ip4} {self.ip6}>"


class Node:
    """A network namespace. Use `Host`, `Router` or `Switch`."""

    kind = "node"

    def __init__(self, net: Network, name: str) -> None:
        self.net = net
        self.name = name
        self.ns = net.prefix + name
        self.interfaces: dict[str, Interface] = {}
        self._procs: list[subprocess.Popen[Any]] = []
        self._ifcount = 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} ns={self.ns}>"

    # -- creation -----------------------------------------------------------

    def _create(self) -> None:
        run_tool(["ip", "netns", "add", self.ns])
        self.ip("link", "set", "lo", "up")
        self.sysctl(self._sysctls())

    def _sysctls(self) -> dict[str, str]:
        # No DAD (addresses are usable at once) and no router solicitations
        # (less background traffic in the counters).
        return {
            "net.ipv6.conf.all.accept_dad": "0",
            "net.ipv6.conf.default.accept_dad": "0",
            "net.ipv6.conf.default.router_solicitations": "0",
        }

    def _new_ifname(self) -> str:
        while True:
            name = f"eth{self._ifcount}"
            self._ifcount += 1
            if name not in self.interfaces:
                return name

    # -- commands -----------------------------------------------------------

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``ip -n NS ARGS``."""
        return run_tool(["ip", "-n", self.ns, *args], check=check)

    def ip_batch(self, lines: Iterable[str]) -> None:
        text = "".join(line + "\n" for line in lines)
        if text:
            run_tool(["ip", "-n", self.ns, "-batch", "-"], input=text)

    def exec_args(self, cmd: Sequence[str]) -> list[str]:
        """The argv that runs `cmd` inside this namespace."""
        return ["ip", "netns", "exec", self.ns, *cmd]

    def run(self, cmd: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """`subprocess.run` inside the namespace.

        Defaults: ``capture_output=True, text=True, timeout=60``; no check.
        """
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 60)
        return subprocess.run(self.exec_args(cmd), **kw)

    def popen(self, cmd: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """`subprocess.Popen` inside the namespace; killed by pid on `down()`.

        ``ip netns exec`` execs the command, so ``proc.pid`` is its pid.
        """
        kw.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.exec_args(cmd), **kw)
        self._procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[Any], timeout: float = KILL_TIMEOUT) -> None:
        """SIGTERM `proc`, SIGKILL after `timeout` seconds."""
        stop_process(proc, timeout)

    @property
    def processes(self) -> list[subprocess.Popen[Any]]:
        return list(self._procs)

    def sysctl(self, values: dict[str, str]) -> None:
        if values:
            args = [f"{k}={v}" for k, v in values.items()]
            run_tool(self.exec_args(["sysctl", "-q", "-w", *args]))

    # -- queries ------------------------------------------------------------

    def iface(self, which: str | Node | Interface) -> Interface:
        """An interface by name, or the one that faces neighbour `which`."""
        if isinstance(which, Interface):
            if which.node is not self:
                raise LabError(f"{which!r} is not on {self.name}")
            return which
        if isinstance(which, str) and which in self.interfaces:
            return self.interfaces[which]
        other = self.net[which] if isinstance(which, str) else which
        for iface in self.interfaces.values():
            if iface.peer.node is other:
                return iface
        raise LabError(f"{self.name} has no interface named or facing {which!r}")

    def ifname(self, which: str | Node | Interface) -> str:
        return self.iface(which).name

    def addresses(self, family: int | None = None) -> list[str]:
        """This node's link addresses (no prefix length), IPv4 first."""
        out: list[str] = []
        if family in (None, 4):
            out += [str(i.ip4.ip) for i in self.interfaces.values() if i.ip4]
        if family in (None, 6):
            out += [str(i.ip6.ip) for i in self.interfaces.values() if i.ip6]
        return out

    def addr(self, which: str | Node | Interface | None = None, family: int = 4) -> str:
        """One address: on interface/neighbour `which`, or the first one."""
        if which is None:
            addrs = self.addresses(family)
            if not addrs:
                raise LabError(f"{self.name} has no IPv{family} address")
            return addrs[0]
        iface = self.iface(which)
        a = iface.ip4 if family == 4 else iface.ip6
        if a is None:
            raise LabError(f"{iface!r} has no IPv{family} address")
        return str(a.ip)

    def ping(self, addr: str, count: int = 2, timeout: float = 1.0) -> bool:
        """True if `addr` answers an ICMP echo (``ping -c COUNT -W TIMEOUT``,
        or a small Python fallback where iputils is not installed)."""
        if shutil.which("ping"):
            cmd = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", str(timeout), addr]
        else:
            cmd = command("ping", addr, str(count), str(timeout))
        return self.run(cmd, timeout=count * (timeout + 0.5) + 5).returncode == 0

    def counters(self, ifname: str | Node | Interface) -> dict[str, int]:
        """rx/tx bytes and packets of an interface, read in the namespace (tx
        from its root qdisc where it has one: see `mcp2p.lab.net.counters`)."""
        if isinstance(ifname, str) and ifname not in self.interfaces.keys() | self.net.nodes.keys():
            name = ifname  # not one of our links: "lo", "br0", ...
        else:
            name = self.ifname(ifname)
        cp = self.ip("-s", "-j", "link", "show", "dev", name)
        stats = json.loads(cp.stdout)[0]["stats64"]
        return {
            **with_qdisc(link_stats(stats), qdisc_tx(self.ns).get(name)),
            "rx_dropped": stats["rx"]["dropped"],
            "tx_dropped": stats["tx"]["dropped"],
        }

    def wait_ready(self, timeout: float = 5.0) -> None:
        """Wait until every interface is operationally up and, where IPv6 is
        on, has its link-local address (IPv6 routes exist only from then)."""
        deadline = time.monotonic() + timeout
        while True:
            cp = self.ip("-j", "addr", "show", check=False)
            pending = set(self.interfaces)
            for entry in json.loads(cp.stdout or "[]"):
                name = entry.get("ifname")
                if name not in pending or entry.get("operstate") != "UP":
                    continue
                v6 = [a for a in entry.get("addr_info", []) if a.get("family") == "inet6"]
                wants_ll = not isinstance(self, Switch)
                if not wants_ll or any(
                    a.get("scope") == "link" and not a.get("tentative") for a in v6
                ):
                    pending.discard(name)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise LabError(f"{self.name}: interfaces not ready: {sorted(pending)}")
            time.sleep(0.02)

    # -- hooks for links ----------------------------------------------------

    def _attach(self, iface: Interface) -> list[str]:
        """ip batch lines that configure a new interface on this node."""
        lines = []
        if iface.ip4 is not None:
            lines.append(f"addr add {iface.ip4} dev {iface.name}")
        if iface.ip6 is not None:
            lines.append(f"addr add {iface.ip6} dev {iface.name} nodad")
        lines.append(f"link set {iface.name} up")
        return lines

    # -- teardown -----------------------------------------------------------

    def _stop_processes(self) -> None:
        procs, self._procs = self._procs, []
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                if proc.poll() is None:
                    proc.terminate()
        deadline = time.monotonic() + KILL_TIMEOUT
        for proc in procs:
            with contextlib.suppress(Exception):
                stop_process(proc, max(0.05, deadline - time.monotonic()))


class Host(Node):
    """An end host: default routes towards its router, a multicast route."""

    kind = "host"

    def __init__(self, net: Network, name: str) -> None:
        super().__init__(net, name)
        self.gateway4: str | None = None
        self.gateway6: str | None = None
        self._mcast_route = False

    def _attach(self, iface: Interface) -> list[str]:
        lines = super()._attach(iface)
        if not self._mcast_route:
            self._mcast_route = True
            lines.append(f"route add 224.0.0.0/4 dev {iface.name}")
        return lines

    def set_default_route(self, iface: Interface, via4: str | None, via6: str | None) -> None:
        """Default routes (IPv4 and IPv6) through `iface` towards a router."""
        lines = []
        if via4 and self.gateway4 is None:
            lines.append(f"route replace default via {via4} dev {iface.name}")
            self.gateway4 = via4
        if via6 and self.gateway6 is None:
            lines.append(f"route replace default via {via6} dev {iface.name}")
            self.gateway6 = via6
        self.ip_batch(lines)


class Switch(Node):
    """A Linux bridge ``br0`` in its own namespace; one subnet for its segment.

    With ``snooping=False`` (default) the bridge floods multicast to every
    port. With ``snooping=True`` it snoops IGMP/MLD, and ports facing
    routers are made permanent multicast-router ports (``mcast_router 2``)
    so streams still reach the routers (DESIGN.md 9).
    """

    kind = "switch"
    BRIDGE = "br0"

    def __init__(self, net: Network, name: str, subnet: Subnet, snooping: bool) -> None:
        super().__init__(net, name)
        self.subnet = subnet
        self.snooping = snooping

    def _create(self) -> None:
        super()._create()
        self.ip(
            "link", "add", self.BRIDGE, "type", "bridge",
            "mcast_snooping", "1" if self.snooping else "0",
        )  # fmt: skip
        self.ip("link", "set", self.BRIDGE, "up")

    def _sysctls(self) -> dict[str, str]:
        # A pure layer-2 box: no IPv6 of its own, so no background traffic.
        return {
            "net.ipv6.conf.all.disable_ipv6": "1",
            "net.ipv6.conf.default.disable_ipv6": "1",
        }

    def _attach(self, iface: Interface) -> list[str]:
        return [f"link set {iface.name} master {self.BRIDGE}", f"link set {iface.name} up"]

    def ports(self) -> list[Interface]:
        return list(self.interfaces.values())

    def neighbours(self) -> list[Interface]:
        """The interfaces of the nodes plugged into this switch."""
        return [i.peer for i in self.interfaces.values()]

    def _router_port(self, port: Interface) -> None:
        if self.snooping:
            run_tool(
                ["bridge", "-n", self.ns, "link", "set", "dev", port.name, "mcast_router", "2"]
            )


def iface_addr(iface: Interface, family: int) -> str | None:
    """The address of ``iface`` in ``family`` (4 or 6) without its prefix length."""
    a = iface.ip4 if family == 4 else iface.ip6
    return str(a.ip) if a is not None else None
