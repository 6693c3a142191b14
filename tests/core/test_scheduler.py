"""The block schedulers: demand-weighted draws follow demand, uniform draws are
flat over the needed units, sequential goes round them in order; all only ever
pick a needed unit, and their Fenwick trees match a naive model."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zope.interface.verify import verifyObject

from mcp2p.core.scheduler import (
    MAX_CREDITS,
    SCHEDULERS,
    DemandScheduler,
    SequentialScheduler,
    UniformScheduler,
    make_scheduler,
)
from mcp2p.core.wanted import RangeSet
from mcp2p.interfaces import IBlockScheduler


def scheduler(units: int, seed: int = 1, name: str = "demand") -> DemandScheduler:
    return make_scheduler(name, units, random.Random(seed))


def weights_of(s: DemandScheduler) -> list[int]:
    return [s.weight(u) for u in range(s.units)]


def check_tree(s: DemandScheduler, naive: list[int]) -> None:
    """Every weight, the total and the levels equal the naive model's."""
    assert s.total_weight == sum(naive)
    assert weights_of(s) == naive
    assert s.needed_units == sum(1 for w in naive if w > 0)
    levels = Counter(w for w in naive if w > 0)
    assert s.level_sizes() == dict(levels)


def chi2(counts: Counter[int | None], weights: dict[int, int], draws: int) -> float:
    total = sum(weights.values())
    return sum(
        (counts[u] - draws * w / total) ** 2 / (draws * w / total) for u, w in weights.items()
    )


# -- choosing -----------------------------------------------------------------


def test_nothing_needed_means_none() -> None:
    s = scheduler(10)
    assert s.choose() is None and s.total_weight == 0
    s.set_need("a", RangeSet())
    assert s.choose() is None


def test_choice_frequencies_follow_weights() -> None:
    s = scheduler(40, seed=5)
    s.set_need("a", {1: 1, 5: 2, 9: 3, 20: 4, 39: 10})
    s.set_need("b", RangeSet([(9, 10), (30, 32)]))
    weights = {1: 1, 5: 2, 9: 4, 20: 4, 30: 1, 31: 1, 39: 10}
    assert {u: s.weight(u) for u in weights} == weights
    draws = 46_000
    counts = Counter(s.choose() for _ in range(draws))
    assert set(counts) == set(weights)  # units nobody needs never come up
    # 6 degrees of freedom: p = 1e-4 at 27.9; a seeded rng makes this exact anyway.
    assert chi2(counts, weights, draws) < 30


def test_wanted_by_three_is_chosen_three_times_as_often() -> None:
    s = scheduler(100, seed=2)
    for sub in ("a", "b", "c"):
        s.set_need(sub, RangeSet([(10, 11)]))
    s.set_need("a", RangeSet([(10, 11), (50, 51)]))
    counts = Counter(s.choose() for _ in range(20_000))
    assert set(counts) == {10, 50}
    assert 2.7 < counts[10] / counts[50] < 3.3


def test_units_nobody_needs_are_never_chosen() -> None:
    s = scheduler(1000, seed=3)
    s.set_need("a", RangeSet([(0, 1), (500, 501), (999, 1000)]))
    assert {s.choose() for _ in range(3000)} == {0, 500, 999}


def test_sending_every_needed_unit_once_ends_demand() -> None:
    s = scheduler(300, seed=4)
    s.set_need("a", RangeSet([(0, 100), (200, 250)]))
    s.set_need("b", RangeSet([(50, 150)]))
    s.set_need("c", {7: 1, 260: 1})
    needed = set(range(0, 150)) | set(range(200, 250)) | {260}
    for unit in sorted(needed):
        s.sent(unit)
    assert s.choose() is None and s.total_weight == 0
    s.add_need("b", 120)
    assert s.choose() == 120 and s.total_weight == 1


