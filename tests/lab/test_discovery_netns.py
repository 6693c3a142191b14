"""Discovery across real routers: daemons in namespaces, smcrouted forwarding.

A node behind 0, 1 and 2 routers is found at hop distance 1, 2 and 3, the
rings stopping at the first that reached it; a node beyond the largest ring
is not found; IPv6 works on a link. Root only; all traffic stays inside
the namespaces these tests make.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mcp2p.commands import twistd_node
from mcp2p.lab.net import Host, Network, missing_requirements
from tests.nodes import make_node_dir, node_ini

_reason = missing_requirements(("ip", "smcrouted", "smcroutectl"))
if _reason:
    pytest.skip(f"namespace discovery tests: {_reason}", allow_module_level=True)

pytestmark = pytest.mark.netns

GROUPS = ("239.0.0.0/8", "ff05::/16", "ff15::/16")
QUERY_ONLY = {"methods": "query"}


def start_sn(host: Host, root: Path, ini: str) -> subprocess.Popen[Any]:
    (root / "node.ini").write_text(ini)
    log = open(root / "twistd.log", "wb")  # noqa: SIM115
    proc = host.popen(
        twistd_node(str(root / "node.ini")),
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while not (root / "state" / "api.port").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError("SN did not start:\n" + (root / "twistd.log").read_text())
        time.sleep(0.05)
    return proc


def probe(host: Host, root: Path, ini: str, pattern: str, repeat: int = 1) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cn.ini").write_text(ini)
    out = host.run(
        [
            sys.executable,
            "-m",
            "mcp2p.lab.probe",
            "--config",
            str(root / "cn.ini"),
            pattern,
            "--repeat",
            str(repeat),
        ],
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("routers", [0, 1, 2])
def test_node_behind_routers_is_found_at_its_hop_distance(tmp_path: Path, routers: int) -> None:
    with Network() as net:
        a, b = net.chain(routers, groups=GROUPS)
        sn = make_node_dir(tmp_path / "sn", {"far.iso": 100_000})
        proc = start_sn(
            b, sn, node_ini(sn, 7711, 9875, node={"interface": b.addr()}, discovery=QUERY_ONLY)
        )
        cn_ini = node_ini(
            tmp_path / "cn",
            7711,
            9875,
            node={"interface": a.addr()},
            discovery={"answers_wanted": "1"},
        )
        result = probe(a, tmp_path / "cn", cn_ini, "*.iso", repeat=3)
        b.kill(proc)
    for run in result["runs"]:
        assert run["reason"] == "enough", run
        [server] = run["servers"]
        assert server["distance"] == routers + 1
        assert server["address"] == b.addr()
        assert run["hop_limits"] == list(range(1, routers + 2))
        assert [f["name"] for f in server["files"]] == ["far.iso"]


def test_node_beyond_the_largest_ring_is_not_found(tmp_path: Path) -> None:
    with Network() as net:
        a, b = net.chain(2, groups=GROUPS)
        sn = make_node_dir(tmp_path / "sn", {"far.iso": 1000})
        proc = start_sn(
            b, sn, node_ini(sn, 7711, 9875, node={"interface": b.addr()}, discovery=QUERY_ONLY)
        )
        cn_ini = node_ini(
            tmp_path / "cn",
            7711,
            9875,
            node={"interface": a.addr()},
            discovery={"answers_wanted": "1", "ring_schedule": "1, 2"},
        )
        result = probe(a, tmp_path / "cn", cn_ini, "*.iso")
        b.kill(proc)
    [run] = result["runs"]
    assert run["reason"] == "exhausted"
    assert run["servers"] == []
    assert run["hop_limits"] == [1, 2]


def test_ipv6_query_across_a_router(tmp_path: Path) -> None:
    with Network() as net:
        a, b = net.chain(1, groups=GROUPS)
        sn = make_node_dir(tmp_path / "sn", {"six.iso": 1000})
        v6 = {"query_groups": "ff15::77", **QUERY_ONLY}
        proc = start_sn(
            b,
            sn,
            node_ini(
                sn,
                7711,
                9875,
                node={"interface": b.addr(), "interface6": b.ifname(net["r1"])},
                discovery=v6,
            ),
        )
        cn_ini = node_ini(
            tmp_path / "cn",
            7711,
            9875,
            node={"interface": a.addr(), "interface6": a.ifname(net["r1"])},
            discovery={**v6, "answers_wanted": "1"},
        )
        result = probe(a, tmp_path / "cn", cn_ini, "six*")
        b.kill(proc)
    [run] = result["runs"]
    assert run["reason"] == "enough", run
    [server] = run["servers"]
    assert server["distance"] == 2
    assert ":" in server["address"]
