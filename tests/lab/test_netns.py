"""Tests for mcp2p.lab.net: real namespaces, veths, smcrouted, tc, nftables.

Root only; all traffic stays inside namespaces these tests create.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mcp2p.lab.net import Host, Network, missing_requirements, reap_orphans

_reason = missing_requirements(("ip", "smcrouted", "smcroutectl"))
if _reason:
    pytest.skip(f"namespace lab tests: {_reason}", allow_module_level=True)

pytestmark = pytest.mark.netns

GROUP4 = "239.77.0.1"
GROUP6 = "ff05::77:1"

# Joins GROUP on interface IFNAME, prints "ready", then counts datagrams that
# start with TAG until EXPECT arrived or TIMEOUT seconds passed; prints the
# count, the total payload bytes and the time from first to last arrival.
RECEIVER = r"""
import socket, struct, sys, time
group, port, ifname, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].encode()
timeout, expect = float(sys.argv[5]), int(sys.argv[6])
idx = socket.if_nametoindex(ifname)
if ":" in group:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((group, port, 0, idx))
    mreq = socket.inet_pton(socket.AF_INET6, group) + struct.pack("@I", idx)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((group, port))
    mreqn = socket.inet_aton(group) + socket.inet_aton("0.0.0.0") + struct.pack("@i", idx)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
SO_TIMESTAMPNS = 35  # Linux; the same value as SCM_TIMESTAMPNS
s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
print("ready", flush=True)
deadline = time.monotonic() + timeout
count = nbytes = 0
first = last = 0.0
while count < expect and (left := deadline - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        data, anc, _, _ = s.recvmsg(65536, 64)
    except socket.timeout:
        break
    if data.startswith(tag):
        # kernel receive time, immune to this process being scheduled late
        stamps = [d for lvl, typ, d in anc if lvl == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS]
        sec, nsec = struct.unpack("@qq", stamps[0]) if stamps else (time.time(), 0)
        last = sec + nsec / 1e9
        first = first or last
        count += 1
        nbytes += len(data)
print(count, nbytes, last - first, flush=True)
"""

# Sends COUNT datagrams of SIZE bytes (starting with TAG) to DST:PORT, at
# most for DURATION seconds, GAP seconds apart; TTL/hop limit and outgoing
# interface set for multicast.
SENDER = r"""
import socket, struct, sys, time
dst, port, ifname, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].encode()
ttl, count, size = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
gap, duration = float(sys.argv[8]), float(sys.argv[9])
idx = socket.if_nametoindex(ifname)
if ":" in dst:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ttl)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, idx)
    addr = (dst, port, 0, 0)
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
    mreqn = socket.inet_aton("0.0.0.0") * 2 + struct.pack("@i", idx)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
    addr = (dst, port)
payload = tag + b"x" * (size - len(tag))
end = time.monotonic() + duration
sent = 0
while sent < count and time.monotonic() < end:
    s.sendto(payload, addr)
    sent += 1
    if gap:
        time.sleep(gap)
