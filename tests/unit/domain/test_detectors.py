"""The drift detectors: exact alarm indices on seeded streams, calibration, river's conventions."""

from __future__ import annotations

import math
import random

import pytest

from services.domain.detectors import (
    MIXTURE,
    OVERSHOOT,
    BernoulliCusum,
    MixtureShiryaevRoberts,
    cusum_arl,
    design,
    llr_steps,
    make_detector,
    mixture_design,
    threshold_for_arl,
)


def stream(seed: int, n: int, change_at: int, p0: float, p1: float) -> list[bool]:
    r = random.Random(seed)
    return [r.random() < (p0 if i < change_at else p1) for i in range(n)]


def alarms(xs: list[bool], baseline: float = 0.03, arl0: float = 100_000) -> list[int]:
    d = make_detector(baseline, arl0)
    out = []
    for i, x in enumerate(xs):
        d.update(x)
        if d.drift_detected:
            out.append(i)
    return out


def test_exact_alarm_indices_on_seeded_shift() -> None:
    # Pinned: the detector is deterministic, so these indices change only if its maths does.
    found = alarms(stream(1, 8000, 5000, 0.03, 0.09))
    assert found[:3] == [5167, 5418, 5691]
    assert found[0] > 5000  # nothing before the change


def test_onset_comes_from_the_shift_that_dominates_the_sum() -> None:
    # Pinned like the alarm indices: a 3x shift is dated by the 3x CUSUM, close to the change;
    # a 1.5x shift (seed 2) by the 1.5x one.
    found = []
    for p1, seed in ((0.09, 1), (0.09, 2), (0.045, 2)):
        d = make_detector(0.03, 100_000)
        for i, x in enumerate(stream(seed, 15_000, 5000, 0.03, p1)):
            d.update(x)
            if d.drift_detected:
                assert d.last_change is not None
                found.append((i, i - d.last_change.verdicts + 1, d.last_change.component))
                break
    assert found == [(5167, 5004, 2), (5065, 4989, 2), (6132, 4891, 0)]


def test_mixture_sum_is_the_shiryaev_roberts_statistic_by_its_definition() -> None:
    # R_n = sum over candidate change points j <= n of the likelihood ratio of verdicts j..n, per
    # shift, weighted: computed here from that definition, not from the detector's recursion.
    p0, a = 0.03, 1e12  # no alarm, so no reset
    xs = stream(5, 300, 100, p0, 0.09)
    d = MixtureShiryaevRoberts(p0, a)
    for x in xs:
        d.update(x)
    total = sum(w for _, w in MIXTURE)
    expected = 0.0
    for shift, w in MIXTURE:
        p1 = p0 * shift
        for j in range(len(xs)):
            lr = math.prod((p1 / p0) if x else (1 - p1) / (1 - p0) for x in xs[j:])
            expected += w / total * lr
    assert d.statistic == pytest.approx(math.log(expected), rel=1e-9)


def test_mixture_run_length_meets_the_designed_arl() -> None:
    # In control R_n - n is a martingale, so the mean run length is E[R_T] = A * E[R_T / A]: the
    # run lengths agree with it, and the overshoot R_T / A (measured with far less noise than the
    # run length) is above the OVERSHOOT that A = arl0 / OVERSHOOT assumes, so ARL0 >= arl0.
    arl0, runs = 800, 600
    rng = random.Random(3)
    lengths, overshoots = 0, 0.0
    for _ in range(runs):
        d = make_detector(0.05, arl0)
        while True:
            lengths += 1
            d.update(rng.random() < 0.05)
            if d.drift_detected:
                break
        assert d.last_change is not None
        overshoots += math.exp(d.last_change.statistic) / d.a
    assert overshoots / runs >= OVERSHOOT
    assert lengths / runs == pytest.approx(d.a * overshoots / runs, rel=0.1)
    assert d.a * OVERSHOOT == pytest.approx(arl0)


def test_alarms_only_on_an_error_even_when_the_sum_creeps_up() -> None:
    # A 0.01% baseline: on correct verdicts alone the sum drifts up toward ~10,000, above this A.
    d = make_detector(0.0001, 2_000)
    flags = []
    for _ in range(50_000):
        d.update(False)
        flags.append(d.drift_detected)
    assert not any(flags)
    d.update(True)
    assert d.drift_detected  # the first error then pages: the evidence was already there


def test_state_round_trip_and_older_cusum_state() -> None:
    xs = stream(9, 3000, 1000, 0.03, 0.06)
    d = make_detector(0.03, 100_000)
    for x in xs[:2000]:
        d.update(x)
    restored = make_detector(0.03, 100_000)
    restored.load_state(d.to_state())
    for x in xs[2000:]:
        d.update(x)
        restored.update(x)
        assert restored.drift_detected == d.drift_detected
    assert restored.to_state() == d.to_state()
    old = make_detector(0.03, 100_000)
    old.load_state([1.5, 10, 2])  # what a CUSUM-only release stored: the doubling's CUSUM
    assert (old.n, old.errors, old.r) == ([0, 10, 0], [0, 2, 0], [0.0, 0.0, 0.0])
    old.load_state([1.0, 2.0, 3.0, 4.0, 5.0])  # not this detector's: start fresh
    assert old.to_state() == make_detector(0.03, 100_000).to_state()


def test_mixture_design_rounds_for_caching() -> None:
    p0, a = mixture_design(0.030004, 101_234)
    assert p0 == 0.03 and a == pytest.approx(100_000 / 1.2)


def test_no_alarm_on_seeded_stable_stream() -> None:
    assert alarms(stream(2, 20_000, 20_000, 0.03, 0.03)) == []


def test_drift_detected_is_true_only_on_the_alarm_update_and_re_arms() -> None:
    d = make_detector(0.03, 1000)
    flags = []
    for _ in range(400):
        d.update(True)
        flags.append(d.drift_detected)
    first = flags.index(True)
    assert not flags[first + 1]
    assert sum(flags) > 10  # a persisting shift keeps alarming


def test_threshold_meets_the_designed_arl() -> None:
    up, down = llr_steps(0.03, 0.06)
    h = threshold_for_arl(0.03, 0.06, 100_000)
    assert cusum_arl(0.03, up, down, h) >= 100_000
    assert cusum_arl(0.03, up, down, h - 0.05) < 100_000
    assert cusum_arl(0.06, up, down, h) < 1_000  # and it is fast under the shift


def test_chain_arl_agrees_with_simulation() -> None:
    # A small ARL so the simulation is cheap: mean run length over 400 runs within 10%.
    d0 = BernoulliCusum(*design(0.05, 500))
    rng = random.Random(11)
    lengths = []
    for _ in range(400):
        d = BernoulliCusum(*design(0.05, 500))
        n = 0
        while True:
            n += 1
            d.update(rng.random() < 0.05)
            if d.drift_detected:
                break
        lengths.append(n)
    assert sum(lengths) / len(lengths) == pytest.approx(cusum_arl(0.05, *llr_steps(d0.p0, d0.p1), d0.h), rel=0.12)


def test_rejects_degenerate_baselines() -> None:
    with pytest.raises(ValueError):
        BernoulliCusum(0.1, 0.05, 3.0)
    with pytest.raises(ValueError):
        MixtureShiryaevRoberts(0.0, 1000.0)
