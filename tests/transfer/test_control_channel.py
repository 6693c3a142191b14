"""The AMP control channel end to end in memory: the real ControlClient and
ControlServer over ``twisted.test.iosim`` (the TLS peer's certificate
given by the fake transport), the real ServingService and Session behind
them, on a Clock; the data port is a fake that keeps what was sent.

Each command's reply, each refusal answered as an AMP error (and counted),
and the SN -> CN messages (Listed, SessionEnded, SessionMoved) as the CN's
handlers see them; a list the CN missed, asked for again (GetList).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.test import iosim

from mcp2p.catalog import CatalogEntry
from mcp2p.core.wanted import RangeSet
from mcp2p.errors import ProtocolError
from mcp2p.transfer.control import (
    CHUNK,
    MAX_LISTS_PER_NOTICE,
    MORE_ENTRY,
    ChannelLimits,
    ControlClient,
    ControlServer,
    Drained,
    GetList,
    GetManifest,
    Joined,
    Listed,
    NotShared,
    Refused,
    ReportLoss,
    Subscribe,
    UnknownList,
    UnknownSubscription,
    Unsubscribe,
    UpdateWanted,
    listed_arguments,
)
from mcp2p.transfer.serving import ServingService
from mcp2p.trust.gate import TrustGate
from mcp2p.trust.keys import load_or_create, node_id_of
from mcp2p.trust.tls import certificate_for
from mcp2p.wire.manifest import decode_manifest, verify_manifest
from mcp2p.wire.merkle import hash_pieces, merkle_root
from mcp2p.wire.rtp import list_hash, list_notices, packet_digests
from tests.nodes import node_config
from tests.transfer.fakes import DataPort, subscribe_args

PIECE = 16 << 10
BLOCK = 1024


class Catalog:
    def __init__(self, *entries: CatalogEntry) -> None:
        self.entries = {e.content_id: e for e in entries}

    def get(self, content_id: bytes) -> CatalogEntry | None:
        return self.entries.get(content_id)


class TLSTransport(iosim.FakeTransport):
    """iosim's transport, after a TLS handshake with ``peer``."""

    def __init__(self, protocol: Any, is_server: bool, peer: Any) -> None:
        super().__init__(protocol, is_server)
        self._cert = x509.load_pem_x509_certificate(certificate_for(peer))

    def getPeerCertificate(self) -> Any:
        return self._cert


class Handler:
    """What Fetch's handler is told of a subscription: kept."""

    def __init__(self) -> None:
        self.received: list[tuple[int, int, bytes]] = []  # (first, count, list hash)
        self.ended: list[str] = []
        self.moved: list[str] = []
        self.dry: list[int] = []  # the sequence numbers of Drained

    def listed(self, first: int, count: int, digest: bytes) -> None:
        self.received.append((first, count, digest))

    def drained(self, seq: int) -> None:
        self.dry.append(seq)

    def session_ended(self, reason: str) -> None:
        self.ended.append(reason)

    def session_moved(self, group: str) -> None:
        self.moved.append(group)


def shared_file(tmp_path: Path, size: int, piece: int = PIECE) -> CatalogEntry:
    data = os.urandom(size)
    path = tmp_path / f"file{size}.bin"
    path.write_bytes(data)
    hashes = tuple(hash_pieces(data[i : i + piece] for i in range(0, size, piece)))
    return CatalogEntry(merkle_root(hashes), str(path), path.name, size, 0, 0, 0, piece, hashes)


class Channel:
    """One CN connected to the SN's ServingService over the control channel."""

    def __init__(self, service: ServingService, clock: Clock, cn: Any) -> None:
        self.server = ControlServer(
            service,
            service.counters,
            ChannelLimits.from_config(service.config),
            clock,
        )
        self.client = ControlClient()
        self.pump = iosim.connect(
            self.server,
            TLSTransport(self.server, True, cn),
            self.client,
            TLSTransport(self.client, False, service.identity),
            clock=clock,
        )
        # ``lost`` fires with the reason, a Failure (ConnectionDone): kept here
        # as Fetch does, so it is never an unhandled error.
        self.lost: list[Any] = []
        self.client.lost.addBoth(self.lost.append)

    def call(self, command: type[amp.Command], **kw: Any) -> Any:
        """The command's answer (a dict), or the exception it was answered with."""
        out: list[Any] = []
        d = self.client.callRemote(command, **kw)
        d.addCallbacks(out.append, lambda f: out.append(f.value))
        self.pump.flush()
        assert out, f"{command.__name__} was not answered"
        return out[0]


