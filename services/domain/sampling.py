"""QA samples that are not uniform: design-based error rates and where to spend tomorrow's budget. Pure.

**Hajek estimate.** Verdict i was sampled with inclusion probability pi_i and weighs w_i = 1 / pi_i:
p = sum w y / sum w. Its linearised variance (Poisson sampling; Sarndal, Swensson and Wretman 1992,
5.7) is v = sum (1 - pi_i) w_i^2 (y_i - p)^2 / (sum w)^2. With y in {0, 1} and (1 - pi) w^2 = w^2 - w,
the numerator is B (1 - 2p) + p^2 A with A = sum (w^2 - w) and B = the same over errors, so four
additive sums per bucket carry it: sum w, sum w y, sum w^2, sum w^2 y (``Counts``).

**Interval.** Wilson's score interval on the effective sample size n* = p (1 - p) / v (Korn and
Graubard 1998 put Clopper-Pearson on the same n*, ``korn_graubard``); n* is capped at the verdicts
counted (a design never holds more information than its sample), and is the count itself when v is
0 (every pi = 1, or a rate of 0 or 1). Coverage of both, and of the plain Wilson interval that
ignores the weights, on stratified samples with a known truth: docs/sampling.md.

**Neyman allocation.** A QA budget of n verdicts over strata h (label x vendor x market) of N_h
decisions at error rate p_h gives the smallest variance of the overall rate with
n_h proportional to N_h sqrt(p_h (1 - p_h)) (Cochran 1977, 5.5), each at most N_h.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats

from services.domain.rates import wilson_interval

Z95 = 1.959963984540054


@dataclass(frozen=True, slots=True)
class DesignRate:
    rate: float | None
    ci_low: float | None
    ci_high: float | None
    effective_verdicts: float


def hajek(
    verdicts: int, weighted: float, weighted_errors: float, weighted_sq: float, weighted_sq_errors: float
) -> tuple[float, float] | None:
    """(p, v): the Hajek rate and its linearised variance from the four sums; None without weight."""
    if weighted <= 0 or verdicts <= 0:
        return None
    p = weighted_errors / weighted
    a = weighted_sq - weighted
    b = weighted_sq_errors - weighted_errors
    v = max(0.0, (b * (1 - 2 * p) + p * p * a) / (weighted * weighted))
    return p, v


def effective_n(p: float, v: float, verdicts: int) -> float:
    """p (1 - p) / v, at most the verdicts counted (and they, when v is 0)."""
    if v <= 0 or p <= 0 or p >= 1:
        return float(verdicts)
    return min(float(verdicts), p * (1 - p) / v)


def design_rate(
    verdicts: int,
    weighted: float,
    weighted_errors: float,
    weighted_sq: float,
    weighted_sq_errors: float,
    method: str = "wilson",
) -> DesignRate:
    """The weighted rate with its 95% interval (``wilson`` or ``korn_graubard`` on n*)."""
    found = hajek(verdicts, weighted, weighted_errors, weighted_sq, weighted_sq_errors)
    if found is None:
        return DesignRate(None, None, None, 0.0)
    p, v = found
    n_eff = effective_n(p, v, verdicts)
    low, high = (wilson_interval if method == "wilson" else korn_graubard)(p * n_eff, n_eff)
    return DesignRate(p, low, high, n_eff)


def korn_graubard(x: float, n: float, alpha: float = 0.05) -> tuple[float, float]:
    """Clopper-Pearson (beta quantiles, so x and n need not be whole) on an effective sample."""
    if n <= 0:
        return 0.0, 1.0
    low = 0.0 if x <= 0 else float(stats.beta.ppf(alpha / 2, x, n - x + 1))
    high = 1.0 if x >= n else float(stats.beta.ppf(1 - alpha / 2, x + 1, n - x))
    return low, high


@dataclass(frozen=True, slots=True)
class Cell:
    """A stratum of tomorrow's sampling: its decisions and the error rate it is planned on."""

    key: tuple[str, ...]
    decisions: int
    rate: float


@dataclass(frozen=True, slots=True)
class Allocation:
    key: tuple[str, ...]
    decisions: int
    rate: float
    verdicts: int
    ci_width: float | None  # the 95% interval width the cell reaches with them (finite population)


def neyman(cells: Sequence[Cell], budget: int) -> list[Allocation]:
    """Neyman allocation of ``budget`` verdicts (whole numbers, largest remainders, none above a
    cell's decisions); a cell's width is 2 z sqrt(p (1 - p) / n (1 - n / N))."""
    out: dict[tuple[str, ...], int] = {c.key: 0 for c in cells}
    open_cells = [c for c in cells if c.decisions > 0]
    left = max(0, min(budget, sum(c.decisions for c in open_cells)))
    while left > 0 and open_cells:
        size = {c.key: c.decisions * math.sqrt(max(c.rate, 1e-6) * (1 - min(c.rate, 1 - 1e-6))) for c in open_cells}
        total = sum(size.values())
        share = {k: left * s / total for k, s in size.items()}
        full = [c for c in open_cells if out[c.key] + share[c.key] >= c.decisions]
        if full:  # capped at their decisions; the rest of the budget goes round the others again
            for c in full:
                left -= c.decisions - out[c.key]
                out[c.key] = c.decisions
            open_cells = [c for c in open_cells if c not in full]
            continue
        whole = {k: math.floor(v) for k, v in share.items()}
        rest = left - sum(whole.values())
        for k in sorted(share, key=lambda k: (-(share[k] - whole[k]), k))[:rest]:
            whole[k] += 1
        for k, v in whole.items():
            out[k] += v
        left = 0
    result = []
    for c in cells:
        n = out[c.key]
        width = None
        if n > 0:
            fpc = max(0.0, 1 - n / c.decisions) if c.decisions else 0.0
            width = 2 * Z95 * math.sqrt(c.rate * (1 - c.rate) / n * fpc)
        result.append(Allocation(c.key, c.decisions, c.rate, n, width))
    return result
