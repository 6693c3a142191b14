"""Mutual TLS for the control channel: each side proves its node key, no CA.

Each node presents a self-signed certificate whose key is its Ed25519 node
key (``certificate_for``); TLS's CertificateVerify proves it holds the key.
Trust is by key, never by chain: the verify callback accepts self-signed
certificates (and ignores dates and chains) but refuses a peer without a
certificate or with a key that is not Ed25519, and a client refuses a server
whose key does not hash to the node id it expects (the one in the OFFER). The
client refuses inside the handshake, before it shows its own certificate or
finishes the handshake. TLS 1.2 is the floor (Ed25519 works there with the
ECDHE-ECDSA suites); two mcp2p nodes negotiate TLS 1.3.

Three ways to use it, from least to most help:

1. The connection creators alone. They are safe by themselves::

       reactor.listenSSL(port, factory, server_context(identity), interface=iface)

   and in the protocol (AMP included), once the handshake is done::

       def handshakeCompleted(self):
           self.peer_node_id, self.peer_key = peer_identity(self.transport)

2. ``VerifyingFactory(factory, expected_node_id or None, clock=reactor)``
   between TLS and the application: the application protocol's
   ``connectionMade`` runs only after the peer is verified, so
   ``peer_identity(self.transport)`` always works there; a handshake that
   does not finish within ``handshake_timeout`` is aborted; rejections are
   counted and logged in summary (the 1st, 2nd, 4th, 8th... with the count).
   ``tls_server_factory`` assembles it for a server endpoint, under a
   ``LimitingFactory``: at most ``per_address`` connections from one source
   address and ``max_connections`` in all (by default half the process's
   open-file limit, so files, sessions and the API keep room); a connection
   over either cap is closed at accept, before any TLS work::

       port = await TCP4ServerEndpoint(reactor, 0, interface=iface).listen(
           tls_server_factory(identity, Factory.forProtocol(ControlServer), reactor))

3. ``VerifiedClientEndpoint`` for the CN: ``connect`` fires with the
   application protocol once the server proved the expected key, or fails
   with ``PeerRejected`` (or the TLS error) otherwise::

       endpoint = VerifiedClientEndpoint(
           reactor, TCP4ClientEndpoint(reactor, host, port), identity, offer.node_id)
       client = await endpoint.connect(Factory.forProtocol(ControlClient))
"""

from __future__ import annotations

import datetime
import functools
import resource
import weakref
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from OpenSSL.crypto import X509
from twisted.internet import defer
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from mcp2p.logsummary import summary_level
from mcp2p.trust.keys import NodeIdentity, node_id_of

_log = Logger()

MIN_TLS_VERSION = SSL.TLS1_2_VERSION
# TLS 1.2 only: forward-secret AEAD suites that an Ed25519 certificate can
# sign (RFC 8422 puts EdDSA under the ECDSA suites). TLS 1.3 keeps its defaults.
TLS12_CIPHERS = (
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256"
)
HANDSHAKE_TIMEOUT = 15.0  # seconds from TCP connect to a verified peer
CERT_LIFETIME = datetime.timedelta(days=3650)
CERT_BACKDATE = datetime.timedelta(days=1)  # tolerate peers whose clocks run behind


class PeerRejected(Exception):
    """The peer did not prove the node key we require (or took too long to)."""


# -- certificates


_certificates: dict[bytes, bytes] = {}  # public key -> PEM; made once per process


def certificate_for(identity: NodeIdentity) -> bytes:
    """A self-signed PEM certificate for the node key (CN = node id in hex).

    Cheap to make, so it is made at start and never stored: the key is the
    identity, the certificate only carries it into TLS.
    """
    pem = _certificates.get(identity.public_key)
    if pem is None:
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.node_id.hex())])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(identity.private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CERT_BACKDATE)
            .not_valid_after(now + CERT_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(identity.private_key, None)  # Ed25519 takes no separate hash
        )
        pem = _certificates[identity.public_key] = cert.public_bytes(serialization.Encoding.PEM)
    return pem


