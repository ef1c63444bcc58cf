"""How far above A the mixture Shiryaev-Roberts sum is when it alarms in control (its overshoot).

modq's detector sets A = arl0 / OVERSHOOT: under the baseline R_n - n is a martingale, so the
mean run length is E[R_T] = A * E[R_T / A], and the design holds wherever the mean overshoot
E[R_T / A] is at least OVERSHOOT. This script measures it by simulation (vectorised over
independent chains, the detector's own maths, alarms only on an error) for baselines from 0.01%
to 45% and several ARL0. (tests/unit/test_drift.py checks the identity against run lengths.)

Run: python -m bench.drift_overshoot [--chains 400]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from services.domain.detectors import MIXTURE, OVERSHOOT, mixture_design

BASELINES = (0.0001, 0.001, 0.01, 0.03, 0.1, 0.3, 0.45)
ARL0S = (500.0, 5_000.0, 100_000.0)


def simulate(p0: float, a: float, chains: int, steps: int, seed: int) -> np.ndarray:
    """Overshoots R_T / A at the alarms of ``chains`` in-control detectors over ``steps`` verdicts."""
    weights = np.array([w for _, w in MIXTURE]) / sum(w for _, w in MIXTURE)
    p1 = np.minimum(np.array([k for k, _ in MIXTURE]) * p0, (1 + p0) / 2)
    up, down = (p1 / p0)[:, None], ((1 - p1) / (1 - p0))[:, None]
    rng = np.random.default_rng(seed)
    r = np.zeros((len(MIXTURE), chains))
    overshoots = []
    for _ in range(steps):
        x = rng.random(chains) < p0
        r = (1.0 + r) * np.where(x, up, down)
        total = weights @ r
        alarm = x & (total > a)
        if alarm.any():
            overshoots.append(total[alarm] / a)
            r[:, alarm] = 0.0
    return np.concatenate(overshoots or [np.zeros(0)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=400)
    parser.add_argument("--alarms", type=int, default=1_000, help="about this many alarms per cell")
    args = parser.parse_args()
    started = time.perf_counter()
    print(f"OVERSHOOT = {OVERSHOOT}; shifts and weights {MIXTURE}.\n")
    print("| baseline | arl0 | log A | alarms | mean overshoot E[R_T/A] | ARL0 = A E[R_T/A], / arl0 |")
    print("|---|---|---|---|---|---|")
    lowest = math.inf
    for arl0 in ARL0S:
        for p0 in BASELINES:
            p0_r, a = mixture_design(p0, arl0)
            steps = int(args.alarms * a * 1.4 / args.chains) + 1
            over = simulate(p0_r, a, args.chains, steps, seed=int(p0 * 1e6) + int(arl0))
            se = over.std() / math.sqrt(len(over))
            lowest = min(lowest, over.mean())
            print(
                f"| {p0:g} | {arl0:,.0f} | {math.log(a):.2f} | {len(over)} | {over.mean():.3f} +/- {se:.3f} | "
                f"{a * over.mean() / arl0:.3f} |",
                flush=True,
            )
    print(f"\nLowest mean overshoot: {lowest:.3f} (OVERSHOOT = {OVERSHOOT}). {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
