"""Each QA reviewer against the reference: auditors and golden answers. Pure, no I/O.

A reviewed item is a decision rated by several reviewers, audited, or golden (``review_items``). Its
reference is the golden answer on a golden item, else its AUDIT rating (a senior reviewer's). Each
other reviewer's rating on it is scored against the reference:

- agreement with the auditors: the share of audited ratings in the auditor's category (Wilson 95%),
  and Cohen's kappa of reviewer against auditor (``domain.agreement``);
- golden accuracy: the share of ratings on golden items equal to the answer (Wilson 95%);
- tendency: on every scored rating, how often the reviewer calls an error less how often the
  reference does. Paired: with b the ratings where only the reviewer calls an error and c where only
  the reference does, d = (b - c) / n, and its 95% interval is Agresti and Min's (2005) adjusted Wald
  interval for a paired difference (half a rating added to each cell of the 2x2 table).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from services.contracts.codes import AUDIT, ERROR_TYPES, NO_ERROR
from services.domain.agreement import cohen_kappa
from services.domain.rates import wilson_interval

CATEGORIES = ERROR_TYPES
"""The scale reviewers rate on: the error types, NONE for a correct decision."""
Z95 = 1.959963984540054


@dataclass(frozen=True, slots=True)
class RatingRow:
    verdict_id: str
    reviewer_id: str
    tier: int
    category: int
    t_ms: int


@dataclass(frozen=True, slots=True)
class ReviewedItem:
    decision_id: str
    policy_label: str
    vendor_id: str
    golden: int  # the golden answer's category; -1 when not a golden item
    ratings: tuple[RatingRow, ...]

    def by_reviewer(self) -> dict[str, RatingRow]:
        """Each reviewer's newest rating (a reviewer rates an item once, whatever the tier)."""
        out: dict[str, RatingRow] = {}
        for r in sorted(self.ratings, key=lambda r: (r.t_ms, r.verdict_id)):
            out[r.reviewer_id] = r
        return out

    def counts(self) -> list[int]:
        """Ratings per category, one per reviewer (the agreement coefficients' r_ik)."""
        out = [0] * len(CATEGORIES)
        for r in self.by_reviewer().values():
            out[r.category] += 1
        return out

    def reference(self) -> tuple[str, int] | None:
        """(whose, category) of the reference: ``golden`` for a golden item, else the auditor."""
        if self.golden >= 0:
            return "golden", self.golden
        audits = [r for r in self.ratings if r.tier == AUDIT]
        if not audits:
            return None
        audit = max(audits, key=lambda r: (r.t_ms, r.verdict_id))
        return audit.reviewer_id, audit.category


@dataclass(slots=True)
class ReviewerFigures:
    reviewer_id: str
    verdicts: int = 0
    error_calls: int = 0
    audited: int = 0
    audit_agreed: int = 0
    golden: int = 0
    golden_right: int = 0
    pairs: list[tuple[int, int]] = field(default_factory=list)  # (reviewer's, auditor's category)
    only_reviewer: int = 0  # scored ratings where only the reviewer called an error (b)
    only_reference: int = 0  # ... only the reference did (c)
    reviewer_errors: int = 0
    reference_errors: int = 0
    scored: int = 0

    def as_dict(self) -> dict[str, object]:
        agree = _share(self.audit_agreed, self.audited)
        gold = _share(self.golden_right, self.golden)
        kappa = cohen_kappa(self.pairs, len(CATEGORIES)).value if self.pairs else None
        tendency = paired_difference(self.only_reviewer, self.only_reference, self.scored)
        return {
            "reviewer_id": self.reviewer_id,
            "verdicts": self.verdicts,
            "error_calls": self.error_calls,
            "audited": self.audited,
            "audit_agreement": agree[0],
            "audit_agreement_ci_low": agree[1],
            "audit_agreement_ci_high": agree[2],
            "audit_kappa": kappa,
            "golden": self.golden,
            "golden_accuracy": gold[0],
            "golden_accuracy_ci_low": gold[1],
            "golden_accuracy_ci_high": gold[2],
            "reference_items": self.scored,
            "error_call_rate": self.reviewer_errors / self.scored if self.scored else None,
            "reference_error_rate": self.reference_errors / self.scored if self.scored else None,
            "tendency": tendency[0],
            "tendency_ci_low": tendency[1],
            "tendency_ci_high": tendency[2],
            "tendency_words": tendency_words(tendency),
        }


def _share(k: int, n: int) -> tuple[float | None, float | None, float | None]:
    if n <= 0:
        return None, None, None
    low, high = wilson_interval(k, n)
    return k / n, low, high


def paired_difference(b: int, c: int, n: int) -> tuple[float | None, float | None, float | None]:
    """(b - c) / n with Agresti and Min's adjusted Wald 95% interval (a half added to each cell)."""
    if n <= 0:
        return None, None, None
    d = (b - c) / n
    bb, cc, nn = b + 0.5, c + 0.5, n + 2
    centre = (bb - cc) / nn
    se = math.sqrt(max(0.0, (bb + cc) - (bb - cc) ** 2 / nn)) / nn
    return d, max(-1.0, centre - Z95 * se), min(1.0, centre + Z95 * se)


def tendency_words(t: tuple[float | None, float | None, float | None]) -> str:
    d, low, high = t
    if d is None or low is None or high is None:
        return "no audited or golden ratings"
    if low > 0:
        return f"calls more errors than the reference ({d * 100:+.1f} pp)"
    if high < 0:
        return f"calls fewer errors than the reference ({d * 100:+.1f} pp)"
    return "calls errors about as often as the reference"


def reviewer_figures(items: Sequence[ReviewedItem], counts: Mapping[str, tuple[int, int]]) -> list[ReviewerFigures]:
    """Every reviewer's figures from the reviewed items and their (verdicts, error calls) counts."""
    out: dict[str, ReviewerFigures] = {r: ReviewerFigures(r, n, e) for r, (n, e) in counts.items()}
    for item in items:
        ref = item.reference()
        if ref is None:
            continue
        whose, answer = ref
        for reviewer, r in item.by_reviewer().items():
            if reviewer == whose:
                continue
            f = out.setdefault(reviewer, ReviewerFigures(reviewer))
            if whose == "golden":
                f.golden += 1
                f.golden_right += r.category == answer
            else:
                f.audited += 1
                f.audit_agreed += r.category == answer
                f.pairs.append((r.category, answer))
            mine, theirs = r.category != NO_ERROR, answer != NO_ERROR
            f.scored += 1
            f.reviewer_errors += mine
            f.reference_errors += theirs
            f.only_reviewer += mine and not theirs
            f.only_reference += theirs and not mine
    return sorted(out.values(), key=lambda f: f.reviewer_id)
