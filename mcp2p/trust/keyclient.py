"""The key servers' client side: look up, publish and revoke key records over HKP.

``[keys] servers`` lists where the key servers are reached, normally one
anycast address that the routing protocol delivers to the nearest server.
`KeyClient.lookup` is the trust policy's ``lookup(node_id) ->
Deferred[KeyRecord | None]``: a record comes back only when its signature,
its node id and its expiry check out and it is not revoked; anything else
(no record, a server that lies, no server answering) is None.

`http_request` is also what the servers' replication uses: every body it
reads is bounded (`BodyTooLarge` past ``max_bytes``) and every request has
a timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from mcp2p.errors import ProtocolError
from mcp2p.trust import records
from mcp2p.trust.endpoint import HKP_PORT, Endpoint, parse_endpoint
from mcp2p.trust.records import KeyRecord, RecordError

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTCP, IReactorTime

    from mcp2p.config import KeysSection

    class IHTTPReactor(IReactorTime, IReactorTCP):
        """What an HTTP client or server here uses of the reactor: time and TCP."""


_log = Logger()

SERVER_HEADER = b"X-Key-Server"  # which key server answered: its node id in hex
MAX_RESPONSE = 64 * 1024  # a look-up answer: one record and some headroom


class BodyTooLarge(Exception):
    """A response body went past the bytes we agreed to read."""


@implementer(IBodyProducer)
class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Any:
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _Collect(protocol.Protocol):
    """Reads a response body up to ``limit`` bytes, then gives up on the connection."""

    def __init__(self, limit: int, done: defer.Deferred[bytes]) -> None:
        self.limit = limit
        self.done = done
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.done.errback(BodyTooLarge(f"response body over {self.limit} bytes"))
            self.transport.stopProducing()  # type: ignore[union-attr]
            return
        self.parts.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.done.called:
            return
        from twisted.web.client import ResponseDone
        from twisted.web.http import PotentialDataLoss

        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


@dataclass(frozen=True)
class Reply:
    code: int
    headers: Any
    body: bytes

    def header(self, name: bytes) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0].decode("ascii", "replace")[:128] if values else None


async def http_request(
    reactor: Any,
    method: bytes,
    url: bytes,
    *,
    body: bytes | None = None,
    content_type: bytes | None = None,
    max_bytes: int = MAX_RESPONSE,
    timeout: float = 5.0,
) -> Reply:
    """One HTTP request on a fresh connection; the whole exchange within ``timeout``."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    agent = Agent(reactor, connectTimeout=timeout, pool=pool)
    headers = Headers({b"User-Agent": [b"mcp2p-keys"]})
    if content_type is not None:
        headers.addRawHeader(b"Content-Type", content_type)

    async def exchange() -> Reply:
        response = await agent.request(
            method, url, headers, _Bytes(body) if body is not None else None
        )
        done: defer.Deferred[bytes] = defer.Deferred()
        response.deliverBody(_Collect(max_bytes, done))
        data = await done
        return Reply(response.code, response.headers, data)

    d = defer.ensureDeferred(exchange())
    d.addTimeout(timeout, reactor)
    return await d


@dataclass
class Answer:
    """What one look-up found: the record (verified, possibly revoked or expired),
    which server answered (its node id, from SERVER_HEADER) and from where."""

    record: KeyRecord | None
    server: str | None
    endpoint: Endpoint


class KeyClient:
    """Talks HKP to ``servers`` (tried in order until one answers)."""

    def __init__(
        self, reactor: IHTTPReactor, servers: Iterable[Endpoint], timeout: float = 5.0
    ) -> None:
        self.reactor = reactor
        self.servers = tuple(servers)
        self.timeout = timeout

    async def fetch(self, node_id: bytes) -> Answer:
        """The record a server holds for ``node_id`` (None: it holds none).

        Raises `LookupFailed` when no server gave a usable answer.
        """
        if not self.servers:
            raise LookupFailed("no key server configured ([keys] servers)")
        path = "/pks/lookup?" + urlencode({"op": "get", "search": "0x" + node_id.hex()})
        errors = []
        for endpoint in self.servers:
            try:
                reply = await http_request(
                    self.reactor, b"GET", endpoint.url(path), timeout=self.timeout
                )
            except Exception as e:  # connection refused, timeout, body too large
                errors.append(f"{endpoint}: {_why(e)}")
                continue
            server = reply.header(SERVER_HEADER)
            if reply.code == 404:
                return Answer(None, server, endpoint)
            if reply.code != 200:
                errors.append(f"{endpoint}: HTTP {reply.code}")
                continue
            try:
                record = records.decode(reply.body.strip())
            except ProtocolError as e:
                errors.append(f"{endpoint}: bad record ({e})")
                continue
            if record.node_id != node_id:
                errors.append(f"{endpoint}: answered with another node's record")
                continue
            return Answer(record, server, endpoint)
        raise LookupFailed("; ".join(errors))

    def lookup(self, node_id: bytes) -> defer.Deferred[KeyRecord | None]:
        """The node's current record (verified, unexpired, not revoked), or None."""

        async def run() -> KeyRecord | None:
            try:
                answer = await self.fetch(node_id)
            except LookupFailed as e:
                _log.info("key look-up of {node} failed: {why}", node=node_id.hex()[:12], why=e)
                return None
            record = answer.record
            if record is None or record.revoked or record.expired(self.reactor.seconds()):
                return None
            return record

        return defer.ensureDeferred(run())

    async def publish(self, record: KeyRecord) -> tuple[Endpoint, int, str]:
        """POST ``record`` to the first server that answers: (where, HTTP code, its text)."""
        if not self.servers:
            raise LookupFailed("no key server configured ([keys] servers)")
        body = ("keytext=" + quote(record.encode().decode("ascii"), safe="")).encode("ascii")
        errors = []
        for endpoint in self.servers:
            try:
                reply = await http_request(
                    self.reactor,
                    b"POST",
                    endpoint.url("/pks/add"),
                    body=body,
                    content_type=b"application/x-www-form-urlencoded",
                    timeout=self.timeout,
                )
            except Exception as e:
                errors.append(f"{endpoint}: {_why(e)}")
                continue
            text = reply.body.decode("utf-8", "replace").strip()[:300]
            return endpoint, reply.code, text
        raise LookupFailed("; ".join(errors))


class LookupFailed(Exception):
    """No key server gave a usable answer (the message says why for each)."""


def _why(error: BaseException) -> str:
    if isinstance(error, defer.TimeoutError | defer.CancelledError):
        return "timed out"
    reasons = getattr(error, "reasons", None)  # ResponseFailed and friends
    if reasons:
        return "; ".join(str(r.value) for r in reasons)[:200]
    return (str(error) or type(error).__name__)[:200]


def client_for(keys: KeysSection, reactor: Any) -> KeyClient:
    """The client of ``[keys] servers`` (and ``lookup_timeout``)."""
    return KeyClient(reactor, keys.servers, keys.lookup_timeout)


def lookup_for(keys: KeysSection, reactor: Any) -> Callable[[bytes], defer.Deferred[Any]]:
    """``lookup(node_id) -> Deferred[KeyRecord | None]`` for the trust policy."""
    return client_for(keys, reactor).lookup


__all__ = [
    "HKP_PORT",
    "Answer",
    "BodyTooLarge",
    "Endpoint",
    "KeyClient",
    "LookupFailed",
    "RecordError",
    "client_for",
    "http_request",
    "lookup_for",
    "parse_endpoint",
]
