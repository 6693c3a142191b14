"""Emulated networks built from Linux network namespaces.

A `Network` owns a set of namespaces whose names all start with a prefix
unique to the instance (``mcp2p-<6 hex>-``), so parallel runs never collide.
Nodes are hosts, routers (IPv4/IPv6 forwarding plus `smcrouted` for static
multicast routes) and switches (a Linux bridge in its own namespace). Links
are veth pairs created directly inside the two namespaces: nothing is ever
created in, or moved through, the host's own namespace.

Addresses come from private test blocks that exist only inside our
namespaces: 10.77.x.0/24 (then 10.78.x.0/24, ...) and fd77:0:0:x::/64.

Shaping (see DESIGN.md 9): `rate` is a `tc tbf` qdisc on the sending end of
a link, `loss` an nftables ``netdev`` ingress chain on the receiving end (so
it also applies to traffic a router forwards or a bridge switches); shaped
veths get GRO/GSO/TSO turned off with ethtool so both act per packet.

Everything a `Network` makes is removed by `Network.down()`: idempotent,
best effort, also run from `atexit` and on SIGTERM. Processes are killed by
pid (SIGTERM, then SIGKILL after a timeout), never by name.

Requires root and the `ip`, `tc`, `nft`, `ethtool` and `smcrouted` tools.

    with Network() as net:
        a, b = net.chain(2)            # a -- r1 -- r2 -- b, 239/8 + ff05::/16
        b.popen([...])                 # killed by pid on exit
        a.run([...]); a.counters(net["r1"])

Platform notes: both ends of a veth get distinct ifindexes (see `link`);
otherwise linkwatch delays the carrier by up to a second and IPv6 (incl.
multicast forwarding) silently drops traffic meanwhile. `link()` waits until
interfaces are up and have their IPv6 link-local address.

Detached networks (``python -m mcp2p.lab topo ... up``): `Network.detach()`
leaves everything up after this process exits and writes a state file
(JSON: prefix, namespaces, and each process's pid with its start time from
``/proc/PID/stat``). `destroy_detached(state_file)`, in any later process,
kills those pids that are still the processes we started and deletes the
namespaces. `reap_orphans()` leaves a network alone while its state file
marks it detached.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from mcp2p.lab.progs import command

__all__ = [
    "NS_PREFIX",
    "Host",
    "Interface",
    "LabError",
    "Link",
    "Network",
    "Node",
    "Router",
    "Switch",
    "counter_delta",
    "destroy_detached",
    "detached_networks",
    "missing_requirements",
    "namespace_counters",
    "process_start_time",
    "reap_orphans",
]

NS_PREFIX = "mcp2p-"
IFNAMSIZ = 15  # longest Linux interface name
STATE_ROOT = os.path.join(tempfile.gettempdir(), "mcp2p-lab")
DETACHED_FILE = "detached.json"  # in a network's state dir while it is detached
KILL_TIMEOUT = 2.0
CMD_TIMEOUT = 30.0

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_OWNED_NS_RE = re.compile(r"^mcp2p-([0-9a-f]{6})-")

IPv4Net = ipaddress.IPv4Network
IPv6Net = ipaddress.IPv6Network
AnyIfaceAddr = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class LabError(RuntimeError):
    """A command that builds or changes the emulated network failed."""


def _run(
    args: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float = CMD_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    try:
        cp = subprocess.run(
            list(args), capture_output=True, text=True, input=input, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout}s: {' '.join(args)}") from exc
    if check and cp.returncode != 0:
        detail = (cp.stderr or cp.stdout).strip()
        raise LabError(f"{' '.join(args)} failed ({cp.returncode}): {detail}")
    return cp


def _kill(proc: subprocess.Popen[Any], timeout: float = KILL_TIMEOUT) -> None:
    """Stop one process we started, by pid: SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)


