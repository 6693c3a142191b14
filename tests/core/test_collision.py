"""CollisionRule: which of two ASM sessions on one group moves, and when (no reactor)."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from mcp2p.core.collision import HOLDOFF, MAX_HEARD, PERSIST, CollisionRule

OWN = 1000


def test_own_packets_never_move() -> None:
    rule = CollisionRule()
    assert all(rule.hear(OWN, OWN, t / 10) == "ignore" for t in range(100))


def test_the_lower_ssrc_moves_at_once_then_holds_off() -> None:
    rule = CollisionRule()
    assert rule.hear(2000, OWN, 10.0) == "move"
    # Datagrams of the old group still queued: ignored for HOLDOFF.
    assert rule.hear(2000, OWN, 10.0 + HOLDOFF / 2) == "ignore"
    assert rule.hear(2000, OWN, 10.0 + HOLDOFF) == "move"


def test_the_higher_ssrc_waits_persist_for_the_other_to_move() -> None:
    rule = CollisionRule()
    for t in (0.0, 1.0, PERSIST - 0.01):
        assert rule.hear(5, OWN, t) == "ignore"
    assert rule.hear(5, OWN, PERSIST) == "move"  # a sender that never moves


def test_a_gap_longer_than_persist_starts_a_new_collision() -> None:
    rule = CollisionRule()
    assert rule.hear(5, OWN, 0.0) == "ignore"
    # Heard again after a long silence: the other moved away and back, say.
    assert rule.hear(5, OWN, PERSIST + 0.5) == "ignore"
    assert rule.hear(5, OWN, PERSIST + 1.0) == "ignore"
    assert rule.hear(5, OWN, 2 * PERSIST + 0.5) == "move"


def test_many_foreign_ssrcs_are_bounded() -> None:
    rule = CollisionRule()
    for ssrc in range(10 * MAX_HEARD):  # all lower than OWN * 100: all yield to us
        assert rule.hear(ssrc, 100 * MAX_HEARD, ssrc / 1e6) == "ignore"
    assert len(rule.heard) == MAX_HEARD


@given(
    st.integers(0, 2**32 - 1),
    st.lists(st.tuples(st.integers(0, 2**32 - 1), st.floats(0, 1, allow_nan=False)), max_size=60),
)
def test_moves_are_never_closer_than_holdoff(own: int, events: list[tuple[int, float]]) -> None:
    rule = CollisionRule()
    now = 0.0
    moves: list[float] = []
    for ssrc, step in events:
        now += step
        action = rule.hear(ssrc, own, now)
        assert action in ("move", "ignore")
        if ssrc == own:
            assert action == "ignore"
        if action == "move":
            moves.append(now)
    assert all(b - a >= HOLDOFF - 1e-9 for a, b in pairwise(moves))  # float sums
    assert len(rule.heard) <= MAX_HEARD
