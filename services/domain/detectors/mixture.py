"""modq's detector: a mixture Shiryaev-Roberts procedure (see the package docstring)."""

from __future__ import annotations

import math

from services.domain.detectors.base import DEFAULT_SHIFT, ChangeEstimate, llr_steps, round_design, shifted

MIXTURE: tuple[tuple[float, float], ...] = ((1.5, 0.25), (2.0, 0.5), (3.0, 0.25))
"""(shift, weight) of the Shiryaev-Roberts components: half the weight on a doubling."""

OVERSHOOT = 1.2
"""A lower bound of E[R_T] / A, the mean overshoot of the mixture at an in-control alarm.

Measured by ``bench/drift_overshoot.py`` (docs/drift-overshoot.md) for baselines 0.01% to 45%
and arl0 500 to 100,000: 1.22 (a 45% baseline, where the shifts are capped) to 1.32, more where a
baseline so low that the sum creeps up waits for an error; ARL0 = A * E[R_T/A], so
A = arl0 / OVERSHOOT errs toward fewer false alarms, by about 6% at a 3% baseline.
"""


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
        p1s = [shifted(p0, k) for k, _ in mixture]
        self.p0, self.a = p0, a
        w0, w1, w2 = (w / total for _, w in mixture)
        self._w = (w0, w1, w2)
        u0, u1, u2 = (p1 / p0 for p1 in p1s)
        d0, d1, d2 = ((1 - p1) / (1 - p0) for p1 in p1s)
        self._up, self._down = (u0, u1, u2), (d0, d1, d2)
        self._c_up = [llr_steps(p0, p1)[0] for p1 in p1s]
        self._c_down = [llr_steps(p0, p1)[1] for p1 in p1s]
        self.p1 = shifted(p0, DEFAULT_SHIFT)
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
    p0, arl = round_design(baseline_rate, arl0)
    return p0, max(arl / OVERSHOOT, 2.0)


def make_detector(baseline_rate: float, arl0: float) -> MixtureShiryaevRoberts:
    """A detector for rises of the error rate above baseline_rate, designed for ARL0 >= arl0."""
    return MixtureShiryaevRoberts(*mixture_design(baseline_rate, arl0))
