"""Key servers over real HTTP on 127.0.0.1: HKP add/lookup/index, every refusal
counted by reason, the client's verified look-up, per-source rate and total cap,
and anti-entropy between three servers (also after one was down)."""

from __future__ import annotations

import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet import reactor as _reactor

from mcp2p.api.metrics import NodeCollector, registry_for, render
from mcp2p.config import config_from_string
from mcp2p.trust import keyclient, records
from mcp2p.trust.keyclient import KeyClient, http_request, parse_endpoint
from mcp2p.trust.keys import load_or_create
from mcp2p.trust.keyserver import MAX_BODY, KeyService, KeyStore

reactor: Any = _reactor


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_server(state: Path, port: int, peers: list[int] = (), **keys: str) -> KeyService:  # type: ignore[assignment]
    lines = [
        "[node]",
        f"state_dir = {state}",
        "[keys]",
        "serve = yes",
        f"listen = 127.0.0.1:{port}",
        "peers = " + ", ".join(f"127.0.0.1:{p}" for p in peers),
        "replication_interval = 0.2",
        "lookup_timeout = 2",
        *(f"{k} = {v}" for k, v in keys.items()),
    ]
    config = config_from_string("\n".join(lines) + "\n", base_dir=state)
    service = KeyService(reactor, config.keys, config.node.state_dir, load_or_create(state).node_id)
    service.startService()
    return service


