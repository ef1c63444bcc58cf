"""Coverage of the design-based intervals of the weighted error rate on stratified QA samples with a
known truth (issue "Trust the measuring stick").

Each replicate draws a population of decisions in strata with their own sizes and error rates (a
marketplace's QA sample is risk-based: the riskier queues and the enforcements are judged at higher
rates than the approvals), samples each decision independently with its stratum's inclusion
probability (Poisson sampling, as the QA tools sample a stream), and computes from the sample alone,
through the same four additive sums the scorer keeps (``domain.sampling``):

- the Hajek rate with Wilson's interval on the effective sample size (what the API reports),
- the same with Korn and Graubard's (Clopper-Pearson on the effective size),
- the plain Wilson interval of the unweighted rate (what ignoring the design gives),

and whether each covers the population's true error rate. Several designs, from mild to strongly
unequal weights and from a few hundred verdicts to a few thousand.

Run: python -m bench.sampling_coverage [--reps 2000] [--out docs/sampling.md]
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass
from pathlib import Path

from services.domain.rates import wilson_interval
from services.domain.sampling import design_rate


@dataclass(frozen=True)
class Stratum:
    size: int
    rate: float
    inclusion: float


DESIGNS: dict[str, list[Stratum]] = {
    "approvals at a quarter of enforcements' rate (2 strata, ~600 verdicts)": [
        Stratum(20_000, 0.01, 0.01),  # approvals: few errors, sampled lightly
        Stratum(10_000, 0.08, 0.04),  # enforcements
    ],
    "risk-based queues (4 strata, ~1,500 verdicts)": [
        Stratum(30_000, 0.02, 0.01),
        Stratum(10_000, 0.05, 0.03),
        Stratum(4_000, 0.12, 0.10),
        Stratum(1_000, 0.30, 0.50),
    ],
    "a rare risky stratum (3 strata, ~400 verdicts)": [
        Stratum(50_000, 0.02, 0.004),
        Stratum(5_000, 0.06, 0.02),
        Stratum(500, 0.40, 0.20),
    ],
    "equal probabilities (1 stratum, ~500 verdicts)": [Stratum(25_000, 0.04, 0.02)],
}


def replicate(rng: random.Random, design: list[Stratum]) -> tuple[bool, bool, bool, float]:
    """One population and one sample: (wilson on n* covers, Korn-Graubard covers, plain Wilson covers, n*)."""
    wrong_total = population = 0
    n = 0
    w_sum = wy_sum = w2_sum = w2y_sum = 0.0
    errors = 0
    for s in design:
        w = 1 / s.inclusion
        for _ in range(s.size):
            wrong = rng.random() < s.rate
            wrong_total += wrong
            population += 1
            if rng.random() < s.inclusion:
                n += 1
                errors += wrong
                w_sum += w
                w2_sum += w * w
                if wrong:
                    wy_sum += w
                    w2y_sum += w * w
    truth = wrong_total / population
    wilson = design_rate(n, w_sum, wy_sum, w2_sum, w2y_sum, "wilson")
    kg = design_rate(n, w_sum, wy_sum, w2_sum, w2y_sum, "korn_graubard")
    low, high = wilson_interval(errors, n)
    assert wilson.ci_low is not None and wilson.ci_high is not None
    assert kg.ci_low is not None and kg.ci_high is not None
    return (
        wilson.ci_low <= truth <= wilson.ci_high,
        kg.ci_low <= truth <= kg.ci_high,
        low <= truth <= high,
        wilson.effective_verdicts,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    started = time.monotonic()
    rng = random.Random(args.seed)
    lines = [
        "# Sample-aware intervals: coverage on stratified QA samples",
        "",
        f"`python -m bench.sampling_coverage --reps {args.reps} --seed {args.seed}`. Nominal 95%; target 93-97%"
        " for the design-based interval. Each replicate is a new population and a new Poisson sample of it.",
        "",
        "| design | Wilson on n* (the API's) | Korn-Graubard | plain Wilson, weights ignored | median n* / verdicts |",
        "|---|---|---|---|---|",
    ]
    for name, design in DESIGNS.items():
        runs = [replicate(rng, design) for _ in range(args.reps)]
        expected_n = sum(s.size * s.inclusion for s in design)
        cover = [sum(r[i] for r in runs) / len(runs) for i in range(3)]
        n_eff = sorted(r[3] for r in runs)[len(runs) // 2]
        lines.append(
            f"| {name} | {cover[0]:.1%} | {cover[1]:.1%} | {cover[2]:.1%} | {n_eff:,.0f} / {expected_n:,.0f} |"
        )
    lines.append("")
    lines.append(f"({time.monotonic() - started:.0f} s.)")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