def test_drain_by_choosing() -> None:
    s = scheduler(1000, seed=6)
    s.set_need("a", RangeSet.full(1000))
    s.set_need("b", {u: 2 for u in range(0, 1000, 10)})
    seen = []
    while (unit := s.choose()) is not None:
        seen.append(unit)
        s.sent(unit)
    counts = Counter(seen)
    assert len(seen) == 1000 + 100  # a unit b needs twice goes out twice
    assert all(counts[u] == (2 if u % 10 == 0 else 1) for u in range(1000))
    assert s.need_of("a") == RangeSet() and s.need_of("b") == {}


# -- sent and add_need --------------------------------------------------------


def test_sent_drops_every_need_by_one_but_not_below_zero() -> None:
    s = scheduler(10)
    s.set_need("a", {3: 3})
    s.set_need("b", RangeSet([(3, 4)]))
    s.set_need("c", {4: 1})
    assert s.weight(3) == 4
    s.sent(3)
    assert s.weight(3) == 2 and s.need_of("a") == {3: 2} and s.need_of("b") == RangeSet()
    s.sent(3)
    assert s.need_of("a") == {3: 1}
    s.sent(3)
    s.sent(3)
    assert s.weight(3) == 0 and s.need_of("a") == {} and s.total_weight == 1
    s.sent(5)  # nobody needs it: nothing changes
    assert s.total_weight == 1
    with pytest.raises(ValueError):
        s.sent(10)


def test_add_need_brings_a_unit_back() -> None:
    s = scheduler(10, seed=9)
    s.set_need("a", RangeSet([(4, 5)]))
    s.sent(4)
    assert s.choose() is None
    s.add_need("a", 4)
    assert s.choose() == 4 and s.need_of("a") == RangeSet([(4, 5)])
    s.add_need("a", 4, count=2)
    assert s.weight(4) == 3 and s.need_of("a") == {4: 3}
    s.add_need("new", 6)
    assert "new" in s.subscribers and s.need_of("new") == {6: 1}
    s.add_need("a", 4, count=0)
    assert s.weight(4) == 3
    with pytest.raises(ValueError):
        s.add_need("a", 10)
    with pytest.raises(ValueError):
        s.add_need("a", 1, count=-1)


# -- set_need, remove, need_of ------------------------------------------------


def test_set_need_replaces_and_remove_forgets() -> None:
    s = scheduler(20)
    s.set_need("a", RangeSet([(0, 10)]))
    s.set_need("b", {5: 2, 15: 1})
    s.set_need("a", {2: 3, 12: 1})
    naive = [0] * 20
    naive[2], naive[12], naive[5], naive[15] = 3, 1, 2, 1
    check_tree(s, naive)
    s.remove("b")
    naive[5] = naive[15] = 0
    check_tree(s, naive)
    assert list(s.subscribers) == ["a"]
    with pytest.raises(KeyError):
        s.remove("b")
    with pytest.raises(KeyError):
        s.need_of("b")


def test_need_of_keeps_the_form_it_was_given() -> None:
    s = scheduler(20)
    s.set_need("r", RangeSet([(1, 4)]))
    s.set_need("d", {1: 1, 2: 0, 3: 2})
    assert s.need_of("r") == RangeSet([(1, 4)])
    assert s.need_of("d") == {1: 1, 3: 2}
    s.add_need("r", 2)  # now needed twice: only a dict can say so
    assert s.need_of("r") == {1: 1, 2: 2, 3: 1}
    for sub in ("r", "d"):
        before = weights_of(s)
        s.set_need(sub, s.need_of(sub))
        assert weights_of(s) == before


def test_set_need_copies_the_range_set() -> None:
    s = scheduler(10)
    wanted = RangeSet([(0, 5)])
    s.set_need("a", wanted)
    s.sent(2)
    assert 2 in wanted
    wanted.discard(3)
    assert s.weight(3) == 1


@pytest.mark.parametrize(
    "need",
    [RangeSet([(5, 11)]), {10: 1}, {-1: 1}, {2: -1}, {2: 1.5}, [1, 2]],
)
def test_set_need_validates(need: object) -> None:
    s = scheduler(10)
    with pytest.raises((ValueError, TypeError)):
        s.set_need("a", need)  # type: ignore[arg-type]
    assert "a" not in s.subscribers


