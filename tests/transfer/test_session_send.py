"""The SN's batched send path on a Clock: GSO (one sendmsg per run of
equal-size datagrams) and its fallbacks, digest lists that go out before
the packets they cover and match every datagram as the CN checks them,
loss reports clipped before expansion, and a session's memory that does
not follow the file's size."""

from __future__ import annotations

import errno
import random
import socket
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from mcp2p.core.wanted import RangeSet
from mcp2p.plugins import code_by_name
from mcp2p.transfer.control import MAX_LISTS_PER_NOTICE
from mcp2p.transfer.session import (
    BURST_TICKS,
    MAX_BURST,
    MAX_BURST_HIGH,
    MAX_LEAD,
    SOL_UDP,
    TICK,
    UDP_SEGMENT,
    Session,
    Subscriber,
)
from mcp2p.wire.layout import Layout
from mcp2p.wire.rtp import (
    HEADER_LEN,
    LIST_PAYLOAD_TYPE,
    decode_packet,
    list_hash,
    list_notices,
    packet_digest,
)

MBIT = 1_000_000
PIECE = 64 * 1024
BLOCK = 1000  # a piece of 64 KiB: 65 blocks, the last of 536 bytes


class GsoSocket:
    """A socket that takes sendmsg with UDP_SEGMENT and cuts the buffer into
    datagrams as the kernel does; ``refuse`` makes it raise instead."""

    type = socket.SOCK_DGRAM

    def __init__(self, refuse: int | None = None, full_after: int | None = None) -> None:
        self.refuse = refuse  # errno for a sendmsg with UDP_SEGMENT
        self.full_after = full_after  # datagrams taken before EAGAIN
        self.datagrams: list[bytes] = []
        self.calls = 0

    def _take(self, datagrams: list[bytes]) -> None:
        if self.full_after is not None and len(self.datagrams) + len(datagrams) > self.full_after:
            raise BlockingIOError(errno.EAGAIN, "full")
        self.datagrams += datagrams
        self.calls += 1

    def sendmsg(self, buffers: list[bytes], ancdata: Any, flags: int, addr: Any) -> int:
        [(level, kind, value)] = ancdata
        assert (level, kind) == (SOL_UDP, UDP_SEGMENT)
        if self.refuse is not None:
            raise OSError(self.refuse, "no GSO")
        data = b"".join(buffers)
        seg = int.from_bytes(value, "little")
        parts = [data[i : i + seg] for i in range(0, len(data), seg)]
        assert all(len(p) == seg for p in parts[:-1]) and len(parts) <= 64
        self._take(parts)
        return len(data)

    def sendto(self, data: bytes, addr: Any) -> int:
        self._take([bytes(data)])
        return len(data)


