"""Drift-detector benchmark: modq's mixture Shiryaev-Roberts detector beside river's ADWIN, DDM and
PageHinkley, and beside the Bernoulli CUSUM it replaced.

Protocol (issue "Drift alerts good enough to page someone"): Bernoulli error streams at a 3%
baseline; 200 calibration seeds and 200 other evaluation seeds; stable streams of 20,000
verdicts; abrupt shifts after 5,000 verdicts to 4.5%, 6% and 9%; a ramp from 3% to 6% over
4,000 verdicts; delay in verdicts after the change; a miss is no alarm within 15,000.
river's detectors run with their defaults and calibrated (on the calibration seeds only) to
modq's measured false-alarm rate. Also: modq with a baseline learned from 10k verdicts, and
alert resolution after the pair recovers.

Run: python bench/drift_benchmark.py [--seeds 200] [--out docs/drift-benchmark.md]
"""

from __future__ import annotations

import argparse
import statistics
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from services.domain.detectors import BernoulliCusum, design, make_detector
from services.domain.monitor import MonitorPolicy, PairMonitor

P0 = 0.03
ARL0 = 100_000
N = 20_000
CHANGE = 5_000
HORIZON = 15_000
RAMP = 4_000
CAL_SEEDS_START, EVAL_SEEDS_START = 0, 1_000


class Detector(Protocol):
    def update(self, x: Any) -> Any: ...

    @property
    def drift_detected(self) -> bool: ...


Factory = Callable[[], Detector]


def stream(seed: int, scenario: str) -> list[bool]:
    """One seeded Bernoulli stream; scenario: stable, shift:<p>, ramp."""
    rng = np.random.default_rng([seed, zlib.crc32(scenario.encode())])
    p = np.full(N, P0)
    if scenario.startswith("shift:"):
        p[CHANGE:] = float(scenario.split(":")[1])
    elif scenario == "ramp":
        p[CHANGE : CHANGE + RAMP] = np.linspace(P0, 0.06, RAMP)
        p[CHANGE + RAMP :] = 0.06
    return (rng.random(N) < p).tolist()


def false_alarms(factory: Factory, seeds: Sequence[int]) -> float:
    """Alarms per 10,000 stable verdicts."""
    alarms = 0
    for seed in seeds:
        d = factory()
        for x in stream(seed, "stable"):
            d.update(x)
            alarms += d.drift_detected
    return alarms / (len(seeds) * N / 10_000)


def delays(factory: Factory, seeds: Sequence[int], scenario: str) -> tuple[list[int], int]:
    """Verdicts from the change to the first alarm at or after it; and the number of misses."""
    out, misses = [], 0
    for seed in seeds:
        d = factory()
        found = None
        for i, x in enumerate(stream(seed, scenario)):
            d.update(x)
            if d.drift_detected and i >= CHANGE:
                found = i - CHANGE
                break
        if found is None or found > HORIZON:
            misses += 1
        else:
            out.append(found)
    return out, misses


@dataclass
class Row:
    name: str
    fa: float
    results: dict[str, tuple[list[int], int]]


def evaluate(name: str, factory: Factory, seeds: Sequence[int]) -> Row:
    scenarios = ["shift:0.045", "shift:0.06", "shift:0.09", "ramp"]
    return Row(name, false_alarms(factory, seeds), {s: delays(factory, seeds, s) for s in scenarios})


# -- detectors ------------------------------------------------------------------------------


class RiverBinary:
    """Adapter: river detectors take 0/1; this keeps the drift_detected convention."""

    def __init__(self, det: Any) -> None:
        self.det = det

    def update(self, x: bool) -> None:
        self.det.update(int(x))

    @property
    def drift_detected(self) -> bool:
        return bool(self.det.drift_detected)


def river_factory(kind: str, param: float | None) -> Factory:
    from river import drift

    def make() -> Detector:
        if kind == "ADWIN":
            return RiverBinary(drift.ADWIN() if param is None else drift.ADWIN(delta=param))
        if kind == "DDM":
            return RiverBinary(drift.binary.DDM() if param is None else drift.binary.DDM(drift_threshold=param))
        return RiverBinary(drift.PageHinkley() if param is None else drift.PageHinkley(threshold=param))

    return make