def test_constructor_validates() -> None:
    with pytest.raises(ValueError):
        DemandScheduler(-1, random.Random())
    assert DemandScheduler(0, random.Random()).choose() is None


def test_big_set_need_is_range_algebra() -> None:
    """A whole-file subscription is set algebra over ranges, not 100k point updates."""
    s = scheduler(100_000)
    s.set_need("a", RangeSet.full(100_000))
    s.set_need("b", RangeSet([(0, 50_000)]))
    assert s.total_weight == 150_000
    for u in (0, 1, 49_999, 50_000, 99_999):
        assert s.weight(u) == (2 if u < 50_000 else 1)
    assert s.level_sizes() == {2: 50_000, 1: 50_000}
    s.remove("a")
    assert s.total_weight == 50_000 and s.weight(70_000) == 0 and s.weight(3) == 1


def test_units_that_change_alike_move_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """A RaptorQ subscriber needs K of every piece: its units shift as groups
    of ranges while the levels are few, never one by one (4096 pieces took
    13.5 ms a subscriber that way), and the weights come out the same."""
    s = scheduler(50_000)
    moved: list[int] = []
    move = s._move
    monkeypatch.setattr(s, "_move", lambda unit, *w: (moved.append(unit), move(unit, *w)))
    s.set_need("a", {u: (7 if u < 49_999 else 3) for u in range(50_000)})
    s.set_need("b", RangeSet([(0, 10)]))
    s.set_need("c", dict.fromkeys(range(0, 50_000, 2), 7))
    assert s.level_sizes() == {15: 5, 8: 5, 14: 24_995, 7: 24_994, 3: 1}
    assert s.total_weight == 7 * 49_999 + 3 + 10 + 7 * 25_000
    assert moved == [49_999]  # the last piece: a group of one, after the first level
    s.set_need("a", dict.fromkeys(range(0, 50_000, 2), 2))  # down for some, gone for others
    assert s.level_sizes() == {10: 5, 9: 24_995, 1: 5}
    assert s.total_weight == 2 * 25_000 + 10 + 7 * 25_000
    assert moved == [49_999, 49_999]  # again, among five levels
    s.remove("c")
    s.remove("a")
    assert s.level_sizes() == {1: 10} and s.total_weight == 10


# -- the tree against a naive model -------------------------------------------

subscribers = st.sampled_from(["a", "b", "c"])


@st.composite
def needs(draw: st.DrawFn, units: int) -> RangeSet | dict[int, int]:
    if draw(st.booleans()):
        return RangeSet.from_indices(draw(st.sets(st.integers(0, units - 1), max_size=units)))
    return draw(st.dictionaries(st.integers(0, units - 1), st.integers(0, 4), max_size=units))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, list[tuple]]:
    units = draw(st.integers(1, 40))
    unit = st.integers(0, units - 1)
    ops = draw(
        st.lists(
            st.one_of(
                st.tuples(st.just("set"), subscribers, needs(units)),
                st.tuples(st.just("add"), subscribers, unit, st.integers(0, 3)),
                st.tuples(st.just("sent"), unit),
                st.tuples(st.just("remove"), subscribers),
                st.tuples(st.just("choose_sent")),
            ),
            max_size=40,
        )
    )
    return units, ops