@pytest.fixture
def sn(tmp_path: Path) -> Any:
    clock = Clock()
    clock.advance(1000.0)
    config = node_config(
        tmp_path,
        1,
        1,
        serving={
            "block_length": str(BLOCK),
            "rate": "10M",
            "grace": "2",
            "ssm_pool": "232.1.2.0/24",
        },
    )
    small = shared_file(tmp_path, 5 * PIECE + 300)
    # Enough pieces for a manifest over one AMP value (32 bytes of hash each).
    big_pieces = CHUNK // 32 + 100
    hashes = tuple(bytes([i % 251]) * 32 for i in range(big_pieces))
    path = tmp_path / "sparse.bin"
    with path.open("wb") as f:
        f.truncate(big_pieces * 1024)
    big = CatalogEntry(
        merkle_root(hashes), str(path), "sparse.bin", big_pieces * 1024, 0, 0, 0, 1024, hashes
    )
    service = ServingService(
        clock,
        config.serving,
        config.node,
        load_or_create(tmp_path / "sn"),
        TrustGate.from_config(config, clock),
        Catalog(small, big),
        random.Random(5),
    )
    service.data_port = DataPort()
    made = {"service": service, "clock": clock, "small": small, "big": big, "tmp": tmp_path}
    yield made
    for session in service.live_sessions():
        session.end("test over")
    if service.checker is not None and service.checker.running:
        service.checker.stop()


def channel(sn: Any, name: str = "cn") -> Channel:
    return Channel(sn["service"], sn["clock"], load_or_create(sn["tmp"] / name))


def subscribe(ch: Channel, entry: CatalogEntry, **kw: Any) -> Any:
    return ch.call(Subscribe, **subscribe_args(entry, BLOCK, **kw))


# -- commands and their answers


def test_the_server_knows_the_peer_by_the_key_it_proved(sn: Any) -> None:
    cn = load_or_create(sn["tmp"] / "cn")
    ch = channel(sn)
    assert ch.server.peer_node_id == cn.node_id == node_id_of(ch.server.peer_public_key or b"")
    assert ch.client.peer_node_id == sn["service"].identity.node_id
    assert sn["service"].counters["connections"] == 1


@pytest.mark.parametrize("which", ["small", "big"])
def test_a_manifest_comes_in_chunks_and_verifies(sn: Any, which: str) -> None:
    entry = sn[which]
    ch = channel(sn)
    data = b""
    while True:
        part = ch.call(GetManifest, content_id=entry.content_id, offset=len(data))
        assert len(part["data"]) <= CHUNK
        data += part["data"]
        if len(data) >= part["total"]:
            break
    assert (which == "big") == (len(data) > CHUNK)  # the big one needed two values
    manifest = decode_manifest(data)
    verify_manifest(manifest, entry.content_id, sn["service"].identity.public_key)
    assert manifest.name == entry.name and manifest.size == entry.size


def test_a_manifest_offset_outside_it_is_a_protocol_error(sn: Any) -> None:
    ch = channel(sn)
    for offset in (-1, 10**9):
        error = ch.call(GetManifest, content_id=sn["small"].content_id, offset=offset)
        assert isinstance(error, ProtocolError) and "outside" in str(error)
    assert sn["service"].counters["bad_commands"] == 2
    assert not ch.client.transport.disconnecting  # an error answered, the channel kept


def test_asking_for_content_the_sn_lacks_is_answered_not_shared(sn: Any) -> None:
    ch = channel(sn)
    assert isinstance(ch.call(GetManifest, content_id=b"\x01" * 32, offset=0), NotShared)
    assert isinstance(subscribe(ch, sn["small"], content_id=b"\x02" * 32), NotShared)
    assert not ch.client.transport.disconnecting


