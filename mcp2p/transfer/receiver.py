"""The CN's receiving side of one subscription: packets in, checked blocks out.

A packet is accepted only if its SSRC is the session's and its digest
matches the notice for that sequence number (the RTP timestamp carries the
32-bit sequence). Notices come in digest lists: list packets the SN sends on
the data path ahead of the packets they cover, trusted once the list's hash
came over this CN's TLS channel (``listed``; wire.rtp). A list that comes
before its hash waits for it (bounded); a hash whose list has not come
LIST_WAIT later is asked of the SN over TLS (``ask_list``). Packets that
arrive before their notice wait a short while; notices whose packet
has not come LOSS_AFTER after the notice are losses, reported back so the
SN sends those units again. A packet that comes later still (a CN behind
on its socket buffer under CPU load) is accepted while its notice is kept
(KEEP), counted ``late`` and no longer ``lost``, and counted received in
the next report (its loss was reported already: a CN that falls behind
under CPU load reports half, not all, of the period lost). Everything dropped is
counted by reason.

Packets come in batches: `BatchReader` drains the socket at each wakeup
into one preallocated buffer (with ``UDP_GRO``, a GSO burst of the SN's
arrives as one buffer with its segment size, split here without copying),
and `Receiver.datagrams` checks a batch with no object per packet beyond a
header tuple and its digest, handing the accepted blocks on together
(``deliver_many``) as views into that buffer, valid only during the call.

A packet is lost once a later one came and its notice is GAP_AFTER old (the
SN sends in sequence order on one path), or once its notice is LOSS_AFTER
old whatever came. Detecting a gap at once, not after LOSS_AFTER, is what
lets a repair follow a loss within a report or two, and the last rounds
of a transfer go fast. The last packets of a round have no later packet:
the SN says when it ran dry (``drained``, after its last packet, on the TLS
channel), which counts as a later packet, and the losses are reported then
(DRAIN_WAIT later, for the packets still in the socket), not at the next
report. Each report says how many packets were lost and how
many accepted since the last one: losses found by their gaps are found
about when the packets after them are received, so the two stay in step
when the CN falls behind.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.internet import task
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from mcp2p.core.speedups import compiled
from mcp2p.core.wanted import RangeSet
from mcp2p.transfer.notices import MAX_EXPECTED, Accepted, Notices, lazy_zeros
from mcp2p.transfer.scan import MAX_DATAGRAM  # the largest data packet
from mcp2p.transfer.scan import accept as _accept
from mcp2p.transfer.scan import scan as _scan
from mcp2p.wire.rtp import (
    DIGEST_LEN,
    FAST_HEADER,
    HEADER_LEN,
    list_hash,
    list_notices,
    split_header,
    split_list,
)

Buffer = bytes | bytearray | memoryview
# (piece, symbol, payload) of accepted packets; payloads are views valid during the call
Items = list[tuple[int, int, Buffer]]

_log = Logger()

HOLD = 2.0  # seconds a packet waits for its notice (TLS notices lag UDP under CPU load)
LOSS_AFTER = 0.3  # seconds after its notice a packet is reported lost
# ... or this long after its notice once a later packet came: the SN sends in
# sequence order on one path, so a gap behind the newest packet is a loss.
GAP_AFTER = 0.05
KEEP = 2.0  # seconds after its notice a late packet is still accepted (> the rcvbuf's lag)
MAX_HELD = 16384  # sequence numbers with packets waiting for notices, at most
MAX_CANDIDATES = 4  # packets held for one sequence number (a forger's copies among them)
REPORT_EVERY = 0.1
DRAIN_WAIT = 0.005  # seconds from a Drained to its report: the data socket is read meanwhile
LIST_WAIT = 0.05  # seconds a list may come after its hash before it is asked for
LIST_GIVE_UP = 1.0  # seconds after its hash a list that never came is given up: its packets lost
MAX_LISTS = 4096  # list hashes waiting for their lists, and lists waiting for hashes, each

SOL_UDP = 17
UDP_GRO = 104  # Linux: receive a GSO burst as one buffer, segment size in a cmsg
ARENA = 2 << 20  # bytes of the batch buffer: one wakeup reads at most this much
ROOM = 65536  # room kept for one read (a GRO buffer is at most 64 KiB)
_IGNORE = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ECONNREFUSED})
# The socket module's MSG_* flags are IntFlag members: a test of a datagram's
# flags against one costs about a microsecond (enum's __and__), more than the
# rest of its bookkeeping here. Plain ints, made once.
_MSG_TRUNC = int(socket.MSG_TRUNC)
_MSG_DONTWAIT = int(socket.MSG_DONTWAIT)
# BatchReader's recvmmsg, compiled (Linux, where mcp2p._speedups was built):
# the ctypes twin below costs Python work for each datagram.
_recv_batch = compiled("recv_batch")


class Receiver(DatagramProtocol):
    noisy = False

    def __init__(
        self,
        clock: IReactorTime,
        ssrc: int,
        deliver: Callable[[int, int, bytes], None],
        report: Callable[[RangeSet, int], None],
        source: str = "",
        deliver_many: Callable[[Items], None] | None = None,
        ask_list: Callable[[int], Any] | None = None,
    ) -> None:
        self.clock = clock
        self.ssrc = ssrc
        self.deliver = deliver  # (piece, symbol, payload) of an authenticated packet
        # or, when set, the accepted packets of a batch at once (payloads: views)
        self.deliver_many = deliver_many
        self.report = report  # (lost sequence numbers, packets received since last)
        self.source = source  # the SN's address; "" accepts any (multicast checks by digest)
        # (first) -> a Deferred of the list packet, from the SN over TLS; None: never ask
        self.ask_list = ask_list
        # list hash -> [first, when it came, asked, count]: waiting for the list packet
        self.announced: OrderedDict[bytes, list[Any]] = OrderedDict()
        # list hash -> (list packet, arrival): waiting for the hash
        self.unconfirmed: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()
        # seq -> [(datagram, its digest, its arrival)], first arrival first
        self.held: dict[int, list[tuple[bytes, bytes, float]]] = {}
        self.expected = Notices()  # seq -> (digest, notice time), in arrays
        # In time order, expired from the front: an OrderedDict, because a plain
        # dict deleted from the front makes each next(iter()) scan the holes left
        # (that scan was half of a CN's CPU at 30k packets/s).
        self.overdue: OrderedDict[int, tuple[bytes, float]] = OrderedDict()  # reported lost
        # the last 2^18 packets accepted: a later copy is a duplicate or a forgery
        self.accepted = Accepted()
        self.reported_accepted = 0  # counters["accepted"] at the last report
        self.highest = -1  # the highest sequence number accepted
        self.final = -1  # the last packet the SN sent before it ran dry (``drained``)
        self._soon: Any = None  # the DelayedCall of an early report
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
            "held": 0,  # packets that came before their notice and waited for it
            "lists": 0,  # digest lists trusted (their packets' notices taken)
            "lists_asked": 0,  # lists asked of the SN, their packet late or lost
            "lists_fetched": 0,  # ... and received that way
            "lists_lost": 0,  # list hashes whose list never came
            "lists_unconfirmed": 0,  # list packets no hash ever came for (forged, or too late)
            "reads": 0,  # receive calls (a GRO buffer holds many packets)
            # notices dropped (`Notices`): a slot taken by one 2^18 on, or past its run bound
            "notices_overwritten": 0,
            "notices_refused": 0,
        }
        self.loop = task.LoopingCall(self._housekeeping)
        self.loop.clock = clock

    def startProtocol(self) -> None:
        self.loop.start(REPORT_EVERY, now=False)

    def stopProtocol(self) -> None:
        if self.loop.running:
            self.loop.stop()
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        self._soon = None

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.datagrams((data,))

    def datagrams(self, batch: Sequence[Buffer]) -> None:
        """Check a batch of datagrams (bytes or views into a reader's buffer,
        which is reused afterwards: whatever is kept is copied) and hand the
        authenticated ones on. Headers and digests are `scan`'s (compiled
        where it could be built); a batch's digest lists are taken first, so
        a packet whose list came behind it in the batch need not wait."""
        counters = self.counters
        counters["packets"] += len(batch)
        malformed, foreign, lists, candidates = _scan(batch, self.ssrc)
        now = self.clock.seconds()
        for i in lists:
            self._list(batch[i], now)  # its notices, for the packets after it
        expected, overdue = self.expected, self.overdue
        accepted = self.accepted
        seen, seen_digests, mask = accepted.seqs, accepted.digests, accepted.mask
        out: Items = []
        highest = self.highest
        if _accept is not None and candidates:
            # Compiled: the packets whose notices wait with their digests (the
            # usual case) are taken as the loop below takes them; the rest is
            # left to it, in order.
            out, candidates, highest = _accept(
                batch, candidates, expected.seqs, expected.digests, seen, seen_digests, highest
            )
            expected.count -= len(out)
        for i, seq, digest, piece, symbol in candidates:
            slot = seq & mask
            listed = expected.get(seq)  # the usual case: listed, not yet here
            if listed is not None:
                if digest != listed:
                    # Not what our channel listed; the genuine may come: its
                    # notice stays.
                    self._forged(0.0)
                    continue
                expected.remove(seq)
            elif seen[slot] == seq:  # Accepted.get, inlined: here already
                if digest == seen_digests[slot * 8 : slot * 8 + 8]:
                    counters["duplicate"] += 1
                else:
                    self._forged(0.0)  # a copy of a packet we have, altered
                continue
            else:
                notice = overdue.get(seq)
                if notice is None:
                    # Before its notice (TLS lags UDP): held with its digest till it comes.
                    self._hold(seq, bytes(batch[i]), digest, now)
                    continue
                if digest != notice[0]:
                    self._forged(0.0)
                    continue
                # Reported lost (the SN may send its unit again), but here now.
                del overdue[seq]
                counters["late"] += 1
                counters["lost"] -= 1
            seen[slot] = seq  # Accepted.put, inlined
            seen_digests[slot * 8 : slot * 8 + 8] = digest
            if seq > highest:
                highest = seq
            out.append((piece, symbol, batch[i][HEADER_LEN:]))
        self.highest = highest
        if malformed:
            counters["malformed"] += malformed
        if foreign:
            counters["foreign"] += foreign
        if out:
            self._hand_on(out, now)

    def _list(self, data: Buffer, now: float) -> None:
        """A digest list packet: trusted now if its hash came, else kept for it."""
        parsed = split_list(data)
        if parsed is None:
            self.counters["malformed"] += 1
            return
        if parsed[0] != self.ssrc:
            self.counters["foreign"] += 1
            return
        digest = list_hash(data)
        if self.announced.pop(digest, None) is not None:
            self._take_list(data)
            return
        unconfirmed = self.unconfirmed
        if digest in unconfirmed:
            self.counters["duplicate"] += 1
            return
        if len(unconfirmed) >= MAX_LISTS:
            del unconfirmed[next(iter(unconfirmed))]
            self.counters["lists_unconfirmed"] += 1
        unconfirmed[digest] = (bytes(data), now)

    def listed(self, first: int, count: int, digest: bytes) -> None:
        """The SN's TLS channel names a list of ``count`` packets from ``first``
        by its hash: that list is trusted."""
        pending = self.unconfirmed.pop(digest, None)
        if pending is not None:
            self._take_list(pending[0])
            return
        announced = self.announced
        if digest in announced:
            return
        if len(announced) >= MAX_LISTS:
            del announced[next(iter(announced))]
            self.counters["lists_lost"] += 1
        announced[digest] = [first, self.clock.seconds(), False, count]

    def _take_list(self, data: Buffer) -> None:
        """A trusted list's notices, in bulk (`Notices.add`: two slice copies),
        then the packets held for them."""
        self.counters["lists"] += 1
        _, _, first, _, _, _, count, _ = FAST_HEADER.unpack_from(data)
        if first + count > 1 << 32:  # it wraps around the sequence space
            self.notices(list_notices(data))
            return
        self.counters["notices"] += count
        now = self.clock.seconds()
        if self.expected.add(first, data[HEADER_LEN : HEADER_LEN + count * DIGEST_LEN], now):
            held = self.held
            if held:
                end = first + count
                if len(held) < count:
                    self._release([s for s in held if first <= s < end], now)
                else:
                    self._release(range(first, end), now)

    def _ask(self, digest: bytes, first: int) -> None:
        """Ask the SN for a list whose hash came but whose packet did not."""
        assert self.ask_list is not None
        self.counters["lists_asked"] += 1
        try:
            d = self.ask_list(first)
        except Exception:  # the channel is gone: the list is lost after HOLD
            return
        d.addCallbacks(lambda data: self._fetched(digest, data), lambda failure: None)

    def _fetched(self, digest: bytes, data: bytes) -> None:
        if digest not in self.announced:
            return  # its packet came meanwhile
        parsed = split_list(data)
        if parsed is None or parsed[0] != self.ssrc or list_hash(data) != digest:
            self.counters["malformed"] += 1
            return
        del self.announced[digest]
        self.counters["lists_fetched"] += 1
        self._take_list(data)

    def _hold(self, seq: int, data: bytes, digest: bytes, now: float) -> None:
        """A packet (and its digest) before its notice: wait for it (bounded)."""
        held = self.held.get(seq)
        if held is None:
            if len(self.held) >= MAX_HELD:
                self.counters["unannounced"] += 1
                return
            self.held[seq] = [(data, digest, now)]
            self.counters["held"] += 1
        elif len(held) < MAX_CANDIDATES and all(data != d for d, _, _ in held):
            held.append((data, digest, now))
        else:
            self.counters["duplicate"] += 1

    def _hand_on(self, items: Items, now: float) -> None:
        self.counters["accepted"] += len(items)
        self.last_packet = now
        if self.deliver_many is not None:
            self.deliver_many(items)
        else:
            deliver = self.deliver
            for piece, symbol, payload in items:
                deliver(piece, symbol, bytes(payload))

    def _forged(self, held_for: float) -> None:
        """Count a forged packet dropped after ``held_for`` seconds."""
        self.counters["forged"] += 1
        self.counters["forged_hold_sum"] += held_for
        if held_for > self.counters["forged_hold_max"]:
            self.counters["forged_hold_max"] = held_for

    def notices(self, notices: list[tuple[int, bytes]]) -> None:
        """Notices ``(seq, digest)`` one by one (consecutive ones make one
        run), then the packets held for them. A digest of the wrong length
        is no notice (counted malformed)."""
        now = self.clock.seconds()
        self.counters["notices"] += len(notices)
        expected = self.expected
        first, run = -1, bytearray()
        for seq, digest in notices:
            if len(digest) != DIGEST_LEN or not 0 <= seq < 1 << 32:
                self.counters["malformed"] += 1
                continue
            if run and seq != first + len(run) // DIGEST_LEN:
                expected.add(first, run, now)
                run = bytearray()
            if not run:
                first = seq
            run += digest
        if run:
            expected.add(first, run, now)
        if self.held:
            self._release([seq for seq, _ in notices], now)

    def _release(self, seqs: Iterable[int], now: float) -> None:
        """The packets held for the notices of ``seqs`` that came: the one
        that matches is accepted, the others were forged."""
        held_packets, expected, accepted = self.held, self.expected, self.accepted
        out: Items = []
        for seq in seqs:
            held = held_packets.get(seq)
            if held is None:
                continue
            digest = expected.get(seq)
            if digest is None:
                continue
            del held_packets[seq]
            genuine = None
            for data, digested, arrival in held:
                if genuine is None and digested == digest:
                    genuine = data
                else:
                    self._forged(max(0.0, now - arrival))
            if genuine is not None:
                # Its header was checked (scan) when it was held.
                _, _, piece, symbol = split_header(genuine)  # type: ignore[misc]
                expected.remove(seq)
                accepted.put(seq, digest)
                if seq > self.highest:
                    self.highest = seq
                out.append((piece, symbol, genuine[HEADER_LEN:]))
        if out:
            self._hand_on(out, now)

    def drained(self, seq: int) -> None:
        """The SN sent all it had, ``seq`` last: the packets listed up to it
        that have not come are lost once their notices are GAP_AFTER old, and
        reported then, not at the next report."""
        if seq > self.final:
            self.final = seq
        self._report_soon(DRAIN_WAIT)

    def _report_soon(self, delay: float) -> None:
        if self._soon is None or not self._soon.active():
            self._soon = self.clock.callLater(delay, self._early_report)

    def _early_report(self) -> None:
        self._soon = None
        self._housekeeping()
        oldest = self.expected.oldest()
        if oldest is not None:  # the oldest notice left, if the SN sent it, is still young
            seq, time = oldest
            if seq <= self.final:
                due = time + GAP_AFTER - self.clock.seconds()
                self._report_soon(max(due, 0.0) + 0.001)

    def _housekeeping(self) -> None:
        now = self.clock.seconds()
        lost = RangeSet()
        count = 0
        overdue = self.overdue
        highest = max(self.highest, self.final)
        for seq, digest, time in self.expected.due(now, highest, GAP_AFTER, LOSS_AFTER):
            lost.add(seq)
            count += 1
            if len(overdue) < MAX_EXPECTED:
                overdue[seq] = (digest, time)
        _expire(self.overdue, now - KEEP)
        for seq, datagrams in list(self.held.items()):
            if now - datagrams[0][2] > HOLD:
                del self.held[seq]
                self.counters["unannounced"] += len(datagrams)
        accepted = int(self.counters["accepted"])
        received = accepted - self.reported_accepted  # late ones too
        count += self._lists_due(now, lost)
        self.counters["notices_overwritten"] = self.expected.overwritten
        self.counters["notices_refused"] = self.expected.refused
        self.counters["lost"] += count
        self.reported_accepted = accepted
        if lost or received:
            self.report(lost, received)

    def _lists_due(self, now: float, lost: RangeSet) -> int:
        """Ask for the lists whose hashes came LIST_WAIT ago without them; give
        up on those LIST_GIVE_UP old: their packets go into ``lost`` (how many
        is returned), so the SN sends their units again. Expire the list
        packets no hash came for."""
        announced = self.announced
        given_up = 0
        for digest, entry in list(announced.items()):
            age = now - entry[1]
            if age <= LIST_WAIT:
                break
            if age > LIST_GIVE_UP:
                del announced[digest]
                self.counters["lists_lost"] += 1
                first, count = entry[0], entry[3]
                if first + count <= 1 << 32:
                    lost.add_range(first, first + count)
                    given_up += count
            elif not entry[2] and self.ask_list is not None:
                entry[2] = True
                self._ask(digest, entry[0])
        unconfirmed = self.unconfirmed
        while unconfirmed:
            digest = next(iter(unconfirmed))
            if now - unconfirmed[digest][1] <= HOLD:
                break
            del unconfirmed[digest]
            self.counters["lists_unconfirmed"] += 1
        return given_up

    def successor(self) -> Receiver:
        """A receiver for a new socket (the session moved group) that keeps this
        one's notices, held packets and counters."""
        after = Receiver(
            self.clock,
            self.ssrc,
            self.deliver,
            self.report,
            self.source,
            self.deliver_many,
            self.ask_list,
        )
        after.held, after.expected = self.held, self.expected
        after.announced, after.unconfirmed = self.announced, self.unconfirmed
        after.overdue = self.overdue
        after.highest = self.highest
        after.final = self.final
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        self._soon = None
        after.accepted = self.accepted
        after.counters = self.counters
        after.reported_accepted = self.reported_accepted
        return after

    def pending(self) -> int:
        """Packets announced, not yet arrived and not yet reported lost."""
        return len(self.expected)


