"""What an SN sends next: by default a unit drawn at random, weighted by demand (DESIGN.md 5.5).

A unit is what a subscriber can need: a global block index for the plain
code (need 0 or 1), a piece for RaptorQ (it needs several symbols of it).
A unit's weight is the sum over subscribers of their remaining need for
it, so a block three CNs want goes out three times as often as a block
one CN wants, and a block nobody wants never goes out.

Sending is optimistic: ``sent`` counts a symbol as received by everyone
who needed it; receivers report losses and ``add_need`` puts them back.

Weights are kept as levels: for each weight w >= 1, the ``RangeSet`` of
the units whose weight is w (units nobody needs are in none). Each
subscriber's needs are a ``RangeSet`` of units needed once plus a dict of
units needed more than once (each unit in at most one of them). So the
state is ranges, not per-unit entries: memory follows what is wanted and
how fragmented it is, not the file's size (a subscriber wanting the whole
of a 4 GiB file costs a few ints), and nothing is ever expanded unit by
unit: a subscription, a wanted-map update or a departure is set algebra
over the levels.

Costs, with L levels (distinct weights: at most the number of
subscribers for the plain code), r ranges in a level or a subscriber's
set, S subscribers:

- ``choose``: O(L + log r) (``mostwanted``, ``demand``, ``uniform``:
  a bisection in one level; ``sequential``: one per level).
- ``sent``, ``add_need``: O(S log r + L log r).
- ``take(n)``: n x (choose + sent); ``mostwanted`` hands out whole runs of
  its top level at once when nobody needs a unit twice: O(S log r) a run.
- ``take_run(n)``: one unit and up to n symbols of it: O(S log r + L log r
  + the units in progress).
- ``set_need``/``remove``/``add_needs``: O(L (r + r')) set algebra, plus
  O(log r) per unit needed more than once.
- ``weight``: O(L log r); ``total_weight``, ``needed_units``: O(1).

Policies (`[serving] scheduler`; the lab's control experiment):
``demand`` draws a unit with probability weight / total (a level by its
share of the total, then a member of it by rank), ``uniform`` draws
uniformly among the units anyone still needs, ``sequential`` goes round
them in unit order and wraps (a carousel, as udpcast or FLUTE send), and
``mostwanted`` (the default) goes round the units of the highest weight.

Pure: no Twisted, no I/O; randomness from the ``random.Random`` given.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Hashable, Iterable, KeysView

from zope.interface import implementer

from mcp2p.core.wanted import RangeSet
from mcp2p.interfaces import IBlockScheduler

MAX_CREDITS = 1024  # units a subscriber holds credits for at most (the newest kept)

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
        self._levels: dict[int, RangeSet] = {}  # weight (>= 1) -> the units of that weight
        self._total = 0  # sum of all weights
        self._nlive = 0  # units of weight >= 1
        self._needs: dict[Hashable, _Need] = {}
        self._randrange = rng.randrange
        # take_run's units in progress: sent in part, or needed again after a
        # loss report. None until the first take_run (a plain-code session
        # never calls it and pays nothing per lost block).
        self._open: set[int] | None = None
        # subscriber -> unit -> symbols of it a run sent beyond that subscriber's
        # need (see sent_run), taken off its next losses of the unit
        self._credit: dict[Hashable, dict[int, int]] = {}

    # -- reading

    @property
    def units(self) -> int:
        return self._units

    @property
    def total_weight(self) -> int:
        """Sum of every subscriber's remaining needs: 0 means nothing to send."""
        return self._total

    @property
    def needed_units(self) -> int:
        """How many units anyone still needs."""
        return self._nlive

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

    def needed_by(self, subscriber: Hashable) -> RangeSet:
        """The units ``subscriber`` needs at least once, as ranges (never
        expanded unit by unit); KeyError for an unknown subscriber."""
        need = self._needs[subscriber]
        if not need.many:
            return need.ones.copy()
        return need.ones.union(RangeSet.from_indices(need.many))

    def weight(self, unit: int) -> int:
        """The sum of all subscribers' needs for ``unit``."""
        self._check_unit(unit)
        return self._weight(unit)

    def level_sizes(self) -> dict[int, int]:
        """Weight -> how many units have it (weights >= 1 only)."""
        return {w: len(level) for w, level in self._levels.items()}

    # -- choosing and sending (the hot path: keep it lean)

    def choose(self) -> int | None:
        """A unit drawn with probability weight / total_weight; None if nothing is needed."""
        total = self._total
        if total <= 0:
            return None
        r = self._randrange(total)
        for w, level in self._levels.items():
            span = w * len(level)
            if r < span:
                return level.nth(r // w)
            r -= span
        raise AssertionError("weights do not add up to the total")

    def take(self, count: int) -> list[int]:
        """Up to ``count`` units, each chosen and counted as sent in turn
        (``choose`` then ``sent``); fewer when nothing more is needed."""
        out: list[int] = []
        choose, sent = self.choose, self.sent
        for _ in range(count):
            unit = choose()
            if unit is None:
                break
            sent(unit)
            out.append(unit)
        return out

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
            w = self._weight(unit)
            self._move(unit, w, w - k)
        return k

    def take_run(self, count: int) -> tuple[int, int] | None:
        """A run of up to ``count`` symbols of one unit, counted as sent:
        ``(unit, n)``, or None when nobody needs anything.

        For codes whose units need many symbols (a fountain code's pieces),
        where ``take`` would visit each unit once per round and so keep every
        piece of the file half received at once. The unit is the lowest one
        in progress, else ``choose()``'s; ``n`` is the most any subscriber
        still needs of it, so one run completes the unit for everyone: each
        symbol of a fountain code helps every subscriber that lacks any of
        the unit's. So a receiver has few pieces in progress (decoder memory
        stays bounded), a sender repairs a piece its encoder has just
        encoded, and the repair of a unit costs the worst subscriber's loss,
        not the sum.

        In progress: a unit sent in part, or needed again after a loss report
        (``add_need``), goes on at once. A repair run sent on the first report
        of a unit's losses is not sent again for the later ones: it is their
        subscribers' credit (``sent_run``).
        """
        if count <= 0 or self._total <= 0:
            return None
        if self._open is None:
            self._open = set()
        open_units = self._open
        unit = None
        for first in sorted(open_units):
            if self._weight(first):
                unit = first
                break
            open_units.discard(first)
        if unit is None:
            unit = self.choose()
            if unit is None:
                return None
        most = 0
        for need in self._needs.values():
            have = need.many.get(unit)
            if have is None:
                have = 1 if unit in need.ones else 0
            most = max(most, have)
        n = min(count, most)
        self.sent_run(unit, n)
        if self._weight(unit):
            open_units.add(unit)  # sent in part: the next run goes on with it
        else:
            open_units.discard(unit)
        return unit, n

    def sent_run(self, unit: int, n: int) -> int:
        """``n`` symbols of ``unit`` went out: each need for it drops by up to
        ``n``. Returns the drop of the unit's weight.

        What a subscriber gets beyond its need is its credit for the unit: a
        fountain code's symbols are all alike, so a run sent for one
        subscriber's losses also repairs the losses another subscriber has
        had but not yet reported. Its report then needs only what the credit
        does not cover (``add_need``): one run per report costs no more than
        one run for all, and a repair need not wait for the slowest report.
        A subscriber that lost some of those symbols reports them, and each
        takes one off."""
        if not 0 <= unit < self._units:
            raise ValueError(f"unit {unit} is outside 0..{self._units - 1}")
        if n <= 0:
            return 0
        drop = 0
        for subscriber, need in self._needs.items():
            many = need.many
            count = many.get(unit) if many else None
            if count is not None:
                left = count - n
                if left <= 0:
                    del many[unit]
                    drop += count
                elif left == 1:
                    del many[unit]
                    need.ones.add(unit)
                    drop += n
                else:
                    many[unit] = left
                    drop += n
            elif need.ones.discard(unit):
                drop += 1
                count = 1
            else:
                count = 0
            if count < n:
                self._give_credit(subscriber, unit, n - count)
        if drop:
            w = self._weight(unit)
            self._move(unit, w, w - drop)
        return drop

    def credit_of(self, subscriber: Hashable) -> dict[int, int]:
        """``subscriber``'s credits, unit -> symbols (a copy; see ``sent_run``)."""
        return dict(self._credit.get(subscriber, {}))

    def keep_credit(self, subscriber: Hashable, units: RangeSet) -> None:
        """Forget ``subscriber``'s credits for units outside ``units`` (it has
        the others, or gave them up)."""
        credit = self._credit.get(subscriber)
        if credit:
            for unit in [u for u in credit if u not in units]:
                del credit[unit]

    def drop_credit(self, subscriber: Hashable, units: RangeSet) -> None:
        """Forget ``subscriber``'s credits for ``units`` (it needs them in full
        again: what it held of them is gone)."""
        credit = self._credit.get(subscriber)
        if credit:
            for unit in [u for u in credit if u in units]:
                del credit[unit]

    def _give_credit(self, subscriber: Hashable, unit: int, n: int) -> None:
        credit = self._credit.get(subscriber)
        if credit is None:
            credit = self._credit[subscriber] = {}
        have = credit.pop(unit, 0)  # re-inserted: the newest last
        credit[unit] = have + n
        if len(credit) > MAX_CREDITS:
            del credit[next(iter(credit))]  # the oldest: its losses were reported long ago

    def _use_credit(self, subscriber: Hashable, unit: int, count: int) -> int:
        """``count`` lost symbols of ``unit`` less ``subscriber``'s credit for it."""
        credit = self._credit.get(subscriber)
        if not credit:
            return count
        have = credit.get(unit)
        if not have:
            return count
        if have > count:
            credit[unit] = have - count
            return 0
        del credit[unit]
        return count - have

    # -- changing needs

    def add_need(self, subscriber: Hashable, unit: int, count: int = 1) -> None:
        """``subscriber`` needs ``count`` more symbols of ``unit`` (it lost
        them), less its credit for the unit (``sent_run``)."""
        self._check_unit(unit)
        if not isinstance(count, int) or count < 0:
            raise ValueError(f"count must be a non-negative integer, got {count!r}")
        count = self._use_credit(subscriber, unit, count)
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
        w = self._weight(unit)
        self._move(unit, w, w + count)
        if self._open is not None:
            self._open.add(unit)

    def add_needs(self, subscriber: Hashable, units: Iterable[int]) -> None:
        """``add_need(subscriber, u)`` for each ``u`` of ``units`` (a unit named
        twice is needed twice more), in bulk: the units it did not need join
        its ranges and the weights in one pass of set algebra."""
        counts = Counter(units)
        if not counts:
            return
        for unit in (min(counts), max(counts)):
            self._check_unit(unit)
        if self._credit.get(subscriber):
            for unit in list(counts):
                left = self._use_credit(subscriber, unit, counts[unit])
                if left:
                    counts[unit] = left
                else:
                    del counts[unit]
        need = self._needs.get(subscriber)
        if need is None:
            need = self._needs[subscriber] = _Need(RangeSet(), {}, False)
        ones, many = need.ones, need.many
        fresh = []
        for unit, count in counts.items():
            if count == 1 and unit not in many and unit not in ones:
                fresh.append(unit)
            else:
                self.add_need(subscriber, unit, count)
        if fresh:
            new = RangeSet.from_indices(fresh)
            ones.update(new)
            self._shift(new, 1)
            if self._open is not None:
                self._open.update(fresh)

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
            if need and not (
                all(type(u) is int for u in need)
                and all(type(c) is int for c in need.values())
                and min(need) >= 0
                and max(need) < self._units
                and min(need.values()) >= 0
            ):
                for unit, count in need.items():  # which one, for the message
                    self._check_unit(unit)
                    if not isinstance(count, int) or count < 0:
                        raise ValueError(f"need for unit {unit} must be >= 0, got {count!r}")
            ones = [unit for unit, count in need.items() if count == 1]
            many = {unit: count for unit, count in need.items() if count > 1}
            new = _Need(RangeSet.from_indices(ones), many, False)
        else:
            raise TypeError(f"need must be a dict or a RangeSet, not {type(need).__name__}")
        old = self._needs.get(subscriber)
        self._needs[subscriber] = new
        self._apply(old or _Need(RangeSet(), {}, False), new)

    def remove(self, subscriber: Hashable) -> None:
        """Forget ``subscriber``, its needs and credits; KeyError if unknown."""
        old = self._needs.pop(subscriber)
        self._credit.pop(subscriber, None)
        self._apply(old, _Need(RangeSet(), {}, False))

    # -- internals

    def _check_unit(self, unit: object) -> None:
        if not isinstance(unit, int) or not 0 <= unit < self._units:
            raise ValueError(f"unit {unit!r} is outside 0..{self._units - 1}")

    def _weight(self, unit: int) -> int:
        for w, level in self._levels.items():
            if unit in level:
                return w
        return 0

    def _move(self, unit: int, before: int, after: int) -> None:
        """``unit``'s weight goes from ``before`` to ``after``."""
        if before == after:
            return
        levels = self._levels
        if before:
            old = levels[before]
            old.discard(unit)
            if not old:
                del levels[before]
        else:
            self._nlive += 1
        if after:
            level = levels.get(after)
            if level is None:
                levels[after] = RangeSet([(unit, unit + 1)])
            else:
                level.add(unit)
        else:
            self._nlive -= 1
        self._total += after - before

    def _shift(self, units: RangeSet, delta: int) -> None:
        """Add ``delta`` to the weight of each of ``units`` (for a negative
        delta, each has weight >= -delta). Set algebra over the levels:
        O(levels x ranges), never unit by unit."""
        if not units:
            return
        out: dict[int, RangeSet] = {}

        def put(w: int, part: RangeSet) -> None:
            if part and w > 0:
                have = out.get(w)
                out[w] = part if have is None else have.union(part)

        covered = 0
        dropped = 0
        for w, level in self._levels.items():
            moved = level.intersection(units)
            if not moved:
                put(w, level)
                continue
            covered += len(moved)
            if w + delta < 0:
                raise AssertionError("a weight would drop below zero")
            if w + delta == 0:
                dropped += len(moved)
            put(w, level.difference(moved))
            put(w + delta, moved)
        if delta > 0 and covered < len(units):
            zero = units
            for level in self._levels.values():
                zero = zero.difference(level)
            put(delta, zero)
            self._nlive += len(zero)
        elif delta < 0 and covered != len(units):
            raise AssertionError("a weight would drop below zero")
        self._nlive -= dropped
        self._total += delta * len(units)
        self._levels = out

    def _apply(self, old: _Need, new: _Need) -> None:
        """Change the weights from ``old``'s contribution to ``new``'s: the
        increases first, so that no weight goes below zero on the way.

        Units whose weight changes by the same amount move together
        (``_shift``) where that costs less than one by one: a RaptorQ
        subscriber needs K of every piece, so its thousands of units make
        two groups (K, and the last piece's), and the levels are few while
        a session starts. With many levels (every unit's weight its own,
        late in a session) a small group goes unit by unit."""
        points: dict[int, int] = dict(new.many)
        for unit, count in old.many.items():
            points[unit] = points.get(unit, 0) - count
        groups: dict[int, list[int]] = {}
        for unit, d in points.items():
            if d:
                groups.setdefault(d, []).append(unit)
        self._shift(new.ones.difference(old.ones), 1)
        for d in sorted(groups, reverse=True):
            units = groups[d]
            if len(units) > len(self._levels):
                self._shift(RangeSet.from_indices(units), d)
                continue
            for unit in units:
                w = self._weight(unit)
                self._move(unit, w, w + d)
        self._shift(old.ones.difference(new.ones), -1)


class UniformScheduler(DemandScheduler):
    """Uniform random choice among the units anyone still needs."""

    def choose(self) -> int | None:
        nlive = self._nlive
        if nlive <= 0:
            return None
        r = self._randrange(nlive)
        for level in self._levels.values():
            n = len(level)
            if r < n:
                return level.nth(r)
            r -= n
        raise AssertionError("levels do not add up to the needed units")


class SequentialScheduler(DemandScheduler):
    """Round-robin in unit order over the needed units, wrapping (a carousel)."""

    def __init__(self, units: int, rng: random.Random) -> None:
        super().__init__(units, rng)
        self._cursor = 0  # the next unit to look at

    def choose(self) -> int | None:
        if self._nlive <= 0:
            return None
        best = None
        for level in self._levels.values():
            run = level.next_run(self._cursor)
            if run is not None and (best is None or run[0] < best):
                best = run[0]
        if best is None:  # nothing needed at or after the cursor: wrap
            best = min(level.first() or 0 for level in self._levels.values())
        self._cursor = best + 1
        return best


class MostWantedScheduler(DemandScheduler):
    """The paper's "most wanted most often", made deterministic: a carousel
    in unit order over the units with the highest weight (the most CNs
    need them), so a late joiner's and an early CN's common needs go first
    and a unit only some CNs need waits until nothing is wanted more.

    The units of the highest weight are one level's RangeSet: the next one
    at or after the cursor is a bisection in it, O(log r). (A unit needed
    several times, a fountain code's piece, is visited once per round like
    the others.) ``take`` hands out whole runs of that level at once while
    no subscriber needs any unit twice (the plain code): each unit of the
    run then drops to weight 0, so the run leaves every subscriber's ranges
    and the level with one range removal each.
    """

    def __init__(self, units: int, rng: random.Random) -> None:
        super().__init__(units, rng)
        self._cursor = 0

    def choose(self) -> int | None:
        if not self._levels:
            return None
        level = self._levels[max(self._levels)]
        start = self._cursor if self._cursor < self._units else 0
        run = level.next_run(start) or level.next_run(0)
        assert run is not None
        self._cursor = run[0] + 1
        return run[0]

    def take(self, count: int) -> list[int]:
        out: list[int] = []
        needs = self._needs.values()
        levels = self._levels
        while len(out) < count and levels:
            if any(need.many for need in needs):
                out += super().take(count - len(out))
                break
            top = max(levels)
            level = levels[top]
            start = self._cursor if self._cursor < self._units else 0
            run = level.next_run(start) or level.next_run(0)
            assert run is not None
            a, b = run[0], min(run[1], run[0] + count - len(out))
            for need in needs:
                need.ones.remove_range(a, b)
            level.remove_range(a, b)
            if not level:
                del levels[top]
            self._total -= top * (b - a)
            self._nlive -= b - a
            self._cursor = b
            out += range(a, b)
        return out


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
