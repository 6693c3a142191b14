"""Tests for mcp2p.lab.net's topologies: the description, built-ins, build, topo up/down.

The parsing tests need nothing; the others need root and make namespaces
through mcp2p.lab.net (all traffic stays inside them; everything is
removed at the end, also when a test fails).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mcp2p.config import config_from_string
from mcp2p.lab.net import (
    DEFAULT_GROUPS,
    NS_PREFIX,
    LinkSpec,
    Network,
    Node,
    NodeSpec,
    Topology,
    TopologyError,
    build,
    builtin,
    chain,
    counter_delta,
    daemon_ini,
    is_ssm,
    load,
    missing_requirements,
    multicast_routes,
    parse,
    process_start_time,
    reap_orphans,
    star,
    to_ini,
    tree,
)
from mcp2p.lab.net.cli import main

ROOT = Path(__file__).resolve().parents[2]
ETC = ROOT / "etc" / "lab"

TREE_INI = """
[topology]
name = mini           ; a comment
groups = 239.0.0.0/8, 232.0.0.0/8
[host sn]
[host cn1]
[router r1]
[switch lan1]
snooping = yes
[link sn-r1]
rate = 10M
loss = 1%
[link uplink]
a = r1
b = lan1
loss_a = 0.5%
[link lan1-cn1]
"""


# --------------------------------------------------------------------------
# the description (no root)


def test_parse_a_small_topology() -> None:
    t = parse(TREE_INI, "mini.ini")
    assert t.name == "mini"
    assert t.groups == ("239.0.0.0/8", "232.0.0.0/8")
    assert t.hosts == ["sn", "cn1"] and t.routers == ["r1"] and t.switches == ["lan1"]
    assert t.node("lan1").snooping
    assert t.links == (
        LinkSpec("sn", "r1", 10_000_000, 0.0, 0.01),
        LinkSpec("r1", "lan1", None, 0.005, 0.0),
        LinkSpec("lan1", "cn1"),
    )
    assert parse(to_ini(t), "again") == t


def test_plan_gives_the_addresses_netns_assigns() -> None:
    plan = parse(TREE_INI).plan()
    # switches take subnets first (in node order), then each switchless link
    assert plan.segments["lan1"].net4 == "10.77.0.0/24"
    assert plan.segments["sn-r1"].net4 == "10.77.1.0/24"
    assert plan.address("sn") == "10.77.1.1" and plan.address("sn", 6) == "fd77:0:0:1::1"
    assert [(p.ifname, p.ip4) for p in plan.ports["r1"]] == [
        ("eth0", "10.77.1.2/24"),
        ("eth1", "10.77.0.1/24"),
    ]
    assert plan.address("cn1") == "10.77.0.2"
    assert [p.ip4 for p in plan.ports["lan1"]] == [None, None]


def test_multicast_routes_asm_everywhere_ssm_along_the_reverse_path() -> None:
    t = tree(1)
    routes = multicast_routes(t)
    r3 = routes["r3"]  # eth0 faces lan2 (towards the SN), eth1 lan3
    asm = [r for r in r3 if r.group == "239.0.0.0/8"]
    assert {(r.iif, r.oifs) for r in asm} == {("eth0", ("eth1",)), ("eth1", ("eth0",))}
    ssm = {r.source: r for r in r3 if r.group == "232.0.0.0/8"}
    plan = t.plan()
    root, lan3 = plan.segments["root"].net4, plan.segments["lan3"].net4
    assert ssm[root].iif == "eth0" and ssm[root].oifs == ("eth1",)
    assert ssm[lan3].iif == "eth1" and ssm[lan3].oifs == ("eth0",)
    ssm6 = [r for r in r3 if r.group == "ff3e::/32"]
    assert len(ssm6) == 4 and all(r.source and ":" in r.source for r in ssm6)
    assert is_ssm("232.1.0.0/16") and is_ssm("ff3e::/32")
    assert not is_ssm("239.0.0.0/8") and not is_ssm("ff15::/16")


def test_builtins_have_the_documented_shape() -> None:
    s = star(8, rate=100_000_000, loss=0.01)
    assert s.hosts == ["sn", *(f"cn{i}" for i in range(1, 9))] and s.switches == ["sw"]
    assert s.link_between("sw", "sn").loss_b == 0
    assert all(s.link_between("sw", f"cn{i}").loss_b == 0.01 for i in range(1, 9))
    assert {link.rate for link in s.links} == {100_000_000}

    c = chain(4)
    assert c.hosts == ["h0", "h1", "h2", "h3", "h4"] and c.routers == ["r1", "r2", "r3"]
    plan = c.plan()
    seg = {h: plan.ports[h][0].segment for h in c.hosts}
    assert seg == {"h0": "s1", "h1": "s1", "h2": "s2", "h3": "s3", "h4": "s4"}
    # hI sits behind I-1 routers: count the routers on the path through the segments
    for i in range(1, 5):
        between = [r for r in c.routers if int(r[1:]) < i]
        assert len(between) == i - 1

    t = tree(2)
    assert t.hosts == ["sn", *(f"cn{i}" for i in range(1, 9))]
    assert t.routers == ["r1", "r2", "r3"]
    lossy = [(link.a, link.b) for link in t.links if link.loss_b or link.loss_a]
    assert lossy == [("r1", "lan1"), ("r3", "lan3")]
    assert builtin("star:3") == star(3)
    assert builtin("tree", rate=10_000_000, loss=0.05) == tree(rate=10_000_000, loss=0.05)


@pytest.mark.parametrize("name", ["star", "chain", "tree"])
def test_the_shipped_files_equal_the_builtins(name: str) -> None:
    assert load(ETC / f"{name}.ini") == builtin(name)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[host a]\n", "no [topology] section"),
        ("[topology]\n[host a]\n", "[topology] name: missing"),
        ("[topology]\nname = x\ncolour = red\n", "[topology] colour: unknown key"),
        ("[topology]\nname = x\ngroups = 10.0.0.0/8\n", "[topology] groups: group prefix"),
        ("[topology]\nname = x\n[hub h]\n", "[hub h]: unknown section"),
        ("[topology]\nname = x\n[host a-b]\n", "[host a-b]: bad node name"),
        ("[topology]\nname = x\n[host a]\nrate = 1M\n", "[host a] rate: unknown key"),
        ("[topology]\nname = x\n[host a]\n[router a]\n", "duplicate node name 'a'"),
        ("[topology]\nname = x\n[host a]\n[host b]\n[link a-c]\n", "unknown node 'c'"),
        ("[topology]\nname = x\n[host a]\n[host b]\n[link l]\na = a\n", "[link l] b: missing"),
        ("[topology]\nname = x\n[host a]\n[host b]\n[link a-b]\nrate = fast\n", "[link a-b] rate:"),
        ("[topology]\nname = x\n[host a]\n[host b]\n[link a-b]\nloss = 150%\n", "[link a-b] loss:"),
        ("[topology]\nname = x\n[host a]\n[host b]\n[link a-b]\nloss = 1%\nloss_b = 2%\n",
         "[link a-b] loss_b: give loss or loss_b"),
        ("[topology]\nname = x\n[host a]\n[host b]\n[link a-b]\n[link b-a]\n",
         "[link b-a]: duplicate link between b and a"),
        ("[topology]\nname = x\n[host a]\n[host b]\n[link a-b]\n[link a-b]\n", "already exists"),
        ("[topology]\nname = x\n[host a]\n[host b]\n[link a-b]\nspeed = 1M\n",
         "[link a-b] speed: unknown key"),
        ("[topology]\nname = x\n[host a]\n[host b]\n[host c]\n[link a-b]\n", "no link to c"),
        ("[topology]\nname = x\n[switch s]\n[switch t]\n[host a]\n[link s-t]\n[link a-s]\n",
         "switch-to-switch"),
        ("[topology]\nname = x\n[host a]\n[host b]\n[host c]\n[host d]\n[link a-b]\n[link c-d]\n",
         "not connected"),
        ("[topology]\nname = x\n[router r1]\n[router r2]\n[switch s]\n[switch t]\n[host a]\n"
         "[link r1-s]\n[link r2-s]\n[link r1-t]\n[link r2-t]\n[link a-s]\n", "cycle"),
        ("[topology]\nname = x\n[switch s]\nsubnet = 10.0.0.1/33\n[host a]\n[link s-a]\n",
         "[switch s] subnet:"),
    ],
)  # fmt: skip
def test_errors_name_file_section_and_key(text: str, message: str) -> None:
    with pytest.raises(TopologyError) as info:
        parse(text, "bad.ini")
    text_of = str(info.value)
    assert text_of.startswith("bad.ini: "), text_of
    assert message in text_of, text_of
    assert "\n" not in text_of


def test_builtin_and_dataclass_errors() -> None:
    with pytest.raises(TopologyError, match="not an ini file nor a built-in"):
        builtin("ring:4")
    with pytest.raises(TopologyError, match="must be an integer"):
        star(0)
    with pytest.raises(TopologyError, match="loss"):
        tree(loss=2.0)
    with pytest.raises(TopologyError, match="unknown node"):
        Topology("x", (NodeSpec("a", "host"),), (LinkSpec("a", "b"),))
    with pytest.raises(TopologyError, match="not a host"):
        daemon_ini(star(1), "sw", Path("/tmp/x"))


def test_load_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="cannot read"):
        load(tmp_path / "missing.ini")


def test_daemon_ini_is_a_valid_mcp2p_config(tmp_path: Path) -> None:
    t = tree(1)
    text = daemon_ini(t, "cn4", tmp_path / "cn4", discovery={"methods": "query"})
    config = config_from_string(text, "cn4.ini", tmp_path)
    assert str(config.node.interface) == t.plan().address("cn4")
    assert Path(config.node.state_dir) == tmp_path / "cn4" / "state"
    assert config.api.port == 0
    assert config.fetching.download_dirs == (tmp_path / "cn4" / "downloads",)
    assert [Path(p) for p in config.share.paths] == [tmp_path / "cn4" / "share"]
    config_from_string(daemon_ini(star(2), "sn", tmp_path / "sn"), "sn.ini", tmp_path)


def test_show_needs_no_root(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chain:2", "show"]) == 0
    out = capsys.readouterr().out
    assert parse(out.split("\n# addresses")[0]) == chain(2)
    assert "h2:eth0" in out
    assert main(["nowhere", "show"]) == 1
    assert main([str(ETC / "tree.ini"), "show", "--rate", "1M"]) == 1


def test_default_groups_cover_mcp2ps_groups() -> None:
    import ipaddress

    nets = [ipaddress.ip_network(g) for g in DEFAULT_GROUPS]
    for addr in ("239.255.77.77", "239.255.255.255", "232.1.2.3", "ff15::77", "ff3e::1:2"):
        a = ipaddress.ip_address(addr)
        assert any(a in n for n in nets), addr


# --------------------------------------------------------------------------
# in namespaces (root)

_reason = missing_requirements(("ip", "tc", "nft", "ethtool", "smcrouted", "smcroutectl"))
netns = pytest.mark.skipif(_reason is not None, reason=f"namespace tests: {_reason}")

# Joins each (group, source or "-", port) on IFNAME, prints "ready", then
# counts datagrams tagged TAG per group until each got one or TIMEOUT
# seconds passed; prints {group: count} as JSON.
RECEIVER = r"""
import json, select, socket, struct, sys, time
ifname, tag, timeout = sys.argv[1], sys.argv[2].encode(), float(sys.argv[3])
idx = socket.if_nametoindex(ifname)
socks = {}
for spec in sys.argv[4:]:
    group, source, port = spec.split(",")
    v6 = ":" in group
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if v6:
        s.bind((group, int(port), 0, idx))
        def sa6(a):
            return struct.pack("@H", socket.AF_INET6) + b"\0" * 6 + socket.inet_pton(
                socket.AF_INET6, a) + b"\0" * 4
        gsr = struct.pack("@I4x", idx) + sa6(group).ljust(128, b"\0")
        gsr += sa6(source).ljust(128, b"\0")
        s.setsockopt(socket.IPPROTO_IPV6, 46, gsr)  # MCAST_JOIN_SOURCE_GROUP
    else:
        s.bind((group, int(port)))
        if source == "-":
            mreqn = socket.inet_aton(group) + socket.inet_aton("0.0.0.0") + struct.pack("@i", idx)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
        else:  # ip_mreq_source: group, interface, source (Linux order)
            mreq = socket.inet_aton(group) + socket.inet_aton("0.0.0.0") + socket.inet_aton(source)
            s.setsockopt(socket.IPPROTO_IP, 39, mreq)  # IP_ADD_SOURCE_MEMBERSHIP
    socks[s] = group