def modq_factory(baseline: float = P0) -> Factory:
    return lambda: make_detector(baseline, ARL0)


def cusum_factory() -> Factory:
    """The detector modq used before: a CUSUM on a doubling, threshold from its exact chain."""
    return lambda: BernoulliCusum(*design(P0, ARL0))


def calibrate(kind: str, target_fa: float, seeds: Sequence[int]) -> float:
    """Parameter of a river detector whose false-alarm rate on the calibration seeds is <= target."""
    # Monotone in each parameter: smaller delta / larger thresholds mean fewer alarms.
    if kind == "ADWIN":
        lo, hi, smaller_is_safer = 1e-12, 0.5, True
    elif kind == "DDM":
        lo, hi, smaller_is_safer = 2.0, 12.0, False
    else:
        lo, hi, smaller_is_safer = 1.0, 200.0, False
    for _ in range(9):
        mid = (lo * hi) ** 0.5 if kind == "ADWIN" else (lo + hi) / 2
        fa = false_alarms(river_factory(kind, mid), seeds)
        ok = fa <= target_fa
        if smaller_is_safer:
            lo, hi = (mid, hi) if ok else (lo, mid)
        else:
            lo, hi = (lo, mid) if ok else (mid, hi)
    return lo if smaller_is_safer else hi


# -- learned baseline and resolution --------------------------------------------------------


def learned_baseline_row(seeds: Sequence[int]) -> Row:
    """modq with p0 estimated from 10k in-control verdicts of each seed (not the true 3%)."""
    results: dict[str, tuple[list[int], int]] = {}
    fa_alarms = 0
    for scenario in ["stable", "shift:0.045", "shift:0.06", "shift:0.09", "ramp"]:
        out, misses = [], 0
        for seed in seeds:
            history = np.random.default_rng([seed, 77]).random(10_000) < P0
            d = make_detector(float(history.mean()), ARL0)
            found = None
            for i, x in enumerate(stream(seed, scenario)):
                d.update(x)
                if d.drift_detected:
                    if scenario == "stable":
                        fa_alarms += 1
                    elif i >= CHANGE:
                        found = i - CHANGE
                        break
            if scenario != "stable":
                if found is None:
                    misses += 1
                else:
                    out.append(found)
        if scenario != "stable":
            results[scenario] = (out, misses)
    return Row("modq mixture SR, baseline learned from 10k", fa_alarms / (len(seeds) * N / 10_000), results)


def resolution(
    seeds: Sequence[int], threshold: float, shift_len: int, shifted: float = 0.06
) -> tuple[list[int], float, int]:
    """Alerts fired during a 3% -> ``shifted`` episode: resolution delay after recovery, premature
    resolves (every resolve while the shift lasts, each one a page that the shift is over)."""
    delays_out, premature, episodes = [], 0, 0
    recover_at = CHANGE + shift_len
    for seed in seeds:
        rng = np.random.default_rng([seed, 99])
        p = np.full(recover_at + 6_000, P0)
        p[CHANGE:recover_at] = shifted
        xs = (rng.random(len(p)) < p).tolist()
        m = PairMonitor(
            "error_rate", "L", "V", MonitorPolicy(baseline_mode="sla", arl0=ARL0, resolve_threshold=threshold)
        )
        fired_in_episode = False
        for i, x in enumerate(xs):
            ev = m.update(x, i)
            if ev is None:
                continue
            if ev.status == "firing" and CHANGE <= i < recover_at and not fired_in_episode:
                fired_in_episode = True
                episodes += 1
            elif ev.status == "resolved" and fired_in_episode:
                if i < recover_at:
                    premature += 1
                else:
                    delays_out.append(i - recover_at)
                    break
    return delays_out, premature / max(episodes, 1), episodes


def onset_errors(seeds: Sequence[int], scenario: str) -> list[int]:
    """modq's estimated onset at its first alarm after the change, minus the change (verdicts)."""
    out = []
    for seed in seeds:
        d = make_detector(P0, ARL0)
        for i, x in enumerate(stream(seed, scenario)):
            d.update(x)
            if d.drift_detected and i >= CHANGE and d.last_change is not None:
                out.append(i - d.last_change.verdicts + 1 - CHANGE)
                break
    return out


