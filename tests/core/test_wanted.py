"""RangeSet against a plain ``set`` model, with default and with tiny chunks."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp2p.core import wanted
from mcp2p.core.wanted import RangeSet
from mcp2p.errors import ProtocolError


@contextmanager
def tiny_chunks() -> Iterator[None]:
    """Chunks of 2 ranges (split past 3), so small sets cross chunk boundaries."""
    with mock.patch.object(wanted, "_LOAD", 4), mock.patch.object(wanted, "_MAX_CHUNK", 6):
        yield


def check(rs: RangeSet, model: set[int] | None = None) -> None:
    """Every internal invariant, and equality with ``model``."""
    flat = [x for chunk in rs._chunks for x in chunk]
    assert all(chunk and len(chunk) % 2 == 0 for chunk in rs._chunks)
    assert all(len(chunk) <= wanted._MAX_CHUNK for chunk in rs._chunks)
    assert all(a < b for a, b in zip(flat, flat[1:], strict=False)), "sorted, non-adjacent"
    assert not flat or flat[0] >= 0
    assert rs._firsts == [chunk[0] for chunk in rs._chunks]
    assert rs._counts == [wanted._count(chunk) for chunk in rs._chunks]
    assert len(rs) == sum(rs._counts)
    if rs._fen is not None:
        fen = rs._fen
        expected = rs._build_fen()
        assert fen == expected
    if model is not None:
        assert list(rs) == sorted(model)
        assert len(rs) == len(model)
        assert bool(rs) == bool(model)
        assert rs.first() == (min(model) if model else None)
        assert rs.last() == (max(model) if model else None)


def ranges_of(model: set[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for i in sorted(model):
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


small = st.integers(0, 60)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), small),
        st.tuples(st.just("discard"), small),
        st.tuples(st.just("add_range"), small, small),
        st.tuples(st.just("remove_range"), small, small),
        st.tuples(st.just("take_random"), st.integers(0, 1000)),
    ),
    max_size=80,
)
sets_of_ints = st.sets(st.integers(0, 80), max_size=60)


def run(ops_: list[tuple], rs: RangeSet, model: set[int]) -> None:
    for op in ops_:
        name = op[0]
        if name == "add":
            assert rs.add(op[1]) == (op[1] not in model)
            model.add(op[1])
        elif name == "discard":
            assert rs.discard(op[1]) == (op[1] in model)
            model.discard(op[1])
        elif name == "add_range":
            rs.add_range(op[1], op[2])
            model.update(range(op[1], op[2]))
        elif name == "remove_range":
            rs.remove_range(op[1], op[2])
            model.difference_update(range(op[1], op[2]))
        else:
            if model:
                i = rs.take_random(random.Random(op[1]))
                assert i in model
                model.discard(i)
            else:
                with pytest.raises(KeyError):
                    rs.take_random(random.Random(op[1]))
        check(rs)
    check(rs, model)
    assert rs.ranges() == ranges_of(model)
    for i in range(-1, 70):
        assert (i in rs) == (i in model)


# -- basics -------------------------------------------------------------------


def test_empty() -> None:
    rs = RangeSet()
    check(rs, set())
    assert rs.ranges() == [] and rs.encode() == b""
    assert 0 not in rs and -1 not in rs and "x" not in rs
    assert not rs.discard(3)


def test_constructor_merges_and_sorts() -> None:
    rs = RangeSet([(10, 12), (0, 3), (2, 5), (5, 6), (8, 8), (12, 13)])
    assert rs.ranges() == [(0, 6), (10, 13)]
    assert len(rs) == 9
    assert repr(rs) == "RangeSet([(0, 6), (10, 13)])"


@pytest.mark.parametrize("bad", [[(-1, 3)], [(5, 3)], [(0, True)], [(0, 1.5)]])
def test_constructor_refuses(bad: list[tuple[int, int]]) -> None:
    with pytest.raises(ValueError):
        RangeSet(bad)


def test_full_and_from_indices() -> None:
    assert RangeSet.full(5).ranges() == [(0, 5)]
    assert RangeSet.full(0) == RangeSet()
    assert RangeSet.from_indices([5, 1, 2, 3, 9, 2]).ranges() == [(1, 4), (5, 6), (9, 10)]
    with pytest.raises(ValueError):
        RangeSet.from_indices([-1])
    with pytest.raises(ValueError):
        RangeSet.full(-1)


def test_add_discard_merge_and_split() -> None:
    rs = RangeSet()
    assert rs.add(5) and rs.add(7) and not rs.add(5)
    assert rs.ranges() == [(5, 6), (7, 8)]
    assert rs.add(6)
    assert rs.ranges() == [(5, 8)]
    assert rs.discard(6)
    assert rs.ranges() == [(5, 6), (7, 8)]
    assert rs.add(4) and rs.add(8)
    assert rs.ranges() == [(4, 6), (7, 9)]
    with pytest.raises(ValueError):
        rs.add(-1)


def test_add_merges_across_chunks() -> None:
    with tiny_chunks():
        rs = RangeSet([(0, 1), (2, 3), (4, 5), (7, 9)])
        assert rs._chunks == [[0, 1, 2, 3], [4, 5, 7, 9]]
        rs.add(3)  # joins the last range of chunk 0 to the first of chunk 1
        check(rs, {0, 2, 3, 4, 7, 8})
        rs = RangeSet([(0, 1), (2, 3), (4, 5)])
        rs.add(3)  # ... which was chunk 1's only range
        assert rs._chunks == [[0, 1, 2, 5]]
        check(rs, {0, 2, 3, 4})


def test_equality_ignores_chunking() -> None:
    a = RangeSet.from_indices(range(0, 2000, 2))  # 1000 ranges: several chunks
    b = RangeSet()
    for i in reversed(range(0, 2000, 2)):
        b.add(i)
    assert a == b and a != RangeSet.full(3)
    assert a.__eq__(object()) is NotImplemented
    with pytest.raises(TypeError):
        hash(a)


def test_copy_is_independent() -> None:
    a = RangeSet([(0, 10)])
    b = a.copy()
    b.discard(3)
    assert 3 in a and 3 not in b


@pytest.mark.parametrize(
    "initial, a, b, expected",
    [
        ([], 3, 5, [(3, 5)]),
        ([(0, 3)], 3, 5, [(0, 5)]),  # adjacent on the left
        ([(5, 8)], 3, 5, [(3, 8)]),  # adjacent on the right
        ([(0, 2), (4, 6), (8, 10)], 1, 9, [(0, 10)]),
        ([(0, 2), (8, 10)], 4, 6, [(0, 2), (4, 6), (8, 10)]),
        ([(0, 10)], 3, 5, [(0, 10)]),
        ([(0, 10)], 5, 5, [(0, 10)]),  # empty: nothing
    ],
)
def test_add_range(initial: list, a: int, b: int, expected: list) -> None:
    rs = RangeSet(initial)
    rs.add_range(a, b)
    assert rs.ranges() == expected
    check(rs)


@pytest.mark.parametrize(
    "initial, a, b, expected",
    [
        ([(0, 10)], 3, 5, [(0, 3), (5, 10)]),
        ([(0, 10)], 0, 10, []),
        ([(0, 2), (4, 6), (8, 10)], 1, 9, [(0, 1), (9, 10)]),
        ([(0, 2), (4, 6)], 2, 4, [(0, 2), (4, 6)]),
        ([(3, 5)], 0, 100, []),
    ],
)
def test_remove_range(initial: list, a: int, b: int, expected: list) -> None:
    rs = RangeSet(initial)
    rs.remove_range(a, b)
    assert rs.ranges() == expected
    check(rs)


# -- against the model --------------------------------------------------------


@given(sets_of_ints, ops)
def test_operations_match_a_set(initial: set[int], ops_: list[tuple]) -> None:
    run(ops_, RangeSet.from_indices(initial), set(initial))


@given(sets_of_ints, ops)
def test_operations_match_a_set_with_tiny_chunks(initial: set[int], ops_: list[tuple]) -> None:
    with tiny_chunks():
        run(ops_, RangeSet.from_indices(initial), set(initial))


def test_many_random_operations_with_default_chunks() -> None:
    """Thousands of ranges, so chunks split, empty and merge across boundaries."""
    rng = random.Random(7)
    rs = RangeSet.full(6000)
    model = set(range(6000))
    for step in range(20000):
        i = rng.randrange(6100)
        if rng.random() < 0.55:
            assert rs.discard(i) == (i in model)
            model.discard(i)
        else:
            assert rs.add(i) == (i not in model)
            model.add(i)
        if step % 1000 == 0:
            if model:
                j = rs.take_random(rng)
                model.remove(j)
            a = rng.randrange(6000)
            b = a + rng.randrange(100)
            if step % 2000 == 0:
                rs.remove_range(a, b)
                model.difference_update(range(a, b))
            else:
                rs.add_range(a, b)
                model.update(range(a, b))
            check(rs, model)
    assert len(rs._chunks) > 5
    check(rs, model)


@given(sets_of_ints, sets_of_ints)
def test_set_algebra(a: set[int], b: set[int]) -> None:
    with tiny_chunks():
        ra, rb = RangeSet.from_indices(a), RangeSet.from_indices(b)
        for result, expected in (
            (ra.union(rb), a | b),
            (ra.intersection(rb), a & b),
            (ra.difference(rb), a - b),
            (rb.difference(ra), b - a),
        ):
            check(result, expected)
        check(ra, a)  # unchanged
        c = ra.copy()
        c.update(rb)
        check(c, a | b)
        c = ra.copy()
        c.difference_update(rb)
        check(c, a - b)
        c.update(c)
        check(c, a - b)
        c.difference_update(c)
        check(c, set())


def test_in_place_updates_of_a_big_set_by_a_small_one() -> None:
    big = RangeSet.from_indices(range(0, 100_000, 3))
    model = set(range(0, 100_000, 3))
    small_ = RangeSet([(10, 20), (50_000, 50_010)])
    big.update(small_)
    model |= set(range(10, 20)) | set(range(50_000, 50_010))
    check(big, model)
    big.difference_update(small_)
    model -= set(range(10, 20)) | set(range(50_000, 50_010))
    check(big, model)


# -- split ---------------------------------------------------------------------


@given(sets_of_ints, st.integers(1, 10))
def test_split(members: set[int], n: int) -> None:
    with tiny_chunks():
        parts = RangeSet.from_indices(members).split(n)
    assert len(parts) == n
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert sum(sizes) == len(members)
    flattened = [i for p in parts for i in p]
    assert flattened == sorted(members)  # contiguous, in order, disjoint
    for p in parts:
        check(p)


def test_split_examples() -> None:
    assert [p.ranges() for p in RangeSet.full(10).split(3)] == [[(0, 4)], [(4, 7)], [(7, 10)]]
    assert [p.ranges() for p in RangeSet([(0, 2), (5, 7)]).split(2)] == [[(0, 2)], [(5, 7)]]
    assert [len(p) for p in RangeSet.full(2).split(4)] == [1, 1, 0, 0]
    with pytest.raises(ValueError):
        RangeSet.full(3).split(0)


# -- random members ----------------------------------------------------------


def test_choice_is_uniform_and_leaves_the_set() -> None:
    with tiny_chunks():
        rs = RangeSet([(0, 3), (10, 11), (20, 25), (40, 42)])  # 11 members, 3 chunks
        rng = random.Random(1)
        draws = 22000
        counts = Counter(rs.choice(rng) for _ in range(draws))
        check(rs, set(range(0, 3)) | {10} | set(range(20, 25)) | {40, 41})
    assert set(counts) == set(rs)
    expected = draws / len(rs)
    chi2 = sum((counts[i] - expected) ** 2 / expected for i in rs)
    assert chi2 < 40  # 10 degrees of freedom: p < 1e-4 at 35.6


def test_take_random_drains_every_member_once() -> None:
    rs = RangeSet.from_indices(range(0, 3000, 2))
    rng = random.Random(3)
    taken = [rs.take_random(rng) for _ in range(1500)]
    assert sorted(taken) == list(range(0, 3000, 2))
    assert taken != sorted(taken)
    assert not rs
    with pytest.raises(KeyError):
        rs.take_random(rng)
    with pytest.raises(KeyError):
        rs.choice(rng)


# -- wire form -----------------------------------------------------------------


def test_encoding_example() -> None:
    rs = RangeSet([(3, 5), (300, 301)])
    # gap 3, length 2; gap 295 (0xA7 0x02), length 1.
    assert rs.encode() == bytes([3, 2, 0xA7, 0x02, 1])
    assert RangeSet.decode(rs.encode(), limit=301) == rs


@given(sets_of_ints, st.integers(0, 2**64))
def test_round_trip(members: set[int], offset: int) -> None:
    rs = RangeSet.from_indices(i + offset for i in members)
    limit = (rs.last() or 0) + 1
    assert RangeSet.decode(rs.encode(), limit=limit) == rs


@given(st.binary(max_size=64), st.integers(0, 2**40))
def test_decode_arbitrary_bytes(data: bytes, limit: int) -> None:
    try:
        rs = RangeSet.decode(data, limit)
    except ProtocolError:
        return
    check(rs)
    assert rs.encode() == data
    assert rs.last() is None or rs.last() < limit  # type: ignore[operator]


@pytest.mark.parametrize(
    "data, match",
    [
        (b"\x03", "truncated"),
        (b"\x03\x82", "truncated"),
        (b"\x00\x00", "empty"),
        (b"\x00\x02\x00\x01", "overlap or touch"),
        (b"\x83\x00\x01", "shortest"),
        (b"\x80" * 10 + b"\x01\x01", "too long"),
        (b"\x05\x06", "not below 10"),
    ],
)
def test_decode_refuses(data: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        RangeSet.decode(data, limit=10)


def test_decode_limit() -> None:
    assert RangeSet.decode(b"\x05\x05", limit=10).ranges() == [(5, 10)]
    with pytest.raises(ProtocolError):
        RangeSet.decode(b"\x05\x05", limit=9)
    assert RangeSet.decode(b"", limit=0) == RangeSet()
    with pytest.raises(ValueError):
        RangeSet.decode(b"", limit=-1)


@settings(max_examples=20)
@given(st.integers(1, 5000))
def test_round_trip_big_fragmented(seed: int) -> None:
    rng = random.Random(seed)
    rs = RangeSet.from_indices(rng.sample(range(100_000), 3000))
    assert RangeSet.decode(rs.encode(), limit=100_000) == rs


@given(members=st.sets(st.integers(0, 300), max_size=120), x=st.integers(0, 320))
def test_next_run_and_nth_against_a_sorted_list(members: set[int], x: int) -> None:
    s = RangeSet.from_indices(members)
    ordered = sorted(members)
    after = [m for m in ordered if m >= x]
    run = s.next_run(x)
    if not after:
        assert run is None
    else:
        a, b = run
        assert a == after[0] and b > a
        assert all(u in members for u in range(a, b)) and b not in members
    for r, m in enumerate(ordered):
        assert s.nth(r) == m
    with pytest.raises(IndexError):
        s.nth(len(ordered))
