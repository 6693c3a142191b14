"""What the SN's data socket has queued on its own host, and how much more it may.

Where the sender's own link is the bottleneck (the lab's star; an SN on a
switched LAN of equal links), a rate above that link only fills the queue in
front of it (the interface's qdisc, a NIC's ring) until the queue drops, and
the receivers' loss reports then cut the rate below the link. A session that
keeps that queue at HOST_QUEUE seconds of what the link takes sends at the
link's rate without a drop, and the link is never idle while the reactor is
late by less (the lab's nine daemons on two cores: 2 ms ticks 20-150 ms
late).

Linux says how many bytes a socket has queued and not yet sent (SIOCOUTQ:
its skbs' true sizes, until the device frees them). One `HostQueue` serves
every session of a data port: they share the socket, the queue and the
link. Between two readings only the device takes from the queue, so a
reading taken before a send, against the one taken after the last send,
is what the link took meanwhile; and where the queue is not empty at the
later one it was busy all along, so that is the link's rate (``drain``),
in the queue's own units. What a byte written costs the queue (a buffer's
overhead) is learnt from the readings around each write. An empty queue
sets no bound (the link took all that was sent: the rate alone paces);
before the link's rate is known, one that is not empty holds
HOST_QUEUE_MIN at most.

Sessions share the room as they share the link. The room is one for the
socket, and sessions tick in a fixed order: the first each time took all the
link had freed, and a second session behind the same link starved (49 of
50 Mbit/s against 1, on a Clock). So while two or more sessions were held
back by the queue in the last ACTIVE_FOR seconds, each may write at most
its allowance, which grows at its equal share of the link's rate (and
holds at most its share of the limit); a session the queue does not hold
back (its own rate is lower) is not counted, and its share goes to the
others.

The arithmetic (`HostQueue.update`, `HostQueue.room_after`, `HostQueue.share`)
takes the readings and times as arguments; `queued_bytes` is the one
system call.
"""

from __future__ import annotations

import fcntl
import math
import struct
import sys
from collections.abc import Hashable
from typing import Any

from mcp2p.multicast import port_socket

# Seconds of the link's rate the queue may hold: the longest reactor stall
# it covers. The lab's tbf holds 50 ms. fq_codel's target is 5 ms: on a
# host with that qdisc a standing queue will meet drops now and then (not
# measured).
HOST_QUEUE = 0.04
HOST_QUEUE_FLOOR = 8 * 1024  # bytes at least (40 ms of 1 Mbit/s is 5 KB) ...
# ... and at most, whatever the link: what Linux lets one TCP socket queue on
# its host (tcp_limit_output_bytes); a tick adds at most this much to a queue
# that is not empty, 4 Gbit/s in 2 ms ticks.
HOST_QUEUE_MAX = 1 << 20
# The most a queue that is not empty may hold before its link's rate is
# known: it is known within DRAIN_WINDOW of the queue standing.
HOST_QUEUE_MIN = 128 * 1024
DRAIN_WINDOW = 0.05  # seconds of busy link one estimate of its rate spans at least
ACTIVE_FOR = 0.05  # seconds a session held back by the queue counts for a share of it
RECOUNT = 0.01  # seconds the count of those sessions is kept (a session leaving: late by this)
SIOCOUTQ = 0x5411  # Linux: the bytes a socket has queued and not yet sent (TIOCOUTQ)
UNBOUNDED = sys.maxsize


def queued_bytes(fd: int) -> int:
    """The bytes socket ``fd`` has queued on this host (OSError where the
    system does not say)."""
    (queued,) = struct.unpack("i", fcntl.ioctl(fd, SIOCOUTQ, b"\0" * 4))
    return int(queued)


