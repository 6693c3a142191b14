"""Per-peer budgets on the SN's control channel (issue 12), on a Clock.

Each test is one attack of the issue's table against the real ControlServer
and ServingService; the transport is a StringTransport that behaves as
Twisted's TCP transport does with a streaming producer: it pauses the
producer once it holds more than ``bufferSize`` bytes, and resumes it when
drained. Today's figures (before the budgets) are in each docstring.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols import amp

from mcp2p.catalog import CatalogEntry
from mcp2p.core.wanted import RangeSet
from mcp2p.errors import ProtocolError
from mcp2p.transfer.control import (
    GetManifest,
    Subscribe,
    UpdateWanted,
)
from mcp2p.transfer.serving import MOVED, ServingService
from mcp2p.transfer.session import TICK
from mcp2p.trust.gate import TrustGate
from mcp2p.trust.keys import load_or_create
from mcp2p.trust.tls import certificate_for
from mcp2p.wire.merkle import merkle_root
from tests.nodes import node_config

MBIT = 1_000_000
PIECE = 1 << 20
BLOCK = 1400
BIG = 3 << 30  # a 3 GB sparse file: 2.3 million blocks


class Port:
    def __init__(self) -> None:
        self.packets = 0
        self.bytes = 0

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.packets += 1
        self.bytes += len(data)


class Catalog:
    def __init__(self, entry: Any) -> None:
        self.entry = entry

    def get(self, content_id: bytes) -> Any:
        return self.entry if content_id == self.entry.content_id else None


class TCPLike(StringTransport):
    """A transport holding what the peer has not read, as TCP's does."""

    bufferSize = 1 << 16

    def __init__(self, peer_identity: Any) -> None:
        super().__init__()
        self._cert = x509.load_pem_x509_certificate(certificate_for(peer_identity))
        self.paused = False
        self.aborted = False

    def getPeerCertificate(self) -> Any:
        return self._cert

    def write(self, data: bytes) -> None:
        super().write(data)
        if (
            self.producer is not None
            and not self.paused
            and len(self.io.getvalue()) > (self.bufferSize)
        ):
            self.paused = True
            self.producer.pauseProducing()

    def drain(self) -> bytes:
        data = self.value()
        self.clear()
        if self.paused and self.producer is not None:
            self.paused = False
            self.producer.resumeProducing()
        return data

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


def sparse(tmp_path: Path, size: int) -> str:
    path = tmp_path / "data.bin"
    with path.open("wb") as f:
        f.truncate(size)
    return str(path)


