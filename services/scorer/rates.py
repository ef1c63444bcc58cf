"""Error-rate arithmetic: bucket counters, Wilson intervals, window roll-ups. Pure, no I/O."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

BUCKET_MS: Final = 60_000
"""Rates are stored in one-minute event-time buckets and rolled up at read time."""

COUNT_FIELDS: Final = (
    "verdicts",
    "errors",
    "over_enforcement",
    "under_enforcement",
    "wrong_label",
    "wrong_action",
    "unable_to_judge",
    "decisions",
    "appeals",
    "overturned",
    "weighted_verdicts",
    "weighted_errors",
)
F_VERDICTS, F_ERRORS, F_OVER, F_UNDER, F_WRONG_LABEL, F_WRONG_ACTION = range(6)
F_UNABLE, F_DECISIONS, F_APPEALS, F_OVERTURNED, F_W_VERDICTS, F_W_ERRORS = range(6, 12)
ERROR_TYPE_FIELD: Final = {1: F_OVER, 2: F_UNDER, 3: F_WRONG_LABEL, 4: F_WRONG_ACTION}

WINDOWS_MS: Final = {"1h": 3_600_000, "24h": 86_400_000, "7d": 604_800_000}

BucketKey = tuple[str, str, str, int]
"""(policy_label, vendor_id, market, bucket_start_ms)."""

Counts = list[float]


def bucket_start(t_ms: int) -> int:
    return t_ms - t_ms % BUCKET_MS


def zero_counts() -> Counts:
    return [0] * len(COUNT_FIELDS)


def add_into(target: Counts, delta: Iterable[float]) -> None:
    for i, v in enumerate(delta):
        target[i] += v


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

    @classmethod
    def from_counts(cls, c: Counts) -> RateSummary:
        verdicts, errors = int(c[F_VERDICTS]), int(c[F_ERRORS])
        low, high = wilson_interval(errors, verdicts)
        return cls(
            verdicts=verdicts,
            errors=errors,
            error_rate=errors / verdicts if verdicts else None,
            ci_low=low,
            ci_high=high,
            by_error_type={
                "OVER_ENFORCEMENT": int(c[F_OVER]),
                "UNDER_ENFORCEMENT": int(c[F_UNDER]),
                "WRONG_LABEL": int(c[F_WRONG_LABEL]),
                "WRONG_ACTION": int(c[F_WRONG_ACTION]),
            },
            unable_to_judge=int(c[F_UNABLE]),
            decisions=int(c[F_DECISIONS]),
            appeals=int(c[F_APPEALS]),
            overturned=int(c[F_OVERTURNED]),
            weighted_error_rate=c[F_W_ERRORS] / c[F_W_VERDICTS] if c[F_W_VERDICTS] else None,
        )
