"""What an SN sends next: by default a unit drawn at random, weighted by demand (DESIGN.md 5.5).

A unit is what a subscriber can need: a global block index for the plain
code (need 0 or 1), a piece for RaptorQ (it needs several symbols of it).
A unit's weight is the sum over subscribers of their remaining need for
it, so a block three CNs want goes out three times as often as a block
one CN wants, and a block nobody wants never goes out.

Sending is optimistic: ``sent`` counts a symbol as received by everyone
who needed it; receivers report losses and ``add_need`` puts them back.

Weights live in a Fenwick (binary indexed) tree, an ``array('q')`` padded
to a power of two, so that a draw is one descent of the tree. Each
subscriber's needs are a ``RangeSet`` of units needed once plus a dict of
units needed more than once (each unit in at most one of them), so a
plain-code subscriber wanting a whole file costs a few ints, not one per
block.

Costs, with U units, S subscribers and r ranges in a subscriber's set:

- ``choose``: O(log U).
- ``sent``: O(S log r + log U).
- ``add_need``: O(log r + log U).
- ``set_need``/``remove``: O(r + r' + k log U) for k units whose need
  changes, or O(U) when k log U is larger than about 2U (the tree is then
  rebuilt in one pass instead of k point updates).
- ``weight``: O(log U); ``total_weight``: O(1).

Memory: 8 bytes per unit (the tree) plus the subscribers' needs.

Two other policies, for comparison (`[serving] scheduler`; the lab's
control experiment): ``UniformScheduler`` draws uniformly among the units
anyone still needs, ``SequentialScheduler`` goes round them in unit order
and wraps (a carousel, as udpcast or FLUTE send). Both keep the same needs
and weights (so the session's bookkeeping is the same) plus, per unit, its
weight and a second Fenwick tree of "someone needs it" (0/1): a uniform
draw or the next needed unit at or after a cursor is one descent of it,
O(log U); keeping it costs O(log U) more per weight change that crosses 0.
Memory: 16 bytes more per unit.

Pure: no Twisted, no I/O; randomness from the ``random.Random`` given.
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Hashable, KeysView
from operator import add

from zope.interface import implementer

from mcp2p.core.wanted import RangeSet
from mcp2p.interfaces import IBlockScheduler

__all__ = [
    "SCHEDULERS",
    "DemandScheduler",
    "SequentialScheduler",
    "UniformScheduler",
    "make_scheduler",
]


class _Need:
    """One subscriber's remaining needs; ``from_ranges``: it gave a RangeSet last."""

    __slots__ = ("ones", "many", "from_ranges")

    def __init__(self, ones: RangeSet, many: dict[int, int], from_ranges: bool) -> None:
        self.ones = ones  # units needed exactly once
        self.many = many  # unit -> need, every need >= 2
        self.from_ranges = from_ranges