def missing_requirements(tools: Iterable[str] = ("ip", "smcrouted")) -> str | None:
    """Why namespace tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        return "missing tools: " + ", ".join(missing)
    return None


def _ns_list() -> list[str]:
    cp = _run(["ip", "-j", "netns", "list"], check=False)
    if cp.returncode != 0 or not cp.stdout.strip():
        return []
    return [entry["name"] for entry in json.loads(cp.stdout)]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _delete_namespace(ns: str) -> None:
    """Kill whatever still runs inside one of *our* namespaces, then delete it."""
    cp = _run(["ip", "netns", "pids", ns], check=False)
    for word in cp.stdout.split():
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.kill(int(word), signal.SIGKILL)
    _run(["ip", "netns", "del", ns], check=False)


def reap_orphans() -> list[str]:
    """Remove namespaces left by `Network`s whose owning process died.

    Only namespaces named ``mcp2p-<6 hex>-*`` whose state directory still
    records an owner pid that no longer exists are touched, and never those
    of a network left up with `Network.detach()`. Returns them.
    """
    reaped = []
    for ns in _ns_list():
        m = _OWNED_NS_RE.match(ns)
        if not m:
            continue
        if os.path.exists(os.path.join(STATE_ROOT, m.group(1), DETACHED_FILE)):
            continue  # left up on purpose; destroy_detached() removes it
        owner_file = os.path.join(STATE_ROOT, m.group(1), "owner")
        try:
            with open(owner_file) as f:
                owner = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if _pid_alive(owner):
            continue
        _delete_namespace(ns)
        reaped.append(ns)
    for ns in reaped:
        m = _OWNED_NS_RE.match(ns)
        assert m
        shutil.rmtree(os.path.join(STATE_ROOT, m.group(1)), ignore_errors=True)
    return reaped


def process_start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/PID/stat`` (start time in clock ticks after boot),
    or None if there is no such process. With the pid it names one process:
    a pid reused later has another start time."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the command may contain spaces
    try:
        return int(fields[19])  # fields[0] is field 3 (state)
    except (IndexError, ValueError):
        return None


def namespace_counters(ns: str, ifnames: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
    """rx/tx bytes and packets of the interfaces in namespace ``ns`` (all but
    ``lo`` if ``ifnames`` is None), keyed by interface name; {} if ``ns`` is
    gone. For networks of an earlier process (see `destroy_detached`)."""
    if not ns.startswith(NS_PREFIX):
        raise LabError(f"not one of our namespaces: {ns!r}")
    cp = _run(["ip", "-n", ns, "-s", "-j", "link", "show"], check=False)
    if cp.returncode != 0 or not cp.stdout.strip():
        return {}
    wanted = set(ifnames) if ifnames is not None else None
    out: dict[str, dict[str, int]] = {}
    for entry in json.loads(cp.stdout):
        name = entry.get("ifname")
        if name == "lo" or (wanted is not None and name not in wanted):
            continue
        stats = entry["stats64"]
        out[name] = {
            "rx_bytes": stats["rx"]["bytes"],
            "tx_bytes": stats["tx"]["bytes"],
            "rx_packets": stats["rx"]["packets"],
            "tx_packets": stats["tx"]["packets"],
        }
    return out


def detached_networks() -> list[str]:
    """State files of every network currently left up by `Network.detach`."""
    try:
        ids = sorted(os.listdir(STATE_ROOT))
    except OSError:
        return []
    files = (os.path.join(STATE_ROOT, i, DETACHED_FILE) for i in ids)
    return [f for f in files if os.path.exists(f)]


def destroy_detached(state_file: str, timeout: float = KILL_TIMEOUT) -> list[str]:
    """Take down a network left up by `Network.detach`, from any process.

    Each recorded process is signalled only while ``/proc/PID/stat`` still
    shows the start time recorded when it was detached (so a reused pid is
    never hit): SIGTERM, then SIGKILL after ``timeout``. Then the network's
    namespaces (recorded, or named with its prefix) are deleted, and its
    state directory. Returns the namespaces deleted. Idempotent.
    """
    try:
        with open(state_file) as f:
            state = json.load(f)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise LabError(f"{state_file}: unreadable state file: {e}") from e
    prefix = str(state.get("prefix", ""))
    if not _OWNED_NS_RE.match(prefix):
        raise LabError(f"{state_file}: not a state file of ours (prefix {prefix!r})")

    def ours(p: dict[str, Any]) -> bool:
        return process_start_time(int(p["pid"])) == p.get("start")

    procs = [p for p in state.get("processes", []) if ours(p)]
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(p["pid"]), signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while procs and time.monotonic() < deadline:
        procs = [p for p in procs if ours(p) and not _zombie(int(p["pid"]))]
        if procs:
            time.sleep(0.05)
    for p in procs:
        if ours(p):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(p["pid"]), signal.SIGKILL)
    namespaces = {ns for ns in state.get("namespaces", []) if ns.startswith(prefix)}
    namespaces.update(ns for ns in _ns_list() if ns.startswith(prefix))
    existing = set(_ns_list())
    for ns in sorted(namespaces):
        with contextlib.suppress(Exception):
            _delete_namespace(ns)
    state_dir = os.path.dirname(os.path.abspath(state_file))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_file)
    if os.path.dirname(state_dir) == os.path.abspath(STATE_ROOT):
        shutil.rmtree(state_dir, ignore_errors=True)
    return sorted(namespaces & existing)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return True


# --------------------------------------------------------------------------
# cleanup registry (atexit and SIGTERM)

_live: set[Network] = set()  # strong refs: an unreferenced Network still gets cleaned
_hooks_lock = threading.Lock()
_hooks_installed = False


def _cleanup_all() -> None:
    for net in list(_live):
        with contextlib.suppress(Exception):
            net.down()


def _on_sigterm(signum: int, frame: object) -> None:
    _cleanup_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_hooks() -> None:
    global _hooks_installed
    with _hooks_lock:
        if _hooks_installed:
            return
        _hooks_installed = True
        atexit.register(_cleanup_all)
        if threading.current_thread() is threading.main_thread():
            with contextlib.suppress(ValueError, OSError):
                if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                    signal.signal(signal.SIGTERM, _on_sigterm)


# --------------------------------------------------------------------------
# addressing


class _Subnet:
    """One IPv4 /24-ish and one IPv6 /64 shared by the ends on a segment."""

    def __init__(self, net4: IPv4Net, net6: IPv6Net) -> None:
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


# --------------------------------------------------------------------------
# nodes


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
        _run(["ip", "netns", "add", self.ns])
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
        return _run(["ip", "-n", self.ns, *args], check=check)

    def ip_batch(self, lines: Iterable[str]) -> None:
        text = "".join(line + "\n" for line in lines)
        if text:
            _run(["ip", "-n", self.ns, "-batch", "-"], input=text)

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
        _kill(proc, timeout)

    @property
    def processes(self) -> list[subprocess.Popen[Any]]:
        return list(self._procs)

    def sysctl(self, values: dict[str, str]) -> None:
        if values:
            args = [f"{k}={v}" for k, v in values.items()]
            _run(self.exec_args(["sysctl", "-q", "-w", *args]))

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
        """rx/tx bytes and packets of an interface, read in the namespace."""
        if isinstance(ifname, str) and ifname not in self.interfaces.keys() | self.net.nodes.keys():
            name = ifname  # not one of our links: "lo", "br0", ...
        else:
            name = self.ifname(ifname)
        cp = self.ip("-s", "-j", "link", "show", "dev", name)
        stats = json.loads(cp.stdout)[0]["stats64"]
        return {
            "rx_bytes": stats["rx"]["bytes"],
            "tx_bytes": stats["tx"]["bytes"],
            "rx_packets": stats["rx"]["packets"],
            "tx_packets": stats["tx"]["packets"],
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
                _kill(proc, max(0.05, deadline - time.monotonic()))


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

    def __init__(self, net: Network, name: str, subnet: _Subnet, snooping: bool) -> None:
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
            _run(["bridge", "-n", self.ns, "link", "set", "dev", port.name, "mcast_router", "2"])


class Router(Node):
    """IPv4/IPv6 forwarding and `smcrouted` for static multicast routes.

    Multicast forwarding decrements the TTL / hop limit: a datagram sent
    with TTL 1 stays on its link, TTL 2 crosses one router.
    """

    kind = "router"

    def __init__(self, net: Network, name: str) -> None:
        super().__init__(net, name)
        self._mroutes: list[tuple[str, str | None, str, tuple[str, ...]]] = []
        self._mgroups: list[tuple[str, str | None, str]] = []
        self.smcroute: subprocess.Popen[Any] | None = None
        base = os.path.join(net.state_dir, name)
        self.smcroute_conf = base + ".smcroute.conf"
        self.smcroute_sock = base + ".smcroute.sock"
        self.smcroute_pid = base + ".smcroute.pid"
        self.smcroute_log = base + ".smcroute.log"
        self.smcroute_ident = self.ns

    def _sysctls(self) -> dict[str, str]:
        return {
            **super()._sysctls(),
            "net.ipv4.ip_forward": "1",
            "net.ipv6.conf.all.forwarding": "1",
            "net.ipv6.conf.default.forwarding": "1",
            "net.ipv4.conf.all.rp_filter": "0",
            "net.ipv4.conf.default.rp_filter": "0",
        }

    # -- multicast routes ---------------------------------------------------

    def forward_multicast(
        self,
        group_prefix: str = "239.0.0.0/8",
        iif: str | Node | Interface | None = None,
        oifs: Sequence[str | Node | Interface] | None = None,
        *,
        source: str | None = None,
        apply: bool = True,
    ) -> None:
        """Route multicast for `group_prefix` arriving on `iif` out of `oifs`.

        Without `source` this is an ASM (*,G) route
        ``mroute from IIF group G/LEN to OIFS``; with it an SSM (S,G) route
        ``mroute from IIF source S group G to OIFS``; `source` may be a
        prefix (``10.77.3.0/24``: smcroute's (S/LEN,G) wildcard). Interfaces
        may be given by name, as `Interface`, or as the neighbouring node.
        `oifs` defaults to every other interface. With ``apply=False`` the
        route is only recorded: call `apply_multicast()` after the last one.
        """
        if iif is None:
            raise LabError("forward_multicast needs an inbound interface")
        in_name = self.ifname(iif)
        if oifs is None:
            out = tuple(n for n in self.interfaces if n != in_name)
        else:
            out = tuple(self.ifname(o) for o in oifs)
        ipaddress.ip_network(group_prefix, strict=False)  # validate early
        if source is not None:
            ipaddress.ip_network(source, strict=False)
        if out:
            self._mroutes.append((in_name, source, group_prefix, out))
        if apply:
            self.apply_multicast()

    def forward_multicast_all(
        self, group_prefix: str | Sequence[str] = "239.0.0.0/8", *, apply: bool = True
    ) -> None:
        """ASM routes for `group_prefix` (one or several, IPv4 or IPv6) from
        every interface to all the others (loops if the routers form a
        cycle: then TTL alone ends a datagram). ``apply=False``: see
        `forward_multicast`."""
        prefixes = [group_prefix] if isinstance(group_prefix, str) else list(group_prefix)
        names = list(self.interfaces)
        for prefix in prefixes:
            ipaddress.ip_network(prefix, strict=False)
            for name in names:
                out = tuple(n for n in names if n != name)
                if out:
                    self._mroutes.append((name, None, prefix, out))
        if apply:
            self.apply_multicast()

    def join(self, iif: str | Node | Interface, group: str, *, source: str | None = None) -> None:
        """Make the router join `group` on `iif` (``mgroup``), e.g. for
        snooping switches that have no router port configured."""
        self._mgroups.append((self.ifname(iif), source, group))
        self.apply_multicast()

    def clear_multicast(self) -> None:
        self._mroutes.clear()
        self._mgroups.clear()
        self.apply_multicast()

    def smcroute_config(self) -> str:
        lines = [f"# generated by mcp2p.lab.netns for {self.ns}"]
        lines += [f"phyint {name} enable" for name in self.interfaces]
        for iif, source, group in self._mgroups:
            src = f" source {source}" if source else ""
            lines.append(f"mgroup from {iif}{src} group {group}")
        for iif, source, group, oifs in self._mroutes:
            src = f" source {source}" if source else ""
            lines.append(f"mroute from {iif}{src} group {group} to {' '.join(oifs)}")
        return "\n".join(lines) + "\n"

    def smcrouted_args(self) -> list[str]:
        return [
            "smcrouted", "-n", "-N", "-l", "info",
            "-f", self.smcroute_conf,
            "-i", self.smcroute_ident,
            "-P", self.smcroute_pid,
            "-u", self.smcroute_sock,
        ]  # fmt: skip

    def smcroutectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(self.exec_args(["smcroutectl", "-u", self.smcroute_sock, *args]), check=check)

    def apply_multicast(self, timeout: float = 5.0) -> None:
        """Write the config; start smcrouted, or make a running one reload it
        (``smcroutectl reload`` also picks up interfaces added since)."""
        with open(self.smcroute_conf, "w") as f:
            f.write(self.smcroute_config())
        if self.smcroute is not None and self.smcroute.poll() is None:
            if self.smcroutectl("reload", check=False).returncode == 0:
                return
            self.stop_smcroute()  # wedged: start afresh below
        if not self._mroutes and not self._mgroups:
            return
        for path in (self.smcroute_sock, self.smcroute_pid):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        with open(self.smcroute_log, "ab") as log:
            proc = self.popen(
                self.smcrouted_args(), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        self.smcroute = proc
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise LabError(
                    f"smcrouted in {self.ns} exited ({proc.returncode}); "
                    f"see {self.smcroute_log}: {self._log_tail()}"
                )
            if os.path.exists(self.smcroute_pid) and os.path.exists(self.smcroute_sock):
                if self.smcroutectl("show", "routes", check=False).returncode == 0:
                    return
            if time.monotonic() > deadline:
                raise LabError(f"smcrouted in {self.ns} did not come up: {self._log_tail()}")
            time.sleep(0.02)

    def stop_smcroute(self) -> None:
        """Stop this router's smcrouted (the kernel then drops its mroutes)."""
        proc, self.smcroute = self.smcroute, None
        if proc is not None:
            _kill(proc)
            with contextlib.suppress(ValueError):
                self._procs.remove(proc)

    def _log_tail(self) -> str:
        try:
            with open(self.smcroute_log, errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def mroutes(self, family: int = 4) -> str:
        """The kernel's multicast forwarding cache (``ip mroute show``)."""
        return self.ip(f"-{family}", "mroute", "show").stdout


_N = TypeVar("_N", bound=Node)


# --------------------------------------------------------------------------
# links


class Link:
    """A veth pair between two nodes, optionally shaped."""

    def __init__(self, net: Network, a: Interface, b: Interface, subnet: _Subnet) -> None:
        self.net = net
        self.a = a
        self.b = b
        self.subnet = subnet
        self.rate: dict[str, int | None] = {}
        self.loss: dict[str, float | None] = {}
        self._offloads_off = False

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
            _run(
                iface.node.exec_args(
                    ["ethtool", "-K", iface.name, "gro", "off", "gso", "off", "tso", "off"]
                ),
                check=False,
            )
        self._offloads_off = True

    def set_rate(
        self, rate: int | None, *, src: Node | str | None = None, queue_ms: int = 50
    ) -> None:
        """Limit traffic sent by `src` (both directions if None) to `rate` bit/s
        with a tbf qdisc; None removes the limit."""
        for iface in self._select(src):
            node = iface.node
            if rate is None:
                _run(["tc", "-n", node.ns, "qdisc", "del", "dev", iface.name, "root"], check=False)
            else:
                if rate <= 0:
                    raise LabError("rate must be positive (bit/s)")
                self._offloads()
                burst = max(3200, rate // 8 // 100)  # 10 ms worth, at least 2 frames
                _run([
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
            _run(node.exec_args(["nft", "-f", "-"]), input=script)
            self.loss[node.name] = loss or None

    def loss_drops(self, dst: Node | str) -> int:
        """Packets dropped so far by the loss rule at `dst`'s end."""
        iface = self.end(dst)
        cp = _run(
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


# --------------------------------------------------------------------------
# the network


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
            _install_hooks()
            os.makedirs(self.state_dir, exist_ok=False)
            with open(os.path.join(self.state_dir, "owner"), "w") as f:
                f.write(f"{os.getpid()}\n")
            self._is_up = True
            _live.add(self)
            return self

    def down(self) -> None:
        """Kill our processes, delete our namespaces (and so their veths).

        Idempotent and best effort: every step runs even if others fail.
        A detached network is left alone (see `detach`).
        """
        with self._lock:
            if self._detached:
                return
            _live.discard(self)
            for node in self.nodes.values():
                with contextlib.suppress(Exception):
                    node._stop_processes()
            ours = {n.ns for n in self.nodes.values()}
            # also anything with our prefix that a failed step left behind
            ours.update(ns for ns in _ns_list() if ns.startswith(self.prefix))
            for ns in sorted(ours):
                with contextlib.suppress(Exception):
                    _delete_namespace(ns)
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
            processes = []
            for node in self.nodes.values():
                for proc in node.processes:
                    start = process_start_time(proc.pid)
                    if proc.poll() is None and start is not None:
                        args = proc.args if isinstance(proc.args, list) else [proc.args]
                        processes.append({
                            "node": node.name, "pid": proc.pid, "start": start,
                            "argv": [str(a) for a in args],
                        })  # fmt: skip
            namespaces = sorted({n.ns for n in self.nodes.values()} | set(self.namespaces()))
            state: dict[str, Any] = {
                **(extra or {}),
                "id": self.id,
                "prefix": self.prefix,
                "owner": os.getpid(),
                "detached_at": time.time(),
                "namespaces": namespaces,
                "nodes": {
                    n.name: {
                        "kind": n.kind,
                        "ns": n.ns,
                        "interfaces": {
                            i.name: {
                                "ip4": str(i.ip4) if i.ip4 else None,
                                "ip6": str(i.ip6) if i.ip6 else None,
                                "peer": f"{i.peer.node.name}:{i.peer.name}",
                            }
                            for i in n.interfaces.values()
                        },
                    }
                    for n in self.nodes.values()
                },
                "processes": processes,
            }
            path = os.path.join(self.state_dir, DETACHED_FILE)
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(state, f, indent=1)
            os.replace(tmp, path)
            self._detached = path
            _live.discard(self)
            return path

    def link_counters(self) -> dict[str, dict[str, int]]:
        """Counters of every link end, keyed ``"node:ifname"`` (one ``ip -s``
        per node). Take one before and one after a run; `counter_delta`
        gives what crossed each link end in between."""
        out: dict[str, dict[str, int]] = {}
        for node in list(self.nodes.values()):
            names = {iface.name for iface in node.interfaces.values()}
            if not names:
                continue
            cp = node.ip("-s", "-j", "link", "show")
            for entry in json.loads(cp.stdout):
                if entry.get("ifname") in names:
                    stats = entry["stats64"]
                    out[f"{node.name}:{entry['ifname']}"] = {
                        "rx_bytes": stats["rx"]["bytes"],
                        "tx_bytes": stats["tx"]["bytes"],
                        "rx_packets": stats["rx"]["packets"],
                        "tx_packets": stats["tx"]["packets"],
                    }
        return out

    def namespaces(self) -> list[str]:
        """Namespaces with this network's prefix that exist right now."""
        return [ns for ns in _ns_list() if ns.startswith(self.prefix)]

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

    def _subnet(self, subnet: str | None, subnet6: str | None) -> _Subnet:
        i = self._subnet_index
        self._subnet_index += 1
        if i >= 256 * 100:
            raise LabError("out of test subnets")
        net4 = IPv4Net(subnet) if subnet else IPv4Net(f"10.{77 + i // 256}.{i % 256}.0/24")
        net6 = IPv6Net(subnet6) if subnet6 else IPv6Net(f"fd77:0:{i // 256:x}:{i % 256:x}::/64")
        return _Subnet(net4, net6)

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
                        me.set_default_route(mine, _addr(n, 4), _addr(n, 6))
                        break
            elif isinstance(me, Router) and isinstance(other, Switch):
                other._router_port(theirs)
                for n in other.neighbours():
                    if isinstance(n.node, Host):
                        n.node.set_default_route(n, _addr(mine, 4), _addr(mine, 6))

    def route(self) -> None:
        """Static unicast routes on every router to every subnet it does not
        touch, along shortest paths through other routers (IPv4 and IPv6)."""
        # L3 segments: subnet -> list of (node, interface) with an address there
        members: dict[IPv4Net, list[Interface]] = {}
        seg6: dict[IPv4Net, IPv6Net] = {}
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
            reach: dict[IPv4Net, Interface] = {}
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


def counter_delta(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
) -> dict[str, dict[str, int]]:
    """``after - before`` per link end and counter (ends in both only)."""
    return {
        end: {k: after[end][k] - before[end].get(k, 0) for k in after[end]}
        for end in after
        if end in before
    }


def _addr(iface: Interface, family: int) -> str | None:
    a = iface.ip4 if family == 4 else iface.ip6
    return str(a.ip) if a is not None else None
