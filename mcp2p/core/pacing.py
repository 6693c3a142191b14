"""Token-bucket arithmetic, shared by the answer rate limit and the data pacer."""

from __future__ import annotations


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; time is passed in."""

    def __init__(self, rate: float, burst: float, now: float | None = None) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def _refill(self, now: float) -> tuple[float, float]:
        """Earn up to ``now``: (tokens earned, of which lost to the ``burst`` cap)."""
        earned = lost = 0.0
        if self.stamp is not None and now > self.stamp:
            earned = (now - self.stamp) * self.rate
            total = self.tokens + earned
            lost = max(0.0, total - self.burst)
            self.tokens = min(self.burst, total)
        if self.stamp is None or now > self.stamp:
            self.stamp = now
        return earned, lost

    def take(self, now: float, n: float = 1.0) -> bool:
        """Take ``n`` tokens if there are that many; False (and nothing taken) if not."""
        self._refill(now)
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    def charge(self, now: float, n: float) -> None:
        """Take ``n`` tokens whether or not there are that many: a shortfall is
        a debt that the next refills pay first (the pacer's small extras, such
        as digest lists, that must go out at once but still count)."""
        self._refill(now)
        self.tokens -= n

    def available(self, now: float) -> float:
        self._refill(now)
        return self.tokens

    def set_rate(self, now: float, rate: float, burst: float) -> None:
        """From ``now`` on: ``rate`` tokens per second, at most ``burst`` saved.

        What was earned before ``now`` was earned at the old rate; tokens above
        the new ``burst`` are dropped, so a pacer slowed from a fast rate cannot
        spend the old rate's large burst at the new, small one.
        """
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._refill(now)
        self.rate = rate
        self.burst = float(burst)
        self.tokens = min(self.tokens, self.burst)

    def empty_until(self, when: float) -> None:
        """No tokens now, and none added before ``when``; from then on the
        bucket fills at ``rate`` again."""
        self.tokens = 0.0
        self.stamp = when

    def wait_for(self, now: float, n: float = 1.0) -> float:
        """Seconds until ``n`` tokens will be there (0 if they are now)."""
        self._refill(now)
        return max(0.0, (n - self.tokens) / self.rate)


class Pacer(TokenBucket):
    """The data pacer's bucket: a `TokenBucket` that also keeps what a late
    sender lost.

    A reactor that runs late (a busy CPU: the lab's star runs nine daemons on
    two cores) finds the bucket full: what the rate earned beyond ``burst``
    is lost, and the session's average falls below its rate. UFTP's sender
    keeps its average by sending back to back until it has caught up, however
    far behind it fell. Here, when a refill comes later than the bucket can
    hold (more than ``burst`` earned since the last) while the sender was
    backlogged (`refill` says so), the overflow is owed instead, up to
    ``arrears`` seconds of the rate, and is paid back at most ``catchup``
    times the rate above the rate: the average holds, and the excess a
    network sees is bounded (by ``catchup`` in rate, by ``arrears`` in
    bytes). A sender that had nothing to send owes nothing: idle time is not
    late time.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        now: float | None = None,
        *,
        arrears: float = 0.0,
        catchup: float = 0.0,
    ) -> None:
        if arrears < 0 or catchup < 0:
            raise ValueError("arrears and catchup must be >= 0")
        super().__init__(rate, burst, now)
        self.arrears = arrears  # seconds of the rate that may be owed at most
        self.catchup = catchup  # paid back at most this fraction of the rate above it
        self.owed = 0.0  # tokens earned beyond the burst while backlogged, not yet spent
        self.allowance = 0.0  # of which may be spent now: earned at catchup x rate

    def refill(self, now: float, backlog: bool) -> None:
        """Earn up to ``now``; ``backlog``: the sender had something to send
        all along (else what it did not spend is forgotten, and so are arrears)."""
        earned, lost = self._refill(now)
        if not backlog:
            self.owed = 0.0
        elif lost and earned > self.burst:  # late: the gap alone overflowed it
            self.owed = min(self.arrears * self.rate, self.owed + lost)
        self.allowance = min(self.burst, self.allowance + earned * self.catchup)

    def _extra(self) -> float:
        return min(self.owed, self.allowance) if self.owed > 0 else 0.0

    def available(self, now: float) -> float:
        self._refill(now)
        return self.tokens + self._extra()

    def take(self, now: float, n: float = 1.0) -> bool:
        self._refill(now)
        if self.tokens + self._extra() < n:
            return False
        spent = min(n, max(0.0, self.tokens))
        self.tokens -= spent
        rest = n - spent
        if rest > 0:
            self.owed -= rest
            self.allowance -= rest
        return True

    def forgive(self) -> None:
        """Nothing saved and nothing owed (a full send buffer: the host, not
        the reactor, is the limit, and catching up would only fill it)."""
        self.tokens = 0.0
        self.owed = self.allowance = 0.0

    def empty_until(self, when: float) -> None:
        super().empty_until(when)
        self.owed = self.allowance = 0.0

    def set_rate(self, now: float, rate: float, burst: float) -> None:
        super().set_rate(now, rate, burst)
        self.owed = min(self.owed, self.arrears * rate)
        self.allowance = min(self.allowance, burst)
