"""Sequential drift detection on Bernoulli error streams. Pure and deterministic, no I/O.

modq's detector (``make_detector``) is a mixture Shiryaev-Roberts procedure (Pollak &
Tartakovsky, 2009; Tartakovsky, Nikiforov & Basseville, *Sequential Analysis*, ch. 8): for each
shift worth paging for (1.5x, 2x and 3x the baseline error rate) it keeps
``R_k = (1 + R_k) * L_k``, where ``L_k`` is the likelihood ratio of one verdict under that shift
against the baseline, and alarms when the weighted sum ``R = sum w_k R_k`` crosses ``A``. Half the
weight sits on a doubling. For a given false-alarm rate, Shiryaev-Roberts minimises the stationary
average delay to detection (of a change that comes long after the start, the detector re-armed
after each false alarm; the CUSUM minimises the worst case instead), and the mixture keeps it
fast on shifts smaller and larger than the one it is centred on.

Its false-alarm rate needs no tuning: under the baseline ``R_n - n`` is a martingale, so the mean
run length is exactly ``E[R_T]``, which is at least ``A``; the overshoot ``R_T / A`` at an alarm is
on average 1.22-1.32 for every baseline (``bench/drift_overshoot.py`` measures it), so
``A = arl0 / 1.2`` gives an in-control run length of at least ``arl0``.

A Bernoulli CUSUM (Reynolds & Stoumbos, 1999) with the threshold solved from the exact in-control
run length of its Markov chain (Brook & Evans, 1972) is kept beside it, for the benchmark and as a
library; the detector runs one per shift alongside its sums to estimate the change point.

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
"""A CUSUM built by ``design`` is tuned to detect a doubling of the baseline error rate fastest."""

MIXTURE: tuple[tuple[float, float], ...] = ((1.5, 0.25), (2.0, 0.5), (3.0, 0.25))
"""(shift, weight) of the Shiryaev-Roberts components: half the weight on a doubling."""

OVERSHOOT = 1.2
"""A lower bound of E[R_T] / A, the mean overshoot of the mixture at an in-control alarm.

