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

MAX_CHAIN_STATES = 3000
MAX_SUBDIVISION = 16


def llr_steps(p0: float, p1: float) -> tuple[float, float]:
    """Log-likelihood-ratio increments (on an error, on a correct verdict) for p1 against p0."""
    return math.log(p1 / p0), math.log((1 - p1) / (1 - p0))


def cusum_arl(p: float, up: float, down: float, h: float) -> float:
    """Average run length of a Bernoulli CUSUM started at zero, when errors occur at rate p.

    The statistic is tracked on a grid of ``|down| / q``: a correct verdict moves it ``q`` cells
    down, an error ``round(up / cell)`` cells up. ``q`` is as large as the state budget allows so
    the rounding of the error step stays well under one percent; the chain's expected
    absorption time from zero is the ARL (Brook & Evans).
    """
    unit = -down
    q = max(1, min(MAX_SUBDIVISION, int(MAX_CHAIN_STATES * unit / h)))
    cell = unit / q
    if h / cell > MAX_CHAIN_STATES:  # very small steps: coarsen, keeping the boundary
        cell = h / MAX_CHAIN_STATES
        q = max(1, round(unit / cell))
    k = max(1, round(up / cell))
    m = math.ceil(h / cell)
    # Unknowns L_0..L_{m-1}; (I - Q) L = 1 with Q banded: q cells down (floored at 0), k cells up.
    ab = np.zeros((k + 1 + q, m))  # banded storage: row k + i - j holds A[i, j]
    for j in range(m):
        ab[k, j] += 1.0
        lower = max(j - q, 0)
        ab[k + j - lower, lower] -= 1.0 - p
        if j + k < m:
            ab[0, j + k] -= p
    sol = solve_banded((q, k), ab, np.ones(m))
    return float(sol[0])


def _log_arl(p0: float, up: float, down: float, h: float) -> float:
    arl = cusum_arl(p0, up, down, h)
    return math.log(arl) if math.isfinite(arl) and arl > 0 else math.inf


@lru_cache(maxsize=4096)
def threshold_for_arl(p0: float, p1: float, arl0: float) -> float:
    """Threshold h whose in-control ARL is arl0 (within 0.5%), solved on the exact chain.

    log ARL is close to linear in h, so secant steps converge in a few chain solves; each step
    is kept inside a bracket that always holds the root (falling back to bisection), starting
    from Siegmund's approximation ARL ~ (e^h - h - 1) / KL(p0 || p1).
    """
    up, down = llr_steps(p0, p1)
    kl0 = p0 * -up + (1 - p0) * -down
    target = math.log(arl0)
    lo, hi = 1e-3, max(1.0, math.log(arl0 * kl0 + 1))
    while _log_arl(p0, up, down, hi) < target:
        lo, hi = hi, hi * 1.5
    f_lo, f_hi = _log_arl(p0, up, down, lo) - target, _log_arl(p0, up, down, hi) - target
    h, f = hi, f_hi
    for _ in range(40):
        if 0 <= f < 0.005 or hi - lo < 1e-4:
            break
        finite = math.isfinite(f_lo) and math.isfinite(f_hi) and f_hi != f_lo
        h = lo - f_lo * (hi - lo) / (f_hi - f_lo) if finite else (lo + hi) / 2
        if not lo < h < hi:
            h = (lo + hi) / 2
        f = _log_arl(p0, up, down, h) - target
        if f < 0:
            lo, f_lo = h, f
        else:
            hi, f_hi = h, f
    return hi  # the smallest bracketed threshold with ARL >= arl0: errs toward fewer false alarms


@dataclass(slots=True)
class ChangeEstimate:
    """What the detector knows at an alarm: verdicts and errors since the estimated onset."""

    verdicts: int
    errors: int
    statistic: float


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
            self.last_change = ChangeEstimate(self.n, self.errors, s)
            self.s, self.n, self.errors = 0.0, 0, 0

    @property
    def drift_detected(self) -> bool:
        """True only on the update that raised a new alarm."""
        return self._alarm

    def to_state(self) -> list[float]:
        return [self.s, self.n, self.errors]

    def load_state(self, state: list[float]) -> None:
        self.s, self.n, self.errors = float(state[0]), int(state[1]), int(state[2])


def design(baseline_rate: float, arl0: float, shift: float = DEFAULT_SHIFT) -> tuple[float, float, float]:
    """(p0, p1, h) of the CUSUM for a baseline and ARL0, rounded so thresholds can be cached."""
    p0 = float(f"{min(max(baseline_rate, 1e-4), 0.45):.3g}")
    p1 = min(p0 * shift, (1 + p0) / 2)
    arl = float(f"{max(arl0, 10.0):.2g}")
    return p0, p1, threshold_for_arl(p0, p1, arl)


def make_detector(baseline_rate: float, arl0: float, shift: float = DEFAULT_SHIFT) -> BernoulliCusum:
    """A detector for rises of the error rate above baseline_rate, designed for ARL0 = arl0."""
    return BernoulliCusum(*design(baseline_rate, arl0, shift))


def arl0_for_budget(verdicts_per_day: float, monitors: int, false_alerts_per_day: float, floor: float) -> float:
    """Per-monitor ARL0 that spends an equal share of the fleet's false-alert budget.

    A monitor that sees r verdicts a day and has in-control run length ARL0 raises r / ARL0 false
    alarms a day; giving each of ``monitors`` monitors budget / monitors yields ARL0 = r * n / b.
    """
    return max(floor, verdicts_per_day * monitors / false_alerts_per_day)


class BernoulliRecovery:
    """Downward CUSUM: accumulates evidence that the rate is back at p0 rather than still at p1."""

    __slots__ = ("_down_on_error", "_up_on_correct", "h", "r")

    def __init__(self, p0: float, p1: float, h: float) -> None:
        up, down = llr_steps(p0, p1)
        self._down_on_error, self._up_on_correct, self.h, self.r = -up, -down, h, 0.0

    def update(self, is_error: bool) -> bool:
        """Feed one verdict; True once the evidence for recovery crosses h."""
        self.r = max(0.0, self.r + (self._down_on_error if is_error else self._up_on_correct))
        return self.r > self.h
