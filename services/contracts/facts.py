"""Rows the scorer keeps in the database one per thing, not as sums: the decisions reviewed more than
once (for agreement between reviewers and their accuracy) and the appeals (for the DSA complaint
figures). They travel in the rate book's records with the bucket counts, so they reach the database
exactly as the counts do (``services.domain.book``), and are upserted by their key: a later fact of
the same key replaces an earlier one.
"""

from __future__ import annotations

import msgspec


class Rating(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One reviewer's current verdict on a reviewed decision: its category is the error type (NONE
    for CORRECT); UNABLE_TO_JUDGE verdicts are not ratings."""

    verdict_id: str
    reviewer_id: str
    tier: int  # codes.QA_TIERS
    category: int  # codes.ERROR_TYPES
    t_ms: int


class ReviewItem(msgspec.Struct, array_like=True, tag="review", frozen=True, gc=False):
    """A decision with ratings from two or more reviewers, an audit, or a golden answer: its current
    ratings (one per reviewer and tier)."""

    decision_id: str
    policy_label: str
    vendor_id: str
    market: str
    decided_ms: int
    golden_answer: int  # an error-type code, -1: not a golden item
    ratings: tuple[Rating, ...]

    @property
    def key(self) -> tuple[str, str]:
        return ("review", self.decision_id)


class AppealFact(msgspec.Struct, array_like=True, tag="appeal", frozen=True, gc=False):
    """An appeal (complaint) with what the DSA figures break it down by."""

    appeal_id: str
    decision_id: str
    policy_label: str
    vendor_id: str
    market: str
    category: str
    channel: str
    outcome: int  # codes.APPEAL_OUTCOMES
    t_ms: int
    filed_ms: int  # 0: not given (the appeal's event time stands in)
    resolved_ms: int  # 0: not given (likewise)
    decided_ms: int

    @property
    def key(self) -> tuple[str, str]:
        return ("appeal", self.appeal_id)


Fact = ReviewItem | AppealFact
