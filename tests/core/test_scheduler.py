"""DemandScheduler: draws follow demand, and the Fenwick tree matches a naive model."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp2p.core.scheduler import DemandScheduler
from mcp2p.core.wanted import RangeSet


def scheduler(units: int, seed: int = 1) -> DemandScheduler:
    return DemandScheduler(units, random.Random(seed))


def weights_of(s: DemandScheduler) -> list[int]:
    return [s.weight(u) for u in range(s.units)]


def check_tree(s: DemandScheduler, naive: list[int]) -> None:
    """Every prefix sum of the tree equals the naive one."""
    running = 0
    for u in range(s.units + 1):
        assert s._prefix(u) == running
        if u < s.units:
            running += naive[u]
    assert s.total_weight == sum(naive)
    assert weights_of(s) == naive


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


def test_big_set_need_uses_one_rebuild() -> None:
    """A whole-file subscription rebuilds the tree instead of 100k point updates."""
    s = scheduler(100_000)
    s.set_need("a", RangeSet.full(100_000))
    s.set_need("b", RangeSet([(0, 50_000)]))
    assert s.total_weight == 150_000
    for u in (0, 1, 49_999, 50_000, 99_999):
        assert s.weight(u) == (2 if u < 50_000 else 1)
    assert s._prefix(50_000) == 100_000
    s.remove("a")
    assert s.total_weight == 50_000 and s.weight(70_000) == 0 and s.weight(3) == 1


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


@given(scenarios(), st.integers(0, 1000))
@settings(max_examples=150)
def test_tree_matches_a_naive_model(scenario: tuple[int, list[tuple]], seed: int) -> None:
    units, ops = scenario
    s = scheduler(units, seed)
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
