"""The control channel: AMP commands over mutual TLS (DESIGN.md 5.3).

CN -> SN: GetManifest (chunked: AMP values are at most 64 KiB), Subscribe,
UpdateWanted, ReportLoss, GetList, Unsubscribe. SN -> CN: Listed (the hash
of a digest list the SN sent on the data path: the list, once trusted this
way, authenticates the packets it covers; wire.rtp), SessionMoved and
SessionEnded. A CN that did not get a list in time asks for it (GetList).
A CN that says so in its Subscribe (``lists``) takes up to that many lists'
hashes in one Listed (``more``): the SN plans several lists at once, and
one box, TLS record and TCP segment carry them all: two lists cost 210 bytes
on the wire where two Listed cost 360 (those were 0.65% of the file per CN
at 95 Mbit/s).

``ControlServer`` only translates commands into calls on the serving side
(an object with the methods of ``ServingSide`` below); ``ControlClient``
hands list hashes to the handler registered for a subscription. A peer that
sends garbage or too much is disconnected and counted.

Budgets per channel (``ChannelLimits``, from [serving]): a box larger than
``max_box`` bytes or with more than ``MAX_KEYS`` keys closes the channel
before it is buffered further; replies go out with back-pressure (the
server is the transport's streaming producer: once the transport holds
more than its buffer, no further request is read, so pipelined requests
wait in the peer's socket, not in our memory); a peer that leaves its
replies unread for ``write_timeout`` seconds, or lets more than
``max_queued`` bytes pile up meanwhile (list hashes keep coming), is
disconnected; a channel silent for ``idle_timeout`` seconds is closed.
Each refusal is counted and logged in summary (``Summary``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Protocol, cast

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.protocols.policies import TimeoutMixin

from mcp2p.errors import ProtocolError
from mcp2p.logsummary import summary_level
from mcp2p.wire.rtp import DIGEST_LEN, LIST_HASH_LEN, MAX_PAYLOAD

_log = Logger()

CHUNK = 60000  # bytes per AMP value, under AMP's 64 KiB limit
SEQ_MASK = 0xFFFFFFFF  # lists name 32-bit (extended) sequence numbers
MAX_LIST = MAX_PAYLOAD // DIGEST_LEN  # packets one digest list covers at most
# Lists one Listed may name: the first in its own arguments, the others in ``more``.
MAX_LISTS_PER_NOTICE = 8
MORE_ENTRY = struct.Struct("!IH16s")  # one more list: first, count, hash
MAX_KEYS = 32  # keys in one box; the largest command (Subscribe) has 11 with AMP's own


@dataclass(frozen=True)
class ChannelLimits:
    """What one peer may cost the SN on its control channel ([serving] options)."""

    max_box: int = 128 << 10  # bytes of one box, keys and values
    max_queued: int = 8 << 20  # bytes written while the transport's buffer was full
    write_timeout: float = 10.0  # seconds the transport's buffer may stay full
    idle_timeout: float = 120.0  # seconds without a byte from the peer

    @classmethod
    def from_config(cls, serving: Any) -> ChannelLimits:
        return cls(
            max_box=serving.max_box,
            max_queued=serving.max_queued,
            write_timeout=serving.write_timeout,
            idle_timeout=serving.idle_timeout,
        )


class Summary:
    """Refusals of one kind counted, and logged on the 1st, 2nd, 4th, 8th...

    so a flood of them writes a few lines, each saying how many so far.
    """

    def __init__(self, counters: dict[str, int], key: str) -> None:
        self.counters = counters
        self.key = key
        counters.setdefault(key, 0)

    def __call__(self, format: str, **fields: Any) -> None:
        self.counters[self.key] = n = self.counters.get(self.key, 0) + 1
        _log.emit(
            summary_level(n),
            format + " ({count} so far, counted in {key})",
            count=n,
            key=self.key,
            **fields,
        )


class NotShared(Exception):
    """The SN does not share that content."""


class Refused(Exception):
    """The request is well-formed but cannot be granted (unknown code, mode...)."""


class UnknownSubscription(Exception):
    pass


class UnknownList(Exception):
    """The SN no longer keeps that digest list (or never sent it)."""


_ERRORS: dict[type[Exception], bytes] = {
    NotShared: b"NOT_SHARED",
    Refused: b"REFUSED",
    UnknownSubscription: b"UNKNOWN_SUBSCRIPTION",
    UnknownList: b"UNKNOWN_LIST",
    ProtocolError: b"PROTOCOL_ERROR",
}


class GetManifest(amp.Command):
    arguments = [(b"content_id", amp.String()), (b"offset", amp.Integer())]
    response = [(b"data", amp.String()), (b"total", amp.Integer())]
    errors = _ERRORS


class Subscribe(amp.Command):
    arguments = [
        (b"content_id", amp.String()),
        (b"mode", amp.Unicode()),  # "multicast" or "unicast"
        (b"port", amp.Integer()),  # the CN's UDP port for unicast, 0 for multicast
        (b"rate", amp.Integer()),  # wanted bit/s, 0: the SN's default
        (b"code", amp.Unicode()),  # block code plugin name
        (b"wanted", amp.String()),  # RangeSet of units, encoded
        (b"more", amp.Boolean()),  # more of the wanted set follows in UpdateWanted
        # IP version (4 or 6) of the group the CN can receive multicast on; absent: 4.
        (b"family", amp.Integer(optional=True)),
        # The most lists the CN takes in one Listed (absent: 1, no ``more``).
        (b"lists", amp.Integer(optional=True)),
        # The CN takes Drained (absent: it is never sent one).
        (b"drained", amp.Boolean(optional=True)),
        # The CN is in a group already (``joined_token`` of the one it was offered):
        # if it is the session's, the CN counts as joined now (absent: once it says Joined).
        (b"joined", amp.Unicode(optional=True)),
    ]
    response = [
        (b"subscription", amp.Integer()),
        (b"session_id", amp.Integer()),
        (b"group", amp.Unicode()),  # "" for unicast
        (b"source", amp.Unicode()),  # "" for ASM or unicast
        (b"port", amp.Integer()),
        (b"block_length", amp.Integer()),
        (b"rate", amp.Integer()),
        (b"code", amp.Unicode()),
    ]
    errors = _ERRORS


class UpdateWanted(amp.Command):
    """Units still wanted: the SN stops sending the others to this CN."""

    arguments = [
        (b"subscription", amp.Integer()),
        (b"wanted", amp.String()),
        (b"replace", amp.Boolean()),  # False: add to what was sent before
    ]
    errors = _ERRORS


class Joined(amp.Command):
    """The CN joined its subscription's group: the session's first packet need
    not wait JOIN_DELAY for it (transfer.session). A CN that joined the group
    it was offered before subscribing says so in its Subscribe (``joined``),
    and its session need not wait for this round trip."""

    arguments = [(b"subscription", amp.Integer())]
    errors = _ERRORS


def joined_token(group: str, source: str, port: int) -> str:
    """What Subscribe's ``joined`` says of a group the CN is in: the group, the
    source ("" for ASM) and the UDP port, as a subscription's reply gives them.
    The SN only compares it with its session's: it is never parsed."""
    return f"{group} {source} {port}"


