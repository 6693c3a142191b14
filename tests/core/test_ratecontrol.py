"""RateController: random loss holds the rate, congestion brings it to the
slowest receiver's calculated rate (TFMCC-like, RFC 4654), a new session
doubles until its first congestion, and a steady one climbs back to the
capacity it found and probes above it, within bounds."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import task

from mcp2p.core.ratecontrol import (
    ADDITIVE_PERCENT,
    BASELINE_CAP,
    BASELINE_SD,
    MAX_PROBE_DOUBLINGS,
    MIN_SPAN,
    PROBE_PERCENT,
    RATE_PERIOD,
    START_PERIOD,
    RateController,
    congested,
)

MBIT = 1_000_000
PERIOD = 0.5  # the session's RATE_PERIOD
PACKET_BITS = 1500 * 8


def controller(initial: int = 50 * MBIT) -> RateController:
    return RateController(initial, 1 * MBIT, 100 * MBIT)


def steady(initial: int = 50 * MBIT, capacity: int = 50 * MBIT) -> RateController:
    """A controller past its start, that found ``capacity`` (>= initial)."""
    c = controller(initial)
    c.starting, c.known = False, capacity
    return c


def test_a_new_session_rises_by_half_each_period_until_the_ceiling() -> None:
    c = controller(40 * MBIT)
    assert c.starting and c.period_length == START_PERIOD
    assert [c.report(0, 1000) for _ in range(4)] == [60 * MBIT, 90 * MBIT, 100 * MBIT, 100 * MBIT]
    assert c.starting  # no congestion yet


def test_receipts_kept_flat_by_the_ceiling_do_not_end_the_start() -> None:
    c = RateController(12 * MBIT, 1 * MBIT, 100 * MBIT, ceiling=12 * MBIT, packet_bits=PACKET_BITS)
    for _ in range(5):
        assert c.period({1: (0, 1000)}, 1.0) == 12 * MBIT  # 12 Mbit/s, no more
    assert c.starting
    c.ceiling = 100 * MBIT
    assert c.period({1: (0, 1000)}, 1.0) == 18 * MBIT


def test_a_new_session_rises_to_at_most_twice_what_the_slowest_receiver_got() -> None:
    c = RateController(10 * MBIT, 1 * MBIT, 1000 * MBIT, packet_bits=PACKET_BITS)
    # 208 packets of 12000 bits in 0.5 s: 4.99 Mbit/s, then growing
    assert c.period({1: (0, 208), 2: (0, 5000)}, 0.5) == 10 * MBIT  # 2x the slowest: no rise
    assert c.period({1: (0, 313), 2: (0, 5000)}, 0.5) == 15 * MBIT  # by half, within 2x
    assert c.period({1: (0, 400), 2: (0, 5000)}, 0.5) == 19_200_000  # 2x the slowest
    assert c.period({1: (0, 600), 2: (0, 5000)}, {1: 2.0, 2: 0.5}) == 19_200_000  # never down


def test_the_start_ends_when_the_slowest_receivers_receipts_stop_growing() -> None:
    c = RateController(40 * MBIT, 1 * MBIT, 1000 * MBIT, packet_bits=PACKET_BITS)
    got = {1: (0, 1000), 2: (0, 5000)}  # the slowest gets 24 Mbit/s, and no more
    assert c.period(got, 0.5) == 48 * MBIT  # twice what it got
    assert c.period(got, 0.5) == 48 * MBIT  # not growing: no doubling
    assert c.period(got, 0.5) == 24 * MBIT  # twice: the start ends at what it got
    assert not c.starting and c.known == 24 * MBIT
    assert c.period(got, 0.5) == 24 * MBIT  # and holds a period, as after a cut


def test_the_start_ends_at_the_most_the_receipts_were_not_at_their_last_growth() -> None:
    """Receipts that still grow, by less than FULL_GROWTH, end the start at
    their highest (the lab's one CN: its receipts grew 750 -> 754 Mbit/s
    after the last growth by a quarter at 643, and the start ended at 643)."""
    c = RateController(40 * MBIT, 1 * MBIT, 1000 * MBIT, packet_bits=PACKET_BITS)
    assert c.period({1: (0, 1000)}, 0.5) == 48 * MBIT  # 24 Mbit/s got: the start rises
    assert c.period({1: (0, 1200)}, 0.5) == 48 * MBIT  # 28.8: less than a quarter more
    assert c.period({1: (0, 1230)}, 0.5) == 29_520_000  # 29.52: the most they were
    assert not c.starting and c.known == 29_520_000


def test_a_report_of_a_few_milliseconds_is_not_a_receivers_rate() -> None:
    """The lab's 8 CNs on a 100 Mbit/s star: the first report of a session
    spanned 7 ms, the bucket's first burst, and read as 189 Mbit/s; the start
    then ended at 150 Mbit/s (the most the receipts were, within the rate) and
    the tbf dropped 13% of the packets sent. Spans under MIN_SPAN say nothing
    of a rate; the start ends at what the longer ones got."""
    c = RateController(100 * MBIT, 1 * MBIT, 1000 * MBIT, packet_bits=PACKET_BITS)
    assert c.period({1: (0, 120)}, 0.007) == 150 * MBIT  # unmeasured: the start rises
    got = {1: (0, 800), 2: (0, 120)}
    spans = {1: 0.1, 2: 0.011}  # 96 Mbit/s over 0.1 s; 131 over 11 ms, not counted
    assert c.period(got, spans) == 192 * MBIT  # twice the 96 measured
    assert c.period(got, spans) == 192 * MBIT  # receipts flat: no rise
    assert c.period(got, spans) == 96 * MBIT  # twice: the start ends at what they got
    assert not c.starting and c.known == 96 * MBIT
    assert MIN_SPAN <= START_PERIOD / 2  # a report interval of the start counts


def test_the_first_congestion_ends_the_start_and_may_halve_the_rate() -> None:
    c = controller(40 * MBIT)
    assert c.report(0, 1000) == 60 * MBIT  # the start rose ...
    assert c.report(450, 550) == 33 * MBIT  # ... 45% lost: 55% of 60M, below 75% of it
    assert not c.starting and c.known == 33 * MBIT and c.period_length == RATE_PERIOD
    c = controller(40 * MBIT)
    c.report(0, 1000)
    assert c.report(1000, 0) == 30 * MBIT  # half at most


def test_a_session_that_never_rose_cuts_by_a_quarter_at_most() -> None:
    # At its ceiling from the first packet (a --rate, the lab's pinned rate):
    # no rise overshot, so a loss is cut as in the steady state.
    c = RateController(95 * MBIT, 1 * MBIT, 95 * MBIT)
    assert c.report(1000, 0) == 71_250_000


def test_one_percent_loss_is_not_congestion() -> None:
    c = controller()
    assert c.report(10, 990) == 75 * MBIT  # a new receiver: baseline 0, 1% is within MARGIN
    assert not congested(40, 3960, 0.0)


def test_loss_above_the_baseline_cuts_to_what_the_receiver_got_then_holds() -> None:
    c = steady()
    assert c.report(200, 800) == 40 * MBIT  # 20% lost: 80% of 50M
    assert c.report(200, 800) == 40 * MBIT  # the period after a cut holds
    assert c.known == 40 * MBIT
    assert c.report(0, 1000) == 40 * MBIT + 50 * MBIT * ADDITIVE_PERCENT // 100  # above it


def test_a_steady_cut_leaves_at_least_three_quarters() -> None:
    c = steady()
    assert c.report(1000, 0) == 37_500_000
    assert c.known == 1 * MBIT  # what the receiver got, within the bounds
    c = steady(1_200_000)
    assert c.report(1000, 0) == 1 * MBIT  # and never below the minimum


def test_below_the_known_capacity_the_rate_climbs_halfway_back_each_period() -> None:
    c = steady(20 * MBIT, capacity=60 * MBIT)
    assert [c.report(0, 1000) for _ in range(3)] == [40 * MBIT, 50 * MBIT, 55 * MBIT]


def test_above_the_known_capacity_probes_double_every_other_period_and_stop_growing() -> None:
    c = RateController(10 * MBIT, 1 * MBIT, 1000 * MBIT)  # steps of 0.5M at least
    c.starting, c.known = False, 100 * MBIT
    c._rate = 100 * MBIT
    c.ceiling = 200 * MBIT
    rates = [100 * MBIT]
    for _ in range(2 * MAX_PROBE_DOUBLINGS + 4):
        rates.append(c.report(0, 1000))
    assert rates[2] == rates[1]  # a probe is watched for a period before the next
    steps = [(b - a) / a for a, b in zip(rates, rates[1:], strict=False) if a < b < 200 * MBIT]
    assert steps[:3] == pytest.approx([0.01, 0.02, 0.04], abs=1e-6)
    assert max(steps) <= PROBE_PERCENT / 100 * 2**MAX_PROBE_DOUBLINGS + 1e-9
    assert rates[-1] == 200 * MBIT
    c.report(300, 700)  # congestion: probes start small again
    c.report(0, 1000)  # the hold
    before = c.rate
    assert c.report(0, 1000) == before * (100 + PROBE_PERCENT) // 100


def test_a_period_the_host_held_packets_back_does_not_rise() -> None:
    """The sender's own link is full (its host's queue held packets back):
    a rise would send no more, below the known capacity or above it."""
    for c in (steady(20 * MBIT, capacity=60 * MBIT), steady(60 * MBIT, capacity=60 * MBIT)):
        before = c.rate
        assert [c.period({1: (0, 1000)}, host_limited=True) for _ in range(3)] == [before] * 3
        assert c.period({1: (0, 1000)}) > before  # the host lets go: it rises again


def test_a_start_the_host_holds_back_ends_at_its_rate() -> None:
    """Not at what the slowest receiver got while it rose: a receiver short of
    CPU reports little for a period, and the link is the host's anyway."""
    c = RateController(40 * MBIT, 1 * MBIT, 1000 * MBIT, packet_bits=PACKET_BITS)
    assert c.period({1: (0, 1000)}, 0.1) == 60 * MBIT
    assert c.period({1: (0, 100)}, 0.1, host_limited=True) == 60 * MBIT  # got 12 Mbit/s
    assert not c.starting and c.known == 60 * MBIT


