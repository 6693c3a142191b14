"""Session on a Clock, with a recording port and fake control channels: what
it sends, what it tells its subscribers, and how it ends (DESIGN.md 5.5).

The data is a real file; the datagrams written are parsed back (RTP header,
payload = the file's bytes), and the digest lists each subscriber was told
the hashes of are checked against the datagrams' digests.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from mcp2p.core.wanted import RangeSet
from mcp2p.plugins import code_by_name
from mcp2p.transfer.session import JOIN_DELAY, JOIN_GRACE, TICK, Session, Subscriber
from mcp2p.wire.layout import Layout
from mcp2p.wire.rtp import HEADER_LEN, decode_packet, packet_digests
from tests.transfer.fakes import Channel, DataPort, notices_of

MBIT = 1_000_000
PIECE = 8192
BLOCK = 1024


class Made:
    def __init__(self, tmp_path: Path, size: int, group: str, grace: float, code: str) -> None:
        self.clock = Clock()
        self.clock.advance(100.0)
        self.data = os.urandom(size)
        path = tmp_path / "data.bin"
        path.write_bytes(self.data)
        self.port = DataPort()
        self.ended: list[Session] = []
        self.session = Session(
            self.clock,
            session_id=0xABCD,
            layout=Layout(size, PIECE, BLOCK),
            code=code_by_name(code),
            path=str(path),
            destination=(group or "127.0.0.1", 7712),
            port=self.port,
            rate=10 * MBIT,
            min_rate=1 * MBIT,
            max_rate=100 * MBIT,
            grace=grace,
            on_end=self.ended.append,
            rng=random.Random(2),
            group=group,
        )

    def subscribe(
        self, sub_id: int, wanted: RangeSet | None = None, ceiling: int = 0, client: Any = None
    ) -> Subscriber:
        sub = Subscriber(sub_id, client or Channel(), self.session, ceiling=ceiling)
        self.session.add(sub, RangeSet.full(self.session.units) if wanted is None else wanted)
        return sub

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / TICK)):
            self.clock.advance(TICK)


@pytest.fixture
def make(tmp_path: Path) -> Any:
    made: list[Made] = []

    def factory(
        size: int = 5 * PIECE + 100, group: str = "", grace: float = 1.0, code: str = "plain"
    ) -> Made:
        made.append(Made(tmp_path, size, group, grace, code))
        return made[-1]

    yield factory
    for m in made:
        m.session.end("test over")


def test_every_wanted_block_goes_out_once_with_the_files_bytes(make: Any) -> None:
    m = make()
    sub = m.subscribe(1)
    m.run(0.2)
    layout = m.session.layout
    blocks: dict[int, bytes] = {}
    for seq, (data, addr) in enumerate(m.port.sent):
        assert addr == ("127.0.0.1", 7712)
        header = decode_packet(data)
        assert header.ssrc == 0xABCD and header.timestamp == seq  # the 32-bit sequence number
        index = layout.block_index(header.piece, header.symbol)
        assert index not in blocks  # sending is optimistic: nothing twice
        blocks[index] = data[HEADER_LEN:]
    assert sorted(blocks) == list(range(layout.blocks))
    assert b"".join(blocks[i] for i in range(layout.blocks)) == m.data
    # Each datagram was in a list announced to the subscriber, with its digest, in order.
    digests = packet_digests([data for data, _ in m.port.sent])
    assert notices_of(sub.client, m.port) == list(enumerate(digests))


def test_only_the_units_wanted_are_sent_and_a_replace_narrows_them(make: Any) -> None:
    m = make()
    m.subscribe(1, RangeSet([(3, 6)]))
    m.run(0.1)
    layout = m.session.layout
    sent = [layout.block_index(h.piece, h.symbol) for h in map(decode_packet, _data(m))]
    assert sorted(sent) == [3, 4, 5]


def test_a_multicast_session_waits_for_its_first_cn_to_join(make: Any) -> None:
    m = make(group="232.1.1.1")
    m.subscribe(1)
    m.clock.advance(JOIN_DELAY / 2)
    m.clock.advance(TICK)
    assert m.port.sent == []
    m.run(JOIN_DELAY)
    assert m.port.sent and m.port.sent[0][1] == ("232.1.1.1", 7712)


def test_a_unit_outside_the_content_is_refused(make: Any) -> None:
    m = make()
    sub = m.subscribe(1, RangeSet())
    with pytest.raises(ValueError, match="outside"):
        m.session.set_wanted(sub, RangeSet([(0, m.session.units + 1)]), replace=False)


def test_a_loss_report_puts_back_what_was_lost(make: Any) -> None:
    m = make()
    sub = m.subscribe(1, RangeSet([(0, 4)]))
    m.run(0.1)
    assert len(m.port.sent) == 4
    first = decode_packet(m.port.sent[0][0])
    m.session.report_loss(sub, RangeSet([(0, 1)]), 3)  # sequence number 0 was lost
    m.run(0.1)
    assert len(m.port.sent) == 5
    again = decode_packet(m.port.sent[4][0])
    assert (again.piece, again.symbol) == (first.piece, first.symbol)
    assert m.session.counters["loss_reported"] == 1


def test_a_loss_report_naming_packets_never_sent_puts_back_nothing(make: Any) -> None:
    m = make()
    sub = m.subscribe(1, RangeSet([(0, 2)]))
    m.run(0.1)
    m.session.report_loss(sub, RangeSet([(2, 1 << 32)]), 0)
    m.run(0.1)
    assert len(m.port.sent) == 2 and m.session.counters["loss_reported"] == 0


def test_losses_just_after_joining_do_not_steer_the_rate(make: Any) -> None:
    m = make()
    sub = m.subscribe(1)
    m.run(0.05)
    rate = m.session.rates.rate
    lost = RangeSet([(0, len(m.port.sent))])
    for _ in range(5):  # everything lost, reported many times within JOIN_GRACE
        assert m.session.report_loss(sub, lost, 0) == int(rate)
        m.clock.advance(JOIN_GRACE / 10)
    assert m.session.rates.rate == rate


def test_an_idle_session_ends_after_grace_and_tells_every_subscriber(make: Any) -> None:
    m = make(grace=1.0)
    one = m.subscribe(1, RangeSet([(0, 1)]))
    two = m.subscribe(2, RangeSet())
    m.run(0.5)
    assert m.session.state == "IDLE" and not m.ended
    m.run(0.6)
    assert m.session.state == "ENDED" and m.ended == [m.session]
    assert reasons(one) == reasons(two) == ["nothing wanted"]
    assert not m.session.subscribers
    with pytest.raises(OSError):
        os.fstat(m.session.fd)  # the file is closed


def test_new_work_keeps_an_idle_session_alive(make: Any) -> None:
    m = make(grace=1.0)
    sub = m.subscribe(1, RangeSet([(0, 1)]))
    m.run(0.8)
    assert m.session.state == "IDLE"
    m.session.set_wanted(sub, RangeSet([(1, 2)]), replace=False)
    m.run(0.8)
    assert m.session.state == "IDLE" and not m.ended  # the grace started again
    assert len(m.port.sent) == 2


def test_the_last_subscriber_leaving_ends_the_session_once(make: Any) -> None:
    m = make()
    one, two = m.subscribe(1), m.subscribe(2)
    m.session.remove(1)
    assert m.session.state != "ENDED"
    m.session.remove(2)
    assert m.session.state == "ENDED" and m.ended == [m.session]
    assert reasons(one) == reasons(two) == []  # they left: nobody to tell
    m.session.end("again")
    m.session.remove(2)
    assert m.ended == [m.session]
    sent = len(m.port.sent)
    m.run(0.1)
    assert len(m.port.sent) == sent  # nothing after the end


def test_a_closed_channel_does_not_keep_the_others_from_hearing(make: Any) -> None:
    m = make(group="239.1.1.1")
    broken = m.subscribe(1, client=Channel(broken=True))
    fine = m.subscribe(2)
    m.session.move("239.2.2.2")
    assert [g for _, g in fine.client.moved] == ["239.2.2.2"] and broken.client.moved == []
    assert m.session.destination == ("239.2.2.2", 7712) and m.session.counters["moves"] == 1
    m.session.end("stopping")
    assert reasons(fine) == ["stopping"] and m.ended == [m.session]


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(1, 6), st.sampled_from([0, 2, 5, 20, 200])),
        min_size=1,
        max_size=20,
    )
)
def test_the_ceiling_is_the_smallest_subscribers_and_the_rate_stays_under_it(
    make: Any, steps: list[tuple[bool, int, int]]
) -> None:
    """Subscribers come (with a --rate in Mbit/s, 0: none) and go in any order:
    the session's ceiling is the smallest of theirs (none above the session's
    maximum, which is also the ceiling of one that asks nothing), and the
    rate never exceeds it."""
    m = make()
    ceilings: dict[int, int] = {}
    for join, sub_id, mbit in steps:
        if m.session.state == "ENDED":
            break
        if join and sub_id not in ceilings:
            ceilings[sub_id] = mbit * MBIT
            m.subscribe(sub_id, ceiling=mbit * MBIT)
        elif not join and sub_id in ceilings:
            del ceilings[sub_id]
            m.session.remove(sub_id)
        if ceilings:
            top = m.session.rates.maximum  # [serving] max_rate bounds any wish
            expected = min(min(c or top, top) for c in ceilings.values())
            assert m.session.rates.ceiling == expected
            assert m.session.rates.rate <= expected


def test_a_block_code_sends_symbols_of_whole_pieces(make: Any) -> None:
    m = make(code="raptorq")
    sub = m.subscribe(1, RangeSet([(1, 2)]))  # piece 1
    m.run(0.2)
    headers = [decode_packet(d) for d in _data(m)]
    assert headers and {h.piece for h in headers} == {1}
    assert len(headers) >= m.session.code.need(m.session.layout, 1)
    symbols = [h.symbol for h in headers]
    assert len(set(symbols)) == len(symbols)  # a new symbol each time
    notices = notices_of(sub.client, m.port)
    assert notices[: len(headers)] == list(enumerate(packet_digests(_data(m))))


def test_a_session_asks_its_code_for_every_units_need_once(make: Any) -> None:
    """The needs come from the code's ``needs`` once (RaptorQ: K of each piece),
    from ``need`` unit by unit for a code without it, and a code whose
    answer does not fit the layout is refused."""
    m = make(size=5 * PIECE + 100, code="raptorq")
    code, layout = m.session.code, m.session.layout
    expected = [code.need(layout, u) for u in range(m.session.units)]
    assert list(m.session.unit_needs()) == expected and expected[0] > expected[-1]
    m.subscribe(1)
    m.subscribe(2, RangeSet([(1, 3)]))
    weights = [m.session.scheduler.weight(u) for u in range(m.session.units)]
    assert weights == [n * (2 if u in (1, 2) else 1) for u, n in enumerate(expected)]

    class Without:  # a third-party code: no bulk ``needs``
        name = "without"

        def need(self, layout: Layout, unit: int) -> int:
            return unit + 2

    m.session.code, m.session._unit_needs = Without(), None
    assert list(m.session.unit_needs()) == [u + 2 for u in range(m.session.units)]

    class Wrong(Without):
        def needs(self, layout: Layout) -> list[int]:
            return [1]

    m.session.code, m.session._unit_needs = Wrong(), None
    with pytest.raises(ValueError, match="1 needs for 6 units"):
        m.session.unit_needs()


def _data(m: Made) -> list[bytes]:
    return [data for data, _ in m.port.sent]


def test_a_fountain_session_encodes_only_for_what_was_lost(make: Any) -> None:
    """RaptorQ: a piece nobody lost a symbol of goes out as its K source
    symbols, never encoded; a loss of x symbols brings x + the overhead repair
    symbols, once per piece (a second loss of the same piece adds only x)."""
    m = make(code="raptorq", grace=30.0)
    sub = m.subscribe(1)
    m.run(0.5)
    session, layout = m.session, m.session.layout
    k = [session.code.source_symbols(layout, p) for p in range(layout.pieces)]
    assert [decode_packet(d).symbol for d in _data(m)] == [e for n in k for e in range(n)]
    assert session.encoder.encodes == 0
    m.clock.advance(2.0)  # past JOIN_GRACE: a report now
    first = len(m.port.sent)
    session.report_loss(sub, RangeSet([(2, 5)]), 100)  # three symbols of piece 0 lost
    m.run(0.3)
    repairs = [decode_packet(d) for d in _data(m)[first:]]
    assert [(h.piece, h.symbol >= k[0]) for h in repairs] == [(0, True)] * (3 + 2)
    assert session.encoder.encodes == 1
    second = len(m.port.sent)
    lost = first + 1  # the sequence number of the second repair symbol
    session.report_loss(sub, RangeSet([(lost, lost + 1)]), 10)
    m.run(0.3)
    assert [decode_packet(d).piece for d in _data(m)[second:]] == [0]  # no second overhead


def test_a_repair_goes_on_the_first_report_and_serves_the_later_ones(make: Any) -> None:
    """Two CNs of one multicast session lost symbols of piece 0. The first
    report brings its repair run within a tick; the second CN, which lost
    fewer, gets what it needs from that run and its report sends nothing
    more; a loss beyond that run brings only the difference."""
    m = make(code="raptorq", grace=30.0, group="232.1.1.1")
    a, b = m.subscribe(1), m.subscribe(2)
    m.session.joined(1)
    m.session.joined(2)
    m.run(0.5)
    session, layout = m.session, m.session.layout
    k0 = session.code.source_symbols(layout, 0)
    m.clock.advance(2.0)  # past JOIN_GRACE
    first = len(m.port.sent)
    session.report_loss(a, RangeSet([(2, 5)]), 100)  # a lost three symbols of piece 0
    m.run(2 * TICK)
    repairs = [decode_packet(d) for d in _data(m)[first:]]
    assert [(h.piece, h.symbol >= k0) for h in repairs] == [(0, True)] * (3 + 2)
    second = len(m.port.sent)
    session.report_loss(b, RangeSet([(5, 7)]), 100)  # b lost two (+ 2): the run covers it
    m.run(0.3)
    assert len(m.port.sent) == second
    session.report_loss(b, RangeSet([(0, 2)]), 100)  # two more: one past the run
    m.run(0.3)
    assert [decode_packet(d).piece for d in _data(m)[second:]] == [0]


def test_a_session_that_runs_dry_says_so_to_the_cns_that_asked(make: Any) -> None:
    """Each time the last packet of a round went out and nothing more is
    needed, the CNs whose Subscribe asked for Drained are told its sequence
    number (the others never are), once per round."""
    m = make(code="raptorq", grace=30.0, group="232.1.1.1")
    a, b = m.subscribe(1), m.subscribe(2)
    a.drained = True
    for sub in (1, 2):
        m.session.joined(sub)
    m.run(0.5)
    sent = len(m.port.sent)
    assert sent and a.client.drained == [(1, sent - 1)] and b.client.drained == []
    m.run(0.5)
    assert len(a.client.drained) == 1  # idle: said once
    m.clock.advance(2.0)  # past JOIN_GRACE
    m.session.report_loss(a, RangeSet([(0, 1)]), 10)
    m.run(0.3)
    assert len(m.port.sent) > sent
    assert a.client.drained == [(1, sent - 1), (1, len(m.port.sent) - 1)]
    assert m.session.counters["drained"] == 2


def reasons(sub: Subscriber) -> list[str]:
    """The reasons its channel was told of, in order."""
    return [reason for _, reason in sub.client.ended]


class FakeWorkers:
    """`EncodeWorkers` as a session sees it: jobs recorded, answered by the
    test (with the symbols a worker process would make)."""

    def __init__(self, busy: bool = False) -> None:
        self.jobs: list[tuple[tuple[Any, ...], Any]] = []
        self.busy = busy

    def submit(self, *spec: Any) -> Any:
        from twisted.internet import defer

        if self.busy:
            return None
        d: Any = defer.Deferred()
        self.jobs.append((spec, d))
        return d

    def answer_all(self) -> None:
        from mcp2p.transfer.encodeworker import read_piece, repair_batch

        jobs, self.jobs = self.jobs, []
        for (k, t, first, stop, offset, length, *file), d in jobs:
            d.callback(repair_batch(read_piece(*file, offset, length), t, k, first, stop))


def _seqs_of_piece(m: Made, piece: int) -> list[int]:
    return [h.seq for h in map(decode_packet, _data(m)) if h.piece == piece]


def _sent_pieces(m: Made) -> list[int]:
    """The pieces whose every source symbol went out, in order."""
    s = m.session
    got: dict[int, set[int]] = {}
    for h in map(decode_packet, _data(m)):
        got.setdefault(h.piece, set()).add(h.symbol)
    k = s.code.source_symbols
    return sorted(p for p, symbols in got.items() if len(symbols) >= k(s.layout, p))


def _lossy_with_workers(make: Any) -> tuple[Made, FakeWorkers, Subscriber]:
    """A RaptorQ session of 40 pieces with (fake) workers, 20 symbols of its
    first pieces reported lost: from then on repairs are likely."""
    m = make(size=40 * PIECE, code="raptorq", grace=30.0)
    workers = FakeWorkers()
    m.session.workers = workers
    sub = m.subscribe(1)
    m.run(0.02)
    assert workers.jobs == []  # no loss yet: no piece is worth encoding ahead
    m.clock.advance(2.0)  # past JOIN_GRACE
    m.session.report_loss(sub, RangeSet([(0, 20)]), 10)
    m.run(0.05)
    assert workers.jobs, "pieces planned after the loss go to the worker"
    return m, workers, sub


def test_a_lossy_session_has_workers_make_repairs_while_pieces_go_out(make: Any) -> None:
    """Once losses say repairs are likely, each piece's first symbols going
    out hand the piece (and the next) to a worker; the repair run a loss
    report brings is the worker's symbols, with nothing encoded in the
    session."""
    m, workers, sub = _lossy_with_workers(make)
    session = m.session
    encodes = session.encoder.encodes  # piece 0's repair, made here before any worker
    pieces = sorted(session.encoding)
    assert len(pieces) == len(workers.jobs) and session.counters["prefetched"] == 0
    workers.answer_all()
    assert session.counters["prefetched"] == len(pieces) and not session.encoding
    m.run(0.05)
    workers.answer_all()  # the pieces handed over meanwhile
    piece = next(p for p in pieces if p in _sent_pieces(m))
    lost = _seqs_of_piece(m, piece)[:2]
    before = len(m.port.sent)
    session.report_loss(sub, RangeSet([(lost[0], lost[-1] + 1)]), 100)
    m.run(0.2)  # the run goes out after the packets already planned
    repairs = [decode_packet(d) for d in _data(m)[before:]]
    k = session.code.source_symbols(session.layout, piece)
    mine = [h for h in repairs if h.piece == piece]
    assert [h.symbol for h in mine] == list(range(k, k + 2 + 2))
    assert session.encoder.encodes == encodes  # none made in the session
    own = session.code.encoder(session.layout, session._read)
    assert [h.payload for h in mine] == [own.symbol(piece, h.symbol)[2] for h in mine]


def test_a_failed_or_refused_job_leaves_the_encoding_to_the_session(make: Any) -> None:
    from twisted.python.failure import Failure

    from mcp2p.transfer.encoding import EncodeFailed

    m, workers, sub = _lossy_with_workers(make)
    jobs, workers.jobs = workers.jobs, []
    for _, d in jobs:
        d.errback(Failure(EncodeFailed("the encode worker ended")))
    assert m.session.counters["prefetch_failed"] == len(jobs) and not m.session.encoding
    workers.busy = True
    m.run(0.05)
    assert m.session.counters["prefetch_busy"] > 0
    cached = m.session.encoder.cached_pieces
    piece = max(p for p in _sent_pieces(m) if p not in cached)
    lost = _seqs_of_piece(m, piece)[:1]
    before, encodes = len(m.port.sent), m.session.encoder.encodes
    m.session.report_loss(sub, RangeSet([(lost[0], lost[0] + 1)]), 100)
    m.run(0.2)  # the run goes out after the packets already planned
    k = m.session.code.source_symbols(m.session.layout, piece)
    sent = [decode_packet(d) for d in _data(m)[before:]]
    assert [h.symbol >= k for h in sent if h.piece == piece] == [True] * (1 + 2)
    assert m.session.encoder.encodes == encodes + 1  # made here, as without workers


def test_a_job_answered_after_the_session_ended_is_dropped(make: Any) -> None:
    m, workers, _ = _lossy_with_workers(make)
    m.session.end("test over")
    workers.answer_all()
    assert m.session.counters["prefetched"] == 0 and m.session.encoder.prefetched == 0