def _node_key(cert: X509 | x509.Certificate) -> bytes:
    """The raw Ed25519 public key in a certificate, or ``PeerRejected``."""
    if isinstance(cert, X509):
        cert = cert.to_cryptography()
    key = cert.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise PeerRejected(f"peer key is {type(key).__name__}, not an Ed25519 node key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def check_peer(cert: X509 | x509.Certificate | None, expected_node_id: bytes | None) -> bytes:
    """The peer's raw public key if ``cert`` carries the node key we expect."""
    if cert is None:
        raise PeerRejected("peer presented no certificate")
    public_key = _node_key(cert)
    if expected_node_id is not None:
        got = node_id_of(public_key)
        if got != expected_node_id:
            raise PeerRejected(
                f"peer node id mismatch: expected {expected_node_id.hex()}, "
                f"certificate key has node id {got.hex()}"
            )
    return public_key


def peer_identity(transport: Any) -> tuple[bytes, bytes]:
    """``(node_id, raw public key)`` of the peer on a TLS transport, after the handshake.

    Raises ``PeerRejected`` if there is no certificate or its key is not Ed25519.
    """
    public_key = check_peer(transport.getPeerCertificate(), None)
    return node_id_of(public_key), public_key


# -- connection creators


VERIFY = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT


def _verify_callback(tls_protocol: Any, expected_node_id: bytes | None) -> Any:
    """Accept any self-signed certificate that carries the node key we require.

    A refusal goes to ``tls_protocol.failVerification`` so the application
    sees ``PeerRejected`` and its reason, not OpenSSL's "certificate verify
    failed" (the way Twisted's own ``ClientTLSOptions`` reports hostnames).
    """
    protocol_ref = weakref.ref(tls_protocol)  # no cycle through the SSL connection

    def verify(conn: SSL.Connection, cert: X509, errno: int, depth: int, ok: int) -> bool:
        if depth > 0:
            return True  # only the leaf's key matters; chains are not used
        try:
            check_peer(cert, expected_node_id)
        except PeerRejected:
            protocol = protocol_ref()
            if protocol is not None and hasattr(protocol, "failVerification"):
                protocol.failVerification(Failure())
            return False
        except BaseException:  # an exception would vanish inside OpenSSL
            _log.failure("while verifying a control peer's certificate")
            return False
        return True  # self-signed, any dates: the key is the identity

    return verify


def _context(identity: NodeIdentity) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(MIN_TLS_VERSION)
    ctx.set_cipher_list(TLS12_CIPHERS)
    ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)  # a resumed session skips our callback
    ctx.set_session_id(b"mcp2p-control")
    ctx.use_certificate(x509.load_pem_x509_certificate(certificate_for(identity)))
    ctx.use_privatekey(identity.private_key)
    ctx.check_privatekey()
    ctx.set_verify(VERIFY)  # and each connection adds its callback
    return ctx


@implementer(IOpenSSLServerConnectionCreator)
class _ServerCreator:
    def __init__(self, identity: NodeIdentity) -> None:
        self._context = _context(identity)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        conn = SSL.Connection(self._context, None)
        conn.set_verify(VERIFY, _verify_callback(tlsProtocol, None))
        return conn


@functools.lru_cache(maxsize=8)
def _client_context(identity: NodeIdentity) -> SSL.Context:
    """One context per identity for all its connections (each adds its own
    verify callback): making one loads the certificate and key, 0.2-1.6 ms
    that every fetch's connect paid."""
    return _context(identity)


@implementer(IOpenSSLClientConnectionCreator)
class _ClientCreator:
    def __init__(self, identity: NodeIdentity, expected_node_id: bytes) -> None:
        self._context = _client_context(identity)
        self._expected = expected_node_id

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        conn = SSL.Connection(self._context, None)
        conn.set_verify(VERIFY, _verify_callback(tlsProtocol, self._expected))
        return conn


def server_context(identity: NodeIdentity) -> IOpenSSLServerConnectionCreator:
    """Server side: prove ``identity``; accept any client that proves an Ed25519 key."""
    return _ServerCreator(identity)


def client_context(
    identity: NodeIdentity, expected_node_id: bytes
) -> IOpenSSLClientConnectionCreator:
    """Client side: prove ``identity``; accept only the server whose key is ``expected_node_id``."""
    if len(expected_node_id) != len(identity.node_id):
        raise ValueError(f"expected node id must be {len(identity.node_id)} bytes")
    return _ClientCreator(identity, expected_node_id)


# -- verifying wrapper


