"""The one rule for events a peer can repeat: warn on the 1st, 2nd, 4th, 8th..."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import LogLevel

from mcp2p.logsummary import summary_level


def test_powers_of_two_warn_the_rest_are_debug() -> None:
    warned = [n for n in range(1, 70) if summary_level(n) is LogLevel.warn]
    assert warned == [1, 2, 4, 8, 16, 32, 64]


@given(st.integers(min_value=1, max_value=2**40))
def test_a_flood_of_n_events_warns_about_log2_n_times(n: int) -> None:
    assert summary_level(n) in (LogLevel.warn, LogLevel.debug)
    assert (summary_level(n) is LogLevel.warn) == (bin(n).count("1") == 1)