# -- report ---------------------------------------------------------------------------------


def fmt(values: list[int], misses: int) -> str:
    if not values:
        return f"- / - / - ({misses} missed)"
    med = statistics.median(values)
    mean = statistics.fmean(values)
    p90 = float(np.percentile(values, 90))
    return f"{med:.0f} / {mean:.0f} / {p90:.0f}" + (f" ({misses} missed)" if misses else "")


def targets(row: Row, learned_slowdown: float, resolved: tuple[list[int], float, int] | None) -> list[str]:
    """The issue's targets against modq's row; means with their standard error over the seeds."""

    def mean(scenario: str) -> tuple[float, float, int]:
        values, misses = row.results[scenario]
        return statistics.fmean(values), statistics.stdev(values) / len(values) ** 0.5, misses

    six, _ = row.results["shift:0.06"]
    m6, se6, _ = mean("shift:0.06")
    m9, se9, _ = mean("shift:0.09")
    m45, se45, miss45 = mean("shift:0.045")
    mr, ser, _ = mean("ramp")
    med6, p90 = statistics.median(six), float(np.percentile(six, 90))
    checks = [
        ("false alarms <= 0.1 per 10k stable verdicts", f"{row.fa:.3f}", row.fa <= 0.1),
        ("3% -> 6% median <= 380", f"{med6:.0f}", med6 <= 380),
        ("3% -> 6% mean <= 450", f"{m6:.0f} +/- {se6:.0f}", m6 <= 450),
        ("3% -> 6% p90 <= 820", f"{p90:.0f}", p90 <= 820),
        ("3% -> 9% mean <= 175", f"{m9:.0f} +/- {se9:.0f}", m9 <= 175),
        (
            "3% -> 4.5% mean <= 1,600, no misses",
            f"{m45:.0f} +/- {se45:.0f}, {miss45} missed",
            m45 <= 1600 and not miss45,
        ),
        ("ramp mean <= 2,450", f"{mr:.0f} +/- {ser:.0f}", mr <= 2450),
        ("learned baseline at most 5% slower (6% mean)", f"{learned_slowdown * 100:+.1f}%", learned_slowdown <= 0.05),
    ]
    if resolved is not None and resolved[0]:
        med_r = statistics.median(resolved[0])
        checks.append(
            (
                "resolution median <= 450, <= 0.1 premature per episode (threshold 6)",
                f"{med_r:.0f}, {resolved[1]:.3f}",
                med_r <= 450 and resolved[1] <= 0.1,
            )
        )
    out = [f"Targets, {row.name} (mean +/- its standard error over the seeds):", "", "| target | measured | met |"]
    out.append("|---|---|---|")
    out += [f"| {what} | {measured} | {'yes' if ok else 'no'} |" for what, measured, ok in checks]
    return out


