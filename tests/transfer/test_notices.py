"""Notices in fixed arrays (transfer.notices) against the OrderedDict the receiver kept before."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp2p.transfer.notices import MAX_RUNS, SEQ_SPACE, Notices

GAP, LOSS = 0.05, 0.3


def digest(seq: int, salt: int = 0) -> bytes:
    return (seq * 7919 + salt).to_bytes(8, "big")


def digests(first: int, n: int, salt: int = 0) -> bytes:
    return b"".join(digest(s, salt) for s in range(first, first + n))


class Model:
    """The receiver's notices as they were: seq -> (digest, time), in the
    order they came, lost from the front (`Receiver._housekeeping` before);
    a notice ``size`` sequence numbers on replaces one still waiting."""

    def __init__(self, size: int) -> None:
        self.entries: OrderedDict[int, tuple[bytes, float]] = OrderedDict()
        self.mask = size - 1
        self.overwritten = 0

    def add(self, first: int, data: bytes, now: float) -> None:
        for k in range(len(data) // 8):
            seq = first + k
            for old in [s for s in self.entries if s & self.mask == seq & self.mask]:
                del self.entries[old]
                self.overwritten += 1
            self.entries[seq] = (data[8 * k : 8 * k + 8], now)

    def due(self, now: float, highest: int) -> list[tuple[int, bytes, float]]:
        out = []
        while self.entries:
            seq = next(iter(self.entries))
            d, t = self.entries[seq]
            age = now - t
            if age <= LOSS and (seq > highest or age <= GAP):
                break
            del self.entries[seq]
            out.append((seq, d, t))
        return out


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 40)),  # the next run of that many
        st.tuples(st.just("gap"), st.integers(1, 40)),  # sequence numbers never announced
        st.tuples(st.just("arrive"), st.integers(0, 400)),  # the packet of one seq came
        st.tuples(st.just("time"), st.sampled_from([0.01, 0.04, 0.06, 0.2, 0.35])),
        st.tuples(st.just("due"), st.integers(-1, 400)),  # highest, relative to the base
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(_ops, st.sampled_from([0, 60, 1000, SEQ_SPACE - 500]), st.sampled_from([64, 1 << 18]))
def test_notices_in_arrays_report_what_the_ordered_dict_reported(
    ops: list[Any], base: int, size: int
) -> None:
    """Runs of notices (each seq announced once, runs in sequence order with
    gaps, as an SN's lists come), packets in any order, time and reports:
    the same notices wait, and the same are lost in the same order, also
    across the end of the ring and when a small ring overwrites."""
    notices, model = Notices(size), Model(size)
    now, nxt = 0.0, base
    for op, arg in ops:
        if op == "add" and nxt + arg <= SEQ_SPACE:
            data = digests(nxt, arg)
            assert notices.add(nxt, data, now) == arg
            model.add(nxt, data, now)
            nxt += arg
        elif op == "gap":
            nxt = min(nxt + arg, SEQ_SPACE)
        elif op == "arrive":
            seq = base + arg
            assert notices.get(seq) == (model.entries[seq][0] if seq in model.entries else None)
            notices.remove(seq)
            model.entries.pop(seq, None)
        elif op == "time":
            now += arg
        elif op == "due":
            assert notices.due(now, base + arg, GAP, LOSS) == model.due(now, base + arg)
        assert len(notices) == len(model.entries)
        assert list(notices.items()) == [(s, d, t) for s, (d, t) in model.entries.items()]
    assert notices.overwritten == model.overwritten
    first = next(iter(model.entries), None)
    assert notices.oldest() == (None if first is None else (first, model.entries[first][1]))


def test_a_run_of_a_digest_list_is_two_slice_copies_and_the_packets_clear_it() -> None:
    n = Notices()
    assert n.add(1000, digests(1000, 175), 1.0) == 175
    assert len(n) == 175 and n.get(1000) == digest(1000) and n.get(1174) == digest(1174)
    assert n.get(999) is None and n.get(1175) is None
    for seq in range(1000, 1175):
        n.remove(seq)
    assert len(n) == 0 and n.due(10.0, 2000, GAP, LOSS) == [] and not n.runs
    n.remove(1000)  # twice: nothing
    assert len(n) == 0


def test_a_run_across_the_end_of_the_ring_wraps() -> None:
    n = Notices(16)
    n.add(14, digests(14, 5), 0.0)  # slots 14, 15, 0, 1, 2
    assert [n.get(s) for s in range(14, 19)] == [digest(s) for s in range(14, 19)]
    assert [s for s, _, _ in n.due(1.0, 100, GAP, LOSS)] == [14, 15, 16, 17, 18]


def test_losses_stop_at_the_first_notice_after_the_newest_packet() -> None:
    n = Notices()
    n.add(0, digests(0, 10), 0.0)
    n.add(10, digests(10, 10), 0.01)
    for s in (0, 1, 2, 8):
        n.remove(s)
    # 0.1 s on: past GAP, not LOSS; the newest packet is 8, so 3..7 are lost
    assert [s for s, _, _ in n.due(0.1, 8, GAP, LOSS)] == [3, 4, 5, 6, 7]
    assert n.oldest() == (9, 0.0) and len(n) == 11
    # the second run is past the newest packet: nothing of it yet
    assert n.due(0.1, 8, GAP, LOSS) == []
    assert [s for s, _, _ in n.due(0.5, 8, GAP, LOSS)] == list(range(9, 20))
    assert len(n) == 0 and n.oldest() is None


def test_a_run_that_all_came_does_not_hold_back_the_losses_behind_it() -> None:
    n = Notices()
    n.add(0, digests(0, 5), 0.0)
    n.add(100, digests(100, 5), 0.0)  # a list fetched late, of earlier packets
    for s in range(5):
        n.remove(s)
    assert [s for s, _, _ in n.due(0.1, 200, GAP, LOSS)] == list(range(100, 105))


def test_a_notice_again_replaces_the_digest_and_counts_once() -> None:
    n = Notices()
    n.add(5, digest(5), 0.0)
    n.add(5, digest(5, salt=1), 0.2)
    assert len(n) == 1 and n.get(5) == digest(5, salt=1) and n.overwritten == 0
    assert n.due(1.0, 10, GAP, LOSS) == [(5, digest(5, salt=1), 0.0)]
    assert len(n) == 0 and n.due(1.0, 10, GAP, LOSS) == []


def test_a_notice_a_ring_later_takes_the_slot_and_the_old_one_is_counted() -> None:
    n = Notices(16)
    n.add(3, digest(3), 0.0)
    n.add(19, digest(19), 0.1)
    assert n.overwritten == 1 and len(n) == 1 and n.get(3) is None
    assert n.due(1.0, 100, GAP, LOSS) == [(19, digest(19), 0.1)]


def test_runs_beyond_the_bound_are_refused_and_counted() -> None:
    n = Notices()
    for k in range(MAX_RUNS):
        assert n.add(2 * k, digest(2 * k), 0.0) == 1
    assert n.add(10**6, digests(10**6, 3), 0.0) == 0
    assert n.refused == 3 and len(n) == MAX_RUNS and n.get(10**6) is None


@pytest.mark.parametrize(
    "first, n, size", [(-1, 1, 16), (SEQ_SPACE - 1, 2, 16), (0, 17, 16), (SEQ_SPACE, 1, 16)]
)
def test_a_run_outside_the_sequence_space_or_longer_than_the_ring_is_an_error(
    first: int, n: int, size: int
) -> None:
    notices = Notices(size)
    with pytest.raises(ValueError):
        notices.add(first, digests(0, n), 0.0)
    assert len(notices) == 0 and not notices.runs


def test_a_short_digest_buffer_is_whole_notices_only() -> None:
    n = Notices()
    assert n.add(0, b"x" * 7, 0.0) == 0 and not n.runs
    assert n.add(0, b"x" * 12, 0.0) == 1 and n.get(0) == b"x" * 8 and n.get(1) is None
