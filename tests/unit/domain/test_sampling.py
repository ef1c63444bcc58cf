"""Design-based rates of non-uniform QA samples and Neyman allocation, against direct computation,
SciPy's exact binomial interval and hand arithmetic."""

from __future__ import annotations

import random

import pytest
from scipy.stats import binomtest

from services.domain.sampling import Cell, design_rate, effective_n, hajek, korn_graubard, neyman


def sums(sample: list[tuple[float, int]]) -> tuple[int, float, float, float, float]:
    """(verdicts, sum w, sum w y, sum w^2, sum w^2 y) of (inclusion probability, error) pairs."""
    w = [(1 / pi, y) for pi, y in sample]
    return (
        len(w),
        sum(x for x, _ in w),
        sum(x * y for x, y in w),
        sum(x * x for x, _ in w),
        sum(x * x * y for x, y in w),
    )


def test_the_variance_from_four_sums_is_the_linearised_variance() -> None:
    rng = random.Random(5)
    sample = [(rng.choice((0.05, 0.2, 0.5, 1.0)), int(rng.random() < 0.1)) for _ in range(400)]
    found = hajek(*sums(sample))
    assert found is not None
    p, v = found
    total = sum(1 / pi for pi, _ in sample)
    assert p == pytest.approx(sum(y / pi for pi, y in sample) / total)
    direct = sum((1 - pi) * (1 / pi) ** 2 * (y - p) ** 2 for pi, y in sample) / total**2
    assert v == pytest.approx(direct, rel=1e-9)


def test_equal_weights_give_the_plain_rate_and_the_verdicts_as_effective_size() -> None:
    rate = design_rate(*sums([(1.0, 1)] * 3 + [(1.0, 0)] * 97))
    assert rate.rate == pytest.approx(0.03)
    assert rate.effective_verdicts == 100  # every pi = 1: no design variance, the count itself
    assert effective_n(0.0, 0.0, 40) == 40


def test_korn_graubard_is_clopper_pearson_on_whole_numbers() -> None:
    for x, n in ((0, 30), (3, 100), (12, 50), (50, 50)):
        exact = binomtest(x, n).proportion_ci(confidence_level=0.95, method="exact")
        low, high = korn_graubard(x, n)
        assert (low, high) == (pytest.approx(exact.low, abs=1e-9), pytest.approx(exact.high, abs=1e-9))


def test_neyman_allocation_by_hand() -> None:
    # S = sqrt(p (1 - p)): 0.5 and 0.3; N S: 500 and 300 -> 5/8 and 3/8 of 80.
    cells = [Cell(("A",), 1_000, 0.5), Cell(("B",), 1_000, 0.1)]
    a, b = neyman(cells, 80)
    assert (a.verdicts, b.verdicts) == (50, 30)
    assert b.ci_width == pytest.approx(2 * 1.959964 * (0.09 / 30 * (1 - 30 / 1_000)) ** 0.5, rel=1e-6)
    # A small cell is capped at its decisions and the rest of the budget goes to the others.
    # (A: 100 x 5 / 24.9 = 20 of 100, but it has 10 decisions.)
    small = neyman([Cell(("A",), 10, 0.5), Cell(("B",), 100, 0.01), Cell(("C",), 100, 0.01)], 100)
    assert [x.verdicts for x in small] == [10, 45, 45]
    assert sum(x.verdicts for x in neyman(cells, 81)) == 81
