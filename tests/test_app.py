"""Whole nodes (every service, real sockets) in this reactor, on loopback multicast."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from mcp2p.app import build, build_client
from mcp2p.discovery.query import QueryNode
from mcp2p.trust.keys import load_or_create
from tests.nodes import free_udp_port, make_node_dir, node_config
from tests.test_daemon import SAP_LIMIT, sap_listen_time


def reactor_state() -> tuple[int, int, int]:
    return (
        len(reactor.getDelayedCalls()),
        len(reactor.getReaders()),
        len(reactor.getWriters()),
    )


@pytest_twisted.ensureDeferred
async def test_node_starts_answers_and_stops_without_leaks(tmp_path: Path) -> None:
    before = reactor_state()
    qport, sport = free_udp_port(), free_udp_port()
    make_node_dir(tmp_path / "sn", {"ubuntu-24.04.iso": 200_000, "notes.txt": b"hello\n"})
    config = node_config(tmp_path / "sn", qport, sport, discovery={"methods": "query, sap"})
    top = build(config, reactor)
    top.startService()
    node = top.node
    await node.serving.ready
    assert len(node.serving.catalog) == 2

    cn_config = node_config(tmp_path / "cn", qport, sport, discovery={"answers_wanted": "1"})
    cn = QueryNode(reactor, cn_config.discovery, "127.0.0.1")
    cn.start(listen_group=False)
    try:
        result = await cn.search(pattern="*.ISO")
    finally:
        await cn.stop()
    assert result.reason == "enough"
    [server] = result.servers
    assert server.node_id == node.identity.node_id
    assert server.distance == 1
    [f] = server.files.values()
    assert f.name == "ubuntu-24.04.iso" and f.size == 200_000
    assert f.content_id == node.serving.catalog.match("ubuntu*")[0].content_id

    await top.stopService()
    assert reactor_state() == before


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    from twisted.internet import task

    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError("condition not reached in time")
        await task.deferLater(reactor, 0.05, lambda: None)


@pytest_twisted.ensureDeferred
async def test_sap_announcements_reach_another_node_and_deletions_remove_them(
    tmp_path: Path,
) -> None:
    before = reactor_state()
    qport, sport = free_udp_port(), free_udp_port()
    sap_only = {"methods": "sap"}
    make_node_dir(tmp_path / "a", {"movie.mkv": 50_000, "song.ogg": 10_000})
    make_node_dir(tmp_path / "b", {})
    a = build(node_config(tmp_path / "a", qport, sport, discovery=sap_only), reactor)
    b = build(node_config(tmp_path / "b", qport, sport, discovery=sap_only), reactor)
    b.startService()
    a.startService()
    try:
        await a.node.serving.ready
        await b.node.serving.ready
        sap_b = b.node.discovery.methods["sap"]
        await wait_for(lambda: len(sap_b.directory) == 2)
        result = await b.node.discovery.search("sap", pattern="*.MKV", content_id=None)
        [server] = result.servers
        assert server.node_id == a.node.identity.node_id
        assert server.distance is None  # announcements say nothing of distance
        [f] = server.files.values()
        assert f.name == "movie.mkv"
        assert f.content_id == a.node.serving.catalog.match("movie.mkv")[0].content_id
        # The announcer does not list its own files.
        own = await a.node.discovery.search("sap", pattern="*", content_id=None)
        assert own.servers == []

        (tmp_path / "a" / "share" / "movie.mkv").unlink()
        await a.node.serving.catalog.rescan()
        await wait_for(lambda: len(sap_b.directory) == 1)
        assert sap_b.protocol.deletions >= 1
    finally:
        await a.stopService()
        await wait_for(lambda: len(b.node.discovery.methods["sap"].directory) == 0)
        await b.stopService()
    assert reactor_state() == before


@pytest_twisted.ensureDeferred
async def test_a_client_searches_a_node_by_query_and_by_sap_and_stops_clean(
    tmp_path: Path,
) -> None:
    """build_client: what search/get --no-daemon and the lab's probe use."""
    before = reactor_state()
    qport, sport = free_udp_port(), free_udp_port()
    make_node_dir(tmp_path / "sn", {"movie.mkv": 30_000})
    # A bandwidth at which [sap] min_interval (1 s), not the RFC 2974 limit,
    # sets the interval; the listen lasts twice its longest gap (test_daemon).
    sap = {"bandwidth_limit": str(SAP_LIMIT)}
    top = build(node_config(tmp_path / "sn", qport, sport, sap=sap), reactor)
    top.startService()
    cn_config = node_config(tmp_path / "cn", qport, sport, discovery={"answers_wanted": "1"})
    client = build_client(cn_config, reactor)
    try:
        await top.node.serving.ready
        assert client.query.group_ports == {}  # reply_mode = unicast: no group socket
        result = await client.search(pattern="*.mkv")
        assert result.reason == "enough"
        [server] = result.servers
        assert server.node_id == top.node.identity.node_id
        # Its keys are made only when asked for (a search needs none), then kept.
        assert not (tmp_path / "cn" / "state").exists()
        assert client.identity.node_id == load_or_create(tmp_path / "cn" / "state").node_id
        assert client.identity is client.identity

        listener = build_client(cn_config, reactor, query=False)
        assert listener.query.unicast_ports == {}
        heard = await listener.listen_sap("movie*", None, wait=sap_listen_time(ads=1))
        assert heard.reason == "listened"
        assert [s.node_id for s in heard.servers] == [top.node.identity.node_id]
        await listener.stop()
    finally:
        await client.stop()
        await top.stopService()
    assert reactor_state() == before


@pytest_twisted.ensureDeferred
async def test_a_client_that_cannot_listen_closes_what_it_opened(tmp_path: Path) -> None:
    """IPv4 opens, then an IPv6 interface this host lacks fails: one clear error, and
    the IPv4 sockets are closed again."""
    from mcp2p.multicast import InterfaceError

    before = reactor_state()
    config = node_config(
        tmp_path, free_udp_port(), free_udp_port(), node={"interface6": "mcp2pnosuch"}
    )
    with pytest.raises(InterfaceError, match="mcp2pnosuch"):
        build_client(config, reactor, listen_group=True)
    await wait_for(lambda: reactor_state() == before)
