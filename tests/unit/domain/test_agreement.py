"""Agreement coefficients against published values (Gwet, Handbook of Inter-Rater Reliability, 4th
ed., 2014; the same data and figures ship with PyPI's irrCAC, which is not a dependency)."""

from __future__ import annotations

import pytest

from services.domain.agreement import agreement, cohen_kappa

# Krippendorff's 4 coders x 12 units, categories 1-5, None where a coder did not rate the unit
# (Gwet 2014, p. 120; irrCAC's raw_4raters).
FOUR_RATERS = [
    [1, 1, None, 1],
    [2, 2, 3, 2],
    [3, 3, 3, 3],
    [3, 3, 3, 3],
    [2, 2, 2, 2],
    [1, 2, 3, 4],
    [4, 4, 4, 4],
    [1, 1, 2, 1],
    [2, 2, 2, 2],
    [None, 5, 5, 5],
    [None, None, 1, 1],
    [None, None, 3, None],
]
# Two abstractors classifying 100 pregnancies (Ectopic, AIU, NIU): rows abstractor A, columns B
# (Gwet 2014; irrCAC's table_cont3x3abstractors).
ABSTRACTORS = [[13, 0, 0], [0, 20, 7], [0, 4, 56]]
# Clinical against research diagnosis of 223 patients, 4 categories (irrCAC's table_cont4x4diagnosis).
DIAGNOSIS = [[40, 4, 4, 17], [6, 25, 2, 13], [4, 1, 21, 12], [15, 5, 9, 45]]


def counts(row: list[int | None], categories: range) -> list[int]:
    return [sum(1 for x in row if x == k) for k in categories]


def pairs(table: list[list[int]]) -> list[tuple[int, int]]:
    return [(a, b) for a, row in enumerate(table) for b, n in enumerate(row) for _ in range(n)]


def test_four_coders_twelve_units() -> None:
    found = agreement([counts(row, range(1, 6)) for row in FOUR_RATERS], q=5)
    assert found.items == 11  # unit 12 has one rating: it counts in the category shares only
    assert found.percent_agreement == pytest.approx(0.81818, abs=5e-6)
    assert found.fleiss_kappa.value == pytest.approx(0.76117, abs=5e-6)
    assert found.fleiss_kappa.se == pytest.approx(0.15302, abs=5e-6)
    assert (found.fleiss_kappa.ci_low, found.fleiss_kappa.ci_high) == (pytest.approx(0.42438, abs=5e-6), 1.0)
    assert found.gwet_ac1.value == pytest.approx(0.77544, abs=5e-6)
    assert found.gwet_ac1.se == pytest.approx(0.14295, abs=5e-6)
    assert found.gwet_ac1.ci_low == pytest.approx(0.46081, abs=5e-6)
    assert found.krippendorff_alpha.value == pytest.approx(0.74342, abs=5e-6)


def test_three_by_three_abstractors() -> None:
    both = pairs(ABSTRACTORS)
    kappa = cohen_kappa(both, q=3)
    assert kappa.value == pytest.approx(0.7964, abs=5e-5)
    # Published 0.680-0.913 (irrCAC's contingency-table variance); the per-item linearisation here
    # gives 0.679-0.914, a standard error 0.9% wider.
    assert (kappa.ci_low, kappa.ci_high) == (pytest.approx(0.680, abs=1.5e-3), pytest.approx(0.913, abs=1.5e-3))
    found = agreement([[(a == k) + (b == k) for k in range(3)] for a, b in both], q=3)
    assert found.gwet_ac1.value == pytest.approx(0.8493, abs=5e-5)
    assert found.krippendorff_alpha.value == pytest.approx(0.7973, abs=5e-5)
    assert found.percent_agreement == pytest.approx(0.89)


def test_cohens_kappa_standard_error_on_the_diagnosis_table() -> None:
    kappa = cohen_kappa(pairs(DIAGNOSIS), q=4)
    assert kappa.value == pytest.approx(0.432, abs=5e-4)
    assert kappa.se == pytest.approx(0.046, abs=5e-4)
    assert (kappa.ci_low, kappa.ci_high) == (pytest.approx(0.341, abs=5e-4), pytest.approx(0.522, abs=5e-4))


def test_ac1_stays_sensible_where_nearly_everything_is_none() -> None:
    """The kappa paradox: two reviewers agree on 97 of 100 items, nearly all NONE; kappa falls far
    below the agreement while AC1 stays near it."""
    items = [[2, 0, 0, 0, 0]] * 96 + [[1, 1, 0, 0, 0]] * 3 + [[0, 2, 0, 0, 0]]
    found = agreement(items, q=5)
    assert found.percent_agreement == pytest.approx(0.97)
    assert found.fleiss_kappa.value is not None and found.fleiss_kappa.value < 0.5
    assert found.gwet_ac1.value is not None and found.gwet_ac1.value > 0.95


def test_no_item_rated_twice_gives_no_figures() -> None:
    found = agreement([[1, 0, 0, 0, 0], [0, 1, 0, 0, 0]], q=5)
    assert (found.items, found.percent_agreement, found.gwet_ac1.value) == (0, None, None)
