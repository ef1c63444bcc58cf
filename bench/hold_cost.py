"""What the hold (a pair's alarm waiting for its label or vendor, ``PairMonitor.settle``) costs the
detection stage: the same in-memory fleet (``services.devtools.fleet``, the ``detect`` the scorer
runs) with ``hold_ms`` 0 and the default, alternated, on the same verdicts: a fleet of 8 labels x 5
vendors at 3% for a day, then one label at 6% for a day (its scope watching, pairs held and
linked). Reports CPU-seconds of detection each way per seed (median of ``--runs``) and the median
ratio over the seeds.

Run: python -m bench.hold_cost [--runs 3] [--seeds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.alert_to_action import BATCH_S, LABELS, P0, VENDORS, World
from services.devtools.fleet import Fleet
from services.domain.join import JudgedVerdict
from services.domain.monitor import MonitorPolicy

CHANGE_S = 86_400


def verdicts(seed: int) -> list[list[JudgedVerdict]]:
    """Records of ten minutes of the fleet's judged verdicts (``bench.alert_to_action.World``: a
    decision every 30 s per pair, QA judging a quarter), two days, label L0 at 6% in the second."""

    def rate(label: str, vendor: str, market: str, t_s: int) -> float:
        return 0.06 if label == "L0" and t_s >= CHANGE_S else P0

    world, pairs, out = World(seed, rate), [(lb, v) for lb in LABELS for v in VENDORS], []
    while world.t_s < 2 * CHANGE_S:
        out.append(world.advance(BATCH_S, pairs))
        world.decisions.clear()  # (only the verdicts are needed)
    return out


def run(records: list[list[JudgedVerdict]], hold_ms: int) -> tuple[float, int]:
    """CPU-seconds of detection, and how many alerts were sent after a hold."""
    fleet = Fleet(MonitorPolicy(baseline_mode="sla", arl0=100_000, hold_ms=hold_ms))
    started = time.process_time()
    changes = [c for r in records for c in fleet.feed(r)]
    return time.process_time() - started, sum("for a wider scope near its threshold" in c.summary for c in changes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3, help="runs each way per seed, alternated")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    ratios, held = [], 0
    for seed in range(1, args.seeds + 1):
        records = verdicts(seed)
        n = sum(len(r) for r in records)
        times: dict[int, list[float]] = {0: [], MonitorPolicy().hold_ms: []}
        for _ in range(args.runs):
            for hold_ms in times:
                cpu, held_now = run(records, hold_ms)
                times[hold_ms].append(cpu)
                held += held_now if hold_ms else 0
        off, on = (statistics.median(times[h]) for h in times)
        ratios.append(on / off)
        print(
            f"seed {seed}: {n} verdicts, detection CPU-seconds (median of {args.runs}): without the hold"
            f" {off:.2f} s ({n / off:,.0f} verdicts/s), with it {on:.2f} s ({n / on:,.0f} verdicts/s)"
        )
    print(
        f"with the hold against without, median over {args.seeds} seeds: {statistics.median(ratios) - 1:+.1%}"
        f" (seeds from {min(ratios) - 1:+.1%} to {max(ratios) - 1:+.1%}); alerts sent after a hold: {held // args.runs}"
    )


if __name__ == "__main__":
    main()
