"""Reviewers against auditors and golden answers, by hand arithmetic."""

from __future__ import annotations

import pytest

from services.domain.rates import wilson_interval
from services.domain.reviewers import RatingRow, ReviewedItem, paired_difference, reviewer_figures

QA, CAL, AUDIT, GOLDEN = 0, 1, 2, 3
NONE, OVER = 0, 1


def item(i: int, golden: int, *ratings: tuple[str, int, int]) -> ReviewedItem:
    rows = tuple(RatingRow(f"v{i}-{who}", who, tier, cat, 1_000 + k) for k, (who, tier, cat) in enumerate(ratings))
    return ReviewedItem(f"d{i}", "L", "V", golden, rows)


def test_figures_against_audits_and_golden_items() -> None:
    items = [
        # Audited: qa-1 agrees on 3 of 4 (calls OVER where the auditor says NONE once).
        item(1, -1, ("qa-1", QA, NONE), ("lead", AUDIT, NONE)),
        item(2, -1, ("qa-1", QA, OVER), ("lead", AUDIT, OVER)),
        item(3, -1, ("qa-1", QA, OVER), ("lead", AUDIT, NONE)),
        item(4, -1, ("qa-1", QA, NONE), ("lead", AUDIT, NONE)),
        # Golden: qa-1 right on 1 of 2; qa-2 right on both.
        item(5, OVER, ("qa-1", GOLDEN, NONE), ("qa-2", GOLDEN, OVER)),
        item(6, NONE, ("qa-1", GOLDEN, NONE), ("qa-2", GOLDEN, NONE)),
        # A calibration between peers has no reference: no one is scored on it.
        item(7, -1, ("qa-1", QA, NONE), ("qa-2", CAL, OVER)),
    ]
    figures = {f.reviewer_id: f.as_dict() for f in reviewer_figures(items, {"qa-1": (40, 4)})}
    one = figures["qa-1"]
    assert (one["verdicts"], one["error_calls"], one["audited"], one["golden"]) == (40, 4, 4, 2)
    assert one["audit_agreement"] == 0.75
    assert (one["audit_agreement_ci_low"], one["audit_agreement_ci_high"]) == pytest.approx(wilson_interval(3, 4))
    assert one["golden_accuracy"] == 0.5
    # Scored on 6: qa-1 calls an error on 2 (items 2, 3), the reference on 2 (items 2, 5).
    # Only qa-1: item 3 (b = 1); only the reference: item 5 (c = 1); d = 0.
    assert (one["reference_items"], one["error_call_rate"], one["reference_error_rate"]) == (6, 2 / 6, 2 / 6)
    assert one["tendency"] == 0.0 and one["tendency_words"] == "calls errors about as often as the reference"
    assert "lead" not in figures  # the auditor is the reference, not scored against itself
    assert figures["qa-2"]["golden_accuracy"] == 1.0 and figures["qa-2"]["verdicts"] == 0


def test_paired_difference_interval_is_agresti_mins() -> None:
    # 30 scored: the reviewer alone calls an error 10 times, the reference alone once.
    d, low, high = paired_difference(10, 1, 30)
    assert d == pytest.approx(0.3)
    bb, cc, nn = 10.5, 1.5, 32
    se = ((bb + cc) - (bb - cc) ** 2 / nn) ** 0.5 / nn
    assert (low, high) == (pytest.approx((bb - cc) / nn - 1.959964 * se), pytest.approx((bb - cc) / nn + 1.959964 * se))
    assert low is not None and low > 0  # calls more errors than the reference
    assert paired_difference(8, 2, 30)[1] < 0  # (8 against 2 of 30 could still be chance)
