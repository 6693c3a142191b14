"""A session's sending rate, adapted from receivers' loss reports (DESIGN.md 5.6).

Random loss (a lossy link, 1% say) must not read as congestion, and a
multicast session must still slow down to its slowest receiver's path.
The caller collects each receiver's packets lost and received over one
period (RATE_PERIOD in the session, 0.5 s) and hands all of them to
`RateController.period` at once. For each receiver:

- its *baseline* is the random loss of its path: the lowest loss it showed
  over the last BASELINE_PERIODS periods, at most BASELINE_CAP. Sending
  above a bottleneck adds loss on top of the baseline; sending below it
  shows the baseline alone, so the minimum does not learn congestion.
- its loss in this period is *congestion* only when it is above the
  baseline by more than MARGIN plus Z standard deviations of a binomial
  sample of that size (a one-sided test: eight receivers at 1% random loss
  would otherwise, by chance, cut the rate every few periods).
- its *calculated rate* is what it received, scaled up for its random loss:
  rate x (1 - loss) / (1 - baseline). Past a bottleneck this is the
  bottleneck's rate.

As in TFMCC (RFC 4654, section 3: the sender follows the calculated rate of
the slowest receiver, the "current limiting receiver"), the session goes to
the lowest calculated rate of the receivers that saw congestion, but not
below MAX_CUT_PERCENT of the current rate in one step (TFRC, RFC 5348
section 4.3, at most halves per feedback; a period here is many LAN
round-trips, and a CN that stalls for want of CPU reports a whole period
lost, so one step is gentler), and then holds one period, because the
next period's reports still tell of the rate before the cut (one decrease per
feedback delay, RFC 5348 4.4). When no receiver saw congestion the rate
rises by INCREASE_PERCENT_OF_MAX of the ceiling. The baseline in place of
TFRC's loss event rate and its throughput equation: on a LAN the round-trip
time in that equation is tiny and unmeasured here, and the equation's rate
for 1% loss would be far above any link anyway.

The *ceiling* is the most the session may send: the users' ``--rate``
(DESIGN.md 5.6: a ceiling the SN honours), within [minimum, maximum]; the
caller sets it whenever its subscribers change. Rates are integers in bit/s,
always within [minimum, ceiling]: adaptation never probes above the ceiling,
and a lower ceiling takes effect at once. Pure: no Twisted, no clock; the
caller decides how long a period is.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Mapping
from typing import TypeVar

K = TypeVar("K", bound=Hashable)  # a receiver's key

BASELINE_PERIODS = 20  # periods a receiver's lowest loss is remembered (10 s at 0.5 s)
BASELINE_CAP = 0.10  # more loss than this is never taken for random loss
MARGIN = 0.01  # loss this far above the baseline (and Z sd) is congestion
Z = 3.0  # standard deviations of the period's sample
MIN_SAMPLE = 50  # packets a period needs for its loss to count towards a baseline
INCREASE_PERCENT_OF_MAX = 5  # new rate = old + 5% of the ceiling
MAX_CUT_PERCENT = 75  # one cut leaves at least 75% of the rate


def _check_rate(field: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{field} must be a positive integer (bit/s), got {value!r}")
    return value


def _check_count(field: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{field} must be a non-negative integer, got {value!r}")
    return value


def congested(lost: int, received: int, baseline: float) -> bool:
    """Whether ``lost`` of ``lost + received`` is significantly above ``baseline``."""
    total = lost + received
    if total == 0:
        return False
    loss = lost / total
    sd = math.sqrt(loss * (1 - loss) / total)
    return loss - baseline > MARGIN + Z * sd


class RateController:
    def __init__(
        self, initial: int, minimum: int, maximum: int, ceiling: int | None = None
    ) -> None:
        _check_rate("initial", initial)
        _check_rate("minimum", minimum)
        _check_rate("maximum", maximum)
        if not minimum <= initial <= maximum:
            raise ValueError(
                f"need minimum <= initial <= maximum, got {minimum}, {initial}, {maximum}"
            )
        self.minimum = minimum
        self.maximum = maximum
        self._rate = initial
        self._ceiling = maximum
        self._step = 1
        self.ceiling = maximum if ceiling is None else ceiling
        self._history: dict[Hashable, deque[float]] = {}  # receiver -> recent losses
        self._hold = False  # the period after a cut neither cuts nor raises
        self.limiting: Hashable | None = None  # the receiver of the last cut

    @property
    def rate(self) -> int:
        """The current rate in bit/s."""
        return self._rate

    @property
    def ceiling(self) -> int:
        """The most the rate may be, in bit/s: within [minimum, maximum]."""
        return self._ceiling

    @ceiling.setter
    def ceiling(self, value: int) -> None:
        """Bound the rate by ``value`` from now on, clamped to [minimum,
        maximum] (a ceiling below the minimum gives the minimum). A lower
        ceiling cuts the rate at once; a higher one lets it rise again by the
        usual steps, which are a share of the ceiling."""
        _check_rate("ceiling", value)
        self._ceiling = min(max(value, self.minimum), self.maximum)
        self._step = max(1, self._ceiling * INCREASE_PERCENT_OF_MAX // 100)
        self._rate = min(self._rate, self._ceiling)

    def baseline(self, receiver: Hashable) -> float:
        """``receiver``'s random loss as far as known (0 for a new one)."""
        history = self._history.get(receiver)
        if not history:
            return 0.0
        return min(min(history), BASELINE_CAP)

    def forget(self, receiver: Hashable) -> None:
        """``receiver`` is gone: its history must not outlive it."""
        self._history.pop(receiver, None)

    def period(self, reports: Mapping[K, tuple[int, int]]) -> int:
        """Take one period's ``{receiver: (lost, received)}``; the new rate.

        A period with no packets reported changes nothing.
        """
        for lost, received in reports.values():
            _check_count("lost", lost)
            _check_count("received", received)
        calculated: list[tuple[float, Hashable]] = []
        heard = False
        for receiver, (lost, received) in reports.items():
            total = lost + received
            if total == 0:
                continue
            heard = True
            baseline = self.baseline(receiver)
            if congested(lost, received, baseline):
                loss = lost / total
                calculated.append((self._rate * (1 - loss) / (1 - baseline), receiver))
            if total >= MIN_SAMPLE:
                history = self._history.setdefault(receiver, deque(maxlen=BASELINE_PERIODS))
                history.append(lost / total)
        if not heard:
            return self._rate
        if self._hold:
            self._hold = False
        elif calculated:
            slowest, self.limiting = min(calculated, key=lambda c: c[0])
            floor = max(self.minimum, self._rate * MAX_CUT_PERCENT // 100)
            self._rate = max(floor, min(self._rate, int(slowest)))
            self._hold = True
        else:
            self._rate = min(self._ceiling, self._rate + self._step)
        return self._rate

    def report(self, lost: int, received: int) -> int:
        """One receiver's period: ``period({None: (lost, received)})``."""
        return self.period({None: (lost, received)})
