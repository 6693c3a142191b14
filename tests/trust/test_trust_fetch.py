"""The trust policy on real loopback nodes: sybils answering a name with their
own content, a pinned-only CN and SN, and an SN whose endpoint changed key."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from mcp2p.app import build
from mcp2p.discovery.query import QueryNode
from mcp2p.transfer.fetch import Ambiguous, Fetch, FetchError, NotFound
from mcp2p.trust.keys import load_or_create
from mcp2p.trust.known import KnownNodes
from mcp2p.trust.policy import remember
from tests.nodes import free_udp_port, make_node_dir, node_config

REAL = os.urandom(150_000)
FAKE = os.urandom(120_000)
DEADLINE = 30.0


def free_tcp_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


class TrustNet:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.qport, self.sport, self.dport = free_udp_port(), free_udp_port(), free_udp_port()
        self.sns: list[Any] = []

    async def sn(
        self, name: str, data: bytes, control_port: int = 0, **sections: dict[str, str]
    ) -> Any:
        root = make_node_dir(self.tmp / name, {"file.bin": data})
        serving = {"data_port": str(self.dport), "control_port": str(control_port)}
        serving.update({"rate": "40M", "max_rate": "40M", "grace": "0.5"})
        serving.update(sections.pop("serving", {}))
        config = node_config(
            root,
            self.qport,
            self.sport,
            discovery={"methods": "query"},
            serving=serving,
            **sections,
        )
        top = build(config, reactor)
        top.startService()
        await top.node.serving.ready
        self.sns.append(top)
        return top

    def cn_config(self, policy: str) -> Any:
        return node_config(
            self.tmp / "cn",
            self.qport,
            self.sport,
            fetching={"stall_timeout": "1.5"},
            trust={"policy": policy},
        )

    def trust(self, config: Any, top: Any) -> None:
        """The operator's ``mcp2p trust add`` on ``config``'s node, of ``top``'s node."""
        ident = top.node.identity
        KnownNodes(config.node.state_dir).update(
            lambda s: remember(s, ident.node_id, ident.public_key, 1.0, origin="operator")
        )

    async def fetch(
        self, policy: str = "tofu", answers: int = 4, target: str = "file.bin", **options: Any
    ) -> tuple[Path, list[dict[str, Any]], Fetch]:
        config = self.cn_config(policy)
        identity = load_or_create(config.node.state_dir)
        q = QueryNode(reactor, config.discovery, "127.0.0.1")
        q.start(listen_group=False)
        events: list[dict[str, Any]] = []
        out = self.tmp / "out"
        out.mkdir(exist_ok=True)

        def search(**kw: Any) -> Any:
            return q.search(**{**kw, "answers": max(kw.get("answers", 1), answers)})

        f = Fetch(reactor, config, identity, search, target, out, on_event=events.append, **options)
        self.last = f
        d = defer.ensureDeferred(f.run())
        d.addTimeout(DEADLINE, reactor)
        try:
            path = await d
        finally:
            await q.stop()
        return path, events, f

    async def close(self) -> None:
        for top in self.sns:
            if top.running:
                await top.stopService()


@pytest_twisted.ensureDeferred
async def test_three_sybils_do_not_outvote_one_trusted_sn(tmp_path: Path) -> None:
    net = TrustNet(tmp_path)
    try:
        real = await net.sn("real", REAL)
        for i in range(3):
            await net.sn(f"sybil{i}", FAKE)
        net.trust(net.cn_config("tofu"), real)
        path, events, f = await net.fetch(sources=1)
        assert path.read_bytes() == REAL
        [found] = [e for e in events if e["event"] == "found"]
        assert found["sources"][0]["node"] == real.node.identity.short
        # Without a choice the old vote would have taken the sybils' file: asked for, it does.
        (tmp_path / "out" / "file.bin").unlink()
        path, _, _ = await net.fetch(sources=1, pick="most")
        assert path.read_bytes() == FAKE
    finally:
        await net.close()


@pytest_twisted.ensureDeferred
async def test_an_untrusted_name_is_ambiguous_and_lists_its_candidates(tmp_path: Path) -> None:
    net = TrustNet(tmp_path)
    try:
        real = await net.sn("real", REAL)
        sybils = [await net.sn(f"sybil{i}", FAKE) for i in range(3)]
        events: list[dict[str, Any]] = []
        with pytest.raises(Ambiguous) as failed:
            _, events, _ = await net.fetch(sources=1)
        assert "--pick" in str(failed.value)
        with pytest.raises(Ambiguous):
            await net.fetch(sources=1, pick="trusted")  # nobody is trusted
        # The content id is never ambiguous.
        real_id = real.node.serving.catalog.entries()[0].content_id.hex()
        path, events, f = await net.fetch(target=real_id[:12], sources=1)
        assert path.read_bytes() == REAL
        # Trust on first use: the SN of that verified fetch is now known, with its name.
        known = KnownNodes(net.cn_config("tofu").node.state_dir).current()
        assert set(known.nodes) == {real.node.identity.node_id}
        assert known.nodes[real.node.identity.node_id].names[0][0] == "file.bin"
        assert not any(s.node.identity.node_id in known.nodes for s in sybils)
    finally:
        await net.close()


