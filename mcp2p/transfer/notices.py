"""What a CN's receiver knows by sequence number, in fixed arrays.

`Notices`: the digests of the packets announced and not yet here (from
trusted digest lists, `mcp2p.transfer.receiver`), with the time each came,
so that the ones whose packets never come are reported lost in the order
they were announced. `Accepted`: the digests of the packets accepted, so
that a copy is known for a duplicate (or, altered, a forgery).

Both are rings of ``size`` slots indexed by ``seq & (size - 1)``: no Python
object per packet. A digest list of 175 packets is taken with two slice
copies instead of 175 dictionary entries of a tuple each (0.6 µs of CPU a
packet, a tenth of a CN's, measured with the bench_cpu fetch), and the
compiled ``accept`` (`mcp2p.transfer.scan`) checks a packet against its
notice in the arrays without a lookup in Python.

The arrays are anonymous mappings (``lazy_zeros``): a page costs only once
a slot in it is used, not 4 MB of page faults (2 ms) at the start of every
fetch.
"""

from __future__ import annotations

import mmap
from array import array
from collections import deque
from collections.abc import Iterator

from mcp2p.wire.rtp import DIGEST_LEN

Buffer = bytes | bytearray | memoryview

MAX_EXPECTED = 1 << 18  # slots: the notices (and accepted packets) known at most
MAX_RUNS = 1 << 16  # runs of notices waiting at most (a list is one run)
SEQ_SPACE = 1 << 32  # sequence numbers are the RTP timestamp's 32 bits


def lazy_zeros(size: int) -> memoryview:
    """``size`` writable zero bytes whose pages the kernel maps in when first
    touched (an anonymous mapping), where ``bytearray(size)`` writes them all
    at once."""
    return memoryview(mmap.mmap(-1, size))


def _empty(view: memoryview) -> bool:
    """Is every byte of ``view`` zero? (In C: no object per item.)"""
    data = view.tobytes()
    return data.count(0) == len(data)