@given(name=st.sampled_from(list(SCHEDULERS)), scenario=scenarios(), seed=st.integers(0, 1000))
@settings(max_examples=300)
def test_tree_matches_a_naive_model(
    name: str, scenario: tuple[int, list[tuple]], seed: int
) -> None:
    units, ops = scenario
    s = scheduler(units, seed, name)
    model: dict[str, dict[int, int]] = {}
    for op in ops:
        if op[0] == "set":
            need = op[2]
            s.set_need(op[1], need)
            if isinstance(need, RangeSet):
                model[op[1]] = dict.fromkeys(need, 1)
            else:
                model[op[1]] = {u: c for u, c in need.items() if c}
        elif op[0] == "add":
            s.add_need(op[1], op[2], op[3])
            if op[3]:  # count 0 is no call at all: it makes no subscriber
                mine = model.setdefault(op[1], {})
                mine[op[2]] = mine.get(op[2], 0) + op[3]
        elif op[0] == "remove":
            if op[1] in model:
                s.remove(op[1])
                del model[op[1]]
        else:
            unit = s.choose() if op[0] == "choose_sent" else op[1]
            if unit is None:
                assert not any(model.values())
                continue
            if op[0] == "choose_sent":
                assert any(m.get(unit) for m in model.values())
            s.sent(unit)
            for mine in model.values():
                if mine.get(unit):
                    mine[unit] -= 1
                    if not mine[unit]:
                        del mine[unit]
        naive = [sum(m.get(u, 0) for m in model.values()) for u in range(units)]
        check_tree(s, naive)
        assert set(s.subscribers) == set(model)
        for sub, mine in model.items():
            got = s.need_of(sub)
            assert (dict.fromkeys(got, 1) if isinstance(got, RangeSet) else got) == mine


# -- the other policies ---------------------------------------------------------


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_policy_provides_the_interface(name: str) -> None:
    s = scheduler(8, name=name)
    assert verifyObject(IBlockScheduler, s)
    assert s.choose() is None


def test_unknown_policy() -> None:
    with pytest.raises(ValueError, match="unknown scheduler 'nope'"):
        scheduler(4, name="nope")


def test_uniform_is_flat_over_needed_units() -> None:
    """Chi-square against a flat distribution, whatever the demand per unit."""
    s = scheduler(64, seed=11, name="uniform")
    s.set_need("a", {3: 1, 7: 5, 8: 1, 20: 9, 21: 1, 40: 2, 63: 1})
    s.set_need("b", RangeSet([(7, 9), (50, 53)]))
    needed = [3, 7, 8, 20, 21, 40, 50, 51, 52, 63]
    draws = 30_000
    counts = Counter(s.choose() for _ in range(draws))
    assert set(counts) == set(needed)
    stat = chi2(counts, dict.fromkeys(needed, 1), draws)
    assert stat < 27.9  # chi-square, 9 degrees of freedom, p = 0.001


def test_uniform_ignores_demand_where_demand_follows_it() -> None:
    """Weight 10 against weight 1: demand draws it ~10x as often, uniform ~1x."""
    for name, low, high in (("demand", 8.0, 12.0), ("uniform", 0.9, 1.1)):
        s = scheduler(2, seed=3, name=name)
        s.set_need("a", {0: 10, 1: 1})
        counts = Counter(s.choose() for _ in range(20_000))
        assert low < counts[0] / counts[1] < high, name


def test_sequential_visits_in_order_and_wraps() -> None:
    s = scheduler(10, name="sequential")
    s.set_need("a", RangeSet([(2, 5), (7, 9)]))
    s.set_need("b", {8: 2})
    assert [s.choose() for _ in range(12)] == [2, 3, 4, 7, 8, 2, 3, 4, 7, 8, 2, 3]


def test_sequential_carousel_drains_and_picks_up_losses_on_the_next_round() -> None:
    s = scheduler(6, name="sequential")
    assert isinstance(s, SequentialScheduler)
    s.set_need("a", RangeSet([(0, 6)]))
    order = []
    for _ in range(3):
        unit = s.choose()
        assert unit is not None
        order.append(unit)
        s.sent(unit)
    s.add_need("a", 1)  # unit 1 was lost: it comes back after the cursor wraps
    while (unit := s.choose()) is not None:
        order.append(unit)
        s.sent(unit)
    assert order == [0, 1, 2, 3, 4, 5, 1]
    assert s.total_weight == 0 and s.needed_units == 0


