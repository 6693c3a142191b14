"""The RFC 2974 section 3.1 announcement interval and section 4 cache timeout.

Pure arithmetic.  Every announcer in a SAP scope listens to the others and
spaces its own announcements so that the whole scope stays under one shared
bandwidth limit: with ``n`` announcements of ``s`` bytes each repeated every
``8*n*s/limit`` seconds, the scope sends ``limit`` bit/s on average.
"""

from __future__ import annotations

import math
import random

DEFAULT_BANDWIDTH_LIMIT_BPS = 4000
DEFAULT_MIN_INTERVAL = 300.0
DEFAULT_CACHE_FLOOR = 3600.0
JITTER_LOW = 2.0 / 3.0
JITTER_HIGH = 4.0 / 3.0


def announcement_interval(
    ad_size_bytes: int,
    ads_in_scope: int,
    bandwidth_limit_bps: float = DEFAULT_BANDWIDTH_LIMIT_BPS,
    min_interval: float = DEFAULT_MIN_INTERVAL,
) -> float:
    """Base interval in seconds: ``max(min_interval, 8*ads*size/limit)``."""
    if ad_size_bytes < 0:
        raise ValueError(f"ad_size_bytes must be >= 0, got {ad_size_bytes}")
    if ads_in_scope < 0:
        raise ValueError(f"ads_in_scope must be >= 0, got {ads_in_scope}")
    if not bandwidth_limit_bps > 0:
        raise ValueError(f"bandwidth_limit_bps must be > 0, got {bandwidth_limit_bps}")
    if not min_interval >= 0:
        raise ValueError(f"min_interval must be >= 0, got {min_interval}")
    return max(float(min_interval), 8.0 * ads_in_scope * ad_size_bytes / bandwidth_limit_bps)


def jittered(interval: float, rng: random.Random) -> float:
    """``interval`` plus the RFC's offset: uniform in [2/3, 4/3] of it."""
    return interval * rng.uniform(JITTER_LOW, JITTER_HIGH)


def equilibrium_phase(q: float) -> float:
    """Where, in intervals from now, a long-running announcer's next send falls.

    ``q`` is a quantile in [0, 1].  Repeats spaced by ``jittered`` intervals
    form a renewal process; the time to its next event, seen at a random
    moment, has density P(gap > t) / E[gap]: flat up to 2/3, then falling
    to zero at 4/3.  Starting each announcement at this phase makes a set of
    announcements send at its long-run rate from the first moment, instead
    of overshooting it while their jitters spread out.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    low, high = JITTER_LOW, JITTER_HIGH  # mean 1
    if q <= low:
        return q
    return high - math.sqrt(2.0 * (high - low) * (1.0 - q))


def cache_timeout(interval: float, floor: float = DEFAULT_CACHE_FLOOR) -> float:
    """How long an entry lives without a repeat: ten intervals, at least ``floor``."""
    return max(10.0 * interval, floor)
