"""Anycast key servers in the lab, routed as real networks do it: OSPF with BIRD.

Every router runs ``bird`` (Debian ``bird2``) with OSPFv2 on all its links
(point-to-point, hello 1 s, dead ``dead`` s); every key-server host runs
``bird`` too, with OSPF on its uplink and the anycast address
(``ANYCAST4``/32 on its loopback, as anycast operators do) announced as a
stub network (``stubnet``). So each
server announces the same /32, every router installs the route to the
nearest announcer (lowest OSPF cost), and when a server's bird stops (or
the whole host dies) its neighbour declares it dead after ``dead`` seconds,
withdraws its stub, and traffic goes to the next nearest server. No lab
code ever writes a unicast route: the routing daemons compute all of them.

The topology (`AnycastLab.build`)::

    ks1   ks2   ...   ksN           key servers, one per router
     |     |           |
    r1 -- r2 -- ... -- rN           backbone: a chain of routers
     |  \\
    cn1   s1 -- s2 -- cn3          cn1: 1 router from ks1 (r1);
                                    cn3: 3 routers from ks1 (s2, s1, r1)

so the nearest server of both CNs is ks1, the next nearest ks2, and so on.
Requires root, ``ip`` and ``bird`` (``apt-get install bird2``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcp2p.lab.net import Host, LabError, Network, Node, Router

__all__ = ["ANYCAST4", "AnycastLab", "Bird", "bird_config", "missing"]

ANYCAST4 = "10.99.99.1"  # the key servers' anycast address (exists only in our namespaces)
HKP_PORT = 11371


def missing() -> str | None:
    """Why the anycast lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "bird", "birdc"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install bird2 iproute2)"
    return None


def bird_config(
    router_id: str,
    ospf: list[str],
    stubs: list[str],
    *,
    stubnets: tuple[str, ...] = (),
    hello: int = 1,
    dead: int = 3,
    log: str | None = None,
) -> str:
    """A BIRD 2 config: OSPFv2 area 0, ``ospf`` interfaces point-to-point,
    ``stubs`` (interfaces) and ``stubnets`` (prefixes) announced as stub
    networks; OSPF routes exported to the kernel."""
    quoted = ", ".join(f'"{i}"' for i in ospf)
    lines = [
        f"router id {router_id};",
        f'log "{log}" all;' if log else "log stderr all;",
        "protocol device { scan time 1; }",
        "protocol kernel { ipv4 { import none; export all; }; }",
        "protocol ospf v2 {",
        "  tick 1;",
        "  ipv4 { import all; export none; };",
        "  area 0 {",
    ]
    if ospf:
        lines.append(
            f"    interface {quoted} {{ type ptp; hello {hello}; dead {dead}; retransmit 2; }};"
        )
    for stub in stubs:
        lines.append(f'    interface "{stub}" {{ stub yes; }};')
    for prefix in stubnets:
        lines.append(f"    stubnet {prefix};")
    lines += ["  };", "}"]
    return "\n".join(lines) + "\n"