def test_congestion_cuts_whether_or_not_the_host_held_packets_back() -> None:
    """A bottleneck beyond the host still cuts: the host's queue says nothing
    of the path past it."""
    c = steady(60 * MBIT, capacity=60 * MBIT)
    assert c.period({1: (300, 700)}, host_limited=True) < 60 * MBIT
    assert c.limiting == 1


def test_rises_are_at_least_a_share_of_the_initial_rate_so_sessions_converge() -> None:
    # Two sessions of one SN on one path, left unequal by their first cuts:
    # steps of a share of each one's own rate would keep them unequal.
    small, large = controller(50 * MBIT), controller(50 * MBIT)
    for c, rate in ((small, 10 * MBIT), (large, 40 * MBIT)):
        c.starting, c.known, c._rate = False, rate, rate
    assert small.report(0, 1000) - 10 * MBIT == large.report(0, 1000) - 40 * MBIT
    assert small.rate - 10 * MBIT == 50 * MBIT * ADDITIVE_PERCENT // 100


@settings(max_examples=3, deadline=None)
@given(st.integers(0, 2**32))
def test_sessions_sharing_a_path_converge_to_equal_shares(seed: int) -> None:
    rng = random.Random(seed)
    link = 80 * MBIT
    cs = [RateController(95 * MBIT, 1 * MBIT, 95 * MBIT, packet_bits=PACKET_BITS) for _ in range(2)]
    for c, rate in zip(cs, (10 * MBIT, 60 * MBIT), strict=True):
        c.starting, c.known, c._rate = False, rate, rate
    shares: list[list[int]] = [[], []]
    for _ in range(120):  # 60 s of periods
        total = sum(c.rate for c in cs)
        over = max(0.0, 1 - link / total)
        for c, share in zip(cs, shares, strict=True):
            sent = int(c.rate * PERIOD / PACKET_BITS)
            got = sum(1 for _ in range(sent) if rng.random() >= over + 0.01)
            share.append(c.rate)
            c.period({1: (sent - got, got)}, PERIOD)
    late = [sum(s[60:]) / len(s[60:]) for s in shares]  # the last 30 s
    assert 0.75 <= late[0] / late[1] <= 1.33
    assert sum(late) >= 0.85 * link


