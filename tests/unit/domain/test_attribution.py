"""Attribution (Adtributor's explanatory power and surprise) and impact, against hand arithmetic and
independent references."""

from __future__ import annotations

import math
import random

import pytest
from scipy.spatial.distance import jensenshannon

from services.domain import impact as impact_mod
from services.domain.attribution import _js_term, attribute, in_words, scope_excess
from services.domain.impact import impact
from services.domain.rates import wilson_interval


def test_the_surprise_terms_sum_to_scipys_jensen_shannon_divergence() -> None:
    p = [0.5, 0.3, 0.2]
    q = [0.8, 0.1, 0.1]
    ours = sum(_js_term(a, b) for a, b in zip(p, q, strict=True))
    assert ours == pytest.approx(jensenshannon(p, q) ** 2, rel=1e-12)  # scipy: the square root, base e


def test_an_excess_in_one_market_is_named_first_with_its_share() -> None:
    # Before: every market at 3%. Since: DE at 15% on 1,000 verdicts, FR and IT at 3%.
    before = {"market": {"DE": (10_000, 300), "FR": (10_000, 300), "IT": (10_000, 300)}}
    since = {
        "market": {"DE": (1_000, 150), "FR": (1_000, 30), "IT": (1_000, 30)},
        # The queue is spread evenly over the markets: the excess splits three ways, not succinct.
        "queue_id": {"Q1": (1_000, 70), "Q2": (1_000, 70), "Q3": (1_000, 70)},
    }
    total_before, total_since = (30_000, 900), (3_000, 210)
    excess = scope_excess(total_before, total_since, 0.03)
    # Hand arithmetic: rate before (900 + 50 * 0.03) / (30,000 + 50) = 0.03; 210 - 3,000 * 0.03 = 120.
    assert excess == pytest.approx(120.0)
    slices = attribute(before, since, 0.03, excess)
    assert [(s.dimension, s.value) for s in slices] == [("market", "DE")]
    de = slices[0]
    # DE's expected errors: 1,000 * (300 + 1.5) / 10,050 = 30.0; excess 120 of 120.
    assert de.share == pytest.approx((150 - 1_000 * 301.5 / 10_050) / 120)
    assert de.observed_rate == 0.15 and de.verdicts == 1_000
    assert in_words(slices) == "100% of the excess is in market DE"


def test_a_share_counts_only_the_excess_that_stands_out_from_noise() -> None:
    # DE: 20 errors where 6 were expected; FR: 8 where 6 were expected (noise); IT: 6 of 6.
    before = {"market": {m: (100_000, 3_000) for m in ("DE", "FR", "IT")}}
    since = {"market": {"DE": (200, 20), "FR": (200, 8), "IT": (200, 6)}}
    excess = scope_excess((300_000, 9_000), (600, 34), 0.03)
    (de,) = attribute(before, since, 0.03, excess)
    rate = (3_000 + 50 * 0.03) / (100_000 + 50)  # each market's own rate before, shrunk (= 0.03)
    sd = math.sqrt(200 * rate * (1 - rate))  # 2.41 errors: one standard deviation of 200 verdicts
    # Soft-thresholded by one standard deviation: DE 20 - 6 - 2.41, FR max(0, 8 - 6 - 2.41) = 0, IT 0.
    assert de.share == pytest.approx(1.0)
    assert (de.dimension, de.value) == ("market", "DE")
    # Unshrunk (Adtributor's raw explanatory power) FR's noise takes a share: DE explains 14 of 14 + 2.
    (raw,) = attribute(before, since, 0.03, excess, shrink=None)
    assert raw.share == pytest.approx((20 - 200 * rate) / excess) and raw.share < 0.9
    since["market"]["FR"] = (200, 12)  # FR now 6 over, 3.59 beyond its noise
    shares = {s.value: s.share for s in attribute(before, since, 0.03, excess)}
    stands = {"DE": 20 - 200 * rate - sd, "FR": 12 - 200 * rate - sd}
    assert shares["DE"] == pytest.approx(stands["DE"] / sum(stands.values()))


def test_two_dimensions_that_both_concentrate_are_both_named() -> None:
    before = {
        "market": {"DE": (5_000, 150), "FR": (5_000, 150)},
        "queue_id": {"Q7": (2_000, 60), "Q1": (8_000, 240)},
    }
    since = {"market": {"DE": (500, 100), "FR": (500, 15)}, "queue_id": {"Q7": (300, 85), "Q1": (700, 30)}}
    excess = scope_excess((10_000, 300), (1_000, 115), 0.03)
    slices = attribute(before, since, 0.03, excess)
    assert {(s.dimension, s.value) for s in slices} == {("market", "DE"), ("queue_id", "Q7")}
    assert slices == sorted(slices, key=lambda s: -s.share)
    assert in_words(slices).startswith(f"{min(slices[0].share, 1):.0%} of the excess is in ")


def test_no_excess_names_nothing() -> None:
    assert attribute({}, {"market": {"DE": (100, 3)}}, 0.03, excess=-1.0) == []


def test_impact_arithmetic() -> None:
    i = impact(decisions=10_000, verdicts=500, errors=50, by_error_type={"OVER_ENFORCEMENT": 30}, baseline=0.03)
    # 50 known + 9,500 * 10% = 1,000; beyond the baseline 1,000 - 300 = 700.
    assert (i.estimated_wrong, i.excess_wrong) == (1_000, 700)
    assert i.ci_low < 1_000 < i.ci_high
    assert i.by_error_type == {"OVER_ENFORCEMENT": 600}
    assert "~1,000 of 10,000 decisions since onset wrong" in impact_mod.in_words(i)