Measured by ``bench/drift_overshoot.py`` (docs/drift-overshoot.md) for baselines 0.01% to 45%
and arl0 500 to 100,000: 1.22 (a 45% baseline, where the shifts are capped) to 1.32, more where a
baseline so low that the sum creeps up waits for an error; ARL0 = A * E[R_T/A], so
A = arl0 / OVERSHOOT errs toward fewer false alarms, by about 6% at a 3% baseline.
"""

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
    component: int = 0  # for a mixture: the shift whose term dominated the sum at the alarm


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
    p0, arl = _round_design(baseline_rate, arl0)
    p1 = _shifted(p0, shift)
    return p0, p1, threshold_for_arl(p0, p1, arl)


def _round_design(baseline_rate: float, arl0: float) -> tuple[float, float]:
    return float(f"{min(max(baseline_rate, 1e-4), 0.45):.3g}"), float(f"{max(arl0, 10.0):.2g}")


def _shifted(p0: float, shift: float) -> float:
    return min(p0 * shift, (1 + p0) / 2)


class MixtureShiryaevRoberts:
    """Mixture Shiryaev-Roberts detector of a rise of a Bernoulli error rate; re-arms after an alarm.

    ``update`` follows river's convention: ``drift_detected`` is True only on the update that
    raised a new alarm. An alarm is raised on an error verdict only: with a very low baseline the
    sum drifts up on a run of correct verdicts alone, towards ``w_k / ((k - 1) * p0)`` for shift
    ``k``, and a page that the error rate rose must rest on an error (this keeps the run-length
    bound, which holds for any stopping time).

    The onset an alert reports comes from a CUSUM per shift, run beside the sums and never
    alarming: at an alarm, the verdicts since the CUSUM of the shift whose term dominates the sum
    last left zero (the maximum-likelihood change point for that shift). Three components,
    unrolled where it counts: this runs once per verdict per monitor.
    """

    __slots__ = (
        "_alarm",
        "_c_down",
        "_c_up",
        "_down",
        "_up",
        "_w",
        "a",
        "errors",
        "last_change",
        "n",
        "p0",
        "p1",
        "r0",
        "r1",
        "r2",
        "s",
    )

    def __init__(self, p0: float, a: float, mixture: tuple[tuple[float, float], ...] = MIXTURE) -> None:
        if not 0 < p0 < 0.5 or a <= 1 or len(mixture) != 3:
            raise ValueError(f"need 0 < p0 < 0.5, A > 1 and three shifts, got p0={p0}, A={a}, {mixture}")
        total = sum(w for _, w in mixture)
        p1s = [_shifted(p0, k) for k, _ in mixture]
        self.p0, self.a = p0, a
        w0, w1, w2 = (w / total for _, w in mixture)
        self._w = (w0, w1, w2)
        u0, u1, u2 = (p1 / p0 for p1 in p1s)
        d0, d1, d2 = ((1 - p1) / (1 - p0) for p1 in p1s)
        self._up, self._down = (u0, u1, u2), (d0, d1, d2)
        self._c_up = [llr_steps(p0, p1)[0] for p1 in p1s]
        self._c_down = [llr_steps(p0, p1)[1] for p1 in p1s]
        self.p1 = _shifted(p0, DEFAULT_SHIFT)
        self.r0 = self.r1 = self.r2 = 0.0
        self.s, self.n, self.errors = [0.0] * 3, [0] * 3, [0] * 3  # the onset CUSUMs
        self._alarm = False
        self.last_change: ChangeEstimate | None = None

    @property
    def h(self) -> float:
        """The threshold on ``statistic`` (log A)."""
        return math.log(self.a)

    @property
    def r(self) -> list[float]:
        """The per-shift sums R_k."""
        return [self.r0, self.r1, self.r2]

    def _terms(self) -> tuple[float, float, float]:
        w0, w1, w2 = self._w
        return w0 * self.r0, w1 * self.r1, w2 * self.r2

    @property
    def statistic(self) -> float:
        """log of the mixture sum R (0 while R < 1)."""
        total = sum(self._terms())
        return math.log(total) if total > 1.0 else 0.0

    def started(self) -> list[int]:
        """The shifts whose onset CUSUM left zero on the last update (possible change points)."""
        return [k for k in range(3) if self.n[k] == 1]

    def update(self, is_error: bool) -> None:
        l0, l1, l2 = self._up if is_error else self._down
        self.r0 = (1.0 + self.r0) * l0
        self.r1 = (1.0 + self.r1) * l1
        self.r2 = (1.0 + self.r2) * l2
        steps, s, n, e = self._c_up if is_error else self._c_down, self.s, self.n, self.errors
        for k in range(3):
            v = s[k] + steps[k]
            if v <= 0.0:
                s[k], n[k], e[k] = 0.0, 0, 0
            else:
                s[k], n[k], e[k] = v, n[k] + 1, e[k] + is_error
        terms = self._terms()
        total = terms[0] + terms[1] + terms[2]
        self._alarm = is_error and total > self.a
        if self._alarm:
            k = terms.index(max(terms))
            self.last_change = ChangeEstimate(max(n[k], 1), max(e[k], 1), math.log(total), k)
            self.reset()

    def reset(self) -> None:
        """Back to the state of a fresh detector (after an alarm, or a new baseline)."""
        self.r0 = self.r1 = self.r2 = 0.0
        self.s, self.n, self.errors = [0.0] * 3, [0] * 3, [0] * 3

    @property
    def drift_detected(self) -> bool:
        """True only on the update that raised a new alarm."""
        return self._alarm

    def to_state(self) -> list[float]:
        """Per shift (s, n, errors) of its onset CUSUM, then the three sums."""
        out: list[float] = []
        for k in range(3):
            out += [self.s[k], self.n[k], self.errors[k]]
        return [*out, self.r0, self.r1, self.r2]

    def load_state(self, state: list[float]) -> None:
        """Restore ``to_state``. A bare CUSUM state (three numbers: what releases before the mixture
        stored) becomes the doubling's onset CUSUM, with the other statistics at zero; a state of
        any other length is not this detector's, and it starts fresh."""
        self.reset()
        if len(state) == 3:
            self.s[1], self.n[1], self.errors[1] = float(state[0]), int(state[1]), int(state[2])
            return
        if len(state) != 12:
            return
        for k in range(3):
            self.s[k], self.n[k], self.errors[k] = float(state[3 * k]), int(state[3 * k + 1]), int(state[3 * k + 2])
        self.r0, self.r1, self.r2 = (float(v) for v in state[9:12])


def mixture_design(baseline_rate: float, arl0: float) -> tuple[float, float]:
    """(p0, A) of the mixture detector for a baseline and ARL0 (rounded like ``design``)."""
    p0, arl = _round_design(baseline_rate, arl0)
    return p0, max(arl / OVERSHOOT, 2.0)


def make_detector(baseline_rate: float, arl0: float) -> MixtureShiryaevRoberts:
    """A detector for rises of the error rate above baseline_rate, designed for ARL0 >= arl0."""
    return MixtureShiryaevRoberts(*mixture_design(baseline_rate, arl0))


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

    def against(self, p0: float, p1: float) -> None:
        """Test against another alternative rate p1 from the next verdict on (the evidence so far stays)."""
        up, down = llr_steps(p0, p1)
        self._down_on_error, self._up_on_correct = -up, -down

    def update(self, is_error: bool) -> bool:
        """Feed one verdict; True once the evidence for recovery crosses h."""
        self.r = max(0.0, self.r + (self._down_on_error if is_error else self._up_on_correct))
        return self.r > self.h
