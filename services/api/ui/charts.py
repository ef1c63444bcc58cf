"""Charts drawn on the server as SVG: no chart library, no build step, readable without JavaScript."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from markupsafe import Markup, escape

from services.domain.rates import wilson_interval


@dataclass(frozen=True, slots=True)
class Point:
    t: datetime
    verdicts: int
    errors: int


def rate_chart(
    points: Sequence[Point],
    baseline: float | None,
    alerts: Sequence[tuple[datetime, str, str]] = (),
    width: int = 760,
    height: int = 240,
    title: str = "error rate",
    span: tuple[datetime, datetime] | None = None,
) -> Markup:
    """The error rate per point (at its slot's start; the x axis spans ``span``, the window, when
    given, else the points) with its Wilson 95% band, the baseline as a dashed line and each alert (time, label, link)
    as a marked vertical line; the y axis fits the band."""
    left, right, top, bottom = 48, 12, 12, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    judged = [p for p in points if p.verdicts > 0]
    if not judged:
        return Markup(
            f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" aria-label="{escape(title)}: no verdicts">'
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no verdicts in this window</text></svg>'
        )
    bands = [(p, p.errors / p.verdicts, *wilson_interval(p.errors, p.verdicts)) for p in judged]
    y_max = max([hi for *_, hi in bands] + [baseline or 0.0]) * 1.1 or 0.05
    first, last = span or (points[0].t, points[-1].t)  # the x axis: the window, or the points'
    t0, t1 = first.timestamp(), last.timestamp()
    seconds = max(t1 - t0, 1.0)

    def x(t: datetime) -> float:
        return left + (t.timestamp() - t0) / seconds * plot_w

    def y(v: float) -> float:
        return top + plot_h - v / y_max * plot_h

    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" preserveAspectRatio="none"'
        f' aria-label="{escape(title)} with its 95% interval, baseline and alerts">',
        f"<title>{escape(title)}</title>",
    ]
    for i in range(5):  # gridlines and y labels
        v = y_max * i / 4
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>')
        parts.append(f'<text class="axis" x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.1%}</text>')
    upper = " ".join(f"{x(p.t):.1f},{y(hi):.1f}" for p, _, _, hi in bands)
    lower = " ".join(f"{x(p.t):.1f},{y(lo):.1f}" for p, _, lo, _ in reversed(bands))
    parts.append(f'<polygon class="band" points="{upper} {lower}"><title>95% interval</title></polygon>')
    line = " ".join(f"{x(p.t):.1f},{y(r):.1f}" for p, r, _, _ in bands)
    parts.append(f'<polyline class="rate" points="{line}"/>')
    for p, r, lo, hi in bands:
        tip = f"{p.t:%Y-%m-%d %H:%M} UTC: {r:.1%} ({lo:.1%}-{hi:.1%}) on {p.verdicts} verdicts"
        parts.append(
            f'<circle class="dot" cx="{x(p.t):.1f}" cy="{y(r):.1f}" r="2.5"><title>{escape(tip)}</title></circle>'
        )
    if baseline is not None:
        parts.append(
            f'<line class="baseline" x1="{left}" x2="{width - right}" y1="{y(baseline):.1f}" y2="{y(baseline):.1f}">'
            f"<title>baseline {baseline:.1%}</title></line>"
        )
    for when, label, href in alerts:
        if t0 <= when.timestamp() <= t1:
            ax = x(when)
            parts.append(
                f'<a href="{escape(href)}"><line class="alert-mark" x1="{ax:.1f}" x2="{ax:.1f}" y1="{top}"'
                f' y2="{top + plot_h}"><title>{escape(label)}</title></line>'
                f'<text class="alert-label" x="{ax + 3:.1f}" y="{top + 10}">&#9650; alert</text></a>'
            )
    parts.append(
        f'<text class="axis" x="{left}" y="{height - 8}">{first:%m-%d %H:%M}</text>'
        f'<text class="axis" x="{width - right}" y="{height - 8}" text-anchor="end">{last:%m-%d %H:%M} UTC</text>'
    )
    parts.append("</svg>")
    return Markup("".join(parts))
