"""Sequential drift detection on Bernoulli error streams. Pure and deterministic, no I/O.

The detector is a Bernoulli CUSUM (Reynolds & Stoumbos, 1999): it accumulates the
log-likelihood ratio of "error rate p1" against "baseline rate p0" verdict by verdict and
alarms when the sum crosses a threshold ``h``. ``h`` is not a guess: it is solved from the
exact in-control average run length of the CUSUM's Markov chain (Brook & Evans, 1972), so a
detector built for ``arl0`` raises on average one false alarm per ``arl0`` stable verdicts.

>>> d = make_detector(baseline_rate=0.03, arl0=100_000)
>>> alarms = []
>>> for i in range(400):
...     d.update(i % 5 == 0)  # a 20% error rate, far above the 3% baseline
...     if d.drift_detected:
...         alarms.append(i)
>>> alarms[0] < 100
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.linalg import solve_banded

DEFAULT_SHIFT = 2.0
"""The CUSUM is tuned to detect a doubling of the baseline error rate fastest."""

MAX_CHAIN_STATES = 4000


def llr_steps(p0: float, p1: float) -> tuple[float, float]:
    """Log-likelihood-ratio increments (on an error, on a correct verdict) for p1 against p0."""
    return math.log(p1 / p0), math.log((1 - p1) / (1 - p0))


def cusum_arl(p: float, up: float, down: float, h: float) -> float:
    """Average run length of a Bernoulli CUSUM started at zero, when errors occur at rate p.

    The statistic moves in whole steps of ``|down|`` (the step for a correct verdict), an error
    moves it up by ``up/|down|`` steps rounded; the chain's expected absorption time is the ARL.
    """
    unit = -down
    k = max(1, round(up / unit))
    m = math.ceil(h / unit)
    if m > MAX_CHAIN_STATES:  # coarsen: same boundary in fewer, larger steps
        scale = m / MAX_CHAIN_STATES
        unit *= scale
        k = max(1, round(up / unit))
        m = MAX_CHAIN_STATES
    # Unknowns L_0..L_{m-1}; (I - Q) L = 1 with Q banded: one step down, k steps up.
    q = 1.0 - p
    ab = np.zeros((1 + k + 1, m))  # rows: upper diagonals k..1, main, lower 1
    upper = k
    for j in range(m):
        ab[upper, j] += 1.0  # identity
        lower = max(j - 1, 0)
        ab[upper + (j - lower), lower] -= q  # A[j, lower]
        if j + k < m:
            ab[upper + j - (j + k), j + k] -= p  # A[j, j+k]
    rhs = np.ones(m)
    sol = solve_banded((1, upper), ab, rhs)
    return float(sol[0])


@lru_cache(maxsize=4096)
def threshold_for_arl(p0: float, p1: float, arl0: float) -> float:
    """Smallest threshold h whose in-control ARL is at least arl0 (bisection on the exact chain)."""
    up, down = llr_steps(p0, p1)
    lo, hi = 0.0, max(1.0, math.log(arl0))
    while cusum_arl(p0, up, down, hi) < arl0:
        hi *= 1.5
    for _ in range(40):
        mid = (lo + hi) / 2
        if cusum_arl(p0, up, down, mid) >= arl0:
            hi = mid
        else:
            lo = mid
        if hi - lo < 1e-3:
            break
    return hi


@dataclass(slots=True)
class ChangeEstimate:
    """What the detector knows at an alarm: verdicts and errors since the estimated onset."""

    verdicts: int
    errors: int


class BernoulliCusum:
    """One-sided upper CUSUM on a Bernoulli error stream; re-arms itself after an alarm."""

    __slots__ = ("_alarm", "_down", "_up", "errors", "h", "last_change", "n", "p0", "p1", "s")

    def __init__(self, p0: float, p1: float, h: float) -> None:
        if not 0 < p0 < p1 < 1:
            raise ValueError(f"need 0 < p0 < p1 < 1, got p0={p0}, p1={p1}")
        self.p0, self.p1, self.h = p0, p1, h
        self._up, self._down = llr_steps(p0, p1)
        self.s = 0.0
        self.n = 0  # verdicts since the statistic last left zero (the onset estimate)
        self.errors = 0
        self._alarm = False
        self.last_change: ChangeEstimate | None = None

    def update(self, is_error: bool) -> None:
        s = self.s + (self._up if is_error else self._down)
        if s <= 0.0:
            self.s, self.n, self.errors = 0.0, 0, 0
            self._alarm = False
            return
        self.s = s
        self.n += 1
        self.errors += is_error
        self._alarm = s > self.h
        if self._alarm:
            self.last_change = ChangeEstimate(self.n, self.errors)
            self.s, self.n, self.errors = 0.0, 0, 0

    @property
    def drift_detected(self) -> bool:
        """True only on the update that raised a new alarm."""
        return self._alarm

    def to_state(self) -> list[float]:
        return [self.s, self.n, self.errors]

    def load_state(self, state: list[float]) -> None:
        self.s, self.n, self.errors = float(state[0]), int(state[1]), int(state[2])


def make_detector(baseline_rate: float, arl0: float, shift: float = DEFAULT_SHIFT) -> BernoulliCusum:
    """A detector for rises of the error rate above baseline_rate, designed for ARL0 = arl0."""
    p0 = min(max(baseline_rate, 1e-4), 0.45)
    p1 = min(p0 * shift, (1 + p0) / 2)
    return BernoulliCusum(p0, p1, threshold_for_arl(round(p0, 6), round(p1, 6), float(arl0)))
