"""RateController: random loss holds the rate, congestion brings it to the
slowest receiver's calculated rate (TFMCC-like, RFC 4654), within bounds."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import task

from mcp2p.core.ratecontrol import (
    BASELINE_CAP,
    INCREASE_PERCENT_OF_MAX,
    RateController,
    congested,
)

MBIT = 1_000_000
PERIOD = 0.5  # the session's RATE_PERIOD
PACKET_BITS = 1500 * 8


def controller(initial: int = 50 * MBIT) -> RateController:
    return RateController(initial, 1 * MBIT, 100 * MBIT)


def test_no_loss_adds_5_percent_of_the_maximum_up_to_it() -> None:
    c = controller(90 * MBIT)
    assert c.report(0, 1000) == 95 * MBIT
    assert c.report(0, 1000) == 100 * MBIT
    assert c.report(0, 1000) == 100 * MBIT


def test_one_percent_loss_is_not_congestion() -> None:
    c = controller()
    assert c.report(10, 990) == 55 * MBIT  # a new receiver: baseline 0, 1% is within MARGIN
    assert not congested(40, 3960, 0.0)


def test_loss_above_the_baseline_cuts_to_what_the_receiver_got_then_holds() -> None:
    c = controller()
    assert c.report(200, 800) == 40 * MBIT  # 20% lost: 80% of 50M
    assert c.report(200, 800) == 40 * MBIT  # the period after a cut holds
    assert c.report(0, 1000) == 45 * MBIT


def test_a_cut_leaves_at_least_three_quarters() -> None:
    c = controller()
    assert c.report(1000, 0) == 37_500_000
    c = controller(1_200_000)
    assert c.report(1000, 0) == 1 * MBIT  # and never below the minimum


def test_the_baseline_is_the_lowest_recent_loss_and_raises_the_cut_threshold() -> None:
    c = controller()
    for _ in range(10):
        c.report(40, 960)  # 4% random loss: cuts at first, then learned
    assert c.baseline(None) == pytest.approx(0.04)
    rate = c.rate
    assert c.report(40, 960) > rate  # 4% against a 4% baseline: raise
    c.report(40, 960)
    before = c.rate
    c.report(200, 800)  # 20%: congestion on top of 4%
    assert c.rate == int(before * 0.8 / 0.96)


def test_the_baseline_never_exceeds_its_cap() -> None:
    c = controller()
    for _ in range(30):
        c.report(500, 500)
    assert c.baseline(None) == BASELINE_CAP


def test_the_slowest_receiver_limits_and_others_do_not() -> None:
    c = controller()
    rate = c.period({1: (10, 990), 2: (200, 800), 3: (100, 900)})
    assert rate == 40 * MBIT and c.limiting == 2
    c.forget(2)
    assert c.baseline(2) == 0.0


def test_small_samples_need_more_loss_to_count() -> None:
    assert not congested(2, 28, 0.0)  # 6.7% of 30 packets: within 3 sd
    assert congested(67, 933, 0.0)  # 6.7% of 1000: congestion


def test_empty_reports_change_nothing() -> None:
    c = controller()
    assert c.report(0, 0) == 50 * MBIT
    assert c.period({}) == 50 * MBIT
    assert c.period({1: (0, 0), 2: (0, 0)}) == 50 * MBIT


def test_small_maximum_still_increases() -> None:
    assert RateController(5, 1, 10).report(0, 100) == 6


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
    st.lists(
        st.dictionaries(
            st.integers(0, 8), st.tuples(st.integers(0, 5000), st.integers(0, 5000)), max_size=8
        ),
        max_size=50,
    ),
)
def test_rate_stays_within_bounds(
    minimum: int, extra: int, more: int, periods: list[dict[int, tuple[int, int]]]
) -> None:
    maximum = minimum + extra + more
    c = RateController(minimum + extra, minimum, maximum)
    for reports in periods:
        before = c.rate
        rate = c.period(reports)
        assert minimum <= rate <= maximum
        assert rate >= min(before, max(minimum, before * 3 // 4))  # cuts at most 25%
        step = max(1, maximum * INCREASE_PERCENT_OF_MAX // 100)
        assert rate <= before + step


def simulate(
    link: int, random_loss: float, receivers: int, seconds: float, seed: int, maximum: int
) -> list[int]:
    """A Clock-driven session: every PERIOD each receiver gets what the rate
    sends, less what exceeds ``link`` (a full queue), less ``random_loss`` at
    random; the rate at the end of every period."""
    clock = task.Clock()
    rng = random.Random(seed)
    c = RateController(maximum, maximum // 100, maximum)
    rates: list[int] = []

    def one_period() -> None:
        sent = int(c.rate * PERIOD / PACKET_BITS)
        fits = min(sent, int(link * PERIOD / PACKET_BITS))
        reports = {}
        for r in range(receivers):
            got = sum(1 for _ in range(fits) if rng.random() >= random_loss)
            reports[r] = (sent - got, got)
        rates.append(c.period(reports))

    loop = task.LoopingCall(one_period)
    loop.clock = clock
    loop.start(PERIOD, now=False)
    clock.pump([PERIOD] * int(seconds / PERIOD))
    loop.stop()
    return rates


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2**32))
def test_constant_one_percent_random_loss_at_eight_receivers_keeps_the_rate_near_max(
    seed: int,
) -> None:
    maximum = 95 * MBIT
    rates = simulate(10**12, 0.01, 8, 30, seed, maximum)
    assert min(rates) >= 0.8 * maximum
    assert sum(rates) / len(rates) >= 0.95 * maximum


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2**32), st.sampled_from([0.0, 0.01]))
def test_a_link_too_slow_brings_the_rate_to_its_rate_within_a_few_seconds(
    seed: int, random_loss: float
) -> None:
    maximum = 95 * MBIT
    link = 76 * MBIT  # 20% of what the maximum sends is lost
    rates = simulate(link, random_loss, 8, 30, seed, maximum)
    assert rates[0] <= link * 1.02  # the first period already cuts to it
    later = rates[6:]  # after 3 s: around the link's rate, probing just above it
    assert max(later) <= link * 1.12
    assert sum(later) / len(later) >= 0.85 * link


def test_no_loss_never_raises_the_rate_past_the_ceiling() -> None:
    # The bug users saw: --rate 2M, and the rate rose by 5% of 1G every period.
    c = RateController(2 * MBIT, 1 * MBIT, 1000 * MBIT, ceiling=2 * MBIT)
    assert [c.report(0, 1000) for _ in range(20)] == [2 * MBIT] * 20


def test_increases_are_a_share_of_the_ceiling() -> None:
    c = RateController(5 * MBIT, 1 * MBIT, 1000 * MBIT, ceiling=10 * MBIT)
    assert c.report(0, 1000) == 5_500_000  # 5% of the 10M ceiling, not of the 1G maximum
    c.ceiling = 1000 * MBIT
    assert c.report(0, 1000) == 55_500_000


def test_a_lower_ceiling_cuts_at_once_and_a_higher_one_lets_the_rate_climb_back() -> None:
    c = controller(80 * MBIT)
    c.ceiling = 20 * MBIT
    assert c.rate == 20 * MBIT
    assert c.report(0, 1000) == 20 * MBIT
    c.ceiling = 100 * MBIT
    assert c.rate == 20 * MBIT  # not at once: the receivers never took more than 20M
    assert [c.report(0, 1000) for _ in range(17)][-1] == 100 * MBIT


def test_the_ceiling_is_clamped_to_minimum_and_maximum() -> None:
    c = controller()
    c.ceiling = 1000
    assert c.ceiling == c.rate == 1 * MBIT  # below the minimum: the minimum
    assert c.report(1000, 0) == 1 * MBIT
    c.ceiling = 10**12
    assert c.ceiling == 100 * MBIT


def test_a_cut_below_the_ceiling_recovers_up_to_the_ceiling_only() -> None:
    c = RateController(10 * MBIT, 1 * MBIT, 1000 * MBIT, ceiling=10 * MBIT)
    assert c.report(500, 500) == 7_500_000
    rates = [c.report(0, 1000) for _ in range(10)]
    assert rates[0] == 7_500_000  # the hold after a cut
    assert max(rates) == rates[-1] == 10 * MBIT


@pytest.mark.parametrize("ceiling", [0, -1, 2.5, True, None])
def test_ceiling_validates(ceiling: object) -> None:
    c = controller()
    with pytest.raises(ValueError):
        c.ceiling = ceiling  # type: ignore[assignment]
    assert c.ceiling == 100 * MBIT


@given(
    st.integers(1, 10**6),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.lists(
        st.one_of(
            st.integers(1, 3 * 10**6),  # a new ceiling (any: clamped)
            st.dictionaries(
                st.integers(0, 8),
                st.tuples(st.integers(0, 5000), st.integers(0, 5000)),
                max_size=8,
            ),
        ),
        max_size=60,
    ),
)
def test_the_rate_never_exceeds_the_ceiling(
    minimum: int, extra: int, more: int, steps: list[int | dict[int, tuple[int, int]]]
) -> None:
    maximum = minimum + extra + more
    c = RateController(minimum + extra, minimum, maximum)
    for step in steps:
        if isinstance(step, int):
            c.ceiling = step
            assert c.ceiling == min(max(step, minimum), maximum)
        else:
            c.period(step)
        assert minimum <= c.rate <= c.ceiling <= maximum