@pytest.fixture
def servers() -> Any:
    started: list[KeyService] = []

    def start(*args: Any, **kw: Any) -> KeyService:
        s = make_server(*args, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        if s.running:
            pytest_twisted.blockon(defer.maybeDeferred(s.stopService))


def client(port: int) -> KeyClient:
    return KeyClient(reactor, [parse_endpoint(f"127.0.0.1:{port}")], timeout=2)


async def post(port: int, body: bytes, ctype: bytes = b"application/x-www-form-urlencoded") -> Any:
    return await http_request(
        reactor, b"POST", f"http://127.0.0.1:{port}/pks/add".encode(), body=body,
        content_type=ctype, timeout=2,
    )  # fmt: skip


def form(record: records.KeyRecord | bytes) -> bytes:
    data = record if isinstance(record, bytes) else record.encode()
    return b"keytext=" + quote(data.decode("ascii"), safe="").encode()


async def get(port: int, path: str) -> Any:
    return await http_request(reactor, b"GET", f"http://127.0.0.1:{port}{path}".encode(), timeout=2)


@pytest_twisted.ensureDeferred
async def test_add_lookup_index_and_refusals(tmp_path: Path, servers: Any) -> None:
    port = free_port()
    server = servers(tmp_path / "ks", port)
    alice = load_or_create(tmp_path / "alice")
    mallory = load_or_create(tmp_path / "mallory")
    now = int(time.time())
    first = records.make_record(alice, now - 10, labels=["alice"])
    reply = await post(port, form(first))
    assert reply.code == 200, reply.body
    assert reply.header(keyclient.SERVER_HEADER) == server.server_id

    answer = await client(port).fetch(alice.node_id)
    assert answer.record == first and answer.server == server.server_id
    assert await client(port).lookup(alice.node_id) == first
    assert await client(port).lookup(mallory.node_id) is None
    index = await get(port, "/pks/lookup?op=index&search=alice")
    assert index.code == 200
    assert f"pub:{alice.node_id.hex()}:22:256:{first.issued}".encode() in index.body
    assert b"uid:alice:" in index.body
    assert (await get(port, "/pks/lookup?op=get&search=nothex")).code == 400
    assert (await get(port, "/pks/lookup?op=frob&search=alice")).code == 501

    # raw body works as well as HKP's form
    second = records.make_record(alice, now - 5, labels=["alice"])
    assert (await post(port, second.encode(), b"application/json")).code == 200
    # refusals, each with its status and counter
    forged = replace(records.make_record(mallory, now), signature=bytes(64)).encode()
    cases = [
        (form(first), 409, "replayed"),
        (form(second), 409, "replayed"),
        (form(forged), 400, "forged"),
        (form(records.make_record(mallory, now - 100, lifetime=10)), 400, "expired"),
        (b"keytext=" + b"x" * 100, 400, "malformed"),
        (b"keytext=%7B%7D&keytext=x", 400, "malformed"),
        (b"x" * (MAX_BODY + 1), 413, "oversized"),
    ]
    for body, code, reason in cases:
        before = server.store.rejected[reason]
        reply = await post(port, body)
        assert reply.code == code, (reason, reply.body)
        assert reason.encode() in reply.body
        assert server.store.rejected[reason] == before + 1, reason
    assert (await client(port).fetch(alice.node_id)).record == second

    revocation = records.make_revocation(alice, now)
    assert (await post(port, form(revocation))).code == 200
    assert await client(port).lookup(alice.node_id) is None  # revoked: not vouched for
    assert (await client(port).fetch(alice.node_id)).record == revocation
    later = records.make_record(alice, now + 100)
    reply = await post(port, form(later))
    assert reply.code == 409 and b"revoked" in reply.body
    assert server.store.rejected["revoked"] == 1

    # the counters on /metrics
    collector = NodeCollector(load_or_create(tmp_path / "ks"), keys=server)
    text = render(registry_for(collector)).decode()
    assert 'mcp2p_keys_rejected_total{reason="forged"} 1.0' in text
    assert "mcp2p_keys_records 1.0" in text

    # persisted, verified again at restart
    await defer.maybeDeferred(server.stopService)
    again = servers(tmp_path / "ks", port)
    assert again.store.get(alice.node_id, time.time()) == revocation


@pytest_twisted.ensureDeferred
async def test_a_client_answers_none_for_a_lying_server(tmp_path: Path, servers: Any) -> None:
    """A server that answers with another node's record is not believed."""
    port = free_port()
    server = servers(tmp_path / "ks", port)
    alice = load_or_create(tmp_path / "alice")
    bob = load_or_create(tmp_path / "bob")
    record = records.make_record(bob, int(time.time()))
    server.store.records[alice.node_id] = record  # corrupt the store behind its back
    server.store._keys[alice.node_id[0]].append(alice.node_id)
    assert await client(port).lookup(alice.node_id) is None
    # and no server at all is None, not an exception
    assert await client(free_port()).lookup(alice.node_id) is None


@pytest_twisted.ensureDeferred
async def test_per_source_rate_and_total_cap(tmp_path: Path, servers: Any) -> None:
    port = free_port()
    server = servers(tmp_path / "ks", port, add_rate="0.001", add_burst="5", max_records="8")
    now = int(time.time())
    sybils = [load_or_create(tmp_path / f"s{i}") for i in range(7)]
    codes = [(await post(port, form(records.make_record(s, now)))).code for s in sybils]
    assert codes == [200] * 5 + [429] * 2
    assert server.store.rejected["rate"] == 2
    # the cap, through replication's path (no rate): what is held stays
    store = server.store
    for s in sybils[5:]:
        store.add(records.make_record(s, now).encode(), now)
    extra = [load_or_create(tmp_path / f"x{i}") for i in range(3)]
    refused = 0
    for x in extra:
        try:
            store.add(records.make_record(x, now).encode(), now)
        except records.RecordError as e:
            assert e.reason == "full"
            refused += 1
    assert len(store) == 8 and refused == 2
    assert all(store.get(s.node_id, now) is not None for s in sybils)


def test_store_bounds_sources_and_pages() -> None:
    store = KeyStore(add_rate=1, add_burst=1, max_sources=3)
    for i in range(10):
        store._source_allows(f"10.0.0.{i}", 0.0)
    assert len(store.sources) == 3


async def _wait(what: Any, timeout: float = 10.0) -> float:
    start = time.monotonic()
    while not what():
        if time.monotonic() - start > timeout:
            raise AssertionError("timed out")
        await task.deferLater(reactor, 0.05, lambda: None)
    return time.monotonic() - start


@pytest_twisted.ensureDeferred
async def test_replication_converges_and_catches_up(tmp_path: Path, servers: Any) -> None:
    ports = [free_port() for _ in range(3)]
    ks = [
        servers(
            tmp_path / f"ks{i}", ports[i], [p for p in ports if p != ports[i]], max_per_round="50"
        )
        for i in range(3)
    ]
    now = int(time.time())
    alice = load_or_create(tmp_path / "alice")
    assert (await post(ports[0], form(records.make_record(alice, now - 10)))).code == 200
    took = await _wait(lambda: all(s.store.get(alice.node_id, time.time()) for s in ks))
    assert took < 5
    # one server goes down; meanwhile a newer record and 120 others (over the
    # per-round budget, and in few buckets) are published elsewhere
    await defer.maybeDeferred(ks[2].stopService)
    newer = records.make_record(alice, now)
    assert (await post(ports[1], form(newer))).code == 200
    others = [load_or_create(tmp_path / f"o{i}") for i in range(120)]
    for o in others:
        ks[0].store.add(records.make_record(o, now).encode(), time.time())
    await _wait(lambda: len(ks[1].store) == 121)
    back = servers(tmp_path / "ks2", ports[2], [ports[0], ports[1]], max_per_round="50")
    await _wait(lambda: len(back.store) == 121)
    assert back.store.get(alice.node_id, time.time()) == newer
    assert back.store.summary() == ks[0].store.summary() == ks[1].store.summary()
    assert back.store.rejected["forged"] == 0


def test_the_daemon_has_a_key_service_only_when_serving(tmp_path: Path) -> None:
    from mcp2p.app import build

    base = f"[node]\nstate_dir = {tmp_path}/state\n[share]\npaths = {tmp_path}/share\n"
    top = build(config_from_string(base, base_dir=tmp_path), reactor=task.Clock())
    assert top.node.keys is None  # type: ignore[attr-defined]
    text = base + "[keys]\nserve = yes\nlisten = 127.0.0.1:11371\npeers = 127.0.0.2:11371\n"
    top = build(config_from_string(text, base_dir=tmp_path), reactor=task.Clock())
    service = top.getServiceNamed("keys")
    assert service is top.node.keys  # type: ignore[attr-defined]
    assert [str(p) for p in service.replicator.peers] == ["127.0.0.2:11371"]