class ReportLoss(amp.Command):
    """Packets covered by digest lists that never arrived (or failed checks)."""

    arguments = [
        (b"subscription", amp.Integer()),
        (b"lost", amp.String()),  # RangeSet of extended sequence numbers
        (b"received", amp.Integer()),  # packets received since the last report
    ]
    response = [(b"rate", amp.Integer())]
    errors = _ERRORS


class Unsubscribe(amp.Command):
    arguments = [(b"subscription", amp.Integer())]
    errors = _ERRORS


class Listed(amp.Command):
    """The SN sent a digest list on the data path: the 32-bit sequence number
    of the first packet it covers, how many it covers, and the list packet's
    hash (wire.rtp)."""

    arguments = [
        (b"subscription", amp.Integer()),
        (b"first", amp.Integer()),
        (b"count", amp.Integer()),
        (b"hash", amp.String()),
        # Further lists (MORE_ENTRY each), only to a CN that subscribed with lists > 1.
        (b"more", amp.String(optional=True)),
    ]
    requiresAnswer = False


def listed_arguments(subscription: int, lists: list[tuple[int, int, bytes]]) -> dict[str, Any]:
    """A Listed's arguments for ``lists`` (first, count, hash): the first in
    its own arguments, any others packed in ``more``."""
    (first, count, hash), rest = lists[0], lists[1:]
    args: dict[str, Any] = {
        "subscription": subscription,
        "first": first,
        "count": count,
        "hash": hash,
    }
    if rest:
        args["more"] = b"".join(MORE_ENTRY.pack(*entry) for entry in rest)
    return args


