"""The SN's bound on its host's queue against a real shaped link (tc tbf),
in namespaces: a session pinned at ten times its link's rate fills the
link without a drop, learning the link's rate from the kernel's count of
what its socket has queued; without the bound the tbf drops most of it.

Root only; all traffic stays inside the namespaces the test creates.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mcp2p.lab.net import Network, missing_requirements
from mcp2p.lab.net.process import run_tool
from mcp2p.transfer.hostqueue import HOST_QUEUE
from mcp2p.transfer.session import MAX_BURST

_reason = missing_requirements(("ip", "tc"))
if _reason:
    pytest.skip(f"namespace tests: {_reason}", allow_module_level=True)

pytestmark = pytest.mark.netns

LINK = 20_000_000  # bit/s
RATE = 200_000_000  # the session's, pinned: ten times the link's
SECONDS = 1.5

# A session on a real reactor and UDP port, streaming a sparse file to
# argv[2]:9 at RATE for SECONDS; argv[4] "off": its host queue is not read.
# Prints its counters, what it learnt of the link, and the most SIOCOUTQ said
# after its first 0.3 s.
SENDER = r"""
import json, random, sys
from twisted.internet import protocol, reactor, task
from mcp2p import multicast
from mcp2p.core.wanted import RangeSet
from mcp2p.plugins import code_by_name
from mcp2p.transfer.hostqueue import HostQueue, queued_bytes
from mcp2p.transfer.session import Session, Subscriber
from mcp2p.wire.layout import Layout

path, dst, rate, mode, seconds, bind = sys.argv[1:7]
rate, seconds = int(rate), float(seconds)
port = reactor.listenUDP(0, protocol.DatagramProtocol(), interface=bind)
multicast.set_buffers(port, send=4 << 20)  # as the SN's data port
size = 64 << 20


class Client:
    def send_lists(self, subscription, lists): pass
    def session_ended(self, subscription, reason): pass


session = Session(
    reactor, session_id=1, layout=Layout(size, 1 << 20, 1400), code=code_by_name("plain"),
    path=path, destination=(dst, 9), port=port, rate=rate, min_rate=rate, max_rate=rate,
    grace=5.0, on_end=lambda s: None, rng=random.Random(1),
    host_queue=HostQueue.of(port) if mode == "on" else HostQueue(-1),
)
session.add(Subscriber(1, Client(), session), RangeSet.full(session.units))
most = [0]
fd = port.getHandle().fileno()
start = reactor.seconds()
def sample():  # past the first bursts, before the link's rate was known
    if reactor.seconds() - start > 0.3:
        most[0] = max(most[0], queued_bytes(fd))
probe = task.LoopingCall(sample)
probe.start(0.001)
def done():
    probe.stop()
    q = session.host_queue
    out = dict(session.counters, drain=q.drain, limit=q.limit(), most=most[0], cost=q.cost)
    session.end("test over")
    print(json.dumps(out), flush=True)
    reactor.stop()
reactor.callLater(seconds, done)
reactor.run()
"""


def tbf_stats(ns: str, dev: str) -> dict[str, Any]:
    cp = run_tool(["tc", "-n", ns, "-s", "-j", "qdisc", "show", "dev", dev])
    [root] = [q for q in json.loads(cp.stdout) if q.get("root")]
    assert root["kind"] == "tbf"
    return root


@pytest.fixture
def net():
    with Network() as n:
        yield n


def stream(
    net: Network, tmp_path: Path, mode: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Stream for SECONDS; the sender's counters, and the tbf's statistics
    0.5 s in (its first bursts behind it) and at the end."""
    a, b = net.add_host("a"), net.add_host("b")
    link = net.link(a, b)
    link.set_rate(LINK, src=a)  # a tbf with the lab's 50 ms queue
    dev = link.end(a).name
    a.ping(b.addr(), count=1, timeout=1)  # b's address resolved: no packet waits for ARP
    sparse = tmp_path / "data.bin"
    with sparse.open("wb") as f:
        f.truncate(64 << 20)
    args = [str(sparse), b.addr(), str(RATE), mode, str(SECONDS), a.addr()]
    proc = a.popen(
        [sys.executable, "-c", SENDER, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        early = tbf_stats(a.ns, dev)
        out, err = proc.communicate(timeout=SECONDS + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    return json.loads(out.splitlines()[-1]), early, tbf_stats(a.ns, dev)


@pytest.mark.skipif(shutil.which("tc") is None, reason="needs tc (iproute2)")
def test_a_session_ten_times_faster_than_its_link_fills_it_without_a_drop(
    net: Network, tmp_path: Path
) -> None:
    out, early, tbf = stream(net, tmp_path, "on")
    # The session's first tick, on an empty queue, sends what its bucket
    # saved (MAX_BURST packets at most); from then on nothing is dropped.
    assert early["drops"] <= MAX_BURST
    assert tbf["drops"] == early["drops"]
    assert out["host_limited"] > 0 and out["would_block"] == 0
    wire = LINK / 8
    # the link's rate as the socket's queue counts it (each skb's true size,
    # a little over its bytes on the wire)
    assert 0.95 * wire <= out["drain"] <= 1.6 * wire
    assert out["limit"] == pytest.approx(out["drain"] * HOST_QUEUE, rel=0.01)
    # within a fifth of it: what a write costs the queue varies with its size
    # (one datagram, a GSO burst) around the average learnt
    assert 0 < out["most"] <= 1.2 * out["limit"], {k: out[k] for k in ("most", "limit", "cost")}
    # it kept the link busy: what left the qdisc is the link's rate, near enough
    assert tbf["bytes"] >= 0.9 * wire * (SECONDS - 0.1)


@pytest.mark.skipif(shutil.which("tc") is None, reason="needs tc (iproute2)")
def test_without_the_bound_the_link_drops_most_of_it(net: Network, tmp_path: Path) -> None:
    out, early, tbf = stream(net, tmp_path, "off")
    assert out["host_limited"] == 0
    assert tbf["drops"] - early["drops"] > MAX_BURST
    assert tbf["drops"] > tbf["packets"]  # most of ten times the link's rate
