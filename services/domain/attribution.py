"""Where the excess errors of an alert sit: Adtributor's explanatory power and surprise over the
slices of each dimension (Bhagwan et al., NSDI 2014), adapted to an error rate. Pure, no I/O.

For a ratio such as an error rate the additive quantity is the error count, so each slice is
compared with the errors it would have made at its own rate before the onset (its verdicts since
the onset times that rate, shrunk toward the alert's baseline when the slice had few verdicts
before):

- excess of a slice = errors since onset - expected errors since onset;
- explanatory power (``share``) = the slice's excess that stands out from noise / the sum of the same
  over the dimension's slices, where what stands out is the excess soft-thresholded by one binomial
  standard deviation of the slice's expected errors, max(0, e - n r - sqrt(n r (1 - r))) (Donoho and
  Johnstone's soft threshold). Adtributor's raw ratio, slice excess / scope excess (``shrink=None``),
  lets the noise of slices with no real excess take shares: at a pair's alarm a market has a few
  dozen verdicts since onset, and two clean markets' chance excess of +-2 errors each moved the
  drifting market's share below 0.7 in a quarter of the seeds (docs/alert-to-action.md). Shares of
  one dimension sum to 1 over its slices;
- surprise = the slice's term of the Jensen-Shannon divergence between the expected and the actual
  distribution of errors over the dimension's slices.

Per dimension, slices are taken in order of surprise, each with a share above ``min_share``
(Adtributor's 0.1) and over-represented among the errors (its share of the errors since onset at
least ``over_represented`` times its expected share: an excess spread evenly, as a shift of the
whole scope, names no slice of that dimension), until they explain ``explain`` (its 0.67) of the
excess within ``max_slices`` slices; a dimension whose excess is spread wider than that explains
nothing. Dimensions are ranked by the surprise of their chosen slices and the slices of the best
``max_dimensions`` are returned, largest share first."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

SliceCounts = tuple[int, int]
"""(verdicts, errors) of one slice in one window."""
DimensionCounts = Mapping[str, Mapping[str, SliceCounts]]
"""dimension -> slice value -> counts."""


@dataclass(frozen=True, slots=True)
class Slice:
    dimension: str
    value: str
    share: float  # fraction of the scope's excess errors this slice explains
    observed_rate: float | None  # since onset
    baseline_rate: float | None  # before onset (shrunk toward the alert's baseline)
    verdicts: int  # since onset
    surprise: float

    def as_dict(self) -> dict[str, object]:
        return {
            "dimension": self.dimension,
            "value": self.value,
            "share": round(min(self.share, 1.0), 4),  # (above 1 when other slices made fewer errors)
            "observed_rate": None if self.observed_rate is None else round(self.observed_rate, 6),
            "baseline_rate": None if self.baseline_rate is None else round(self.baseline_rate, 6),
            "verdicts": self.verdicts,
        }


def _js_term(p: float, q: float) -> float:
    """One slice's term of the Jensen-Shannon divergence (natural log) between shares p and q."""
    m = (p + q) / 2
    out = 0.0
    if p > 0:
        out += 0.5 * p * math.log(p / m)
    if q > 0:
        out += 0.5 * q * math.log(q / m)
    return out


def _stands_out(errors: int, verdicts: int, rate: float, z: float) -> float:
    """A slice's excess errors soft-thresholded by ``z`` binomial standard deviations of its expected
    errors: max(0, e - n r - z sqrt(n r (1 - r)))."""
    return max(0.0, errors - verdicts * rate - z * math.sqrt(verdicts * rate * (1 - rate)))


def scope_excess(before: SliceCounts, since: SliceCounts, baseline_rate: float, prior_strength: float = 50.0) -> float:
    """The scope's excess errors since onset against its own rate before the onset."""
    n_b, e_b = before
    n, e = since
    rate = (e_b + prior_strength * baseline_rate) / (n_b + prior_strength)
    return e - n * rate


def attribute(
    before: DimensionCounts,
    since: DimensionCounts,
    baseline_rate: float,
    excess: float,
    *,
    prior_strength: float = 50.0,
    min_share: float = 0.1,
    explain: float = 0.67,
    max_slices: int = 3,
    max_dimensions: int = 3,
    over_represented: float = 1.1,
    shrink: float | None = 1.0,
) -> list[Slice]:
    """The slices that explain ``excess`` (the scope's excess errors since onset), largest first."""
    if excess <= 0:
        return []
    ranked: list[tuple[float, list[Slice]]] = []
    for dimension, now in since.items():
        old = before.get(dimension, {})
        rows = []
        for value, (n, e) in now.items():
            if n <= 0:
                continue
            n_b, e_b = old.get(value, (0, 0))
            rate = (e_b + prior_strength * baseline_rate) / (n_b + prior_strength)
            rows.append((value, n, e, rate, n * rate))
        expected_total = sum(r[4] for r in rows)
        actual_total = sum(r[2] for r in rows)
        if expected_total <= 0 or actual_total <= 0:
            continue
        if shrink is None:
            standing = {r[0]: r[2] - r[4] for r in rows}
            total = excess
        else:
            standing = {value: _stands_out(e, n, rate, shrink) for value, n, e, rate, _ in rows}
            total = sum(standing.values())
            if total <= 0:
                continue  # no slice's excess stands out from its noise
        slices = []
        for value, n, e, rate, expected in rows:
            p, q = expected / expected_total, e / actual_total
            if q < over_represented * p:
                continue  # the slice's part of the errors grew no more than the rest's: not where it is
            slices.append(Slice(dimension, value, standing[value] / total, e / n, rate, n, _js_term(p, q)))
        chosen: list[Slice] = []
        explained = 0.0
        for s in sorted(slices, key=lambda s: (-s.surprise, s.value)):
            if s.share <= min_share:
                continue
            chosen.append(s)
            explained += s.share
            if explained >= explain or len(chosen) >= max_slices:
                break
        if chosen and explained >= explain:
            ranked.append((sum(s.surprise for s in chosen), chosen))
    ranked.sort(key=lambda r: -r[0])
    out = [s for _, chosen in ranked[:max_dimensions] for s in chosen]
    return sorted(out, key=lambda s: (-s.share, -s.surprise))


def in_words(slices: list[Slice], limit: int = 3) -> str:
    """ "82% of the excess is in market DE, 71% in queue_id Q7" (the best slice of each dimension)."""
    seen: set[str] = set()
    parts: list[str] = []
    for s in slices:
        if s.dimension in seen:
            continue
        seen.add(s.dimension)
        parts.append(f"{min(s.share, 1.0):.0%} {'of the excess is ' if not parts else ''}in {s.dimension} {s.value}")
        if len(parts) == limit:
            break
    return ", ".join(parts)
