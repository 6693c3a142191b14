"""Receiver with a Clock: digest lists from the data path, trusted by the hash
the TLS channel names, in every arrival order; a list that does not come is
asked for, then given up (its packets reported lost); forged, foreign and
malformed lists are counted drops, and waiting lists are bounded."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock

from mcp2p.transfer import receiver as receiver_module
from mcp2p.transfer.receiver import (
    HOLD,
    LIST_GIVE_UP,
    LIST_WAIT,
    REPORT_EVERY,
    Receiver,
)
from mcp2p.wire.rtp import list_hash, pack_header, pack_list, packet_digest

SSRC = 0x1234


def packet(seq: int, ssrc: int = SSRC) -> bytes:
    return pack_header(seq & 0xFFFF, seq, ssrc, 0, seq) + seq.to_bytes(4, "big") * 25


def digest_list(first: int, count: int, ssrc: int = SSRC) -> bytes:
    return pack_list(
        first, ssrc, b"".join(packet_digest(packet(s)) for s in range(first, first + count))
    )


class Made:
    def __init__(self, answer: Any = None) -> None:
        self.clock = Clock()
        self.got: list[int] = []
        self.reports: list[tuple[list[int], int]] = []
        self.asked: list[int] = []
        self.answers: list[defer.Deferred[bytes]] = []

        def ask(first: int) -> defer.Deferred[bytes]:
            self.asked.append(first)
            d: defer.Deferred[bytes] = defer.Deferred()
            self.answers.append(d)
            return d

        self.r = Receiver(
            self.clock,
            SSRC,
            lambda p, s, d: self.got.append(s),
            lambda lost, n: self.reports.append((list(lost), n)),
            ask_list=ask,
        )
        self.r.startProtocol()

    def data(self, *datagrams: bytes) -> None:
        self.r.datagrams(list(datagrams))

    def lost(self) -> list[int]:
        return [seq for lost, _ in self.reports for seq in lost]


def test_a_list_then_its_hash_then_its_packets() -> None:
    m = Made()
    lst = digest_list(10, 3)
    m.data(lst)
    assert m.r.counters["lists"] == 0  # not trusted yet
    m.r.listed(10, 3, list_hash(lst))
    m.data(packet(10), packet(11), packet(12))
    assert m.got == [10, 11, 12] and m.r.counters["lists"] == 1
    assert m.r.counters["notices"] == 3 and not m.r.held


@given(st.permutations(["list", "hash", "p0", "p1"]))
@settings(max_examples=30, deadline=None)
def test_every_arrival_order_accepts_every_packet_once(order: list[str]) -> None:
    m = Made()
    lst = digest_list(0, 2)
    for event in order:
        if event == "list":
            m.data(lst)
        elif event == "hash":
            m.r.listed(0, 2, list_hash(lst))
        else:
            m.data(packet(int(event[1])))
    assert sorted(m.got) == [0, 1]
    assert m.r.counters["lists"] == 1 and m.r.counters["forged"] == 0


def test_a_forged_list_is_never_trusted_and_its_packets_never_accepted() -> None:
    m = Made()
    genuine = digest_list(0, 2)
    forged_packets = [pack_header(s, s, SSRC, 0, s) + b"evil" * 25 for s in (0, 1)]
    forged = pack_list(0, SSRC, b"".join(map(packet_digest, forged_packets)))
    m.data(forged)  # an attacker's list, first
    m.r.listed(0, 2, list_hash(genuine))
    m.data(*forged_packets)
    m.data(genuine, packet(0), packet(1))
    # The forged packets were held until the genuine list came, then exposed.
    assert m.got == [0, 1] and m.r.counters["forged"] == 2
    m.clock.advance(HOLD + 2 * REPORT_EVERY)
    assert m.r.counters["lists_unconfirmed"] == 1  # the forged list expired unconfirmed


def test_foreign_and_malformed_lists_are_counted_drops() -> None:
    m = Made()
    m.data(digest_list(0, 2, ssrc=99))
    m.data(digest_list(0, 2)[:-1])
    assert m.r.counters["foreign"] == 1 and m.r.counters["malformed"] == 1
    assert not m.r.unconfirmed


def test_a_list_that_does_not_come_is_asked_for_once() -> None:
    m = Made()
    lst = digest_list(100, 2)
    m.r.listed(100, 2, list_hash(lst))
    m.data(packet(100))  # its packet came, its list did not: held
    m.clock.advance(REPORT_EVERY)
    assert m.asked == [100]
    m.clock.advance(REPORT_EVERY)
    assert m.asked == [100]  # once
    m.answers[0].callback(lst)
    m.data(packet(101))
    assert m.got == [100, 101]
    assert m.r.counters["lists_asked"] == 1 and m.r.counters["lists_fetched"] == 1


def test_an_answer_that_is_not_the_named_list_is_refused() -> None:
    m = Made()
    lst = digest_list(100, 2)
    m.r.listed(100, 2, list_hash(lst))
    m.clock.advance(REPORT_EVERY)
    m.answers[0].callback(digest_list(100, 3))
    assert m.r.counters["lists_fetched"] == 0 and m.r.counters["malformed"] == 1
    assert m.r.counters["notices"] == 0


def test_a_list_never_had_is_given_up_and_its_packets_reported_lost() -> None:
    m = Made()
    lst = digest_list(7, 3)
    m.r.listed(7, 3, list_hash(lst))
    m.clock.advance(REPORT_EVERY)
    m.answers[0].errback(Exception("UNKNOWN_LIST"))  # the SN no longer keeps it
    m.clock.advance(LIST_GIVE_UP + REPORT_EVERY)
    assert m.lost() == [7, 8, 9]
    assert m.r.counters["lists_lost"] == 1 and m.r.counters["lost"] == 3
    assert not m.r.announced


def test_without_a_channel_to_ask_the_list_is_given_up_too() -> None:
    clock = Clock()
    reports: list[Any] = []
    r = Receiver(clock, SSRC, lambda *a: None, lambda lost, n: reports.append(list(lost)))
    r.startProtocol()
    r.listed(0, 1, list_hash(digest_list(0, 1)))
    clock.advance(LIST_GIVE_UP + 2 * REPORT_EVERY)
    assert reports == [[0]] and r.counters["lists_asked"] == 0


def test_waiting_lists_and_hashes_are_bounded(monkeypatch: Any) -> None:
    monkeypatch.setattr(receiver_module, "MAX_LISTS", 4)
    m = Made()
    for first in range(0, 60, 6):
        m.data(digest_list(first, 2))  # lists nobody named
        m.r.listed(first + 1000, 1, bytes([first]) * 16)  # hashes of lists that never come
    assert len(m.r.unconfirmed) == 4 and len(m.r.announced) == 4
    assert m.r.counters["lists_unconfirmed"] == 6 and m.r.counters["lists_lost"] == 6


def test_a_successor_keeps_the_lists_waiting() -> None:
    m = Made()
    lst = digest_list(3, 1)
    m.data(lst)
    after = m.r.successor()
    after.listed(3, 1, list_hash(lst))
    after.datagrams([packet(3)])
    assert m.got == [3]


def test_lists_lead_their_packets_so_nothing_is_held() -> None:
    """The SN's order: list, hash, then packets a tick later: each packet is
    checked as it comes, with no copy held."""
    m = Made()
    for first in range(0, 1000, 100):
        lst = digest_list(first, 100)
        m.data(lst)
        m.r.listed(first, 100, list_hash(lst))
        m.clock.advance(0.002)
        m.data(*(packet(s) for s in range(first, first + 100)))
        assert not m.r.held
    assert len(m.got) == 1000 and m.r.counters["lists"] == 10
    m.clock.advance(LIST_WAIT + 2 * REPORT_EVERY)
    assert m.asked == []


def _trusted(m: Made, lst: bytes) -> None:
    """A list and its hash, as an honest SN sends them."""
    first, count = int.from_bytes(lst[4:8], "big"), int.from_bytes(lst[18:22], "big")
    m.data(lst)
    m.r.listed(first, count, list_hash(lst))


def test_lists_beyond_the_runs_bound_are_refused_and_counted(monkeypatch: Any) -> None:
    """A misbehaving SN's lists that no packet follows: the notices waiting
    are bounded (runs), the rest counted; the packets of a refused list are
    held, then dropped as unannounced."""
    from mcp2p.transfer import notices

    monkeypatch.setattr(notices, "MAX_RUNS", 4)
    m = Made()
    for k in range(6):
        _trusted(m, digest_list(100 * k, 3))
    assert m.r.pending() == 12
    m.data(packet(500))  # its list was refused
    m.clock.advance(REPORT_EVERY)
    assert m.r.counters["notices_refused"] == 6 and m.got == []
    m.clock.advance(HOLD + REPORT_EVERY)
    assert m.r.counters["unannounced"] == 1


def test_a_list_a_ring_ahead_takes_the_slots_of_notices_waiting_and_counts_them() -> None:
    m = Made()
    _trusted(m, digest_list(5, 3))
    _trusted(m, digest_list(5 + (1 << 18), 2))  # a lying or broken SN
    assert m.r.pending() == 3
    m.data(packet(5 + (1 << 18)), packet(7))
    assert m.got == [5 + (1 << 18), 7]  # the symbols: seq (pack_header above)
    m.clock.advance(REPORT_EVERY)
    assert m.r.counters["notices_overwritten"] == 2
