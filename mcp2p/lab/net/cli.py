"""The ``topo`` command: build a lab topology and leave it up, or take it down.

Usage (``python -m mcp2p.lab topo ...``)::

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

``show`` prints the ini form and every interface's addresses.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mcp2p.commands import MCP2P, twistd_node
from mcp2p.config import parse_rate
from mcp2p.lab.net.build import build, daemon_ini
from mcp2p.lab.net.counters import namespace_counters
from mcp2p.lab.net.detached import destroy_detached
from mcp2p.lab.net.network import Network
from mcp2p.lab.net.nodes import Node
from mcp2p.lab.net.process import LabError, missing_requirements, process_start_time
from mcp2p.lab.net.shapes import builtin
from mcp2p.lab.net.topoini import load, parse_loss, to_ini
from mcp2p.lab.net.topology import Topology, TopologyError

__all__ = ["main"]

DEFAULT_DIR = Path("/tmp/mcp2p-lab-topo")
DAEMON_TIMEOUT = 90.0  # seconds for all of `up --daemons`' daemons to answer
STOP_TIMEOUT = 10.0  # seconds `down` gives processes after SIGTERM, then SIGKILL


def _resolve(spec: str, rate: str | None, loss: str | None) -> Topology:
    is_file = spec.endswith(".ini") or os.sep in spec or os.path.isfile(spec)
    if is_file:
        if rate is not None or loss is not None:
            raise TopologyError("--rate and --loss are for built-ins; edit the ini file instead")
        return load(spec)
    try:
        r = parse_rate(rate) if rate is not None else None
        lo = parse_loss(loss) if loss is not None else None
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
