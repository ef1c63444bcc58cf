"""The EU DSA transparency figures from modq's own records. Pure, no I/O.

**Complaints (Art. 15(1)(d), Art. 20 and 21 appeals).** Per breakdown: complaints received in the
period (by the appeal's ``filed_at``, else its event time), by outcome, ``reversed`` (OVERTURNED +
PARTIALLY_OVERTURNED), the median and 90th percentile time to decide (``resolved_at - filed_at``,
where the appeal gives both; linear interpolation between order statistics, numpy's default), and
the overturn rate: reversed over complaints decided (withdrawn ones are not decided), with Wilson's
95% interval. Beside each label and vendor, the QA error rate and over-enforcement rate of the same
period: a high overturn rate is a second, independent signal of over-enforcement.

**Accuracy of automated moderation (Art. 15(1)(e), Art. 42(2)(c)).** A positive is an enforcement
(any action but APPROVE). Among the QA verdicts (primary tier) on decisions of a kind of actor:

- accuracy: judged correct / judged; error rate: 1 - accuracy;
- precision: enforcements judged correct / enforcements judged (TP / (TP + FP));
- recall: TP / (TP + FN), FN the approvals judged wrong (an approval can only be wrong by leaving
  harm up: its error is UNDER_ENFORCEMENT);
- false positive rate: FP / (FP + TN), TN the approvals judged correct; false negative rate 1 - recall.

Each is a Hajek ratio over its verdicts, every verdict weighted by 1 / inclusion probability, with
the design-based 95% interval of ``domain.sampling`` (Wilson on the effective size; the plain Wilson
interval when no verdict carries a probability). The four sums of each come from the counts of
enforcements and of approvals (``Counts``: verdicts, errors and their weighted sums).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from services.domain.rates import Counts, wilson_interval
from services.domain.sampling import DesignRate, design_rate

OUTCOMES = ("UPHELD", "OVERTURNED", "PARTIALLY_OVERTURNED", "WITHDRAWN")
APPEAL_KEYS = ("policy_label", "category", "channel", "vendor_id")
APPEAL_BREAKDOWNS: tuple[tuple[str, ...], ...] = (
    (),
    ("policy_label",),
    ("category",),
    ("channel",),
    ("vendor_id",),
    ("policy_label", "vendor_id"),
)
ACCURACY_KEYS = ("actor_type", "model_id", "model_version", "content_language", "vendor_id")
AUTOMATED_BREAKDOWNS: tuple[tuple[str, ...], ...] = (
    (),
    ("actor_type",),
    ("actor_type", "model_id", "model_version"),
    ("actor_type", "content_language"),
    ("actor_type", "model_id", "model_version", "content_language"),
)
HUMAN_BREAKDOWNS: tuple[tuple[str, ...], ...] = ((), ("vendor_id",), ("content_language",))
AUTOMATED_ACTORS = ("MODEL", "HUMAN_ON_MODEL_SUGGESTION")


@dataclass(frozen=True, slots=True)
class Complaint:
    policy_label: str
    category: str | None  # None: the decision gave none
    channel: str | None
    vendor_id: str
    outcome: str
    decision_time_s: float | None  # resolved - filed, when both are known


@dataclass(frozen=True, slots=True)
class AutomationCounts:
    """Counts of one automation slice: a kind of actor, model, version and language, enforcements
    (``kind`` E) or approvals (A), of one vendor."""

    actor_type: str
    model_id: str
    model_version: str
    content_language: str
    kind: str
    vendor_id: str
    counts: Counts


def _key(row: object, keys: Sequence[str], by: tuple[str, ...]) -> tuple[str | None, ...]:
    return tuple(getattr(row, k) if k in by else None for k in keys)


def _given(row: object, by: tuple[str, ...]) -> bool:
    """Whether a row has a value for every key of a breakdown (a decision with no language is in the
    totals, not in a row for "no language")."""
    return all(getattr(row, k) for k in by)


def _rate(k: int, n: int) -> tuple[float | None, float | None, float | None]:
    if n <= 0:
        return None, None, None
    low, high = wilson_interval(k, n)
    return k / n, low, high


def complaints_rows(
    complaints: Iterable[Complaint], qa: Mapping[tuple[str | None, str | None], Counts], min_sample: int
) -> list[dict[str, object]]:
    """One row per breakdown value (``APPEAL_BREAKDOWNS``); ``qa`` holds the QA counts of the period
    by (policy_label, vendor_id), either None for every label or vendor."""
    every = list(complaints)
    out: list[dict[str, object]] = []
    for by in APPEAL_BREAKDOWNS:
        groups: dict[tuple[str | None, ...], list[Complaint]] = {}
        for c in every:
            if _given(c, by):
                groups.setdefault(_key(c, APPEAL_KEYS, by), []).append(c)
        if not by and not groups:
            groups[(None,) * len(APPEAL_KEYS)] = []
        for key in sorted(groups, key=lambda k: tuple(v or "" for v in k)):
            rows = groups[key]
            n = {o: sum(c.outcome == o for c in rows) for o in OUTCOMES}
            reversed_ = n["OVERTURNED"] + n["PARTIALLY_OVERTURNED"]
            decided = len(rows) - n["WITHDRAWN"]
            times = [c.decision_time_s for c in rows if c.decision_time_s is not None]
            rate = _rate(reversed_, decided)
            label, _, _, vendor = key
            row: dict[str, object] = dict(zip(APPEAL_KEYS, key, strict=True))
            row.update(
                complaints=len(rows),
                upheld=n["UPHELD"],
                overturned=n["OVERTURNED"],
                partially_overturned=n["PARTIALLY_OVERTURNED"],
                withdrawn=n["WITHDRAWN"],
                reversed=reversed_,
                median_decision_time_s=float(np.percentile(times, 50)) if times else None,
                p90_decision_time_s=float(np.percentile(times, 90)) if times else None,
                overturn_rate=rate[0],
                overturn_rate_ci_low=rate[1],
                overturn_rate_ci_high=rate[2],
                low_sample=decided < min_sample,
            )
            row.update(_qa_beside(by, label, vendor, qa))
            out.append(row)
    return out


def _qa_beside(
    by: tuple[str, ...], label: str | None, vendor: str | None, qa: Mapping[tuple[str | None, str | None], Counts]
) -> dict[str, object]:
    """The QA rates of the same label and vendor (only for rows broken down by those alone)."""
    empty: dict[str, object] = {"qa_verdicts": None, "qa_error_rate": None, "qa_over_enforcement_rate": None}
    if not set(by) <= {"policy_label", "vendor_id"}:
        return empty
    counts = qa.get((label, vendor))
    if counts is None or counts.verdicts <= 0:
        return empty
    return {
        "qa_verdicts": counts.verdicts,
        "qa_error_rate": counts.errors / counts.verdicts,
        "qa_over_enforcement_rate": counts.over_enforcement / counts.verdicts,
    }


@dataclass(slots=True)
class _Tally:
    decisions: int = 0
    enforcements: Counts | None = None
    approvals: Counts | None = None

    def add(self, row: AutomationCounts) -> None:
        self.decisions += row.counts.decisions
        side = "enforcements" if row.kind == "E" else "approvals"
        mine = getattr(self, side)
        if mine is None:
            setattr(self, side, row.counts.copy())
        else:
            mine.add(row.counts)


def _sums(c: Counts | None, correct: bool) -> tuple[int, float, float]:
    """(verdicts, sum w, sum w^2) of the correct (or of the wrong) verdicts of some counts."""
    if c is None:
        return 0, 0.0, 0.0
    if correct:
        return (
            c.verdicts - c.errors,
            c.weighted_verdicts - c.weighted_errors,
            c.weighted_sq_verdicts - c.weighted_sq_errors,
        )
    return c.errors, c.weighted_errors, c.weighted_sq_errors


def _ratio(hit: tuple[int, float, float], miss: tuple[int, float, float]) -> DesignRate:
    """hit / (hit + miss), weighted, with its design-based interval."""
    n = hit[0] + miss[0]
    return design_rate(n, hit[1] + miss[1], hit[1], hit[2] + miss[2], hit[2])


def accuracy_figures(t: _Tally, min_sample: int) -> dict[str, object]:
    tp, fp = _sums(t.enforcements, True), _sums(t.enforcements, False)
    tn, fn = _sums(t.approvals, True), _sums(t.approvals, False)
    judged = tp[0] + fp[0] + tn[0] + fn[0]
    correct = (tp[0] + tn[0], tp[1] + tn[1], tp[2] + tn[2])
    wrong = (fp[0] + fn[0], fp[1] + fn[1], fp[2] + fn[2])
    figures = {
        "accuracy": _ratio(correct, wrong),
        "error_rate": _ratio(wrong, correct),
        "precision": _ratio(tp, fp),
        "recall": _ratio(tp, fn),
        "false_positive_rate": _ratio(fp, tn),
        "false_negative_rate": _ratio(fn, tp),
    }
    out: dict[str, object] = {"decisions": t.decisions, "verdicts": judged}
    for name, r in figures.items():
        out[name] = r.rate
        out[f"{name}_ci_low"] = r.ci_low
        out[f"{name}_ci_high"] = r.ci_high
    out["low_sample"] = judged < min_sample
    return out


def accuracy_rows(
    rows: Iterable[AutomationCounts], breakdowns: Sequence[tuple[str, ...]], min_sample: int
) -> list[dict[str, object]]:
    """One row per breakdown value of the given automation counts."""
    every = list(rows)
    out: list[dict[str, object]] = []
    for by in breakdowns:
        groups: dict[tuple[str | None, ...], _Tally] = {}
        for r in every:
            if _given(r, by):
                groups.setdefault(_key(r, ACCURACY_KEYS, by), _Tally()).add(r)
        if not by and not groups:
            groups[(None,) * len(ACCURACY_KEYS)] = _Tally()
        for key in sorted(groups, key=lambda k: tuple(v or "" for v in k)):
            out.append({**dict(zip(ACCURACY_KEYS, key, strict=True)), **accuracy_figures(groups[key], min_sample)})
    return out