print(sent, flush=True)
"""


def start_receiver(
    host: Host, group: str, port: int, tag: str, timeout: float = 1.0, expect: int = 5
) -> subprocess.Popen[str]:
    ifname = next(iter(host.interfaces))
    args = [group, str(port), ifname, tag, str(timeout), str(expect)]
    proc = host.popen([sys.executable, "-c", RECEIVER, *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == "ready", f"receiver did not start: {line!r}"
    return proc


def receiver_result(proc: subprocess.Popen[str]) -> tuple[int, int, float]:
    out, _ = proc.communicate(timeout=10)
    count, nbytes, span = out.split()
    return int(count), int(nbytes), float(span)


def send(
    host: Host,
    dst: str,
    port: int,
    tag: str,
    *,
    ttl: int = 1,
    count: int = 5,
    size: int = 100,
    gap: float = 0.01,
    duration: float = 2.0,
) -> int:
    ifname = next(iter(host.interfaces))
    args = [dst, str(port), ifname, tag, str(ttl), str(count), str(size), str(gap), str(duration)]
    cp = host.run([sys.executable, "-c", SENDER, *args], timeout=duration + 10)
    assert cp.returncode == 0, cp.stderr
    return int(cp.stdout)


def ns_alive(name: str) -> bool:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return any(line.split()[0] == name for line in out.splitlines() if line.strip())


def pid_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def net():
    with Network() as n:
        yield n


def test_two_hosts_ping(net: Network) -> None:
    a, b = net.add_host("a"), net.add_host("b")
    link = net.link(a, b)
    assert a.addresses(4) == ["10.77.0.1"] and b.addresses(4) == ["10.77.0.2"]
    assert link.end(b).peer is link.end(a)
    assert a.ping(b.addr(), count=2, timeout=1)
    assert b.ping(a.addr(family=6), count=2, timeout=1)
    assert all(len(ns) <= 32 and ns.startswith(net.prefix) for ns in net.namespaces())


def test_hosts_on_a_switch(net: Network) -> None:
    sw = net.add_switch("sw")
    hosts = [net.add_host(f"h{i}") for i in range(3)]
    for h in hosts:
        net.link(h, sw)
    assert [h.addr() for h in hosts] == ["10.77.0.1", "10.77.0.2", "10.77.0.3"]
    assert hosts[0].ping(hosts[2].addr(), count=1, timeout=1)
    receivers = [start_receiver(h, GROUP4, 5000, "sw") for h in hosts[1:]]
    send(hosts[0], GROUP4, 5000, "sw", ttl=1)
    assert [receiver_result(r)[0] for r in receivers] == [5, 5]


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("n_routers", [0, 1, 2])
def test_multicast_ttl_through_routers(net: Network, n_routers: int, family: int) -> None:
    """TTL n_routers does not reach the far side, TTL n_routers+1 does."""
    a, b = net.chain(n_routers)
    group = GROUP4 if family == 4 else GROUP6
    short, enough = n_routers, n_routers + 1
    receivers = {}
    for ttl in (short, enough):
        if ttl > 0:
            receivers[ttl] = start_receiver(b, group, 6000 + ttl, f"ttl{ttl}")
    for ttl in receivers:
        assert send(a, group, 6000 + ttl, f"ttl{ttl}", ttl=ttl) == 5
    got = {ttl: receiver_result(proc)[0] for ttl, proc in receivers.items()}
    assert got[enough] == 5, got
    if short:
        assert got[short] == 0, got
    # and the way back works too
    back = start_receiver(a, group, 6100, "back")
    send(b, group, 6100, "back", ttl=enough)
    assert receiver_result(back)[0] == 5


def test_unicast_across_two_routers(net: Network) -> None:
    a, b = net.chain(2)
    assert a.ping(b.addr(), count=1, timeout=1)
    assert b.ping(a.addr(family=6), count=1, timeout=1)
    assert "239.0.0.0/8" in net.router("r1").smcroutectl("show", "routes").stdout


def test_down_removes_everything() -> None:
    net = Network()
    a, b = net.chain(1)
    sleeper = a.popen(["sleep", "30"])
    smcrouted = net.router("r1").smcroute
    assert smcrouted is not None and pid_running(smcrouted.pid)
    names = [n.ns for n in net.nodes.values()]
    assert all(ns_alive(ns) for ns in names)
    net.down()
    assert not any(ns_alive(ns) for ns in names)
    assert net.namespaces() == []
    assert not pid_running(smcrouted.pid) and not pid_running(sleeper.pid)
    assert not os.path.exists(net.state_dir)
    net.down()  # idempotent


def test_down_after_exception_in_with_block() -> None:
    names: list[str] = []
    procs: list[subprocess.Popen[bytes]] = []
    with pytest.raises(RuntimeError, match="boom"):
        with Network() as net:
            a, _ = net.chain(2)
            names += [n.ns for n in net.nodes.values()]
            procs += [p for r in ("r1", "r2") if (p := net.router(r).smcroute) is not None]
            procs.append(a.popen(["sleep", "30"]))
            raise RuntimeError("boom")
    assert len(procs) == 3
    assert not any(ns_alive(ns) for ns in names)
    assert not any(pid_running(p.pid) for p in procs)
    assert all(p.returncode is not None for p in procs)


def test_ssm_route_behind_snooping_switch(net: Network) -> None:
    """a and c share a snooping switch in front of router r; r forwards
    (a, G) to b only. The router port is a permanent mcast router port."""
    sw = net.add_switch("sw", snooping=True)
    a, c, r, b = net.add_host("a"), net.add_host("c"), net.add_router("r"), net.add_host("b")
    net.link(a, sw)
    net.link(c, sw)
    net.link(r, sw)
    net.link(r, b)
    assert a.gateway4 == r.addr(sw) and b.gateway4 == r.addr(b)
    ports = sw.run(["bridge", "-j", "-d", "link", "show"], check=True).stdout
    router_port = sw.ifname(r)
    assert any(
        p["ifname"] == router_port and p.get("mcast_router") == 2 for p in json.loads(ports)
    ), ports
    r.forward_multicast(GROUP4, iif=sw, oifs=[b], source=a.addr())
    from_a = start_receiver(b, GROUP4, 8001, "from-a")
    from_c = start_receiver(b, GROUP4, 8002, "from-c")
    send(a, GROUP4, 8001, "from-a", ttl=2)
    send(c, GROUP4, 8002, "from-c", ttl=2)
    assert receiver_result(from_a)[0] == 5
    assert receiver_result(from_c)[0] == 0
    assert f"({a.addr()},{GROUP4})" in r.mroutes().replace(" ", "")


CHILD = """
import sys, time
from mcp2p.lab.net import Network
net = Network()
net.add_host("x")
print(net.prefix, flush=True)
time.sleep(30)
"""


def spawn_child_network() -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None
    prefix = child.stdout.readline().strip()
    assert prefix.startswith("mcp2p-"), prefix
    assert ns_alive(prefix + "x")
    return child, prefix


def test_sigterm_cleans_up() -> None:
    child, prefix = spawn_child_network()
    try:
        child.send_signal(signal.SIGTERM)
        assert child.wait(10) == -signal.SIGTERM
        assert not ns_alive(prefix + "x")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()  # type: ignore[union-attr]


def test_reap_orphans_after_sigkill() -> None:
    child, prefix = spawn_child_network()
    try:
        child.kill()  # no chance to clean up
        child.wait(10)
        assert ns_alive(prefix + "x")
        assert prefix + "x" in reap_orphans()
        assert not ns_alive(prefix + "x")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()  # type: ignore[union-attr]
        subprocess.run(["ip", "netns", "del", prefix + "x"], capture_output=True)


def test_counters_follow_traffic(net: Network) -> None:
    a, b = net.add_host("a"), net.add_host("b")
    net.link(a, b)
    a.ping(b.addr(), count=1, timeout=1)  # resolve ARP first
    before_a, before_b = a.counters("eth0"), b.counters(a)
    n, size = 20, 1000
    send(a, b.addr(), 7000, "cnt", count=n, size=size, gap=0)
    after_a, after_b = a.counters("eth0"), b.counters("eth0")
    frame = size + 8 + 20 + 14  # UDP, IPv4, Ethernet
    for before, after, direction in ((before_a, after_a, "tx"), (before_b, after_b, "rx")):
        packets = after[f"{direction}_packets"] - before[f"{direction}_packets"]
        nbytes = after[f"{direction}_bytes"] - before[f"{direction}_bytes"]
        # a few IPv6 MLD reports may fall into the window
        assert n <= packets <= n + 8, (direction, packets)
        assert n * frame <= nbytes <= n * frame + 8 * 200, (direction, nbytes)


GSO_SENDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
seg, bursts = int(sys.argv[2]), int(sys.argv[3])
for _ in range(bursts):
    s.sendmsg([b"x" * (seg * 40)], [(17, 103, seg.to_bytes(2, "little"))], 0, (sys.argv[1], 9))
"""


