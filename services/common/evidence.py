"""An alert's evidence from the exact counts in the database: where the excess sits (attribution)
and how many decisions it hurt (impact), for the API, the alert history and the notifier.

Since onset means the buckets from the change point (the posterior-mean start of the rise in
the scope's minute counts, ``domain.onset``; the detector's own onset can be hours early for a
small shift) to the alert's resolution (or the newest bucket); before onset, the
``BASELINE_WINDOW`` before it. A pair alert looks at the pair's rows, a
label-wide one at the label's rows over every vendor (and names vendors), a vendor-wide one at the
vendor's over every label (and names labels).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import rate_buckets, slice_buckets
from services.contracts.alerts import RULE_OVER, RULE_UNDER, AlertEvent
from services.contracts.pairs import SCOPE_LABEL, SCOPE_REVIEWER, SCOPE_VENDOR
from services.domain import attribution, impact
from services.domain import onset as onset_mod
from services.domain.join import COMBINED, ROW_DIMENSIONS, SLICE_DIMENSIONS, expand_combined

BASELINE_WINDOW = timedelta(days=7)
RULE_COLUMN = {RULE_OVER: "over_enforcement", RULE_UNDER: "under_enforcement"}
"""The error count a rule watches (``errors`` for the error rate)."""
COMBINED_DIMENSION = ROW_DIMENSIONS[COMBINED]
"""Slice rows that count every decision dimension at once (``domain.join.COMBINED``)."""
ERROR_TYPE_COLUMNS = {
    "OVER_ENFORCEMENT": "over_enforcement",
    "UNDER_ENFORCEMENT": "under_enforcement",
    "WRONG_LABEL": "wrong_label",
    "WRONG_ACTION": "wrong_action",
}


ONSET_SEARCH = timedelta(hours=24)
"""How far before the detector's onset the change point is looked for."""


@dataclass(frozen=True, slots=True)
class Evidence:
    attribution: list[dict[str, object]]
    impact: dict[str, object]
    words: str  # "82% of the excess is in market DE, ...; ~1,240 of 8,400 decisions since onset wrong ..."
    since: datetime  # the change point the two count from (``domain.onset``)