@implementer(IHandshakeListener)
class VerifyingProtocol(ProtocolWrapper):
    """Holds the application protocol back until the peer is verified.

    S1: TCP up, handshake running; the application has not seen the connection.
    S2: peer verified (``peer`` set); everything passes through.
    S3: lost or rejected; waiters got the reason.
    """

    factory: VerifyingFactory

    def __init__(self, factory: VerifyingFactory, wrappedProtocol: IProtocol) -> None:
        super().__init__(factory, wrappedProtocol)
        self.peer: tuple[bytes, bytes] | None = None  # (node id, public key) once verified
        self._rejected: PeerRejected | None = None
        self._timeout: IDelayedCall | None = None
        self._waiters: list[defer.Deferred[Any]] = []
        self._failure: Failure | None = None  # S3: why the connection ended unverified
        self._done = False

    def when_verified(self) -> defer.Deferred[Any]:
        """Fires with the application protocol once the peer is verified."""
        if self.peer is not None:
            return defer.succeed(self.wrappedProtocol)
        if self._done:
            return defer.fail(self._failure or PeerRejected("connection closed"))

        def cancel(d: defer.Deferred[Any]) -> None:
            self._waiters.remove(d)
            self._reject(PeerRejected("cancelled before the peer was verified"))

        d: defer.Deferred[Any] = defer.Deferred(cancel)
        self._waiters.append(d)
        return d

    def makeConnection(self, transport: Any) -> None:
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        if self.factory.clock is not None:
            self._timeout = self.factory.clock.callLater(
                self.factory.handshake_timeout,
                self._reject,
                PeerRejected(f"no verified TLS handshake in {self.factory.handshake_timeout}s"),
            )

    def handshakeCompleted(self) -> None:
        transport: Any = self.transport
        try:
            public_key = check_peer(transport.getPeerCertificate(), self.factory.expected_node_id)
        except PeerRejected as e:
            self._reject(e)
            return
        self._cancel_timeout()
        self.peer = (node_id_of(public_key), public_key)
        _log.info(
            "control peer {address} verified as node {node_id}",
            address=_address(self.transport),
            node_id=self.peer[0].hex(),
        )
        app = self.wrappedProtocol
        app.makeConnection(cast(ITransport, self))
        if IHandshakeListener.providedBy(app):
            app.handshakeCompleted()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(app)

    def _reject(self, reason: PeerRejected) -> None:
        if self.peer is None and self._rejected is None and not self._done:
            self._rejected = reason
            transport: Any = self.transport
            transport.abortConnection()

    def _cancel_timeout(self) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None

    def dataReceived(self, data: bytes) -> None:
        if self.peer is not None:
            self.wrappedProtocol.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timeout()
        self._done = True
        self.factory.unregisterProtocol(self)
        if self.peer is not None:
            self.wrappedProtocol.connectionLost(reason)
        else:
            if self._rejected is None and isinstance(reason.value, PeerRejected):
                self._rejected = reason.value
            rejected = self._rejected
            why: Any = rejected if rejected is not None else reason.value
            self.factory.rejections += 1
            n = self.factory.rejections
            if self.factory.counters is not None:
                self.factory.counters["rejected"] = self.factory.counters.get("rejected", 0) + 1
            # The 1st, 2nd, 4th, 8th...: a flood of connections writes a few lines.
            _log.emit(
                summary_level(n),
                "control connection with {address} closed before the peer was verified: {why}"
                " ({count} so far)",
                address=_address(self.transport),
                why=why,
                count=n,
            )
            self._failure = Failure(rejected) if rejected is not None else reason
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.errback(self._failure)
        self.wrappedProtocol = None  # type: ignore[assignment]  # break the cycle, as Twisted does


class VerifyingFactory(WrappingFactory["VerifyingProtocol"]):
    """Wrap ``wrapped_factory`` so its protocols start only with a verified peer.

    ``expected_node_id`` None accepts any peer that proves an Ed25519 key (a
    server); otherwise only that node (a client). ``clock`` enables the
    handshake timeout.
    """

    protocol = VerifyingProtocol

    def __init__(
        self,
        wrapped_factory: IProtocolFactory,
        expected_node_id: bytes | None = None,
        *,
        clock: IReactorTime | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        counters: dict[str, int] | None = None,
    ) -> None:
        super().__init__(wrapped_factory)
        self.expected_node_id = expected_node_id
        self.clock = clock
        self.handshake_timeout = handshake_timeout
        self.counters = counters  # "rejected" counts connections closed unverified
        self.rejections = 0


