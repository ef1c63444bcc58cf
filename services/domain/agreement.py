"""Agreement between QA reviewers, chance-corrected, with 95% intervals. Pure, no I/O.

An *item* is a decision rated by two or more reviewers; its ratings are counted per category,
``r_ik`` raters putting item i in category k, ``r_i = sum_k r_ik``. With n items and q categories
on the scale (Gwet, *Handbook of Inter-Rater Reliability*, 4th ed., 2014, ch. 2-5):

- percent agreement   pa = mean_i sum_k r_ik (r_ik - 1) / (r_i (r_i - 1));
- category shares     pi_k = mean_i r_ik / r_i;
- Fleiss' kappa       pe = sum_k pi_k^2;
- Gwet's AC1          pe = sum_k pi_k (1 - pi_k) / (q - 1)  (stays sensible when nearly every item is
                      NONE, where kappa collapses: the "kappa paradox");
- Krippendorff's alpha (nominal), on the coincidences: with rbar = mean_i r_i and eps = 1 / sum_i r_i,
  pa' = mean_i sum_k r_ik (r_ik - 1) / (rbar (r_i - 1)), pa = (1 - eps) pa' + eps,
  pi_k = mean_i r_ik / rbar, pe = sum_k pi_k^2;

each coefficient (pa - pe) / (1 - pe). Intervals: Gwet's linearised variance, the variance of the
items' contributions ``c*_i = c_i - 2 (1 - c) (pe_i - pe) / (1 - pe)`` over n (n - 1) (an infinite
population of items), and a t interval with n - 1 degrees of freedom, capped at 1.

Cohen's kappa is there too, for two raters with roles (a reviewer against the auditor who is their
reference): pe = sum_k pA_k pB_k from the two raters' own shares, with the same linearisation
(an item's pe_i = (pB of A's category + pA of B's category) / 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from scipy import stats

ItemCounts = Sequence[int]
"""One item's ratings counted per category (``r_ik``, k over the scale)."""


@dataclass(frozen=True, slots=True)
class Coefficient:
    value: float | None
    se: float | None
    ci_low: float | None
    ci_high: float | None


NONE = Coefficient(None, None, None, None)


@dataclass(frozen=True, slots=True)
class Agreement:
    items: int
    ratings: int
    percent_agreement: float | None
    fleiss_kappa: Coefficient
    gwet_ac1: Coefficient
    krippendorff_alpha: Coefficient


def _interval(value: float, contributions: Sequence[float], centre: float) -> Coefficient:
    """``value`` with the linearised standard error of the items' ``contributions`` about ``centre``,
    and its 95% t interval (n - 1 degrees of freedom)."""
    n = len(contributions)
    if n < 2:
        return Coefficient(value, None, None, None)
    se = math.sqrt(sum((c - centre) ** 2 for c in contributions) / (n * (n - 1)))
    half = float(stats.t.ppf(0.975, n - 1)) * se
    return Coefficient(value, se, max(-1.0, value - half), min(1.0, value + half))


def _ratio(pa: float, pe: float) -> float | None:
    return None if pe >= 1 else (pa - pe) / (1 - pe)