def test_sequential_sends_ahead_of_the_cursor_first() -> None:
    """A unit needed again behind the cursor waits for the wrap."""
    s = scheduler(8, name="sequential")
    s.set_need("a", RangeSet([(4, 8)]))
    assert s.choose() == 4
    s.sent(4)
    s.set_need("b", RangeSet([(0, 2)]))
    got = []
    while (unit := s.choose()) is not None:
        got.append(unit)
        s.sent(unit)
    assert got == [5, 6, 7, 0, 1]


@pytest.mark.parametrize("name", ["uniform", "sequential"])
def test_big_set_need_then_small_ones(name: str) -> None:
    s = scheduler(1000, name=name)
    assert isinstance(s, UniformScheduler | SequentialScheduler)
    s.set_need("a", RangeSet([(0, 1000)]))  # bulk path
    s.set_need("b", {5: 3})
    s.set_need("a", RangeSet([(990, 1000)]))  # bulk path again
    assert s.needed_units == 11
    seen = set()
    for _ in range(200):
        unit = s.choose()
        assert unit is not None and s.weight(unit) > 0
        seen.add(unit)
    assert seen == {5, *range(990, 1000)}


@given(
    name=st.sampled_from(list(SCHEDULERS)),
    units=st.integers(1, 200),
    need=st.sets(st.integers(0, 199), max_size=60),
    seed=st.integers(0, 100),
)
@settings(max_examples=150)
def test_every_policy_only_picks_needed_units_and_drains(
    name: str, units: int, need: set[int], seed: int
) -> None:
    need = {u for u in need if u < units}
    s = scheduler(units, seed, name)
    s.set_need("a", RangeSet.from_indices(need))
    got = []
    for _ in range(len(need) + 1):
        unit = s.choose()
        if unit is None:
            break
        assert unit in need and unit not in got
        got.append(unit)
        s.sent(unit)
    assert sorted(got) == sorted(need)
    if name == "sequential":
        assert got == sorted(need)


def test_most_wanted_sends_what_most_cns_need_first_in_carousel_order() -> None:
    s = scheduler(10, name="mostwanted")
    s.set_need("early", RangeSet([(0, 10)]))
    got = []
    for _ in range(4):  # the early CN alone: a carousel from 0
        unit = s.choose()
        assert unit is not None
        got.append(unit)
        s.sent(unit)
    assert got == [0, 1, 2, 3]
    s.set_need("late", RangeSet([(0, 10)]))  # joins: 4..9 are wanted by both
    order = []
    while (unit := s.choose()) is not None:
        order.append((unit, s.weight(unit)))
        s.sent(unit)
    assert order == [(u, 2) for u in range(4, 10)] + [(u, 1) for u in range(4)]


def test_most_wanted_picks_up_a_loss_both_need_before_one_only_one_needs() -> None:
    s = scheduler(8, name="mostwanted")
    s.set_need("a", RangeSet([(5, 8)]))
    s.set_need("b", RangeSet([(0, 3)]))
    s.add_need("b", 6)  # 6: wanted by both
    assert s.choose() == 6


@given(
    units=st.integers(1, 300),
    needs=st.lists(
        st.dictionaries(st.integers(0, 299), st.integers(1, 3), max_size=40), min_size=1, max_size=4
    ),
    seed=st.integers(0, 100),
)
@settings(max_examples=150)
def test_most_wanted_always_picks_a_unit_of_the_highest_weight(
    units: int, needs: list[dict[int, int]], seed: int
) -> None:
    s = scheduler(units, seed, "mostwanted")
    for i, need in enumerate(needs):
        s.set_need(i, {u: c for u, c in need.items() if u < units})
    for _ in range(500):
        unit = s.choose()
        if unit is None:
            break
        assert s.weight(unit) == max(s.weight(u) for u in range(units))
        s.sent(unit)
    assert s.total_weight == 0


def test_most_wanted_goes_round_units_needed_several_times() -> None:
    s = scheduler(3, name="mostwanted")
    s.set_need("a", {0: 3, 1: 3, 2: 1})
    got = []
    while (unit := s.choose()) is not None:
        got.append(unit)
        s.sent(unit)
    assert got == [0, 1, 0, 1, 2, 0, 1]


