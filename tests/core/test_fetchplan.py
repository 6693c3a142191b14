"""The fetch's pure decisions: shares, stalls, blame (no reactor)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mcp2p.core.fetchplan import blamed, deal, orphaned, refuses, stall_verdict
from mcp2p.core.wanted import RangeSet

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
