"""The fetch's pure decisions: ranking, shares, stalls, blame, failover, resubscribes,
budgets, the group's family (no reactor)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp2p.core.fetchplan import (
    MAX_RESUBSCRIBES,
    MIN_UNVERIFIED,
    Budget,
    Deal,
    Drop,
    GiveUp,
    Resubscribe,
    SearchAgain,
    TakeCandidate,
    Watched,
    blamed,
    deal,
    failover,
    failover_due,
    group_family,
    orphaned,
    piece_units,
    rank,
    refuses,
    rewant_target,
    session_ended,
    stall_verdict,
    supervise,
)
from mcp2p.core.wanted import RangeSet
from mcp2p.wire.layout import Layout

unit_sets = st.lists(st.integers(0, 5000), max_size=300).map(RangeSet.from_indices)


@given(unit_sets, st.integers(1, 40))
def test_shares_partition_the_units(units: RangeSet, n: int) -> None:
    shares = deal(units, n)
    assert len(shares) == n
    assert sum(len(s) for s in shares) == len(units)  # every unit exactly once ...
    union = RangeSet()
    for s in shares:
        union.update(s)
    assert union == units  # ... and nothing else
    sizes = [len(s) for s in shares]
    assert max(sizes) - min(sizes) <= 1


@given(unit_sets, st.lists(unit_sets, max_size=4), st.lists(unit_sets, max_size=4))
def test_orphaned_units_are_what_no_active_source_is_asked_for(
    missing: RangeSet, dropped: list[RangeSet], active: list[RangeSet]
) -> None:
    out = orphaned(missing, dropped, active)
    covered = RangeSet()
    for s in active:
        covered.update(s)
    assert missing.difference(covered).difference(out) == RangeSet()  # nothing missing is lost
    for s in dropped:
        assert s.difference(out) == RangeSet()  # a dropped share is handed on whole
    # Redistributed among the active sources, they then cover every missing unit.
    for s, part in zip(active, deal(out, len(active)) if active else [], strict=True):
        s.update(part)
    if active:
        covered = RangeSet()
        for s in active:
            covered.update(s)
        assert missing.difference(covered) == RangeSet()


def test_a_source_without_work_never_stalls() -> None:
    assert stall_verdict(1000.0, 0.0, 0.0, False, False, 5.0) == "wait"


def test_stall_and_nudge_times() -> None:
    assert stall_verdict(2.0, 0.0, 0.0, True, False, 5.0) == "wait"
    assert stall_verdict(2.6, 0.0, 0.0, True, False, 5.0) == "nudge"
    assert stall_verdict(2.7, 0.0, 2.6, True, False, 5.0) == "wait"  # nudged just now
    assert stall_verdict(5.1, 0.0, 2.6, True, False, 5.0) == "stalled"
    # Alone, a source gets four times as long (dropping it means a new search).
    assert stall_verdict(5.2, 0.0, 2.6, True, True, 5.0) == "nudge"
    assert stall_verdict(20.1, 0.0, 17.0, True, True, 5.0) == "stalled"


@given(
    st.floats(0.1, 60),
    st.booleans(),
    st.lists(st.floats(0.01, 3), min_size=1, max_size=400),
)
def test_a_silent_source_is_dropped_whatever_nudges_it_was_sent(
    stall: float, alone: bool, steps: list[float]
) -> None:
    """Ticks at any intervals; every nudge the verdict asks for is sent (it
    moves ``nudged_at``, never ``last_progress``): the source is stalled at
    the first tick after the timeout, and not before."""
    limit = 4 * stall if alone else stall
    now, nudged_at = 0.0, 0.0
    for step in steps:
        now += step
        verdict = stall_verdict(now, 0.0, nudged_at, True, alone, stall)
        if now > limit:
            assert verdict == "stalled"
            return
        assert verdict != "stalled"
        if verdict == "nudge":
            assert now > stall / 2 and now - nudged_at > stall / 2
            nudged_at = now


@given(
    st.sets(st.sampled_from("abcdef"), min_size=1),
    st.sets(st.sampled_from("abcdef")),
)
def test_blame_falls_on_senders_and_on_known_liars_first(
    senders: set[str], refused: set[str]
) -> None:
    who = blamed(senders, refused)
    assert who and who <= senders
    if senders & refused:
        assert who == senders & refused  # an honest co-sender is not counted
    else:
        assert who == senders


def test_a_lone_sender_is_refused_at_once_others_at_the_limit() -> None:
    assert refuses(1, 1, 3)
    assert not refuses(2, 1, 3) and not refuses(2, 2, 3)
    assert refuses(2, 3, 3)


# -- ranking, re-want target, failover, session ends, budgets, family


@given(
    st.lists(
        st.tuples(st.booleans(), st.none() | st.integers(1, 255), st.integers(0, 10**9)),
        min_size=1,
        max_size=20,
    )
)
def test_rank_puts_trusted_then_near_then_fast_first(
    offers: list[tuple[bool, int | None, int]],
) -> None:
    ordered = sorted(offers, key=lambda o: rank(*o))
    for (t1, d1, r1), (t2, d2, r2) in zip(ordered, ordered[1:], strict=False):
        assert t1 >= t2  # no untrusted SN before a trusted one
        if t1 == t2:
            assert (d1 or 255) <= (d2 or 255)  # unknown distance counts as farthest
            if (d1 or 255) == (d2 or 255):
                assert r1 >= r2


def test_piece_units_are_its_blocks_or_the_piece() -> None:
    layout = Layout(size=10 * 1024 + 5, piece_length=4096, block_length=1024)
    assert piece_units(layout, 1, per_block=True) == RangeSet([(4, 8)])
    assert piece_units(layout, 2, per_block=True) == RangeSet([(8, 11)])  # the short last piece
    assert piece_units(layout, 2, per_block=False) == RangeSet([(2, 3)])


def test_a_piece_wanted_again_goes_to_a_source_that_did_not_send_it() -> None:
    assert rewant_target([], {"a"}) is None
    assert rewant_target([("a", 0), ("b", 5)], {"a"}) == 1  # b sent none of it
    assert rewant_target([("a", 2), ("b", 1)], {"a", "b"}) == 1  # fewest bad pieces
    assert rewant_target([("a", 1), ("b", 1)], set()) == 0  # else the first


@given(
    st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(0, 5)), max_size=6),
    st.sets(st.sampled_from("abcdef")),
)
def test_rewant_target_is_the_best_by_innocence_then_record(
    active: list[tuple[str, int]], senders: set[str]
) -> None:
    i = rewant_target(active, senders)
    if not active:
        assert i is None
        return
    assert i is not None
    key = [(name in senders, bad) for name, bad in active]
    assert key[i] == min(key) and key.index(min(key)) == i


def _budget(**kw: int) -> Budget:
    values = {"max_subscriptions": 10, "max_sources_tried": 5, "max_unverified": 0}
    values.update(kw)
    return Budget(max_in_flight=1 << 20, **values)


def test_failover_hands_orphans_to_the_active_sources_first() -> None:
    orphans = RangeSet([(0, 10)])
    assert failover(RangeSet(), 0, None, False, _budget()) is None  # nothing to hand on
    action = failover(orphans, 3, b"c", False, _budget())
    assert isinstance(action, Deal) and [len(p) for p in action.parts] == [4, 3, 3]
    # No active source: the next candidate takes them all, or a search looks for one.
    assert failover(orphans, 0, b"c", False, _budget()) == TakeCandidate(orphans)
    assert failover(orphans, 0, None, False, _budget()) == SearchAgain()
    assert failover(orphans, 0, None, True, _budget()) is None  # its end asks again


def test_failover_gives_up_when_the_budgets_are_spent() -> None:
    orphans = RangeSet([(0, 10)])
    spent = _budget(max_subscriptions=2)
    spent.subscriptions = 2
    action = failover(orphans, 0, b"c", False, spent, "abc stalled")
    assert isinstance(action, GiveUp)
    assert "2 subscriptions" in action.reason and "last: abc stalled" in action.reason
    tried = _budget(max_sources_tried=2)
    tried.tried = {b"a", b"b"}
    action = failover(orphans, 0, b"c", False, tried)
    assert isinstance(action, GiveUp) and "trying 2 SNs" in action.reason
    assert failover(orphans, 0, b"a", False, tried) == TakeCandidate(orphans)  # tried already
    # With sources still active, a spent budget does not stop their sharing.
    assert isinstance(failover(orphans, 1, None, False, spent), Deal)


@given(
    unit_sets,
    st.integers(0, 4),
    st.booleans(),
    st.booleans(),
    st.integers(0, 3),
    st.integers(0, 3),
)
def test_failover_never_loses_units(
    orphans: RangeSet, active: int, candidate: bool, searching: bool, subs: int, tried: int
) -> None:
    budget = _budget(max_subscriptions=2, max_sources_tried=2)
    budget.subscriptions, budget.tried = subs, {bytes([i]) for i in range(tried)}
    action = failover(orphans, active, b"\xff" if candidate else None, searching, budget)
    if not orphans:
        assert action is None
    elif active:
        assert isinstance(action, Deal) and len(action.parts) == active
        union = RangeSet()
        for part in action.parts:
            union.update(part)
        assert union == orphans
    elif searching:
        assert action is None
    elif subs >= 2 or (candidate and tried >= 2):
        assert isinstance(action, GiveUp)
    else:
        assert action == (TakeCandidate(orphans) if candidate else SearchAgain())


def test_failover_due_when_a_dropped_share_or_an_uncovered_unit_remains() -> None:
    assert failover_due(True, False, True)
    assert failover_due(False, True, False)
    assert not failover_due(False, True, True)
    assert not failover_due(False, False, False)


@given(
    st.floats(0.1, 30),
    st.booleans(),
    st.lists(
        st.tuples(st.booleans(), st.floats(0, 100), st.floats(0, 100)), min_size=1, max_size=6
    ),
)
def test_supervise_gives_the_last_source_standing_more_time(
    stall: float, candidates: bool, rows: list[tuple[bool, float, float]]
) -> None:
    now = 100.0
    active = [Watched(*row) for row in rows]
    verdicts = supervise(now, active, candidates, stall)
    assert len(verdicts) == len(active)
    left = len(active)
    for source, verdict in zip(active, verdicts, strict=True):
        alone = left <= 1 and not candidates
        assert verdict == stall_verdict(now, *source[1:], source.has_share, alone, stall)
        left -= verdict == "stalled"
    # Without candidates, never every source with work is dropped at one tick
    # unless the last one also went silent for four times the timeout.
    if not candidates and all(v == "stalled" for v in verdicts):
        assert now - active[-1].last_progress > 4 * stall


def test_supervise_spares_the_last_source_when_its_peer_stalls() -> None:
    active = [Watched(True, 0.0, 0.0), Watched(True, 0.0, 0.0)]
    assert supervise(6.0, active, False, 5.0) == ["stalled", "nudge"]
    assert supervise(6.0, active, True, 5.0) == ["stalled", "stalled"]  # a candidate waits


def test_an_ended_session_is_asked_for_again_a_few_times() -> None:
    for reason in ("nothing wanted", "moved: too slow", "no reports"):
        assert session_ended(reason, True, True, 0, False, False) == Resubscribe(1)
    assert session_ended("nothing wanted", True, True, 2, False, False) == Resubscribe(3)
    assert session_ended("nothing wanted", True, True, 3, False, False) == Drop(
        "session ended: nothing wanted"
    )
    # A unit delivered since the last resubscribe starts the count again.
    assert session_ended("nothing wanted", True, True, 3, True, False) == Resubscribe(1)


@pytest.mark.parametrize(
    "reason, still, connected, over",
    [
        ("stopped", True, True, False),  # a reason that asks for no retry
        ("nothing wanted", False, True, False),  # its share is complete
        ("nothing wanted", True, False, False),  # its control channel is gone
        ("nothing wanted", True, True, True),  # max_subscriptions spent
    ],
)
def test_an_ended_session_is_dropped(reason: str, still: bool, connected: bool, over: bool) -> None:
    assert session_ended(reason, still, connected, 0, False, over) == Drop(
        f"session ended: {reason}"
    )


@given(st.lists(st.booleans(), max_size=50))
def test_resubscribes_in_a_row_stay_bounded(delivered: list[bool]) -> None:
    """However sessions end, an SN that delivers nothing is resubscribed at
    most MAX_RESUBSCRIBES times in a row."""
    in_a_row, silent = 0, 0
    for progress in delivered:
        action = session_ended("nothing wanted", True, True, in_a_row, progress, False)
        silent = 0 if progress else silent
        if isinstance(action, Drop):
            assert in_a_row == MAX_RESUBSCRIBES and not progress
            return
        in_a_row = action.in_a_row
        silent += 1
        assert silent <= MAX_RESUBSCRIBES


def test_unverified_bytes_are_counted_from_the_last_verified_piece() -> None:
    budget = _budget(max_unverified=1000)
    size = 10**6
    assert budget.over_spent(0, 500, 0, size) == ""
    assert budget.over_spent(0, 1000, 0, size) == ""
    why = budget.over_spent(0, 1001, 0, size, "abc stalled")
    assert "1001 bytes received without a piece verifying" in why and "abc stalled" in why
    assert budget.over_spent(0, 1500, 4096, size) == ""  # a piece verified: a new mark
    assert budget.mark == (4096, 1500)
    assert budget.over_spent(0, 2400, 4096, size) == ""
    assert budget.over_spent(0, 2501, 4096, size) != ""
    assert budget.over_spent(0, 100, 4096, size) == ""  # received went down: a new mark too
    assert budget.mark == (4096, 100)


def test_unverified_limit_by_default_is_twice_the_rest_or_64_mib() -> None:
    budget = _budget(max_unverified=0)
    assert budget.over_spent(0, MIN_UNVERIFIED, 0, 1000) == ""
    assert budget.over_spent(0, MIN_UNVERIFIED + 1, 0, 1000) != ""
    big = _budget(max_unverified=0)
    assert big.over_spent(0, 2 * 10**9, 0, 10**9) == ""
    assert big.over_spent(0, 2 * 10**9 + 1, 0, 10**9) != ""


def test_in_flight_bytes_are_bounded_and_a_block_code_skips_the_unverified_count() -> None:
    budget = _budget()
    assert "max_in_flight is 1048576" in budget.over_spent((1 << 20) + 1, None, 0, 10)
    assert budget.over_spent(1 << 20, None, 0, 10) == ""
    assert budget.over_spent(0, None, 0, 10) == "" and budget.mark == (0, 0)


@given(st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 4096)), max_size=60))
def test_unverified_budget_trips_only_on_bytes_past_the_mark(
    steps: list[tuple[int, int]],
) -> None:
    """Received and verified counts that move any way: the budget trips
    exactly when the bytes received since the last verification exceed it."""
    budget = _budget(max_unverified=5000)
    received, verified, mark = 0, 0, (0, 0)
    for more, ok in steps:
        received += more
        verified += ok if ok % 3 == 0 else 0
        if verified > mark[0] or received < mark[1]:
            mark = (verified, received)
        why = budget.over_spent(0, received, verified, 10**9)
        assert bool(why) == (received - mark[1] > 5000)
        assert budget.mark == mark


def test_group_family() -> None:
    assert group_family("auto", "127.0.0.1", True) == 4
    assert group_family("auto", "::1", True) == 6
    assert group_family("auto", "::1", False) == 4  # no IPv6 here: fall back
    assert group_family("4", "::1", True) == 4
    assert group_family("6", "127.0.0.1", True) == 6
    with pytest.raises(ValueError, match="needs \\[node\\] interface6"):
        group_family("6", "127.0.0.1", False)
