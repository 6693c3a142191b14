"""The CN's receiving side of one subscription: packets in, checked blocks out.

A packet is accepted only if its SSRC is the session's and its digest
matches the Sent notice the SN wrote to this CN's TLS channel for that
sequence number (the RTP timestamp carries the 32-bit sequence). Packets
that arrive before their notice wait a short while; notices whose packet
has not come LOSS_AFTER after the notice are losses, reported back so the
SN sends those units again. A packet that comes later still (a CN behind
on its socket buffer under CPU load) is accepted while its notice is kept
(KEEP), counted ``late`` and no longer ``lost``, and counted received in
the next report (its loss was reported already: a CN that falls behind
under CPU load reports half, not all, of the period lost). Everything dropped is
counted by reason.

Each report says how many packets were lost and how many received *of the
same notices*: those whose LOSS_AFTER ran out since the last report. (It
used to set the losses of notices 0.3 s old against the packets of the
last 0.1 s, which overstated loss whenever the CN fell behind.)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import task
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from mcp2p.core.wanted import RangeSet
from mcp2p.errors import ProtocolError
from mcp2p.wire.rtp import decode_packet, packet_digest

_log = Logger()

HOLD = 2.0  # seconds a packet waits for its notice (TLS notices lag UDP under CPU load)
LOSS_AFTER = 0.3  # seconds after its notice a packet is reported lost
KEEP = 2.0  # seconds after its notice a late packet is still accepted (> the rcvbuf's lag)
MAX_HELD = 16384  # sequence numbers with packets waiting for notices, at most
MAX_CANDIDATES = 4  # packets held for one sequence number (a forger's copies among them)
MAX_EXPECTED = 1 << 18  # notices waiting for packets at most
REPORT_EVERY = 0.1


class Receiver(DatagramProtocol):
    noisy = False

    def __init__(
        self,
        clock: Any,
        ssrc: int,
        deliver: Callable[[int, int, bytes], None],
        report: Callable[[RangeSet, int], None],
        source: str = "",
    ) -> None:
        self.clock = clock
        self.ssrc = ssrc
        self.deliver = deliver  # (piece, symbol, payload) of an authenticated packet
        self.report = report  # (lost sequence numbers, packets received since last)
        self.source = source  # the SN's address; "" accepts any (multicast checks by digest)
        # seq -> [(datagram, its arrival)], first arrival first
        self.held: dict[int, list[tuple[bytes, float]]] = {}
        self.expected: dict[int, tuple[bytes, float]] = {}  # seq -> (digest, notice time)
        self.overdue: dict[int, tuple[bytes, float]] = {}  # reported lost, may still come
        # accepted a while ago (KEEP): a later copy is a duplicate or a forgery
        self.accepted: dict[int, tuple[bytes, float]] = {}
        self.batches: deque[tuple[float, int]] = deque()  # (notice time, notices) in order
        self.late_since_report = 0  # late packets: received in the next report
        self.last_packet = clock.seconds()
        # Counts, and two float sums in seconds: how long forged packets were held
        # from their arrival until the notice that exposed them.
        self.counters: dict[str, float] = {
            "packets": 0,
            "accepted": 0,
            "malformed": 0,
            "foreign": 0,
            "forged": 0,
            "forged_hold_max": 0.0,
            "forged_hold_sum": 0.0,
            "unannounced": 0,
            "duplicate": 0,
            "lost": 0,
            "late": 0,
            "notices": 0,
        }
        self.loop = task.LoopingCall(self._housekeeping)
        self.loop.clock = clock

    def startProtocol(self) -> None:  # noqa: N802
        self.loop.start(REPORT_EVERY, now=False)

    def stopProtocol(self) -> None:  # noqa: N802
        if self.loop.running:
            self.loop.stop()

    def datagramReceived(self, data: bytes, addr: Any) -> None:  # noqa: N802
        self.counters["packets"] += 1
        try:
            packet = decode_packet(data)
        except ProtocolError:
            self.counters["malformed"] += 1
            return
        if packet.ssrc != self.ssrc:
            self.counters["foreign"] += 1
            return
        seq = packet.timestamp
        done = self.accepted.get(seq)
        if done is not None:
            if packet_digest(data) == done[0]:
                self.counters["duplicate"] += 1
            else:
                self._forged(0.0)  # a copy of a packet we have, altered
            return
        notice = self.expected.get(seq)
        late = notice is None and seq in self.overdue
        if late:
            notice = self.overdue[seq]
        if notice is not None:
            if packet_digest(data) == notice[0]:
                if late:
                    # Reported lost (the SN may send its unit again), but here now.
                    del self.overdue[seq]
                    self.counters["late"] += 1
                    self.counters["lost"] -= 1
                    self.late_since_report += 1
                else:
                    del self.expected[seq]
                self._accept(packet, seq, notice[0])
            else:
                # Not what our channel announced; the genuine packet may still come.
                self._forged(0.0)
            return
        held = self.held.get(seq)
        if held is None:
            if len(self.held) >= MAX_HELD:
                self.counters["unannounced"] += 1
                return
            self.held[seq] = [(data, self.clock.seconds())]
        elif len(held) < MAX_CANDIDATES and all(data != d for d, _ in held):
            held.append((data, self.clock.seconds()))
        else:
            self.counters["duplicate"] += 1

    def _forged(self, held_for: float) -> None:
        """Count a forged packet dropped after ``held_for`` seconds."""
        self.counters["forged"] += 1
        self.counters["forged_hold_sum"] += held_for
        if held_for > self.counters["forged_hold_max"]:
            self.counters["forged_hold_max"] = held_for

    def _accept(self, packet: Any, seq: int, digest: bytes) -> None:
        if len(self.accepted) < MAX_EXPECTED:
            self.accepted[seq] = (digest, self.clock.seconds())
        self.counters["accepted"] += 1
        self.last_packet = self.clock.seconds()
        self.deliver(packet.piece, packet.symbol, packet.payload)

    def notices(self, notices: list[tuple[int, bytes]]) -> None:
        now = self.clock.seconds()
        self.counters["notices"] += len(notices)
        if notices:
            self.batches.append((now, len(notices)))
        for seq, digest in notices:
            held = self.held.pop(seq, None)
            if held is not None:
                genuine = None
                for data, arrival in held:
                    if genuine is None and packet_digest(data) == digest:
                        genuine = data
                    else:
                        self._forged(max(0.0, now - arrival))
                if genuine is not None:
                    self._accept(decode_packet(genuine), seq, digest)
                    continue
            if len(self.expected) < MAX_EXPECTED:
                self.expected[seq] = (digest, now)

    def _housekeeping(self) -> None:
        now = self.clock.seconds()
        lost = RangeSet()
        count = 0
        for seq, notice in list(self.expected.items()):
            if now - notice[1] > LOSS_AFTER:
                del self.expected[seq]
                lost.add(seq)
                count += 1
                if len(self.overdue) < MAX_EXPECTED:
                    self.overdue[seq] = notice
        _expire(self.overdue, now - KEEP)
        _expire(self.accepted, now - KEEP)
        settled = 0  # notices whose LOSS_AFTER ran out now: each lost or received
        while self.batches and now - self.batches[0][0] > LOSS_AFTER:
            settled += self.batches.popleft()[1]
        for seq, datagrams in list(self.held.items()):
            if now - datagrams[0][1] > HOLD:
                del self.held[seq]
                self.counters["unannounced"] += len(datagrams)
        self.counters["lost"] += count
        received = max(0, settled - count) + self.late_since_report
        self.late_since_report = 0
        if lost or received:
            self.report(lost, received)

    def successor(self) -> Receiver:
        """A receiver for a new socket (the session moved group) that keeps this
        one's notices, held packets and counters."""
        after = Receiver(self.clock, self.ssrc, self.deliver, self.report, self.source)
        after.held, after.expected = self.held, self.expected
        after.overdue, after.batches = self.overdue, self.batches
        after.accepted = self.accepted
        after.counters = self.counters
        after.late_since_report = self.late_since_report
        return after

    def pending(self) -> int:
        """Packets announced, not yet arrived and not yet reported lost."""
        return len(self.expected)


def _expire(entries: dict[int, tuple[bytes, float]], before: float) -> None:
    """Drop the entries stamped before ``before``. They were added in time
    order (dicts keep it), so stop at the first younger one, without copying."""
    while entries:
        seq, (_, when) = next(iter(entries.items()))
        if when >= before:
            break
        del entries[seq]
