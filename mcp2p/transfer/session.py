"""The SN's sending side: one ``Session`` streams one content to one destination.

A multicast session (a group, and the SN as source for SSM) is shared by
every CN that subscribed to that content in multicast mode; a unicast
subscriber gets a session of its own. Each tick the session takes tokens
from a token bucket for the granted rate and sends a burst of packets:
for each, the [serving] scheduler picks a unit (by default a carousel over
the units the most subscribers still need), the block code makes its next
symbol. Packets are planned a little ahead (LEAD seconds of the rate, in
digest lists of up to a block's worth of 8-byte digests, at most PLAN
seconds at once): their digests go out at once in a
list packet on the data path (to the group: once for every CN), and the
list's 16-byte hash on each subscriber's TLS channel (a plan's lists in one
notice, as many as its Subscribe took: ``Subscriber.lists``); the packets follow
from the next tick on, so a CN knows each packet's digest before it comes
(wire.rtp, DESIGN.md 5.3). A CN that missed a list asks for it
(``digest_list``: the last LIST_KEEP lists are kept). Sending is
optimistic: a unit sent is no longer needed by anyone; a CN's loss report
puts back what it missed (DESIGN.md 5.5, 5.6).

Rate: each subscriber's ``ceiling`` is the rate its user asked for (``--rate``,
DESIGN.md 5.6), and the session never sends faster than the smallest ceiling
among its current subscribers; loss reports adapt the rate below that. The
token bucket holds only BURST_SECONDS of the rate (at least two packets), so
even the first burst of a slow session stays near its rate. A reactor late
beyond that while the session had packets to send (a busy CPU) owes what it
could not send, up to ARREARS seconds of the rate, and pays it back at most
CATCHUP above the rate (`core.pacing.Pacer`): the average holds the rate, as
UFTP's sender holds its own, without its unbounded bursts. Nor does a tick
put more on this host's queue than `transfer.hostqueue` allows (HOST_QUEUE of
what the link takes): where the SN's own link is the bottleneck the rate
then holds it, the queue standing, and a period in which the host held
packets back raises the rate no further (`RateController.period`).

States: RUNNING (someone needs something), IDLE (nobody does: a grace
timer runs, and the subscribers that asked were told the last packet went,
``Drained``), ENDED (grace over or stopped; every subscriber was told).
"""

from __future__ import annotations

import errno
import os
import random
import socket
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mcp2p.core.blockcode import PlainCode
from mcp2p.core.pacing import Pacer
from mcp2p.core.ratecontrol import RateController
from mcp2p.core.scheduler import make_scheduler
from mcp2p.core.speedups import compiled
from mcp2p.core.wanted import RangeSet
from mcp2p.interfaces import IBlockCode
from mcp2p.multicast import port_socket
from mcp2p.transfer.hostqueue import HostQueue
from mcp2p.wire.layout import Layout
from mcp2p.wire.rtp import (
    DIGEST_LEN,
    HEADER_LEN,
    MAX_PAYLOAD,
    list_hash,
    make_packets,
    pack_list,
)

if TYPE_CHECKING:
    from mcp2p.transfer.encoding import EncodeWorkers

_log = Logger()
# A plan's packets and their digests: compiled where mcp2p._speedups was built
# (a header, a copy and a SHA-256 each, without Python's work per packet).
_make_packets = compiled("make_packets") or make_packets