def agreement(items: Sequence[ItemCounts], q: int) -> Agreement:
    """The coefficients of ``items`` (``q``: categories on the scale). Percent agreement and alpha
    count the items rated twice or more; kappa and AC1 take their category shares from every rated
    item, as Gwet does (an item rated once says something of how often each category is used)."""
    rated = [list(c) for c in items if sum(c) >= 1]
    twice = [c for c in rated if sum(c) >= 2]
    if not twice:
        return Agreement(0, 0, None, NONE, NONE, NONE)
    n, n2 = len(rated), len(twice)
    r = [sum(c) for c in rated]
    pa_i = [sum(x * (x - 1) for x in c) / (ri * (ri - 1)) if ri >= 2 else 0.0 for c, ri in zip(rated, r, strict=True)]
    pa = sum(pa_i) / n2
    pi = [sum(c[k] / ri for c, ri in zip(rated, r, strict=True)) / n for k in range(len(rated[0]))]
    shares = _Shares(rated, r, pa_i, pa, pi, n2)

    def kappa_part(c: list[int], ri: int) -> float:
        return sum(x * p for x, p in zip(c, pi, strict=True)) / ri

    def ac1_part(c: list[int], ri: int) -> float:
        return sum(x * (1 - p) for x, p in zip(c, pi, strict=True)) / (ri * (q - 1))

    return Agreement(
        items=n2,
        ratings=sum(sum(c) for c in twice),
        percent_agreement=pa,
        fleiss_kappa=shares.coefficient(sum(p * p for p in pi), kappa_part),
        gwet_ac1=shares.coefficient(sum(p * (1 - p) for p in pi) / (q - 1), ac1_part) if q >= 2 else NONE,
        krippendorff_alpha=_alpha(twice, [sum(c) for c in twice]),
    )


@dataclass(frozen=True, slots=True)
class _Shares:
    """What Fleiss' kappa and AC1 share: per-item agreement and the category shares."""

    rated: list[list[int]]
    r: list[int]
    pa_i: list[float]
    pa: float
    pi: list[float]
    n2: int

    def coefficient(self, pe: float, pe_item: Callable[[list[int], int], float]) -> Coefficient:
        """(pa - pe) / (1 - pe) with its interval; ``pe_item``: an item's part of the chance agreement."""
        value = _ratio(self.pa, pe)
        if value is None:
            return NONE
        n = len(self.rated)
        out = []
        for c, ri, a in zip(self.rated, self.r, self.pa_i, strict=True):
            own = (n / self.n2) * (a - pe * (ri >= 2)) / (1 - pe)
            out.append(own - 2 * (1 - value) * (pe_item(c, ri) - pe) / (1 - pe))
        return _interval(value, out, value)


def _alpha(rated: list[list[int]], r: list[int]) -> Coefficient:
    n = len(rated)
    rbar = sum(r) / n
    eps = 1 / sum(r)
    agree = [sum(x * (x - 1) for x in c) / (rbar * (ri - 1)) for c, ri in zip(rated, r, strict=True)]
    pa_prime = sum(agree) / n
    pa = (1 - eps) * pa_prime + eps
    pi = [sum(c[k] for c in rated) / (n * rbar) for k in range(len(rated[0]))]
    pe = sum(p * p for p in pi)
    alpha, alpha_prime = _ratio(pa, pe), _ratio(pa_prime, pe)
    if alpha is None or alpha_prime is None:
        return NONE
    out = []
    for c, ri, a in zip(rated, r, agree, strict=True):
        a_i = a - pa * (ri - rbar) / rbar
        pe_i = sum(x * p for x, p in zip(c, pi, strict=True)) / rbar - pe * (ri - rbar) / rbar
        out.append((a_i - pe) / (1 - pe) - 2 * (1 - alpha_prime) * (pe_i - pe) / (1 - pe))
    return _interval(alpha, out, alpha_prime)  # (the items' spread is about alpha', as Gwet has it)


def cohen_kappa(pairs: Sequence[tuple[int, int]], q: int) -> Coefficient:
    """Cohen's kappa of two raters with roles, from (rater A's category, rater B's category) per item."""
    n = len(pairs)
    if n == 0:
        return NONE
    p_a = [0.0] * q
    p_b = [0.0] * q
    for a, b in pairs:
        p_a[a] += 1 / n
        p_b[b] += 1 / n
    po = sum(a == b for a, b in pairs) / n
    pe = sum(x * y for x, y in zip(p_a, p_b, strict=True))
    kappa = _ratio(po, pe)
    if kappa is None:
        return NONE
    out = [
        (float(a == b) - pe) / (1 - pe) - 2 * (1 - kappa) * ((p_b[a] + p_a[b]) / 2 - pe) / (1 - pe) for a, b in pairs
    ]
    return _interval(kappa, out, kappa)