def make_serving(tmp_path: Path, size: int, **serving: str) -> Any:
    clock = Clock()
    clock.advance(1000.0)
    options = {"min_rate": "1M", "max_rate": "100M", "rate": "10M"}
    options.update(serving)
    config = node_config(tmp_path, 1, 1, serving=options)
    hashes = tuple(bytes([i % 256]) * 32 for i in range(-(-size // PIECE)))
    cid = merkle_root(hashes)
    entry = CatalogEntry(cid, sparse(tmp_path, size), "data.bin", size, 0, 0, 0, PIECE, hashes)
    identity = load_or_create(tmp_path / "sn")
    trust = TrustGate.from_config(config, clock)
    service = ServingService(
        clock, config.serving, config.node, identity, trust, Catalog(entry), random.Random(3)
    )
    service.data_port = Port()
    return service, clock, entry


@pytest.fixture
def made() -> Any:
    services: list[ServingService] = []
    yield services
    for service in services:
        for session in service.live_sessions():
            session.end("test over")
        if service.checker is not None and service.checker.running:
            service.checker.stop()


def connect(service: ServingService, clock: Clock, peer: Any) -> tuple[Any, TCPLike]:
    from mcp2p.transfer.control import ChannelLimits, ControlServer

    proto = ControlServer(
        service,
        service.counters,
        ChannelLimits.from_config(service.config),
        clock,
    )
    transport = TCPLike(peer)
    proto.makeConnection(transport)
    return proto, transport


def box(command: type[amp.Command], tag: int, **kw: Any) -> bytes:
    values = command.makeArguments(kw, None)
    values[b"_command"] = command.commandName
    values[b"_ask"] = str(tag).encode()
    return amp.AmpBox(values).serialize()


def answers(data: bytes) -> list[dict[bytes, bytes]]:
    return amp.parse(__import__("io").BytesIO(data))  # type: ignore[no-any-return]


def subscribe_box(entry: Any, tag: int, rate: int = 0, wanted: bytes | None = None) -> bytes:
    units = -(-entry.size // BLOCK)
    return box(
        Subscribe,
        tag,
        content_id=entry.content_id,
        mode="multicast",
        port=0,
        rate=rate,
        code="plain",
        wanted=RangeSet.full(units).encode() if wanted is None else wanted,
        more=False,
    )


# -- the box and the pipeline


def test_an_endless_box_is_cut_at_max_box(tmp_path: Path, made: Any) -> None:
    """Today: every key of an unterminated box stays buffered (+243 MB RSS for
    an endless one); here 1,000 keys of 60 KB (60 MB) are sent."""
    service, clock, _ = make_serving(tmp_path, 1 << 20)
    made.append(service)
    proto, transport = connect(service, clock, load_or_create(tmp_path / "cn"))
    held = 0
    for i in range(1000):
        key = b"k%d" % i
        proto.dataReceived(len(key).to_bytes(2, "big") + key + (60000).to_bytes(2, "big"))
        proto.dataReceived(b"\0" * 60000)
        box = proto._currentBox
        held = max(held, sum(len(v) for v in box.values()) if box else 0)
        if transport.aborted:
            break
    assert transport.aborted
    assert held <= service.config.max_box  # 128 KiB, not 60 MB
    assert proto._currentBox is None and not proto._unprocessed
    assert service.counters["box_too_large"] == 1
    print(f"endless box: closed after {i + 1} keys, {held} bytes held at most")


def test_pipelined_requests_wait_in_the_peers_socket_and_a_non_reader_is_dropped(
    tmp_path: Path, made: Any
) -> None:
    """Today: 3,000 pipelined GetManifest queue 3,000 replies of 60 KB (180 MB,
    +174 MB RSS). With back-pressure the SN answers until the transport holds
    its buffer, then reads no more until the peer reads; a peer that never
    reads is dropped after write_timeout."""
    service, clock, entry = make_serving(tmp_path, 4 << 30)  # 4096 pieces: a 131 KB manifest
    made.append(service)
    assert len(service.manifest_bytes(entry.content_id)) > 2 * 60000
    proto, transport = connect(service, clock, load_or_create(tmp_path / "cn"))
    requests = b"".join(
        box(GetManifest, i, content_id=entry.content_id, offset=0) for i in range(1, 3001)
    )
    proto.dataReceived(requests)
    queued = len(transport.value())
    answered = len(answers(transport.value()))
    print(f"3000 pipelined GetManifest: {answered} answered, {queued} bytes queued")
    assert answered <= 3 and queued <= 2 * TCPLike.bufferSize
    # The peer reads: the rest is answered, a buffer at a time.
    total = 0
    for _ in range(5000):
        total += len(answers(transport.drain()))
        if total + len(answers(transport.value())) >= 3000:
            break
    assert total + len(answers(transport.value())) == 3000
    assert not transport.aborted
    # Now it stops reading: dropped after write_timeout.
    proto.dataReceived(requests)
    assert not transport.aborted
    clock.advance(service.config.write_timeout + 0.1)
    assert transport.aborted and service.counters["write_stalled"] == 1


def test_a_silent_channel_is_closed_after_idle_timeout(tmp_path: Path, made: Any) -> None:
    """Today: an idle verified channel stays open for ever (1,006 of them
    locked honest CNs out)."""
    service, clock, entry = make_serving(tmp_path, 1 << 20, idle_timeout="30")
    made.append(service)
    proto, transport = connect(service, clock, load_or_create(tmp_path / "cn"))
    clock.advance(20)
    proto.dataReceived(box(GetManifest, 1, content_id=entry.content_id, offset=0))
    clock.advance(20)
    assert not transport.aborted  # the request reset the clock
    clock.advance(11)
    assert transport.aborted and service.counters["idle_closed"] == 1


# -- range sets


def test_a_loss_report_naming_two_to_the_thirty_packets_is_refused_at_once(
    tmp_path: Path, made: Any
) -> None:
    """Today: ReportLoss naming 2^30 units blocked the SN's reactor 44 s."""
    service, clock, entry = make_serving(tmp_path, 64 << 20)
    made.append(service)
    proto, transport = connect(service, clock, load_or_create(tmp_path / "cn"))
    proto.dataReceived(subscribe_box(entry, 1))
    sub = service.subscriptions[1]
    clock.pump([TICK] * 100)
    sent = sub.session.seq
    assert sent > 0
    t = time.perf_counter()
    with pytest.raises(ProtocolError, match="never sent"):
        service.report_loss(proto, 1, RangeSet([(0, 1 << 30)]).encode(), 0)
    refused = time.perf_counter() - t
    assert service.counters["refused_loss"] == 1
    # What an honest CN reports (packets it was told of) is taken.
    service.report_loss(proto, 1, RangeSet([(0, sent)]).encode(), 0)
    # The most a report can make the session walk through is its sequence ring.
    sub.session.seq = 1 << 31  # as if it had sent that many
    t = time.perf_counter()
    service.report_loss(proto, 1, RangeSet([(0, 1 << 31)]).encode(), 0)
    ring = time.perf_counter() - t
    print(f"2^30 report refused in {refused * 1000:.1f} ms; a full ring taken in {ring:.3f} s")
    assert refused < 0.05 and ring < 1.0


def test_update_wanted_with_a_million_ranges_is_refused_before_expansion(
    tmp_path: Path, made: Any
) -> None:
    """Today: 10^6 ranges sent in UpdateWanted additions cost 24 s of SN CPU."""
    service, clock, entry = make_serving(tmp_path, BIG)
    made.append(service)
    proto, transport = connect(service, clock, load_or_create(tmp_path / "cn"))
    proto.dataReceived(subscribe_box(entry, 1, wanted=b""))
    per = 30000  # ranges per message: under AMP's 64 KiB value
    refused = 0
    t = time.perf_counter()
    for m in range(34):  # 34 x 30,000 = 1,020,000 ranges
        start = 2 * per * m
        wanted = RangeSet((start + 2 * i, start + 2 * i + 1) for i in range(per)).encode()
        proto.dataReceived(box(UpdateWanted, 2 + m, subscription=1, wanted=wanted, replace=False))
        refused += b"REFUSED" in transport.value()
        transport.clear()
    spent = time.perf_counter() - t
    print(f"10^6 ranges: {34 - refused} messages taken, {refused} refused, {spent:.2f} s")
    limit = service.config.max_wanted_ranges
    assert 34 - refused == limit // per  # 2 messages: 60,000 ranges
    assert service.counters["refused_ranges"] == refused
    assert spent < 5.0
    # A replacement starts the count again: the honest CN's resync every tick.
    wanted = RangeSet([(0, 10)]).encode()
    proto.dataReceived(box(UpdateWanted, 99, subscription=1, wanted=wanted, replace=True))
    assert b"REFUSED" not in transport.value()


# -- subscribers


def test_a_subscriber_that_neither_reads_nor_reports_is_dropped(tmp_path: Path, made: Any) -> None:
    """Today: a subscriber at rate 2^63 that never reads nor reports is
    streamed to at the session's rate for as long as its connection stays."""
    service, clock, entry = make_serving(tmp_path, 1 << 30, max_rate="20M")
    made.append(service)
    proto, transport = connect(service, clock, load_or_create(tmp_path / "cn"))
    proto.dataReceived(subscribe_box(entry, 1, rate=1 << 63))
    session = service.subscriptions[1].session
    assert session.rates.ceiling == 20 * MBIT  # never above max_rate
    port = service.data_port
    clock.pump([TICK] * round(60 / TICK))  # a minute, never read
    seconds = port.bytes * 8 / (20 * MBIT)
    print(f"non-reader: streamed {port.bytes} bytes (~{seconds:.1f} s at 20M) in 60 s")
    assert transport.aborted or not service.subscriptions
    assert session.state == "ENDED"
    limit = service.config
    assert seconds <= max(limit.write_timeout, limit.report_timeout) + 1
    assert service.counters["write_stalled"] + service.counters["silent_dropped"] >= 1


def test_subscriptions_per_node_id_are_bounded(tmp_path: Path, made: Any) -> None:
    """Today: one node id could open any number of subscriptions (23 unicast
    sessions: 4 GB)."""
    service, clock, entry = make_serving(tmp_path, 1 << 20, subscriptions_per_node="4")
    made.append(service)
    node = load_or_create(tmp_path / "cn")
    proto, transport = connect(service, clock, node)
    other, _ = connect(service, clock, node)  # a second channel of the same node
    for i in range(1, 4):
        proto.dataReceived(subscribe_box(entry, i))
    other.dataReceived(subscribe_box(entry, 4))
    transport.clear()
    proto.dataReceived(subscribe_box(entry, 5))
    assert b"REFUSED" in transport.value()
    assert len(service.subscriptions) == 4 and service.counters["refused_node"] == 1
    honest, honest_transport = connect(service, clock, load_or_create(tmp_path / "honest"))
    honest.dataReceived(subscribe_box(entry, 1))
    assert b"REFUSED" not in honest_transport.value() and len(service.subscriptions) == 5


def test_a_receiver_far_slower_than_the_others_is_moved_to_a_session_of_its_own(
    tmp_path: Path, made: Any
) -> None:
    """Today: one subscriber reporting heavy loss held the whole session at
    1 Mbit/s (min_rate)."""
    service, clock, entry = make_serving(tmp_path, 64 << 20, rate="20M", max_rate="20M")
    made.append(service)
    honest, _ = connect(service, clock, load_or_create(tmp_path / "honest"))
    liar, liar_transport = connect(service, clock, load_or_create(tmp_path / "liar"))
    honest.dataReceived(subscribe_box(entry, 1))
    liar.dataReceived(subscribe_box(entry, 2))
    shared = service.subscriptions[1].session
    assert service.subscriptions[2].session is shared
    reported = {1: 0, 2: 0}
    lowest = shared.rates.rate
    for step in range(1, round(20 / TICK) + 1):
        clock.advance(TICK)
        if step % 50:  # every 0.1 s, as the CN's receiver
            continue
        seq = shared.seq
        service.report_loss(honest, 1, b"", seq - reported[1])
        reported[1] = seq
        if 2 in service.subscriptions:
            lost = RangeSet([(reported[2], seq)]) if seq > reported[2] else RangeSet()
            service.report_loss(liar, 2, lost.encode(), 0)
            reported[2] = seq
        lowest = min(lowest, shared.rates.rate)
        liar_transport.clear()
        honest.transport.clear()  # type: ignore[union-attr]
    print(f"slow receiver: shared session fell to {lowest} bit/s, ends at {shared.rates.rate}")
    assert 2 not in service.subscriptions and service.counters["slow_moved"] == 1
    assert shared.rates.rate == 20 * MBIT  # the honest CN got its rate back
    # The slow node's next multicast subscription gets a session of its own.
    liar.dataReceived(subscribe_box(entry, 3))
    mine = [s for s in service.subscriptions.values() if s.client is liar]
    assert len(mine) == 1 and mine[0].session is not shared
    assert mine[0].session.group != shared.group
    assert mine[0].session.session_id != shared.session_id
    assert MOVED.startswith("moved")