@implementer(IBlockScheduler)
class DemandScheduler:
    """Demand-weighted random choice of units; see the module doc."""

    def __init__(self, units: int, rng: random.Random) -> None:
        if not isinstance(units, int) or units < 0:
            raise ValueError(f"units must be a non-negative integer, got {units!r}")
        self._units = units
        size = 1
        while size < units:
            size <<= 1
        self._size = size  # tree positions 1..size; units map to 1..units
        self._tree = array("q", bytes(8 * (size + 1)))
        self._total = 0
        self._needs: dict[Hashable, _Need] = {}
        self._randrange = rng.randrange

    # -- reading

    @property
    def units(self) -> int:
        return self._units

    @property
    def total_weight(self) -> int:
        """Sum of every subscriber's remaining needs: 0 means nothing to send."""
        return self._total

    @property
    def subscribers(self) -> KeysView[Hashable]:
        return self._needs.keys()

    def need_of(self, subscriber: Hashable) -> RangeSet | dict[int, int]:
        """What ``subscriber`` still needs, in the form ``set_need`` takes.

        A RangeSet if its needs were last set from a RangeSet and no unit is
        needed more than once; otherwise a dict ``{unit: need}`` of needs
        >= 1. Either way ``set_need(subscriber, need_of(subscriber))``
        changes nothing. KeyError for an unknown subscriber.
        """
        need = self._needs[subscriber]
        if need.from_ranges and not need.many:
            return need.ones.copy()
        counts = dict.fromkeys(need.ones, 1)
        counts.update(need.many)
        return counts

    def weight(self, unit: int) -> int:
        """The sum of all subscribers' needs for ``unit``."""
        self._check_unit(unit)
        return self._prefix(unit + 1) - self._prefix(unit)

    # -- choosing and sending (the hot path: keep it lean)

    def choose(self) -> int | None:
        """A unit drawn with probability weight / total_weight; None if nothing is needed."""
        total = self._total
        if total <= 0:
            return None
        r = self._randrange(total)
        tree = self._tree
        pos = 0
        step = self._size >> 1
        # Find the largest pos whose prefix sum is <= r: unit pos has weight > 0.
        while step:
            nxt = pos + step
            w = tree[nxt]
            if w <= r:
                pos = nxt
                r -= w
            step >>= 1
        return pos

    def sent(self, unit: int) -> int:
        """One symbol of ``unit`` went out: every need for it drops by one.

        Returns how many subscribers needed it (its weight's drop)."""
        if not 0 <= unit < self._units:
            raise ValueError(f"unit {unit} is outside 0..{self._units - 1}")
        k = 0
        for need in self._needs.values():
            many = need.many
            if many:
                count = many.get(unit)
                if count is not None:
                    if count == 2:
                        del many[unit]
                        need.ones.add(unit)
                    else:
                        many[unit] = count - 1
                    k += 1
                    continue
            if need.ones.discard(unit):
                k += 1
        if k:
            self._total -= k
            tree = self._tree
            size = self._size
            i = unit + 1
            while i <= size:
                tree[i] -= k
                i += i & -i
        return k

    # -- changing needs

    def add_need(self, subscriber: Hashable, unit: int, count: int = 1) -> None:
        """``subscriber`` needs ``count`` more symbols of ``unit`` (it lost them)."""
        self._check_unit(unit)
        if not isinstance(count, int) or count < 0:
            raise ValueError(f"count must be a non-negative integer, got {count!r}")
        if not count:
            return
        need = self._needs.get(subscriber)
        if need is None:
            need = self._needs[subscriber] = _Need(RangeSet(), {}, False)
        before = need.many.get(unit)
        if before is None:
            before = 1 if need.ones.discard(unit) else 0
        after = before + count
        if after == 1:
            need.ones.add(unit)
        else:
            need.many[unit] = after
        self._add(unit, count)
        self._total += count

    def set_need(self, subscriber: Hashable, need: dict[int, int] | RangeSet) -> None:
        """Replace everything ``subscriber`` needs.

        A RangeSet means need 1 for each member (it is copied); a dict maps
        units to needs (0 means none).
        """
        if isinstance(need, RangeSet):
            last = need.last()
            if last is not None and last >= self._units:
                raise ValueError(f"unit {last} is outside 0..{self._units - 1}")
            new = _Need(need.copy(), {}, True)
        elif isinstance(need, dict):
            ones = []
            many = {}
            for unit, count in need.items():
                self._check_unit(unit)
                if not isinstance(count, int) or count < 0:
                    raise ValueError(f"need for unit {unit} must be >= 0, got {count!r}")
                if count == 1:
                    ones.append(unit)
                elif count > 1:
                    many[unit] = count
            new = _Need(RangeSet.from_indices(ones), many, False)
        else:
            raise TypeError(f"need must be a dict or a RangeSet, not {type(need).__name__}")
        old = self._needs.get(subscriber)
        self._needs[subscriber] = new
        if old is not None:
            self._apply(old, new)
        else:
            self._apply(_Need(RangeSet(), {}, False), new)

    def remove(self, subscriber: Hashable) -> None:
        """Forget ``subscriber`` and its needs; KeyError if unknown."""
        old = self._needs.pop(subscriber)
        self._apply(old, _Need(RangeSet(), {}, False))

    # -- internals

    def _check_unit(self, unit: object) -> None:
        if not isinstance(unit, int) or not 0 <= unit < self._units:
            raise ValueError(f"unit {unit!r} is outside 0..{self._units - 1}")

    def _prefix(self, i: int) -> int:
        """Sum of the weights of units 0..i-1."""
        tree = self._tree
        total = 0
        while i > 0:
            total += tree[i]
            i &= i - 1
        return total

    def _add(self, unit: int, delta: int) -> None:
        tree = self._tree
        size = self._size
        i = unit + 1
        while i <= size:
            tree[i] += delta
            i += i & -i

    def _apply(self, old: _Need, new: _Need) -> None:
        """Change the tree from ``old``'s contribution to ``new``'s."""
        plus = new.ones.difference(old.ones)
        minus = old.ones.difference(new.ones)
        points: dict[int, int] = {}
        for unit, count in old.many.items():
            points[unit] = points.get(unit, 0) - count
        for unit, count in new.many.items():
            points[unit] = points.get(unit, 0) + count
        changed = len(plus) + len(minus) + len(points)
        if not changed:
            return
        self._total += len(plus) - len(minus) + sum(points.values())
        if changed * self._size.bit_length() > 2 * self._size:
            # Many changes: build a tree of the deltas in O(U) and add it in.
            delta = array("q", bytes(8 * (self._size + 1)))
            one = array("q", [1])
            minus_one = array("q", [-1])
            for a, b in plus.ranges():
                delta[a + 1 : b + 1] = one * (b - a)
            for a, b in minus.ranges():
                delta[a + 1 : b + 1] = minus_one * (b - a)
            for unit, d in points.items():
                delta[unit + 1] += d
            n = self._size
            for i in range(1, n + 1):
                j = i + (i & -i)
                if j <= n:
                    delta[j] += delta[i]
            self._tree = array("q", map(add, self._tree, delta))
            return
        for a, b in plus.ranges():
            for unit in range(a, b):
                self._add(unit, 1)
        for a, b in minus.ranges():
            for unit in range(a, b):
                self._add(unit, -1)
        for unit, d in points.items():
            if d:
                self._add(unit, d)