def test_asking_for_content_the_sn_lacks_is_not_counted_as_a_bad_command(sn: Any) -> None:
    ch = channel(sn)
    ch.call(GetManifest, content_id=b"\x01" * 32, offset=0)
    subscribe(ch, sn["small"], content_id=b"\x02" * 32)
    assert sn["service"].counters["bad_commands"] == 0


@pytest.mark.parametrize(
    "change, error, words",
    [
        ({"mode": "broadcast"}, Refused, "mode must be"),
        ({"mode": "unicast", "port": 0}, Refused, "UDP port"),
        ({"mode": "unicast", "port": 70000}, Refused, "UDP port"),
        ({"code": "nope"}, Refused, "no block code"),
        ({"rate": -5}, Refused, "rate must be"),
        ({"family": 5}, Refused, "family must be 4 or 6"),
        ({"lists": 0}, Refused, "lists must be at least 1"),
        ({"family": 6}, Refused, "IPv4 only"),
        ({"wanted": b"\xff\xff"}, ProtocolError, ""),
        ({"wanted": RangeSet([(0, 10**6)]).encode()}, ProtocolError, ""),  # past the last unit
    ],
)
def test_a_bad_subscribe_is_answered_with_an_error_and_counted(
    sn: Any, change: dict[str, Any], error: type[Exception], words: str
) -> None:
    ch = channel(sn)
    answer = subscribe(ch, sn["small"], **change)
    assert isinstance(answer, error) and words in str(answer)
    service = sn["service"]
    assert service.counters["bad_commands"] == 1
    assert not service.subscriptions and not service.live_sessions()
    assert not ch.client.transport.disconnecting
    # The channel still works.
    assert isinstance(subscribe(ch, sn["small"]), dict)


