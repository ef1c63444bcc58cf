from __future__ import annotations

import pytest

from services.domain.rates import Counts, RateSummary, wilson_interval


def test_wilson_zero_of_thirty_upper_bound_is_about_eleven_percent() -> None:
    low, high = wilson_interval(0, 30)
    assert low == 0.0
    assert high == pytest.approx(0.1135, abs=5e-4)


def test_wilson_matches_reference_value() -> None:
    # 5% error rate on 456 verdicts: about +/-2 points (DOMAIN.md).
    low, high = wilson_interval(22.8, 456)
    assert high - low == pytest.approx(0.04, abs=0.002)


def test_no_data_gives_full_interval_and_no_rate() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert RateSummary.from_counts(Counts()).error_rate is None


def test_summary_rate() -> None:
    c = Counts(verdicts=200, errors=10)
    s = RateSummary.from_counts(c)
    assert s.error_rate == 0.05 and s.ci_low < 0.05 < s.ci_high


def test_counts_from_a_row_of_database_sums() -> None:
    from decimal import Decimal

    from services.domain.rates import COUNT_FIELDS

    row: dict[str, object] = dict.fromkeys(COUNT_FIELDS)  # NULL sums: no buckets in the window
    row.update(verdicts=Decimal("200"), errors=Decimal("10"), weighted_verdicts=250.5)  # PostgreSQL's types
    c = Counts.from_row(row)
    assert (c.verdicts, c.errors, c.decisions, c.weighted_verdicts, c.weighted_errors) == (200, 10, 0, 250.5, 0.0)
    assert type(c.verdicts) is int and type(c.weighted_errors) is float
    assert RateSummary.from_counts(c).error_rate == 0.05