class _LiveScheduler(DemandScheduler):
    """The demand bookkeeping plus which units anyone needs at all.

    ``_w`` is each unit's weight; ``_live`` a Fenwick tree of 0/1 (weight
    > 0) over the same positions as the weight tree, ``_nlive`` its sum.
    Every weight change goes through `_add` or `sent` (kept here) or the
    bulk rebuild of `DemandScheduler._apply` (then both are rebuilt, O(U)).
    """

    def __init__(self, units: int, rng: random.Random) -> None:
        super().__init__(units, rng)
        self._w = array("q", bytes(8 * units))
        self._live = array("q", bytes(8 * (self._size + 1)))
        self._nlive = 0

    def _flip(self, unit: int, delta: int) -> None:
        live = self._live
        size = self._size
        i = unit + 1
        while i <= size:
            live[i] += delta
            i += i & -i
        self._nlive += delta

    def _add(self, unit: int, delta: int) -> None:
        super()._add(unit, delta)
        before = self._w[unit]
        after = before + delta
        self._w[unit] = after
        if (before > 0) != (after > 0):
            self._flip(unit, 1 if after > 0 else -1)

    def sent(self, unit: int) -> int:
        k = super().sent(unit)
        if k:
            before = self._w[unit]
            self._w[unit] = before - k
            if before > 0 >= before - k:
                self._flip(unit, -1)
        return k

    def _apply(self, old: _Need, new: _Need) -> None:
        tree = self._tree
        super()._apply(old, new)
        if self._tree is not tree:  # the bulk path: rebuild from the new tree
            self._rebuild()

    def _rebuild(self) -> None:
        n = self._size
        w = array("q", self._tree)
        for i in range(n, 0, -1):  # undo the Fenwick build: weights per position
            j = i + (i & -i)
            if j <= n:
                w[j] -= w[i]
        self._w = w[1 : self._units + 1]
        live = array("q", (1 if x > 0 else 0 for x in w))
        live[0] = 0
        self._nlive = sum(live)
        for i in range(1, n + 1):
            j = i + (i & -i)
            if j <= n:
                live[j] += live[i]
        self._live = live

    def _nth_live(self, r: int) -> int:
        """The unit that is the ``r``-th (from 0) of those anyone needs."""
        live = self._live
        pos = 0
        step = self._size >> 1
        while step:
            nxt = pos + step
            c = live[nxt]
            if c <= r:
                pos = nxt
                r -= c
            step >>= 1
        return pos

    def _live_before(self, unit: int) -> int:
        """How many of units 0..unit-1 anyone needs."""
        live = self._live
        total = 0
        i = unit
        while i > 0:
            total += live[i]
            i &= i - 1
        return total

    @property
    def needed_units(self) -> int:
        """How many units anyone still needs."""
        return self._nlive