def test_subscribe_then_lists_then_packets_that_match_them(sn: Any) -> None:
    service, clock, entry = sn["service"], sn["clock"], sn["small"]
    ch = channel(sn)
    reply = subscribe(ch, entry)
    assert reply["group"].startswith("232.1.2.") and reply["code"] == "plain"
    assert reply["source"] == service.interface
    assert reply["block_length"] == BLOCK and reply["rate"] == 10_000_000
    handler = Handler()
    ch.client.handlers[reply["subscription"]] = handler
    for _ in range(100):
        clock.advance(0.01)
        ch.pump.flush()
    port = service.data_port
    sent = port.sent
    units = -(-entry.size // BLOCK)
    assert len(sent) >= units  # the whole file went out (and nothing is lost here)
    assert {addr for _, addr in sent + port.lists} == {(reply["group"], reply["port"])}
    # Every datagram was in a list the channel named by its hash, in order.
    lists = {list_hash(data): data for data, _ in port.lists}
    notices = [n for _, _, digest in handler.received for n in list_notices(lists[digest])]
    digests = packet_digests([data for data, _ in sent])
    assert notices[: len(sent)] == list(enumerate(digests))
    assert [first for first, _, _ in handler.received] == [
        n[0][0] for n in map(list_notices, lists.values())
    ]
    # A list the CN missed, asked for: the same packet; one the SN no longer keeps: refused.
    first, _, digest = handler.received[0]
    answer = ch.call(GetList, subscription=reply["subscription"], first=first)
    assert list_hash(answer["list"]) == digest
    assert service.counters["lists_resent"] == 1
    refused = ch.call(GetList, subscription=reply["subscription"], first=first + 1)
    assert isinstance(refused, UnknownList)
    assert service.counters["lists_unknown"] == 1 and service.counters["bad_commands"] == 0


def test_the_client_routes_lists_only_to_its_subscriptions(sn: Any) -> None:
    ch = channel(sn)
    handler = Handler()
    ch.client.handlers[7] = handler
    ch.server.send_lists(7, [(1, 2, b"a" * 16)])
    ch.server.send_lists(8, [(3, 1, b"c" * 16)])  # nobody's: dropped
    ch.server.session_ended(7, "nothing wanted")
    ch.server.session_moved(7, "239.9.9.9")
    ch.server.send_drained(7, 41)
    ch.server.send_drained(8, 42)
    ch.pump.flush()
    assert handler.received == [(1, 2, b"a" * 16)]
    assert handler.ended == ["nothing wanted"] and handler.moved == ["239.9.9.9"]
    assert handler.dry == [41]


@pytest.mark.parametrize("asked, kept", [(None, 1), (1, 1), (3, 3), (10**9, MAX_LISTS_PER_NOTICE)])
def test_a_subscriber_gets_as_many_lists_per_notice_as_it_asked_within_the_most(
    sn: Any, asked: int | None, kept: int
) -> None:
    ch = channel(sn)
    extra = {} if asked is None else {"lists": asked}
    reply = subscribe(ch, sn["small"], **extra)
    assert sn["service"].subscriptions[reply["subscription"]].lists == kept


@pytest.mark.parametrize("asked", [None, False, True])
def test_a_subscriber_is_told_when_its_session_runs_dry_only_if_it_asked(
    sn: Any, asked: bool | None
) -> None:
    """A CN that did not ask (an older one) is never sent Drained: it would
    drop the channel on a command it does not know."""
    service, clock, entry = sn["service"], sn["clock"], sn["small"]
    ch = channel(sn)
    extra = {} if asked is None else {"drained": asked}
    sub = subscribe(ch, entry, wanted=RangeSet([(0, 2)]).encode(), **extra)["subscription"]
    ch.client.handlers[sub] = handler = Handler()
    for _ in range(40):  # the two blocks go, then the session idles
        clock.advance(0.05)
        ch.pump.flush()
    assert service.live_sessions()[0].state == "IDLE" and not ch.lost
    assert handler.dry == ([1] if asked else [])


def boxes_received(ch: Channel) -> list[dict[bytes, bytes]]:
    """The boxes the CN's end receives from now on (as dicts), in order."""
    boxes: list[dict[bytes, bytes]] = []
    received = ch.client.ampBoxReceived

    def counted(box: Any) -> None:
        boxes.append(dict(box))
        received(box)

    ch.client.ampBoxReceived = counted  # type: ignore[method-assign]
    return boxes


def test_several_lists_go_in_one_listed_and_arrive_in_order(sn: Any) -> None:
    ch = channel(sn)
    ch.client.handlers[7] = handler = Handler()
    lists = [(10 * i, 5, bytes([i]) * 16) for i in range(MAX_LISTS_PER_NOTICE)]
    boxes = boxes_received(ch)
    ch.server.send_lists(7, lists)
    ch.pump.flush()
    assert handler.received == lists and len(boxes) == 1
    # the box callRemote(Listed, ...) would have made
    made = Listed.makeArguments(listed_arguments(7, lists), ch.server)
    made[b"_command"] = b"Listed"
    assert boxes == [dict(made)]


def test_one_list_goes_without_more(sn: Any) -> None:
    ch = channel(sn)
    ch.client.handlers[7] = handler = Handler()
    last = ((1 << 32) - 1, 175, b"z" * 16)
    boxes = boxes_received(ch)
    ch.server.send_lists(7, [last])
    ch.server.send_lists(7, [])  # nothing to say: nothing sent
    ch.pump.flush()
    assert handler.received == [last] and len(boxes) == 1 and b"more" not in boxes[0]


@pytest.mark.parametrize(
    "more",
    [
        b"",  # an empty 'more'
        MORE_ENTRY.pack(1, 1, b"x" * 16)[:-1],  # not whole entries
        MORE_ENTRY.pack(1, 1, b"x" * 16) * MAX_LISTS_PER_NOTICE,  # one list too many
        MORE_ENTRY.pack(1, 0, b"x" * 16),  # an empty list
        MORE_ENTRY.pack(1, 65535, b"x" * 16),  # more packets than a list holds
    ],
)
def test_a_malformed_more_drops_the_channel_on_the_cn_and_no_list_is_taken(
    sn: Any, amp_log: Any, more: bytes
) -> None:
    ch = channel(sn)
    ch.client.handlers[1] = handler = Handler()
    ch.server.callRemote(Listed, subscription=1, first=0, count=1, hash=b"h" * 16, more=more)
    ch.pump.flush()
    assert ch.lost and handler.received == []
    assert not [e for e in amp_log if e.get("log_failure") is not None]


def _listed_box(**fields: bytes) -> amp.AmpBox:
    box = amp.AmpBox(_command=b"Listed", subscription=b"1", first=b"10", count=b"5", hash=b"h" * 16)
    box.update({k.encode(): v for k, v in fields.items()})
    return box


def test_a_listed_goes_to_its_handler_past_amps_dispatch(sn: Any, monkeypatch: Any) -> None:
    """The hot path (hundreds a second): no Deferred, no argument objects."""
    ch = channel(sn)
    ch.client.handlers[1] = handler = Handler()
    dispatched: list[Any] = []
    monkeypatch.setattr(ch.client, "dispatchCommand", lambda box: dispatched.append(box) or None)
    ch.server.callRemote(Listed, subscription=1, first=10, count=5, hash=b"h" * 16)
    ch.server.sendBox(_listed_box(more=MORE_ENTRY.pack(15, 3, b"i" * 16)))
    ch.pump.flush()
    assert handler.received == [(10, 5, b"h" * 16), (10, 5, b"h" * 16), (15, 3, b"i" * 16)]
    assert dispatched == [] and not ch.lost


@pytest.mark.parametrize(
    "fields, taken",
    [
        ({"_ask": b"7"}, True),  # it wants an answer: AMP's path answers it
        ({"unknown": b"x"}, True),  # a key more: AMP's path ignores it
        ({"first": b"ten"}, False),  # not a number: AMP's path drops the channel
        ({"count": b"0"}, False),  # listed refuses it: so does AMP's path
    ],
)
def test_a_listed_out_of_the_ordinary_takes_amps_own_path(
    sn: Any, amp_log: Any, monkeypatch: Any, fields: dict[str, bytes], taken: bool
) -> None:
    ch = channel(sn)
    ch.client.handlers[1] = handler = Handler()
    dispatched: list[Any] = []
    dispatch = ch.client.dispatchCommand

    def counted(box: Any) -> Any:
        dispatched.append(box)
        return dispatch(box)

    monkeypatch.setattr(ch.client, "dispatchCommand", counted)
    answers: list[Any] = []
    monkeypatch.setattr(ch.server, "_answerReceived", answers.append)
    ch.server.sendBox(_listed_box(**fields))
    ch.pump.flush()
    assert len(dispatched) == 1
    assert handler.received == ([(10, 5, b"h" * 16)] if taken else [])
    assert ch.lost is not taken
    assert [a.get(b"_answer") for a in answers] == ([b"7"] if "_ask" in fields else [])


def test_a_listed_without_a_required_key_drops_the_channel(sn: Any, amp_log: Any) -> None:
    ch = channel(sn)
    ch.client.handlers[1] = handler = Handler()
    box = _listed_box()
    del box[b"hash"]
    ch.server.sendBox(box)
    ch.pump.flush()
    assert ch.lost and handler.received == []


def test_update_wanted_and_report_loss_on_ones_own_subscription(sn: Any) -> None:
    service, entry = sn["service"], sn["small"]
    ch = channel(sn)
    sub = subscribe(ch, entry)["subscription"]
    assert (
        ch.call(UpdateWanted, subscription=sub, wanted=RangeSet([(0, 3)]).encode(), replace=True)
        == {}
    )
    session = service.subscriptions[sub].session
    assert session.scheduler.needed_by(sub) == RangeSet([(0, 3)])
    answer = ch.call(ReportLoss, subscription=sub, lost=b"", received=0)
    assert answer == {"rate": 10_000_000}
    error = ch.call(ReportLoss, subscription=sub, lost=b"", received=-1)
    assert isinstance(error, ProtocolError) and "received must be" in str(error)


def test_joined_on_ones_own_subscription_marks_it_in_its_group(sn: Any) -> None:
    service, entry = sn["service"], sn["small"]
    ch = channel(sn)
    sub = subscribe(ch, entry)["subscription"]
    assert not service.subscriptions[sub].joined
    assert ch.call(Joined, subscription=sub) == {}
    assert service.subscriptions[sub].joined
    assert ch.call(Joined, subscription=sub) == {}  # again: no harm


def test_a_subscription_is_only_its_owners(sn: Any) -> None:
    service, entry = sn["service"], sn["small"]
    owner, other = channel(sn), channel(sn, "other")
    sub = subscribe(owner, entry)["subscription"]
    for command, kw in (
        (UpdateWanted, {"wanted": b"", "replace": True}),
        (ReportLoss, {"lost": b"", "received": 1}),
        (Joined, {}),
        (Unsubscribe, {}),
    ):
        assert isinstance(other.call(command, subscription=sub, **kw), UnknownSubscription)
        assert isinstance(owner.call(command, subscription=999, **kw), UnknownSubscription)
    assert sub in service.subscriptions
    assert service.counters["bad_commands"] == 8


def test_unsubscribe_ends_a_session_left_without_subscribers(sn: Any) -> None:
    service, entry = sn["service"], sn["small"]
    first, second = channel(sn), channel(sn, "second")
    one = subscribe(first, entry)["subscription"]
    two = subscribe(second, entry)["subscription"]
    session = service.subscriptions[one].session
    assert service.subscriptions[two].session is session  # one multicast session, shared
    assert first.call(Unsubscribe, subscription=one) == {}
    assert session.state != "ENDED" and one not in service.subscriptions
    assert isinstance(first.call(Unsubscribe, subscription=one), UnknownSubscription)
    assert second.call(Unsubscribe, subscription=two) == {}
    assert session.state == "ENDED" and not service.live_sessions()
    assert not service.sessions  # forgotten: the next subscriber starts a new one


def test_a_session_with_nothing_wanted_ends_after_grace_and_says_so(sn: Any) -> None:
    service, clock, entry = sn["service"], sn["clock"], sn["small"]
    ch = channel(sn)
    sub = subscribe(ch, entry, wanted=RangeSet([(0, 2)]).encode())["subscription"]
    handler = Handler()
    ch.client.handlers[sub] = handler
    for _ in range(40):  # the two blocks go, then the session idles
        clock.advance(0.05)
        ch.pump.flush()
    assert handler.ended == [] and service.live_sessions()[0].state == "IDLE"
    for _ in range(70):  # [serving] grace = 5
        clock.advance(0.05)
        ch.pump.flush()
    assert handler.ended == ["nothing wanted"]
    assert sub not in service.subscriptions and not service.live_sessions()
    assert service.session_totals()["packets"] == 2


def test_a_lost_channel_ends_its_subscriptions(sn: Any) -> None:
    service, entry = sn["service"], sn["small"]
    ch, stays = channel(sn), channel(sn, "stays")
    subscribe(ch, entry)
    subscribe(ch, sn["big"], wanted=b"")
    kept = subscribe(stays, entry)["subscription"]
    server_side = ch.server.transport
    ch.client.transport.loseConnection()
    ch.pump.flush()
    assert ch.lost and server_side.disconnected
    assert list(service.subscriptions) == [kept]
    assert [s.subscribers.keys() for s in service.live_sessions()] == [{kept}]


@pytest.fixture
def amp_log(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What AMP itself logs, kept here instead of reaching the global log."""
    from twisted.logger import Logger

    events: list[dict[str, Any]] = []
    monkeypatch.setattr(amp, "_log", Logger(observer=events.append))
    return events


@pytest.mark.parametrize("seq", [-1, 1 << 32])
def test_a_drained_outside_32_bits_drops_the_channel_on_the_cn(
    sn: Any, amp_log: Any, seq: int
) -> None:
    ch = channel(sn)
    ch.client.handlers[1] = handler = Handler()
    ch.server.callRemote(Drained, subscription=1, seq=seq)
    ch.pump.flush()
    assert ch.lost and handler.dry == []
    assert not [e for e in amp_log if e.get("log_failure") is not None]


@pytest.mark.parametrize(
    "first,count,digest",
    [(0, 1, b"x" * 13), (-1, 1, b"x" * 16), (1 << 32, 1, b"x" * 16), (0, 0, b"x" * 16)],
)
def test_a_malformed_list_hash_drops_the_channel_on_the_cn(
    sn: Any, amp_log: Any, first: int, count: int, digest: bytes
) -> None:
    """A hash of the wrong length, a number outside 32 bits, an empty list:
    the CN can no longer trust that channel's lists; it drops it, in one
    warning, with no unhandled error logged."""
    ch = channel(sn)
    ch.client.handlers[1] = handler = Handler()
    ch.server.callRemote(Listed, subscription=1, first=first, count=count, hash=digest)
    ch.pump.flush()
    assert ch.lost and handler.received == []
    assert not [e for e in amp_log if e.get("log_failure") is not None]