def test_a_probe_that_congests_is_cut_in_the_period_that_watches_it() -> None:
    c = steady(50 * MBIT, capacity=50 * MBIT)
    probed = c.report(0, 1000)
    assert probed > 50 * MBIT
    assert c.report(100, 900) < probed


def test_the_baseline_is_the_lowest_recent_loss_and_raises_the_cut_threshold() -> None:
    c = RateController(50 * MBIT, 1 * MBIT, 1000 * MBIT)
    c.starting, c.known = False, 50 * MBIT
    for _ in range(10):
        c.report(40, 960)  # 4% random loss: cuts at first, then learned
    learned = 0.04 + BASELINE_SD * math.sqrt(0.04 * 0.96 / 1000)  # a little up: a sample
    assert c.baseline(None) == pytest.approx(learned)
    rate = c.rate
    rates = [c.report(40, 960) for _ in range(2)]
    assert max(rates) > rate and min(rates) >= rate  # 4% against a 4% baseline: raise
    before = c.rate
    c.report(200, 800)  # 20%: congestion on top of 4%
    assert c.rate == int(before * 0.8 / (1 - learned))


def test_small_samples_do_not_drag_the_baseline_below_the_true_loss() -> None:
    # 5% random loss in 0.1 s samples of 800 packets, then 0.5 s ones: the
    # lowest of them used to be taken for the loss, and 5% then read as congestion.
    rng = random.Random(7)
    c = RateController(50 * MBIT, 1 * MBIT, 1000 * MBIT)
    c.starting = False
    for total in [800] * 6 + [4000] * 14:
        lost = sum(1 for _ in range(total) if rng.random() < 0.05)
        c.period({1: (lost, total - lost)})
    assert c.baseline(1) >= 0.048


