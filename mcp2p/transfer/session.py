"""The SN's sending side: one ``Session`` streams one content to one destination.

A multicast session (a group, and the SN as source for SSM) is shared by
every CN that subscribed to that content in multicast mode; a unicast
subscriber gets a session of its own. Each tick the session takes tokens
from a token bucket for the granted rate and sends a burst of packets:
for each, the [serving] scheduler picks a unit (by default a carousel over
the units the most subscribers still need), the block code makes its next symbol, and the
packet's digest goes into the Sent notices that are written to every
subscriber's TLS channel just before the burst leaves. Sending is
optimistic: a unit sent is no longer needed by anyone; a CN's loss report
puts back what it missed (DESIGN.md 5.5, 5.6).

Rate: each subscriber's ``ceiling`` is the rate its user asked for (``--rate``,
DESIGN.md 5.6), and the session never sends faster than the smallest ceiling
among its current subscribers; loss reports adapt the rate below that. The
token bucket holds only BURST_SECONDS of the rate (at least two packets), so
even the first burst of a slow session stays near its rate.

States: RUNNING (someone needs something), IDLE (nobody does: a grace
timer runs), ENDED (grace over or stopped; every subscriber was told).
"""

from __future__ import annotations

import os
import socket
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import task
from twisted.logger import Logger

from mcp2p.core.layout import Layout
from mcp2p.core.pacing import TokenBucket
from mcp2p.core.ratecontrol import RateController
from mcp2p.core.scheduler import make_scheduler
from mcp2p.core.wanted import RangeSet
from mcp2p.wire.rtp import HEADER_LEN, pack_header, packet_digest

_log = Logger()

JOIN_DELAY = 0.05  # seconds a new multicast session waits for its first CN to join
TICK = 0.002  # seconds between bursts
MAX_BURST = 256  # packets per tick at most
SEQ_RING = 1 << 17  # sequence numbers remembered for loss reports (unit of each)
IP_UDP_OVERHEAD = 28
RATE_PERIOD = 0.5  # seconds between two rate adaptations
JOIN_GRACE = 1.0  # seconds after subscribing whose losses do not steer the rate
BURST_SECONDS = 0.02  # the bucket saves this much of the rate: ten ticks, for a late reactor


@dataclass
class Subscriber:
    id: int
    client: Any  # ControlServer
    session: Session
    since: float = 0.0  # when it subscribed
    ceiling: int = 0  # the most it wants sent, bit/s (its --rate); 0: the session's maximum
    reported_rate: int = 0
    lost: int = 0
    received: int = 0
    counters: dict[str, int] = field(default_factory=dict)


