"""Where a change began, from the per-minute counts: the maximum-likelihood change point. Pure.

The detector's own onset is when the CUSUM of the shift that alarmed last left zero, which for a
small shift on a stable stream can be hours before the change (the statistic wanders above zero).
Attribution and impact count "since onset", so they use this estimate instead: for Bernoulli
verdicts at a known baseline ``p0`` that change to an unknown rate ``p1 > p0`` at an unknown time,
the maximum-likelihood change point maximises, over the candidate starts tau,

    LLR(tau) = e * log(p / p0) + (n - e) * log((1 - p) / (1 - p0)),   p = e / n,

with n verdicts and e errors from tau to the alarm (Hinkley 1970's change-point MLE, with the
post-change rate profiled out). Candidates are the bucket starts; the counts are the database's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def change_point(series: Sequence[tuple[int, int, int]], p0: float) -> int | None:
    """The start (of the buckets ``(start_ms, verdicts, errors)``, in time order) that maximises the
    likelihood of a rise from ``p0`` there; None when no suffix is above ``p0``."""
    found = change_point_set(series, p0)
    return None if found is None else found[0]


LIKELIHOOD_DROP = 1.92
"""Half the 95% quantile of chi-square(1): the change points whose log-likelihood ratio is within
this of the best form its 95% profile-likelihood set."""


def change_point_set(
    series: Sequence[tuple[int, int, int]], p0: float, drop: float = LIKELIHOOD_DROP
) -> tuple[int, int, int] | None:
    """(best, earliest, latest) of the starts whose LLR is within ``drop`` of the maximum: the change
    point and the ends of its 95% likelihood interval (the impact's interval spans them, so that it
    allows for not knowing exactly when the change began). None as ``change_point``."""
    if not 0 < p0 < 1:
        return None
    scores: list[tuple[int, float]] = []
    n = e = 0
    for start, verdicts, errors in reversed(series):
        n += verdicts
        e += errors
        if n == 0:
            continue
        p = e / n
        if p <= p0:
            scores.append((start, 0.0))
            continue
        llr = e * math.log(p / p0) + ((n - e) * math.log((1 - p) / (1 - p0)) if p < 1 else 0.0)
        scores.append((start, llr))
    best = max(scores, key=lambda s: (s[1], -s[0]), default=None)
    if best is None or best[1] <= 0:
        return None
    near = [t for t, llr in scores if llr >= best[1] - drop]
    return best[0], min(near), max(near)
