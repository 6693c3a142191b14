"""A real fetch over loopback with a small rate takes as long as that rate says.

Before the SN honoured the rate as a ceiling, a fetch asking 2 Mbit/s ran at
that rate for its first second (JOIN_GRACE) and then at 50 Mbit/s and more;
at 4 Mbit/s this test's 1 MiB arrived in about 1.1 s instead of 2.1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor

from mcp2p.app import build
from mcp2p.discovery.query import QueryNode
from mcp2p.transfer.fetch import Fetch
from mcp2p.trust.keys import load_or_create
from tests.nodes import free_udp_port, make_node_dir, node_config

SIZE = 1 << 20
RATE = 4_000_000  # bit/s, on the wire: the payload alone needs SIZE * 8 / RATE = 2.1 s


@pytest_twisted.ensureDeferred
async def test_a_multicast_fetch_at_4_mbit_takes_at_least_size_over_rate(tmp_path: Path) -> None:
    # Multicast, the default mode; unicast sessions are paced by the same code
    # (tests/transfer/test_session_rate.py shows both on a Clock).
    qport, sport = free_udp_port(), free_udp_port()
    sn_dir = make_node_dir(tmp_path / "sn", {"data.bin": SIZE})
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
    cn_config = node_config(
        tmp_path / "cn", qport, sport, discovery={"answers_wanted": "1", "ring_schedule": "1"}
    )
    times: dict[str, float] = {}
    events: list[dict[str, Any]] = []

    def seen(event: dict[str, Any]) -> None:
        events.append(event)
        times.setdefault(event["event"], reactor.seconds())

    out = tmp_path / "cn" / "out"
    out.mkdir(parents=True)
    sn.startService()
    q = QueryNode(reactor, cn_config.discovery, "127.0.0.1")
    q.start(listen_group=False)
    try:
        await sn.node.serving.ready
        f = Fetch(
            reactor,
            cn_config,
            load_or_create(cn_config.node.state_dir),
            q.search,
            "data.bin",
            out,
            mode="multicast",
            rate=RATE,
            on_event=seen,
        )
        path = await f.run()
    finally:
        await q.stop()
        await sn.stopService()
    assert path.read_bytes() == (sn_dir / "share" / "data.bin").read_bytes()
    subscribed = next(e for e in events if e["event"] == "subscribed")
    assert subscribed["source"]["rate"] == RATE  # the granted rate, in the reply
    elapsed = times["done"] - times["subscribed"]
    least = SIZE * 8 / RATE
    # Less only by the bucket's one burst (20 ms at this rate) and clock grain.
    assert elapsed >= least - 0.1, f"{SIZE} bytes in {elapsed:.2f} s: faster than {RATE} bit/s"
    assert elapsed <= 3 * least, f"{SIZE} bytes in {elapsed:.2f} s: far below {RATE} bit/s"
