"""The DSA figures against a truth computed verdict by verdict in the test."""

from __future__ import annotations

import random
import statistics

import pytest

from services.domain.rates import Counts, wilson_interval
from services.domain.transparency import (
    AUTOMATED_BREAKDOWNS,
    AutomationCounts,
    Complaint,
    accuracy_rows,
    complaints_rows,
)
from tests.support.reference import design_ratio


def test_precision_recall_and_rates_of_a_model_against_verdict_by_verdict_truth() -> None:
    rng = random.Random(4)
    verdicts = []  # (enforcement, correct, inclusion probability)
    for _ in range(900):
        enforcement = rng.random() < 0.4
        pi = 0.2 if enforcement else 0.05  # approvals sampled less
        correct = rng.random() < (0.9 if enforcement else 0.97)
        verdicts.append((enforcement, correct, pi))
    rows = []
    for kind, enforcement in (("E", True), ("A", False)):
        c = Counts(decisions=1_000 if enforcement else 3_000)
        for e, ok, pi in verdicts:
            if e == enforcement:
                w = 1 / pi
                c.verdicts += 1
                c.weighted_verdicts += w
                c.weighted_sq_verdicts += w * w
                if not ok:
                    c.errors += 1
                    c.weighted_errors += w
                    c.weighted_sq_errors += w * w
        rows.append(AutomationCounts("MODEL", "m-1", "1.4", "de", kind, "V01", c))
    (total, *_) = accuracy_rows(rows, AUTOMATED_BREAKDOWNS, 30)
    assert (total["decisions"], total["verdicts"]) == (4_000, 900)
    tp = [(pi, True) for e, ok, pi in verdicts if e and ok]
    fp = [(pi, True) for e, ok, pi in verdicts if e and not ok]
    tn = [(pi, True) for e, ok, pi in verdicts if not e and ok]
    fn = [(pi, True) for e, ok, pi in verdicts if not e and not ok]

    def no(rows: list[tuple[float, bool]]) -> list[tuple[float, bool]]:
        return [(pi, False) for pi, _ in rows]

    want = {
        "accuracy": design_ratio(tp + tn + no(fp + fn)),
        "precision": design_ratio(tp + no(fp)),
        "recall": design_ratio(tp + no(fn)),
        "false_positive_rate": design_ratio(fp + no(tn)),
        "false_negative_rate": design_ratio(fn + no(tp)),
    }
    for name, (p, low, high, _) in want.items():
        got = (total[name], total[f"{name}_ci_low"], total[f"{name}_ci_high"])
        assert got == (pytest.approx(p), pytest.approx(low), pytest.approx(high)), name
    assert total["error_rate"] == pytest.approx(1 - (want["accuracy"][0] or 0))
    assert total["low_sample"] is False


def test_complaints_by_breakdown_with_decision_times_and_the_qa_rate_beside_them() -> None:
    complaints = [
        Complaint("SCAMS", "SCAMS_AND_FRAUD", "ARTICLE_20", "V01", "OVERTURNED", 3_600.0),
        Complaint("SCAMS", "SCAMS_AND_FRAUD", "ARTICLE_20", "V01", "UPHELD", 7_200.0),
        Complaint("SCAMS", None, "ARTICLE_21", "V02", "PARTIALLY_OVERTURNED", None),
        Complaint("WEAPONS", "UNSAFE_AND_PROHIBITED_PRODUCTS", "ARTICLE_20", "V01", "WITHDRAWN", 60.0),
    ]
    qa = {("SCAMS", "V01"): Counts(verdicts=200, errors=10, over_enforcement=6)}
    rows = complaints_rows(complaints, qa, min_sample=3)
    total = next(r for r in rows if all(r[k] is None for k in ("policy_label", "category", "channel", "vendor_id")))
    assert (total["complaints"], total["reversed"], total["withdrawn"]) == (4, 2, 1)
    assert total["median_decision_time_s"] == statistics.median([3_600.0, 7_200.0, 60.0])
    assert total["overturn_rate"] == pytest.approx(2 / 3)  # of the three decided
    assert (total["overturn_rate_ci_low"], total["overturn_rate_ci_high"]) == pytest.approx(wilson_interval(2, 3))
    assert total["low_sample"] is False
    pair = next(r for r in rows if (r["policy_label"], r["vendor_id"]) == ("SCAMS", "V01") and r["category"] is None)
    assert (pair["complaints"], pair["qa_error_rate"], pair["qa_over_enforcement_rate"]) == (2, 0.05, 0.03)
    assert pair["low_sample"] is True
    channels = {r["channel"]: r["complaints"] for r in rows if r["channel"] is not None}
    assert channels == {"ARTICLE_20": 3, "ARTICLE_21": 1}
    assert [r["complaints"] for r in rows if r["category"] == "SCAMS_AND_FRAUD"] == [2]
