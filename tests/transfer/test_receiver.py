"""Receiver with a Clock: authentication by notices in every arrival order."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from mcp2p.core.wanted import RangeSet
from mcp2p.transfer.receiver import HOLD, KEEP, LOSS_AFTER, REPORT_EVERY, Accepted, Receiver
from mcp2p.wire.rtp import pack_header, packet_digest

SSRC = 0x1234


def packet(seq: int, payload: bytes = b"x" * 100, ssrc: int = SSRC) -> bytes:
    return pack_header(seq & 0xFFFF, seq, ssrc, 0, seq) + payload


def receiver() -> tuple[Receiver, Clock, list[Any], list[Any]]:
    clock = Clock()
    got: list[Any] = []
    reports: list[Any] = []
    r = Receiver(
        clock,
        SSRC,
        lambda p, s, d: got.append((p, s, d)),
        lambda lost, n: reports.append((list(lost), n)),
    )
    r.startProtocol()
    return r, clock, got, reports


def forge(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0xFF])


def test_packet_before_notice_and_notice_before_packet_are_both_accepted() -> None:
    r, clock, got, _ = receiver()
    a, b = packet(1), packet(2)
    r.datagramReceived(a, ("h", 1))
    r.notices([(1, packet_digest(a)), (2, packet_digest(b))])
    r.datagramReceived(b, ("h", 1))
    assert [s for _, s, _ in got] == [1, 2]
    assert r.counters["accepted"] == 2


def test_forged_copy_is_rejected_whichever_arrives_first() -> None:
    for forged_first in (True, False):
        r, clock, got, _ = receiver()
        genuine = packet(7)
        pair = [forge(genuine), genuine] if forged_first else [genuine, forge(genuine)]
        for d in pair:
            r.datagramReceived(d, ("h", 1))
        r.notices([(7, packet_digest(genuine))])
        assert len(got) == 1 and got[0][2] == genuine[22:]
        assert r.counters["forged"] == 1


def test_forgery_after_the_notice_is_counted_and_the_genuine_still_accepted() -> None:
    r, clock, got, _ = receiver()
    genuine = packet(9)
    r.notices([(9, packet_digest(genuine))])
    r.datagramReceived(forge(genuine), ("h", 1))
    r.datagramReceived(genuine, ("h", 1))
    assert r.counters["forged"] == 1 and len(got) == 1


def test_foreign_ssrc_truncated_and_unannounced_packets_are_counted_drops() -> None:
    r, clock, got, _ = receiver()
    r.datagramReceived(packet(1, ssrc=99), ("h", 1))
    r.datagramReceived(b"\x80\x60\x00", ("h", 1))
    r.datagramReceived(packet(5), ("h", 1))  # never announced
    clock.advance(HOLD + 2 * REPORT_EVERY)
    assert got == []
    assert r.counters["foreign"] == 1
    assert r.counters["malformed"] == 1
    assert r.counters["unannounced"] == 1


def test_announced_packets_that_never_come_are_reported_lost() -> None:
    r, clock, got, reports = receiver()
    a = packet(1)
    r.notices([(1, packet_digest(a)), (2, b"\0" * 8), (3, b"\0" * 8)])
    r.datagramReceived(a, ("h", 1))
    for _ in range(int((LOSS_AFTER + 2 * REPORT_EVERY) / REPORT_EVERY) + 1):
        clock.advance(REPORT_EVERY)
    lost = [seq for seqs, _ in reports for seq in seqs]
    assert lost == [2, 3]
    assert sum(n for _, n in reports) == 1
    assert r.counters["lost"] == 2
    assert isinstance(RangeSet.from_indices(lost), RangeSet)
    r.stopProtocol()
    assert clock.getDelayedCalls() == []


def test_wanted_maps_too_big_for_one_amp_value_are_chunked_or_coarsened() -> None:
    from mcp2p.transfer.control import CHUNK
    from mcp2p.transfer.fetch import wanted_chunks

    # Every other block of a 200 MB file: far over AMP's 64 KiB per value.
    units = RangeSet.from_indices(range(0, 300_000, 2))
    assert len(units.encode()) > CHUNK
    parts = wanted_chunks(units, replace=False)
    assert len(parts) > 1 and all(len(p) <= CHUNK for p in parts)
    again = RangeSet()
    for p in parts:
        again.update(RangeSet.decode(p, limit=1 << 32))
    assert again == units
    [one] = wanted_chunks(units, replace=True)
    assert len(one) <= CHUNK
    coarse = RangeSet.decode(one, limit=1 << 32)
    assert units.difference(coarse) == RangeSet()  # a superset: no need is lost


def test_forged_packets_count_how_long_they_were_held() -> None:
    r, clock, got, _ = receiver()
    assert r.counters["forged_hold_max"] == 0.0 and r.counters["forged_hold_sum"] == 0.0
    genuine, other = packet(3), packet(4)
    r.datagramReceived(forge(genuine), ("h", 1))  # held 0.25 s
    clock.advance(0.05)
    r.datagramReceived(forge(other), ("h", 1))  # held 0.2 s
    clock.advance(0.2)
    r.datagramReceived(genuine, ("h", 1))
    r.notices([(3, packet_digest(genuine)), (4, packet_digest(other))])
    r.datagramReceived(forge(other), ("h", 1))  # after its notice: dropped at once
    assert r.counters["forged"] == 3
    assert abs(r.counters["forged_hold_max"] - 0.25) < 1e-9
    assert abs(r.counters["forged_hold_sum"] - 0.45) < 1e-9
    assert len(got) == 1
    assert isinstance(r.counters["forged_hold_sum"], float)


def run(clock: Clock, seconds: float) -> None:
    for _ in range(round(seconds / REPORT_EVERY)):
        clock.advance(REPORT_EVERY)


def test_a_late_packet_is_reported_lost_then_accepted_and_no_longer_counted_lost() -> None:
    r, clock, got, reports = receiver()
    a = packet(1)
    r.notices([(1, packet_digest(a))])
    run(clock, LOSS_AFTER + 2 * REPORT_EVERY)
    assert [seqs for seqs, _ in reports] == [[1]]  # reported in time for a resend
    assert r.counters["lost"] == 1 and r.pending() == 0
    r.datagramReceived(forge(a), ("h", 1))  # a forgery of it is still caught
    r.datagramReceived(a, ("h", 1))
    assert len(got) == 1 and got[0][2] == a[22:]
    assert r.counters["late"] == 1 and r.counters["lost"] == 0
    assert r.counters["forged"] == 1 and r.counters["unannounced"] == 0
    reports.clear()
    clock.advance(REPORT_EVERY)
    assert reports == [([], 1)]  # received, in the report after its loss


def test_a_packet_later_than_keep_is_unannounced() -> None:
    r, clock, got, _ = receiver()
    a = packet(1)
    r.notices([(1, packet_digest(a))])
    run(clock, KEEP + 2 * REPORT_EVERY)
    r.datagramReceived(a, ("h", 1))
    run(clock, HOLD + 2 * REPORT_EVERY)
    assert got == [] and r.counters["unannounced"] == 1 and r.counters["lost"] == 1
    assert r.overdue == {} and not r.expected


def test_reports_set_losses_against_the_packets_of_the_same_notices() -> None:
    # 100 notices per 0.1 s, 1 in 100 lost, and the CN stalls (receives nothing)
    # for 0.2 s, then catches up: the loss reported must stay 1%, not jump
    # because the losses of old notices meet the few packets of a stall.
    r, clock, got, reports = receiver()
    backlog: list[bytes] = []
    seq = 0
    for step in range(40):
        batch = [packet(seq + i) for i in range(100)]
        r.notices([(seq + i, packet_digest(p)) for i, p in enumerate(batch)])
        seq += 100
        backlog += batch[1:]  # the first of each batch is lost
        if not 10 <= step < 12:  # a stall of 0.2 s (< LOSS_AFTER)
            for p in backlog:
                r.datagramReceived(p, ("h", 1))
            backlog = []
        clock.advance(REPORT_EVERY)
    for lost, received in reports:
        if lost or received:
            assert len(lost) * 100 <= 2 * (len(lost) + received), (len(lost), received)
    assert r.counters["lost"] == sum(len(seqs) for seqs, _ in reports)


def test_a_packet_waits_for_a_notice_that_lags_it_by_more_than_a_second() -> None:
    # Under CPU load the TLS notices fall behind the UDP packets.
    r, clock, got, _ = receiver()
    a = packet(1)
    r.datagramReceived(a, ("h", 1))
    run(clock, 1.5)
    r.notices([(1, packet_digest(a))])
    assert len(got) == 1 and r.counters["unannounced"] == 0


def test_an_asm_collision_moves_one_session_once_not_once_per_datagram() -> None:
    from types import SimpleNamespace

    from mcp2p.transfer.serving import _Monitor
    from mcp2p.wire.rtp import pack_header

    clock = Clock()
    moves: list[float] = []
    session = SimpleNamespace(session_id=1000, state="RUNNING")
    monitor = _Monitor(clock, session, lambda s: moves.append(clock.seconds()))  # type: ignore[arg-type]

    def burst(ssrc: int, n: int = 44) -> None:
        for i in range(n):
            monitor.datagramReceived(pack_header(i, i, ssrc, 0, 0) + b"x", ("10.0.0.9", 1))

    burst(1000)  # our own packets looped back
    assert moves == []
    burst(2000)  # a higher SSRC: we are the lower one, so we yield, once
    assert moves == [0.0]
    clock.advance(0.1)
    burst(2000)  # still queued from the old group: ignored
    assert moves == [0.0]
    # A lower SSRC on our (new) group: it should yield; we wait for it ...
    clock.advance(1.0)
    burst(5)
    clock.advance(1.0)
    burst(5)
    assert moves == [0.0]
    # ... and move after PERSIST if it does not (a sender that never moves).
    clock.advance(1.1)
    burst(5)
    assert moves == [0.0, 3.2]


def test_an_altered_copy_of_a_packet_already_accepted_is_forged_an_exact_one_a_duplicate() -> None:
    clock = Clock()
    got: list[Any] = []
    r = Receiver(clock, 7, lambda *a: got.append(a), lambda lost, received: None)
    r.startProtocol()
    genuine = pack_header(1, 1, 7, 0, 0) + b"block"
    r.notices([(1, packet_digest(genuine))])
    r.datagramReceived(genuine, ("10.0.0.1", 1))
    r.datagramReceived(genuine, ("10.0.0.1", 1))
    r.datagramReceived(genuine[:-1] + b"X", ("10.0.0.9", 1))
    assert len(got) == 1
    assert (r.counters["duplicate"], r.counters["forged"]) == (1, 1)
    clock.advance(KEEP + 0.5)  # still known: the last 2^18 packets are
    r.datagramReceived(genuine[:-1] + b"Y", ("10.0.0.9", 1))
    assert r.counters["forged"] == 2 and not r.held
    # A packet 2^18 later takes its slot: a copy of the old one is unknown
    # again and waits for a notice like any.
    r.accepted.put(1 + r.accepted.mask + 1, b"z" * 8)
    r.datagramReceived(genuine[:-1] + b"Z", ("10.0.0.9", 1))
    assert r.counters["forged"] == 2 and 1 in r.held
    r.stopProtocol()


def test_a_move_when_every_pool_group_is_ours_stays_instead_of_searching_forever() -> None:
    import ipaddress
    import random
    from types import SimpleNamespace

    from mcp2p.transfer.serving import ServingService

    pool = [ipaddress.ip_network("239.192.0.0/30")]  # 2 usable groups
    ours = {i: SimpleNamespace(group=g) for i, g in enumerate(["239.192.0.1", "239.192.0.2"])}
    moved: list[str] = []

    class Session:
        session_id, group = 1, "239.192.0.1"
        move = staticmethod(moved.append)

    session = Session()
    fake = SimpleNamespace(
        config=SimpleNamespace(asm_pool=pool),  # [serving]
        interface="127.0.0.1",
        interface6="",
        sessions=ours,
        monitors={},
        rng=random.Random(1),
        counters={"move_failed": 0},
    )
    ServingService._move(fake, session)  # type: ignore[arg-type]
    assert moved == [] and fake.counters["move_failed"] == 1
    ours[1].group = "239.192.0.9"  # a group is free again: the move happens
    ServingService._move(fake, session)  # type: ignore[arg-type]
    assert moved == ["239.192.0.2"]


def test_a_gap_behind_a_later_packet_is_reported_at_once_not_after_loss_after() -> None:
    from mcp2p.transfer.receiver import GAP_AFTER

    r, clock, got, reports = receiver()
    packets = [packet(s) for s in range(10)]
    r.notices([(s, packet_digest(p)) for s, p in enumerate(packets)])
    for p in packets[:4] + packets[5:]:  # 4 never comes
        r.datagramReceived(p, ("h", 1))
    clock.advance(GAP_AFTER + REPORT_EVERY)
    assert reports and reports[0][0] == [4] and reports[0][1] == 9
    assert clock.seconds() < LOSS_AFTER


def test_a_packet_not_yet_come_with_nothing_after_it_waits_for_loss_after() -> None:
    r, clock, got, reports = receiver()
    packets = [packet(s) for s in range(10)]
    r.notices([(s, packet_digest(p)) for s, p in enumerate(packets)])
    for p in packets[:5]:  # 5.. are on their way (the CN is behind, say)
        r.datagramReceived(p, ("h", 1))
    clock.advance(2 * REPORT_EVERY)
    assert [lost for lost, _ in reports if lost] == []
    clock.advance(LOSS_AFTER)
    assert sorted(s for lost, _ in reports for s in lost) == list(range(5, 10))


def test_the_last_packets_of_a_round_are_reported_when_the_sn_runs_dry() -> None:
    """Nothing follows the last packets of a round: a Drained from the SN
    (after them, on its channel) shows their gap, and the loss is reported
    DRAIN_WAIT later, not at the next report nor after LOSS_AFTER."""
    from mcp2p.transfer.receiver import DRAIN_WAIT, GAP_AFTER

    r, clock, got, reports = receiver()
    packets = [packet(s) for s in range(10)]
    r.notices([(s, packet_digest(p)) for s, p in enumerate(packets)])
    clock.advance(GAP_AFTER + 0.01)  # the lists led their packets
    for p in packets[:8]:  # 8 and 9, the last, are lost
        r.datagramReceived(p, ("h", 1))
    r.drained(9)
    clock.advance(DRAIN_WAIT)
    assert reports == [([8, 9], 8)]
    assert clock.seconds() < REPORT_EVERY
    clock.advance(2 * LOSS_AFTER)  # each loss reported once
    assert [lost for lost, _ in reports if lost] == [[8, 9]]


def test_a_drained_loss_waits_for_its_notice_to_be_gap_after_old() -> None:
    """A packet still on its way (its notice young) is not taken for lost:
    its loss is reported once the notice is GAP_AFTER old, still before the
    next report; a packet that came meanwhile is not reported at all."""
    from mcp2p.transfer.receiver import DRAIN_WAIT, GAP_AFTER

    r, clock, got, reports = receiver()
    packets = [packet(s) for s in range(4)]
    r.notices([(s, packet_digest(p)) for s, p in enumerate(packets)])
    r.datagramReceived(packets[0], ("h", 1))
    r.drained(3)
    clock.advance(DRAIN_WAIT)
    assert [lost for lost, _ in reports if lost] == []
    r.datagramReceived(packets[2], ("h", 1))
    clock.advance(GAP_AFTER)
    assert [lost for lost, _ in reports if lost] == [[1, 3]]
    assert clock.seconds() < REPORT_EVERY


def test_a_drained_with_nothing_missing_reports_no_loss_and_schedules_one_call() -> None:
    r, clock, got, reports = receiver()
    packets = [packet(s) for s in range(3)]
    r.notices([(s, packet_digest(p)) for s, p in enumerate(packets)])
    for p in packets:
        r.datagramReceived(p, ("h", 1))
    for _ in range(1000):  # a flood of them: one early report pending at a time
        r.drained(2)
    assert len(clock.getDelayedCalls()) == 2  # the report loop and one early report
    clock.advance(0.01)
    assert reports == [([], 3)]
    r.stopProtocol()
    assert clock.getDelayedCalls() == []


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_accepted_knows_no_packet_at_first_and_costs_memory_only_as_used() -> None:
    """Its 4 MB are mapped, not written: 20 receivers' worth cost about
    nothing until packets land in them (it was 2 ms of page faults at the
    start of every fetch). An empty slot must not pass for sequence 0."""
    before = _rss_kib()
    made = [Accepted() for _ in range(20)]
    assert _rss_kib() - before < 8 << 10  # KiB; 80 MiB if the arrays were written
    a = made[0]
    size = a.mask + 1
    for seq in (0, 1, size - 1, size, size + 1, (1 << 40) + 3):
        assert a.get(seq) is None
    a.put(0, b"zerozero")
    a.put(size + 1, b"one+size")
    assert a.get(0) == b"zerozero" and a.get(size) is None
    assert a.get(size + 1) == b"one+size" and a.get(1) is None


def test_a_packet_zero_before_its_notice_is_held_not_taken_for_a_forgery() -> None:
    clock = Clock()
    got: list[Any] = []
    r = Receiver(clock, SSRC, lambda *item: got.append(item), lambda lost, n: None)
    r.datagramReceived(pack_header(0, 0, SSRC, 0, 0) + b"x" * 8, ("127.0.0.1", 7712))
    assert r.counters["forged"] == 0 and 0 in r.held
