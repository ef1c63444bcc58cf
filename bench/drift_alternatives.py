"""Why the remaining drift targets are hard: other detectors on the drift benchmark's streams.

Runs, vectorised over the 200 evaluation seeds of bench/drift_benchmark.py: one-sided CUSUMs
tuned to several shifts (thresholds from the exact chain, ARL0 = 100,000), and Shiryaev-Roberts
procedures (thresholds given as log A; their in-control ARL is measured here by simulation on
2,000 x 60,000 stable verdicts). Prints median / mean / p90 delay per scenario.

Run: python -m bench.drift_alternatives [--sr-log-a 11.0 11.25]
"""

from __future__ import annotations

import argparse

import numpy as np

from bench.drift_benchmark import CHANGE, EVAL_SEEDS_START, P0, stream
from services.scorer.drift import llr_steps, threshold_for_arl

SCENARIOS = ("shift:0.045", "shift:0.06", "shift:0.09", "ramp")


def first_alarms(x: np.ndarray, step, reset, stat0: float) -> np.ndarray:  # type: ignore[no-untyped-def]
    s = np.full(x.shape[0], stat0)
    first = np.full(x.shape[0], -1)
    for t in range(x.shape[1]):
        s, alarm = step(s, x[:, t])
        if t >= CHANGE:
            first = np.where((first < 0) & alarm, t - CHANGE, first)
        s[alarm] = reset
    return first


def cusum(p1: float, h: float):  # type: ignore[no-untyped-def]
    up, down = llr_steps(P0, p1)
    return lambda s, x: ((s2 := np.maximum(0, s + np.where(x, up, down))), s2 > h)


def shiryaev_roberts(p1: float, log_a: float):  # type: ignore[no-untyped-def]
    up, down = llr_steps(P0, p1)
    return lambda s, x: ((s2 := np.logaddexp(0, s) + np.where(x, up, down)), s2 > log_a)


def measured_arl(step, reset: float, rng: np.random.Generator, m: int = 2_000, t: int = 60_000) -> float:  # type: ignore[no-untyped-def]
    s, alarms = np.full(m, reset), 0
    for _ in range(t):
        s, alarm = step(s, rng.random(m) < P0)
        alarms += int(alarm.sum())
        s[alarm] = reset
    return m * t / max(alarms, 1)


def summary(first: np.ndarray) -> str:
    ok = first[first >= 0]
    return f"{np.median(ok):.0f}/{ok.mean():.0f}/{np.percentile(ok, 90):.0f}" + (
        f" ({(first < 0).sum()} missed)" if (first < 0).any() else ""
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--sr-log-a", type=float, nargs="*", default=[11.0, 11.25])
    args = parser.parse_args()
    seeds = range(EVAL_SEEDS_START, EVAL_SEEDS_START + args.seeds)
    x = {sc: np.array([stream(seed, sc) for seed in seeds]) for sc in SCENARIOS}
    print("| detector | in-control ARL | " + " | ".join(SCENARIOS) + " |")
    for p1 in (0.045, 0.05, 0.055, 0.06, 0.065, 0.07):
        h = threshold_for_arl(P0, p1, 1e5)
        cells = [summary(first_alarms(x[sc], cusum(p1, h), 0.0, 0.0)) for sc in SCENARIOS]
        print(f"| CUSUM p1={p1} | 100,000 (exact chain) | " + " | ".join(cells) + " |", flush=True)
    rng = np.random.default_rng(7)
    for p1 in (0.055, 0.06):
        for log_a in args.sr_log_a:
            step = shiryaev_roberts(p1, log_a)
            arl = measured_arl(step, -np.inf, rng)
            cells = [summary(first_alarms(x[sc], step, -np.inf, -np.inf)) for sc in SCENARIOS]
            print(f"| SR p1={p1} log A={log_a} | {arl:,.0f} (simulated) | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