def test_the_baseline_never_exceeds_its_cap() -> None:
    c = controller()
    for _ in range(30):
        c.report(500, 500)
    assert c.baseline(None) == BASELINE_CAP


def test_the_slowest_receiver_limits_and_others_do_not() -> None:
    c = steady()
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


def test_small_rates_still_increase() -> None:
    assert RateController(5, 1, 10).report(0, 100) == 7
    c = RateController(5, 1, 10)
    c.starting, c.known = False, 5
    assert c.report(0, 100) == 6  # 1% of 5 bit/s rounds to nothing: one bit/s


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
        before, starting = c.rate, c.starting
        rate = c.period(reports)
        assert minimum <= rate <= maximum
        share = 2 if starting else 4 / 3  # the start's cut halves at most, later ones 25%
        assert rate >= min(before, max(minimum, int(before / share)))
        assert rate <= max(before + 1, 2 * before)  # rises double at most


def simulate(
    link: float | list[float],
    random_loss: float,
    receivers: int,
    seconds: float,
    seed: int,
    maximum: int,
    initial: int | None = None,
) -> tuple[list[float], list[int], list[float]]:
    """A Clock-driven session against a bottleneck of ``link`` bit/s (or one
    rate per second of the run): every period, of the controller's length,
    what the rate sends beyond the link is dropped for every receiver (a
    full queue before the replication), then each receiver loses
    ``random_loss`` at random. Each period's reports tell of the period
    before (the feedback delay). Returns the periods' ends, the rate of
    each period, and the share of each period's packets the bottleneck
    dropped."""
    clock = task.Clock()
    rng = random.Random(seed)
    c = RateController(initial or maximum, maximum // 100, maximum, packet_bits=PACKET_BITS)
    times: list[float] = []
    rates: list[int] = []
    overflow: list[float] = []
    pending: dict[int, tuple[int, int]] = {}

    def capacity(now: float) -> float:
        if isinstance(link, list):
            return link[min(int(now), len(link) - 1)]
        return link

    def one_period() -> None:
        length = c.period_length
        now = clock.seconds()
        sent = int(c.rate * length / PACKET_BITS)
        fits = min(sent, int(capacity(now) * length / PACKET_BITS))
        reports = dict(pending)
        pending.clear()
        for r in range(receivers):
            # binomial(fits, random_loss) lost, by its normal approximation
            mean = fits * random_loss
            lost = round(rng.gauss(mean, math.sqrt(mean * (1 - random_loss)))) if mean else 0
            got = fits - min(fits, max(0, lost))
            pending[r] = (sent - got, got)
        times.append(now)
        rates.append(c.rate)
        overflow.append(1 - fits / sent if sent else 0.0)
        if reports:
            c.period(reports, length)
        clock.callLater(c.period_length, one_period)

    clock.callLater(c.period_length, one_period)
    while clock.seconds() < seconds:
        clock.advance(min(c.period_length, START_PERIOD))
    return times, rates, overflow


def after(times: list[float], values: list[Any], t: float) -> list[Any]:
    return [v for when, v in zip(times, values, strict=True) if when >= t]


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2**32))
def test_constant_one_percent_random_loss_at_eight_receivers_keeps_the_rate_near_max(
    seed: int,
) -> None:
    maximum = 95 * MBIT
    times, rates, _ = simulate(10**12, 0.01, 8, 30, seed, maximum)
    assert min(rates) >= 0.8 * maximum
    assert sum(rates) / len(rates) >= 0.95 * maximum


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2**32), st.sampled_from([0.0, 0.01]))
def test_a_link_too_slow_brings_the_rate_to_its_rate_within_a_few_seconds(
    seed: int, random_loss: float
) -> None:
    maximum = 95 * MBIT
    link = 76 * MBIT  # 20% of what the maximum sends is lost
    times, rates, _ = simulate(link, random_loss, 8, 30, seed, maximum)
    assert rates[2] <= link * 1.02  # the first reports already cut to it
    later = after(times, rates, 3.0)  # around the link's rate, probing just above it
    assert max(later) <= link * 1.15
    assert sum(later) / len(later) >= 0.9 * link


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2**32), st.sampled_from([0.0, 0.01, 0.05]))
def test_the_shipped_settings_find_a_100_mbit_link_and_hold_it(
    seed: int, random_loss: float
) -> None:
    # etc/mcp2p.ini: start at 100M, up to 1G; the lab's star: 100 Mbit/s links.
    link = 100 * MBIT
    times, rates, overflow = simulate(link, random_loss, 8, 30, seed, 1000 * MBIT, 100 * MBIT)
    assert max(rates) <= 2 * link  # the start overshoots twice the link at most
    later = after(times, rates, 3.0)
    assert sum(later) / len(later) >= 0.95 * link  # the link is used ...
    assert max(later) <= 1.12 * link  # ... and never flooded again
    # at most 4% dropped, with reports a whole period late (in the lab: about a fifth)
    assert sum(after(times, overflow, 3.0)) / len(later) <= 0.04


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2**32))
def test_a_fast_link_is_reached_from_the_shipped_start_within_two_seconds(seed: int) -> None:
    # Reports a period late: a doubling is seen only in the period after next,
    # so the rise bounded by twice what receivers got doubles every 0.4 s.
    times, rates, _ = simulate(10**12, 0.0, 2, 5, seed, 1000 * MBIT, 100 * MBIT)
    assert after(times, rates, 1.6)[0] >= 0.99 * 1000 * MBIT