@pytest_twisted.ensureDeferred
async def test_ambiguous_event_names_size_nodes_trust_and_hops(tmp_path: Path) -> None:
    net = TrustNet(tmp_path)
    try:
        await net.sn("real", REAL)
        await net.sn("sybil", FAKE)
        await net.sn("sybil2", FAKE)
        config = net.cn_config("tofu")
        q = QueryNode(reactor, config.discovery, "127.0.0.1")
        q.start(listen_group=False)
        events: list[dict[str, Any]] = []
        f = Fetch(
            reactor,
            config,
            load_or_create(config.node.state_dir),
            lambda **kw: q.search(**{**kw, "answers": 3}),
            "file.bin",
            tmp_path,
            on_event=events.append,
        )
        try:
            with pytest.raises(Ambiguous):
                await f.run()
        finally:
            await q.stop()
        [amb] = [e for e in events if e["event"] == "ambiguous"]
        assert amb["name"] == "file.bin"
        first, second = amb["candidates"]
        assert len(first["nodes"]) == 2 and first["size"] == len(FAKE)  # most nodes listed first
        assert len(second["nodes"]) == 1 and second["size"] == len(REAL)
        assert first["trust"] == second["trust"] == "unknown" and first["hops"] == 1
    finally:
        await net.close()


@pytest_twisted.ensureDeferred
async def test_pinned_cn_ignores_unknown_sns(tmp_path: Path) -> None:
    net = TrustNet(tmp_path)
    try:
        sn = await net.sn("sn", REAL)
        with pytest.raises(NotFound):
            await net.fetch(policy="pinned", sources=1)
        assert net.last.trust.counters["untrusted"] >= 1
        net.trust(net.cn_config("pinned"), sn)
        path, _, f = await net.fetch(policy="pinned", sources=1)
        assert path.read_bytes() == REAL
        assert f.trust.counters["untrusted"] == 0
    finally:
        await net.close()


@pytest_twisted.ensureDeferred
async def test_pinned_sn_refuses_unknown_cns(tmp_path: Path) -> None:
    net = TrustNet(tmp_path)
    try:
        sn = await net.sn("sn", REAL, trust={"policy": "pinned"})
        with pytest.raises(FetchError) as failed:
            await net.fetch(sources=1)
        print(f"\npinned SN, unknown CN: {failed.value}")
        assert "may not subscribe here" in str(failed.value)
        assert sn.node.serving.counters["refused_subscriber"] >= 1
        assert sn.node.trust.counters["untrusted"] >= 1
        # The operator pins the CN on the SN (a running daemon re-reads the file).
        cn = load_or_create(net.cn_config("tofu").node.state_dir)
        KnownNodes(sn.node.config.node.state_dir).update(
            lambda s: remember(s, cn.node_id, cn.public_key, 1.0, origin="operator")
        )
        (tmp_path / "out" / "file.bin.part").unlink(missing_ok=True)
        path, _, _ = await net.fetch(sources=1)
        assert path.read_bytes() == REAL
    finally:
        await net.close()


@pytest_twisted.ensureDeferred
async def test_serving_subscribers_list_admits_only_its_nodes(tmp_path: Path) -> None:
    net = TrustNet(tmp_path)
    try:
        cn = load_or_create(net.cn_config("tofu").node.state_dir)
        other = os.urandom(16).hex()
        sn = await net.sn("sn", REAL, serving={"subscribers": other})
        with pytest.raises(FetchError):
            await net.fetch(sources=1)
        assert sn.node.serving.counters["refused_subscriber"] >= 1
        await sn.stopService()
        sn = await net.sn("sn2", REAL, serving={"subscribers": f"{other}, {cn.node_id.hex()}"})
        path, _, _ = await net.fetch(sources=1)
        assert path.read_bytes() == REAL
    finally:
        await net.close()


@pytest_twisted.ensureDeferred
async def test_a_new_key_at_a_known_sns_address_is_refused(tmp_path: Path) -> None:
    """TOFU pins the endpoint an SN served from: a new node there is a changed key."""
    net = TrustNet(tmp_path)
    port = free_tcp_port()
    try:
        first = await net.sn("first", REAL, control_port=port)
        path, _, _ = await net.fetch(sources=1)
        known = KnownNodes(net.cn_config("tofu").node.state_dir).current()
        assert known.endpoints == {f"127.0.0.1:{port}": first.node.identity.node_id}
        await first.stopService()
        path.unlink()
        await net.sn("impostor", REAL, control_port=port)  # same file, same place, new key
        with pytest.raises(NotFound):
            await net.fetch(sources=1)
        assert net.last.trust.counters["key_changed"] >= 1
        # The operator says the node really changed: it is believed again.
        KnownNodes(net.cn_config("tofu").node.state_dir).update(
            lambda s: type(s)({})  # mcp2p trust remove, of the only entry
        )
        path, _, f = await net.fetch(sources=1)
        assert path.read_bytes() == REAL
    finally:
        await net.close()
