"""The test that ends an alert: a downward CUSUM on the same Bernoulli stream."""

from __future__ import annotations

from services.domain.detectors.base import llr_steps


class BernoulliRecovery:
    """Downward CUSUM: accumulates evidence that the rate is back at p0 rather than still at p1."""

    __slots__ = ("_down_on_error", "_up_on_correct", "h", "r")

    def __init__(self, p0: float, p1: float, h: float) -> None:
        up, down = llr_steps(p0, p1)
        self._down_on_error, self._up_on_correct, self.h, self.r = -up, -down, h, 0.0

    def against(self, p0: float, p1: float) -> None:
        """Test against another alternative rate p1 from the next verdict on (the evidence so far stays)."""
        up, down = llr_steps(p0, p1)
        self._down_on_error, self._up_on_correct = -up, -down

    def update(self, is_error: bool) -> bool:
        """Feed one verdict; True once the evidence for recovery crosses h."""
        self.r = max(0.0, self.r + (self._down_on_error if is_error else self._up_on_correct))
        return self.r > self.h