@settings(max_examples=3, deadline=None)
@given(st.integers(0, 2**32))
def test_a_link_that_slows_and_frees_up_is_followed(seed: int) -> None:
    link = [100 * MBIT] * 10 + [50 * MBIT] * 10 + [100 * MBIT] * 10
    times, rates, _ = simulate(link, 0.01, 4, 30, seed, 1000 * MBIT, 100 * MBIT)
    slow = after(times, rates, 13.0)
    slow = slow[: len(slow) - len(after(times, rates, 20.0))]
    assert 0.85 * 50 * MBIT <= sum(slow) / len(slow) <= 1.1 * 50 * MBIT
    freed = after(times, rates, 27.0)  # found again within 7 s: probes every other period
    assert sum(freed) / len(freed) >= 0.9 * 100 * MBIT


def test_no_loss_never_raises_the_rate_past_the_ceiling() -> None:
    # The bug users saw: --rate 2M, and the rate rose by 5% of 1G every period.
    c = RateController(2 * MBIT, 1 * MBIT, 1000 * MBIT, ceiling=2 * MBIT)
    assert [c.report(0, 1000) for _ in range(20)] == [2 * MBIT] * 20


def test_increases_are_a_share_of_the_initial_rate_not_of_the_ceiling() -> None:
    # 5% of a 1G ceiling was 50M a period: half of a 100 Mbit/s path.
    c = RateController(50 * MBIT, 1 * MBIT, 1000 * MBIT)
    c.starting, c.known = False, 50 * MBIT
    assert c.report(0, 1000) == 52_500_000


