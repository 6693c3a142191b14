"""The RFC 2974 interval rule and cache timeout."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp2p.core.sapinterval import (
    announcement_interval,
    cache_timeout,
    equilibrium_phase,
    jittered,
)


def test_interval_floor_is_min_interval() -> None:
    assert announcement_interval(500, 1) == 300.0
    assert announcement_interval(500, 0) == 300.0


def test_interval_grows_with_ads_and_size() -> None:
    # 1000 ads of 600 bytes share 4000 bit/s: each repeats every 1200 s.
    assert announcement_interval(600, 1000) == pytest.approx(1200.0)
    assert announcement_interval(600, 1000, bandwidth_limit_bps=8000) == pytest.approx(600.0)
    assert announcement_interval(600, 10, min_interval=1.0) == pytest.approx(12.0)


@given(
    st.integers(1, 4000),
    st.integers(1, 100000),
    st.floats(100, 1e9),
    st.floats(0, 1e5),
)
def test_scope_stays_under_limit(size: int, ads: int, limit: float, floor: float) -> None:
    interval = announcement_interval(size, ads, limit, floor)
    assert interval >= floor
    # ads equal ads repeated at this interval send at most `limit` bit/s.
    assert ads * size * 8 / interval <= limit * (1 + 1e-9)


@pytest.mark.parametrize(
    "args",
    [(-1, 1, 4000, 300), (1, -1, 4000, 300), (1, 1, 0, 300), (1, 1, 4000, -1)],
)
def test_interval_refuses_nonsense(args: tuple[int, int, float, float]) -> None:
    with pytest.raises(ValueError):
        announcement_interval(*args)


@given(st.floats(0, 1e6), st.integers(0, 2**32))
def test_jitter_within_a_third(interval: float, seed: int) -> None:
    value = jittered(interval, random.Random(seed))
    assert interval * 2 / 3 - 1e-9 <= value <= interval * 4 / 3 + 1e-9


def test_jitter_is_spread_and_centred() -> None:
    rng = random.Random(1)
    values = [jittered(300.0, rng) for _ in range(5000)]
    assert min(values) < 205 and max(values) > 395
    assert sum(values) / len(values) == pytest.approx(300.0, rel=0.02)


def test_cache_timeout() -> None:
    assert cache_timeout(300.0) == 3600.0
    assert cache_timeout(1200.0) == 12000.0
    assert cache_timeout(10.0, floor=60.0) == 100.0


def test_equilibrium_phase_shape() -> None:
    assert equilibrium_phase(0.0) == 0.0
    assert equilibrium_phase(0.5) == 0.5  # flat density up to 2/3
    assert equilibrium_phase(2 / 3) == pytest.approx(2 / 3)
    assert equilibrium_phase(1.0) == pytest.approx(4 / 3)
    with pytest.raises(ValueError):
        equilibrium_phase(1.5)


def test_equilibrium_phase_is_the_renewal_forward_time() -> None:
    # The mean time to the next event of a renewal process with gaps X seen
    # at a random moment is E[X^2] / 2E[X]; for X uniform on [2/3, 4/3]: 14/27.
    n = 20000
    values = [equilibrium_phase((i + 0.5) / n) for i in range(n)]
    assert sum(values) / n == pytest.approx(14 / 27, rel=1e-3)
    assert values == sorted(values)