def run_row(args: tuple[str, str, float | None, list[int]]) -> Row:
    name, kind, param, seeds = args
    factory = {"modq": modq_factory, "cusum": cusum_factory}.get(kind, lambda: river_factory(kind, param))()
    return evaluate(name, factory, seeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    parser.add_argument("--no-calibration", action="store_true", help="skip calibrating river (faster)")
    args = parser.parse_args()
    cal = list(range(CAL_SEEDS_START, CAL_SEEDS_START + args.seeds))
    ev = list(range(EVAL_SEEDS_START, EVAL_SEEDS_START + args.seeds))
    started = time.perf_counter()

    with ProcessPoolExecutor(max_workers=2) as pool:
        modq_cal_fa = false_alarms(modq_factory(), cal)
        jobs = [("modq mixture SR (known 3% baseline)", "modq", None, ev)]
        jobs += [("CUSUM on a doubling (modq's earlier detector)", "cusum", None, ev)]
        jobs += [(f"river {k} (defaults)", k, None, ev) for k in ("ADWIN", "DDM", "PageHinkley")]
        params: dict[str, float] = {}
        if not args.no_calibration:
            target = max(modq_cal_fa, 0.1)
            kinds = ["ADWIN", "DDM", "PageHinkley"]
            for kind, value in zip(kinds, pool.map(calibrate, kinds, [target] * 3, [cal] * 3), strict=True):
                params[kind] = value
                jobs.append((f"river {kind} (calibrated: {value:.3g})", kind, value, ev))
        rows = list(pool.map(run_row, jobs))
        learned_future = pool.submit(learned_baseline_row, ev)
        thresholds = [3.0, 4.0, 5.0, 6.0]
        res_futures = {h: pool.submit(resolution, ev, h, 5_000) for h in thresholds}
        other_futures = {p: pool.submit(resolution, ev, 6.0, 5_000, p) for p in (0.045, 0.09)}
        scenarios = ["shift:0.045", "shift:0.06", "shift:0.09", "ramp"]
        onset_futures = {sc: pool.submit(onset_errors, ev, sc) for sc in scenarios}
        rows.append(learned_future.result())
        res = {h: f.result() for h, f in res_futures.items()}
        onsets = {sc: f.result() for sc, f in onset_futures.items()}
        others = {p: f.result() for p, f in other_futures.items()}

    lines = [
        f"Seeds: {args.seeds} calibration, {args.seeds} evaluation; ARL0 = {ARL0:,}; baseline 3%.",
        f"modq's false-alarm rate on the calibration seeds: {modq_cal_fa:.3f} per 10k (river calibrated to "
        f"{max(modq_cal_fa, 0.1):.3f}).",
        "",
        "Delays in verdicts after the change: median / mean / p90.",
        "",
        "| detector | false alarms / 10k stable | 3% -> 4.5% | 3% -> 6% | 3% -> 9% | ramp 3% -> 6% |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        r = row.results
        lines.append(
            f"| {row.name} | {row.fa:.3f} | {fmt(*r['shift:0.045'])} | {fmt(*r['shift:0.06'])} | "
            f"{fmt(*r['shift:0.09'])} | {fmt(*r['ramp'])} |"
        )
    known = statistics.fmean(rows[0].results["shift:0.06"][0])
    learned = statistics.fmean(rows[-1].results["shift:0.06"][0])
    lines += [
        "",
        f"Learned baseline vs known, 3% -> 6% mean delay: {learned:.0f} vs {known:.0f} "
        f"({(learned / known - 1) * 100:+.1f}%).",
        "",
        "Resolution (3% -> 6% for 5,000 verdicts, then back to 3%; alerts that fired during the shift):",
        "",
        "| resolve threshold | median / mean verdicts to resolve after recovery | premature resolves per episode |"
        " episodes |",
        "|---|---|---|---|",
    ]
    for h, (dl, prem, episodes) in res.items():
        med = f"{statistics.median(dl):.0f} / {statistics.fmean(dl):.0f}" if dl else "-"
        lines.append(f"| {h:g} | {med} | {prem:.3f} | {episodes} |")
    lines += ["", "The same at threshold 6 (the default) for episodes of other shifts:", ""]
    lines += ["| shift | median / mean verdicts to resolve | premature resolves per episode | episodes |"]
    lines += ["|---|---|---|---|"]
    for p, (dl, prem, episodes) in others.items():
        med = f"{statistics.median(dl):.0f} / {statistics.fmean(dl):.0f}" if dl else "-"
        lines.append(f"| 3% -> {p:.1%} | {med} | {prem:.3f} | {episodes} |")
    lines += [
        "",
        "Onset the alert reports (first alarm after the change) minus the true change, in verdicts; for"
        " the ramp, minus its start:",
        "",
        "| scenario | median | median absolute | p10 / p90 |",
        "|---|---|---|---|",
    ]
    for sc, errs in onsets.items():
        lo, hi = np.percentile(errs, [10, 90])
        lines.append(
            f"| {sc} | {round(statistics.median(errs))} | {statistics.median(abs(e) for e in errs):.0f} | "
            f"{lo:.0f} / {hi:.0f} |"
        )
    lines += [
        "",
        *targets(rows[0], learned / known - 1, res.get(6.0)),
        "",
        f"Total time: {time.perf_counter() - started:.0f} s.",
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
