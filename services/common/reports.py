"""The DSA transparency report over a period, from the database alone (no Kafka: a closed half-year
is reported from the rows its events left), for the API and ``modq report transparency``.

Sections: ``appeals`` (complaints, Art. 15(1)(d)), ``automated_accuracy`` (Art. 15(1)(e), by model and
by language for Art. 42(2)(c)) and ``human_accuracy`` (the vendors' human moderation beside it).
The figures and their definitions: ``services.domain.transparency``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import appeal_facts, rate_buckets, slice_buckets
from services.domain.join import PART
from services.domain.rates import COUNT_FIELDS, Counts
from services.domain.transparency import (
    ACCURACY_KEYS,
    APPEAL_KEYS,
    AUTOMATED_ACTORS,
    AUTOMATED_BREAKDOWNS,
    HUMAN_BREAKDOWNS,
    AutomationCounts,
    Complaint,
    accuracy_rows,
    complaints_rows,
)

RATE_FIGURES = ("accuracy", "error_rate", "precision", "recall", "false_positive_rate", "false_negative_rate")
SECTIONS: dict[str, tuple[str, ...]] = {
    "appeals": (
        *APPEAL_KEYS,
        "complaints",
        "upheld",
        "overturned",
        "partially_overturned",
        "withdrawn",
        "reversed",
        "median_decision_time_s",
        "p90_decision_time_s",
        "overturn_rate",
        "overturn_rate_ci_low",
        "overturn_rate_ci_high",
        "qa_verdicts",
        "qa_error_rate",
        "qa_over_enforcement_rate",
        "low_sample",
    ),
    "automated_accuracy": (
        *ACCURACY_KEYS,
        "decisions",
        "verdicts",
        *(f"{name}{end}" for name in RATE_FIGURES for end in ("", "_ci_low", "_ci_high")),
        "low_sample",
    ),
}
SECTIONS["human_accuracy"] = SECTIONS["automated_accuracy"]
"""Each section's CSV columns, in order (README, "Transparency reporting")."""


async def _complaints(engine: AsyncEngine, start: datetime, end: datetime) -> list[Complaint]:
    a = appeal_facts.c
    stmt = select(a.policy_label, a.category, a.channel, a.vendor_id, a.outcome, a.filed_at, a.resolved_at).where(
        a.received_at >= start, a.received_at < end
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [
        Complaint(
            r.policy_label,
            r.category or None,  # (no category given: not broken down by one)
            r.channel or None,
            r.vendor_id,
            r.outcome,
            (r.resolved_at - r.filed_at).total_seconds() if r.filed_at and r.resolved_at else None,
        )
        for r in rows
    ]


async def _qa(engine: AsyncEngine, start: datetime, end: datetime) -> dict[tuple[str | None, str | None], Counts]:
    """QA counts of the period by (policy_label, vendor_id), by label (vendor None), by vendor
    (label None) and in all (both None)."""
    b = rate_buckets.c
    stmt = (
        select(b.policy_label, b.vendor_id, *[func.sum(b[f]).label(f) for f in COUNT_FIELDS])
        .where(b.bucket_start >= start, b.bucket_start < end)
        .group_by(b.policy_label, b.vendor_id)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    out: dict[tuple[str | None, str | None], Counts] = {}
    for row in rows:
        counts = Counts.from_row(row)
        label, vendor = row["policy_label"], row["vendor_id"]
        for key in ((label, vendor), (label, None), (None, vendor), (None, None)):
            out.setdefault(key, Counts()).add(counts)
    return out


async def _automation(engine: AsyncEngine, start: datetime, end: datetime) -> list[AutomationCounts]:
    s = slice_buckets.c
    stmt = (
        select(s.vendor_id, s.value, *[func.sum(s[f]).label(f) for f in COUNT_FIELDS])
        .where(s.dimension == "automation", s.bucket_start >= start, s.bucket_start < end)
        .group_by(s.vendor_id, s.value)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    out = []
    for row in rows:
        actor, model_id, version, language, kind = str(row["value"]).split(PART)
        out.append(
            AutomationCounts(
                actor or "", model_id or "", version or "", language or "", kind, row["vendor_id"], Counts.from_row(row)
            )
        )
    return out


def _blank_to_none(rows: Iterable[dict[str, object]], keys: Sequence[str]) -> list[dict[str, object]]:
    """A breakdown value the decisions did not give (a model id of a human decision) reads null."""
    return [{**r, **{k: (r[k] or None) for k in keys}} for r in rows]


async def transparency(engine: AsyncEngine, start: datetime, end: datetime, min_sample: int) -> dict[str, Any]:
    """The report of [start, end) (event time)."""
    automation = await _automation(engine, start, end)
    automated = [r for r in automation if r.actor_type in AUTOMATED_ACTORS]
    human = [r for r in automation if r.actor_type == "HUMAN"]
    return {
        "period": {"from": start, "to": end},
        "appeals": complaints_rows(await _complaints(engine, start, end), await _qa(engine, start, end), min_sample),
        "automated_accuracy": _blank_to_none(accuracy_rows(automated, AUTOMATED_BREAKDOWNS, min_sample), ACCURACY_KEYS),
        "human_accuracy": _blank_to_none(accuracy_rows(human, HUMAN_BREAKDOWNS, min_sample), ACCURACY_KEYS),
    }


def to_csv(section: str, rows: Iterable[dict[str, object]]) -> str:
    """A section as CSV (RFC 4180: CRLF line ends, fields quoted where needed; UTF-8 when encoded)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    columns = SECTIONS[section]
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else _cell(row[c]) for c in columns])
    return buf.getvalue()


def _cell(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return value
