"""TokenBucket: the answer rate limit and the data pacer share this arithmetic."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp2p.core.pacing import Pacer, TokenBucket


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0), (1, 0.5)])
def test_bad_arguments(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


def test_starts_full_and_empties() -> None:
    bucket = TokenBucket(rate=10, burst=3)
    assert [bucket.take(5.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.available(5.0) == 0


def test_refills_at_rate() -> None:
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    for _ in range(3):
        assert bucket.take(0.0)
    assert not bucket.take(0.05)  # half a token
    assert bucket.available(0.05) == pytest.approx(0.5)
    assert bucket.take(0.1)
    assert not bucket.take(0.1)


def test_refill_is_capped_at_burst() -> None:
    bucket = TokenBucket(rate=100, burst=5, now=0.0)
    bucket.take(0.0, 5)
    assert bucket.available(1000.0) == 5


def test_constructor_time_starts_the_clock() -> None:
    bucket = TokenBucket(rate=1, burst=2, now=10.0)
    assert bucket.take(10.0, 2)
    assert bucket.available(11.0) == pytest.approx(1.0)


def test_first_call_starts_the_clock_when_none_given() -> None:
    bucket = TokenBucket(rate=1, burst=2)
    assert bucket.take(1000.0, 2)  # no refill from time 0: still just the burst
    assert not bucket.take(1000.0)
    assert bucket.stamp == 1000.0


def test_failed_take_takes_nothing() -> None:
    bucket = TokenBucket(rate=1, burst=4, now=0.0)
    assert not bucket.take(0.0, 5)
    assert bucket.available(0.0) == 4
    assert bucket.take(0.0, 2.5)
    assert bucket.available(0.0) == pytest.approx(1.5)


def test_time_going_backwards_adds_nothing() -> None:
    bucket = TokenBucket(rate=10, burst=2, now=5.0)
    bucket.take(5.0, 2)
    assert bucket.available(4.0) == 0
    assert bucket.stamp == 5.0  # the clock does not move back either
    assert bucket.available(5.1) == pytest.approx(1.0)


def test_wait_for() -> None:
    bucket = TokenBucket(rate=4, burst=2, now=0.0)
    assert bucket.wait_for(0.0) == 0.0
    bucket.take(0.0, 2)
    assert bucket.wait_for(0.0) == pytest.approx(0.25)
    assert bucket.wait_for(0.0, 2) == pytest.approx(0.5)
    assert bucket.wait_for(0.1) == pytest.approx(0.15)
    assert bucket.take(0.25 + 1e-9)


@given(
    st.floats(0.1, 1000),
    st.integers(1, 50),
    st.lists(st.tuples(st.floats(0, 2), st.floats(0.1, 5)), max_size=60),
)
def test_never_more_than_burst_plus_rate_times_time(
    rate: float, burst: int, steps: list[tuple[float, float]]
) -> None:
    bucket = TokenBucket(rate, burst, now=0.0)
    now = 0.0
    taken = 0.0
    for dt, n in steps:
        now += dt
        before = bucket.available(now)
        assert 0 <= before <= burst
        if bucket.take(now, n):
            taken += n
            assert bucket.available(now) == pytest.approx(before - n)
        else:
            assert n > before
            assert bucket.available(now) == before
        assert taken <= burst + rate * now + 1e-6


@given(st.floats(0.1, 1000), st.integers(1, 50), st.floats(0, 10), st.floats(0.1, 1))
def test_waiting_as_told_is_enough(rate: float, burst: int, start: float, fraction: float) -> None:
    bucket = TokenBucket(rate, burst, now=0.0)
    bucket.take(0.0, burst)
    n = max(1.0, burst * fraction)
    wait = bucket.wait_for(start, n)
    assert wait >= 0
    assert bucket.take(start + wait * (1 + 1e-9) + 1e-9, n)


def test_empty_until_gives_no_tokens_before_then_and_fills_after() -> None:
    from mcp2p.core.pacing import TokenBucket

    b = TokenBucket(rate=1000, burst=5000, now=0.0)
    assert b.available(0.0) == 5000
    b.empty_until(1.0)
    assert b.available(0.5) == 0
    assert b.available(1.0) == 0
    assert b.available(1.5) == 500


def test_set_rate_counts_what_was_earned_at_the_old_rate() -> None:
    bucket = TokenBucket(rate=10, burst=100, now=0.0)
    bucket.take(0.0, 100)
    bucket.set_rate(2.0, rate=1000, burst=100)  # 2 s at 10/s: 20 tokens, not 2000
    assert bucket.available(2.0) == pytest.approx(20)
    assert bucket.available(2.01) == pytest.approx(30)


def test_set_rate_drops_tokens_above_the_new_burst() -> None:
    # Slowed from a fast rate: the fast rate's full bucket must not be spent at the slow one.
    bucket = TokenBucket(rate=1_000_000, burst=100_000, now=0.0)
    bucket.set_rate(0.0, rate=1000, burst=50)
    assert bucket.available(0.0) == 50
    assert bucket.available(10.0) == 50


def test_set_rate_during_empty_until_keeps_the_bucket_empty() -> None:
    bucket = TokenBucket(rate=1000, burst=5000, now=0.0)
    bucket.empty_until(1.0)
    bucket.set_rate(0.5, rate=100, burst=50)
    assert bucket.available(0.9) == 0
    assert bucket.available(1.1) == pytest.approx(10)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-5, 10), (10, 0.5)])
def test_set_rate_validates(rate: float, burst: float) -> None:
    bucket = TokenBucket(rate=10, burst=10, now=0.0)
    with pytest.raises(ValueError):
        bucket.set_rate(1.0, rate, burst)
    assert (bucket.rate, bucket.burst) == (10, 10)


@given(
    st.lists(st.floats(0.01, 1000), min_size=1, max_size=20),
    st.lists(st.floats(0, 0.05), min_size=1, max_size=400),
    st.integers(0, 2**32),
)
def test_a_pacer_never_sends_more_than_one_burst_above_its_rates(
    rates: list[float], ticks: list[float], seed: int
) -> None:
    """A session's pacing loop: at each tick take whole packets while there are
    tokens; now and then the rate changes (burst = 20 ms of it, at least 2
    packets, as the session sizes it). What it took never exceeds one burst plus
    the integral of its rates."""
    import random

    rng = random.Random(seed)
    packet = 1.0

    def burst(rate: float) -> float:
        return max(rate * 0.02, 2 * packet)

    bucket = TokenBucket(rates[0], burst(rates[0]), now=0.0)
    now = allowed = taken = 0.0
    largest = burst(rates[0])
    for dt in ticks:
        allowed += bucket.rate * dt
        now += dt
        if rng.random() < 0.1:
            rate = rng.choice(rates)
            bucket.set_rate(now, rate, burst(rate))
            largest = max(largest, burst(rate))
        while bucket.take(now, packet):
            taken += packet
        assert taken <= allowed + largest + 1e-6


def test_charge_goes_into_debt_that_refills_pay_first() -> None:
    bucket = TokenBucket(100.0, 10.0, now=0.0)
    bucket.charge(0.0, 15.0)
    assert bucket.available(0.0) == -5.0
    assert not bucket.take(0.0, 1.0)
    assert bucket.available(0.1) == 5.0  # 10 earned, 5 of them owed
    assert bucket.wait_for(0.1, 10.0) == 0.05


# -- Pacer: the data pacer's bucket, which keeps what a late sender lost --------------


def _send_all(pacer: Pacer, ticks: list[float], size: float) -> list[tuple[float, float]]:
    """A backlogged sender: at each tick, every whole packet the pacer allows."""
    sent = []
    for now in ticks:
        pacer.refill(now, backlog=True)
        count = int(pacer.available(now) // size)
        if count:
            assert pacer.take(now, count * size)
        sent.append((now, count * size))
    return sent


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(st.just(0.002), st.floats(0.002, 0.02), st.floats(0.02, 0.12)),
        min_size=1,
        max_size=300,
    )
)
def test_a_late_backlogged_sender_keeps_its_average_and_a_bounded_peak(gaps: list[float]) -> None:
    """Ticks 2 ms apart with stalls of up to 120 ms, then 0.5 s on time: never
    more than the rate on average, never less than the plain bucket sends,
    all of the rate when the stalls' overflow fits in the arrears; and in no
    window more than (1 + catchup) x the rate, plus the burst and the allowance."""
    rate, burst, size = 1_000_000.0, 20_000.0, 1_000.0  # 20 ms of the rate saved
    arrears, catchup = 0.1, 0.25
    pacer = Pacer(rate, burst, 0.0, arrears=arrears, catchup=catchup)
    pacer.take(0.0, burst)  # empty at the start
    ticks, now = [], 0.0
    for gap in gaps:
        now += gap
        ticks.append(now)
    ticks += [now + 0.002 * (i + 1) for i in range(250)]  # 0.5 s on time
    sent = _send_all(pacer, ticks, size)
    total = sum(n for _, n in sent)
    end = ticks[-1]
    assert total <= rate * end + size  # never above the rate on average
    # never below what the plain bucket (BURST only) would have sent
    plain = TokenBucket(rate, burst, 0.0)
    plain.take(0.0, burst)
    plain_total = 0.0
    for t in ticks:
        count = int(plain.available(t) // size)
        if count:
            plain.take(t, count * size)
        plain_total += count * size
    assert total >= plain_total
    # and all of the rate, when the stalls lost no more than the arrears hold
    overflow = sum(max(0.0, gap * rate - burst) for gap in gaps)
    if overflow <= arrears * rate:
        assert total >= rate * end - 2 * size - burst
    for i, (start, _) in enumerate(sent):
        window = 0.0
        for t, n in sent[i:]:
            window += n
            assert window <= rate * (1 + catchup) * (t - start) + 2 * burst + size


def test_a_stall_is_paid_back_at_most_catchup_above_the_rate() -> None:
    rate, burst = 1_000_000.0, 20_000.0
    pacer = Pacer(rate, burst, 0.0, arrears=0.1, catchup=0.25)
    pacer.take(0.0, burst)
    pacer.refill(0.07, backlog=True)  # 70 ms late: 20 ms saved, 50 ms owed
    assert pacer.owed == pytest.approx(50_000)
    assert pacer.available(0.07) == pytest.approx(20_000 + 17_500)  # + the allowance so far
    assert pacer.take(0.07, pacer.available(0.07))
    # from then on 1.25 x the rate until the 50 ms are paid: 200 ms
    spent = 0.0
    for i in range(1, 101):
        now = 0.07 + 0.002 * i
        pacer.refill(now, backlog=True)
        n = pacer.available(now)
        assert pacer.take(now, n)
        spent += n
    assert spent == pytest.approx(0.2 * rate * 1.25 - 17_500, rel=0.01)
    assert pacer.owed == pytest.approx(0.0, abs=1)


def test_an_idle_sender_owes_nothing() -> None:
    """Time with nothing to send is not late time: arrears are forgotten, and
    the pacer is the plain bucket."""
    pacer = Pacer(1000.0, 20.0, 0.0, arrears=1.0, catchup=1.0)
    plain = TokenBucket(1000.0, 20.0, 0.0)
    for now in (0.5, 0.51, 2.0, 2.3):
        pacer.refill(now, backlog=False)
        assert pacer.owed == 0
        assert pacer.available(now) == plain.available(now)
        assert pacer.take(now, 15) == plain.take(now, 15)
    pacer.refill(3.0, backlog=True)
    assert pacer.owed > 0
    pacer.refill(3.1, backlog=False)  # it had nothing to send after all
    assert pacer.owed == 0


def test_forgive_empty_until_and_a_new_rate_bound_what_is_owed() -> None:
    pacer = Pacer(1000.0, 20.0, 0.0, arrears=0.5, catchup=0.5)
    pacer.refill(1.0, backlog=True)
    assert pacer.owed == pytest.approx(500)  # capped at 0.5 s of the rate
    pacer.set_rate(1.0, 100.0, 2.0)
    assert pacer.owed == pytest.approx(50) and pacer.allowance <= 2.0
    pacer.forgive()
    assert pacer.available(1.0) == 0 and pacer.owed == 0
    pacer.refill(2.0, backlog=True)
    pacer.empty_until(3.0)
    assert pacer.available(3.0) == 0 and pacer.owed == 0
    with pytest.raises(ValueError):
        Pacer(1.0, 1.0, arrears=-1)
