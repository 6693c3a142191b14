"""Real fetches over loopback: an SN built by app.build, a CN running Fetch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from mcp2p.app import build
from mcp2p.discovery.query import QueryNode
from mcp2p.transfer.fetch import Fetch
from mcp2p.trust.keys import load_or_create
from tests.nodes import free_udp_port, make_node_dir, node_config


async def fetch(
    tmp_path: Path, sn_config: Any, qport: int, sport: int, target: str, **options: Any
) -> tuple[Path, list[dict[str, Any]]]:
    cn_config = node_config(tmp_path / "cn", qport, sport, discovery={"answers_wanted": "1"})
    identity = load_or_create(cn_config.node.state_dir)
    q = QueryNode(reactor, cn_config.discovery, "127.0.0.1")
    q.start(listen_group=False)
    events: list[dict[str, Any]] = []
    try:
        f = Fetch(
            reactor,
            cn_config,
            identity,
            q.search,
            target,
            tmp_path / "out",
            on_event=events.append,
            **options,
        )
        path = await f.run()
    finally:
        await q.stop()
    return path, events


@pytest.mark.parametrize("mode", ["multicast", "unicast"])
@pytest_twisted.ensureDeferred
async def test_fetch_a_file_over_loopback(tmp_path: Path, mode: str) -> None:
    qport, sport = free_udp_port(), free_udp_port()
    sn_dir = make_node_dir(tmp_path / "sn", {"data.bin": 5_000_000})
    sn = build(
        node_config(
            sn_dir,
            qport,
            sport,
            discovery={"methods": "query"},
            serving={"data_port": str(free_udp_port()), "control_port": "0"},
        ),
        reactor,
    )
    sn.startService()
    try:
        await sn.node.serving.ready
        path, events = await fetch(tmp_path, sn.node.config, qport, sport, "data.bin", mode=mode)
    finally:
        await sn.stopService()
    assert path.read_bytes() == (sn_dir / "share" / "data.bin").read_bytes()
    assert path.name == "data.bin"
    assert events[-1]["event"] == "done"