def default_max_connections() -> int:
    """Half the process's open-file limit (at least 16): the rest stays for
    shared files, sessions, discovery sockets and the API."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        soft = 1 << 16
    return max(16, soft // 2)


class _Counted(ProtocolWrapper):
    host = ""


class LimitingFactory(WrappingFactory):
    """Accept at most ``per_address`` connections from one source address and
    ``max_connections`` in all; over a cap, ``buildProtocol`` returns None and
    the reactor closes the socket at once. Refusals go to ``counters``
    ("refused_address", "refused_full") and to the log in summary."""

    protocol = _Counted

    def __init__(
        self,
        wrapped_factory: IProtocolFactory,
        per_address: int,
        max_connections: int,
        counters: dict[str, int] | None = None,
    ) -> None:
        super().__init__(wrapped_factory)
        self.per_address = per_address
        self.max_connections = max_connections
        self.counters = counters if counters is not None else {}
        self.counters.setdefault("refused_address", 0)
        self.counters.setdefault("refused_full", 0)
        self.by_address: dict[str, int] = {}
        self.open = 0

    def buildProtocol(self, addr: Any) -> Any:
        host = str(getattr(addr, "host", addr))
        if self.by_address.get(host, 0) >= self.per_address:
            self._refuse("refused_address", host, f"{self.per_address} from that address")
            return None
        if self.open >= self.max_connections:
            self._refuse("refused_full", host, f"{self.max_connections} in all")
            return None
        p: Any = super().buildProtocol(addr)
        if p is not None:
            p.host = host
            self.by_address[host] = self.by_address.get(host, 0) + 1
            self.open += 1
        return p

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        host = getattr(p, "host", "")
        if host in self.by_address:
            self.open -= 1
            self.by_address[host] -= 1
            if not self.by_address[host]:
                del self.by_address[host]

    def _refuse(self, key: str, host: str, limit: str) -> None:
        self.counters[key] = n = self.counters.get(key, 0) + 1
        _log.emit(
            summary_level(n),
            "refused a control connection from {host}: at most {limit} "
            "({count} refused so far, counted in {key})",
            host=host,
            limit=limit,
            count=n,
            key=key,
        )


def tls_server_factory(
    identity: NodeIdentity,
    factory: IProtocolFactory,
    clock: IReactorTime,
    *,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    per_address: int = 16,
    max_connections: int = 0,
    counters: dict[str, int] | None = None,
) -> IProtocolFactory:
    """A factory for any stream server endpoint: caps per address and in all
    (``max_connections`` 0: ``default_max_connections()``), TLS as
    ``identity``, then verification."""
    verifying = VerifyingFactory(
        factory, None, clock=clock, handshake_timeout=handshake_timeout, counters=counters
    )
    tls = TLSMemoryBIOFactory(server_context(identity), False, verifying)
    return LimitingFactory(tls, per_address, max_connections or default_max_connections(), counters)


@implementer(IStreamClientEndpoint)
class VerifiedClientEndpoint:
    """Connects over ``endpoint`` and fires only once the server proved ``expected_node_id``."""

    def __init__(
        self,
        clock: IReactorTime,
        endpoint: IStreamClientEndpoint,
        identity: NodeIdentity,
        expected_node_id: bytes,
        *,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self._clock = clock
        self._endpoint = endpoint
        self._creator = client_context(identity, expected_node_id)
        self._expected = expected_node_id
        self._timeout = handshake_timeout

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[Any]:
        verifying = VerifyingFactory(
            protocolFactory, self._expected, clock=self._clock, handshake_timeout=self._timeout
        )

        def handshake(tls: Any) -> defer.Deferred[Any]:
            verifier: VerifyingProtocol = tls.wrappedProtocol
            return verifier.when_verified()

        d = self._endpoint.connect(TLSMemoryBIOFactory(self._creator, True, verifying))
        return d.addCallback(handshake)


def _address(transport: Any) -> str:
    try:
        peer = transport.getPeer()
        return f"{peer.host}:{peer.port}"
    except Exception:  # only for a log line
        return "?"