class Session:
    def __init__(
        self,
        reactor: Any,
        *,
        session_id: int,
        layout: Layout,
        code: Any,
        path: str,
        destination: tuple[str, int],
        port: Any,
        rate: int,
        min_rate: int,
        max_rate: int,
        grace: float,
        on_end: Callable[[Session], None],
        rng: Any,
        group: str = "",
        source: str = "",
        scheduler: str = "mostwanted",
    ) -> None:
        self.reactor = reactor
        self.session_id = session_id
        self.layout = layout
        self.code = code
        self.destination = destination
        self.port = port  # an IListeningPort (UDP) to write on
        self.group = group
        self.source = source
        self.fd = os.open(path, os.O_RDONLY)
        self.encoder = code.encoder(layout, self._read)
        self.units = code.units(layout)
        self.scheduler = make_scheduler(scheduler, self.units, rng)  # [serving] scheduler
        self.symbols_sent = array("l", bytes(8 * self.units))  # per unit: n of the next symbol
        self.seq = 0
        self.seq_units = array("l", bytes(8 * SEQ_RING))
        self.rates = RateController(rate, min_rate, max_rate)
        self.packet_size = HEADER_LEN + layout.block_length + IP_UDP_OVERHEAD  # paced bytes
        self.bucket = TokenBucket(rate / 8, self._burst(rate), reactor.seconds())
        self.grace = grace
        self.loss_window: dict[int, list[int]] = {}  # subscriber -> [lost, received]
        self.rate_at = reactor.seconds()
        self.on_end = on_end
        self.subscribers: dict[int, Subscriber] = {}
        self.state = "IDLE"
        self.idle_since = reactor.seconds()
        self.loop = task.LoopingCall(self._tick)
        self.loop.clock = reactor
        self.counters = {
            "packets": 0,
            "bytes": 0,
            "send_errors": 0,
            "would_block": 0,
            "loss_reported": 0,
            "moves": 0,
        }

    # -- subscribers

    def add(self, sub: Subscriber, wanted: RangeSet) -> None:
        sub.since = self.reactor.seconds()
        self.subscribers[sub.id] = sub
        self._set_ceiling()
        self.set_wanted(sub, wanted, replace=True)
        if not self.loop.running:
            if self.group:
                # The CN joins the group only once our reply reached it: a
                # full bucket's first burst would be lost and sent twice
                # (the lab saw 1.9x the bytes for 32 KiB files). Wait a bit.
                self.bucket.empty_until(self.reactor.seconds() + JOIN_DELAY)
            self.loop.start(TICK, now=False)

    def set_wanted(self, sub: Subscriber, wanted: RangeSet, replace: bool) -> None:
        """Change what ``sub`` wants.

        ``replace``: it wants only units of ``wanted`` now (others are done);
        the units it keeps keep their remaining need, so a resync never makes
        the SN resend what is in flight. Otherwise ``wanted`` is added: each
        unit is needed in full again (a piece that failed verification).
        Losses come back through ``report_loss``, not through this.
        """
        known = sub.id in self.scheduler.subscribers
        current = self.scheduler.need_of(sub.id) if known else None
        one_symbol = self.units == self.layout.blocks
        if one_symbol:
            if isinstance(current, RangeSet):
                mine = current
            else:  # a unit lost twice is needed twice: still one set member
                mine = RangeSet.from_indices(u for u, c in (current or {}).items() if c > 0)
            if current is None:
                new: Any = wanted.copy()
            elif replace:
                new = mine.intersection(wanted)
            else:
                new = mine.union(wanted)
        else:
            counts = current if isinstance(current, dict) else {}
            if replace and current is not None:
                new = {u: c for u, c in counts.items() if u in wanted and c > 0}
            else:
                new = dict(counts)
                for unit in wanted:
                    new[unit] = max(new.get(unit, 0), self.code.need(self.layout, unit))
        self.scheduler.set_need(sub.id, new)

    def remove(self, sub_id: int) -> None:
        self.subscribers.pop(sub_id, None)
        self.loss_window.pop(sub_id, None)
        self.rates.forget(sub_id)
        if sub_id in self.scheduler.subscribers:
            self.scheduler.remove(sub_id)
        if not self.subscribers:
            self.end("no subscribers")
        else:
            self._set_ceiling()

    def _set_ceiling(self) -> None:
        """The session's ceiling: the smallest of its subscribers' ceilings.

        A shared multicast session goes no faster than its slowest-asking
        subscriber wants (one CN's --rate holds the others back, for now: the
        project will move a far slower receiver to its own session, DESIGN.md
        5.6); when that subscriber leaves, the ceiling rises and the rate
        climbs back by the controller's usual steps (5% of the ceiling per
        RATE_PERIOD: the others' paths never carried more than the old ceiling).
        """
        ceilings = [sub.ceiling or self.rates.maximum for sub in self.subscribers.values()]
        ceiling = min(ceilings, default=self.rates.maximum)
        if ceiling == self.rates.ceiling:
            return
        self.rates.ceiling = ceiling
        self._pace()
        if len(ceilings) > 1 or self.group:
            _log.info(
                "session {sid:08x}: ceiling {ceiling} bit/s for {subs} subscribers, rate {rate}",
                sid=self.session_id,
                ceiling=self.rates.ceiling,
                subs=len(ceilings),
                rate=self.rates.rate,
            )

    def _burst(self, rate: int) -> float:
        """Bytes the bucket may save at ``rate`` bit/s: BURST_SECONDS of it, and
        at least two packets (one packet more than a tick may need)."""
        return max(rate / 8 * BURST_SECONDS, 2 * self.packet_size)

    def _pace(self) -> None:
        """Pace at the controller's rate from now on."""
        rate = self.rates.rate
        self.bucket.set_rate(self.reactor.seconds(), rate / 8, self._burst(rate))

    def report_loss(self, sub: Subscriber, lost: RangeSet, received: int) -> int:
        oldest = self.seq - len(self.seq_units)
        count = 0
        for seq in lost:
            if oldest <= seq < self.seq:
                self.scheduler.add_need(sub.id, self.seq_units[seq % len(self.seq_units)])
                count += 1
        self.counters["loss_reported"] += count
        now = self.reactor.seconds()
        if now - sub.since < JOIN_GRACE:
            # A new subscriber joins its group only after our reply: what was sent
            # meanwhile is reported lost, but says nothing of the path's capacity.
            return int(self.rates.rate)
        window = self.loss_window.setdefault(sub.id, [0, 0])
        window[0] += count
        window[1] += received
        self._adapt(now)
        return int(self.rates.rate)

    def _adapt(self, now: float) -> None:
        """One rate step per RATE_PERIOD on every receiver's loss in it (see
        `RateController.period`: the slowest receiver's calculated rate, as in
        TFMCC, RFC 4654): a multicast session must not speed up once per
        receiver's report, and must slow down to the one that gets least."""
        if now - self.rate_at < RATE_PERIOD or not self.loss_window:
            return
        self.rates.period({sub: (w[0], w[1]) for sub, w in self.loss_window.items()})
        self._pace()
        self.loss_window.clear()
        self.rate_at = now

    # -- sending

    def _read(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def _tick(self) -> None:
        now = self.reactor.seconds()
        if self.state == "ENDED":
            return
        if self.scheduler.total_weight == 0:
            if self.state != "IDLE":
                self.state, self.idle_since = "IDLE", now
            elif now - self.idle_since >= self.grace:
                self.end("nothing wanted")
            return
        self.state = "RUNNING"
        size = self.packet_size
        budget = int(self.bucket.available(now) // size)
        if budget <= 0:
            return
        packets: list[bytes] = []
        notices: list[tuple[int, bytes]] = []
        ring = len(self.seq_units)
        for _ in range(min(budget, MAX_BURST)):
            unit = self.scheduler.choose()
            if unit is None:
                break
            n = self.symbols_sent[unit]
            self.symbols_sent[unit] = n + 1
            piece, symbol, payload = self.encoder.symbol(unit, n)
            seq = self.seq
            self.seq = seq + 1
            packet = pack_header(seq & 0xFFFF, seq & 0xFFFFFFFF, self.session_id, piece, symbol)
            packet += payload
            self.seq_units[seq % ring] = unit
            notices.append((seq & 0xFFFFFFFF, packet_digest(packet)))
            packets.append(packet)
            self.scheduler.sent(unit)
        if not packets:
            return
        self.bucket.take(now, len(packets) * size)
        for sub in list(self.subscribers.values()):
            sub.client.send_notices(sub.id, notices)
        for i, packet in enumerate(packets):
            try:
                self.port.write(packet, self.destination)
            except BlockingIOError:
                # The send buffer is full: the rest of this burst is lost and
                # will be reported lost; give the tokens back and slow down.
                self.counters["would_block"] += len(packets) - i
                self.bucket.tokens = 0
                break
            except OSError as e:
                self.counters["send_errors"] += 1
                _log.warn(
                    "session {sid:08x}: send failed: {error}", sid=self.session_id, error=str(e)
                )
                break
            self.counters["packets"] += 1
            self.counters["bytes"] += len(packet)

    def move(self, group: str) -> None:
        """Send on ``group`` from now on (ASM: another session was heard on ours)."""
        old, self.group = self.group, group
        self.destination = (group, self.destination[1])
        self.counters["moves"] += 1
        _log.info(
            "session {sid:08x} moved from {old} to {new}: another session uses {old}",
            sid=self.session_id,
            old=old,
            new=group,
        )
        for sub in list(self.subscribers.values()):
            try:
                sub.client.session_moved(sub.id, group)
            except Exception:  # noqa: BLE001 - a closed channel must not stop the others
                pass

    def end(self, reason: str) -> None:
        if self.state == "ENDED":
            return
        self.state = "ENDED"
        if self.loop.running:
            self.loop.stop()
        for sub in list(self.subscribers.values()):
            try:
                sub.client.session_ended(sub.id, reason)
            except Exception:  # noqa: BLE001 - a closed channel must not stop the others
                pass
        self.subscribers.clear()
        try:
            os.close(self.fd)
        except OSError:
            pass
        _log.info(
            "session {sid:08x} ended ({reason}): {packets} packets, {nbytes} bytes",
            sid=self.session_id,
            reason=reason,
            packets=self.counters["packets"],
            nbytes=self.counters["bytes"],
        )
        self.on_end(self)


def set_dscp(port: Any, family: int, dscp: int) -> None:
    """Mark the port's packets with ``dscp`` (the upper six bits of TOS/traffic class)."""
    sock = port.getHandle()
    if family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, dscp << 2)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, dscp << 2)
