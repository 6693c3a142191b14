"""Mutual TLS between node keys, on real TCP over 127.0.0.1 (port 0)."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import defer, task
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from mcp2p.trust.keys import NodeIdentity, load_or_create
from mcp2p.trust.tls import (
    HANDSHAKE_TIMEOUT,
    PeerRejected,
    VerifiedClientEndpoint,
    VerifyingFactory,
    certificate_for,
    client_context,
    peer_identity,
    server_context,
    tls_server_factory,
)

reactor: Any = _reactor

# -- plumbing: application protocols, closure tracking, a clean reactor at the end


class Lines(LineReceiver):
    """Says hello on connect (only ever called with a verified peer) and keeps what it hears."""

    delimiter = b"\n"

    def __init__(self, hello: bytes, connected: defer.DeferredQueue[Lines] | None = None) -> None:
        self.hello = hello
        self.connected_queue = connected
        self.peer: tuple[bytes, bytes] | None = None
        self.lines: list[bytes] = []
        self.got_line: defer.Deferred[bytes] = defer.Deferred()
        self.lost: defer.Deferred[Any] = defer.Deferred()

    def connectionMade(self) -> None:
        self.peer = peer_identity(self.transport)
        self.sendLine(self.hello)
        if self.connected_queue is not None:
            self.connected_queue.put(self)

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)
        if not self.got_line.called:
            self.got_line.callback(line)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(reason.value if reason is not None else None)


class Raw(Protocol):
    """A client that is not an mcp2p node: records what happens to it."""

    def __init__(self) -> None:
        self.made = False
        self.data = b""
        self.lost: defer.Deferred[Any] = defer.Deferred()

    def connectionMade(self) -> None:
        self.made = True
        transport: Any = self.transport
        transport.write(b"hello from a stranger\n")

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(reason.value if reason is not None else None)


class _Tracked(ProtocolWrapper):
    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        self.factory.closed(self)


class Tracking(WrappingFactory):
    """Sits on the TCP connection itself, so a test can wait until every socket is closed."""

    protocol = _Tracked

    def __init__(self, wrapped: Any, net: Net) -> None:
        super().__init__(wrapped)
        self.net = net

    def buildProtocol(self, addr: Any) -> Any:
        p = super().buildProtocol(addr)
        self.net.open_connections[p] = defer.Deferred()
        return p

    def closed(self, p: Any) -> None:
        self.net.open_connections[p].callback(None)


class Net:
    """Listening ports and connections of one test, all closed by ``close``."""

    def __init__(self) -> None:
        self.ports: list[Any] = []
        self.open_connections: dict[Any, defer.Deferred[None]] = {}
        self.delayed = set(reactor.getDelayedCalls())
        self.readers = set(reactor.getReaders())
        self.writers = set(reactor.getWriters())

    async def listen(self, factory: Any) -> int:
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Tracking(factory, self)
        )
        self.ports.append(port)
        return port.getHost().port

    def endpoint(self, port: int) -> TrackingEndpoint:
        return TrackingEndpoint(TCP4ClientEndpoint(reactor, "127.0.0.1", port), self)

    async def close(self) -> None:
        ports, self.ports = self.ports, []
        for port in ports:
            await port.stopListening()
        await defer.gatherResults(list(self.open_connections.values()))
        self.open_connections.clear()
        assert set(reactor.getDelayedCalls()) <= self.delayed, reactor.getDelayedCalls()
        assert set(reactor.getReaders()) <= self.readers
        assert set(reactor.getWriters()) <= self.writers


@implementer(IStreamClientEndpoint)
class TrackingEndpoint:
    def __init__(self, endpoint: Any, net: Net) -> None:
        self.endpoint = endpoint
        self.net = net

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        d = self.endpoint.connect(Tracking(factory, self.net))
        return d.addCallback(lambda tracked: tracked.wrappedProtocol)


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    observer: Any = seen.append
    globalLogPublisher.addObserver(observer)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(observer)


def rejections(events: list[dict[str, Any]]) -> list[str]:
    return [
        str(e["why"]) for e in events if "closed before the peer was verified" in e["log_format"]
    ]


async def until(condition: Any) -> None:
    for _ in range(500):
        if condition():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("timed out waiting")


def ident(tmp_path: Path, name: str) -> NodeIdentity:
    return load_or_create(tmp_path / name)


def lines_factory(hello: bytes) -> tuple[Factory, defer.DeferredQueue[Lines], list[Lines]]:
    queue: defer.DeferredQueue[Lines] = defer.DeferredQueue()
    built: list[Lines] = []

    def make() -> Lines:
        p = Lines(hello, queue)
        built.append(p)
        return p

    return Factory.forProtocol(make), queue, built


async def sn(net: Net, identity: NodeIdentity, clock: Any = reactor) -> tuple[int, Any, list]:
    factory, connected, built = lines_factory(b"hello from sn")
    port = await net.listen(tls_server_factory(identity, factory, clock))
    return port, connected, built


def tls_of(app: Any) -> SSL.Connection:
    """The pyOpenSSL connection under an application protocol (through the wrappers)."""
    return app.transport.getHandle()


# -- tests


@pytest_twisted.ensureDeferred
async def test_mutual_tls_each_side_learns_the_other(tmp_path: Path) -> None:
    server_id, client_id = ident(tmp_path, "sn"), ident(tmp_path, "cn")
    net = Net()
    try:
        port, connected, _ = await sn(net, server_id)
        endpoint = VerifiedClientEndpoint(reactor, net.endpoint(port), client_id, server_id.node_id)
        factory, _, _ = lines_factory(b"hello from cn")
        client = await endpoint.connect(factory)
        server = await connected.get()

        assert client.peer == (server_id.node_id, server_id.public_key)
        assert server.peer == (client_id.node_id, client_id.public_key)
        assert await client.got_line == b"hello from sn"
        assert await server.got_line == b"hello from cn"

        version = tls_of(client).get_protocol_version_name()
        print(
            "negotiated", version, tls_of(client).get_cipher_name(), tls_of(client).get_group_name()
        )
        assert version == "TLSv1.3"
        assert tls_of(server).get_protocol_version_name() == version

        client.transport.loseConnection()
        await client.lost
        await server.lost
    finally:
        await net.close()


@pytest_twisted.ensureDeferred
async def test_client_expecting_another_node_aborts_in_the_handshake(
    tmp_path: Path, events: list[dict[str, Any]]
) -> None:
    server_id, client_id, other = (ident(tmp_path, n) for n in ("sn", "cn", "other"))
    net = Net()
    try:
        port, _, server_apps = await sn(net, server_id)
        endpoint = VerifiedClientEndpoint(reactor, net.endpoint(port), client_id, other.node_id)
        factory, client_connected, client_apps = lines_factory(b"hello from cn")
        with pytest.raises(PeerRejected) as caught:
            await endpoint.connect(factory)
        assert "mismatch" in str(caught.value)
        assert other.node_id.hex() in str(caught.value)
        assert server_id.node_id.hex() in str(caught.value)
        await net.close()
        # Neither application ever saw the connection, so no data crossed.
        assert not client_connected.pending and all(a.lines == [] for a in client_apps)
        assert all(a.peer is None and a.lines == [] for a in server_apps)
        logged = rejections(events)
        assert any("mismatch" in why for why in logged), logged  # the client's reason
        assert len(logged) == 2, logged  # and the server's: the client's alert
    finally:
        await net.close()


@pytest_twisted.ensureDeferred
async def test_connections_share_one_context_and_each_checks_its_own_peer(
    tmp_path: Path,
) -> None:
    """A CN's connects share its TLS context (made once, not per fetch); the
    node each expects is still its own: a second connect to the same SN,
    expecting another node, is refused after one that succeeded."""
    server_id, client_id, other = (ident(tmp_path, n) for n in ("sn", "cn", "other"))
    net = Net()
    try:
        port, _, _ = await sn(net, server_id)
        right = VerifiedClientEndpoint(reactor, net.endpoint(port), client_id, server_id.node_id)
        wrong = VerifiedClientEndpoint(reactor, net.endpoint(port), client_id, other.node_id)
        assert right._creator._context is wrong._creator._context  # type: ignore[attr-defined]
        factory, _, _ = lines_factory(b"hello from cn")
        client = await right.connect(factory)
        assert client.peer == (server_id.node_id, server_id.public_key)
        with pytest.raises(PeerRejected, match="mismatch"):
            await wrong.connect(factory)
        client.transport.loseConnection()
    finally:
        await net.close()


@pytest_twisted.ensureDeferred
async def test_verifying_factory_checks_again_after_the_handshake(tmp_path: Path) -> None:
    """A creator that lets the wrong server through is still caught by the wrapper."""
    server_id, client_id, other = (ident(tmp_path, n) for n in ("sn", "cn", "other"))
    net = Net()
    try:
        port, _, _ = await sn(net, server_id)
        factory, _, client_apps = lines_factory(b"hello from cn")
        verifying = VerifyingFactory(factory, other.node_id, clock=reactor)
        tls = await net.endpoint(port).connect(
            TLSMemoryBIOFactory(client_context(client_id, server_id.node_id), True, verifying)
        )
        verifier = tls.wrappedProtocol
        with pytest.raises(PeerRejected, match="mismatch"):
            await verifier.when_verified()
        await net.close()
        assert all(a.peer is None and a.lines == [] for a in client_apps)
        assert verifier.peer is None
    finally:
        await net.close()


@implementer(IOpenSSLClientConnectionCreator)
class Stranger:
    """A TLS client that is not an mcp2p node: no certificate, or one with a non-Ed25519 key."""

    def __init__(self, with_ec_cert: bool) -> None:
        self.ctx = SSL.Context(SSL.TLS_METHOD)
        self.ctx.set_verify(SSL.VERIFY_NONE)
        if with_ec_cert:
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stranger")])
            now = datetime.datetime.now(datetime.UTC)
            cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(1)
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .sign(key, hashes.SHA256())
            )
            self.ctx.use_certificate(cert)
            self.ctx.use_privatekey(key)

    def clientConnectionForTLS(self, tls: Any) -> SSL.Connection:
        conn = SSL.Connection(self.ctx, None)
        conn.set_connect_state()
        return conn


@pytest.mark.parametrize(
    ("with_ec_cert", "server_says"),
    [(False, "certificate"), (True, "not an Ed25519 node key")],
)
@pytest_twisted.ensureDeferred
async def test_server_refuses_a_client_without_a_node_certificate(
    tmp_path: Path, events: list[dict[str, Any]], with_ec_cert: bool, server_says: str
) -> None:
    server_id = ident(tmp_path, "sn")
    net = Net()
    try:
        port, connected, server_apps = await sn(net, server_id)
        raw = Raw()
        await net.endpoint(port).connect(
            TLSMemoryBIOFactory(Stranger(with_ec_cert), True, Factory.forProtocol(lambda: raw))
        )
        error = await raw.lost
        await net.close()
        assert not connected.pending and server_apps[0].peer is None
        assert raw.data == b""  # the server application never spoke
        # The server's alert, or a reset if it closed on the stranger's unread hello.
        assert isinstance(error, (SSL.Error, ConnectionLost)), error
        logged = rejections(events)
        assert len(logged) == 1 and server_says in logged[0], logged
    finally:
        await net.close()


@pytest.mark.parametrize("max_version", [SSL.TLS1_2_VERSION, SSL.TLS1_1_VERSION])
@pytest_twisted.ensureDeferred
async def test_tls_1_2_is_the_floor(tmp_path: Path, max_version: int) -> None:
    server_id, client_id = ident(tmp_path, "sn"), ident(tmp_path, "cn")
    net = Net()
    try:
        port, connected, _ = await sn(net, server_id)
        creator = client_context(client_id, server_id.node_id)
        creator._context.set_max_proto_version(max_version)  # type: ignore[attr-defined]
        factory, _, _ = lines_factory(b"hello from cn")
        verifying = VerifyingFactory(factory, server_id.node_id, clock=reactor)
        tls = await net.endpoint(port).connect(TLSMemoryBIOFactory(creator, True, verifying))
        if max_version == SSL.TLS1_2_VERSION:  # Ed25519 works in TLS 1.2 too
            client = await tls.wrappedProtocol.when_verified()
            server = await connected.get()
            assert await client.got_line == b"hello from sn"
            assert tls_of(client).get_protocol_version_name() == "TLSv1.2"
            print("TLS 1.2 cipher", tls_of(client).get_cipher_name())
            assert str(tls_of(client).get_cipher_name()).startswith("ECDHE-ECDSA-")
            assert server.peer == (client_id.node_id, client_id.public_key)
            client.transport.loseConnection()
        else:
            with pytest.raises(SSL.Error):
                await tls.wrappedProtocol.when_verified()
    finally:
        await net.close()


@pytest_twisted.ensureDeferred
async def test_handshake_that_never_happens_times_out(
    tmp_path: Path, events: list[dict[str, Any]]
) -> None:
    server_id = ident(tmp_path, "sn")
    clock = Clock()
    net = Net()
    try:
        port, connected, _ = await sn(net, server_id, clock)
        idle = Protocol()
        await net.endpoint(port).connect(Factory.forProtocol(lambda: idle))
        await until(lambda: bool(clock.getDelayedCalls()))  # the server accepted
        clock.advance(HANDSHAKE_TIMEOUT)
        await net.close()
        assert not connected.pending and not clock.getDelayedCalls()
        assert any("no verified TLS handshake" in why for why in rejections(events))
    finally:
        await net.close()


@pytest_twisted.ensureDeferred
async def test_cancelling_a_connect_mid_handshake_closes_it(tmp_path: Path) -> None:
    client_id, other = ident(tmp_path, "cn"), ident(tmp_path, "other")
    net = Net()
    try:
        accepted: defer.DeferredQueue[Protocol] = defer.DeferredQueue()

        class Silent(Protocol):  # accepts TCP, never answers the ClientHello
            def connectionMade(self) -> None:
                accepted.put(self)

        port = await net.listen(Factory.forProtocol(Silent))
        endpoint = VerifiedClientEndpoint(reactor, net.endpoint(port), client_id, other.node_id)
        factory, _, client_apps = lines_factory(b"hello from cn")
        d = endpoint.connect(factory)
        await accepted.get()
        await until(lambda: len(net.open_connections) == 2)  # both ends: TLS has begun
        d.cancel()
        with pytest.raises(defer.CancelledError):
            await d
        await net.close()
        assert all(a.peer is None for a in client_apps)
    finally:
        await net.close()


@implementer(IHandshakeListener)
class HandshakeLines(Protocol):
    """Usage 1: no wrapper, the protocol asks for its peer in ``handshakeCompleted``."""

    def __init__(self, done: defer.Deferred[tuple[bytes, bytes]]) -> None:
        self.done = done
        self.lost: defer.Deferred[Any] = defer.Deferred()

    def handshakeCompleted(self) -> None:
        transport: Any = self.transport
        self.done.callback(peer_identity(transport))
        transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


@pytest_twisted.ensureDeferred
async def test_creators_alone_with_listen_ssl_and_handshake_completed(tmp_path: Path) -> None:
    server_id, client_id = ident(tmp_path, "sn"), ident(tmp_path, "cn")
    net = Net()
    saw: defer.Deferred[tuple[bytes, bytes]] = defer.Deferred()
    server = HandshakeLines(saw)
    port = reactor.listenSSL(
        0, Factory.forProtocol(lambda: server), server_context(server_id), interface="127.0.0.1"
    )
    try:
        client_saw: defer.Deferred[tuple[bytes, bytes]] = defer.Deferred()
        client = HandshakeLines(client_saw)
        reactor.connectSSL(
            "127.0.0.1",
            port.getHost().port,
            ClientFactory.forProtocol(lambda: client),
            client_context(client_id, server_id.node_id),
        )
        assert await saw == (client_id.node_id, client_id.public_key)
        assert await client_saw == (server_id.node_id, server_id.public_key)
        await server.lost
        await client.lost
    finally:
        await port.stopListening()
        await net.close()


def test_certificate_carries_the_node_key(tmp_path: Path) -> None:
    identity = ident(tmp_path, "sn")
    pem = certificate_for(identity)
    cert = x509.load_pem_x509_certificate(pem)
    raw = cert.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert raw == identity.public_key
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == identity.node_id.hex()
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)  # self-signed with the node key
    now = datetime.datetime.now(datetime.UTC)
    assert cert.not_valid_before_utc < now - datetime.timedelta(hours=23)
    assert cert.not_valid_after_utc > now + datetime.timedelta(days=3649)
    assert certificate_for(identity) == pem  # made once per process
    other = certificate_for(ident(tmp_path, "cn"))
    assert x509.load_pem_x509_certificate(other).serial_number != cert.serial_number


def test_client_context_wants_a_node_id(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        client_context(ident(tmp_path, "cn"), b"short")