def _expire(entries: OrderedDict[int, tuple[bytes, float]], before: float) -> None:
    """Drop the entries stamped before ``before``. They were added in time
    order, so stop at the first younger one."""
    while entries:
        seq = next(iter(entries))
        if entries[seq][1] >= before:
            break
        del entries[seq]


class BatchReader:
    """Reads every datagram waiting on a non-blocking UDP socket into one
    preallocated buffer (``ARENA`` bytes), as views: with ``recvmmsg`` (Linux,
    through ctypes: up to ARENA // ROOM datagrams a system call, each in a
    slot of ROOM bytes), else one ``recvmsg_into`` per datagram; a GSO burst
    the kernel keeps whole (``UDP_GRO``) takes one slot and is split here.
    ``read()`` returns how many datagrams it got and gives them to ``sink``;
    the views are reused by the next read.

    ``truncated`` counts datagrams longer than the room left (never ours:
    a datagram is at most 64 KiB), ``gro`` says whether UDP_GRO is on,
    ``mmsg`` whether recvmmsg is used, ``rcvbuf`` is the receive buffer the
    kernel granted (bytes), ``reads`` counts system calls.
    """

    def __init__(
        self,
        sock: socket.socket,
        sink: Callable[[list[memoryview]], None] | None = None,
        mmsg: bool = True,
    ):
        self.sock = sock
        self.sink = sink
        self.view = lazy_zeros(ARENA)  # 2 MiB, of which a read touches what it fills
        try:
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
            self.gro = True
        except OSError:
            self.gro = False
        self.ancillary = socket.CMSG_SPACE(4) if self.gro else 0
        self.rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.truncated = 0
        self.reads = 0
        self._slots = max(1, ARENA // ROOM)
        # recvmmsg compiled (mcp2p._speedups), else through ctypes, else one by one
        self._recv = _recv_batch if mmsg and self._slots <= 64 else None
        self._mm = None
        if mmsg and self._recv is None:
            self._mm = _MMsg.make(self.view, self._slots)
        self.mmsg = self._recv is not None or self._mm is not None

    def read(self) -> int:
        """Drain the socket (or fill the buffer); the datagrams go to ``sink``."""
        if self._recv is not None:
            try:
                return self._read_compiled(self._recv)
            except OSError as e:
                if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                self._recv = None  # no recvmmsg here after all: ctypes says the same
                self._mm = _MMsg.make(self.view, self._slots)
                self.mmsg = self._mm is not None
        if self._mm is not None:
            try:
                return self._read_mmsg(self._mm)
            except _NoMMsg:
                self._mm, self.mmsg = None, False
        recv = self.sock.recvmsg_into
        view = self.view
        limit = len(view) - ROOM
        ancillary = self.ancillary
        out: list[memoryview] = []
        position = 0
        while position <= limit:
            try:
                n, anc, flags, _ = recv((view[position : position + ROOM],), ancillary)
            except OSError as e:
                if e.errno in _IGNORE:
                    break
                raise
            self.reads += 1
            if flags & _MSG_TRUNC:
                self.truncated += 1
                continue
            segment = n
            for level, kind, value in anc:
                if level == SOL_UDP and kind == UDP_GRO and len(value) >= 4:
                    segment = int.from_bytes(value[:4], sys.byteorder) or n
            end = position + n
            if segment >= n:
                out.append(view[position:end])
            else:
                whole = end - (n % segment)
                out += [view[i : i + segment] for i in range(position, whole, segment)]
                if whole < end:
                    out.append(view[whole:end])
            position = end
        if out and self.sink is not None:
            self.sink(out)
        return len(out)

    def _read_compiled(self, recv: Callable[..., tuple[list[memoryview], int, int, int]]) -> int:
        """`_read_mmsg`, with the recvmmsg call and the views made in C: as
        many calls as drain the socket, up to about ARENA bytes in all, each
        call's datagrams handed on before the next reuses the slots."""
        fd, view, count = self.sock.fileno(), self.view, self._slots
        slot = len(view) // count
        limit = len(view) - ROOM
        total = got = 0
        while total <= limit:
            out, truncated, n, nbytes = recv(fd, view, slot, count)
            self.reads += 1
            if truncated:
                self.truncated += truncated
            total += nbytes
            if out:
                got += len(out)
                if self.sink is not None:
                    self.sink(out)
            if n < count:
                break  # drained: the next call would only say EAGAIN
        return got

    def _read_mmsg(self, mm: _MMsg) -> int:
        """As many recvmmsg calls as drain the socket, up to about ARENA
        bytes in all (as the one-by-one loop: bounded work per wakeup), each
        call's datagrams handed on before the next reuses the slots."""
        view, slot = self.view, mm.slot
        out: list[memoryview] = []
        fd = self.sock.fileno()
        total = got = 0
        limit = len(view) - ROOM
        while total <= limit:
            n = mm.receive(fd)
            self.reads += 1
            if n <= 0:
                break
            for i, (length, flags, segment) in enumerate(mm.results(n)):
                start = i * slot
                if flags & _MSG_TRUNC:
                    self.truncated += 1
                    continue
                end = start + length
                total += length
                if not segment or segment >= length:
                    out.append(view[start:end])
                else:
                    whole = end - (length % segment)
                    out += [view[j : j + segment] for j in range(start, whole, segment)]
                    if whole < end:
                        out.append(view[whole:end])
            if n < mm.count:
                break  # drained: the next call would only say EAGAIN
            got += len(out)  # every slot is full: hand on, read again
            if out and self.sink is not None:
                self.sink(out)
            out = []
        if out and self.sink is not None:
            self.sink(out)
        return got + len(out)


class _NoMMsg(Exception):
    """recvmmsg cannot be used here: read one datagram at a time."""


class _MMsg:
    """``recvmmsg(2)`` through ctypes into fixed slots of a buffer, with room
    for one UDP_GRO control message a slot. Made once per socket; None where
    the C library or the structures are not Linux's."""

    CONTROL = 32  # bytes of control room a slot: CMSG_SPACE(sizeof(int)) is 24

    def __init__(self, arena: memoryview, count: int, libc: Any) -> None:
        import ctypes

        class IOVec(ctypes.Structure):
            _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

        class MsgHdr(ctypes.Structure):
            _fields_ = [
                ("name", ctypes.c_void_p),
                ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(IOVec)),
                ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p),
                ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int),
            ]

        class MMsgHdr(ctypes.Structure):
            _fields_ = [("hdr", MsgHdr), ("len", ctypes.c_uint)]

        self.count = count
        self.slot = len(arena) // count
        self._keep = (ctypes.c_char * len(arena)).from_buffer(arena)  # pins the buffer
        base = ctypes.addressof(self._keep)
        self._control = (ctypes.c_char * (count * self.CONTROL))()
        control = ctypes.addressof(self._control)
        self._iovs = (IOVec * count)()
        self._msgs = (MMsgHdr * count)()
        for i in range(count):
            self._iovs[i].base = base + i * self.slot
            self._iovs[i].len = self.slot
            hdr = self._msgs[i].hdr
            hdr.iov = ctypes.pointer(self._iovs[i])
            hdr.iovlen = 1
            hdr.control = control + i * self.CONTROL
            hdr.controllen = self.CONTROL
        self._address = ctypes.addressof(self._msgs)
        self._call = libc.recvmmsg
        self._call.argtypes = [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_void_p,
        ]
        self._call.restype = ctypes.c_int
        self._errno = ctypes.get_errno
        self._raw = memoryview(self._msgs).cast("B")  # the mmsghdrs as bytes
        self._pristine = bytes(self._raw)  # as made: restored after each call
        size = ctypes.sizeof(MMsgHdr)
        controllen = MMsgHdr.hdr.offset + MsgHdr.controllen.offset
        flags = MMsgHdr.hdr.offset + MsgHdr.flags.offset
        length = MMsgHdr.len.offset
        if not controllen + 8 <= flags and flags + 4 <= length and length + 4 <= size:
            raise ValueError("unexpected struct mmsghdr layout")
        # (msg_controllen, msg_flags, msg_len) of one mmsghdr, by their offsets
        self._fields = struct.Struct(
            f"={controllen}xQ{flags - controllen - 8}xi{length - flags - 4}xI{size - length - 4}x"
        )
        self._size = size
        self._cview = memoryview(self._control).cast("B")

    @classmethod
    def make(cls, arena: memoryview, count: int) -> _MMsg | None:
        if not sys.platform.startswith("linux"):
            return None
        try:
            import ctypes
            import ctypes.util

            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            if not hasattr(libc, "recvmmsg") or len(arena) // count < MAX_DATAGRAM:
                return None
            return cls(arena, count, libc)
        except (OSError, AttributeError, TypeError, ValueError):
            return None

    def receive(self, fd: int) -> int:
        """Datagrams received into the slots (0 when none is waiting)."""
        n = self._call(fd, self._address, self.count, _MSG_DONTWAIT, None)
        if n >= 0:
            return n
        err = self._errno()
        if err in _IGNORE:
            return 0
        if err in (errno.ENOSYS, errno.EINVAL, errno.EFAULT):
            raise _NoMMsg(err)
        raise OSError(err, os.strerror(err))

    def results(self, n: int) -> list[tuple[int, int, int]]:
        """(length, flags, GRO segment size or 0) of the first ``n`` slots; the
        headers are restored for the next call (the kernel wrote lengths and
        flags into them)."""
        raw, end = self._raw, n * self._size
        out = []
        cview = self._cview
        for i, (controllen, flags, length) in enumerate(self._fields.iter_unpack(raw[:end])):
            segment = 0
            if controllen >= 20:  # a control message: UDP_GRO's segment size
                c = i * self.CONTROL
                level, kind, value = _CMSG.unpack_from(cview, c + 8)
                if level == SOL_UDP and kind == UDP_GRO:
                    segment = value
            out.append((length, flags, segment))
        raw[:end] = self._pristine[:end]
        return out


_CMSG = struct.Struct("=iii")  # cmsg_level, cmsg_type, and an int of data (after cmsg_len)


def read_in_batches(port: Any, receiver: Receiver) -> BatchReader | None:
    """Make a listening Twisted UDP port read through a `BatchReader` into
    ``receiver.datagrams``: one drain of the socket per wakeup, instead of one
    ``recvfrom``, one bytes object and one call per datagram. A port without
    a real socket (a test's fake) is left as it is: None."""
    sock = port.getHandle()
    if not isinstance(sock, socket.socket):
        return None
    reader = BatchReader(sock, receiver.datagrams)

    def do_read() -> None:
        protocol = port.protocol  # a successor may have replaced it
        reader.sink = protocol.datagrams
        before = reader.reads
        reader.read()
        protocol.counters["reads"] += reader.reads - before

    port.doRead = do_read
    _log.debug(
        "data socket: UDP_GRO {gro}, receive buffer {rcvbuf} bytes",
        gro="on" if reader.gro else "off",
        rcvbuf=reader.rcvbuf,
    )
    return reader