class GetList(amp.Command):
    """The digest list packet that starts at ``first``, for a CN that missed it."""

    arguments = [(b"subscription", amp.Integer()), (b"first", amp.Integer())]
    response = [(b"list", amp.String())]
    errors = _ERRORS


class Drained(amp.Command):
    """The session sent all it had to send, ``seq`` (32 bits) last: a packet
    listed up to it that has not come was lost, with no later packet to show
    the gap. Sent after the packet, on a path no faster, each time the
    session runs dry, to CNs whose Subscribe asked for it."""

    arguments = [(b"subscription", amp.Integer()), (b"seq", amp.Integer())]
    requiresAnswer = False


class SessionEnded(amp.Command):
    arguments = [(b"subscription", amp.Integer()), (b"reason", amp.Unicode())]
    requiresAnswer = False


class SessionMoved(amp.Command):
    """An ASM session heard another session on its group and moved to a new one."""

    arguments = [(b"subscription", amp.Integer()), (b"group", amp.Unicode())]
    requiresAnswer = False


class ServingSide(Protocol):
    """What ControlServer needs from the SN (implemented by ServingService)."""

    def manifest_bytes(self, content_id: bytes) -> bytes: ...

    def subscribe(
        self,
        client: ControlServer,
        content_id: bytes,
        mode: str,
        port: int,
        rate: int,
        code: str,
        wanted: bytes,
        more: bool,
        family: int | None = None,
        lists: int | None = None,
        drained: bool | None = None,
        joined: str | None = None,
    ) -> Any: ...

    def update_wanted(
        self, client: ControlServer, subscription: int, wanted: bytes, replace: bool
    ) -> None: ...

    def joined(self, client: ControlServer, subscription: int) -> None: ...

    def report_loss(
        self, client: ControlServer, subscription: int, lost: bytes, received: int
    ) -> int: ...

    def digest_list(self, client: ControlServer, subscription: int, first: int) -> bytes: ...

    def unsubscribe(self, client: ControlServer, subscription: int) -> None: ...

    def disconnected(self, client: ControlServer) -> None: ...