JOIN_DELAY = 0.05  # seconds a new multicast session waits for its first CN to join
# ... or this long after the last of its CNs said Joined: Linux sends a join's
# IGMPv3/MLDv2 report two jiffies after it (igmp_ifc_start_timer), 8 ms at
# HZ=250, and a snooping switch forwards the group to a port only after it.
JOIN_MARGIN = 0.01
TICK = 0.002  # seconds between bursts
MAX_BURST = 256  # packets per tick at most, up to about 0.5 Gbit/s ...
# ... and above it BURST_TICKS ticks of the rate (MAX_BURST_HIGH at most): a
# 2 ms tick of 2 Gbit/s is 357 packets, so a fixed 256 made any rate above
# 1.48 Gbit/s unreachable, and with ticks late on a busy host, one above about
# 1 Gbit/s (the lab's one CN on 2 Gbit/s links, 2026-11-27: 0.6-1.2 Gbit/s with
# 256 a tick, 1.35-1.72 with 1024, no more with 2048).
BURST_TICKS = 3
MAX_BURST_HIGH = 2048  # about 3 MB: a tick's work stays near 10 ms
# Units handed to an encode worker when a unit's first symbols go out: it and
# the next one, so a worker slowed by a busy host is a unit ahead of the sends.
PREFETCH_AHEAD = 2
# Seconds of the rate planned ahead: lists lead their packets by this (a list
# whose hash comes after its packets makes the CN hold and copy them; the
# control channel is TCP_NODELAY, so hashes do not wait for ACKs).
LEAD = 0.02
MAX_LEAD = 2 * MAX_BURST  # packets planned ahead at most (memory: about 750 KB)
# Seconds of the rate planned at once at most: as many whole lists as fit
# (two at 95 Mbit/s), whose hashes go in one notice to each subscriber.
PLAN = 0.05
LIST_KEEP = 512  # digest lists kept for CNs that missed one (over 1 s at 1 Gbit/s)
SEQ_RING = 1 << 17  # sequence numbers remembered for loss reports (unit of each)
IP_UDP_OVERHEAD = 28
# Seconds after subscribing whose losses do not steer the rate (its receipts
# do): what was sent before the CN joined its group, and the first losses,
# found up to receiver.LOSS_AFTER after their receipts, which would make the
# first periods read as no loss at all.
JOIN_GRACE = 1.0
# A period ends at the first report at most this much short of its length.
# Periods end at reports, which come receiver.REPORT_EVERY (0.1 s) apart with
# a few ms of jitter: ending only at its full length, a 0.1 s period whose
# next report came a ms early lasted 0.2 s, and the start rose at half its
# speed (the lab's one CN: 100 to 1000 Mbit/s in 0.85 s instead of 0.55 s).
PERIOD_SLACK = 0.02
BURST_SECONDS = 0.02  # the bucket saves this much of the rate: ten ticks, for a late reactor
# ... and a reactor later than that, while it had packets to send, owes up to
# ARREARS of the rate, paid back at most CATCHUP of the rate above it. Measured
# 2026-11-26 (tshark on the lab's SN, 8 CNs at 95 Mbit/s on two cores): 20-60
# ms stalls left the session at about 90 Mbit/s on average, 0.5 s longer than the rate.
ARREARS = 0.1
CATCHUP = 0.25
SOL_UDP = 17
UDP_SEGMENT = 103  # Linux: one sendmsg, many datagrams of one size (GSO)
GSO_MAX_SEGMENTS = 64  # the kernel's UDP_MAX_SEGMENTS
GSO_MAX_BYTES = 65000  # a GSO buffer is one UDP datagram to the stack: under 64 KiB
# sendmsg with UDP_SEGMENT fails with these where GSO cannot be used (no kernel
# support, a segment over the MTU, a device without checksum offload): write
# datagram by datagram from then on.
GSO_UNSUPPORTED = {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOPROTOOPT, errno.EIO, errno.EMSGSIZE}


@dataclass
class Subscriber:
    id: int
    client: Any  # ControlServer
    session: Session
    since: float = 0.0  # when it subscribed
    reported_at: float = 0.0  # when its last loss report came (or it subscribed)
    ceiling: int = 0  # the most it wants sent, bit/s (its --rate); 0: the session's maximum
    reported_rate: int = 0
    lost: int = 0
    received: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    # units it lost symbols of, which got the code's repair overhead once
    repaired: set[int] = field(default_factory=set)
    lists: int = 1  # list hashes it takes in one notice (its Subscribe's ``lists``)
    joined: bool = False  # it said Joined: it is in the group
    drained: bool = False  # it takes Drained (its Subscribe said so)


def _notify(sub: Subscriber, made: list[tuple[int, int, bytes]]) -> None:
    """Tell ``sub`` the hashes of the lists ``made`` (first, count, hash), as
    many in one notice as its Subscribe allowed."""
    step = sub.lists
    for i in range(0, len(made), step):
        sub.client.send_lists(sub.id, made[i : i + step])


class DatagramPort(Protocol):
    """What a session writes its packets on (a listening UDP port; its socket,
    where ``getHandle`` gives a real one, for GSO sends)."""

    def write(self, datagram: bytes, addr: tuple[str, int]) -> object: ...