# -- take, add_needs, and memory that follows what is wanted --------------------


@given(
    name=st.sampled_from(list(SCHEDULERS)),
    units=st.integers(1, 120),
    wants=st.lists(st.sets(st.integers(0, 119), max_size=80), min_size=1, max_size=3),
    twice=st.sets(st.integers(0, 119), max_size=5),
    count=st.integers(1, 300),
    seed=st.integers(0, 100),
)
@settings(max_examples=200)
def test_take_is_choose_then_sent_in_turn(
    name: str, units: int, wants: list[set[int]], twice: set[int], count: int, seed: int
) -> None:
    """The batched take (runs of the top level for mostwanted) hands out what
    choose and sent one by one would, and never a unit nobody needs."""
    a, b = scheduler(units, seed, name), scheduler(units, seed, name)
    for s in (a, b):
        for i, want in enumerate(wants):
            s.set_need(i, RangeSet.from_indices(u for u in want if u < units))
        for u in sorted(twice):
            if u < units:
                s.add_need(0, u)
    needed = {u for u in range(units) if a.weight(u) > 0}
    got = a.take(count)
    expected = []
    for _ in range(count):
        unit = b.choose()
        if unit is None:
            break
        b.sent(unit)
        expected.append(unit)
    assert got == expected
    assert set(got) <= needed
    assert weights_of(a) == weights_of(b) and a.total_weight == b.total_weight


def test_take_hands_out_a_run_without_touching_each_unit() -> None:
    s = scheduler(3_000_000, name="mostwanted")
    s.set_need("a", RangeSet.full(3_000_000))
    s.set_need("b", RangeSet([(0, 10)]))
    assert s.take(5) == [0, 1, 2, 3, 4]  # wanted by both first
    assert s.take(8) == [5, 6, 7, 8, 9, 10, 11, 12]  # then a run across the change of level
    assert s.total_weight == 3_000_000 - 13
    assert s.need_of("a") == RangeSet([(13, 3_000_000)]) and s.need_of("b") == RangeSet()


@given(
    name=st.sampled_from(list(SCHEDULERS)),
    units=st.integers(1, 60),
    want=st.sets(st.integers(0, 59), max_size=40),
    lost=st.lists(st.integers(0, 59), max_size=60),
)
@settings(max_examples=150)
def test_add_needs_is_add_need_for_each(
    name: str, units: int, want: set[int], lost: list[int]
) -> None:
    lost = [u for u in lost if u < units]
    a, b = scheduler(units, 1, name), scheduler(units, 1, name)
    for s in (a, b):
        s.set_need("x", RangeSet.from_indices(u for u in want if u < units))
    a.add_needs("x", lost)
    for u in lost:
        b.add_need("x", u)
    assert weights_of(a) == weights_of(b) and a.level_sizes() == b.level_sizes()
    assert a.need_of("x") == b.need_of("x") or dict.fromkeys(a.need_of("x"), 1) == b.need_of("x")


def test_add_needs_validates_before_changing_anything() -> None:
    s = scheduler(10)
    with pytest.raises(ValueError):
        s.add_needs("x", [3, 10])
    assert s.total_weight == 0 and "x" not in s.subscribers


