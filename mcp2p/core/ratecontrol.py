"""A session's sending rate, adapted from receivers' loss reports (DESIGN.md 5.6).

Random loss (a lossy link, 1% say) must not read as congestion, and a
multicast session must still slow down to its slowest receiver's path.
The caller collects each receiver's packets lost and received over one
period (``period_length``: 0.1 s while starting, 0.5 s after) and hands all of them to
`RateController.period` at once. For each receiver:

- its *baseline* is the random loss of its path: the lowest loss it showed
  over the last BASELINE_PERIODS periods, at most BASELINE_CAP. Sending
  above a bottleneck adds loss on top of the baseline; sending below it
  shows the baseline alone, so the minimum does not learn congestion. Each
  period's loss counts BASELINE_SD standard deviations of its sample up:
  the lowest of twenty noisy samples, the start's short ones among them,
  is well below the true loss, and at 5% random loss that read as
  congestion for ten seconds, a cut every other period.
- its loss in this period is *congestion* only when it is above the
  baseline by more than MARGIN plus Z standard deviations of a binomial
  sample of that size (a one-sided test: eight receivers at 1% random loss
  would otherwise, by chance, cut the rate every few periods).
- its *calculated rate* is what it received, scaled up for its random loss:
  rate x (1 - loss) / (1 - baseline), or, where the caller says how long
  the period was and how large a packet is, the packets it received a
  second (so scaled) where that is more: the loss reported in a period is
  of the rates before, a period late. Past a bottleneck this is the
  bottleneck's rate.

As in TFMCC (RFC 4654, section 3: the sender follows the calculated rate of
the slowest receiver, the "current limiting receiver"), a session that saw
congestion goes to the lowest calculated rate of the receivers that saw it,
and then holds one period, because the next period's reports still tell of
the rate before the cut (one decrease per feedback delay, RFC 5348 4.4).

How the rate finds the path's capacity, and holds it:

- *Starting* (TFMCC's slowstart, RFC 4654 4.3): a new session raises its
  rate by START_GAIN_PERCENT every START_PERIOD, but never past twice what
  its slowest receiver received (when the caller says how long the period
  was and how large a packet is), until the first congestion. That first
  cut may halve the rate at once: overshooting, the calculated rate is the
  bottleneck's. Loss comes late, and every packet lost to an overshoot is
  one to send again, for every receiver: so the start rises by half, not
  TFMCC's double, and also ends, as BBR's startup does, when what the
  slowest receiver gets a second stops growing: a period in which it grew
  by less than FULL_GROWTH stops the rise, a second one ends the start
  there (at the most it got), with no loss needed.
- *Steady*: a later cut leaves at least MAX_CUT_PERCENT of the rate in one
  step (TFRC, RFC 5348 4.3, at most halves per feedback; a period here is
  many LAN round-trips, and a CN that stalls for want of CPU reports a
  whole period lost, so one step is gentler). The calculated rate of that
  cut is the path's capacity as last seen (``known``). Below it the rate
  climbs back halfway to it each period (a binary search: near it within a
  few periods, never past it by a climb); at or above it the rate probes
  by PROBE_PERCENT of itself, then twice that, and so on (1%, 2%, 4%, ...:
  it holds near a capacity it found, and finds a larger one in a few
  seconds when the path frees up), as BIC's max probing does. Each probe
  is followed by a period that may cut but not rise: the reports that tell
  of a probe come a period late, and a probe on top of one not yet seen
  would overshoot twice.
- *Held by the host*: a period in which the sender's own host held packets
  back (its interface's queue full: `transfer.hostqueue`) does not rise, and
  a start ends there at its rate. Where the sender's link is the bottleneck
  that queue, not loss, is what says the path is full: the rate stays, the
  queue stands, and no probe fills it until it drops.
- Every rise is at least ADDITIVE_PERCENT of the initial rate (or of a
  lower ceiling), the same for every session of the SN: sessions sharing a
  path (unicast CNs behind one link) then converge to equal shares, as
  AIMD does; rises that are only shares of each one's own rate kept them
  as unequal as their first cuts left them, and the lab's four unicast
  CNs took a fifth longer.

The steps are shares of the rate (or of the initial rate), not of the
ceiling: a session with a ceiling of 1 Gbit/s on a 100 Mbit/s path used to
step by 50 Mbit/s, half the path, every period. The baseline in place of TFRC's loss event rate
and its throughput equation: on a LAN the round-trip time in that equation
is tiny and unmeasured here, and the equation's rate for 1% loss would be
far above any link anyway.

The *ceiling* is the most the session may send: the users' ``--rate``
(DESIGN.md 5.6: a ceiling the SN honours), within [minimum, maximum]; the
caller sets it whenever its subscribers change. Rates are integers in bit/s,
always within [minimum, ceiling]: adaptation never probes above the ceiling,
and a lower ceiling takes effect at once. Pure: no Twisted, no clock; the
caller decides when a period ends (``period_length`` says how long it
should be).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Collection, Hashable, Mapping
from typing import TypeVar

K = TypeVar("K", bound=Hashable)  # a receiver's key

BASELINE_PERIODS = 20  # periods a receiver's lowest loss is remembered (10 s at 0.5 s)
BASELINE_CAP = 0.10  # more loss than this is never taken for random loss
MARGIN = 0.01  # loss this far above the baseline (and Z sd) is congestion
Z = 3.0  # standard deviations of the period's sample
BASELINE_SD = 2.0  # a period's loss goes into the baseline this many sd up
MIN_SAMPLE = 50  # packets a period needs for its loss to count towards a baseline
MAX_CUT_PERCENT = 75  # one cut leaves at least 75% of the rate (steady)
START_CUT_PERCENT = 50  # the cut that ends the start leaves at least half
PROBE_PERCENT = 1  # the first probe above the known capacity: 1% of the rate
# ... and every rise at least this share of the initial rate (or of a lower
# ceiling): the same step for every session of an SN, so that sessions that
# share a path converge to equal shares (AIMD), where rises proportional to
# each one's rate would keep them as unequal as the first cuts left them.
ADDITIVE_PERCENT = 5
MAX_PROBE_DOUBLINGS = 6  # probes grow to 64% of the rate a period at most
START_GAIN_PERCENT = 50  # while starting, the rate rises by half each period
FULL_GROWTH = 1.25  # the start ends when receipts grow by less than this, twice
MIN_SPAN = 0.05  # seconds of reports a receiver's receipts need to count as its rate
START_PERIOD = 0.1  # seconds of one period while starting: a CN reports every 0.1 s
RATE_PERIOD = 0.5  # seconds of one period after that


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
        self,
        initial: int,
        minimum: int,
        maximum: int,
        ceiling: int | None = None,
        packet_bits: int = 0,
    ) -> None:
        _check_rate("initial", initial)
        _check_rate("minimum", minimum)
        _check_rate("maximum", maximum)
        _check_count("packet_bits", packet_bits)
        if not minimum <= initial <= maximum:
            raise ValueError(
                f"need minimum <= initial <= maximum, got {minimum}, {initial}, {maximum}"
            )
        self.minimum = minimum
        self.maximum = maximum
        self.packet_bits = packet_bits  # bits a received packet stands for (0: unknown)
        self._rate = self._initial = initial
        self._ceiling = maximum
        self.ceiling = maximum if ceiling is None else ceiling
        self._history: dict[Hashable, deque[float]] = {}  # receiver -> recent losses
        self._hold = False  # the period after a cut neither cuts nor raises
        self._observe = False  # the period after a probe may cut, not rise
        self.starting = True  # rising by half each period until the path is full
        self._best = 0.0  # while starting: the most the slowest receiver got a second
        self._grown = 0.0  # ... as of its last growth by FULL_GROWTH
        self._flat = 0  # ... and the periods since that growth
        self.known: int | None = None  # the capacity the last cut found, bit/s
        self._probes = 0  # periods without congestion at or above ``known``
        self.limiting: Hashable | None = None  # the receiver of the last cut

    @property
    def rate(self) -> int:
        """The current rate in bit/s."""
        return self._rate

    @property
    def period_length(self) -> float:
        """Seconds the caller should let one period last: short while the
        start rises, not at the ceiling (a session pinned there from its first
        packet, whose losses, found later than its receipts, would make short
        periods of no loss and so a baseline of none)."""
        return START_PERIOD if self.starting and self._rate < self._ceiling else RATE_PERIOD

    @property
    def ceiling(self) -> int:
        """The most the rate may be, in bit/s: within [minimum, maximum]."""
        return self._ceiling

    @ceiling.setter
    def ceiling(self, value: int) -> None:
        """Bound the rate by ``value`` from now on, clamped to [minimum,
        maximum] (a ceiling below the minimum gives the minimum). A lower
        ceiling cuts the rate at once; a higher one lets it rise again by the
        usual steps."""
        _check_rate("ceiling", value)
        self._ceiling = min(max(value, self.minimum), self.maximum)
        self._rate = min(self._rate, self._ceiling)
        self._additive = max(1, min(self._initial, self._ceiling) * ADDITIVE_PERCENT // 100)

    def baseline(self, receiver: Hashable) -> float:
        """``receiver``'s random loss as far as known (0 for a new one)."""
        history = self._history.get(receiver)
        if not history:
            return 0.0
        return min(min(history), BASELINE_CAP)

    def forget(self, receiver: Hashable) -> None:
        """``receiver`` is gone: its history must not outlive it."""
        self._history.pop(receiver, None)

    def period(
        self,
        reports: Mapping[K, tuple[int, int]],
        seconds: float | Mapping[K, float] = 0.0,
        joining: Collection[K] = (),
        *,
        host_limited: bool = False,
    ) -> int:
        """Take one period's ``{receiver: (lost, received)}``; the new rate.

        ``seconds``: how long the period lasted, or for each receiver how
        long its reports of it span; with ``packet_bits`` it bounds a rise
        by twice what the slowest receiver received (0: no bound). Reports
        spanning less than MIN_SPAN measure no rate: a session's first
        report spanned 7 ms of its bucket's first burst and read as nearly
        twice the path's rate.
        ``joining``: receivers whose losses say nothing yet (what was sent
        before they joined): only what they received counts, and nothing
        of theirs goes into a baseline. A period with no packets reported
        changes nothing.
        ``host_limited``: the sender's own host held packets back in this
        period (its interface's queue was full): the path beyond is not what
        limits the rate, and no rise would send more, so there is none; a
        start ends there, at its rate (what the slowest receiver got while
        it rose would say less: one CN short of CPU for a period ended a
        start of the lab's eight at 81 Mbit/s on a 100 Mbit/s link).
        """
        for lost, received in reports.values():
            _check_count("lost", lost)
            _check_count("received", received)
        spans = seconds if isinstance(seconds, Mapping) else dict.fromkeys(reports, seconds)
        for span in spans.values():
            if not isinstance(span, (int, float)) or not 0 <= span < math.inf:
                raise ValueError(f"seconds must be non-negative numbers, got {span!r}")
        calculated: list[tuple[float, Hashable]] = []
        received_rate = math.inf  # the slowest receiver's, scaled up for its random loss
        heard = False
        for receiver, (lost, received) in reports.items():
            total = lost + received
            if total == 0:
                continue
            heard = True
            baseline = self.baseline(receiver)
            span = spans.get(receiver, 0.0)
            got = 0.0  # what it received a second, scaled up for its random loss
            if span >= MIN_SPAN and self.packet_bits:
                got = received * self.packet_bits / span / (1 - baseline)
                received_rate = min(received_rate, got)
            if receiver in joining:
                continue
            if congested(lost, received, baseline):
                # Its share of the rate, or what it received a second where that
                # is more: the share is of the rate now, the loss of the rates
                # before (a period late, and while starting the rate rose).
                loss = lost / total
                share = self._rate * (1 - loss) / (1 - baseline)
                calculated.append((min(self._rate, max(share, got)), receiver))
            if total >= MIN_SAMPLE:
                history = self._history.setdefault(receiver, deque(maxlen=BASELINE_PERIODS))
                loss = lost / total
                # the period's loss, less likely too low than too high: the
                # lowest of many small samples would be far below the truth
                history.append(loss + BASELINE_SD * math.sqrt(loss * (1 - loss) / total))
        if not heard:
            return self._rate
        if self._hold:
            self._hold = False
        elif calculated:
            self._cut(*min(calculated, key=lambda c: c[0]))
        elif self._observe:
            self._observe = False
        elif host_limited:
            if self.starting:  # the host's own link is full: the start is over here
                self.starting = False
                self.known = self._rate
                self._probes = 0
        elif self.starting and self._full(received_rate):
            pass
        else:
            self._raise(received_rate)
        return self._rate

    def _cut(self, slowest: float, receiver: Hashable) -> None:
        """Congestion: to the slowest receiver's calculated rate, within the
        step's floor; that rate is the capacity known from now on."""
        self.limiting = receiver
        # The start's rises may overshoot by half; a start that never rose (a
        # session at its ceiling from the first packet) did not.
        rose = self.starting and self._rate > self._initial
        share = START_CUT_PERCENT if rose else MAX_CUT_PERCENT
        floor = max(self.minimum, self._rate * share // 100)
        capacity = max(self.minimum, min(self._rate, int(slowest)))
        self.known = capacity
        self._rate = max(floor, capacity)
        self.starting = False
        self._probes = 0
        self._hold = True
        self._observe = False

    def _full(self, received_rate: float) -> bool:
        """Whether the path looks full while starting (then no rise): the
        slowest receiver's receipts stopped growing. The second such period
        ends the start at the most they were."""
        if received_rate == math.inf or self._rate >= self._ceiling:
            return False  # unmeasured, or kept from growing by the ceiling
        self._best = max(self._best, received_rate)
        if received_rate >= FULL_GROWTH * self._grown:
            self._grown, self._flat = received_rate, 0
            return False
        self._flat += 1
        if self._flat >= 2:
            # At the most they were: one CN behind on its socket for want of
            # CPU reports less one period and more the next, and the slowest of
            # eight such is often low. An exit too high is cut within a period
            # or two; one too low is climbed back by probes, over seconds.
            best = max(self.minimum, min(self._rate, int(self._best)))
            self.known = self._rate = best
            self.starting = False
            self._probes = 0
            self._hold = True
        return True

    def _raise(self, received_rate: float) -> None:
        """No congestion: rise by half while starting, else climb back to the
        known capacity or probe above it; never past the ceiling, nor past
        twice the slowest receiver's rate."""
        rate = self._rate
        if self.starting:
            step = rate * START_GAIN_PERCENT // 100
        elif self.known is not None and rate < self.known:
            gap = self.known - rate
            step = max((gap + 1) // 2, min(self._additive, gap))
        else:
            self._probes = min(self._probes + 1, MAX_PROBE_DOUBLINGS + 1)
            probe = rate * PROBE_PERCENT * (1 << (self._probes - 1)) // 100
            step = max(probe, self._additive)
            self._observe = probe >= self._additive
        new = min(self._ceiling, rate + max(1, step))
        if received_rate < math.inf:
            new = min(new, max(rate, int(2 * received_rate)))
        self._rate = new

    def report(self, lost: int, received: int, seconds: float = 0.0) -> int:
        """One receiver's period: ``period({None: (lost, received)}, seconds)``."""
        return self.period({None: (lost, received)}, seconds)
