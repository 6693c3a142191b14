"""A session's sending rate, adapted from receivers' loss reports (DESIGN.md 5.6).

AIMD within configured bounds: a report with more than 5% loss cuts the
rate to 85%; one with less than 2% loss adds 5% of the maximum; in
between the rate holds. Random loss of a percent or so (a lossy link, not
a full queue) must not read as congestion: with eight receivers and the
rate steered by the worst one, thresholds at 2% and 0.5% cut the rate on
every unlucky period and never raised it again (measured: fetches through
1% loss stalled). A full queue drops far more than 5%. Rates are integers
in bit/s.

Pure: no Twisted, no clock; the caller decides how often to report.
"""

from __future__ import annotations

# Loss thresholds as fractions lost / (lost + received), in per mille.
DECREASE_ABOVE_PERMILLE = 50  # > 5%
INCREASE_BELOW_PERMILLE = 20  # < 2%
DECREASE_PERCENT = 85  # new rate = 85% of the old
INCREASE_PERCENT_OF_MAX = 5  # new rate = old + 5% of the maximum


def _check_rate(field: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{field} must be a positive integer (bit/s), got {value!r}")
    return value


class RateController:
    def __init__(self, initial: int, minimum: int, maximum: int) -> None:
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
        self._step = max(1, maximum * INCREASE_PERCENT_OF_MAX // 100)

    @property
    def rate(self) -> int:
        """The current rate in bit/s."""
        return self._rate

    def report(self, lost: int, received: int) -> int:
        """Take one report (packets lost and received since the last); the new rate.

        A report of nothing (0 and 0) changes nothing.
        """
        for field, value in (("lost", lost), ("received", received)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{field} must be a non-negative integer, got {value!r}")
        total = lost + received
        if total == 0:
            return self._rate
        if lost * 1000 > DECREASE_ABOVE_PERMILLE * total:
            self._rate = max(self.minimum, self._rate * DECREASE_PERCENT // 100)
        elif lost * 1000 < INCREASE_BELOW_PERMILLE * total:
            self._rate = min(self.maximum, self._rate + self._step)
        return self._rate
