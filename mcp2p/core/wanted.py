"""Wanted maps: sets of block (or piece) indices kept as ranges (DESIGN.md 2).

A ``RangeSet`` holds non-negative ints as sorted, disjoint, non-adjacent
half-open ranges ``[start, end)``. A receiver adds and discards one index
per packet (50k/s), and a wanted map full of random holes can have
hundreds of thousands of ranges, so the ranges are not one flat list
(inserting into the middle of a long list costs a memmove of all that
follows): they live in chunks of at most ``_MAX_CHUNK`` boundaries, as in
``sortedcontainers.SortedList``.

Each chunk is a flat list ``[s0, e0, s1, e1, ...]`` holding whole ranges;
``_firsts[c]`` is chunk ``c``'s first start, so one ``bisect`` finds the
chunk and another finds the place in it, and ``i`` is a member exactly
when ``bisect_right(chunk, i)`` is odd.

Costs, with r ranges: ``in``, ``add``, ``discard``: O(log r) (two bisects
and a bounded edit of one chunk); ``add_range``, ``remove_range``:
O(log r + ranges merged or removed); ``len``: O(1); set algebra,
``copy``, ``split``, ``encode``, ``decode``: O(r). ``take_random``/``choice``:
O(log r) through a Fenwick tree over chunk sizes, built on first use and
kept up to date by ``add``/``discard`` (rebuilt, in O(r / chunk), only
after chunks are split, dropped or replaced), plus a scan of one chunk.

Wire form (``encode``/``decode``): for each range, ascending, two unsigned
LEB128 varints: the gap from the previous range's end (from 0 for the
first range; at least 1 after it, since ranges are not adjacent), then
the length (at least 1). The empty set is no bytes. Canonical: minimal
varints only, so ``decode`` is the exact inverse of ``encode``.

Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import random
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from itertools import accumulate, chain
from operator import sub
from typing import Any

from mcp2p.errors import ProtocolError

# Boundaries per chunk: a chunk that grows past _MAX_CHUNK is cut in two;
# bulk operations build chunks of _LOAD. Both even (whole ranges).
_LOAD = 128
_MAX_CHUNK = 2 * _LOAD
_MAX_VARINT = 10  # bytes: enough for any 64-bit value


def _count(flat: list[int]) -> int:
    """Members in a flat boundary list."""
    return sum(flat[1::2]) - sum(flat[::2])


def _check_index(i: object) -> None:
    if not isinstance(i, int) or isinstance(i, bool) or i < 0:
        raise ValueError(f"members must be non-negative integers, got {i!r}")


def _union(a: list[int], b: list[int]) -> list[int]:
    out: list[int] = []
    i = j = 0
    la, lb = len(a), len(b)
    while i < la or j < lb:
        if j >= lb or (i < la and a[i] <= b[j]):
            s, e = a[i], a[i + 1]
            i += 2
        else:
            s, e = b[j], b[j + 1]
            j += 2
        if out and s <= out[-1]:
            if e > out[-1]:
                out[-1] = e
        else:
            out += (s, e)
    return out


def _intersection(a: list[int], b: list[int]) -> list[int]:
    out: list[int] = []
    i = j = 0
    la, lb = len(a), len(b)
    while i < la and j < lb:
        s = max(a[i], b[j])
        ea, eb = a[i + 1], b[j + 1]
        e = min(ea, eb)
        if s < e:
            out += (s, e)
        if ea < eb:
            i += 2
        else:
            j += 2
    return out


def _difference(a: list[int], b: list[int]) -> list[int]:
    out: list[int] = []
    j = 0
    lb = len(b)
    for i in range(0, len(a), 2):
        s, e = a[i], a[i + 1]
        while j < lb and b[j + 1] <= s:
            j += 2
        k = j
        while k < lb and b[k] < e:
            if b[k] > s:
                out += (s, b[k])
            if b[k + 1] > s:
                s = b[k + 1]
            k += 2
        if s < e:
            out += (s, e)
    return out


def _add_range_flat(flat: list[int], a: int, b: int) -> None:
    """Add [a, b) to a flat boundary list, merging what it touches."""
    lo = bisect_left(flat, a) // 2  # first range with end >= a
    hi = (bisect_right(flat, b) + 1) // 2  # past the last range with start <= b
    if lo >= hi:
        flat[2 * lo : 2 * lo] = (a, b)
    else:
        flat[2 * lo : 2 * hi] = (min(a, flat[2 * lo]), max(b, flat[2 * hi - 1]))


def _remove_range_flat(flat: list[int], a: int, b: int) -> None:
    """Remove [a, b) from a flat boundary list, keeping what sticks out."""
    lo = bisect_right(flat, a) // 2  # first range with end > a
    hi = (bisect_left(flat, b) + 1) // 2  # past the last range with start < b
    if lo >= hi:
        return
    keep: list[int] = []
    if flat[2 * lo] < a:
        keep += (flat[2 * lo], a)
    if flat[2 * hi - 1] > b:
        keep += (b, flat[2 * hi - 1])
    flat[2 * lo : 2 * hi] = keep


class RangeSet:
    """A mutable set of non-negative ints, stored as ranges; see the module doc."""

    __slots__ = ("_chunks", "_firsts", "_counts", "_len", "_fen")

    _chunks: list[list[int]]
    _firsts: list[int]
    _counts: list[int]
    _len: int
    _fen: list[int] | None

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        """Ranges in any order; overlapping or adjacent ones merge, empty ones vanish."""
        pairs = []
        for item in ranges:
            start, end = item
            _check_index(start)
            _check_index(end)
            if start > end:
                raise ValueError(f"range [{start}, {end}) has start > end")
            if start < end:
                pairs.append((start, end))
        pairs.sort()
        flat: list[int] = []
        for start, end in pairs:
            if flat and start <= flat[-1]:
                if end > flat[-1]:
                    flat[-1] = end
            else:
                flat += (start, end)
        self._set_flat(flat)

    # -- construction

    @classmethod
    def _from_flat(cls, flat: list[int]) -> RangeSet:
        """From a valid flat boundary list, which the set takes over."""
        self = cls.__new__(cls)
        self._set_flat(flat)
        return self

    @classmethod
    def full(cls, n: int) -> RangeSet:
        """{0, ..., n - 1}."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        return cls._from_flat([0, n] if n else [])

    @classmethod
    def from_indices(cls, indices: Iterable[int]) -> RangeSet:
        flat: list[int] = []
        for i in sorted(set(indices)):
            _check_index(i)
            if flat and flat[-1] == i:
                flat[-1] = i + 1
            else:
                flat += (i, i + 1)
        return cls._from_flat(flat)

    def copy(self) -> RangeSet:
        other = RangeSet.__new__(RangeSet)
        other._chunks = [list(c) for c in self._chunks]
        other._firsts = list(self._firsts)
        other._counts = list(self._counts)
        other._len = self._len
        other._fen = None
        return other

    # -- internals

    def _set_flat(self, flat: list[int]) -> None:
        chunks = [flat[i : i + _LOAD] for i in range(0, len(flat), _LOAD)]
        self._chunks = chunks
        self._firsts = [c[0] for c in chunks]
        self._counts = [_count(c) for c in chunks]
        self._len = sum(self._counts)
        self._fen = None

    def _flat(self) -> list[int]:
        return list(chain.from_iterable(self._chunks))

    def _replace_chunks(self, c0: int, c1: int, flat: list[int]) -> None:
        """Put the ranges of ``flat`` in place of chunks c0..c1-1."""
        chunks = [flat[i : i + _LOAD] for i in range(0, len(flat), _LOAD)]
        counts = [_count(c) for c in chunks]
        self._len += sum(counts) - sum(self._counts[c0:c1])
        self._chunks[c0:c1] = chunks
        self._firsts[c0:c1] = [c[0] for c in chunks]
        self._counts[c0:c1] = counts
        self._fen = None

    def _split_chunk(self, c: int) -> None:
        chunk = self._chunks[c]
        half = len(chunk) // 4 * 2
        right = chunk[half:]
        del chunk[half:]
        moved = _count(right)
        self._chunks.insert(c + 1, right)
        self._firsts.insert(c + 1, right[0])
        self._counts[c] -= moved
        self._counts.insert(c + 1, moved)
        self._fen = None

    def _drop_chunk(self, c: int) -> None:
        del self._chunks[c]
        del self._firsts[c]
        del self._counts[c]
        self._fen = None

    def _fen_add(self, c: int, delta: int) -> None:
        fen = self._fen
        assert fen is not None
        n = len(fen) - 1
        i = c + 1
        while i <= n:
            fen[i] += delta
            i += i & -i

    def _build_fen(self) -> list[int]:
        fen = [0]
        fen += self._counts
        n = len(fen) - 1
        for i in range(1, n + 1):
            j = i + (i & -i)
            if j <= n:
                fen[j] += fen[i]
        self._fen = fen
        return fen

    # -- single members

    def __contains__(self, i: object) -> bool:
        if not isinstance(i, int):
            return False
        c = bisect_right(self._firsts, i) - 1
        return c >= 0 and bisect_right(self._chunks[c], i) & 1 == 1

    def add(self, i: int) -> bool:
        """Add ``i``; True if it was not a member."""
        if i < 0:
            raise ValueError(f"members must be non-negative, got {i!r}")
        firsts = self._firsts
        chunks = self._chunks
        c = bisect_right(firsts, i) - 1
        if c < 0:
            if not chunks:
                chunks.append([i, i + 1])
                firsts.append(i)
                self._counts.append(1)
                self._len = 1
                self._fen = None
                return True
            c = 0
            chunk = chunks[0]
            if chunk[0] == i + 1:
                chunk[0] = i
            else:
                chunk[0:0] = (i, i + 1)
            firsts[0] = i
        else:
            chunk = chunks[c]
            k = bisect_right(chunk, i)
            if k & 1:
                return False
            # chunk[k - 1] is the end of the range before i (<= i).
            left = chunk[k - 1] == i
            if k < len(chunk):
                if chunk[k] == i + 1:
                    if left:
                        del chunk[k - 1 : k + 1]
                    else:
                        chunk[k] = i
                elif left:
                    chunk[k - 1] = i + 1
                else:
                    chunk[k:k] = (i, i + 1)
            elif c + 1 < len(firsts) and firsts[c + 1] == i + 1:
                # The range after i opens the next chunk.
                after = chunks[c + 1]
                if left:
                    chunk[k - 1] = after[1]
                    del after[0:2]
                    self._len += 1
                    self._counts[c] = _count(chunk)
                    if after:
                        firsts[c + 1] = after[0]
                        self._counts[c + 1] = _count(after)
                        self._fen = None
                    else:
                        self._drop_chunk(c + 1)
                    return True
                after[0] = i
                firsts[c + 1] = i
                c += 1
                chunk = after
            elif left:
                chunk[k - 1] = i + 1
            else:
                chunk += (i, i + 1)
        self._counts[c] += 1
        self._len += 1
        if self._fen is not None:
            self._fen_add(c, 1)
        if len(chunk) > _MAX_CHUNK:
            self._split_chunk(c)
        return True

    def discard(self, i: int) -> bool:
        """Remove ``i`` if present; True if it was a member."""
        c = bisect_right(self._firsts, i) - 1
        if c < 0:
            return False
        chunk = self._chunks[c]
        k = bisect_right(chunk, i)
        if not k & 1:
            return False
        start = chunk[k - 1]
        end = chunk[k]
        if start == i:
            if end == i + 1:
                del chunk[k - 1 : k + 1]
                if not chunk:
                    self._drop_chunk(c)
                    self._len -= 1
                    return True
            else:
                chunk[k - 1] = i + 1
            if k == 1:
                self._firsts[c] = chunk[0]
        elif end == i + 1:
            chunk[k] = i
        else:
            chunk[k:k] = (i, i + 1)
        self._counts[c] -= 1
        self._len -= 1
        if self._fen is not None:
            self._fen_add(c, -1)
        if len(chunk) > _MAX_CHUNK:
            self._split_chunk(c)
        return True

    def first(self) -> int | None:
        return self._firsts[0] if self._firsts else None

    def last(self) -> int | None:
        return self._chunks[-1][-1] - 1 if self._chunks else None

    def next_run(self, x: int) -> tuple[int, int] | None:
        """``(a, b)``: ``a`` the first member >= ``x`` and ``[a, b)`` the members
        from it on that follow each other (the rest of its range); None if no
        member is >= ``x``. O(log r)."""
        chunks = self._chunks
        if not chunks:
            return None
        c = bisect_right(self._firsts, x) - 1
        if c < 0:
            c = 0
        chunk = chunks[c]
        k = bisect_right(chunk, x)
        if k & 1:
            return x, chunk[k]
        if k < len(chunk):
            return chunk[k], chunk[k + 1]
        if c + 1 < len(chunks):
            after = chunks[c + 1]
            return after[0], after[1]
        return None

    # -- ranges

    def add_range(self, a: int, b: int) -> None:
        """Add [a, b); nothing if a >= b."""
        _check_index(a)
        _check_index(b)
        if a >= b:
            return
        firsts = self._firsts
        # Ranges in chunks before c0 end before firsts[c0] <= a; chunks from
        # c1 on start after b: neither can touch [a, b).
        c0 = max(0, bisect_right(firsts, a) - 1)
        c1 = max(bisect_right(firsts, b), min(c0 + 1, len(firsts)))
        flat = list(chain.from_iterable(self._chunks[c0:c1]))
        _add_range_flat(flat, a, b)
        self._replace_chunks(c0, c1, flat)

    def remove_range(self, a: int, b: int) -> None:
        """Remove [a, b); nothing if a >= b."""
        _check_index(a)
        _check_index(b)
        if a >= b:
            return
        firsts = self._firsts
        c0 = max(0, bisect_right(firsts, a) - 1)
        c1 = bisect_left(firsts, b)
        if c1 <= c0:
            return
        flat = list(chain.from_iterable(self._chunks[c0:c1]))
        _remove_range_flat(flat, a, b)
        self._replace_chunks(c0, c1, flat)

    def ranges(self) -> list[tuple[int, int]]:
        flat = self._flat()
        return list(zip(flat[::2], flat[1::2], strict=True))

    # -- the set protocol

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[int]:
        """Members ascending; do not change the set while iterating."""
        for chunk in self._chunks:
            for k in range(0, len(chunk), 2):
                yield from range(chunk[k], chunk[k + 1])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RangeSet):
            return NotImplemented
        return self._len == other._len and self._flat() == other._flat()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RangeSet({self.ranges()!r})"

    # -- set algebra, O(r + r')

    def union(self, other: RangeSet) -> RangeSet:
        return RangeSet._from_flat(_union(self._flat(), other._flat()))

    def intersection(self, other: RangeSet) -> RangeSet:
        return RangeSet._from_flat(_intersection(self._flat(), other._flat()))

    def difference(self, other: RangeSet) -> RangeSet:
        return RangeSet._from_flat(_difference(self._flat(), other._flat()))

    def update(self, other: RangeSet) -> None:
        if other is self:
            return
        if len(other._chunks) * _LOAD < len(self._chunks):
            # A few ranges into a big set: edit in place, O(r' log r).
            for a, b in other.ranges():
                self.add_range(a, b)
        else:
            self._set_flat(_union(self._flat(), other._flat()))

    def difference_update(self, other: RangeSet) -> None:
        if other is self:
            self._set_flat([])
        elif len(other._chunks) * _LOAD < len(self._chunks):
            for a, b in other.ranges():
                self.remove_range(a, b)
        else:
            self._set_flat(_difference(self._flat(), other._flat()))

    # -- splitting and sampling

    def split(self, n: int) -> list[RangeSet]:
        """``n`` contiguous parts, in order, whose sizes differ by at most 1.

        Some parts are empty when the set has fewer than ``n`` members.
        """
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        flat = self._flat()
        small, extra = divmod(self._len, n)
        parts = []
        k = 0
        start = flat[0] if flat else 0
        for p in range(n):
            want = small + (1 if p < extra else 0)
            part: list[int] = []
            while want:
                end = flat[k + 1]
                take = min(want, end - start)
                part += (start, start + take)
                start += take
                want -= take
                if start == end:
                    k += 2
                    if k < len(flat):
                        start = flat[k]
            parts.append(RangeSet._from_flat(part))
        return parts

    def _locate_random(self, rng: random.Random) -> int:
        if not self._len:
            raise KeyError("pick from an empty RangeSet")
        return self.nth(rng.randrange(self._len))

    def nth(self, r: int) -> int:
        """The member of rank ``r`` (0 is the smallest); IndexError if there is none.

        O(log r) after the first call (a Fenwick tree over chunk sizes)."""
        if not 0 <= r < self._len:
            raise IndexError(f"rank {r} outside 0..{self._len - 1}")
        c = 0
        if len(self._counts) > 1:
            fen = self._fen if self._fen is not None else self._build_fen()
            n = len(fen) - 1
            step = 1 << (n.bit_length() - 1)
            while step:
                nxt = c + step
                if nxt <= n and fen[nxt] <= r:
                    c = nxt
                    r -= fen[nxt]
                step >>= 1
        chunk = self._chunks[c]
        cumulative = list(accumulate(map(sub, chunk[1::2], chunk[::2])))
        k = bisect_right(cumulative, r)
        return chunk[2 * k + 1] - (cumulative[k] - r)

    def choice(self, rng: random.Random) -> int:
        """A member drawn uniformly with ``rng``; KeyError if empty. The set is unchanged."""
        return self._locate_random(rng)

    def take_random(self, rng: random.Random) -> int:
        """Remove and return a member drawn uniformly with ``rng``; KeyError if empty."""
        i = self._locate_random(rng)
        self.discard(i)
        return i

    # -- wire form

    def encode(self) -> bytes:
        out = bytearray()
        previous = 0
        for chunk in self._chunks:
            for k in range(0, len(chunk), 2):
                start, end = chunk[k], chunk[k + 1]
                for value in (start - previous, end - start):
                    while value > 0x7F:
                        out.append((value & 0x7F) | 0x80)
                        value >>= 7
                    out.append(value)
                previous = end
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes, limit: int) -> RangeSet:
        """The set encoded in ``data``, whose members must all be below ``limit``.

        ProtocolError for anything ``encode`` would not produce.
        """
        if not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be a non-negative integer, got {limit!r}")
        data = bytes(data)
        n = len(data)
        flat: list[int] = []
        pos = 0
        previous = 0
        while pos < n:
            values: list[Any] = []
            for _ in range(2):
                value = shift = 0
                while True:
                    if pos >= n:
                        raise ProtocolError("wanted map: truncated varint or unpaired value")
                    byte = data[pos]
                    pos += 1
                    value |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                    if shift >= 7 * _MAX_VARINT:
                        raise ProtocolError("wanted map: varint too long")
                if byte == 0 and shift > 7:
                    raise ProtocolError("wanted map: varint not in its shortest form")
                values.append(value)
            gap, length = values
            if flat and gap == 0:
                raise ProtocolError("wanted map: ranges overlap or touch")
            if length == 0:
                raise ProtocolError("wanted map: empty range")
            start = previous + gap
            previous = start + length
            if previous > limit:
                raise ProtocolError(f"wanted map: member {previous - 1} is not below {limit}")
            flat += (start, previous)
        return cls._from_flat(flat)