def test_a_lower_ceiling_cuts_at_once_and_a_higher_one_lets_the_rate_climb_back() -> None:
    c = controller(80 * MBIT)
    c.ceiling = 20 * MBIT
    assert c.rate == 20 * MBIT
    assert c.report(0, 1000) == 20 * MBIT
    c.ceiling = 100 * MBIT
    assert c.rate == 20 * MBIT  # not at once: the receivers never took more than 20M
    assert [c.report(0, 1000) for _ in range(5)] == [
        30 * MBIT,
        45 * MBIT,
        67_500_000,
        100 * MBIT,
        100 * MBIT,
    ]


def test_the_ceiling_is_clamped_to_minimum_and_maximum() -> None:
    c = controller()
    c.ceiling = 1000
    assert c.ceiling == c.rate == 1 * MBIT  # below the minimum: the minimum
    assert c.report(1000, 0) == 1 * MBIT
    c.ceiling = 10**12
    assert c.ceiling == 100 * MBIT


def test_a_cut_below_the_ceiling_recovers_up_to_the_ceiling_only() -> None:
    c = RateController(10 * MBIT, 1 * MBIT, 1000 * MBIT, ceiling=10 * MBIT)
    c.starting = False
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


def test_a_joining_receivers_losses_neither_cut_nor_teach_a_baseline() -> None:
    c = RateController(50 * MBIT, 1 * MBIT, 1000 * MBIT, packet_bits=PACKET_BITS)
    c.starting, c.known = False, 50 * MBIT
    # Everything sent before it joined is reported lost: no cut ...
    assert c.period({1: (900, 100)}, 0.1, joining=[1]) == 50 * MBIT
    # ... and the 0% of the periods it joined in is not its random loss.
    for _ in range(3):
        c.period({1: (0, 5000)}, 0.1, joining=[1])
    assert c.baseline(1) == 0.0 and not c._history
    c.period({1: (50, 950)})
    assert c.baseline(1) == pytest.approx(0.05 + BASELINE_SD * math.sqrt(0.05 * 0.95 / 1000))
