"""Token buckets per caller: ``rate`` requests a second on average, bursts up to ``burst``. Pure.

>>> limits = RateLimits(rate=1.0, burst=2)
>>> [limits.allow("k1", now=0.0) for _ in range(3)]
[True, True, False]
>>> limits.allow("k1", now=1.0), limits.allow("k2", now=1.0)
(True, True)
>>> round(limits.retry_after("k1", now=1.0), 3)
1.0
"""

from __future__ import annotations


class RateLimits:
    def __init__(self, rate: float, burst: int, max_callers: int = 100_000) -> None:
        self.rate, self.burst, self.max_callers = rate, float(burst), max_callers
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, at)

    def _tokens(self, caller: str, now: float) -> float:
        tokens, at = self._buckets.get(caller, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate)

    def allow(self, caller: str, now: float) -> bool:
        tokens = self._tokens(caller, now)
        if len(self._buckets) >= self.max_callers and caller not in self._buckets:
            self._buckets.clear()  # bounded memory; forgetting buckets only ever lets callers through
        if tokens < 1.0:
            self._buckets[caller] = (tokens, now)
            return False
        self._buckets[caller] = (tokens - 1.0, now)
        return True

    def retry_after(self, caller: str, now: float) -> float:
        """Seconds until the caller has a token again."""
        return max(0.0, (1.0 - self._tokens(caller, now)) / self.rate)