UNITS_4GIB = -(-(4 << 30) // 1400)  # blocks of a 4 GiB file at the default block length


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_the_state_of_a_4gib_session_is_tiny(name: str) -> None:
    """Memory follows what is wanted: nothing, or a whole 4 GiB file, or that
    file after a carousel round with scattered losses."""
    import tracemalloc

    tracemalloc.start()
    try:
        s = scheduler(UNITS_4GIB, name=name)
        empty = tracemalloc.get_traced_memory()[0]
        assert empty < 4096
        s.set_need("a", RangeSet.full(UNITS_4GIB))
        got = s.take(2000)
        assert len(got) == 2000
        s.add_needs("a", got[::100])  # 20 scattered losses
        del got
        current, peak = tracemalloc.get_traced_memory()
        # Was 8 bytes per unit and more (tens of MB). A carousel leaves a few
        # ranges; random draws leave 2000 holes, each a range of its own.
        limit = 64 * 1024 if name in ("mostwanted", "sequential") else 1 << 20
        assert current < limit and peak < 4 * limit
    finally:
        tracemalloc.stop()


def test_hostile_needs_are_refused_before_anything_is_expanded() -> None:
    s = scheduler(1000)
    with pytest.raises(ValueError):
        s.set_need("a", RangeSet([(0, 1 << 62)]))  # refused from its last member alone
    assert s.total_weight == 0
    s.set_need("a", RangeSet([(0, 1000)]))
    s.set_need("a", RangeSet([(i, i + 1) for i in range(0, 1000, 2)]))
    assert s.total_weight == 500 and s.level_sizes() == {1: 500}


# -- runs (codes whose units need many symbols) ----------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_a_run_completes_a_unit_for_every_subscriber(name: str) -> None:
    s = scheduler(4, name=name)
    s.set_need("a", {0: 10, 1: 10, 2: 10, 3: 10})
    s.set_need("b", {0: 10, 1: 10, 2: 10, 3: 10})
    unit, n = s.take_run(100)
    assert n == 10 and s.weight(unit) == 0  # one run of 10 serves both
    assert s.total_weight == 2 * 3 * 10


def test_runs_go_piece_by_piece_and_repairs_come_first() -> None:
    s = scheduler(5, name="mostwanted")
    for sub in "abc":
        s.set_need(sub, dict.fromkeys(range(5), 8))
    assert s.take_run(5) == (0, 5)  # a burst ends mid-piece ...
    assert s.take_run(100) == (0, 3)  # ... and the next goes on with it, not with piece 1
    assert s.take_run(8) == (1, 8)
    # Each of a, b, c lost symbols of piece 0: it is repaired before piece 2 goes out,
    # with as many symbols as the worst of them lost, not the sum.
    s.add_needs("a", [0, 0])
    s.add_needs("b", [0])
    s.add_need("c", 0, 3)
    assert s.take_run(100) == (0, 3)
    assert s.weight(0) == 0
    assert s.take_run(100) == (2, 8)


def test_a_run_that_fills_a_burst_stops_there() -> None:
    s = scheduler(2, name="mostwanted")
    s.set_need("a", {0: 700, 1: 700})
    runs = []
    while (run := s.take_run(256)) is not None:
        runs.append(run)
    assert runs == [(0, 256), (0, 256), (0, 188), (1, 256), (1, 256), (1, 188)]
    assert s.total_weight == 0 and s.take_run(10) is None


def test_a_late_joiner_gets_the_whole_unit_the_early_one_its_rest() -> None:
    s = scheduler(1, name="mostwanted")
    s.set_need("early", {0: 3})
    s.set_need("late", {0: 9})
    assert s.take_run(100) == (0, 9)
    assert s.need_of("early") == {} and s.need_of("late") == {}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.dictionaries(st.integers(0, 7), st.integers(0, 5), max_size=8), max_size=4),
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 7), st.integers(1, 3)), max_size=10),
    st.integers(1, 9),
)
def test_runs_match_a_naive_model(
    needs: list[dict[int, int]], losses: list[tuple[int, int, int]], burst: int
) -> None:
    """Whatever the needs and losses, runs send each unit the most any
    subscriber lacks, never a unit nobody needs, and end every need; what a
    run sends a subscriber beyond its need is taken off its next losses."""
    s = scheduler(8, name="mostwanted")
    model: dict[int, dict[int, int]] = {}
    credit: dict[int, dict[int, int]] = {}
    for sub, need in enumerate(needs):
        s.set_need(sub, need)
        model[sub] = {u: c for u, c in need.items() if c}
        credit[sub] = {}
    pending = list(losses)
    sent = 0
    while True:
        run = s.take_run(burst)
        if run is None:
            if not pending:
                break
            sub, unit, count = pending.pop()
            if sub in model:
                s.add_need(sub, unit, count)
                used = min(count, credit[sub].get(unit, 0))
                credit[sub][unit] = credit[sub].get(unit, 0) - used
                if count > used:
                    model[sub][unit] = model[sub].get(unit, 0) + count - used
            continue
        unit, n = run
        most = max((m.get(unit, 0) for m in model.values()), default=0)
        assert 1 <= n <= min(burst, most)
        for sub, m in model.items():
            have = m.get(unit, 0)
            if have < n:
                credit[sub][unit] = credit[sub].get(unit, 0) + n - have
            if unit in m:
                m[unit] = max(0, m[unit] - n)
                if not m[unit]:
                    del m[unit]
        for sub in model:
            assert s.credit_of(sub) == {u: c for u, c in credit[sub].items() if c}
        check_tree(s, [sum(m.get(u, 0) for m in model.values()) for u in range(8)])
        sent += n
        assert sent < 10_000
    assert s.total_weight == 0 and all(not m for m in model.values())


