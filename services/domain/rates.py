"""Error-rate arithmetic: bucket counters, Wilson intervals, window roll-ups. Pure, no I/O."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec

BUCKET_MS: Final = 60_000
"""Rates are stored in one-minute event-time buckets and rolled up at read time."""

WINDOWS_MS: Final = {"1h": 3_600_000, "24h": 86_400_000, "7d": 604_800_000}

BucketKey = tuple[str, str, str, int]
"""(policy_label, vendor_id, market, bucket_start_ms)."""


class Counts(msgspec.Struct, array_like=True, gc=False):
    """The counters of one rate bucket (or of a sum of buckets), named as the database columns.

    Encoded as a plain msgpack array in field order (the changelog's book records). Counts are
    ints; the two weighted sums (verdicts weighted by 1 / inclusion probability) are floats.
    """

    verdicts: int = 0
    errors: int = 0
    over_enforcement: int = 0
    under_enforcement: int = 0
    wrong_label: int = 0
    wrong_action: int = 0
    unable_to_judge: int = 0
    decisions: int = 0
    appeals: int = 0
    overturned: int = 0
    weighted_verdicts: float = 0.0
    weighted_errors: float = 0.0
    # Sums of squared weights, for the weighted rate's design-based variance (``domain.sampling``).
    weighted_sq_verdicts: float = 0.0
    weighted_sq_errors: float = 0.0

    def add(self, other: Counts) -> None:
        """Add ``other`` into these counts."""
        self.verdicts += other.verdicts
        self.errors += other.errors
        self.over_enforcement += other.over_enforcement
        self.under_enforcement += other.under_enforcement
        self.wrong_label += other.wrong_label
        self.wrong_action += other.wrong_action
        self.unable_to_judge += other.unable_to_judge
        self.decisions += other.decisions
        self.appeals += other.appeals
        self.overturned += other.overturned
        self.weighted_verdicts += other.weighted_verdicts
        self.weighted_errors += other.weighted_errors
        self.weighted_sq_verdicts += other.weighted_sq_verdicts
        self.weighted_sq_errors += other.weighted_sq_errors

    def copy(self) -> Counts:
        return msgspec.structs.replace(self)

    def values(self) -> tuple[Any, ...]:
        """The counts in ``COUNT_FIELDS`` order (the database columns)."""
        return msgspec.structs.astuple(self)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Counts:
        """Counts from a mapping of column names (a database row of sums; NULL reads as 0)."""
        # (PostgreSQL sums bigints as numeric; a row from before a column existed reads it as 0)
        values: list[Any] = [(float if name in WEIGHTED else int)(row.get(name) or 0) for name in COUNT_FIELDS]
        return cls(*values)


COUNT_FIELDS: Final = Counts.__struct_fields__
"""The counters, in the order of the database columns and of the encoded struct."""
WEIGHTED: Final = frozenset(name for name in COUNT_FIELDS if name.startswith("weighted"))
"""The float counters (sums of weights); the others are integers."""


def bucket_start(t_ms: int) -> int:
    return t_ms - t_ms % BUCKET_MS


def wilson_interval(errors: float, n: float, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when there is no data."""
    if n <= 0:
        return 0.0, 1.0
    p = errors / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True, slots=True)
class RateSummary:
    """Error rate of one group over one window, with its 95% Wilson interval."""

    verdicts: int
    errors: int
    error_rate: float | None
    ci_low: float
    ci_high: float
    by_error_type: Mapping[str, int]
    unable_to_judge: int
    decisions: int
    appeals: int
    overturned: int
    weighted_error_rate: float | None
    weighted_ci_low: float | None = None
    weighted_ci_high: float | None = None
    effective_verdicts: float | None = None

    @classmethod
    def from_counts(cls, c: Counts) -> RateSummary:
        from services.domain.sampling import design_rate

        verdicts, errors = int(c.verdicts), int(c.errors)
        low, high = wilson_interval(errors, verdicts)
        weighted = design_rate(
            verdicts, c.weighted_verdicts, c.weighted_errors, c.weighted_sq_verdicts, c.weighted_sq_errors
        )
        return cls(
            verdicts=verdicts,
            errors=errors,
            error_rate=errors / verdicts if verdicts else None,
            ci_low=low,
            ci_high=high,
            by_error_type={
                "OVER_ENFORCEMENT": int(c.over_enforcement),
                "UNDER_ENFORCEMENT": int(c.under_enforcement),
                "WRONG_LABEL": int(c.wrong_label),
                "WRONG_ACTION": int(c.wrong_action),
            },
            unable_to_judge=int(c.unable_to_judge),
            decisions=int(c.decisions),
            appeals=int(c.appeals),
            overturned=int(c.overturned),
            weighted_error_rate=weighted.rate,
            weighted_ci_low=weighted.ci_low,
            weighted_ci_high=weighted.ci_high,
            effective_verdicts=round(weighted.effective_verdicts, 1) if weighted.rate is not None else None,
        )