def test_the_impact_interval_covers_the_true_count_about_95_percent_of_the_time() -> None:
    rng, covered, runs = random.Random(7), 0, 400
    for _ in range(runs):
        wrong = [rng.random() < 0.08 for _ in range(4_000)]
        judged = rng.sample(range(4_000), 200)
        errors = sum(wrong[j] for j in judged)
        i = impact(4_000, 200, errors, {}, 0.03)
        covered += i.ci_low <= sum(wrong) <= i.ci_high
    assert 0.91 <= covered / runs <= 0.99
    assert math.isfinite(covered)


def test_the_impact_interval_is_a_prediction_interval_where_qa_judges_a_quarter() -> None:
    """With a quarter judged, the wrong among the unjudged vary as much again as the estimate of the
    rate: the interval of the rate alone (Wilson on the judged) covers about 91%, too few."""
    rng, covered, naive, runs = random.Random(11), 0, 0, 1_000
    for _ in range(runs):
        wrong = [rng.random() < 0.06 for _ in range(2_000)]
        judged = rng.sample(range(2_000), 500)
        errors = sum(wrong[j] for j in judged)
        truth = sum(wrong)
        i = impact(2_000, 500, errors, {}, 0.03)
        covered += i.ci_low <= truth <= i.ci_high
        low, high = wilson_interval(errors, 500)
        naive += round(errors + 1_500 * low) <= truth <= round(errors + 1_500 * high)
    assert 0.93 <= covered / runs <= 0.975
    assert naive / runs < 0.93  # (what the interval was before: this test tells the two apart)


def _rise(seed: int) -> list[tuple[int, int, int]]:
    """300 minutes of 40 verdicts, at 3% errors and from minute 200 at 9%."""
    rng = random.Random(seed)
    return [(m, 40, sum(rng.random() < (0.09 if m >= 200 else 0.03) for _ in range(40))) for m in range(300)]


def _llr(series: list[tuple[int, int, int]], start: int) -> float:
    """The LLR of a rise from 3% at ``start``, summed by brute force."""
    n = sum(v for t, v, _ in series if t >= start)
    e = sum(x for t, _, x in series if t >= start)
    p = e / n
    return e * math.log(p / 0.03) + (n - e) * math.log((1 - p) / 0.97) if p > 0.03 else 0.0


def test_the_change_point_is_the_likelihood_maximum() -> None:
    """Against a brute-force maximum over every split, on a stream that rises from 3% to 9%."""
    from services.domain.onset import change_point

    series = _rise(3)

    def llr(start: int) -> float:
        return _llr(series, start)

    found = change_point(series, 0.03)
    assert found == max(range(300), key=llr)
    assert 190 <= found <= 210  # and near the true change
    assert change_point([(0, 100, 1), (1, 100, 2)], 0.03) is None  # never above the baseline


def test_the_change_point_estimate_is_the_posterior_mean_within_its_likelihood_interval() -> None:
    """Against a brute-force posterior over every split (flat prior, likelihood exp(LLR))."""
    from services.domain.onset import change_point_set

    series = _rise(8)

    def llr(start: int) -> float:
        return _llr(series, start)

    top = max(llr(t) for t in range(300))
    weight = {t: math.exp(llr(t) - top) for t in range(300)}
    mean = sum(t * w for t, w in weight.items()) / sum(weight.values())
    found = change_point_set(series, 0.03)
    assert found is not None
    estimate, early, late = found
    assert estimate == round(mean)
    assert (early, late) == (
        min(t for t in range(300) if llr(t) >= top - 1.92),
        max(t for t in range(300) if llr(t) >= top - 1.92),
    )
    assert early <= estimate <= late and late - early < 60  # a clear change is placed within the hour
    assert change_point_set([(0, 100, 1), (1, 100, 2)], 0.03) is None  # never above the baseline


def test_the_posterior_mean_misses_the_true_change_by_less_than_the_likelihood_maximum() -> None:
    """Streams at 3% that rise to 7% (a market's rise diluted by the rest of the scope), each cut at
    the alarm of a CUSUM: the maximum jumps to chance bursts just before the alarm, the posterior
    mean less (the reason the evidence counts from it, ``domain.onset``)."""
    from services.domain.onset import change_point, change_point_set

    up, down = math.log(2), math.log(0.94 / 0.97)
    mle_error = mean_error = 0
    for seed in range(200):
        rng = random.Random(seed)
        series: list[tuple[int, int, int]] = []
        cusum, minute, change = 0.0, 0, 1_440
        while True:
            judged = rng.random() < 0.5
            error = judged and rng.random() < (0.07 if minute >= change else 0.03)
            series.append((minute, int(judged), int(error)))
            cusum = max(0.0, cusum + (up if error else down if judged else 0.0))
            if cusum > 5:
                if minute >= change:
                    break
                cusum = 0.0  # a false alarm before the change: not this stream's alarm
            minute += 1
        window = series[-2_880:]
        found = change_point_set(window, 0.03)
        mle = change_point(window, 0.03)
        assert found is not None and mle is not None
        mle_error += abs(mle - change)
        mean_error += abs(found[0] - change)
    assert mean_error < 0.85 * mle_error, (mean_error, mle_error)