def test_a_repair_goes_at_once_and_later_reports_use_its_credit() -> None:
    """A unit needed again goes out on the first report; a later report of
    the same unit needs only what that run did not cover, so one run per
    report costs the most any subscriber lost, not the sum."""
    s = scheduler(4, name="mostwanted")
    for sub in "ab":
        s.set_need(sub, dict.fromkeys(range(4), 5))
    assert s.take_run(5) == (0, 5)
    s.add_needs("a", [0, 0])  # a's report comes first: repaired before unit 1
    assert s.take_run(5) == (0, 2)
    assert s.credit_of("b") == {0: 2}  # b gets those two symbols too
    s.add_needs("b", [0, 0, 0])  # b lost three: one more is needed
    assert s.credit_of("b") == {} and s.weight(0) == 1
    assert s.take_run(5) == (0, 1)
    assert s.credit_of("a") == {0: 1}
    s.add_needs("a", [0])  # a lost one of the repairs: the last run covers it
    assert s.weight(0) == 0 and s.credit_of("a") == {}
    assert [s.take_run(5), s.take_run(5)] == [(1, 5), (2, 5)]


def test_credit_that_covers_a_report_opens_nothing() -> None:
    s = scheduler(3, name="mostwanted")
    s.set_need("a", {0: 4})
    s.set_need("b", {0: 1})
    assert s.take_run(10) == (0, 4)
    assert s.credit_of("b") == {0: 3}
    s.add_need("b", 0, 2)
    s.add_needs("b", [0])
    assert s.total_weight == 0 and s.take_run(10) is None
    assert s.credit_of("b") == {}
    s.add_needs("b", [0, 0])  # past its credit: needed again
    assert s.take_run(10) == (0, 2)


def test_credit_is_forgotten_with_the_unit_and_bounded() -> None:
    s = scheduler(8, name="mostwanted")
    s.set_need("a", dict.fromkeys(range(8), 3))
    s.set_need("b", {})
    for _ in range(8):
        s.take_run(3)
    assert s.credit_of("b") == dict.fromkeys(range(8), 3)
    s.keep_credit("b", RangeSet([(2, 5)]))  # a resync: b wants only 2..4 now
    assert s.credit_of("b") == dict.fromkeys(range(2, 5), 3)
    s.drop_credit("b", RangeSet([(3, 4)]))  # 3 is wanted in full again
    assert s.credit_of("b") == {2: 3, 4: 3}
    s.remove("b")
    assert s.credit_of("b") == {}
    big = scheduler(MAX_CREDITS + 10, name="mostwanted")
    big.set_need("a", dict.fromkeys(range(MAX_CREDITS + 10), 2))
    big.set_need("b", {})
    while big.take_run(2) is not None:
        pass
    held = big.credit_of("b")
    assert len(held) == MAX_CREDITS and min(held) == 10  # the oldest went first