class Session:
    def __init__(
        self,
        reactor: IReactorTime,
        *,
        session_id: int,
        layout: Layout,
        code: IBlockCode,
        path: str,
        destination: tuple[str, int],
        port: DatagramPort,
        rate: int,
        min_rate: int,
        max_rate: int,
        grace: float,
        on_end: Callable[[Session], None],
        rng: random.Random,
        group: str = "",
        source: str = "",
        scheduler: str = "mostwanted",
        workers: EncodeWorkers | None = None,
        host_queue: HostQueue | None = None,
    ) -> None:
        self.reactor = reactor
        self.workers = workers  # where repair symbols are made off the reactor (``_prefetch``)
        self.encoding: set[int] = set()  # units a worker is making repair symbols of
        self.session_id = session_id
        self.layout = layout
        self.code = code
        self.destination = destination
        self.port = port  # an IListeningPort (UDP) to write on
        self.group = group
        self.source = source
        self.fd = os.open(path, os.O_RDONLY)
        st = os.fstat(self.fd)
        self.file = (path, st.st_dev, st.st_ino)  # what an encode worker reads (``_prefetch``)
        self.encoder = code.encoder(layout, self._read)
        self.units = code.units(layout)
        self._unit_needs: Sequence[int] | None = None  # every unit's need, made at first use
        self.scheduler = make_scheduler(scheduler, self.units, rng)  # [serving] scheduler
        # The plain code sends a block as it is, whatever its symbol number: no
        # counter per unit (it would cost 8 bytes per block of the file), and a
        # run of blocks is read with one pread. Other codes count the next
        # symbol of each unit (a piece: few units).
        self.plain = isinstance(code, PlainCode)
        self.symbols_sent = array("q") if self.plain else array("q", bytes(8 * self.units))
        self.seq = 0  # the next packet's sequence number (planned, maybe not yet sent)
        self.queue: deque[bytes] = deque()  # planned packets, their lists sent
        # first (32 bits) -> (first, packets, list packet, its hash), oldest first
        self.lists: OrderedDict[int, tuple[int, int, bytes, bytes]] = OrderedDict()
        self.list_size = max(1, min(layout.block_length, MAX_PAYLOAD) // DIGEST_LEN)
        self.seq_units = array("I" if self.units <= 0xFFFFFFFF else "q", [0]) * SEQ_RING
        self.gso: Any = _gso_socket(port)  # None: one write per datagram
        # the data port's queue on this host (shared by the port's sessions)
        self.host_queue = host_queue if host_queue is not None else HostQueue.of(port)
        self.host_limited = False  # that queue held packets back in this rate period
        self.packet_size = HEADER_LEN + layout.block_length + IP_UDP_OVERHEAD  # paced bytes
        self.rates = RateController(rate, min_rate, max_rate, packet_bits=8 * self.packet_size)
        self.bucket = Pacer(
            rate / 8, self._burst(rate), reactor.seconds(), arrears=ARREARS, catchup=CATCHUP
        )
        self.grace = grace
        # subscriber -> [lost, received, since, until, joining] in this rate period
        self.loss_window: dict[int, list[float]] = {}
        self.rate_at = reactor.seconds()
        self.on_end = on_end
        self.subscribers: dict[int, Subscriber] = {}
        # hosts the first packet waits for (``gather``), in the order offered
        self.waiting: dict[str, None] = {}
        self.gather_until = 0.0  # ... at most until then
        self.state = "IDLE"
        self.idle_since = reactor.seconds()
        self.sending_since = 0.0  # when the first packet went out (0: not yet)
        self.loop = task.LoopingCall(self._tick)
        self.loop.clock = reactor
        self.counters = {
            "packets": 0,
            "bytes": 0,
            "send_errors": 0,
            "would_block": 0,
            "loss_reported": 0,
            "moves": 0,
            "gso_sends": 0,
            "gso_fallbacks": 0,
            "host_limited": 0,  # ticks that sent less for a full queue on this host
            "lists": 0,
            "drained": 0,  # Drained notices sent
            "prefetched": 0,  # units whose repair symbols a worker made (``_prefetch``)
            "prefetch_busy": 0,  # ... that no worker could take
            "prefetch_failed": 0,  # ... whose job failed (made here instead)
        }

    # -- subscribers

    def add(self, sub: Subscriber, wanted: RangeSet) -> None:
        sub.since = sub.reported_at = self.reactor.seconds()
        self.subscribers[sub.id] = sub
        self._set_ceiling()
        self.set_wanted(sub, wanted, replace=True)
        self._announce_pending(sub)
        if not self.loop.running:
            if self.group:
                # The CN joins the group only once our reply reached it: a
                # full bucket's first burst would be lost and sent twice
                # (the lab saw 1.9x the bytes for 32 KiB files). Wait a bit.
                self.bucket.empty_until(self.reactor.seconds() + JOIN_DELAY)
            self.loop.start(TICK, now=False)

    def gather(self, hosts: list[str], seconds: float) -> None:
        """Hold the first packet until as many CNs subscribed as ``hosts`` were
        offered this content (``arrived``), at most ``seconds``: CNs that asked
        for it together get the same first packets (each packet sent before a
        CN joins is one it needs again). Call ``arrived`` for the subscriber
        that made the session too."""
        if seconds <= JOIN_DELAY or self.seq:
            return
        self.gather_until = self.reactor.seconds() + seconds
        self.waiting = dict.fromkeys(hosts)
        if len(hosts) > 1:
            self.bucket.empty_until(self.gather_until)
            _log.info(
                "session {sid:08x} waits up to {seconds}s for the {n} CNs offered its file",
                sid=self.session_id,
                seconds=seconds,
                n=len(hosts),
            )

    def expect(self, host: str) -> None:
        """``host`` was just offered this content: if the session is still
        gathering, it waits for that host too (within the same deadline)."""
        if not self.seq and self.reactor.seconds() < self.gather_until:
            self.waiting[host] = None
            self.bucket.empty_until(self.gather_until)

    def arrived(self, host: str) -> None:
        """A subscriber from ``host`` joined: the last one waited for starts the
        session. A host not waited for takes the place of the one offered
        first (a CN may ask from one address, IPv6 link-local say, and
        subscribe from another): so many offers, so many subscriptions."""
        waiting = self.waiting
        if not waiting:
            return
        if host in waiting:
            del waiting[host]
        else:
            del waiting[next(iter(waiting))]
        if not waiting and not self.seq:
            self.bucket.empty_until(self.reactor.seconds() + JOIN_DELAY)
            self._start_if_joined()

    def joined(self, sub_id: int) -> None:
        """Subscriber ``sub_id`` says it joined the group (Joined). Once every
        subscriber did and none is waited for (``gather``), the first packet
        goes JOIN_MARGIN later rather than JOIN_DELAY after the last
        subscription: a CN's join takes a round trip and a few milliseconds,
        not 50. A CN that never says so (an older one) keeps JOIN_DELAY."""
        sub = self.subscribers.get(sub_id)
        if sub is None or sub.joined:
            return
        sub.joined = True
        self._start_if_joined()

    def _start_if_joined(self) -> None:
        if self.seq or not self.group or self.waiting:
            return
        if not all(sub.joined for sub in self.subscribers.values()):
            return
        start = self.reactor.seconds() + JOIN_MARGIN
        stamp = self.bucket.stamp
        if stamp is not None and start < stamp:  # never later than JOIN_DELAY would be
            self.bucket.empty_until(start)

    def set_wanted(self, sub: Subscriber, wanted: RangeSet, replace: bool) -> None:
        """Change what ``sub`` wants.

        ``replace``: it wants only units of ``wanted`` now (others are done);
        the units it keeps keep their remaining need, so a resync never makes
        the SN resend what is in flight. Otherwise ``wanted`` is added: each
        unit is needed in full again (a piece that failed verification).
        Losses come back through ``report_loss``, not through this.
        """
        last = wanted.last()
        if last is not None and last >= self.units:
            raise ValueError(f"unit {last} is outside 0..{self.units - 1}")
        known = sub.id in self.scheduler.subscribers
        one_symbol = self.units == self.layout.blocks
        if one_symbol:
            # Ranges only (a unit lost twice is needed twice: still one member).
            if not known:
                new: Any = wanted.copy()
            elif replace:
                new = self.scheduler.needed_by(sub.id).intersection(wanted)
            else:
                new = self.scheduler.needed_by(sub.id).union(wanted)
        else:
            current = self.scheduler.need_of(sub.id) if known else None
            counts = current if isinstance(current, dict) else {}
            if replace and current is not None:
                new = {u: c for u, c in counts.items() if u in wanted and c > 0}
            else:
                needs = self.unit_needs()
                fresh = {u: needs[u] for start, stop in wanted.ranges() for u in range(start, stop)}
                if counts:
                    new = dict(counts)
                    for unit, need in fresh.items():
                        new[unit] = max(new.get(unit, 0), need)
                else:
                    new = fresh
        self.scheduler.set_need(sub.id, new)
        if replace:
            self.scheduler.keep_credit(sub.id, wanted)
        else:
            self.scheduler.drop_credit(sub.id, wanted)

    def unit_needs(self) -> Sequence[int]:
        """Every unit's need from scratch (the code's ``need``), made once:
        at once where the code can (``needs``), else unit by unit."""
        if self._unit_needs is None:
            bulk = getattr(self.code, "needs", None)
            needs = (
                bulk(self.layout)
                if bulk is not None
                else [self.code.need(self.layout, u) for u in range(self.units)]
            )
            if len(needs) != self.units:
                raise ValueError(
                    f"code {self.code.name!r} gave {len(needs)} needs for {self.units} units"
                )
            self._unit_needs = needs
        return self._unit_needs

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
        climbs back by the controller's usual steps (halfway to the capacity it
        knows, then probing: the others' paths never carried more than the old
        ceiling).
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

    def burst_cap(self) -> int:
        """Packets one tick may send: MAX_BURST, or BURST_TICKS ticks of the
        rate where that is more (MAX_BURST_HIGH at most)."""
        ticks = int(self.rates.rate / 8 * TICK * BURST_TICKS / self.packet_size)
        return min(MAX_BURST_HIGH, max(MAX_BURST, ticks))

    def _pace(self) -> None:
        """Pace at the controller's rate from now on."""
        rate = self.rates.rate
        self.bucket.set_rate(self.reactor.seconds(), rate / 8, self._burst(rate))

    def report_loss(self, sub: Subscriber, lost: RangeSet, received: int) -> int:
        # Only what we sent and still remember: clipped as ranges first, so a
        # report naming 2^32 sequence numbers costs no more than an honest one.
        ring = self.seq_units
        size = len(ring)
        remembered = lost.intersection(RangeSet([(max(0, self.seq - size), self.seq)]))
        units: list[int] = []
        for a, b in remembered.ranges():
            i, j = a % size, b % size
            if i < j:
                units += ring[i:j]
            else:  # the range wraps round the ring
                units += ring[i:]
                units += ring[:j]
        count = len(units)
        if count and not self.plain:
            units += self._overheads(sub, units)
        if count:
            self.scheduler.add_needs(sub.id, units)
        self.counters["loss_reported"] += count
        now = self.reactor.seconds()
        previous, sub.reported_at = sub.reported_at, now
        # Its window starts at its previous report (what this one counts came
        # since), or when the first packet went out (a session that gathered
        # its CNs sent nothing before).
        start = max(previous, self.sending_since)
        window = self.loss_window.setdefault(sub.id, [0, 0, start, now, 0])
        window[0] += count
        window[1] += received
        window[3] = now
        if now - sub.since < JOIN_GRACE:
            # A new subscriber joins its group only after our reply: what was
            # sent meanwhile is reported lost, but says nothing of the path's
            # capacity (nor of its random loss). What it received does.
            window[4] = 1
        self._adapt(now)
        return int(self.rates.rate)

    def _overheads(self, sub: Subscriber, units: list[int]) -> list[int]:
        """The code's repair overhead for each unit ``sub`` lost symbols of for
        the first time (a fountain code: x lost symbols need x + overhead)."""
        overhead = getattr(self.code, "repair_overhead", None)
        if overhead is None:
            return []
        extra: list[int] = []
        for unit in set(units).difference(sub.repaired):
            sub.repaired.add(unit)
            extra += [unit] * overhead(self.layout, unit)
        return extra

    def _adapt(self, now: float) -> None:
        """One rate step per period (the controller's ``period_length``) on
        every receiver's loss and receipts in it (see `RateController.period`:
        the slowest receiver's calculated rate, as in TFMCC, RFC 4654): a
        multicast session must not speed up once per receiver's report, and
        must slow down to the one that gets least."""
        elapsed = now - self.rate_at
        if elapsed < self.rates.period_length - PERIOD_SLACK or not self.loss_window:
            return
        window = self.loss_window
        joining = [sub for sub, w in window.items() if w[4]]  # within JOIN_GRACE
        self.rates.period(
            {sub: (int(w[0]), int(w[1])) for sub, w in window.items()},
            {sub: w[3] - w[2] for sub, w in window.items()},  # what its reports span
            joining,
            host_limited=self.host_limited,
        )
        self._pace()
        self.host_limited = False
        self.loss_window.clear()
        self.rate_at = now

    # -- sending

    def _read(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def _tick(self) -> None:
        now = self.reactor.seconds()
        if self.state == "ENDED":
            return
        queue = self.queue
        if not queue and self.scheduler.total_weight == 0:
            if self.state != "IDLE":
                self.state, self.idle_since = "IDLE", now
                self._drained()
            elif now - self.idle_since >= self.grace:
                self.end("nothing wanted")
            return
        backlog = self.state == "RUNNING"  # it had something to send since the last tick
        self.state = "RUNNING"
        self.bucket.refill(now, backlog)
        size = self.packet_size
        budget = min(int(self.bucket.available(now) // size), self.burst_cap())
        if budget <= 0:
            return
        written = self.counters["bytes"]
        room = self.host_queue.room(now, self) // size
        limited = room < budget
        if limited:
            budget = room
            self.host_limited = True
            self.counters["host_limited"] += 1
            self.host_queue.held(now, self)
        ready = len(queue)  # planned in an earlier tick: their lists went out then
        count = min(budget, ready)
        if count:
            self.bucket.take(now, count * size)
            burst = [queue.popleft() for _ in range(count)]
        if limited:
            self.bucket.forgive()  # the host is the limit: nothing saved, nothing owed
        lead = max(1, min(MAX_LEAD, int(self.rates.rate / 8 * LEAD / size)))
        planned = ready < budget + lead and self.scheduler.total_weight > 0
        if planned:
            self._plan(budget + lead - ready, now)  # its lists go out first
        if count:
            if not self.sending_since:
                self.sending_since = now
            self._send(burst)
        if count or planned:
            self.host_queue.sent(self.reactor.seconds(), self.counters["bytes"] - written, self)

    def _drained(self) -> None:
        """Tell the subscribers that take it that everything went out: a CN
        that lost the last packets finds out now, not when its notices are
        LOSS_AFTER old (no later packet shows the gap), and the repair run
        follows at once."""
        if not self.seq:
            return
        last = (self.seq - 1) & 0xFFFFFFFF
        for sub in list(self.subscribers.values()):
            if sub.drained:
                try:
                    sub.client.send_drained(sub.id, last)
                except Exception:  # a closed channel must not stop the others
                    continue
                self.counters["drained"] += 1

    def _plan(self, want: int, now: float) -> None:
        """Take at least ``want`` packets' units from the scheduler (whole digest
        lists where the rate allows, at most PLAN seconds of it), make their
        packets and queue them, and send their digest lists now: on the data
        path to every receiver at once, their hashes on each subscriber's TLS
        channel. The packets go out from the next tick on, after their lists."""
        size = self.packet_size
        per_list = self.list_size
        most = max(want, min(MAX_LEAD, int(self.rates.rate / 8 * PLAN / size)))
        whole = most // per_list * per_list  # the whole lists that fit in PLAN
        if whole:
            count = max(want, whole)
        else:
            count = min(max(want, -(-want // per_list) * per_list), most)
        if self.plain:
            units = self.scheduler.take(count)
            runs: list[tuple[int, int]] = []
        else:
            runs = self._take_runs(count)
            units = [unit for unit, n in runs for _ in range(n)]
        if not units:
            return
        count = len(units)
        seq0 = self.seq
        self.seq = seq0 + count
        ring = self.seq_units
        i = seq0 % len(ring)
        if i + count <= len(ring):
            ring[i : i + count] = array(ring.typecode, units)
        else:
            for k, unit in enumerate(units):
                ring[(seq0 + k) % len(ring)] = unit
        symbols = self._plain_symbols(units) if self.plain else self._symbols(runs)
        sid = self.session_id
        packets, digests = _make_packets(seq0, sid, symbols)  # digests: joined
        self.queue.extend(packets)
        lists = self.lists
        made: list[tuple[int, int, bytes]] = []
        packets_of_lists = []
        for k in range(0, count, per_list):
            first = seq0 + k
            n = min(per_list, count - k)
            packet = pack_list(first, sid, digests[k * DIGEST_LEN : (k + n) * DIGEST_LEN])
            digest = list_hash(packet)
            lists[first & 0xFFFFFFFF] = (first, n, packet, digest)
            if len(lists) > LIST_KEEP:
                del lists[next(iter(lists))]
            made.append((first & 0xFFFFFFFF, n, digest))
            packets_of_lists.append(packet)
        for sub in list(self.subscribers.values()):
            _notify(sub, made)
        for packet in packets_of_lists:
            self._send_list(packet, now)

    def _send_list(self, packet: bytes, now: float) -> None:
        """One digest list on the data path, paced with the data (a debt if the
        bucket is short). A list that cannot go out is fetched by the CNs."""
        self.bucket.charge(now, len(packet) + IP_UDP_OVERHEAD)
        try:
            if self.gso is not None:
                self.gso.sendto(packet, self.destination)
            else:
                self.port.write(packet, self.destination)
        except BlockingIOError:
            self.counters["would_block"] += 1
            return
        except OSError as e:
            self.counters["send_errors"] += 1
            _log.warn("session {sid:08x}: send failed: {error}", sid=self.session_id, error=str(e))
            return
        self.counters["lists"] += 1
        self.counters["bytes"] += len(packet)

    def digest_list(self, first: int) -> bytes | None:
        """The list packet that starts at ``first`` (32 bits), if it is still kept."""
        entry = self.lists.get(first)
        return entry[2] if entry is not None else None

    def _announce_pending(self, sub: Subscriber) -> None:
        """Tell a new subscriber the hashes of the lists whose packets are still
        queued: it can take those packets too."""
        unsent = self.seq - len(self.queue)
        pending = []
        for first, n, _, digest in reversed(self.lists.values()):
            if first + n <= unsent:
                break
            pending.append((first, n, digest))
        _notify(sub, [(first & 0xFFFFFFFF, n, digest) for first, n, digest in reversed(pending)])

    def _take_runs(self, count: int) -> list[tuple[int, int]]:
        """Runs ``(unit, n)`` of up to ``count`` symbols in all: codes whose
        units need many symbols send a unit's symbols together (see
        `DemandScheduler.take_run`)."""
        runs = []
        take_run = self.scheduler.take_run
        while count > 0:
            run = take_run(count)
            if run is None:
                break
            runs.append(run)
            count -= run[1]
        return runs

    def _symbols(self, runs: list[tuple[int, int]]) -> list[tuple[int, int, bytes]]:
        """The next ``n`` symbols of each run's unit from the block code's
        encoder (its ``symbols`` where it has one: a run read at once)."""
        counts = self.symbols_sent
        symbols = getattr(self.encoder, "symbols", None)
        symbol = self.encoder.symbol
        out: list[tuple[int, int, bytes]] = []
        for unit, n in runs:
            first = counts[unit]
            counts[unit] = first + n
            if first == 0 and self.workers is not None and self._repairs_likely():
                for ahead in range(unit, min(unit + PREFETCH_AHEAD, self.units)):
                    if ahead == unit or not counts[ahead]:
                        self._prefetch(ahead)
            if symbols is not None:
                out += symbols(unit, first, n)
            else:
                out += [symbol(unit, first + i) for i in range(n)]
        return out

    def _repairs_likely(self) -> bool:
        """Whether a unit about to go out will likely need repair symbols: the
        losses reported so far come to at least one in two units' symbols."""
        sent = self.counters["packets"]
        lost = self.counters["loss_reported"]
        return sent > 0 and 2 * lost * self.code.need(self.layout, 0) >= sent

    def _prefetch(self, unit: int) -> None:
        """Have a worker make ``unit``'s first batch of repair symbols while its
        source symbols (or, ``PREFETCH_AHEAD``, the unit's before it) go
        out: the loss reports that ask for them come a tenth of a second or
        more later, and the encoder then has them. One that is not back by
        then is made here, as without workers."""
        job = getattr(self.encoder, "job", None)
        put_batch = getattr(self.encoder, "put_batch", None)
        assert self.workers is not None
        if job is None or put_batch is None or unit in self.encoding:
            return
        spec = job(unit)
        if spec is None:
            return
        k, symbol_size, first, stop, offset, length = spec
        path, dev, ino = self.file
        d = self.workers.submit(k, symbol_size, first, stop, offset, length, path, dev, ino)
        if d is None:
            self.counters["prefetch_busy"] += 1
            return
        self.encoding.add(unit)

        def made(symbols: bytes) -> None:
            self.encoding.discard(unit)
            if self.state != "ENDED" and put_batch(unit, first, symbols):
                self.counters["prefetched"] += 1

        def failed(f: Any) -> None:
            self.encoding.discard(unit)
            self.counters["prefetch_failed"] += 1
            _log.debug(
                "session {sid:08x}: unit {unit} encoded here: {error}",
                sid=self.session_id,
                unit=unit,
                error=f.getErrorMessage(),
            )

        d.addCallbacks(made, failed)

    def _plain_symbols(self, units: list[int]) -> list[tuple[int, int, bytes]]:
        """The plain code's symbols (piece, block in piece, the block) of
        ``units``: each run of consecutive blocks (contiguous in the file,
        also across pieces) is read with one pread."""
        layout = self.layout
        bpp = layout.blocks_per_piece
        pl, bl = layout.piece_length, layout.block_length
        size = layout.size
        out: list[tuple[int, int, bytes]] = []
        n = len(units)
        k = 0
        while k < n:
            first = units[k]
            j = k + 1
            while j < n and units[j] == units[j - 1] + 1:
                j += 1
            piece, block = divmod(first, bpp)
            start = piece * pl + block * bl
            lp, lb = divmod(units[j - 1], bpp)
            end = min(lp * pl + (lb + 1) * bl, (lp + 1) * pl, size)
            data = os.pread(self.fd, max(0, end - start), start)
            if len(data) != max(0, end - start):
                raise ValueError(
                    f"read {len(data)} of {end - start} bytes at {start}: file changed?"
                )
            for unit in units[k:j]:
                piece, block = divmod(unit, bpp)
                offset = piece * pl + block * bl
                stop = min(offset + bl, (piece + 1) * pl, size)
                out.append((piece, block, data[offset - start : stop - start]))
            k = j
        return out

    def _send(self, packets: list[bytes]) -> None:
        """Send ``packets`` in order: by GSO (one sendmsg for each run of
        datagrams of one size, a shorter one may end it) where the socket
        takes it, else one write each. A full send buffer (EAGAIN) ends the
        burst: the rest go back to the front of the queue, and the bucket is
        emptied."""
        n = len(packets)
        i = 0
        while i < n:
            sent = 0
            try:
                if self.gso is not None:
                    sent = self._send_gso(packets, i)
                else:
                    self.port.write(packets[i], self.destination)
                    sent = 1
            except BlockingIOError:
                self.counters["would_block"] += n - i
                self.bucket.forgive()
                self.queue.extendleft(reversed(packets[i:]))
                return
            except OSError as e:
                if self.gso is not None and e.errno in GSO_UNSUPPORTED:
                    _log.info(
                        "session {sid:08x}: no UDP GSO here ({error}): one write per datagram",
                        sid=self.session_id,
                        error=str(e),
                    )
                    self.counters["gso_fallbacks"] += 1
                    self.gso = None
                    continue
                self.counters["send_errors"] += 1
                _log.warn(
                    "session {sid:08x}: send failed: {error}", sid=self.session_id, error=str(e)
                )
                return
            self.counters["packets"] += sent
            self.counters["bytes"] += sum(len(p) for p in packets[i : i + sent])
            i += sent

    def _send_gso(self, packets: list[bytes], i: int) -> int:
        """One sendmsg of packets[i:...] of one segment size; how many it sent."""
        seg = len(packets[i])
        n = len(packets)
        most = min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // max(seg, 1))
        j = i + 1
        while j < n and j - i < most and len(packets[j]) == seg:
            j += 1
        if j < n and j - i < most and len(packets[j]) < seg:
            j += 1  # a shorter datagram may end the run
        if j - i == 1:
            self.gso.sendto(packets[i], self.destination)
            return 1
        self.gso.sendmsg(
            [b"".join(packets[i:j])],
            [(SOL_UDP, UDP_SEGMENT, seg.to_bytes(2, "little"))],
            0,
            self.destination,
        )
        self.counters["gso_sends"] += 1
        return j - i

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
            except Exception:  # a closed channel must not stop the others
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
            except Exception:  # a closed channel must not stop the others
                pass
        self.subscribers.clear()
        self.queue.clear()
        self.host_queue.forget(self)
        try:
            os.close(self.fd)
        except OSError:
            pass
        _log.info(
            "session {sid:08x} ended ({reason}): {packets} packets, {nbytes} bytes,"
            " {lost} reported lost",
            sid=self.session_id,
            reason=reason,
            packets=self.counters["packets"],
            nbytes=self.counters["bytes"],
            lost=self.counters["loss_reported"],
        )
        self.on_end(self)


def _gso_socket(port: Any) -> Any:
    """The port's socket if it can take UDP GSO sends (a real one: it has
    ``sendmsg`` and Linux's option), else None: one write per datagram."""
    sock = port_socket(port)
    if sock is None or not hasattr(sock, "sendmsg") or not hasattr(sock, "sendto"):
        return None
    return sock


def set_dscp(port: Any, family: int, dscp: int) -> None:
    """Mark the port's packets with ``dscp`` (the upper six bits of TOS/traffic class)."""
    sock = port.getHandle()
    if family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, dscp << 2)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, dscp << 2)
