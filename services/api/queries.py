"""The API's reads: SQL over the tables in ``services.common.db``, rows made timezone-aware,
keyset cursors. Functions of an engine and plain arguments, so each router stays a thin parser."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from fastapi import HTTPException
from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import alert_history, alerts, rate_buckets, review_items, silences, slice_buckets
from services.contracts.codes import ERROR_INDEX
from services.domain.rates import COUNT_FIELDS, Counts
from services.domain.reviewers import RatingRow, ReviewedItem


def utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def aware(row: Any) -> dict[str, Any]:
    """A row as a dict with timestamps made timezone-aware (SQLite returns naive ones)."""
    return {k: utc(v) if isinstance(v, datetime) else v for k, v in dict(row).items()}


def encode_cursor(at: datetime, key: str) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{key}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        ts, key = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(ts), key
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(400, "invalid cursor") from None


async def bucket_sums(
    engine: AsyncEngine,
    start: datetime,
    end: datetime,
    by_market: bool = False,
    **equal: str | None,
) -> list[tuple[dict[str, Any], Counts]]:
    """Counts summed per (policy_label, vendor_id[, market]) over buckets in [start, end), with
    ``equal`` column filters (None: any); each item the group's columns and its counts."""
    b = rate_buckets.c
    group = [b.policy_label, b.vendor_id, *([b.market] if by_market else [])]
    stmt = (
        select(*group, *[func.sum(b[f]).label(f) for f in COUNT_FIELDS])
        .where(b.bucket_start >= start, b.bucket_start < end)
        .group_by(*group)
        .order_by(*group)
    )
    for col, value in equal.items():
        if value is not None:
            stmt = stmt.where(b[col] == value)
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    return [({c.name: row[c.name] for c in group}, Counts.from_row(row)) for row in rows]


async def review_items_in(
    engine: AsyncEngine, start: datetime, end: datetime, **equal: str | None
) -> list[ReviewedItem]:
    """The reviewed decisions last rated in [start, end), with ``equal`` filters on label and vendor."""
    r = review_items.c
    stmt = select(r.decision_id, r.policy_label, r.vendor_id, r.golden_answer, r.ratings).where(
        r.reviewed_at >= start, r.reviewed_at < end
    )
    for col, value in equal.items():
        if value is not None:
            stmt = stmt.where(r[col] == value)
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt.order_by(r.decision_id))).all()
    return [
        ReviewedItem(
            row.decision_id,
            row.policy_label,
            row.vendor_id,
            ERROR_INDEX[row.golden_answer] if row.golden_answer else -1,
            tuple(RatingRow(*x) for x in orjson.loads(row.ratings)),
        )
        for row in rows
    ]


async def reviewer_counts(
    engine: AsyncEngine, start: datetime, end: datetime, **equal: str | None
) -> dict[str, tuple[int, int]]:
    """Each reviewer's (ratings, error calls) in [start, end) from the hourly reviewer slices."""
    s = slice_buckets.c
    stmt = (
        select(s.value, func.sum(s.verdicts), func.sum(s.errors))
        .where(s.dimension == "reviewer_id", s.bucket_start >= start, s.bucket_start < end)
        .group_by(s.value)
    )
    for col, value in equal.items():
        if value is not None:
            stmt = stmt.where(s[col] == value)
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return {str(v): (int(n or 0), int(e or 0)) for v, n, e in rows}


def window_start(end: datetime, window_ms: int) -> datetime:
    return end - timedelta(milliseconds=window_ms)


def alert_query(status: str | None, policy_label: str | None, vendor_id: str | None, rule: str | None) -> Any:
    """Alerts matching the filters (None: any), newest first."""
    stmt = select(alerts).order_by(alerts.c.started_at.desc(), alerts.c.alert_id.desc())
    filters = (("status", status), ("policy_label", policy_label), ("vendor_id", vendor_id), ("rule", rule))
    for col, value in filters:
        if value is not None:
            stmt = stmt.where(alerts.c[col] == value)
    return stmt


def after(stmt: Any, cursor: str | None) -> Any:
    """The alerts of ``stmt`` after a cursor (the last of the previous page)."""
    if not cursor:
        return stmt
    ts, alert_id = decode_cursor(cursor)
    return stmt.where(or_(alerts.c.started_at < ts, and_(alerts.c.started_at == ts, alerts.c.alert_id < alert_id)))


async def load_alert(engine: AsyncEngine, alert_id: str) -> dict[str, object]:
    """One alert's row; a 404 when there is none."""
    async with engine.connect() as conn:
        row = (await conn.execute(select(alerts).where(alerts.c.alert_id == alert_id))).mappings().first()
    if row is None:
        raise HTTPException(404, f"no alert {alert_id}")
    return dict(row)


async def alert_history_rows(engine: AsyncEngine, alert_id: str) -> list[dict[str, Any]]:
    """Every history row of one alert, oldest first."""
    h = alert_history.c
    stmt = select(alert_history).where(h.alert_id == alert_id).order_by(h.recorded_at, h.event_id)
    async with engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(stmt)).mappings()]


async def history_page(
    engine: AsyncEngine, limit: int, cursor: str | None, **equal: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of the history, newest recorded first, and the cursor of the next page."""
    h = alert_history.c
    stmt = select(alert_history).order_by(h.recorded_at.desc(), h.event_id.desc()).limit(limit + 1)
    for col, value in equal.items():
        if value is not None:
            stmt = stmt.where(h[col] == value)
    if cursor:
        ts, event_id = decode_cursor(cursor)
        stmt = stmt.where(or_(h.recorded_at < ts, and_(h.recorded_at == ts, h.event_id < event_id)))
    async with engine.connect() as conn:
        rows = [dict(r) for r in (await conn.execute(stmt)).mappings().all()]
    next_cursor = None
    if len(rows) > limit:
        next_cursor = encode_cursor(rows[limit - 1]["recorded_at"], rows[limit - 1]["event_id"])
    return rows[:limit], next_cursor


async def silence_of(engine: AsyncEngine, policy_label: str, vendor_id: str) -> dict[str, Any]:
    s = silences.c
    stmt = select(silences).where(s.policy_label == policy_label, s.vendor_id == vendor_id)
    async with engine.connect() as conn:
        return aware((await conn.execute(stmt)).mappings().one())


async def silences_in_force(engine: AsyncEngine, now: datetime) -> list[dict[str, Any]]:
    stmt = select(silences).where(silences.c.until > now).order_by(silences.c.until)
    async with engine.connect() as conn:
        return [aware(r) for r in (await conn.execute(stmt)).mappings().all()]
