"""Reference computations the tests check modq against, written verdict by verdict from the
formulas (DOMAIN.md), independently of ``services.domain``."""

from __future__ import annotations

from services.domain.rates import wilson_interval


def design_ratio(rows: list[tuple[float, bool]]) -> tuple[float | None, float | None, float | None, float]:
    """The Hajek ratio of (inclusion probability, hit) rows, its 95% interval (Wilson on
    n* = p (1 - p) / v, at most n) and n* uncapped."""
    if not rows:
        return None, None, None, 0.0
    w = [(1 / pi, float(y), pi) for pi, y in rows]
    total = sum(x for x, _, _ in w)
    p = sum(x * y for x, y, _ in w) / total
    v = sum((1 - pi) * x * x * (y - p) ** 2 for x, y, pi in w) / total**2
    n_star = p * (1 - p) / v if v > 0 else float("inf")
    n_eff = min(len(rows), n_star) if v > 0 and 0 < p < 1 else len(rows)
    low, high = wilson_interval(p * n_eff, n_eff)
    return p, low, high, n_star