class ControlServer(amp.AMP, TimeoutMixin):
    """The SN's end of one control channel, within its ``ChannelLimits``."""

    def __init__(
        self,
        side: ServingSide,
        counters: dict[str, int],
        limits: ChannelLimits | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__()
        self.side = side
        self.counters = counters
        self.limits = limits or ChannelLimits()
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self.clock: IReactorTime = clock
        self.callLater = clock.callLater  # type: ignore[method-assign,assignment]  # TimeoutMixin's clock
        self.peer_node_id: bytes | None = None
        self.peer_public_key: bytes | None = None
        self.box_bytes = 0  # of the box being received
        self.box_keys = 0
        self.write_paused = False  # the transport's buffer is full
        self.queued = 0  # bytes written since it filled
        self._stall: Any = None  # the write_timeout call
        self._closing = False
        for key in ("box_too_large", "write_stalled", "idle_closed"):
            counters.setdefault(key, 0)

    def connectionMade(self) -> None:
        # Runs only once the TLS peer proved its key (mcp2p.trust.tls.VerifyingFactory).
        from mcp2p.trust.tls import peer_identity

        super().connectionMade()
        self.counters["connections"] += 1
        self.peer_node_id, self.peer_public_key = peer_identity(self.transport)
        _no_delay(self.transport)
        # Back-pressure: the transport pauses us when its buffer fills.
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.setTimeout(self.limits.idle_timeout)

    # -- budgets

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if data:
            self.resetTimeout()
        super().dataReceived(data)

    def stringReceived(self, string: bytes) -> None:
        if self._closing:
            return
        self.box_bytes += len(string) + 2
        self.box_keys += self.state != "value"
        if self.box_bytes > self.limits.max_box or self.box_keys > MAX_KEYS + 1:
            Summary(self.counters, "box_too_large")(
                "control peer {peer} sent a box over {limit} bytes or {keys} keys: closed",
                peer=self._peer(),
                limit=self.limits.max_box,
                keys=MAX_KEYS,
            )
            self._close()
            return
        super().stringReceived(string)
        if self.state == "init":  # the box is complete
            self.box_bytes = self.box_keys = 0

    def lengthLimitExceeded(self, length: int) -> None:
        Summary(self.counters, "box_too_large")(
            "control peer {peer} sent a key or value of {length} bytes: closed",
            peer=self._peer(),
            length=length,
        )
        self._close()

    def unhandledError(self, failure: Any) -> None:
        _log.failure("control channel with {peer} failed", failure, peer=self._peer())
        self._close()

    def pauseProducing(self) -> None:
        """The transport holds more than its buffer: read no more requests."""
        super().pauseProducing()
        if not self.write_paused:
            self.write_paused = True
            self.queued = 0
            self._stall = self.clock.callLater(self.limits.write_timeout, self._stalled)

    def resumeProducing(self) -> None:
        self.write_paused = False
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        self._stall = None
        if not self._closing:
            super().resumeProducing()

    def sendBox(self, box: Any) -> None:
        if self._closing:
            return
        if self.write_paused:
            self.queued += len(box.serialize())
            if self.queued > self.limits.max_queued:
                self._stalled()
                return
        super().sendBox(box)

    def _stalled(self) -> None:
        self._stall = None
        Summary(self.counters, "write_stalled")(
            "control peer {peer} left its replies unread ({queued} bytes queued past the "
            "buffer, at most {limit}, for at most {timeout}s): closed",
            peer=self._peer(),
            queued=self.queued,
            limit=self.limits.max_queued,
            timeout=self.limits.write_timeout,
        )
        self._close()

    def timeoutConnection(self) -> None:
        Summary(self.counters, "idle_closed")(
            "control peer {peer} silent for {timeout}s: closed",
            peer=self._peer(),
            timeout=self.limits.idle_timeout,
        )
        self._close()

    def _close(self) -> None:
        """Drop the peer now: nothing more is read from it nor queued for it."""
        if self._closing:
            return
        self._closing = True
        self.paused = True  # the box parser stops in the middle of a read
        self._currentBox = None
        self._unprocessed = b""
        transport: Any = self.transport
        if transport is None:
            return
        transport.unregisterProducer()  # TLS would wait for it before closing
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            transport.loseConnection()

    @GetManifest.responder
    def get_manifest(self, content_id: bytes, offset: int) -> dict[str, Any]:
        data = self.side.manifest_bytes(content_id)
        if not 0 <= offset <= len(data):
            raise ProtocolError(f"manifest offset {offset} outside 0..{len(data)}")
        return {"data": data[offset : offset + CHUNK], "total": len(data)}

    @Subscribe.responder
    def subscribe(self, **kw: Any) -> dict[str, Any]:
        return self.side.subscribe(self, **kw)

    @UpdateWanted.responder
    def update_wanted(self, subscription: int, wanted: bytes, replace: bool) -> dict[str, Any]:
        self.side.update_wanted(self, subscription, wanted, replace)
        return {}

    @Joined.responder
    def joined(self, subscription: int) -> dict[str, Any]:
        self.side.joined(self, subscription)
        return {}

    @ReportLoss.responder
    def report_loss(self, subscription: int, lost: bytes, received: int) -> dict[str, Any]:
        return {"rate": self.side.report_loss(self, subscription, lost, received)}

    @Unsubscribe.responder
    def unsubscribe(self, subscription: int) -> dict[str, Any]:
        self.side.unsubscribe(self, subscription)
        return {}

    @GetList.responder
    def get_list(self, subscription: int, first: int) -> dict[str, Any]:
        return {"list": self.side.digest_list(self, subscription, first)}

    def send_lists(self, subscription: int, lists: list[tuple[int, int, bytes]]) -> None:
        """The hashes of digest lists ``(first, count, hash)``: the lists for
        ``count`` packets from ``first``, in one Listed (the caller sends no
        more at once than the subscriber's Subscribe allowed).

        Written as AMP's ``callRemoteString``, its way for a hot message, with
        the values Listed's arguments would make: one goes to every
        subscriber with every plan, and ``callRemote``'s argument objects
        cost 17 µs of the SN's CPU a Listed, this 7."""
        if lists:
            values = {  # as amp.Integer writes an int; the hashes are bytes already
                k: v if isinstance(v, bytes) else b"%d" % v
                for k, v in listed_arguments(subscription, lists).items()
            }
            self.callRemoteString(b"Listed", False, **values)

    def send_drained(self, subscription: int, seq: int) -> None:
        """The session ran dry, ``seq`` its last packet (see Drained)."""
        self.callRemote(Drained, subscription=subscription, seq=seq)

    def session_ended(self, subscription: int, reason: str) -> None:
        self.callRemote(SessionEnded, subscription=subscription, reason=reason)

    def session_moved(self, subscription: int, group: str) -> None:
        self.callRemote(SessionMoved, subscription=subscription, group=group)

    def dispatchCommand(self, box: Any) -> Any:
        d = super().dispatchCommand(box)
        return d.addErrback(self._bad_command)

    def _bad_command(self, failure: Any) -> Any:
        # AMP hands a responder's error on wrapped (RemoteAmpError, the
        # original failure its .local): asking for what we lack is no offence.
        # A list the SN no longer keeps is a slow CN's, not an offence either.
        local = getattr(failure.value, "local", None)
        innocent = failure.check(NotShared, UnknownList) is not None or (
            local is not None and local.check(NotShared, UnknownList) is not None
        )
        if not innocent:
            self.counters["bad_commands"] += 1
            _log.warn(
                "malformed control command from {peer}: {error}",
                peer=self._peer(),
                error=failure.getErrorMessage(),
            )
        return failure

    def _peer(self) -> str:
        try:
            return str(self.transport.getPeer())  # type: ignore[union-attr]
        except Exception:
            return "?"

    def connectionLost(self, reason: Any = None) -> None:
        self._closing = True
        self.setTimeout(None)
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        self._stall = None
        super().connectionLost(reason)
        self.side.disconnected(self)


def _no_delay(transport: Any) -> None:
    """TCP_NODELAY on a control channel: its messages are small and must not
    wait. With Nagle's algorithm a list hash waited for the ACK of the last
    one, which a CN that seldom writes delays (delayed ACK, up to 40 ms),
    and the CN held a fifth of its packets for their hashes (bench_cpu)."""
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        try:
            set_no_delay(True)
        except (OSError, AttributeError):  # not TCP after all (a test's transport)
            pass


def _peer_of(protocol: Any) -> str:
    try:
        return str(protocol.transport.getPeer())
    except Exception:
        return "?"


# The keys of a Listed as an SN sends it: no _ask, it takes no answer.
_LISTED_KEYS = frozenset({b"_command", b"subscription", b"first", b"count", b"hash", b"more"})


class ControlClient(amp.AMP):
    """The CN's end: commands out, list hashes in (routed to per-subscription handlers)."""

    def __init__(self) -> None:
        super().__init__()
        self.handlers: dict[int, Any] = {}
        self.lost: defer.Deferred[Any] = defer.Deferred()  # fires when the connection is lost
        self.peer_node_id: bytes | None = None

    def connectionMade(self) -> None:
        from mcp2p.trust.tls import peer_identity

        super().connectionMade()
        self.peer_node_id, _ = peer_identity(self.transport)
        _no_delay(self.transport)

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        """A Listed comes with every digest list, hundreds a second, and takes
        no answer: a well-formed one goes straight to ``listed``, past AMP's
        dispatch (argument objects, ``maybeDeferred``, a Deferred and its
        callbacks), which took as much of the CN's CPU as the rest of its
        control channel (bench_cpu's fetch: 5% of the CN's CPU). Its
        arguments are read as AMP's Integer and String read them. Anything
        else, or anything odd about it (a key more or less, a number that
        is none, a ProtocolError of ``listed``, which acts on nothing before
        it checked every list), takes AMP's own path, which answers or
        reports it as before."""
        if box.get(b"_command") == b"Listed" and box.keys() <= _LISTED_KEYS:
            try:
                subscription, first = int(box[b"subscription"]), int(box[b"first"])
                count, hash = int(box[b"count"]), box[b"hash"]
            except (KeyError, ValueError):
                pass
            else:
                try:
                    self.listed(subscription, first, count, hash, box.get(b"more"))
                    return
                except ProtocolError:
                    pass
        super().ampBoxReceived(box)

    @Listed.responder
    def listed(
        self, subscription: int, first: int, count: int, hash: bytes, more: bytes | None = None
    ) -> dict[str, Any]:
        lists = [(first, count, hash)]
        if more is not None:
            n, extra = divmod(len(more), MORE_ENTRY.size)
            if extra or not 0 < n < MAX_LISTS_PER_NOTICE:
                raise ProtocolError(
                    f"'more' of {len(more)} bytes is not 1 to {MAX_LISTS_PER_NOTICE - 1} lists"
                )
            lists += MORE_ENTRY.iter_unpack(more)
        for first, count, hash in lists:
            if (
                not 0 <= first <= SEQ_MASK
                or not 0 < count <= MAX_LIST
                or len(hash) != LIST_HASH_LEN
            ):
                raise ProtocolError(
                    f"a list of {count} packets from {first}, hash {len(hash)} bytes"
                )
        handler = self.handlers.get(subscription)
        if handler is not None:
            for first, count, hash in lists:
                handler.listed(first, count, hash)
        return {}

    @Drained.responder
    def drained(self, subscription: int, seq: int) -> dict[str, Any]:
        if not 0 <= seq <= SEQ_MASK:
            raise ProtocolError(f"Drained at sequence number {seq}")
        handler = self.handlers.get(subscription)
        if handler is not None:
            handler.drained(seq)
        return {}

    @SessionEnded.responder
    def session_ended(self, subscription: int, reason: str) -> dict[str, Any]:
        handler = self.handlers.get(subscription)
        if handler is not None:
            handler.session_ended(reason)
        return {}

    @SessionMoved.responder
    def session_moved(self, subscription: int, group: str) -> dict[str, Any]:
        handler = self.handlers.get(subscription)
        if handler is not None:
            handler.session_moved(group)
        return {}

    def unhandledError(self, failure: Any) -> None:
        """A command from the SN we cannot take (a malformed Listed): one line,
        and the channel is dropped (AMP's default logs it as a failure)."""
        _log.warn(
            "malformed control command from the SN {peer}: {error}; closing the channel",
            peer=_peer_of(self),
            error=failure.getErrorMessage(),
        )
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        if not self.lost.called:
            self.lost.callback(reason)