def test_a_shaped_link_counts_every_datagram_of_a_gso_burst(net: Network) -> None:
    """The interface counts a GSO burst as one packet with one set of headers;
    a shaped link's counters come from its qdisc: each datagram, headers and all."""
    a, b = net.add_host("a"), net.add_host("b")
    link = net.link(a, b)
    link.set_rate(1_000_000_000, src=a)
    a.ping(b.addr(), count=1, timeout=1)
    before = a.counters("eth0")
    seg, bursts = 1422, 5
    cp = a.run([sys.executable, "-c", GSO_SENDER, b.addr(), str(seg), str(bursts)], timeout=10)
    assert cp.returncode == 0, cp.stderr
    after = a.counters("eth0")
    datagrams = 40 * bursts
    sent = after["tx_packets"] - before["tx_packets"]
    nbytes = after["tx_bytes"] - before["tx_bytes"]
    assert datagrams <= sent <= datagrams + 8
    assert datagrams * (seg + 42) <= nbytes <= datagrams * (seg + 42) + 8 * 200
    # What the interface itself says: a packet a burst, 42 bytes short a datagram.
    assert after["tx_packets_link"] - before["tx_packets_link"] < datagrams
    assert after["tx_bytes_link"] - before["tx_bytes_link"] < nbytes