class HostQueue:
    """One socket's queue on this host: how much more may be written on it
    (`room`), told after every write (`sent`)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd  # -1: nothing to read (no socket, or not Linux): no bound
        self.after: tuple[float, int] | None = None  # (time, bytes) of the last reading
        self.before: int | None = None  # the reading `room` took, before a write
        self.drained = 0.0  # bytes the link took ...
        self.busy = 0.0  # ... in these seconds, the queue never empty, since the last estimate
        self.drain = 0.0  # bytes a second the link takes, as last measured (0: not yet)
        # bytes the queue counts for each byte written: a datagram's buffer
        # with its overhead (a GSO send's less than one datagram's), learnt
        self.cost = 1.0
        # session -> [allowance in bytes to write, as of, when last held back]
        self.shares: dict[Hashable, list[float]] = {}
        # how many of them were held back within ACTIVE_FOR, counted when
        # (each session's tick asks: counted once in RECOUNT, not n times)
        self.active = 0
        self.counted_at = -math.inf

    @classmethod
    def of(cls, port: Any) -> HostQueue:
        """The queue of ``port``'s socket, where it has a real one."""
        fileno = getattr(port_socket(port), "fileno", None)
        return cls(fileno() if fileno is not None else -1)

    def _read(self) -> int | None:
        if self.fd < 0:
            return None
        try:
            return queued_bytes(self.fd)
        except OSError:
            self.fd = -1  # a socket that does not say: the rate alone paces
            return None

    def room(self, now: float, session: Hashable = None) -> int:
        """Bytes ``session`` may write now before the queue holds HOST_QUEUE
        of its link's rate (UNBOUNDED where it cannot be read, or is empty),
        within its share (`share`)."""
        queued = self._read()
        if queued is None:
            return UNBOUNDED
        self.update(now, queued)
        self.before = queued
        room = self.room_after(queued)
        return room if room == UNBOUNDED else min(room, self.share(now, session))

    def sent(self, now: float, written: int, session: Hashable = None) -> None:
        """``session`` just wrote ``written`` bytes on the socket (since its
        `room`): the next reading starts from here."""
        entry = self.shares.get(session)
        if entry is not None:
            entry[0] -= written
        queued = self._read()
        if queued is None:
            return
        before, self.before = self.before, None
        if before is not None:
            self.wrote(before, queued, written)
        self.after = (now, queued)

    def held(self, now: float, session: Hashable) -> None:
        """The queue held ``session`` back: it counts for a share for ACTIVE_FOR."""
        entry = self.shares.get(session)
        if entry is None or now - entry[2] > ACTIVE_FOR:
            self.counted_at = -math.inf  # one more shares the link: count again
        if entry is None:
            self.shares[session] = [0.0, now, now]
        else:
            entry[2] = now

    def forget(self, session: Hashable) -> None:
        """``session`` ended: its share goes to the others."""
        if self.shares.pop(session, None) is not None:
            self.counted_at = -math.inf

    def share(self, now: float, session: Hashable) -> int:
        """Bytes ``session`` may write now of the link's rate it shares with
        the other sessions the queue held back lately: unbounded while it is
        the only one (or the link's rate is not known yet)."""
        entry = self.shares.get(session)
        if not self.counted_at <= now < self.counted_at + RECOUNT:
            self.active = sum(1 for e in self.shares.values() if now - e[2] <= ACTIVE_FOR)
            self.counted_at = now
        active = self.active
        if entry is None or active < 2 or not self.drain:
            if entry is not None:
                entry[0], entry[1] = 0.0, now
            return UNBOUNDED
        rate = self.drain / self.cost / active  # bytes written a second
        cap = self.limit() / self.cost / active
        entry[0] = min(cap, entry[0] + max(0.0, now - entry[1]) * rate)
        entry[1] = now
        return max(0, int(entry[0]))

    def wrote(self, before: int, after: int, written: int) -> None:
        """Learn what a byte written costs the queue: it went from ``before``
        to ``after`` while ``written`` bytes were written (and the link took
        a little: a write is a fraction of a tick)."""
        if written >= 1024 and after > before:
            self.cost += (min(4.0, max(1.0, (after - before) / written)) - self.cost) / 8

    def update(self, now: float, queued: int) -> None:
        """Learn the link's rate from a reading ``queued`` taken at ``now``,
        with no write since the last reading (`sent` takes one after each)."""
        after, self.after = self.after, (now, queued)
        if after is None or queued <= 0 or now <= after[0]:
            return  # the first reading, or the queue ran dry: the link was idle for part of it
        self.drained += max(0, after[1] - queued)
        self.busy += now - after[0]
        if self.busy >= DRAIN_WINDOW:
            self.drain = self.drained / self.busy
            self.drained = self.busy = 0.0

    def limit(self) -> int:
        """The most the queue may hold, in its own bytes."""
        if not self.drain:
            return HOST_QUEUE_MIN
        return min(HOST_QUEUE_MAX, max(HOST_QUEUE_FLOOR, int(self.drain * HOST_QUEUE)))

    def room_after(self, queued: int) -> int:
        """Bytes that may be written on a queue holding ``queued``: none
        past the limit, no bound while it is empty."""
        if queued <= 0:
            return UNBOUNDED
        return max(0, int((self.limit() - queued) / self.cost))
