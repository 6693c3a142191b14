"""The peer tools (udpcast, UFTP, plain TCP copies) in the lab's star.

Each peer copies a 2 MiB file from the SN to two CNs over 100 Mbit/s links
and every copy is checked against the source's digest; a tool that cannot
run (a port someone else holds) gives a failed result with its stderr, not
an exception. Root only; all traffic stays inside the namespaces made here.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from mcp2p.lab.net import Network, missing_requirements
from mcp2p.lab.peers import PEERS, TCP_PORT, UDPCAST_PORTBASE, missing_tools, run_peer
from mcp2p.lab.transfer import StarLab

_reason = missing_requirements(("ip", "tc", "nft", "ethtool"))
if _reason:
    pytest.skip(f"peer tool tests: {_reason}", allow_module_level=True)

pytestmark = pytest.mark.netns

SIZE = 2 << 20

# Holds a port (UDP or TCP) until killed: the tool that wants it cannot bind.
_HOLD = r"""
import socket, sys, time
kind, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past earlier runs' TIME_WAIT
s.bind(("0.0.0.0", port))
if kind == "tcp":
    s.listen()
print("held", flush=True)
time.sleep(60)
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StarLab]:
    with Network() as net:
        star = StarLab(net, tmp_path_factory.mktemp("peers"), 2, rate=100_000_000)
        star.share(SIZE)
        yield star


@pytest.mark.parametrize("tool", PEERS)
def test_each_peer_delivers_a_verified_copy_to_two_cns(lab: StarLab, tool: str) -> None:
    if missing_tools(tool):
        pytest.skip(str(missing_tools(tool)))
    result = run_peer(lab, tool, 2, timeout=60)
    assert result.ok, result.failures()
    assert [c.verified for c in result.cns] == [True, True]
    assert all(e > 0 for e in result.elapsed)
    # Multicast tools send about one copy, TCP one per CN; every CN's copy
    # crosses the SN's link and its own, so all links carry at least 3 copies.
    if tool == "tcp":
        assert result.sn_ratio >= 1.9, result.to_json()
    else:
        assert result.sn_ratio < 1.5, result.to_json()
    assert result.link_bytes >= 2.9 * SIZE, result.to_json()
    assert result.to_json()["ok"] is True


@pytest.mark.parametrize(
    ("tool", "where", "kind", "port"),
    [("udpcast", "cn1", "udp", UDPCAST_PORTBASE), ("tcp", "sn", "tcp", TCP_PORT)],
)
def test_a_tool_that_cannot_bind_gives_a_failed_result(
    lab: StarLab, tool: str, where: str, kind: str, port: int
) -> None:
    if missing_tools(tool):
        pytest.skip(str(missing_tools(tool)))
    node = lab.net[where]
    holder = node.popen(
        [sys.executable, "-c", _HOLD, kind, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        result = run_peer(lab, tool, 2, timeout=5)
    finally:
        node.kill(holder)
    assert not result.ok
    data = result.to_json()
    assert data["ok"] is False
    assert "Address already in use" in result.failures(), result.failures()
    # and the next run, with the port free again, works
    assert run_peer(lab, tool, 2, timeout=60).ok
