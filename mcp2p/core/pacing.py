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

    def _refill(self, now: float) -> None:
        if self.stamp is not None and now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        if self.stamp is None or now > self.stamp:
            self.stamp = now

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
