"""Bernoulli CUSUM (Reynolds & Stoumbos, 1999) with its threshold solved from the exact in-control
run length of its Markov chain (Brook & Evans, 1972): a library and the benchmark's reference.

>>> p0, p1, h = design(baseline_rate=0.03, arl0=10_000)
>>> round(cusum_arl(p0, *llr_steps(p0, p1), h) / 10_000, 2) >= 1.0
True
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy.linalg import solve_banded

from services.domain.detectors.base import DEFAULT_SHIFT, ChangeEstimate, llr_steps, round_design, shifted

MAX_CHAIN_STATES = 3000
MAX_SUBDIVISION = 16


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
    p0, arl = round_design(baseline_rate, arl0)
    p1 = shifted(p0, shift)
    return p0, p1, threshold_for_arl(p0, p1, arl)
