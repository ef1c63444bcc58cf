"""How many decisions an alert's problem hurt: the decisions made in its scope since onset, how many
are estimated wrong (95% interval), how many beyond the baseline, by error type. Pure, no I/O.

QA judged ``verdicts`` (n) of the ``decisions`` (N) made since onset, ``errors`` of them wrong. Those
are known; the other M = N - n are estimated at the judged rate, so

    estimated_wrong = errors + M * p,   p = errors / n.

The interval is a prediction interval for the wrong among the M not judged, which are themselves
Bernoulli draws beside the uncertainty in p: var(M p - wrong among M) = M p (1 - p) + M^2 p (1 - p) / n
= M^2 p (1 - p) / n_eff with n_eff = n M / (n + M) (the finite-population correction of sampling n of
N without replacement gives the same). So the 95% interval is ``errors + M * Wilson(p, n_eff)``.
(Wilson on n alone, the interval of p only, covered 91% where QA judges a quarter: too narrow by
sqrt(N / M).) When the window holds more verdicts than decisions (verdicts on older decisions), every
decision is estimated the same way with M = N. ``excess_wrong`` is the estimate
less what the baseline rate would have made (``decisions * baseline``). Error types are split in the
same proportions as among the judged. Over-enforcement counts sellers and listings wrongly penalised
(penalties to revoke, listings to reinstate); under-enforcement, harmful content left up."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.domain.rates import wilson_interval


@dataclass(frozen=True, slots=True)
class Impact:
    decisions: int
    estimated_wrong: int
    ci_low: int
    ci_high: int
    excess_wrong: int
    by_error_type: dict[str, int]

    def as_dict(self) -> dict[str, object]:
        return {
            "decisions": self.decisions,
            "estimated_wrong": self.estimated_wrong,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "excess_wrong": self.excess_wrong,
            "by_error_type": dict(self.by_error_type),
        }


def impact(decisions: int, verdicts: int, errors: int, by_error_type: Mapping[str, int], baseline: float) -> Impact:
    """The impact of an alert's scope since onset (see the module's docstring)."""
    decisions = max(decisions, 0)
    if verdicts <= 0:
        return Impact(decisions, 0, 0, decisions, 0, {k: 0 for k in by_error_type})
    p = errors / verdicts
    if verdicts < decisions:  # the judged are known, the rest estimated
        known, rest = float(errors), decisions - verdicts
    else:  # more verdicts than decisions in the window (some judge older decisions): all estimated
        known, rest = 0.0, decisions
    n_eff = verdicts * rest / (verdicts + rest) if rest else float(verdicts)
    low, high = wilson_interval(p * n_eff, n_eff)
    estimate = known + rest * p
    return Impact(
        decisions=decisions,
        estimated_wrong=round(estimate),
        ci_low=round(known + rest * low),
        ci_high=round(known + rest * high),
        excess_wrong=max(0, round(estimate - decisions * baseline)),
        by_error_type={k: round(v / verdicts * decisions) for k, v in by_error_type.items()},
    )


def in_words(i: Impact) -> str:
    """ "~1,240 of 8,400 decisions since onset wrong (95% CI 1,100-1,390), 910 beyond the baseline;
    760 over-enforcement (wrongly penalised)"."""
    text = (
        f"~{i.estimated_wrong:,} of {i.decisions:,} decisions since onset wrong "
        f"(95% CI {i.ci_low:,}-{i.ci_high:,}), {i.excess_wrong:,} beyond the baseline"
    )
    over = i.by_error_type.get("OVER_ENFORCEMENT", 0)
    under = i.by_error_type.get("UNDER_ENFORCEMENT", 0)
    if over:
        text += f"; {over:,} over-enforcement (wrongly penalised)"
    if under:
        text += f"; {under:,} under-enforcement (harm left up)"
    return text


ERROR_TYPES = ("OVER_ENFORCEMENT", "UNDER_ENFORCEMENT", "WRONG_LABEL", "WRONG_ACTION")
Minute = tuple[Any, int, int, int, int, int, int, int]
"""(time, verdicts, the rule's errors, decisions, over, under, wrong label, wrong action)."""


def impact_since_change(
    series: Sequence[Minute], baseline: float, best: Any, early: Any, late: Any, types: Sequence[str] = ERROR_TYPES
) -> Impact:
    """The impact counted from the change point ``best``, its interval widened to the change point's
    95% likelihood interval [``early``, ``late``] (``domain.onset.change_point_set``): the low end as
    counted from ``late``, the high end as from ``early``. ``types``: the error types to report."""

    def since(t0: Any) -> Impact:
        sums = [sum(row[i] for row in series if row[0] >= t0) for i in range(1, 8)]
        by_type = {t: v for t, v in zip(ERROR_TYPES, sums[3:], strict=True) if t in types}
        return impact(sums[2], sums[0], sums[1], by_type, baseline)

    point, low, high = since(best), since(late), since(early)
    return Impact(
        point.decisions,
        point.estimated_wrong,
        min(point.ci_low, low.ci_low),
        max(point.ci_high, high.ci_high),
        point.excess_wrong,
        point.by_error_type,
    )
