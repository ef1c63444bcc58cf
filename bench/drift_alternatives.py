"""Why the remaining drift targets are hard: other detectors on the drift benchmark's streams.

Runs, vectorised over the seeds (by default the 200 evaluation seeds of bench/drift_benchmark.py;
``--first-seed 100000 --seeds 2000`` for expected values on seeds no design was chosen on): modq's
mixture Shiryaev-Roberts detector (the same maths as services/domain/detectors/mixture.py), one-sided CUSUMs
tuned to several shifts (thresholds from the exact chain, ARL0 = 100,000), and single-shift
Shiryaev-Roberts procedures (thresholds given as log A; their in-control ARL is measured here by
simulation on 2,000 x 60,000 stable verdicts). Prints median / mean (+/- its standard error) /
p90 delay per scenario.

Run: python -m bench.drift_alternatives [--sr-log-a 11.0 11.25] [--first-seed N --seeds M]
"""

from __future__ import annotations

import argparse

import numpy as np

from bench.drift_benchmark import CHANGE, EVAL_SEEDS_START, P0, stream
from services.domain.detectors import MIXTURE, llr_steps, mixture_design, threshold_for_arl

SCENARIOS = ("shift:0.045", "shift:0.06", "shift:0.09", "ramp")


def first_alarms(x: np.ndarray, step, reset, stat0: float, width: int = 0) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Delay from CHANGE to each stream's first alarm at or after it (-1: none); width > 0: a
    detector with that many statistics per stream (state shape (width, streams))."""
    s = np.full((width, x.shape[0]) if width else x.shape[0], stat0)
    first = np.full(x.shape[0], -1)
    for t in range(x.shape[1]):
        s, alarm = step(s, x[:, t])
        if t >= CHANGE:
            first = np.where((first < 0) & alarm, t - CHANGE, first)
        s[..., alarm] = reset
    return first


def mixture(arl0: float = 1e5):  # type: ignore[no-untyped-def]
    """modq's detector: R_k = (1 + R_k) L_k per shift, alarm on an error when sum w_k R_k > A."""
    p0, a = mixture_design(P0, arl0)
    w = np.array([wk for _, wk in MIXTURE]) / sum(wk for _, wk in MIXTURE)
    p1 = np.minimum(np.array([k for k, _ in MIXTURE]) * p0, (1 + p0) / 2)
    up, down = (p1 / p0)[:, None], ((1 - p1) / (1 - p0))[:, None]
    return lambda r, x: ((r2 := (1 + r) * np.where(x, up, down)), x & (w @ r2 > a))


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
    se = ok.std(ddof=1) / np.sqrt(len(ok))
    return f"{np.median(ok):.0f} / {ok.mean():.0f}+/-{se:.0f} / {np.percentile(ok, 90):.0f}" + (
        f" ({(first < 0).sum()} missed)" if (first < 0).any() else ""
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--first-seed", type=int, default=EVAL_SEEDS_START)
    parser.add_argument("--sr-log-a", type=float, nargs="*", default=[11.0, 11.25])
    args = parser.parse_args()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    x = {sc: np.array([stream(seed, sc) for seed in seeds]) for sc in SCENARIOS}
    print(f"Seeds {seeds.start}-{seeds.stop - 1}; median / mean +/- standard error / p90 delay.\n")
    print("| detector | in-control ARL | " + " | ".join(SCENARIOS) + " |")
    print("|---" * (len(SCENARIOS) + 2) + "|")
    cells = [summary(first_alarms(x[sc], mixture(), 0.0, 0.0, width=len(MIXTURE))) for sc in SCENARIOS]
    print("| modq mixture SR | >= 100,000 (A = arl0 / 1.2) | " + " | ".join(cells) + " |", flush=True)
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