class UniformScheduler(_LiveScheduler):
    """Uniform random choice among the units anyone still needs."""

    def choose(self) -> int | None:
        if self._nlive <= 0:
            return None
        return self._nth_live(self._randrange(self._nlive))


class SequentialScheduler(_LiveScheduler):
    """Round-robin in unit order over the needed units, wrapping (a carousel)."""

    def __init__(self, units: int, rng: random.Random) -> None:
        super().__init__(units, rng)
        self._cursor = 0  # the next unit to look at

    def choose(self) -> int | None:
        nlive = self._nlive
        if nlive <= 0:
            return None
        r = self._live_before(self._cursor) if self._cursor < self._units else nlive
        if r >= nlive:
            r = 0  # nothing needed at or after the cursor: wrap
        unit = self._nth_live(r)
        self._cursor = unit + 1
        return unit


class MostWantedScheduler(_LiveScheduler):
    """The paper's "most wanted most often", made deterministic: a carousel
    in unit order over the units with the highest weight (the most CNs
    need them), so a late joiner's and an early CN's common needs go first
    and a unit only some CNs need waits until nothing is wanted more.

    ``_max`` is a max segment tree over the weights (leaves at
    ``size .. 2*size-1``): the next unit at or after the cursor whose weight
    is the maximum is found in O(log U), and every weight change costs
    O(log U) as in the other trees. (A unit needed several times, a
    fountain code's piece, is visited once per round like the others.)
    """

    def __init__(self, units: int, rng: random.Random) -> None:
        super().__init__(units, rng)
        self._max = array("q", bytes(8 * 2 * self._size))
        self._cursor = 0

    def _set(self, unit: int, value: int) -> None:
        m = self._max
        i = unit + self._size
        m[i] = value
        i >>= 1
        while i:
            a, b = m[2 * i], m[2 * i + 1]
            v = a if a >= b else b
            if m[i] == v:
                break  # unchanged here, so above too
            m[i] = v
            i >>= 1

    def _add(self, unit: int, delta: int) -> None:
        super()._add(unit, delta)
        self._set(unit, self._w[unit])

    def sent(self, unit: int) -> int:
        k = super().sent(unit)
        if k:
            self._set(unit, self._w[unit])
        return k

    def _rebuild(self) -> None:
        super()._rebuild()
        size = self._size
        m = array("q", bytes(8 * 2 * size))
        m[size : size + self._units] = self._w
        for i in range(size - 1, 0, -1):
            a, b = m[2 * i], m[2 * i + 1]
            m[i] = a if a >= b else b
        self._max = m

    def _first_at_least(self, start: int, target: int) -> int | None:
        """The first unit >= ``start`` whose weight is >= ``target``."""
        m = self._max
        size = self._size
        i = start + size
        while True:
            if m[i] >= target:
                while i < size:  # down to the leftmost such leaf
                    i = 2 * i if m[2 * i] >= target else 2 * i + 1
                return i - size
            while i & 1:  # a right child: up until we are a left one
                i >>= 1
            if i == 0:
                return None
            i += 1  # the subtree just right of everything seen

    def choose(self) -> int | None:
        if self._nlive <= 0:
            return None
        target = self._max[1]
        start = self._cursor if self._cursor < self._units else 0
        unit = self._first_at_least(start, target)
        if unit is None:
            unit = self._first_at_least(0, target)
        assert unit is not None
        self._cursor = unit + 1
        return unit


SCHEDULERS: dict[str, type[DemandScheduler]] = {
    "demand": DemandScheduler,
    "uniform": UniformScheduler,
    "sequential": SequentialScheduler,
    "mostwanted": MostWantedScheduler,
}


def make_scheduler(name: str, units: int, rng: random.Random) -> DemandScheduler:
    """The scheduler called ``name`` (a key of SCHEDULERS) over ``units`` units."""
    try:
        cls = SCHEDULERS[name]
    except KeyError:
        raise ValueError(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULERS)}") from None
    return cls(units, rng)