@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (nftables)")
def test_loss(net: Network) -> None:
    a, b = net.add_host("a"), net.add_host("b")
    link = net.link(a, b)
    link.set_loss(0.3, dst=b)
    n = 300
    recv = start_receiver(b, GROUP4, 7100, "loss", timeout=1.0, expect=n)
    assert send(a, GROUP4, 7100, "loss", count=n, gap=0.001) == n
    got = receiver_result(recv)[0]
    assert 150 <= got <= 260, got  # mean 210, sd about 8
    assert link.loss_drops(b) == n - got
    assert udp_segmentation(link) == ["off", "off"]  # loss hits datagrams, not GSO bursts
    link.set_loss(None)
    assert udp_segmentation(link) == ["on", "on"]  # without loss, bursts cross whole again
    recv = start_receiver(b, GROUP4, 7101, "noloss", expect=20)
    send(a, GROUP4, 7101, "noloss", count=20, gap=0.001)
    assert receiver_result(recv)[0] == 20


def udp_segmentation(link: Any) -> list[str]:
    """tx-udp-segmentation of each end of ``link``, as ethtool -k reports it."""
    out = []
    for iface in link.ends:
        cp = iface.node.run(["ethtool", "-k", iface.name], capture_output=True, text=True)
        [line] = [x for x in cp.stdout.splitlines() if x.strip().startswith("tx-udp-segmentation")]
        out.append(line.split(":")[1].split()[0])
    return out


@pytest.mark.skipif(shutil.which("tc") is None, reason="needs tc (iproute2)")
def test_rate_limit(net: Network) -> None:
    a, b = net.add_host("a"), net.add_host("b")
    rate = 4_000_000
    net.link(a, b, rate=rate)
    size, duration = 1000, 0.5
    recv = start_receiver(b, GROUP4, 7200, "rate", timeout=duration + 0.5, expect=10**6)
    # offer about twice the link rate: 1000 bytes every ~1 ms
    sent = send(a, GROUP4, 7200, "rate", count=1000, size=size, gap=0.001, duration=duration)
    count, nbytes, span = receiver_result(recv)
    assert sent > 1.5 * count  # the sender offered more than the link carries
    wire_rate = (count - 1) * (size + 42) * 8 / span  # Ethernet frames, as tbf counts
    assert 0.85 * rate < wire_rate < 1.15 * rate, wire_rate