def _minute(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


def _scoped(table: Any, scope: str, policy_label: str, vendor_id: str) -> list[Any]:
    c = table.c
    if scope == SCOPE_LABEL:
        return [c.policy_label == policy_label]
    if scope == SCOPE_VENDOR:
        return [c.vendor_id == vendor_id]
    return [c.policy_label == policy_label, c.vendor_id == vendor_id]


async def counted_to(engine: AsyncEngine, *, scope: str, policy_label: str, vendor_id: str) -> datetime | None:
    """The newest minute the database holds counts of for a scope."""
    b = rate_buckets.c
    stmt = select(func.max(b.bucket_start)).where(*_scoped(rate_buckets, scope, policy_label, vendor_id))
    async with engine.connect() as conn:
        newest: datetime | None = (await conn.execute(stmt)).scalar()
    return newest if newest is None or newest.tzinfo else newest.replace(tzinfo=UTC)


async def _series(
    engine: AsyncEngine,
    scope: str,
    policy_label: str,
    vendor_id: str,
    column: str,
    start: datetime,
    end: datetime | None,
) -> list[tuple[datetime, list[int]]]:
    """Per minute: [verdicts, the rule's errors, decisions, over, under, wrong label, wrong action]."""
    b = rate_buckets.c
    sums = [b.verdicts, b[column], b.decisions, *(b[c] for c in ERROR_TYPE_COLUMNS.values())]
    stmt = (
        select(b.bucket_start, *(func.sum(c) for c in sums))
        .where(
            *_scoped(rate_buckets, scope, policy_label, vendor_id),
            b.bucket_start >= start,
            *([b.bucket_start <= end] if end is not None else []),
        )
        .group_by(b.bucket_start)
        .order_by(b.bucket_start)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [(t if t.tzinfo else t.replace(tzinfo=UTC), [int(v or 0) for v in rest]) for t, *rest in rows]


def _change(
    series: list[tuple[datetime, list[int]]], onset: datetime, until: datetime, baseline: float
) -> tuple[datetime, datetime, datetime]:
    """(change point, earliest, latest of its 95% likelihood interval); the detector's onset if none."""
    by_minute = {int(t.timestamp()) // 60: (t, c) for t, c in series if t <= until}  # (a mean over time)
    found = onset_mod.change_point_set([(m, c[0], c[1]) for m, (_, c) in by_minute.items()], baseline)
    if found is None:
        return _minute(onset), _minute(onset), _minute(onset)
    best, early, late = (by_minute[m][0] for m in found)
    return best, early, late


async def change_since(
    engine: AsyncEngine,
    *,
    scope: str,
    policy_label: str,
    vendor_id: str,
    rule: str,
    onset: datetime,
    end: datetime | None,
    baseline: float,
    alarm: datetime | None = None,
) -> datetime:
    """The change point alone (what ``gather`` counts from), one query instead of the evidence's."""
    column = RULE_COLUMN.get(rule, "errors")
    series = await _series(engine, scope, policy_label, vendor_id, column, _minute(onset) - ONSET_SEARCH, end)
    return _change(series, onset, alarm or end or onset + ONSET_SEARCH, baseline)[0]


async def gather(
    engine: AsyncEngine,
    *,
    scope: str,
    policy_label: str,
    vendor_id: str,
    rule: str,
    onset: datetime,
    end: datetime | None,
    baseline: float,
    alarm: datetime | None = None,
) -> Evidence:
    """Attribution and impact of one alert (its scope, rule, onset, alarm and end), counted from the
    change point of its scope's minute counts (``domain.onset``), searched from a day before the
    detector's onset to the alarm."""
    if scope == SCOPE_REVIEWER:  # a reviewer's alert is about the measuring stick, not decisions
        return Evidence([], {}, "", onset)
    column = RULE_COLUMN.get(rule, "errors")
    series = await _series(engine, scope, policy_label, vendor_id, column, _minute(onset) - ONSET_SEARCH, end)
    best, early, late = _change(series, onset, alarm or end or onset + ONSET_SEARCH, baseline)
    onset = best
    b, s = rate_buckets.c, slice_buckets.c
    window = [b.bucket_start >= onset - BASELINE_WINDOW, *([b.bucket_start <= end] if end is not None else [])]
    since_b = case((b.bucket_start >= onset, 1), else_=0).label("since")
    by = {"market": b.market}
    if scope == SCOPE_LABEL:
        by["vendor_id"] = b.vendor_id
    elif scope == SCOPE_VENDOR:
        by["policy_label"] = b.policy_label
    before: dict[str, dict[str, tuple[int, int]]] = {}
    since: dict[str, dict[str, tuple[int, int]]] = {}
    totals = {False: [0, 0], True: [0, 0]}  # since onset -> [verdicts, errors]
    async with engine.connect() as conn:
        for name, col in by.items():
            stmt = (
                select(col, since_b, func.sum(b.verdicts), func.sum(b[column]))
                .where(*_scoped(rate_buckets, scope, policy_label, vendor_id), *window)
                .group_by(col, since_b)
            )
            for value, flag, n_, e_ in (await conn.execute(stmt)).all():
                after, n, e = bool(flag), int(n_ or 0), int(e_ or 0)
                (since if after else before).setdefault(name, {})[value] = (n, e)
                if name == "market":
                    totals[after][0] += n
                    totals[after][1] += e
        since_s = case((s.bucket_start >= onset, 1), else_=0).label("since")
        stmt = (
            select(s.dimension, s.value, since_s, func.sum(s.verdicts), func.sum(s[column]))
            .where(
                *_scoped(slice_buckets, scope, policy_label, vendor_id),
                s.dimension.in_((*SLICE_DIMENSIONS, COMBINED_DIMENSION)),  # (not the reviewer and automation slices)
                s.bucket_start >= onset - BASELINE_WINDOW,
                *([s.bucket_start <= end] if end is not None else []),
            )
            .group_by(s.dimension, s.value, since_s)
        )
        for row in (await conn.execute(stmt)).all():
            dim, value, flag, n, e = str(row[0]), str(row[1]), bool(row[2]), int(row[3] or 0), int(row[4] or 0)
            parts = expand_combined(value) if dim == COMBINED_DIMENSION else [(dim, value)]
            for dim, value in parts:
                counts = (since if flag else before).setdefault(dim, {})
                n0, e0 = counts.get(value, (0, 0))
                counts[value] = (n0 + n, e0 + e)
    (n_b, e_b), (n, e) = totals[False], totals[True]
    excess = attribution.scope_excess((n_b, e_b), (n, e), baseline)
    slices = attribution.attribute(before, since, baseline, excess)
    types = [t for t, c in ERROR_TYPE_COLUMNS.items() if rule not in RULE_COLUMN or c == column]
    minutes = [(t, *c) for t, c in series]
    hurt = impact.impact_since_change(minutes, baseline, best, early, late, types)  # type: ignore[arg-type]
    words = "; ".join(w for w in (attribution.in_words(slices), impact.in_words(hurt)) if w)
    return Evidence([x.as_dict() for x in slices], {**hurt.as_dict(), "since": onset.isoformat()}, words, onset)


def _ts(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00"))


async def of_alert(engine: AsyncEngine, a: AlertEvent) -> Evidence:
    """``gather`` for an alert change as published."""
    onset = _ts(a.onset_at)
    assert onset is not None
    return await gather(
        engine,
        scope=a.scope,
        policy_label=a.policy_label,
        vendor_id=a.vendor_id,
        rule=a.rule,
        onset=onset,
        end=_ts(a.resolved_at),
        baseline=a.baseline_rate,
        alarm=_ts(a.started_at),
    )
