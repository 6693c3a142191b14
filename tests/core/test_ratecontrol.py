"""RateController: AIMD from loss reports, within its bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp2p.core.ratecontrol import RateController

MBIT = 1_000_000


def controller(initial: int = 50 * MBIT) -> RateController:
    return RateController(initial, 1 * MBIT, 100 * MBIT)


def test_heavy_loss_cuts_to_85_percent() -> None:
    c = controller()
    assert c.report(lost=6, received=94) == 42_500_000
    assert c.rate == 42_500_000
    assert c.report(lost=50, received=50) == 36_125_000


def test_cuts_stop_at_the_minimum() -> None:
    c = controller(1_100_000)
    assert c.report(10, 90) == 1 * MBIT
    assert c.report(10, 90) == 1 * MBIT


def test_low_loss_adds_5_percent_of_the_maximum() -> None:
    c = controller()
    assert c.report(0, 1000) == 55 * MBIT
    assert c.report(19, 981) == 60 * MBIT  # 1.9%


def test_increases_stop_at_the_maximum() -> None:
    c = controller(98 * MBIT)
    assert c.report(0, 100) == 100 * MBIT
    assert c.report(0, 100) == 100 * MBIT


@pytest.mark.parametrize(
    "lost, received",
    [
        (5, 95),  # exactly 5%: not more than 5%
        (2, 98),  # exactly 2%: not less than 2%
        (3, 97),  # 3%
    ],
)
def test_moderate_loss_holds(lost: int, received: int) -> None:
    c = controller()
    assert c.report(lost, received) == 50 * MBIT


def test_just_past_the_thresholds() -> None:
    assert controller().report(501, 9499) == 42_500_000  # 5.01%
    assert controller().report(199, 9801) == 55 * MBIT  # 1.99%


def test_empty_report_changes_nothing() -> None:
    c = controller()
    assert c.report(0, 0) == 50 * MBIT


def test_all_lost() -> None:
    assert controller().report(10, 0) == 42_500_000


def test_small_maximum_still_increases() -> None:
    c = RateController(5, 1, 10)
    assert c.report(0, 100) == 6


@pytest.mark.parametrize(
    "args",
    [(0, 1, 10), (5, 0, 10), (11, 1, 10), (1, 2, 10), (5, 1, 10.0), (True, 1, 10)],
)
def test_constructor_validates(args: tuple) -> None:
    with pytest.raises(ValueError):
        RateController(*args)


@pytest.mark.parametrize("lost, received", [(-1, 10), (1, -1), (1.0, 2), (None, 2)])
def test_report_validates(lost: object, received: object) -> None:
    with pytest.raises(ValueError):
        controller().report(lost, received)  # type: ignore[arg-type]


@given(
    st.integers(1, 10**6),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 1000)), max_size=50),
)
def test_rate_stays_within_bounds(
    minimum: int, extra: int, more: int, reports: list[tuple[int, int]]
) -> None:
    maximum = minimum + extra + more
    c = RateController(minimum + extra, minimum, maximum)
    for lost, received in reports:
        before = c.rate
        rate = c.report(lost, received)
        assert minimum <= rate <= maximum
        total = lost + received
        if total and lost / total > 0.05:
            assert rate <= before
        elif total and lost / total < 0.02:
            assert rate >= before
        else:
            assert rate == before