class Port:
    """A UDP port whose handle is ``sock``; ``write`` is the per-datagram path."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.written: list[bytes] = []

    def getHandle(self) -> Any:
        return self.sock

    def write(self, data: bytes, addr: Any) -> None:
        if self.sock.full_after is not None and len(self.written) >= self.sock.full_after:
            raise BlockingIOError(errno.EAGAIN, "full")
        self.written.append(bytes(data))


class Client:
    def __init__(self) -> None:
        self.listed: list[tuple[int, int, bytes]] = []  # (first, count, hash)
        self.writes = 0

    def send_lists(self, subscription: int, lists: list[tuple[int, int, bytes]]) -> None:
        self.listed += lists
        self.writes += 1

    def session_ended(self, subscription: int, reason: str) -> None:
        pass


def make(
    tmp_path: Path, port: Any, size: int = 3 * PIECE + 4321, rate: int = 10_000 * MBIT
) -> tuple[Session, bytes]:
    data = random.Random(size).randbytes(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    clock = Clock()
    clock.advance(10)
    session = Session(
        clock,
        session_id=0xABCD,
        layout=Layout(size, PIECE, BLOCK),
        code=code_by_name("plain"),
        path=str(path),
        destination=("127.0.0.1", 9),
        port=port,
        rate=rate,
        min_rate=MBIT,
        max_rate=rate,
        grace=1.0,
        on_end=lambda s: None,
        rng=random.Random(1),
    )
    return session, data


def packets(datagrams: list[bytes]) -> list[bytes]:
    """The data packets among ``datagrams`` (digest lists left out)."""
    return [d for d in datagrams if d[1] != LIST_PAYLOAD_TYPE]


def check_as_a_cn(session: Session, data: bytes, datagrams: list[bytes], client: Client) -> None:
    """Every data packet comes after the digest list that covers it, a list the
    client was told the hash of; it matches its digest there (seq in the
    timestamp) and carries the right block of the file, each block once."""
    trusted = {digest: (first, count) for first, count, digest in client.listed}
    notices: dict[int, bytes] = {}
    blocks = set()
    layout = session.layout
    for d in datagrams:
        if d[1] == LIST_PAYLOAD_TYPE:
            first, count = trusted.pop(list_hash(d))
            listed = list_notices(d)
            assert listed[0][0] == first and len(listed) == count
            notices.update(listed)
            continue
        p = decode_packet(d)
        assert p.ssrc == 0xABCD and p.seq == p.timestamp & 0xFFFF
        assert notices[p.timestamp] == packet_digest(d)
        index = layout.block_index(p.piece, p.symbol)
        offset, length = layout.block_span(index)
        assert p.payload == data[offset : offset + length]
        blocks.add(index)
    assert len(blocks) == len(packets(datagrams))


def run(session: Session, ticks: int) -> None:
    for _ in range(ticks):
        session.reactor.advance(TICK)


def test_a_burst_goes_out_by_gso_in_runs_of_one_size(tmp_path: Path) -> None:
    sock = GsoSocket()
    session, data = make(tmp_path, Port(sock))
    client = Client()
    session.add(Subscriber(1, client, session), RangeSet.full(session.units))
    run(session, 4)
    units = session.units
    assert len(packets(sock.datagrams)) == units == session.counters["packets"]
    lists = session.counters["lists"]
    assert lists == len(sock.datagrams) - units == client.writes
    assert lists == -(-units // session.list_size)  # whole lists: one per block of digests
    # 1000-byte blocks and a 536-byte one ending each piece: a short datagram
    # ends a GSO run, so about one sendmsg per piece, not one per datagram.
    assert sock.calls < units // 20 + lists and session.counters["gso_sends"] >= 4
    check_as_a_cn(session, data, sock.datagrams, client)
    assert session.counters["bytes"] == sum(map(len, sock.datagrams))
    session.end("test")


@pytest.mark.parametrize("per_notice", [1, 3, MAX_LISTS_PER_NOTICE])
def test_a_plan_of_several_lists_is_one_notice_to_a_cn_that_takes_them(
    tmp_path: Path, per_notice: int
) -> None:
    """A plan holds as many whole lists as PLAN seconds of the rate allow
    (here 4, MAX_LEAD packets at most); a subscriber that took ``lists`` in
    its Subscribe hears of them in notices of that many at most, in order;
    one that did not, one notice per list. Every packet is still covered."""
    sock = GsoSocket()
    session, data = make(tmp_path, Port(sock), size=12 * PIECE + 4321)
    client = Client()
    session.add(Subscriber(1, client, session, lists=per_notice), RangeSet.full(session.units))
    run(session, 20)
    lists = session.counters["lists"]
    assert MAX_LEAD // session.list_size == 4  # lists a plan holds
    assert len(client.listed) == lists > 4  # more than one plan
    if per_notice == 1:
        assert client.writes == lists
    else:  # a plan's 4 lists in notices of per_notice at most
        assert -(-lists // per_notice) <= client.writes <= -(-lists // 4) * -(-4 // per_notice)
    assert [first for first, _, _ in client.listed] == sorted(f for f, _, _ in client.listed)
    check_as_a_cn(session, data, sock.datagrams, client)
    session.end("test")


@pytest.mark.parametrize("refusal", [errno.EIO, errno.EINVAL, errno.ENOPROTOOPT])
def test_a_socket_that_refuses_udp_segment_falls_back_to_one_write_each(
    tmp_path: Path, refusal: int
) -> None:
    sock = GsoSocket(refuse=refusal)
    port = Port(sock)
    session, data = make(tmp_path, port)
    client = Client()
    session.add(Subscriber(1, client, session), RangeSet.full(session.units))
    run(session, 4)
    assert session.gso is None and session.counters["gso_fallbacks"] == 1
    # Whatever the first sendmsg held went out again by write: nothing lost.
    # (The lists went out by sendto, before it.)
    assert len(packets(port.written)) == session.units == session.counters["packets"]
    check_as_a_cn(session, data, sock.datagrams + port.written, client)
    session.end("test")


def test_a_port_without_a_real_socket_writes_each_datagram(tmp_path: Path) -> None:
    class Plain:
        def __init__(self) -> None:
            self.written: list[bytes] = []

        def write(self, data: bytes, addr: Any) -> None:
            self.written.append(data)

    port = Plain()
    session, data = make(tmp_path, port)
    client = Client()
    session.add(Subscriber(1, client, session), RangeSet.full(session.units))
    run(session, 4)
    assert session.gso is None
    check_as_a_cn(session, data, port.written, client)
    assert len(packets(port.written)) == session.units


@pytest.mark.parametrize("gso", [True, False])
def test_a_full_send_buffer_is_back_pressure(tmp_path: Path, gso: bool) -> None:
    sock = GsoSocket(full_after=100)
    port = Port(sock)
    session, _ = make(tmp_path, port)
    if not gso:
        session.gso = None
    session.add(Subscriber(1, Client(), session), RangeSet.full(session.units))
    session.reactor.advance(TICK)  # the lists of what is planned
    assert session.counters["packets"] == 0 and session.counters["lists"] > 0
    session.reactor.advance(TICK)
    sent = session.counters["packets"]
    assert sent + session.counters["lists"] <= 100
    assert session.counters["would_block"] == min(MAX_BURST, session.units) - sent
    assert session.bucket.tokens == 0 and session.counters["send_errors"] == 0
    # What did not go out waits, in order, for the next tick: nothing is lost.
    unsent = session.seq - sent
    assert len(session.queue) == unsent > 0
    assert decode_packet(session.queue[0]).timestamp == sent
    session.end("test")


@pytest.mark.parametrize("mbit", [100, 1000, 2000])
def test_ticks_on_time_keep_the_rate_and_a_late_one_catches_up_within_its_cap(
    tmp_path: Path, mbit: int
) -> None:
    """On time, the ticks send the rate, also above what MAX_BURST packets a
    tick make (about 1 Gbit/s in these 1 kB packets: 2 Gbit/s was out of
    reach); a late tick sends what the bucket saved and was planned, at most
    MAX_BURST packets or BURST_TICKS ticks of the rate, never over
    MAX_BURST_HIGH."""
    rate = mbit * MBIT
    sock = GsoSocket()
    session, _ = make(tmp_path, Port(sock), size=384 * PIECE, rate=rate)
    session.add(Subscriber(1, Client(), session), RangeSet.full(session.units))
    size = session.packet_size
    per_tick = rate / 8 * TICK / size
    cap = min(MAX_BURST_HIGH, max(MAX_BURST, int(BURST_TICKS * per_tick)))
    run(session, 12)  # planned, started, and the bucket's first saving spent
    before = session.counters["bytes"]
    ticks = 20
    run(session, ticks)
    sent = session.counters["bytes"] - before
    assert 0.95 * rate / 8 * TICK * ticks <= sent <= 1.05 * rate / 8 * TICK * ticks + cap * size
    before = session.counters["packets"]
    session.reactor.advance(0.05)  # a reactor 50 ms late
    burst = session.counters["packets"] - before
    assert 0 < burst <= cap
    if cap > MAX_BURST:  # it catches up past the fixed cap, as far as was planned
        assert burst > MAX_BURST
    session.end("test")


def test_loss_report_naming_every_sequence_number_is_clipped_first(tmp_path: Path) -> None:
    sock = GsoSocket()
    session, _ = make(tmp_path, Port(sock))
    sub = Subscriber(1, Client(), session)
    session.add(sub, RangeSet.full(session.units))
    run(session, 1)
    sent = session.seq
    assert session.scheduler.total_weight == session.units - sent
    # 2^32 sequence numbers: only the `sent` we remember count (before, each was visited).
    session.report_loss(sub, RangeSet([(0, 1 << 32)]), 0)
    assert session.counters["loss_reported"] == sent
    assert session.scheduler.total_weight == session.units
    session.end("test")


class DiscardSocket(GsoSocket):
    def _take(self, datagrams: list[bytes]) -> None:
        self.calls += 1


def test_a_session_of_a_4gib_file_costs_little_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    with path.open("wb") as f:
        f.truncate(4 << 30)
    tracemalloc.start()
    try:
        clock = Clock()
        session = Session(
            clock,
            session_id=1,
            layout=Layout(4 << 30, 1 << 20, 1400),
            code=code_by_name("plain"),
            path=str(path),
            destination=("127.0.0.1", 9),
            port=Port(DiscardSocket()),
            rate=10_000 * MBIT,
            min_rate=MBIT,
            max_rate=10_000 * MBIT,
            grace=1.0,
            on_end=lambda s: None,
            rng=random.Random(1),
        )
        quiet = Client()
        quiet.send_lists = lambda subscription, lists: None  # type: ignore[method-assign]
        session.add(Subscriber(1, quiet, session), RangeSet.full(session.units))
        for _ in range(20):
            clock.advance(TICK)
        current, peak = tracemalloc.get_traced_memory()
        # The sequence ring (4 bytes x 2^17), the packets planned ahead (at
        # most MAX_LEAD and a tick's) and the digest lists kept; before, the
        # scheduler alone held ~170 MB for this file.
        assert current < 3 << 20 and peak < 8 << 20
    finally:
        tracemalloc.stop()
        session.end("test")


def test_header_length_is_what_the_cn_expects() -> None:
    assert HEADER_LEN == 22
