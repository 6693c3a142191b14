"""Real fetches over loopback: an SN built by app.build, a CN running Fetch."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from mcp2p.app import build
from mcp2p.discovery.query import QueryNode
from mcp2p.transfer.control import joined_token
from mcp2p.transfer.fetch import Fetch
from mcp2p.trust.keys import load_or_create
from tests.nodes import free_udp_port, make_node_dir, node_config


async def fetch(
    tmp_path: Path,
    sn_config: Any,
    qport: int,
    sport: int,
    target: str,
    name: str = "cn",
    made: list[Fetch] | None = None,
    **options: Any,
) -> tuple[Path, list[dict[str, Any]]]:
    cn_config = node_config(tmp_path / name, qport, sport, discovery={"answers_wanted": "1"})
    identity = load_or_create(cn_config.node.state_dir)
    q = QueryNode(reactor, cn_config.discovery, "127.0.0.1")
    q.start(listen_group=False)
    events: list[dict[str, Any]] = []
    (tmp_path / name / "out").mkdir(exist_ok=True)  # the store makes no directories
    try:
        f = Fetch(
            reactor,
            cn_config,
            identity,
            q.search,
            target,
            tmp_path / name / "out",
            on_event=events.append,
            **options,
        )
        if made is not None:
            made.append(f)  # for a test that looks at the fetch itself
        path = await f.run()
    finally:
        await q.stop()
    return path, events


def serving_node(
    tmp_path: Path, files: dict[str, int], **serving: str
) -> tuple[Any, Path, int, int]:
    """An SN built by app.build (not started) sharing ``files`` (name -> size),
    answering queries only; [serving] options in ``serving``. Returns it, its
    node directory and its query and SAP ports."""
    qport, sport = free_udp_port(), free_udp_port()
    sn_dir = make_node_dir(tmp_path / "sn", files)
    options = {"data_port": str(free_udp_port()), "control_port": "0", **serving}
    config = node_config(sn_dir, qport, sport, discovery={"methods": "query"}, serving=options)
    return build(config, reactor), sn_dir, qport, sport


@pytest.mark.parametrize("mode", ["multicast", "unicast"])
@pytest_twisted.ensureDeferred
async def test_fetch_a_file_over_loopback(tmp_path: Path, mode: str) -> None:
    sn, sn_dir, qport, sport = serving_node(tmp_path, {"data.bin": 50_000_000})
    sn.startService()
    serving = sn.node.serving
    joined: list[int] = []  # Joined: the CN is in its group, the first packet need not wait
    said = serving.joined
    serving.joined = lambda client, sub: (joined.append(sub), said(client, sub))[1]
    asked: list[Any] = []  # what each Subscribe said of the group the CN was in already
    subscribe = serving.subscribe
    serving.subscribe = lambda client, **kw: (asked.append(kw["joined"]), subscribe(client, **kw))[
        1
    ]
    try:
        await serving.ready
        [entry] = serving.catalog.entries()
        offer = serving.offer_for(entry)
        path, events = await fetch(tmp_path, sn.node.config, qport, sport, "data.bin", mode=mode)
    finally:
        await sn.stopService()
    assert path.read_bytes() == (sn_dir / "share" / "data.bin").read_bytes()
    assert path.name == "data.bin"
    assert events[-1]["event"] == "done"
    if mode == "multicast":  # in the offered group before subscribing, and said so
        assert asked == [joined_token(str(offer.group), str(offer.source), offer.port)]
    else:
        assert asked == [None]
    assert len(joined) == (1 if mode == "multicast" else 0)  # for an SN without ``joined``


@pytest_twisted.ensureDeferred
async def test_a_cn_offered_another_group_than_its_sessions_joins_the_sessions(
    tmp_path: Path,
) -> None:
    """The offer said one group, the session is on another (the SN moved it, say):
    the CN's early join is not counted, and the CN joins the session's group
    from the reply, says Joined and gets the file."""
    sn, sn_dir, qport, sport = serving_node(tmp_path, {"data.bin": 5_000_000})
    sn.startService()
    serving = sn.node.serving
    offer_for = serving.offer_for
    serving.offer_for = lambda entry, version=4: dataclasses.replace(
        offer_for(entry, version), group=ipaddress.ip_address("232.9.9.9")
    )
    joined: list[bool] = []  # was the subscription joined before the CN said so?
    said = serving.joined
    serving.joined = lambda client, sub: (
        joined.append(serving.subscriptions[sub].joined),
        said(client, sub),
    )[1]
    replies: list[dict[str, Any]] = []
    subscribe = serving.subscribe
    serving.subscribe = lambda client, **kw: (replies.append(subscribe(client, **kw)), replies[-1])[
        1
    ]
    try:
        await serving.ready
        path, _ = await fetch(tmp_path, sn.node.config, qport, sport, "data.bin")
    finally:
        await sn.stopService()
    assert path.read_bytes() == (sn_dir / "share" / "data.bin").read_bytes()
    [reply] = replies
    assert reply["group"] not in ("", "232.9.9.9")
    assert joined == [False]  # the early join did not count; the Joined did


@pytest_twisted.ensureDeferred
async def test_three_cns_at_once_share_one_multicast_session(tmp_path: Path) -> None:
    from twisted.internet import defer

    size = 10_000_000
    # One reactor runs the SN and three CNs: a rate one core keeps up with.
    sn, sn_dir, qport, sport = serving_node(
        tmp_path, {"shared.bin": size}, rate="80M", max_rate="80M"
    )
    sn.startService()
    ended: list[Any] = []
    try:
        await sn.node.serving.ready
        serving = sn.node.serving
        original = serving._session_ended
        serving._session_ended = lambda s: (ended.append(dict(s.counters)), original(s))
        results = await defer.gatherResults(
            [
                defer.ensureDeferred(
                    fetch(tmp_path, None, qport, sport, "shared.bin", name=f"cn{i}")
                )
                for i in range(3)
            ]
        )
    finally:
        await sn.stopService()
    source = (sn_dir / "share" / "shared.bin").read_bytes()
    for path, _events in results:
        assert path.read_bytes() == source
    assert serving.counters["subscriptions"] == 3
    # One session served all three: it sent the file about once, not three times.
    assert serving.counters["sessions"] == 1, serving.counters
    [counters] = ended
    assert counters["bytes"] < 1.3 * size, counters


@pytest_twisted.ensureDeferred
async def test_fetch_with_the_raptorq_code(tmp_path: Path) -> None:
    sn, sn_dir, qport, sport = serving_node(tmp_path, {"coded.bin": 8_000_000})
    sn.startService()
    try:
        await sn.node.serving.ready
        path, events = await fetch(tmp_path, None, qport, sport, "coded.bin", code="raptorq")
    finally:
        await sn.stopService()
    assert path.read_bytes() == (sn_dir / "share" / "coded.bin").read_bytes()
    assert events[-1]["event"] == "done"


@pytest_twisted.ensureDeferred
async def test_digest_lists_lost_on_the_data_path_are_asked_for(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """Every other digest list never leaves the SN: the CN asks for each over
    TLS (GetList), holds the packets meanwhile, and the file arrives whole."""
    import itertools

    from mcp2p.transfer.session import Session

    sent = Session._send_list
    calls = itertools.count()

    def lose_every_other(self: Session, packet: bytes, now: float) -> None:
        if next(calls) % 2:
            self.bucket.charge(now, len(packet))  # paced as if sent, never on the wire
            return
        sent(self, packet, now)

    monkeypatch.setattr(Session, "_send_list", lose_every_other)
    sn, sn_dir, qport, sport = serving_node(tmp_path, {"data.bin": 4_000_000}, rate="100M")
    sn.startService()
    try:
        await sn.node.serving.ready
        path, events = await fetch(tmp_path, sn.node.config, qport, sport, "data.bin")
        resent = sn.node.serving.counters["lists_resent"]
    finally:
        await sn.stopService()
    assert path.read_bytes() == (sn_dir / "share" / "data.bin").read_bytes()
    assert events[-1]["event"] == "done"
    assert resent >= 5  # about half of the file's ~17 lists


@pytest_twisted.ensureDeferred
async def test_an_sn_address_is_connected_to_without_a_resolver(tmp_path: Path) -> None:
    """Discovery gives addresses: they are connected to as they are (no
    getaddrinfo in a thread); a name still goes through the resolver."""
    from twisted.internet.endpoints import (
        HostnameEndpoint,
        TCP4ClientEndpoint,
        TCP4ServerEndpoint,
        TCP6ClientEndpoint,
        TCP6ServerEndpoint,
    )
    from twisted.internet.protocol import Factory, Protocol

    from mcp2p.transfer.fetch.control import tcp_endpoint

    assert isinstance(tcp_endpoint(reactor, "localhost", 1, 5), HostnameEndpoint)
    assert isinstance(tcp_endpoint(reactor, "fe80::1%lo", 1, 5), TCP6ClientEndpoint)
    assert isinstance(tcp_endpoint(reactor, "not an address", 1, 5), HostnameEndpoint)
    for server, host, kind in (
        (TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), "127.0.0.1", TCP4ClientEndpoint),
        (TCP6ServerEndpoint(reactor, 0, interface="::1"), "::1", TCP6ClientEndpoint),
    ):
        port = await server.listen(Factory.forProtocol(Protocol))
        try:
            endpoint = tcp_endpoint(reactor, host, port.getHost().port, 5)
            assert isinstance(endpoint, kind)
            client = await endpoint.connect(Factory.forProtocol(Protocol))
            assert client.transport.getPeer().host == host
            client.transport.loseConnection()
        finally:
            await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_an_empty_file_needs_no_subscription_and_leaves_nothing_open(
    tmp_path: Path,
) -> None:
    """An empty file is complete once its manifest is: the source that gave
    the manifest (its TLS channel) is closed all the same, though it never
    became a subscription."""
    sn, _, qport, sport = serving_node(tmp_path, {"empty.bin": 0})
    sn.startService()
    made: list[Fetch] = []
    try:
        await sn.node.serving.ready
        path, _ = await fetch(tmp_path, None, qport, sport, "empty.bin", made=made)
    finally:
        await sn.stopService()
    assert path.read_bytes() == b""
    [f] = made
    assert f.sources == [] and len(f.connected) == 1
    [source] = f.connected
    assert source.client is None and source.state == "closed"
    assert sn.node.serving.counters["subscriptions"] == 0
