"""IPv6 end to end, between real daemons in namespaces (issue 14, DESIGN.md 5.7).

A file fetched over IPv6 SSM (ff3e::/32, source = the SN's fd77:: address)
and over IPv6 ASM (ff15::/16) across a router running smcrouted, each
byte-identical; a SAP announcement of an IPv6 session heard on [sap] group6
(ff15::2:7ffe) across that router (a CN's daemon that listens for SAP on
IPv6 only finds the SN's file, its IPv6 group and its IPv6 source); one
dual-stack SN serving an IPv4-only CN and an IPv6 CN at once, each on a
session of its own family. Root only; all traffic stays inside the
namespaces these tests make (names ``mcp2p-<hex>-...``, removed after).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from mcp2p.commands import MCP2P, twistd_node
from mcp2p.lab.net import Host, Network, missing_requirements
from tests.nodes import make_node_dir, node_ini

_reason = missing_requirements(("ip", "smcrouted", "smcroutectl"))
if _reason:
    pytest.skip(f"IPv6 namespace tests: {_reason}", allow_module_level=True)

pytestmark = pytest.mark.netns

# What the routers forward (smcroute (*,G) routes, both ways): mcp2p's IPv4
# query/SAP/ASM groups and SSM range, its IPv6 query/SAP/ASM range and SSM range.
GROUPS = ("239.0.0.0/8", "232.0.0.0/8", "ff15::/16", "ff3e::/32")
QUERY6 = "ff15::77"
QUERY4 = "239.255.77.77"
SIZE = 3 * 1000 * 1000 + 12345  # not a whole number of blocks or pieces


def start_daemon(host: Host, root: Path, ini: str) -> subprocess.Popen[Any]:
    (root / "node.ini").write_text(ini)
    log = open(root / "twistd.log", "wb")  # noqa: SIM115 - the daemon's, closed with it
    proc = host.popen(
        twistd_node(str(root / "node.ini")), cwd=root, stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 20
    while not (root / "state" / "api.port").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError("daemon did not start:\n" + (root / "twistd.log").read_text())
        time.sleep(0.05)
    return proc


def v6(host: Host, toward: Any) -> dict[str, str]:
    """[node] of a dual-stack daemon: its IPv4 address and its IPv6 interface."""
    return {"interface": host.addr(), "interface6": host.ifname(toward)}


def sn_ini(root: Path, host: Host, toward: Any, mode: str, **sections: dict[str, str]) -> str:
    values = {
        "node": v6(host, toward),
        "discovery": {"methods": "query", "query_groups": f"{QUERY4}, {QUERY6}"},
        "serving": {"group_mode": mode, "rate": "200M", "max_rate": "200M", "grace": "1"},
    }
    for name, options in sections.items():
        values[name] = {**values.get(name, {}), **options}
    return node_ini(root, 7711, 9875, **values)


def get(host: Host, root: Path, ini: str, name: str) -> dict[str, Any]:
    """``mcp2p get NAME --json --no-daemon`` in ``host``: the exit code and the
    events, the last of each kind."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "cn.ini").write_text(ini)
    args = [*MCP2P, "--config", str(root / "cn.ini"), "get", name, "--json", "--sources", "1"]
    args += ["-o", str(root / "out"), "--no-daemon"]
    out = host.run(args, timeout=120)
    events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    by_kind = {e.get("event"): e for e in events}
    return {"code": out.returncode, "stderr": out.stderr, "events": by_kind}


