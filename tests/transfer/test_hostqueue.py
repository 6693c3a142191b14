"""The SN's bound on its own host's queue: the link's rate learnt from
readings of the socket's queue, the room that keeps HOST_QUEUE of it, and
the one system call on a real socket."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp2p.transfer import hostqueue
from mcp2p.transfer.hostqueue import (
    ACTIVE_FOR,
    DRAIN_WINDOW,
    HOST_QUEUE,
    HOST_QUEUE_FLOOR,
    HOST_QUEUE_MAX,
    HOST_QUEUE_MIN,
    RECOUNT,
    UNBOUNDED,
    HostQueue,
    queued_bytes,
)


def test_a_real_udp_socket_says_what_it_has_queued() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        assert queued_bytes(s.fileno()) == 0
        s.sendto(b"x" * 1000, ("127.0.0.1", 9))
        assert queued_bytes(s.fileno()) >= 0  # loopback frees it at once, or nearly


def test_a_descriptor_that_is_not_a_socket_turns_the_bound_off(tmp_path) -> None:
    with open(tmp_path / "f", "wb") as f:
        q = HostQueue(f.fileno())
        assert q.room(1.0) == UNBOUNDED
        assert q.fd == -1  # not asked again
        q.sent(1.0, 1000)
        assert q.room(2.0) == UNBOUNDED


def test_a_port_without_a_real_socket_has_no_bound() -> None:
    class Port:
        def write(self, data: bytes, addr: object) -> None: ...

    assert HostQueue.of(Port()).room(0.0) == UNBOUNDED


def test_a_port_with_a_socket_reads_it() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:

        class Port:
            def getHandle(self) -> socket.socket:
                return s

        q = HostQueue.of(Port())
        assert q.fd == s.fileno()
        assert q.room(0.0) == UNBOUNDED  # nothing queued


def test_before_the_rate_is_known_the_queue_holds_the_minimum() -> None:
    q = HostQueue(-1)
    q.update(0.0, 10_000)
    assert q.room_after(10_000) == HOST_QUEUE_MIN - 10_000
    assert q.room_after(HOST_QUEUE_MIN + 1) == 0


def test_an_empty_queue_sets_no_bound() -> None:
    """The link took all that was sent: the rate alone paces (a fast link, or
    veth's noqueue, where the socket never has anything queued)."""
    q = HostQueue(-1)
    assert q.room_after(0) == UNBOUNDED
    drain_at(q, 12.5e6, 0.2)
    assert q.drain and q.room_after(0) == UNBOUNDED


def drain_at(
    q: HostQueue, rate: float, seconds: float, tick: float = 0.002, cost: float = 1.0
) -> int:
    """A sender offering half again what a link of ``rate`` (of the queue's
    bytes) a second takes, each tick, within the room; each byte written
    costs the queue ``cost`` bytes. The most the queue held."""
    now, queued, most = 0.0, 0, 0
    q.update(now, queued)
    while now < seconds:
        room = q.room_after(queued)  # `room` reads, then the session writes
        written = min(room, int(1.5 * rate / cost * tick) + 1)
        before, queued = queued, queued + int(written * cost)
        q.wrote(before, queued, written)  # `sent` reads again
        q.after = (now, queued)
        most = max(most, queued)
        now += tick
        queued = max(0, queued - int(rate * tick))
        q.update(now, queued)
    return most


def test_the_links_rate_is_learnt_while_the_queue_stands() -> None:
    q = HostQueue(-1)
    drain_at(q, 12.5e6, 0.2)  # 100 Mbit/s
    assert q.drain == pytest.approx(12.5e6, rel=0.01)
    assert q.limit() == pytest.approx(12.5e6 * HOST_QUEUE, rel=0.01)  # 40 ms of it


def test_the_limit_is_at_most_the_maximum_on_a_fast_link() -> None:
    q = HostQueue(-1)
    assert drain_at(q, 1.25e9, 0.2) <= HOST_QUEUE_MAX + 1.5 * 1.25e9 * 0.002  # 10 Gbit/s
    assert q.drain == pytest.approx(1.25e9, rel=0.01)
    assert q.limit() == HOST_QUEUE_MAX


def test_a_slow_link_gets_a_small_queue() -> None:
    q = HostQueue(-1)
    drain_at(q, 125_000, 0.5)  # 1 Mbit/s: 40 ms is 5 KB, less than the floor
    assert q.limit() == HOST_QUEUE_FLOOR


def test_what_a_byte_written_costs_the_queue_is_learnt_and_kept_within_the_limit() -> None:
    """Each datagram's buffer costs the queue more than its bytes: the room
    is in bytes to write, so the queue still holds no more than its limit."""
    q = HostQueue(-1)
    most = drain_at(q, 12.5e6, 0.5, cost=1.3)
    assert q.cost == pytest.approx(1.3, rel=0.01)
    assert q.drain == pytest.approx(12.5e6, rel=0.01)
    assert most <= q.limit() + 1.3 * 1024
    assert q.room_after(q.limit() - 13_000) == pytest.approx(10_000, abs=2)


def test_a_write_too_small_or_a_queue_that_shrank_teaches_no_cost() -> None:
    q = HostQueue(-1)
    q.wrote(10_000, 12_000, 100)  # too small a write to tell
    q.wrote(10_000, 9_000, 50_000)  # the link took more than was written
    assert q.cost == 1.0
    q.wrote(0, 10**9, 2000)  # absurd: bounded
    assert q.cost <= 1.0 + 3.0 / 8


def learnt(drain: float = 12.5e6) -> HostQueue:
    q = HostQueue(-1)
    drain_at(q, drain, 0.2)
    return q


def test_one_session_held_back_has_no_share_to_keep_to() -> None:
    q = learnt()
    q.held(1.0, "a")
    assert q.share(1.001, "a") == UNBOUNDED
    assert q.share(1.001, "b") == UNBOUNDED  # never held back: not counted


def test_sessions_held_back_together_each_get_an_equal_share_of_the_link() -> None:
    q = learnt()
    q.held(1.0, "a")
    q.held(1.0, "b")
    q.held(1.0, "c")
    assert q.share(1.0, "a") == 0  # nothing earned yet
    assert q.share(1.002, "a") == pytest.approx(12.5e6 / 3 * 0.002, abs=1)
    q.sent(1.002, 5000, "a")  # what it wrote is spent (no socket: no reading)
    assert q.share(1.004, "a") == pytest.approx(12.5e6 / 3 * 0.004 - 5000, abs=1)
    for session in "abc":
        q.held(1.999, session)
    assert q.share(2.0, "b") == int(q.limit() / 3)  # saved up to its share of the queue


def test_a_share_ends_with_its_session_or_when_it_is_no_longer_held_back() -> None:
    q = learnt()
    q.held(1.0, "a")
    q.held(1.0, "b")
    assert q.share(1.01, "a") != UNBOUNDED
    q.forget("b")
    assert q.share(1.01, "a") == UNBOUNDED
    q.held(1.0, "b")
    assert q.share(1.0 + ACTIVE_FOR + 0.001, "a") == UNBOUNDED  # neither held back lately
    q.forget("a")
    q.forget("a")  # twice: nothing


def test_the_sessions_sharing_are_counted_once_a_recount_not_once_a_tick() -> None:
    """Each session's tick asks for its share: with many sessions, counting
    them every time would cost the square of their number each tick."""
    q = learnt()
    for i in range(200):
        q.held(1.0, i)
    q.share(1.0, 0)
    assert q.active == 200 and q.counted_at == 1.0
    for i in range(200):
        q.held(1.001, i)  # held again, already counted: no recount
        q.share(1.001, i)
    assert q.counted_at == 1.0
    q.held(1.002, "new")  # one more: counted at once
    q.share(1.002, 0)
    assert q.active == 201
    # the 200 not held back since 1.001 stop counting within RECOUNT of ACTIVE_FOR
    q.held(1.001 + ACTIVE_FOR + 0.001, "new")
    q.share(1.001 + ACTIVE_FOR + RECOUNT + 0.001, "new")
    assert q.active == 1


def test_the_room_is_the_queues_within_the_sessions_share(monkeypatch) -> None:
    q = learnt()
    q.fd, q.after = 3, None  # a first reading: it teaches nothing of the link
    monkeypatch.setattr(hostqueue, "queued_bytes", lambda fd: 100_000)
    q.held(1.0, "a")
    q.held(1.0, "b")
    q.share(1.0, "a")
    assert q.room(1.002, "a") == pytest.approx(12.5e6 / 2 * 0.002, abs=1)
    assert q.room(1.002, None) == q.room_after(100_000)  # no session: the queue's alone


def test_time_the_queue_ran_dry_is_not_taken_for_the_links_rate() -> None:
    q = HostQueue(-1)
    q.update(0.0, 50_000)
    q.update(0.1, 0)  # dry: the link was idle for part of the 0.1 s
    assert q.busy == 0 and q.drain == 0
    q.update(0.1, 50_000)
    q.update(0.1 + DRAIN_WINDOW, 25_000)
    assert q.drain == pytest.approx(25_000 / DRAIN_WINDOW)


def test_a_reading_no_later_than_the_last_learns_nothing() -> None:
    q = HostQueue(-1)
    q.update(1.0, 50_000)
    q.update(1.0, 40_000)
    q.update(0.5, 30_000)  # a clock that stepped back
    assert q.busy == 0 and q.drained == 0


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=1e5, max_value=2e9),
    tick=st.floats(min_value=0.0005, max_value=0.03),
    cost=st.floats(min_value=1.0, max_value=2.0),
)
def test_a_standing_queue_stays_near_its_limit_and_learns_any_rate(
    rate: float, tick: float, cost: float
) -> None:
    """Whatever the link and the ticks: the queue holds at most its limit
    plus one tick's offer (a tick that found it empty is unbounded), and the
    rate learnt is the link's."""
    q = HostQueue(-1)
    offer = int(1.5 * rate * tick) + 1
    most = drain_at(q, rate, 0.5, tick, cost)
    assert most <= max(HOST_QUEUE_MAX, HOST_QUEUE_MIN) + offer
    if q.drain:  # learnt where the queue stood; within a byte a tick of the truth
        assert abs(q.drain - rate) <= 1 / tick + 1e-6 * rate


def test_queued_bytes_raises_for_what_is_not_a_socket(tmp_path, monkeypatch) -> None:
    with open(tmp_path / "f", "wb") as f, pytest.raises(OSError):
        queued_bytes(f.fileno())
    calls = []
    monkeypatch.setattr(hostqueue, "queued_bytes", lambda fd: calls.append(fd) or 7)
    assert HostQueue(3).room(0.0) == HOST_QUEUE_MIN - 7 and calls == [3]
    monkeypatch.setattr(hostqueue, "queued_bytes", lambda fd: 0)
    assert HostQueue(3).room(0.0) == UNBOUNDED