class Bird:
    """One ``bird -f`` in a node's namespace, started and killed by pid."""

    def __init__(
        self,
        node: Node,
        ospf: list[str],
        stubs: list[str],
        stubnets: tuple[str, ...] = (),
        *,
        hello: int = 1,
        dead: int = 3,
    ) -> None:
        self.node = node
        base = Path(node.net.state_dir) / f"{node.name}.bird"
        self.conf = base.with_suffix(".conf")
        self.sock = base.with_suffix(".ctl")
        self.log = base.with_suffix(".log")
        router_id = node.addr()
        self.conf.write_text(
            bird_config(
                router_id, ospf, stubs, stubnets=stubnets, hello=hello, dead=dead, log=str(self.log)
            )
        )
        self.proc: subprocess.Popen[Any] | None = None

    def start(self) -> None:
        self.proc = self.node.popen(
            ["bird", "-f", "-c", str(self.conf), "-s", str(self.sock)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while not self.sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise LabError(f"bird on {self.node.name} did not start: {err[-1000:]}")
            time.sleep(0.02)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, crash: bool = True) -> None:
        """Kill it: SIGKILL (a crash: nothing is withdrawn, the neighbours time
        it out) or SIGTERM (bird flushes its LSAs on the way out)."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if crash:
            proc.kill()
            proc.wait(5)
        else:
            self.node.kill(proc, timeout=5)
        self.sock.unlink(missing_ok=True)

    def birdc(self, *args: str) -> str:
        cp = self.node.run(["birdc", "-s", str(self.sock), *args], timeout=10)
        return str(cp.stdout)


@dataclass
class AnycastLab:
    """Builds the topology above in ``net`` and runs a bird on every router and server."""

    net: Network
    servers: int = 3
    hello: int = 1
    dead: int = 3
    ks: list[Host] = field(default_factory=list)
    routers: list[Router] = field(default_factory=list)
    cns: dict[int, Host] = field(default_factory=dict)  # hops to ks1 -> CN
    birds: dict[str, Bird] = field(default_factory=dict)

    def build(self) -> AnycastLab:
        if self.servers < 2:
            raise LabError("anycast needs at least two servers")
        net = self.net
        self.routers = [net.add_router(f"r{i + 1}") for i in range(self.servers)]
        for a, b in zip(self.routers, self.routers[1:], strict=False):
            net.link(a, b)
        for i, router in enumerate(self.routers):
            host = net.add_host(f"ks{i + 1}")
            net.link(host, router)
            host.ip("addr", "add", f"{ANYCAST4}/32", "dev", "lo")
            self.ks.append(host)
        cn1 = net.add_host("cn1")
        net.link(cn1, self.routers[0])
        spur = [net.add_router("s1"), net.add_router("s2")]
        net.link(self.routers[0], spur[0])
        net.link(spur[0], spur[1])
        cn3 = net.add_host("cn3")
        net.link(cn3, spur[1])
        self.cns = {1: cn1, 3: cn3}
        for router in [*self.routers, *spur]:
            ospf = [i.name for i in router.interfaces.values() if isinstance(i.peer.node, Router)]
            ospf += [i.name for i in router.interfaces.values() if i.peer.node in self.ks]
            stubs = [i.name for i in router.interfaces.values() if i.peer.node in self.cns.values()]
            self.birds[router.name] = Bird(router, ospf, stubs, hello=self.hello, dead=self.dead)
        for host in self.ks:
            self.birds[host.name] = Bird(
                host,
                list(host.interfaces),
                [],
                (f"{ANYCAST4}/32",),
                hello=self.hello,
                dead=self.dead,
            )
        for bird in self.birds.values():
            bird.start()
        self.wait_converged()
        return self

    def wait_converged(self, timeout: float = 60.0) -> float:
        """Wait until every router routes to every link subnet and to the anycast
        address towards the nearest live announcer; seconds it took."""
        start = time.monotonic()
        subnets = {str(link.subnet.net4) for link in self.net.links}
        routers = [n for n in self.net.nodes.values() if isinstance(n, Router)]
        while True:
            ok = True
            for router in routers:
                cp = router.ip("-j", "-4", "route", "show", check=False)
                dsts = {r.get("dst") for r in json.loads(cp.stdout or "[]")}
                dsts = {d if "/" in d else d + "/32" for d in dsts if d}
                if not subnets <= dsts or f"{ANYCAST4}/32" not in dsts:
                    ok = False
                    break
            if ok and self.nearest_hop_ok():
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise LabError(f"OSPF did not converge in {timeout:g} s")
            time.sleep(0.1)

    def nearest_hop_ok(self) -> bool:
        """r1 sends anycast traffic to the first live server (OSPF's choice)."""
        live = [h for h in self.ks if self.birds[h.name].running()]
        if not live:
            return True
        cp = self.routers[0].ip("-j", "route", "get", ANYCAST4, check=False)
        try:
            via = json.loads(cp.stdout)[0].get("gateway")
        except (ValueError, IndexError):
            return False
        want = live[0]
        if want is self.ks[0]:
            return bool(via == want.addr())
        return via is not None and via != self.ks[0].addr()

    def route_to_anycast(self, router: Router) -> str | None:
        cp = router.ip("-j", "route", "get", ANYCAST4, check=False)
        try:
            return str(json.loads(cp.stdout)[0].get("gateway"))
        except (ValueError, IndexError):
            return None

    def kill_server(self, index: int, daemon: Any = None, crash: bool = True) -> float:
        """The server ``ks{index+1}`` dies (its daemon and its bird); when it died."""
        t = time.time()
        if daemon is not None:
            daemon.stop()
        self.birds[self.ks[index].name].stop(crash=crash)
        return t


# -- the probe: ``python -m mcp2p.lab.anycast MODE ...`` inside a namespace -------------
#
# Runs the real client (`mcp2p.trust.keyclient`) and prints one JSON document.
# Every loop is bounded in count and in time.

PROBE = [sys.executable, "-m", "mcp2p.lab.anycast"]


async def _lookups(reactor: Any, a: Any) -> Any:
    from twisted.internet import task

    from mcp2p.trust.keyclient import KeyClient, LookupFailed, parse_endpoint

    client = KeyClient(reactor, [parse_endpoint(a.servers)], timeout=a.timeout)
    node_id = bytes.fromhex(a.node)
    out = []
    deadline = time.monotonic() + a.duration
    for _ in range(a.count):
        if time.monotonic() > deadline:
            break
        t0 = time.time()
        start = time.perf_counter()
        try:
            answer = await client.fetch(node_id)
            found = answer.record is not None
            out.append([t0, answer.server, time.perf_counter() - start, None if found else "none"])
        except LookupFailed as e:
            out.append([t0, None, time.perf_counter() - start, str(e)[:100]])
        await task.deferLater(reactor, a.interval, lambda: None)
    return out


async def _poll(reactor: Any, a: Any) -> Any:
    """Publish a record to one server, then time until every server holds it."""
    from twisted.internet import task

    from mcp2p.trust import records
    from mcp2p.trust.keyclient import KeyClient, LookupFailed, parse_endpoint

    record = records.decode(Path(a.record).read_bytes().strip())
    servers = [parse_endpoint(s) for s in a.servers.split(",")]
    clients = {str(s): KeyClient(reactor, [s], timeout=a.timeout) for s in servers}
    start = time.monotonic()
    posted = await KeyClient(reactor, [parse_endpoint(a.to)], timeout=a.timeout).publish(record)
    seen: dict[str, float] = {}
    while len(seen) < len(clients) and time.monotonic() - start < a.duration:
        for name, client in clients.items():
            if name in seen:
                continue
            try:
                answer = await client.fetch(record.node_id)
            except LookupFailed:
                continue
            if answer.record is not None and answer.record.issued >= record.issued:
                seen[name] = time.monotonic() - start
        await task.deferLater(reactor, a.interval, lambda: None)
    return {"posted": posted[1], "text": posted[2], "seen": seen}


async def _flood(reactor: Any, a: Any) -> Any:
    """Post ``count`` records of fresh keys (sybils), ``parallel`` at a time."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from twisted.internet import defer

    from mcp2p.trust import records
    from mcp2p.trust.keyclient import KeyClient, LookupFailed, parse_endpoint
    from mcp2p.trust.keys import NodeIdentity, node_id_of

    client = KeyClient(reactor, [parse_endpoint(a.to)], timeout=a.timeout)
    codes: dict[str, int] = {}
    start = time.monotonic()
    now = int(time.time())
    remaining = [a.count]

    async def worker() -> None:
        while remaining[0] > 0 and time.monotonic() - start < a.duration:
            remaining[0] -= 1
            key = Ed25519PrivateKey.generate()
            pub = key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            record = records.make_record(NodeIdentity(key, pub, node_id_of(pub)), now)
            try:
                code = str((await client.publish(record))[1])
            except LookupFailed:
                code = "error"
            codes[code] = codes.get(code, 0) + 1

    await defer.gatherResults([defer.ensureDeferred(worker()) for _ in range(a.parallel)])
    return {"codes": codes, "seconds": time.monotonic() - start}


async def _summary(reactor: Any, a: Any) -> Any:
    from mcp2p.trust.keyclient import http_request, parse_endpoint

    out = {}
    for s in a.servers.split(","):
        ep = parse_endpoint(s)
        try:
            reply = await http_request(reactor, b"GET", ep.url("/pks/summary"), timeout=a.timeout)
            out[str(ep)] = [reply.header(b"X-Key-Records"), reply.body.decode()[:8192]]
        except Exception as e:  # noqa: BLE001 - reported
            out[str(ep)] = [None, str(e)[:100]]
    return out


def _probe_main(argv: list[str] | None = None) -> None:
    import argparse

    from twisted.internet import defer, task

    p = argparse.ArgumentParser(prog="python -m mcp2p.lab.anycast")
    p.add_argument("mode", choices=("lookups", "poll", "flood", "summary"))
    p.add_argument("--servers", default=f"{ANYCAST4}:{HKP_PORT}")
    p.add_argument("--to", default=f"{ANYCAST4}:{HKP_PORT}")
    p.add_argument("--node", default="00" * 16)
    p.add_argument("--record", default="")
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=30.0)
    a = p.parse_args(argv)
    run = {"lookups": _lookups, "poll": _poll, "flood": _flood, "summary": _summary}[a.mode]

    def main(reactor: Any) -> Any:
        async def go() -> None:
            result = await run(reactor, a)
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()

        return defer.ensureDeferred(go())

    task.react(main)


if __name__ == "__main__":
    _probe_main()