def popen_get(host: Host, root: Path, ini: str, name: str) -> subprocess.Popen[Any]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cn.ini").write_text(ini)
    args = [*MCP2P, "--config", str(root / "cn.ini"), "get", name, "-o", str(root / "out")]
    args += ["--json", "--sources", "1", "--no-daemon"]
    return host.popen(args, stdout=open(root / "events.jsonl", "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115


def check_fetched(result: dict[str, Any], source: Path, got: Path) -> dict[str, Any]:
    assert result["code"] == 0, result
    assert got.read_bytes() == source.read_bytes()
    return dict(result["events"]["subscribed"])


@pytest.mark.parametrize(("mode", "pool"), [("ssm", "ff3e::/32"), ("asm", "ff15::/16")])
def test_a_file_fetched_over_ipv6_across_a_router(tmp_path: Path, mode: str, pool: str) -> None:
    with Network() as net:
        a, b = net.chain(1, groups=GROUPS)
        r1 = net["r1"]
        sn = make_node_dir(tmp_path / "sn", {"six.bin": SIZE})
        proc = start_daemon(b, sn, sn_ini(sn, b, r1, mode))
        # The CN queries over IPv6 only: it finds the SN at its IPv6 address,
        # and [fetching] family = auto asks it for an IPv6 session.
        cn_ini = node_ini(
            tmp_path / "cn",
            7711,
            9875,
            node=v6(a, r1),
            discovery={"methods": "query", "query_groups": QUERY6, "answers_wanted": "1"},
        )
        r1_before = r1.counters(b)
        result = get(a, tmp_path / "cn", cn_ini, "six.bin")
        r1_after = r1.counters(b)
        log = (sn / "twistd.log").read_text()
        b.kill(proc)
    subscribed = check_fetched(result, sn / "share" / "six.bin", tmp_path / "cn/out/six.bin")
    group = ipaddress.ip_address(subscribed["group"])
    assert group in ipaddress.ip_network(pool), subscribed
    assert ":" in subscribed["source"]["address"]  # the control channel went over IPv6
    assert "serving IPv6 too" in log
    assert "no UDP GSO here" not in log  # the session's GSO bursts went out over IPv6
    # The data crossed the router: r1 received at least the file from b's side.
    assert r1_after["rx_bytes"] - r1_before["rx_bytes"] >= SIZE


def test_a_sap_announcement_is_heard_over_ipv6_across_a_router(tmp_path: Path) -> None:
    with Network() as net:
        a, b = net.chain(1, groups=GROUPS)
        r1 = net["r1"]
        sn = make_node_dir(tmp_path / "sn", {"sap6.bin": 200_000})
        sn_proc = start_daemon(
            b,
            sn,
            sn_ini(sn, b, r1, "ssm", discovery={"methods": "sap"}, sap={"ttl": "4"}),
        )
        # The CN hears SAP only on IPv6: its IPv4 SAP group is one nobody announces on.
        cn = tmp_path / "cn"
        cn.mkdir()
        cn_proc = start_daemon(
            a,
            cn,
            node_ini(
                cn,
                7711,
                9875,
                node=v6(a, r1),
                discovery={"methods": "sap"},
                sap={"group": "239.255.77.79"},
            ),
        )
        deadline = time.monotonic() + 20
        found: list[dict[str, Any]] = []
        while not found and time.monotonic() < deadline:
            out = a.run(
                [
                    *MCP2P,
                    "--config",
                    str(cn / "node.ini"),
                    "search",
                    "sap6*",
                    "--json",
                    "--method",
                    "sap",
                ],
                timeout=30,
            )
            found = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
            if not found:
                time.sleep(0.5)
        assert found, out.stdout + out.stderr
        sn_address6 = b.addr(r1, family=6)
        a.kill(cn_proc)
        b.kill(sn_proc)
    [offer] = found
    assert offer["address"] == sn_address6, offer  # the announcement's origin
    assert ipaddress.ip_address(offer["group"]) in ipaddress.ip_network("ff3e::/32"), offer
    assert offer["source"] == sn_address6, offer
    assert offer["size"] == 200_000


def test_a_dual_stack_sn_serves_an_ipv4_cn_and_an_ipv6_cn_at_once(tmp_path: Path) -> None:
    with Network() as net:
        a, b = net.chain(1, groups=GROUPS)
        r1 = net["r1"]
        sn = make_node_dir(tmp_path / "sn", {"both.bin": SIZE})
        proc = start_daemon(b, sn, sn_ini(sn, b, r1, "ssm"))
        # An IPv4-only CN (no interface6): an IPv4 session.
        cn4 = node_ini(
            tmp_path / "cn4",
            7711,
            9875,
            node={"interface": a.addr()},
            discovery={"methods": "query", "query_groups": QUERY4, "answers_wanted": "1"},
        )
        # A dual-stack CN that asks for IPv6 whatever family it found the SN by.
        cn6 = node_ini(
            tmp_path / "cn6",
            7711,
            9875,
            node=v6(a, r1),
            discovery={"methods": "query", "answers_wanted": "1"},
            fetching={"family": "6"},
        )
        procs = [
            popen_get(a, tmp_path / "cn4", cn4, "both.bin"),
            popen_get(a, tmp_path / "cn6", cn6, "both.bin"),
        ]
        codes = [p.wait(timeout=120) for p in procs]
        log = (sn / "twistd.log").read_text()
        b.kill(proc)
    source = sn / "share" / "both.bin"
    groups = {}
    for tag, code in zip(("cn4", "cn6"), codes, strict=True):
        lines = (tmp_path / tag / "events.jsonl").read_text().splitlines()
        events = {e.get("event"): e for e in (json.loads(x) for x in lines if x.startswith("{"))}
        assert code == 0, "\n".join(lines[-20:])
        assert (tmp_path / tag / "out" / "both.bin").read_bytes() == source.read_bytes()
        groups[tag] = ipaddress.ip_address(events["subscribed"]["group"])
    assert groups["cn4"] in ipaddress.ip_network("232.0.0.0/8"), groups
    assert groups["cn6"] in ipaddress.ip_network("ff3e::/32"), groups
    assert log.count("by multicast, session") == 2, log