print("ready", flush=True)
counts = {g: 0 for g in socks.values()}
deadline = time.monotonic() + timeout
while not all(counts.values()) and (left := deadline - time.monotonic()) > 0:
    for s in select.select(list(socks), [], [], left)[0]:
        if s.recv(2048).startswith(tag):
            counts[socks[s]] += 1
print(json.dumps(counts), flush=True)
"""

# Sends COUNT datagrams tagged TAG to each "group,port" with TTL/hop limit
# TTL out of IFNAME, PAUSE seconds apart (bounded: COUNT per group).
SENDER = r"""
import socket, struct, sys, time
ifname, tag = sys.argv[1], sys.argv[2].encode()
ttl, count, pause = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
idx = socket.if_nametoindex(ifname)
s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s4.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ttl)
s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, idx)
for i in range(count):
    for spec in sys.argv[6:]:
        group, port = spec.split(",")
        if ":" in group:
            s6.sendto(tag + b" %d" % i, (group, int(port), 0, idx))
        else:
            s4.sendto(tag + b" %d" % i, (group, int(port)))
    time.sleep(pause)
"""


@pytest.fixture(scope="module")
def tree_net() -> Iterator[tuple[Network, dict[str, Node]]]:
    if _reason is not None:
        pytest.skip(f"namespace tests: {_reason}")
    with Network() as net:
        yield net, build(tree(1), net)


@netns
@pytest.mark.netns
def test_tree_leaf_reaches_the_sn(tree_net: tuple[Network, dict[str, Node]]) -> None:
    net, _ = tree_net
    sn, leaf = net.host("sn"), net.host("cn4")  # cn4 is on lan3, two routers from sn
    assert leaf.ping(sn.addr())
    assert leaf.ping(sn.addr(family=6))


@netns
@pytest.mark.netns
def test_tree_forwards_asm_and_ssm_multicast_to_a_leaf(
    tree_net: tuple[Network, dict[str, Node]],
) -> None:
    net, _ = tree_net
    sn, leaf = net.host("sn"), net.host("cn4")
    specs = {
        "239.77.5.1": ("-", 47101),
        "232.77.5.1": (sn.addr(), 47102),
        "ff3e::77:5": (sn.addr(family=6), 47103),
    }
    before = net.link_counters()
    rx = leaf.popen(
        [sys.executable, "-c", RECEIVER, "eth0", "topo-test", "8"]
        + [f"{g},{src},{port}" for g, (src, port) in specs.items()],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert rx.stdout is not None
        assert rx.stdout.readline().strip() == "ready"
        sent = sn.run(
            [sys.executable, "-c", SENDER, "eth0", "topo-test", "8", "10", "0.05"]
            + [f"{g},{port}" for g, (_, port) in specs.items()],
            timeout=30,
        )
        assert sent.returncode == 0, sent.stderr
        out, _ = rx.communicate(timeout=15)
    finally:
        leaf.kill(rx)
    counts = json.loads(out.strip().splitlines()[-1])
    # lan3 drops 1% of UDP: ten datagrams per group, at least one arrives
    assert all(counts[g] >= 1 for g in specs), counts
    delta = counter_delta(before, net.link_counters())
    payload = 10 * len(specs) * len(b"topo-test 0")
    # every link end on the path sn -> root -> r2 -> lan2 -> r3 -> lan3 -> cn4
    plan = tree(1).plan()
    path = [
        ("sn", "root", "tx"), ("r2", "root", "rx"), ("r2", "lan2", "tx"),
        ("r3", "lan2", "rx"), ("r3", "lan3", "tx"),
    ]  # fmt: skip
    for node, peer, way in path:
        port = next(p for p in plan.ports[node] if p.peer == peer)
        d = delta[f"{node}:{port.ifname}"]
        assert d[f"{way}_bytes"] > payload, (node, peer, d)
    assert delta["cn4:eth0"]["rx_bytes"] > payload // 2

    # lan3 is behind two routers: TTL 2 ends on lan2
    rx = leaf.popen(
        [sys.executable, "-c", RECEIVER, "eth0", "topo-ttl2", "1.5", "239.77.5.2,-,47104"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert rx.stdout is not None
        assert rx.stdout.readline().strip() == "ready"
        sn.run(
            [
                sys.executable,
                "-c",
                SENDER,
                "eth0",
                "topo-ttl2",
                "2",
                "5",
                "0.02",
                "239.77.5.2,47104",
            ]
        )
        out, _ = rx.communicate(timeout=15)
    finally:
        leaf.kill(rx)
    assert json.loads(out.strip().splitlines()[-1]) == {"239.77.5.2": 0}


def _topo(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcp2p.lab", "topo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@netns
@pytest.mark.netns
def test_topo_up_leaves_it_up_and_down_removes_everything(tmp_path: Path) -> None:
    up = _topo("chain:2", "up", "--dir", str(tmp_path), "--loss", "1%")
    tdir = tmp_path / "chain"
    try:
        assert up.returncode == 0, up.stderr
        assert "ip netns exec mcp2p-" in up.stdout
        marker = json.loads((tdir / "network.json").read_text())
        prefix = marker["prefix"]
        assert prefix.startswith(NS_PREFIX)
        namespaces = _namespaces(prefix)
        assert len(namespaces) == len(chain(2).nodes)
        # the router's smcrouted outlived `up`, recorded with its start time
        procs = marker["processes"]
        assert [p["node"] for p in procs] == ["r1"]
        assert all(process_start_time(p["pid"]) == p["start"] for p in procs)
        for h in ("h0", "h1", "h2"):
            ini = tdir / h / "node.ini"
            config_from_string(ini.read_text(), str(ini), ini.parent)
        # the owner (`up`) is gone, but a detached network is not an orphan
        reap_orphans()
        assert _namespaces(prefix) == namespaces
        status = _topo("chain:2", "status", "--dir", str(tmp_path))
        assert status.returncode == 0, status.stdout + status.stderr
        assert marker["hosts"]["h2"]["ip4"] in status.stdout
        assert "r1:eth1" in status.stdout
        again = _topo("chain:2", "up", "--dir", str(tmp_path))
        assert again.returncode == 1 and "already up" in again.stderr
    finally:
        down = _topo("chain:2", "down", "--dir", str(tmp_path))
    assert down.returncode == 0, down.stderr
    assert _namespaces(prefix) == []
    assert not (tdir / "network.json").exists()
    for p in procs:
        assert not _alive_as(p["pid"], p["start"]), p
    assert _topo("chain:2", "down", "--dir", str(tmp_path)).returncode == 0


@netns
@pytest.mark.netns
def test_topo_up_with_daemons(tmp_path: Path) -> None:
    up = _topo("star:1", "up", "--daemons", "--dir", str(tmp_path), timeout=150)
    tdir = tmp_path / "star"
    procs: list[dict[str, Any]] = []
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        marker = json.loads((tdir / "network.json").read_text())
        procs = marker["processes"]
        assert sorted(str(p["node"]) for p in procs) == ["cn1", "sn"]
        assert all("mcp2p.twistd --pidfile= -n mcp2p" in " ".join(p["argv"]) for p in procs)
        for h in ("sn", "cn1"):
            assert (tdir / h / "state" / "api.port").exists()
        assert all(_alive_as(int(p["pid"]), p["start"]) for p in procs), procs
    finally:
        down = _topo("star:1", "down", "--dir", str(tmp_path))
    assert down.returncode == 0, down.stderr
    deadline = time.monotonic() + 5
    while any(_alive_as(int(str(p["pid"])), p["start"]) for p in procs):
        assert time.monotonic() < deadline, procs
        time.sleep(0.05)


def _namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True).stdout
    return sorted(e["name"] for e in json.loads(out or "[]") if e["name"].startswith(prefix))


def _alive_as(pid: int, start: object) -> bool:
    if process_start_time(pid) != start:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_up_without_root_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["star:2", "up", "--dir", str(tmp_path)]) == 2
    assert "needs root" in capsys.readouterr().err
    assert not (tmp_path / "star").exists()
