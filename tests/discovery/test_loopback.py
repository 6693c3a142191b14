"""The query protocol on real loopback multicast sockets, many nodes in one reactor."""

from __future__ import annotations

import fnmatch
import os
import random
from typing import Any

import pytest_twisted
from twisted.internet import reactor

from mcp2p.config import config_from_string
from mcp2p.discovery.query import QueryNode
from mcp2p.wire.query import Offer, Query
from tests.discovery.test_query import offer
from tests.nodes import free_udp_port


def discovery(port: int, **kw: str) -> Any:
    kw["query_port"] = str(port)
    return config_from_string("", overrides=[("discovery", k, v) for k, v in kw.items()]).discovery


@pytest_twisted.ensureDeferred
async def test_ten_responders_on_loopback_spread_answers_and_respect_known_answers() -> None:
    d = discovery(free_udp_port(), answers_wanted="10", ring_schedule="1, 2", ring_timeout="0.3")
    responders = []
    for i in range(10):
        files = [offer(f"shared-{i}.iso", i)]

        def lookup(q: Query, files: list[Any] = files) -> list[Any]:
            return [f for f in files if q.pattern and fnmatch.fnmatch(f.name, q.pattern)]

        node_id = os.urandom(16)
        n = QueryNode(
            reactor,
            d,
            "127.0.0.1",
            node_id=node_id,
            public_key=node_id * 2,
            lookup=lookup,
            rng=random.Random(i),
        )
        n.start()
        responders.append(n)
    cn = QueryNode(reactor, d, "127.0.0.1")
    cn.start(listen_group=False)
    arrivals: list[float] = []
    original = cn.received

    def spy(message: Any, addr: Any, size: int, via: Any) -> None:
        if isinstance(message, Offer):
            arrivals.append(reactor.seconds())
        original(message, addr, size, via)

    cn.received = spy  # type: ignore[method-assign]
    try:
        result = await cn.search(pattern="shared-*")
    finally:
        await cn.stop()
        for n in responders:
            await n.stop()
    assert len(result.servers) == 10
    assert all(s.distance == 1 for s in result.servers)
    arrivals.sort()
    # Offers to the CN's address wait only a jitter (UNICAST_JITTER, 1.25x
    # for 10 answers): spread, yet all within it and the ring's first wait.
    assert arrivals[-1] - arrivals[0] > 0.002, "all ten answered at once"
    assert arrivals[-1] - arrivals[0] < 0.1, arrivals
    # One offer each, and no second ring: ten answers were enough.
    assert len(arrivals) == 10
    assert result.hop_limits == [1]
    assert all(n.responder.counters["offers_sent"] == 1 for n in responders)  # type: ignore


@pytest_twisted.ensureDeferred
async def test_cookies_on_loopback_two_sns_with_many_files() -> None:
    """Issue 12 on real sockets: two SNs on one address, 40 files each with long
    names; the first search gets small replies with cookies and follows up
    at once, the second sends the cookies and gets everything first time."""
    d = discovery(free_udp_port(), answers_wanted="2", ring_schedule="1, 2", ring_timeout="0.3")
    sns = []
    for i in range(2):
        files = [offer(f"sn{i}-file-{j:03d}-" + "x" * 60 + ".iso", j) for j in range(40)]

        def lookup(q: Query, files: list[Any] = files) -> list[Any]:
            return [f for f in files if q.pattern and fnmatch.fnmatch(f.name, q.pattern)]

        node_id = os.urandom(16)
        n = QueryNode(
            reactor, d, "127.0.0.1", node_id=node_id, public_key=node_id * 2, lookup=lookup
        )
        n.start()
        sns.append(n)
    cn = QueryNode(reactor, d, "127.0.0.1")
    cn.start(listen_group=False)
    try:
        first = await cn.search(pattern="sn*")
        followups = cn.counters["followups"]
        second = await cn.search(pattern="sn*")
    finally:
        await cn.stop()
        for n in sns:
            await n.stop()
    for result in (first, second):
        assert sorted(len(s.files) for s in result.servers) == [40, 40]
        assert not any(s.truncated for s in result.servers)
        assert result.hop_limits == [1]
    assert followups == 2 and cn.counters["followups"] == 2
    assert all(n.responder.counters["validated"] == 2 for n in sns)  # type: ignore[union-attr]
