"""An alert's evidence from the exact counts in the database: where the excess sits (attribution)
and how many decisions it hurt (impact), for the API, the alert history and the notifier.

Since onset means the buckets from the change point (the maximum-likelihood start of the rise in
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
from services.contracts.alerts import RULE_OVER, RULE_UNDER
from services.contracts.pairs import SCOPE_LABEL, SCOPE_VENDOR
from services.domain import attribution, impact
from services.domain import onset as onset_mod

BASELINE_WINDOW = timedelta(days=7)
RULE_COLUMN = {RULE_OVER: "over_enforcement", RULE_UNDER: "under_enforcement"}
"""The error count a rule watches (``errors`` for the error rate)."""
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


async def change_point(
    engine: AsyncEngine,
    *,
    scope: str,
    policy_label: str,
    vendor_id: str,
    rule: str,
    onset: datetime,
    alarm: datetime,
    baseline: float,
) -> datetime:
    """The maximum-likelihood start of the rise (``domain.onset``) from the scope's minute counts
    between a day before the detector's onset and the alarm; the detector's onset if none."""
    b = rate_buckets.c
    column = RULE_COLUMN.get(rule, "errors")
    stmt = (
        select(b.bucket_start, func.sum(b.verdicts), func.sum(b[column]))
        .where(
            *_scoped(rate_buckets, scope, policy_label, vendor_id),
            b.bucket_start >= _minute(onset) - ONSET_SEARCH,
            b.bucket_start <= alarm,
        )
        .group_by(b.bucket_start)
        .order_by(b.bucket_start)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    series = [(i, int(n or 0), int(e or 0)) for i, (_, n, e) in enumerate(rows)]
    found = onset_mod.change_point(series, baseline)
    if found is None:
        return _minute(onset)
    start: datetime = rows[found][0]
    return start if start.tzinfo else start.replace(tzinfo=UTC)


def _minute(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


def _scoped(table: Any, scope: str, policy_label: str, vendor_id: str) -> list[Any]:
    c = table.c
    if scope == SCOPE_LABEL:
        return [c.policy_label == policy_label]
    if scope == SCOPE_VENDOR:
        return [c.vendor_id == vendor_id]
    return [c.policy_label == policy_label, c.vendor_id == vendor_id]


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
    change point of its scope's counts (see ``change_point``)."""
    onset = await change_point(
        engine,
        scope=scope,
        policy_label=policy_label,
        vendor_id=vendor_id,
        rule=rule,
        onset=onset,
        alarm=alarm or end or onset + ONSET_SEARCH,
        baseline=baseline,
    )
    column = RULE_COLUMN.get(rule, "errors")
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
    decisions = 0
    by_type = dict.fromkeys(ERROR_TYPE_COLUMNS, 0)
    async with engine.connect() as conn:
        for name, col in by.items():
            sums = [func.sum(b.verdicts), func.sum(b[column]), func.sum(b.decisions)]
            if name == "market":
                sums += [func.sum(b[c]) for c in ERROR_TYPE_COLUMNS.values()]
            stmt = (
                select(col, since_b, *sums)
                .where(*_scoped(rate_buckets, scope, policy_label, vendor_id), *window)
                .group_by(col, since_b)
            )
            for row in (await conn.execute(stmt)).all():
                value, after, n, e, d = row[0], bool(row[1]), int(row[2] or 0), int(row[3] or 0), int(row[4] or 0)
                (since if after else before).setdefault(name, {})[value] = (n, e)
                if name == "market":
                    totals[after][0] += n
                    totals[after][1] += e
                    if after:
                        decisions += d
                        for t, v in zip(ERROR_TYPE_COLUMNS, row[5:], strict=True):
                            by_type[t] += int(v or 0)
        since_s = case((s.bucket_start >= onset, 1), else_=0).label("since")
        stmt = (
            select(s.dimension, s.value, since_s, func.sum(s.verdicts), func.sum(s[column]))
            .where(
                *_scoped(slice_buckets, scope, policy_label, vendor_id),
                s.bucket_start >= onset - BASELINE_WINDOW,
                *([s.bucket_start <= end] if end is not None else []),
            )
            .group_by(s.dimension, s.value, since_s)
        )
        for dim, value, after, n, e in (await conn.execute(stmt)).all():
            (since if after else before).setdefault(dim, {})[value] = (int(n or 0), int(e or 0))
    (n_b, e_b), (n, e) = totals[False], totals[True]
    excess = attribution.scope_excess((n_b, e_b), (n, e), baseline)
    slices = attribution.attribute(before, since, baseline, excess)
    if rule in RULE_COLUMN:  # the rule's own error type only
        kept = next(t for t, c in ERROR_TYPE_COLUMNS.items() if c == column)
        by_type = {kept: by_type[kept]}
    hurt = impact.impact(decisions, n, e, by_type, baseline)
    words = "; ".join(w for w in (attribution.in_words(slices), impact.in_words(hurt)) if w)
    return Evidence([x.as_dict() for x in slices], {**hurt.as_dict(), "since": onset.isoformat()}, words, onset)