class Notices:
    """The notices waiting for their packets: ``seq -> digest``, each with the
    time its notice came.

    A slot holds ``seq + 1`` of the notice in it, 0 when there is none, and
    the digest (``DIGEST_LEN`` bytes) at ``DIGEST_LEN * slot``. Notices come
    in runs (a digest list is one): ``runs`` holds ``[first, count, time]``
    in the order they came, which `due` walks from the front. A packet taken
    clears its slot; a run none of whose notices wait any more is dropped
    when `due` or `oldest` meets it.

    A notice whose slot a notice ``size`` sequence numbers on takes before
    its packet came is lost without a report (``overwritten``): the SN plans
    a fraction of a second ahead, far less than 2^18 packets, and the notice
    was reported lost long before. Runs beyond ``MAX_RUNS`` are refused
    (``refused`` counts their notices): only a misbehaving SN sends that
    many lists that no packet follows.
    """

    __slots__ = ("count", "digests", "mask", "overwritten", "refused", "runs", "seqs", "size")

    def __init__(self, size: int = MAX_EXPECTED) -> None:
        assert size > 0 and size & (size - 1) == 0, "a power of two"
        self.size = size
        self.mask = size - 1
        self.seqs = lazy_zeros(8 * size).cast("q")
        self.digests = lazy_zeros(DIGEST_LEN * size)
        self.runs: deque[list[float]] = deque()  # [first, count, time], as they came
        self.count = 0  # notices waiting (the compiled accept clears slots: its caller lowers it)
        self.overwritten = 0
        self.refused = 0

    def __len__(self) -> int:
        return self.count

    def add(self, first: int, digests: Buffer, now: float) -> int:
        """The notices of ``len(digests) // DIGEST_LEN`` packets from ``first``
        (their digests in order), come at ``now``; how many were taken. A run
        longer than the ring, or past the end of the sequence space, is a
        caller's error."""
        n = len(digests) // DIGEST_LEN
        if n == 0:
            return 0
        if not (0 <= first and first + n <= SEQ_SPACE and n <= self.size):
            raise ValueError(f"a run of {n} notices from {first}")
        if len(self.runs) >= MAX_RUNS:
            self.refused += n
            return 0
        a = first & self.mask
        split = min(n, self.size - a)  # the ring's end
        self._put(a, first, digests, 0, split)
        if split < n:
            self._put(0, first + split, digests, split, n)
        self.runs.append([first, n, now])
        return n

    def _put(self, slot: int, first: int, digests: Buffer, lo: int, hi: int) -> None:
        n = hi - lo
        seqs = self.seqs
        if not _empty(seqs[slot : slot + n]):  # a notice in the way
            for k in range(n):
                old = seqs[slot + k]
                if old:
                    self.count -= 1
                    if old != first + k + 1:
                        self.overwritten += 1
        seqs[slot : slot + n] = array("q", range(first + 1, first + n + 1))
        self.digests[DIGEST_LEN * slot : DIGEST_LEN * (slot + n)] = digests[
            DIGEST_LEN * lo : DIGEST_LEN * hi
        ]
        self.count += n

    def get(self, seq: int) -> bytes | None:
        """The digest ``seq``'s notice gave, if it waits."""
        slot = seq & self.mask
        if self.seqs[slot] == seq + 1:
            return bytes(self.digests[DIGEST_LEN * slot : DIGEST_LEN * slot + DIGEST_LEN])
        return None

    def remove(self, seq: int) -> None:
        """``seq``'s packet came: its notice no longer waits."""
        slot = seq & self.mask
        if self.seqs[slot] == seq + 1:
            self.seqs[slot] = 0
            self.count -= 1

    def due(
        self, now: float, highest: int, gap_after: float, loss_after: float
    ) -> list[tuple[int, bytes, float]]:
        """Take out the notices whose packets are lost, ``(seq, digest, time)``
        in the order they came: a notice older than ``loss_after``, or older
        than ``gap_after`` with a later packet come (``seq <= highest``). The
        walk stops at the first notice waiting that is neither."""
        out: list[tuple[int, bytes, float]] = []
        runs, seqs, mask = self.runs, self.seqs, self.mask
        while runs:
            run = runs[0]
            first, n, time = int(run[0]), int(run[1]), run[2]
            waiting = self._waiting(first, n)
            if not waiting:
                runs.popleft()
                continue
            age = now - time
            if age <= gap_after or (age <= loss_after and waiting[0] > highest):
                break
            end = first + n if age > loss_after else highest + 1
            digests = self.digests
            for seq in waiting:
                if seq >= end:  # this one and the rest are after the newest packet
                    run[0], run[1] = seq, first + n - seq
                    break
                slot = seq & mask
                seqs[slot] = 0
                at = DIGEST_LEN * slot
                out.append((seq, bytes(digests[at : at + DIGEST_LEN]), time))
                self.count -= 1
            else:
                runs.popleft()
                continue
            break
        return out

    def oldest(self) -> tuple[int, float] | None:
        """The first notice waiting, in the order they came: (seq, time)."""
        runs = self.runs
        while runs:
            first, n, time = int(runs[0][0]), int(runs[0][1]), runs[0][2]
            waiting = self._waiting(first, n)
            if waiting:
                return waiting[0], time
            runs.popleft()
        return None

    def _waiting(self, first: int, n: int) -> list[int]:
        """The sequence numbers of the run ``first``, ``n`` whose notices wait."""
        slot = first & self.mask
        seqs = self.seqs
        if slot + n <= self.size:
            if _empty(seqs[slot : slot + n]):
                return []  # the usual case: all came
            values = seqs[slot : slot + n].tolist()
        else:
            values = [seqs[(first + k) & self.mask] for k in range(n)]
        return [first + k for k, v in enumerate(values) if v == first + k + 1]

    def items(self) -> Iterator[tuple[int, bytes, float]]:
        """Every notice waiting, ``(seq, digest, time)``, in the order they came."""
        seen: set[int] = set()
        for first, n, time in list(self.runs):
            for seq in self._waiting(int(first), int(n)):
                if seq not in seen:
                    seen.add(seq)
                    at = DIGEST_LEN * (seq & self.mask)
                    yield seq, bytes(self.digests[at : at + DIGEST_LEN]), time


class Accepted:
    """The digests of the packets accepted, by sequence number: fixed arrays
    (about 4 MB), no object per packet and nothing to expire. A sequence
    number shares its slot with those ``MAX_EXPECTED`` apart, so the last
    2^18 packets are known: a copy of one is a duplicate (or, altered, a
    forgery); a copy of an older one waits for a notice like any unknown
    packet (and is dropped as unannounced).

    An empty slot holds 0, which no sequence number of that slot can be,
    but for slot 0: it starts at -1."""

    __slots__ = ("digests", "mask", "seqs")

    def __init__(self, size: int = MAX_EXPECTED) -> None:
        assert size & (size - 1) == 0, "a power of two"
        self.mask = size - 1
        self.seqs = lazy_zeros(8 * size).cast("q")
        self.seqs[0] = -1
        self.digests = lazy_zeros(DIGEST_LEN * size)

    def get(self, seq: int) -> bytes | None:
        """The digest of ``seq`` if it was accepted (among the last 2^18)."""
        slot = seq & self.mask
        if self.seqs[slot] == seq:
            return bytes(self.digests[slot * DIGEST_LEN : slot * DIGEST_LEN + DIGEST_LEN])
        return None

    def put(self, seq: int, digest: bytes) -> None:
        slot = seq & self.mask
        self.seqs[slot] = seq
        self.digests[slot * DIGEST_LEN : slot * DIGEST_LEN + DIGEST_LEN] = digest
